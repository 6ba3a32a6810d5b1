"""Token shard file format.

A shard is a binary file made of a header of ``HEADER_INTS`` little-endian int32
values followed by the tokens as little-endian uint16::

    header[0] = MAGIC    (20240520)
    header[1] = VERSION  (1)
    header[2] = number of tokens
    header[3:] = 0

This is the format of the published FineWeb GPT-2 token shards
(``kjj0/fineweb10B-gpt2``). Shards are memory-mapped when read, so a 100M-token
file is never loaded fully into RAM.
"""

import os

import numpy as np

from common.atomic import atomic_write
from common.errors import ShardError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_TOKEN = int(np.iinfo(np.uint16).max)


def write_shard(path, tokens):
    """Write ``tokens`` (1-D integers in [0, 65535]) as a shard at ``path``.

    The file is written atomically (common/atomic.py), so readers never see a
    half-written shard. Parent directories are created as needed.
    """
    tokens = _as_token_array(tokens)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, len(tokens)

    def write(f):
        f.write(header.tobytes())
        f.write(tokens.tobytes())

    atomic_write(path, write)


def _as_token_array(tokens):
    """Return ``tokens`` as a 1-D little-endian uint16 array, checking the range."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(TOKEN_DTYPE)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr > MAX_TOKEN)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(
            f"token value {int(arr[index])} at position {index} is outside [0, {MAX_TOKEN}]"
        )
    return arr.astype(TOKEN_DTYPE)


def read_header(path):
    """Validate the header of the shard at ``path`` and return its token count."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ShardError(
            f"{path}: file is {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte header"
        )
    header = np.frombuffer(raw, dtype="<i4")
    magic, version, count = (int(x) for x in header[:3])
    if magic != MAGIC:
        raise ShardError(f"{path}: bad magic number: found {magic}, expected {MAGIC}")
    if version != VERSION:
        raise ShardError(
            f"{path}: unsupported shard version {version} (supported: {VERSION})"
        )
    if count < 0:
        raise ShardError(f"{path}: negative token count {count} in header")
    _check_size(path, count)
    return count


def _check_size(path, count):
    """Raise ShardError unless the file size matches the header's token count."""
    expected = HEADER_BYTES + count * TOKEN_DTYPE.itemsize
    actual = os.path.getsize(path)
    if actual == expected:
        return
    problem = "truncated" if actual < expected else "longer than the header says"
    raise ShardError(
        f"{path}: file is {problem}: header count {count} tokens means "
        f"{expected} bytes expected, but the file has {actual} bytes"
    )


def load_shard(path, count=None):
    """Return the tokens of the shard at ``path`` as a read-only uint16 memmap. ``count``: its token count
    when the header was read already (the file's size is still checked against it)."""
    if count is None:
        count = read_header(path)
    else:
        _check_size(path, count)
    if count == 0:
        empty = np.empty(0, dtype=TOKEN_DTYPE)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))
