"""The shards a run reads: the config's file patterns, or synthetic shards written on first use."""

from __future__ import annotations

import math
from pathlib import Path

from data.loader import find_shards
from training.config import Config
from training.distributed import DistInfo, barrier

REPO = Path(__file__).resolve().parents[1]


def prepare_data(cfg: Config, info: DistInfo, log=print) -> tuple[list[str], list[str]]:
    """(train files, val files). For a synthetic config, rank 0 writes the shards on first use."""
    d, m = cfg.data, cfg.model
    if not d.synthetic:
        return find_shards(repo_relative(d.train_files)), find_shards(repo_relative(d.val_files))
    from data.synthetic import make_synthetic_shards, synthetic_entropy

    params = dict(vocab_size=m.vocab_size, eot_token=m.eot_token, train_tokens=d.synthetic_train_tokens,
                  val_tokens=max(d.synthetic_val_tokens, cfg.eval.tokens + 1), seed=d.synthetic_seed)
    base = Path(d.synthetic_dir) if Path(d.synthetic_dir).is_absolute() else REPO / d.synthetic_dir
    out_dir = base / "_".join(f"{k}{v}" for k, v in params.items())
    if info.is_main:
        make_synthetic_shards(out_dir, **params)
    barrier(info)
    train_pattern, val_pattern = make_synthetic_shards(out_dir, **params)  # no-op: already valid
    h = synthetic_entropy(m.vocab_size, m.eot_token, d.synthetic_seed)
    log(f"data: SYNTHETIC Markov-chain shards in {out_dir} (not FineWeb): achievable loss ~{h:.2f} nats, "
        f"ln(vocab) = {math.log(m.vocab_size):.2f}")
    return find_shards(train_pattern), find_shards(val_pattern)


def repo_relative(pattern: str) -> str:
    """Relative data paths are tried as given, then relative to the repository."""
    if Path(pattern).is_absolute() or list(Path().glob(pattern)):
        return pattern
    return str(REPO / pattern)
