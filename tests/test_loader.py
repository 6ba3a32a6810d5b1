"""Tests for the distributed loader (data/loader.py)."""

import io

import numpy as np
import pytest
import torch

from common.errors import DataNotFoundError, ShardError
from data.loader import TrainLoader, count_val_steps, find_shards, val_batches
from data.shard import write_shard

EOT = 50256


def _arange_shards(directory, sizes, name="train"):
    """Shards whose tokens identify their position: shard k holds k*10000 + arange(size)."""
    paths = []
    for k, size in enumerate(sizes):
        path = directory / f"{name}_{k:06d}.bin"
        write_shard(path, k * 10000 + np.arange(size))
        paths.append(str(path))
    return paths


def _doc_shards(directory, sizes, seed=0):
    """Shards of eot-prefixed documents of random length 1..40 with tokens in [0, 1000)."""
    rng = np.random.default_rng(seed)
    paths = []
    for k, size in enumerate(sizes):
        tokens = rng.integers(0, 1000, size=size)
        tokens[rng.random(size) < 1 / 20] = EOT
        tokens[0] = EOT
        path = directory / f"docs_train_{k:06d}.bin"
        write_shard(path, tokens)
        paths.append(str(path))
    return paths


def _batches(loader, n):
    """The next ``n`` batches of ``loader`` as a list of (inputs, targets)."""
    return [loader.next_batch() for _ in range(n)]


def _assert_same_batches(a, b):
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ----- TrainLoader ----------------------------------------------------------------


def test_shapes_dtypes_and_shifted_targets(tmp_path):
    files = _arange_shards(tmp_path, [500])
    loader = TrainLoader(files, seq_len=8, batch_size=3)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (3, 8)
    assert x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)  # arange tokens: the target is the next position


def test_unaligned_row_positions_follow_the_formula(tmp_path):
    files = _arange_shards(tmp_path, [5000])
    T, B, W = 8, 2, 3
    loaders = [TrainLoader(files, seq_len=T, batch_size=B, rank=r, world_size=W)
               for r in range(W)]
    for call in range(4):
        cursor = call * W * B * T
        for rank, loader in enumerate(loaders):
            x, _ = loader.next_batch()
            starts = x[:, 0].tolist()
            assert starts == [cursor + (rank * B + i) * T for i in range(B)]
        assert loaders[0].state_dict()["cursor"] == cursor + W * B * T


@pytest.mark.parametrize("align", [False, True])
def test_ranks_are_disjoint_and_match_one_process(tmp_path, align):
    W, B, T = 3, 2, 16
    files = (_doc_shards if align else _arange_shards)(tmp_path, [300, 200, 350])
    settings = dict(seq_len=T, seed=3, shuffle=True, align_to_docs=align, eot_token=EOT)
    single = TrainLoader(files, batch_size=W * B, **settings)
    ranks = [TrainLoader(files, batch_size=B, rank=r, world_size=W, **settings)
             for r in range(W)]
    for _ in range(20):  # crosses shard boundaries and at least one epoch
        x, y = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        if not align:  # unique tokens: different rows never share a position
            starts = x[:, 0].tolist()
            assert len(set(starts)) == len(starts)
    assert single.epoch >= 1
    assert all(loader.state_dict() == single.state_dict() for loader in ranks)


def test_rows_never_span_shards(tmp_path):
    files = _arange_shards(tmp_path, [100, 37, 250])
    loader = TrainLoader(files, seq_len=10, batch_size=2)
    for _ in range(20):
        x, y = loader.next_batch()
        rows = torch.cat([x, y[:, -1:]], dim=1)
        assert (rows.diff(dim=1) == 1).all()  # contiguous positions of one shard


