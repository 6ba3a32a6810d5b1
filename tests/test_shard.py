"""Tests for the token shard format (data/shard.py)."""

import os

import numpy as np
import pytest

from common.errors import ShardError
from data.shard import HEADER_BYTES, HEADER_INTS, MAGIC, VERSION, load_shard, read_header, write_shard


def _write_raw(path, header_values, num_token_bytes):
    """Write a file with the given first header ints and ``num_token_bytes`` of zeros."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:len(header_values)] = header_values
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(b"\0" * num_token_bytes)


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "shard.bin"  # parent directory is created
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.int64)
    write_shard(path, tokens)
    assert read_header(path) == len(tokens)
    assert os.path.getsize(path) == HEADER_BYTES + 2 * len(tokens)
    loaded = load_shard(path)
    assert isinstance(loaded, np.memmap)
    assert loaded.dtype == np.uint16 and loaded.ndim == 1
    assert not loaded.flags.writeable
    np.testing.assert_array_equal(loaded, tokens)
    header = np.fromfile(path, dtype="<i4", count=3)
    assert header.tolist() == [MAGIC, VERSION, len(tokens)]


def test_write_accepts_lists_and_empty(tmp_path):
    write_shard(tmp_path / "a.bin", [3, 2, 1])
    np.testing.assert_array_equal(load_shard(tmp_path / "a.bin"), [3, 2, 1])
    write_shard(tmp_path / "empty.bin", [])
    assert read_header(tmp_path / "empty.bin") == 0
    assert len(load_shard(tmp_path / "empty.bin")) == 0


def test_write_leaves_no_temp_files(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(10))
    write_shard(tmp_path / "a.bin", np.arange(20))  # overwrite in place
    assert os.listdir(tmp_path) == ["a.bin"]
    assert read_header(tmp_path / "a.bin") == 20


@pytest.mark.parametrize("bad", [-1, 65536, 10**9])
def test_out_of_range_tokens_rejected(tmp_path, bad):
    with pytest.raises(ValueError, match=str(bad)):
        write_shard(tmp_path / "bad.bin", [1, 2, bad, 3])
    assert not (tmp_path / "bad.bin").exists()


def test_bad_magic(tmp_path):
    path = tmp_path / "magic.bin"
    _write_raw(path, [1234, VERSION, 4], 8)
    with pytest.raises(ShardError, match="magic") as info:
        read_header(path)
    assert "magic.bin" in str(info.value)
    assert "1234" in str(info.value) and str(MAGIC) in str(info.value)


def test_wrong_version(tmp_path):
    path = tmp_path / "version.bin"
    _write_raw(path, [MAGIC, 7, 4], 8)
    with pytest.raises(ShardError, match="version") as info:
        load_shard(path)
    assert "version.bin" in str(info.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "trunc.bin"
    _write_raw(path, [MAGIC, VERSION, 100], 50)
    with pytest.raises(ShardError, match="truncated") as info:
        load_shard(path)
    message = str(info.value)
    assert "trunc.bin" in message
    assert "100" in message  # header count
    assert str(HEADER_BYTES + 200) in message and str(HEADER_BYTES + 50) in message


def test_file_longer_than_header_says(tmp_path):
    path = tmp_path / "long.bin"
    _write_raw(path, [MAGIC, VERSION, 3], 10)
    with pytest.raises(ShardError) as info:
        read_header(path)
    assert "long.bin" in str(info.value) and "longer" in str(info.value)


def test_file_shorter_than_header(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(ShardError, match="header") as info:
        load_shard(path)
    assert "short.bin" in str(info.value)


def test_shard_error_is_value_error():
    assert issubclass(ShardError, ValueError)
