"""Tests for the FineWeb download and tokenization scripts (no network access)."""

import base64
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data import cached_fineweb10B, fineweb
from data.shard import load_shard, read_header, write_shard

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = 50256
MERGES = [b"th", b"he", b" t", b"the", b" the", b"in", b"ing"]
DOCS = ["the thing is here", "Another document,\nwith two lines.", "café ünïcode ☃ the end"]


# ----- cached_fineweb10B ----------------------------------------------------------


@pytest.fixture
def fake_download(monkeypatch):
    """Replace the Hub download with writing a small valid shard; record the names."""
    calls = []

    def download_file(name, dest_dir):
        calls.append(name)
        write_shard(os.path.join(dest_dir, name), np.arange(100))

    monkeypatch.setattr(cached_fineweb10B, "download_file", download_file)
    return calls


def test_download_fetches_missing_files(tmp_path, fake_download):
    cached_fineweb10B.main(["2", "--dir", str(tmp_path)])
    expected = ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert fake_download == expected
    assert all(read_header(tmp_path / name) == 100 for name in expected)


def test_download_skips_valid_and_replaces_invalid(tmp_path, fake_download, capsys):
    cached_fineweb10B.main(["2", "--dir", str(tmp_path)])
    fake_download.clear()
    cached_fineweb10B.main(["2", "--dir", str(tmp_path)])
    assert fake_download == []
    assert "[3/3]" in capsys.readouterr().out
    with open(tmp_path / "fineweb_train_000001.bin", "r+b") as f:
        f.truncate(500)  # shorter than the header
    cached_fineweb10B.main(["3", "--dir", str(tmp_path)])
    assert fake_download == ["fineweb_train_000001.bin", "fineweb_train_000003.bin"]
    assert read_header(tmp_path / "fineweb_train_000001.bin") == 100


@pytest.mark.parametrize("n", ["0", "104", "-1", "eight"])
def test_download_count_out_of_range(tmp_path, fake_download, n):
    with pytest.raises(SystemExit) as info:
        cached_fineweb10B.main([n, "--dir", str(tmp_path)])
    assert info.value.code == 2
    assert fake_download == []