def test_aligned_rows_start_at_documents(tmp_path):
    files = _doc_shards(tmp_path, [2000, 1500])
    loader = TrainLoader(files, seq_len=32, batch_size=4, align_to_docs=True, eot_token=EOT)
    for _ in range(30):
        x, y = loader.next_batch()
        assert (x[:, 0] == EOT).all()
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_aligned_cursor_moves_to_start_plus_seq_len(tmp_path):
    tokens = np.arange(100)
    tokens[[0, 5, 30, 33, 70]] = EOT
    write_shard(tmp_path / "a.bin", tokens)
    loader = TrainLoader([str(tmp_path / "a.bin")], seq_len=10, batch_size=1,
                         align_to_docs=True, eot_token=EOT)
    starts = []
    for _ in range(4):
        x, _ = loader.next_batch()
        starts.append(int(x[0, 1]) - 1)  # token after the eot identifies the position
    # row at 0 -> cursor 10 -> next eot at 30 -> cursor 40 -> eot at 70 -> wrap to 0
    assert starts == [0, 30, 70, 0]


def test_epoch_wrap_prints_one_line(tmp_path, capsys):
    files = _arange_shards(tmp_path, [40, 40])
    loader = TrainLoader(files, seq_len=9, batch_size=4)  # one call per shard
    _batches(loader, 2)
    assert loader.epoch == 0
    loader.next_batch()
    assert loader.epoch == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "epoch" in line]
    assert len(lines) == 1


