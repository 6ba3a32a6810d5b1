"""Tests for the synthetic smoke-test data (data/synthetic.py)."""

import glob
import json
import math
import multiprocessing
import os

import numpy as np
import pytest

from data.loader import TrainLoader
from data.shard import load_shard, read_header
from data.synthetic import make_synthetic_shards, synthetic_entropy

VOCAB, EOT = 1024, 1023
PARAMS = dict(vocab_size=VOCAB, eot_token=EOT, train_tokens=300_000, val_tokens=40_000,
              num_train_shards=3, seed=0)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Shards generated once for the read-only tests of this module."""
    out_dir = tmp_path_factory.mktemp("synthetic")
    train, val = make_synthetic_shards(out_dir, **PARAMS)
    return out_dir, train, val


def _stream(pattern):
    return np.concatenate([load_shard(p) for p in sorted(glob.glob(pattern))]).astype(np.int64)


def _bigram_conditional_entropy(tokens, eot):
    """Empirical H(next | current) in nats over pairs that do not involve ``eot``."""
    prev, nxt = tokens[:-1], tokens[1:]
    keep = (prev != eot) & (nxt != eot)
    pairs = np.unique(prev[keep] * VOCAB + nxt[keep], return_counts=True)[1]
    firsts = np.unique(prev[keep], return_counts=True)[1]
    total = pairs.sum()
    joint = -(pairs * np.log(pairs / total)).sum() / total
    marginal = -(firsts * np.log(firsts / total)).sum() / total
    return joint - marginal


def test_files_and_token_counts(generated):
    out_dir, train, val = generated
    train_files = sorted(glob.glob(train))
    assert [os.path.basename(p) for p in train_files] == [
        f"synthetic_train_{i:06d}.bin" for i in (1, 2, 3)]
    assert glob.glob(val) == [os.path.join(out_dir, "synthetic_val_000000.bin")]
    assert sum(read_header(p) for p in train_files) == PARAMS["train_tokens"]
    assert read_header(glob.glob(val)[0]) == PARAMS["val_tokens"]
    with open(os.path.join(out_dir, "manifest.json")) as f:
        assert json.load(f)["seed"] == 0


def test_tokens_in_vocab_and_documents_start_with_eot(generated):
    _, train, val = generated
    for pattern in (train, val):
        for path in glob.glob(pattern):
            tokens = load_shard(path)
            assert tokens.max() < VOCAB
            assert tokens[0] == EOT
    stream = _stream(train)
    doc_lengths = np.diff(np.flatnonzero(stream == EOT))
    assert 100 < doc_lengths.mean() < 600  # documents of a few hundred tokens


def test_entropy_is_learnable_and_matches_the_process(generated):
    _, train, _ = generated
    expected = synthetic_entropy(VOCAB, EOT, seed=0)
    assert 0.7 < expected < 1.6 < math.log(VOCAB)
    measured = _bigram_conditional_entropy(_stream(train), EOT)
    assert measured < 0.3 * math.log(VOCAB)
    assert abs(measured - expected) < 0.05


def test_real_loader_reads_synthetic_data(generated):
    _, train, _ = generated
    loader = TrainLoader(train, seq_len=64, batch_size=4, align_to_docs=True, eot_token=EOT,
                         vocab_size=VOCAB)
    x, y = loader.next_batch()
    assert (x[:, 0] == EOT).all() and x.shape == (4, 64)


def test_second_call_does_not_rewrite(tmp_path):
    params = dict(PARAMS, train_tokens=20_000, val_tokens=5_000)
    make_synthetic_shards(tmp_path, **params)
    mtimes = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(tmp_path / "*"))}
    assert make_synthetic_shards(tmp_path, **params) == (
        str(tmp_path / "synthetic_train_*.bin"), str(tmp_path / "synthetic_val_*.bin"))
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(str(tmp_path / "*"))} == mtimes


def test_changed_parameters_regenerate(tmp_path):
    params = dict(PARAMS, train_tokens=20_000, val_tokens=5_000)
    train, _ = make_synthetic_shards(tmp_path, **params)
    before = _stream(train)
    make_synthetic_shards(tmp_path, **dict(params, seed=1, num_train_shards=2))
    assert len(glob.glob(train)) == 2  # the stale third shard is gone
    after = _stream(train)
    assert len(after) == len(before) and not np.array_equal(after, before)


def test_corrupt_shard_is_regenerated(tmp_path):
    params = dict(PARAMS, train_tokens=20_000, val_tokens=5_000)
    train, _ = make_synthetic_shards(tmp_path, **params)
    before = _stream(train)
    path = sorted(glob.glob(train))[0]
    with open(path, "r+b") as f:
        f.truncate(2000)
    make_synthetic_shards(tmp_path, **params)
    np.testing.assert_array_equal(_stream(train), before)  # same content: deterministic


def test_concurrent_callers_agree(tmp_path):
    params = dict(PARAMS, train_tokens=50_000, val_tokens=5_000)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=make_synthetic_shards, args=(tmp_path / "shared",),
                               kwargs=params) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    train, val = make_synthetic_shards(tmp_path / "alone", **params)
    shared_train, shared_val = make_synthetic_shards(tmp_path / "shared", **params)
    np.testing.assert_array_equal(_stream(shared_train), _stream(train))
    np.testing.assert_array_equal(_stream(shared_val), _stream(val))
    assert not glob.glob(str(tmp_path / "shared" / ".*.tmp"))
