"""The shards a run reads: the config's file patterns, or synthetic shards written on first use;
checked against the config before the first step and described in the log and the summary.

Checks (each failure is a DataError or ShardError naming the file and the numbers; exit code 2):
- every shard's header and size (data/shard.py), and no empty training shard;
- the validation files hold the eval.tokens (+ 1 for the last target) that every validation reads;
- the token ids of the validation prefix and of the first training shard are below
  model.vocab_size (the loader checks every other shard when it opens it);
- the document separator: our tools and the published FineWeb shards start every document, and so
  every file, with the separator token. When the first training and the first validation shard
  both start with the same token and it is not model.eot_token, or model.eot_token never occurs
  in their first SEPARATOR_SAMPLE tokens, the config and the data disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import DataError
from data.loader import check_vocab, find_shards, open_shards
from data.shard import load_shard, read_header
from data.synthetic import make_synthetic_shards, synthetic_entropy, synthetic_patterns
from distributed.process_group import DistInfo, barrier
from training.config import Config
from training.schedule import interval_tokens

REPO = Path(__file__).resolve().parents[1]
SEPARATOR_SAMPLE = 1_000_000  # tokens of the first shards searched for model.eot_token


@dataclass(frozen=True)
class RunData:
    """The run's shards, resolved once (each pattern globbed once, each header read once): the trainer's
    loader takes the files with their token counts, validation the opened validation shards."""

    train_files: list[str]
    val_files: list[str]
    train_tokens: list[int]  # per file, from its header
    val_tokens: list[int]
    synthetic: bool
    where: str  # the folder or pattern the files came from
    val_shards: list = field(default_factory=list, repr=False)  # the validation shards' tokens (memmaps)

    def epochs(self, cfg: Config) -> float:
        """How many passes over the training tokens the schedule makes."""
        return cfg.schedule.steps * cfg.data.batch_tokens / max(sum(self.train_tokens), 1)

    def describe(self, cfg: Config) -> str:
        kind = "SYNTHETIC Markov-chain shards (not real text)" if self.synthetic else "shards"
        return (f"data: {kind} from {self.where}: {len(self.train_files)} train file(s) "
                f"({', '.join(Path(f).name for f in self.train_files[:3])}{', ...' if len(self.train_files) > 3 else ''}) "
                f"with {sum(self.train_tokens):,} tokens; {len(self.val_files)} validation file(s) with "
                f"{sum(self.val_tokens):,} tokens, of which the final validation reads the first {cfg.eval.tokens:,}"
                f"{_interval(cfg)}; "
                f"the schedule reads {cfg.schedule.steps:,} x {cfg.data.batch_tokens:,} tokens = "
                f"{self.epochs(cfg):.3g} epoch(s) of the training data")

    def summary(self, cfg: Config) -> dict:
        return {"synthetic": self.synthetic, "train_files": self.train_files, "train_tokens": sum(self.train_tokens),
                "val_files": self.val_files, "val_tokens": sum(self.val_tokens), "epochs": self.epochs(cfg)}


def _interval(cfg: Config) -> str:
    n = interval_tokens(cfg)
    return f" (earlier ones the first {n:,})" if n < cfg.eval.tokens else ""


def prepare_data(cfg: Config, info: DistInfo, log=print) -> RunData:
    """The run's shards, checked. For a synthetic config, rank 0 writes the shards on first use."""
    d = cfg.data
    if d.synthetic:
        train_pattern, val_pattern, where = _synthetic_shards(cfg, info, log)
    else:
        train_pattern, val_pattern, where = d.train_files, d.val_files, f"{d.train_files} and {d.val_files}"
    train, val = find_shards(train_pattern), find_shards(val_pattern)
    val_tokens = [read_header(f) for f in val]
    data = RunData(train, val, [read_header(f) for f in train], val_tokens, d.synthetic, where,
                   open_shards(val, val_tokens))
    check_data(cfg, data)
    return data