def _shard_sequence(files, seed, calls):
    loader = TrainLoader(files, seq_len=9, batch_size=1, seed=seed, shuffle=True)
    return [int(loader.next_batch()[0][0, 0]) // 10000 for _ in range(calls)]


def test_determinism_and_seeded_shuffle(tmp_path):
    files = _arange_shards(tmp_path, [10] * 6)  # one row per shard
    first = _shard_sequence(files, seed=0, calls=12)
    assert first == _shard_sequence(files, seed=0, calls=12)
    assert sorted(first[:6]) == list(range(6)) and sorted(first[6:]) == list(range(6))
    assert first != _shard_sequence(files, seed=1, calls=12)
    unshuffled = TrainLoader(files, seq_len=9, batch_size=1)
    assert [int(unshuffled.next_batch()[0][0, 0]) // 10000 for _ in range(6)] == list(range(6))


@pytest.mark.parametrize("align,shuffle", [(False, False), (False, True), (True, True)])
def test_state_dict_round_trip(tmp_path, align, shuffle):
    files = (_doc_shards if align else _arange_shards)(tmp_path, [300, 200, 260])
    settings = dict(seq_len=16, batch_size=2, rank=1, world_size=2, seed=5, shuffle=shuffle,
                    align_to_docs=align, eot_token=EOT)
    reference = _batches(TrainLoader(files, **settings), 30)  # several epochs
    for stop in range(0, 30, 3):
        loader = TrainLoader(files, **settings)
        _batches(loader, stop)
        buffer = io.BytesIO()
        torch.save(loader.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        resumed = TrainLoader(files, **settings)
        resumed.load_state_dict(state)
        _assert_same_batches(_batches(resumed, 30 - stop), reference[stop:])


def test_state_values_are_plain_ints(tmp_path):
    loader = TrainLoader(_arange_shards(tmp_path, [100]), seq_len=8, batch_size=2)
    loader.next_batch()
    assert all(type(v) is int for v in loader.state_dict().values())


def test_load_state_rejects_other_settings(tmp_path):
    files = _arange_shards(tmp_path, [100])
    state = TrainLoader(files, seq_len=8, batch_size=2, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        TrainLoader(files, seq_len=8, batch_size=2, seed=2).load_state_dict(state)


def test_token_id_beyond_vocab_raises(tmp_path):
    tokens = np.arange(200) % 50
    tokens[123] = 77
    write_shard(tmp_path / "bad_train.bin", tokens)
    loader = TrainLoader([str(tmp_path / "bad_train.bin")], seq_len=8, batch_size=2,
                         vocab_size=50)
    with pytest.raises(ShardError) as info:
        loader.next_batch()
    message = str(info.value)
    assert "bad_train.bin" in message and "77" in message and "123" in message


def test_missing_fineweb_files_name_the_download_command(tmp_path):
    pattern = str(tmp_path / "fineweb10B" / "fineweb_train_*.bin")
    with pytest.raises(DataNotFoundError) as info:
        TrainLoader(pattern, seq_len=8, batch_size=2)
    assert "python -m data.cached_fineweb10B 8" in str(info.value)
    assert pattern in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_missing_other_files_name_the_config_keys(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        find_shards(str(tmp_path / "mine_*.bin"))
    assert "data.train_files" in str(info.value)
    assert "cached_fineweb10B" not in str(info.value)


def test_too_small_shards_raise_instead_of_looping(tmp_path):
    files = _arange_shards(tmp_path, [5, 6])
    with pytest.raises(ValueError, match="row"):
        TrainLoader(files, seq_len=8, batch_size=1).next_batch()


# ----- validation -----------------------------------------------------------------


def test_val_batches_cover_exact_prefix_and_split_ranks(tmp_path):
    # two val shards of 50 and 80 tokens: rows cross the boundary at token 50
    write_shard(tmp_path / "val_000000.bin", np.arange(50))
    write_shard(tmp_path / "val_000001.bin", np.arange(50, 130))
    pattern = str(tmp_path / "val_*.bin")
    W, B, T, steps = 2, 2, 6, 4
    tokens = W * B * T * steps  # 96
    assert count_val_steps(tokens, T, B, W) == steps
    per_rank = [list(val_batches(pattern, tokens=tokens, seq_len=T, batch_size=B, rank=r,
                                 world_size=W)) for r in range(W)]
    assert all(len(batches) == steps for batches in per_rank)
    seen = []
    for step in range(steps):
        for rank in range(W):
            x, y = per_rank[rank][step]
            assert x.shape == y.shape == (B, T) and x.dtype == torch.int64
            assert torch.equal(y, x + 1)
            seen.append(x.flatten())
    # in step-then-rank order the rows are exactly tokens 0..tokens-1, each once
    assert torch.equal(torch.cat(seen), torch.arange(tokens))


def test_val_batches_need_one_extra_token(tmp_path):
    write_shard(tmp_path / "val_000000.bin", np.arange(48))
    with pytest.raises(ValueError, match="val_000000.bin"):
        val_batches(str(tmp_path / "val_*.bin"), tokens=48, seq_len=8, batch_size=2)
    assert len(list(val_batches(str(tmp_path / "val_*.bin"), tokens=40, seq_len=8,
                                batch_size=1))) == 5


def test_val_batches_check_vocab(tmp_path):
    tokens = np.arange(100) % 10
    tokens[20] = 500
    write_shard(tmp_path / "val_000000.bin", tokens)
    with pytest.raises(ShardError, match="500"):
        val_batches(str(tmp_path / "val_*.bin"), tokens=32, seq_len=8, batch_size=2,
                    vocab_size=10)


def test_bad_eval_token_count(tmp_path):
    write_shard(tmp_path / "val_000000.bin", np.arange(1000))
    with pytest.raises(ValueError, match="eval.tokens") as info:
        val_batches(str(tmp_path / "val_*.bin"), tokens=100, seq_len=8, batch_size=2,
                    world_size=2, rank=0)
    assert "32" in str(info.value)
    with pytest.raises(ValueError, match="eval.tokens"):
        count_val_steps(100, 8, 2, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_match_cpu(tmp_path):
    files = _doc_shards(tmp_path, [2000])
    settings = dict(seq_len=32, batch_size=4, align_to_docs=True, eot_token=EOT)
    cpu = TrainLoader(files, **settings)
    gpu = TrainLoader(files, device="cuda", **settings)
    for _ in range(3):
        (xc, yc), (xg, yg) = cpu.next_batch(), gpu.next_batch()
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
