"""Distributed data loading from token shards.

Every call of ``TrainLoader.next_batch`` consumes one *global micro-batch* of
``world_size * batch_size`` rows of ``seq_len + 1`` tokens; global row ``j`` belongs to
rank ``j // batch_size``. All ranks therefore walk through the data in lockstep, hold
the same loader state, and together see exactly what one process with
``world_size * batch_size`` rows would see.

Validation uses ``val_batches``: a fixed prefix of the concatenated validation shards,
split into global chunks the same way.
"""

import glob
import os

import numpy as np
import torch

from common.errors import DataNotFoundError, ShardError
from common.paths import REPO
from data.shard import load_shard, read_header

DOWNLOAD_COMMAND = "python -m data.cached_fineweb10B 8"
STATE_VERSION = 1


def find_shards(pattern):
    """Return the sorted files matching the glob ``pattern`` (a relative pattern: from the working folder,
    else from the repository); raise if there are none."""
    files = sorted(glob.glob(pattern))
    if not files and not os.path.isabs(pattern):
        files = sorted(glob.glob(str(REPO / pattern)))
    if not files:
        raise DataNotFoundError(_missing_data_message(pattern))
    return files


def open_shards(files, counts=None):
    """The shards' tokens as read-only memmaps (``counts``: their headers' token counts, read already)."""
    counts = counts if counts is not None else [None] * len(files)
    return [load_shard(path, count) for path, count in zip(files, counts)]


def _missing_data_message(pattern):
    """Explain that ``pattern`` matched nothing and how to fix it."""
    message = f"no data files match {pattern!r}"
    if "fineweb" in pattern.lower():
        return (
            f"{message}; download the FineWeb GPT-2 shards with `{DOWNLOAD_COMMAND}` "
            "(8 = number of train shards, up to 103)"
        )
    return f"{message}; check data.train_files / data.val_files in the config"


def _resolve_files(files):
    """Turn a glob pattern or a list of paths into a sorted list of existing files."""
    if isinstance(files, (str, os.PathLike)):
        return find_shards(os.fspath(files))
    files = sorted(os.fspath(f) for f in files)
    if not files:
        raise DataNotFoundError("empty list of data files; check data.train_files / data.val_files")
    for path in files:
        if not os.path.isfile(path):
            raise DataNotFoundError(_missing_data_message(path))
    return files


def check_vocab(tokens, vocab_size, path, key="model.vocab_size"):
    """Raise ShardError if ``tokens`` (read from ``path``) holds an id >= ``vocab_size``."""
    if vocab_size is None or len(tokens) == 0:
        return
    if int(tokens.max()) < vocab_size:
        return
    position = int(np.argmax(tokens >= vocab_size))
    raise ShardError(
        f"{path}: token id {int(tokens[position])} at position {position} "
        f"is >= {key} = {vocab_size}: the shards were made with a larger vocabulary than the model's; "
        f"set --{key}=<the tokenizer's vocabulary size> (at least {int(tokens.max()) + 1}; GPT-2 BPE: 50257)"
    )


def _to_device(inputs, targets, device):
    """Return int64 tensors for ``inputs`` and ``targets`` on ``device``.

    On CUDA the copy goes through pinned memory and does not block the host.
    """
    device = torch.device(device)
    tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in (inputs, targets)]
    if device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)
    return tuple(t.to(device) for t in tensors)