def _synthetic_shards(cfg: Config, info: DistInfo, log) -> tuple[str, str, str]:
    d, m = cfg.data, cfg.model
    params = dict(vocab_size=m.vocab_size, eot_token=m.eot_token, train_tokens=d.synthetic_train_tokens,
                  val_tokens=max(d.synthetic_val_tokens, cfg.eval.tokens + 1), seed=d.synthetic_seed)
    base = Path(d.synthetic_dir) if Path(d.synthetic_dir).is_absolute() else REPO / d.synthetic_dir
    out_dir = base / "_".join(f"{k}{v}" for k, v in params.items())
    if info.is_main:
        make_synthetic_shards(out_dir, **params)
    barrier(info)
    train_pattern, val_pattern = synthetic_patterns(out_dir)
    h = synthetic_entropy(m.vocab_size, m.eot_token, d.synthetic_seed)
    log(f"data: synthetic Markov chain: achievable loss ~{h:.2f} nats, ln(vocab) = {math.log(m.vocab_size):.2f}")
    return train_pattern, val_pattern, str(out_dir)


def check_data(cfg: Config, data: RunData) -> None:
    """Everything about the shards that would otherwise fail (or silently mislead) mid-run."""
    for path, count in zip(data.train_files, data.train_tokens):
        if count == 0:
            raise DataError(f"{path}: training shard with 0 tokens (header count 0): remove it from "
                            f"data.train_files or re-tokenize it")
    row = cfg.model.seq_len + 1
    if max(data.train_tokens) < row:
        raise DataError(f"no training shard holds one row of model.seq_len + 1 = {row:,} tokens "
                        f"(largest: {max(data.train_tokens):,}, in {data.train_files[int(np.argmax(data.train_tokens))]})")
    needed = cfg.eval.tokens + 1
    if sum(data.val_tokens) < needed:
        raise DataError(f"the validation files ({', '.join(data.val_files)}) hold {sum(data.val_tokens):,} tokens, "
                        f"but eval.tokens = {cfg.eval.tokens:,} needs {needed:,} (one more for the last target): "
                        f"lower --eval.tokens or add validation data")
    _check_vocab(cfg, data)
    check_separator(cfg.model.eot_token, (data.train_files[0], load_shard(data.train_files[0], data.train_tokens[0])),
                    (data.val_files[0], data.val_shards[0]))


def _check_vocab(cfg: Config, data: RunData) -> None:
    """Token ids of the first training shard and of the validation prefix below model.vocab_size
    (the loader checks every other shard when it opens it)."""
    check_vocab(load_shard(data.train_files[0], data.train_tokens[0]), cfg.model.vocab_size, data.train_files[0])
    left = cfg.eval.tokens + 1
    for path, tokens in zip(data.val_files, data.val_shards):
        if left <= 0:
            break
        check_vocab(tokens[:left], cfg.model.vocab_size, path)
        left -= len(tokens)


def check_separator(eot: int, train: tuple[str, np.ndarray], val: tuple[str, np.ndarray]) -> None:
    """The config's separator against what the first training and validation shards (path, tokens) start with
    (module docstring)."""
    (train_file, _), (val_file, _) = train, val
    heads = {path: tokens[:SEPARATOR_SAMPLE] for path, tokens in (train, val)}
    firsts = {int(t[0]) for t in heads.values() if len(t)}
    if len(firsts) == 1 and (first := firsts.pop()) != eot:
        raise DataError(f"model.eot_token = {eot}, but {train_file} and {val_file} both start with token {first}, "
                        f"the document separator of shards written by data/fineweb.py and of the FineWeb shards: "
                        f"set --model.eot_token={first} (attention masking and document alignment use it)")
    for path, tokens in heads.items():
        if len(tokens) and not np.any(tokens == eot):
            raise DataError(f"model.eot_token = {eot} never occurs in the first {len(tokens):,} tokens of {path} "
                            f"(they start with token {int(tokens[0])}): it cannot be these shards' document "
                            f"separator; set --model.eot_token to the token every document starts with")