def test_scripts_run_from_repo_root():
    result = subprocess.run([sys.executable, "data/cached_fineweb10B.py", "0"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "1..103" in result.stderr
    result = subprocess.run([sys.executable, "data/fineweb.py", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "--text-files" in result.stdout


# ----- fineweb.py -----------------------------------------------------------------


@pytest.fixture
def bpe_file(tmp_path):
    """A tiny .tiktoken ranks file: the 256 single bytes, then a few merges."""
    tokens = [bytes([i]) for i in range(256)] + MERGES
    path = tmp_path / "tiny.tiktoken"
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def encoder(bpe_file):
    return fineweb.load_encoder(bpe_file)


def _split_at_eot(tokens):
    """Documents of an eot-prefixed token stream (without their eot)."""
    starts = np.flatnonzero(tokens == EOT).tolist() + [len(tokens)]
    assert starts[0] == 0, "the stream must start with a document"
    return [tokens[a + 1:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]


def test_local_bpe_encoder_uses_the_merges(encoder):
    assert encoder.eot_token == EOT
    assert encoder.encode_ordinary("the") == [256 + MERGES.index(b"the")]
    assert encoder.encode_ordinary(" the") == [256 + MERGES.index(b" the")]


def test_tokenize_documents_round_trip(encoder):
    arrays = list(fineweb.tokenize_documents(DOCS, encoder))
    for doc, tokens in zip(DOCS, arrays, strict=True):
        assert tokens.dtype == np.uint16
        assert tokens[0] == EOT and EOT not in tokens[1:]
        assert encoder.decode(tokens[1:].tolist()) == doc
    parallel = list(fineweb.tokenize_documents(DOCS * 5, encoder, workers=2, chunksize=2))
    for a, b in zip(arrays * 5, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_write_token_shards_splits_by_size(tmp_path, encoder):
    arrays = list(fineweb.tokenize_documents(DOCS, encoder))
    total = sum(len(a) for a in arrays)
    paths = fineweb.write_token_shards(iter(arrays), tmp_path, "tiny", shard_size=16)
    names = [os.path.basename(p) for p in paths]
    assert names[0] == "tiny_val_000000.bin"
    assert names[1:] == [f"tiny_train_{i:06d}.bin" for i in range(1, len(paths))]
    sizes = [read_header(p) for p in paths]
    assert len(paths) == -(-total // 16) and sizes[:-1] == [16] * (len(paths) - 1)
    assert sum(sizes) == total  # the last, partial shard is written too
    stream = np.concatenate([load_shard(p) for p in paths])
    np.testing.assert_array_equal(stream, np.concatenate(arrays))


def test_main_with_text_files(tmp_path, bpe_file, encoder):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(f"{DOCS[0]}\n\n\n{DOCS[1]}\n", encoding="utf-8")
    second.write_text(f"\n{DOCS[2]}\n\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--text-files", str(first), str(second), "--bpe", bpe_file, "--out", str(out),
            "--prefix", "mine", "--shard-size", "20", "--workers", "2"]
    paths = fineweb.main(argv)
    assert sorted(glob.glob(str(out / "mine_*.bin"))) == sorted(paths) and len(paths) > 2
    stream = np.concatenate([load_shard(p) for p in paths])
    decoded = [encoder.decode(doc.tolist()) for doc in _split_at_eot(stream)]
    assert decoded == DOCS
    with pytest.raises(SystemExit, match="overwrite"):
        fineweb.main(argv)
    assert fineweb.main(argv + ["--overwrite", "--shard-size", "1000"]) == [
        str(out / "mine_val_000000.bin")]
    assert sorted(glob.glob(str(out / "mine_*.bin"))) == [str(out / "mine_val_000000.bin")]


def test_main_one_doc_per_file_and_local_jsonl(tmp_path, bpe_file, encoder):
    paths = []
    for i, doc in enumerate(["para one\n\npara two", "single"]):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_text(doc, encoding="utf-8")
    shards = fineweb.main(["--text-files", *map(str, paths), "--one-doc-per-file", "--bpe",
                           bpe_file, "--out", str(tmp_path / "o1"), "--workers", "1"])
    docs = _split_at_eot(np.concatenate([load_shard(p) for p in shards]))
    assert [encoder.decode(d.tolist()) for d in docs] == ["para one\n\npara two", "single"]

    dataset = tmp_path / "ds"
    dataset.mkdir()
    with open(dataset / "part.jsonl", "w", encoding="utf-8") as f:
        for doc in DOCS:
            f.write(json.dumps({"text": doc, "id": 1}) + "\n")
    shards = fineweb.main(["--local-dataset", str(dataset), "--bpe", bpe_file,
                           "--out", str(tmp_path / "o2"), "--workers", "1"])
    docs = _split_at_eot(np.concatenate([load_shard(p) for p in shards]))
    assert [encoder.decode(d.tolist()) for d in docs] == DOCS


def test_sources_are_mutually_exclusive(tmp_path):
    with pytest.raises(SystemExit):
        fineweb.parse_args(["--text-files", "a.txt", "--local-dataset", str(tmp_path)])
    with pytest.raises(SystemExit):
        fineweb.parse_args([])


def test_own_text_is_named_text_and_the_report_says_where_validation_came_from(tmp_path, bpe_file, capsys):
    """Your own files become text_*.bin (never fineweb_*); the report gives each shard's tokens and the files of
    the validation shard, and warns when that is one file of several, or when there is no training shard."""
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("\n\n".join(DOCS * 3), encoding="utf-8")
    second.write_text(DOCS[0], encoding="utf-8")
    paths = fineweb.main(["--text-files", str(first), str(second), "--bpe", bpe_file, "--out", str(tmp_path / "o"),
                          "--shard-size", "20", "--workers", "1"])
    assert all(os.path.basename(p).startswith("text_") for p in paths)
    out = capsys.readouterr().out
    assert "text_val_000000.bin: 20 tokens (validation)" in out and "text_train_000001.bin" in out
    assert "validation documents from: a.txt" in out and "WARNING: the validation shard holds text of one file" in out
    fineweb.main(["--text-files", str(second), "--bpe", bpe_file, "--out", str(tmp_path / "p"),
                  "--shard-size", "100000", "--workers", "1"])
    assert "WARNING: no training shard" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="openai-whisper"):
        fineweb.main(["--text-files", str(second), "--bpe", str(tmp_path / "none.tiktoken"), "--out",
                      str(tmp_path / "q")])