def _check_positive(**values):
    """Raise ValueError unless every keyword value is a positive integer."""
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_rank(rank, world_size):
    """Raise ValueError unless 0 <= rank < world_size."""
    _check_positive(world_size=world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")


class TrainLoader:
    """Endless, deterministic stream of training batches for one rank.

    Args:
        files: glob pattern or list of shard paths (used in sorted order).
        seq_len: tokens per row (T); each row reads T + 1 tokens.
        batch_size: rows per rank per call (B).
        rank, world_size: this process's place among the data-parallel processes.
        seed, shuffle: if ``shuffle``, each epoch visits the shards in the order
            ``np.random.default_rng((seed, epoch)).permutation``.
        align_to_docs: start every row at a document start (a position holding
            ``eot_token``).
        vocab_size: if given, each shard is checked for ids >= vocab_size when opened.
        device: where the returned tensors live.

    The position in the data is (epoch, shard_index, cursor): the shard
    ``order[shard_index]`` of the current epoch, and the token offset in it.
    """

    def __init__(self, files, *, seq_len, batch_size, rank=0, world_size=1, seed=0,
                 shuffle=False, align_to_docs=False, eot_token=50256, vocab_size=None,
                 device="cpu", token_counts=None):
        _check_positive(seq_len=seq_len, batch_size=batch_size)
        _check_rank(rank, world_size)
        self.files = _resolve_files(files)
        if token_counts is None:  # fail early on a malformed shard
            token_counts = [read_header(path) for path in self.files]
        self.token_counts = dict(zip(self.files, token_counts))
        self.seq_len, self.batch_size = seq_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.align_to_docs = seed, shuffle, align_to_docs
        self.eot_token, self.vocab_size, self.device = eot_token, vocab_size, device
        self._set_position(epoch=0, shard_index=0, cursor=0)

    # ----- position -------------------------------------------------------------

    def _set_position(self, *, epoch, shard_index, cursor):
        """Move to ``cursor`` in the ``shard_index``-th shard of ``epoch``."""
        self.epoch, self.shard_index, self.cursor = epoch, shard_index, cursor
        self._order = self._shard_order(epoch)
        self._tokens = None  # the current shard is opened lazily
        self._eot_positions = None

    def _shard_order(self, epoch):
        """Indices into ``self.files`` in the order they are visited in ``epoch``."""
        if not self.shuffle:
            return list(range(len(self.files)))
        return np.random.default_rng((self.seed, epoch)).permutation(len(self.files)).tolist()

    @property
    def current_file(self):
        """Path of the shard the cursor is in."""
        return self.files[self._order[self.shard_index]]

    def _open_current_shard(self):
        """Memory-map the current shard, check its ids, and index its document starts."""
        path = self.current_file
        tokens = load_shard(path, self.token_counts[path])
        check_vocab(tokens, self.vocab_size, path)
        self._tokens = tokens
        if self.align_to_docs:
            self._eot_positions = np.flatnonzero(tokens == self.eot_token)

    def _advance_shard(self):
        """Move to the start of the next shard, beginning a new epoch after the last."""
        shard_index, epoch = self.shard_index + 1, self.epoch
        if shard_index == len(self.files):
            shard_index, epoch = 0, epoch + 1
            if self.rank == 0:
                print(f"TrainLoader: starting epoch {epoch} over {len(self.files)} shard(s)",
                      flush=True)
        self._set_position(epoch=epoch, shard_index=shard_index, cursor=0)

    def open(self):
        """Open the current shard now (checking its token ids) instead of at the first batch."""
        if self._tokens is None:
            self._open_current_shard()

    # ----- rows -----------------------------------------------------------------

    def _row_start_in_shard(self):
        """Start of the next row in the current shard, or None if no full row fits."""
        start = self.cursor
        if self.align_to_docs:
            i = int(np.searchsorted(self._eot_positions, self.cursor))
            if i == len(self._eot_positions):
                return None
            start = int(self._eot_positions[i])
        if start + self.seq_len + 1 > len(self._tokens):
            return None
        return start

    def _take_row(self):
        """Return (shard tokens, start) of the next global row and advance the cursor."""
        failures = 0
        while True:
            if self._tokens is None:
                self._open_current_shard()
            start = self._row_start_in_shard()
            if start is not None:
                self.cursor = start + self.seq_len
                return self._tokens, start
            failures += 1
            if failures > len(self.files):
                raise ValueError(self._no_row_message())
            self._advance_shard()

    def _no_row_message(self):
        """Explain why no shard can supply a row."""
        need = f"{self.seq_len + 1} tokens"
        if self.align_to_docs:
            need += f" starting at a document start (token {self.eot_token})"
        return f"no shard among {self.files} can supply a row of {need}"

    def next_batch(self):
        """Return (inputs, targets), int64 tensors of shape (batch_size, seq_len)."""
        B, T = self.batch_size, self.seq_len
        rows = np.empty((B, T + 1), dtype=np.int64)
        first = self.rank * B
        for j in range(self.world_size * B):
            tokens, start = self._take_row()
            if first <= j < first + B:
                rows[j - first] = tokens[start:start + T + 1]
        return _to_device(rows[:, :-1], rows[:, 1:], self.device)

    # ----- checkpointing ----------------------------------------------------------

    def state_dict(self):
        """Position in the data as plain Python values (identical on every rank)."""
        return {
            "version": STATE_VERSION,
            "epoch": int(self.epoch),
            "shard_index": int(self.shard_index),
            "cursor": int(self.cursor),
            "seed": int(self.seed),
            "shuffle": int(bool(self.shuffle)),
            "align_to_docs": int(bool(self.align_to_docs)),
            "num_files": len(self.files),
        }

    def load_state_dict(self, state):
        """Resume at the position saved by ``state_dict``.

        Raises ValueError if the state was saved with different data settings.
        """
        expected = self.state_dict()
        for key in ("version", "seed", "shuffle", "align_to_docs", "num_files"):
            if int(state[key]) != expected[key]:
                raise ValueError(
                    f"loader state was saved with {key}={state[key]}, "
                    f"but this loader has {key}={expected[key]}"
                )
        if not 0 <= int(state["shard_index"]) < len(self.files):
            raise ValueError(f"loader state has shard_index={state['shard_index']} "
                             f"outside [0, {len(self.files)})")
        self._set_position(epoch=int(state["epoch"]), shard_index=int(state["shard_index"]),
                           cursor=int(state["cursor"]))


# ----- validation ---------------------------------------------------------------

def count_val_steps(tokens, seq_len, batch_size, world_size):
    """Number of validation steps that cover exactly ``tokens`` tokens."""
    _check_positive(seq_len=seq_len, batch_size=batch_size, world_size=world_size)
    per_step = world_size * batch_size * seq_len
    if tokens < 0 or tokens % per_step != 0:
        raise ValueError(
            f"eval.tokens={tokens} must be a multiple of world_size*batch_size*seq_len = "
            f"{world_size}*{batch_size}*{seq_len} = {per_step}"
        )
    return tokens // per_step


def val_batches(files, *, tokens, seq_len, batch_size, rank=0, world_size=1, device="cpu",
                vocab_size=None):
    """Return a generator of this rank's (inputs, targets) over the first ``tokens`` tokens.

    ``files``: a glob pattern, a list of shard paths, or the shards already opened (``open_shards``: what a
    run validates on again and again, its headers read once). Step ``s`` covers global tokens
    [s*W*B*T, (s+1)*W*B*T] (plus one for the last target) of the concatenated validation shards; rank
    ``r`` gets rows r*B..r*B+B-1. Rows may span two shards. Arguments are checked now, not at the first
    ``next``.
    """
    _check_rank(rank, world_size)
    steps = count_val_steps(tokens, seq_len, batch_size, world_size)
    if steps == 0:
        return iter(())
    opened = not isinstance(files, (str, os.PathLike)) and all(isinstance(f, np.ndarray) for f in files)
    shards = _load_val_prefix(files if opened else open_shards(_resolve_files(files)), tokens + 1, vocab_size)
    return _iter_val_batches(shards, steps, seq_len, batch_size, rank, world_size, device)


def _load_val_prefix(opened, needed, vocab_size):
    """The opened shards in order until they hold ``needed`` tokens; their ids checked."""
    shards, total = [], 0
    for tokens in opened:
        if total >= needed:
            break
        check_vocab(tokens[:needed - total], vocab_size, getattr(tokens, "filename", "a validation shard"))
        shards.append(tokens)
        total += len(tokens)
    if total < needed:
        names = [os.path.basename(str(getattr(t, "filename", None) or "?")) for t in opened]
        raise ValueError(
            f"the validation files ({', '.join(names)}) hold {total} tokens, but eval.tokens={needed - 1} "
            f"needs {needed} (one extra for the last target)"
        )
    return shards


def _iter_val_batches(shards, steps, seq_len, batch_size, rank, world_size, device):
    """Yield this rank's rows of each global validation chunk."""
    rank_tokens = batch_size * seq_len
    for step in range(steps):
        start = (step * world_size + rank) * rank_tokens
        span = _read_span(shards, start, rank_tokens + 1)
        inputs = span[:-1].reshape(batch_size, seq_len)
        targets = span[1:].reshape(batch_size, seq_len)
        yield _to_device(inputs, targets, device)


def _read_span(shards, start, length):
    """Tokens [start, start + length) of the concatenation of ``shards``."""
    pieces, offset = [], 0
    for tokens in shards:
        lo = max(start - offset, 0)
        hi = min(start + length - offset, len(tokens))
        if lo < hi:
            pieces.append(np.asarray(tokens[lo:hi]))
        offset += len(tokens)
    return np.concatenate(pieces).astype(np.int64)
