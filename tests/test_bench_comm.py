import json
import time

import torch

from distributed import collectives
from scripts.bench import comm as bench_comm
from scripts.bench import timing
from tests.test_train import SMOKE, TINY


def test_bench_comm_measures_every_variant_and_writes_json(tmp_path):
    """The benchmark runs (no timing is asserted): one process, then two with overlap and sharding
    on and off; only the sharded two-process runs orthogonalize a share on rank 0."""
    out = tmp_path / "comm.json"
    result = bench_comm.main(["--config", SMOKE, "--worlds=1,2", "--steps=1", "--warmup=1", "--random-data",
                              f"--out={out}", *TINY])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    runs = saved["results"]
    assert saved["timer"].startswith("host")  # CPU: gloo waits block the host, so host clocks are honest
    assert [r.get("error") for r in runs] == [None] * 6
    assert [(r["world_size"], r["one_rank_group"], r["overlap"], r["shard_optimizer"]) for r in runs] == [
        (1, False, True, True), (1, True, True, True), (2, False, True, True), (2, False, True, False),
        (2, False, False, True), (2, False, False, False)]
    for r in runs:
        assert r["step_ms"] > 0 and abs(r["step_ms"] - r["forward_backward_ms"] - r["optimizer_ms"]) < 1e-6
        assert 0 < r["optimizer_fraction"] < 1
        assert r["timer"] == "host" and r["comm_wait_ms"] >= 0 and r["gather_wait_ms"] >= 0
        if r["world_size"] == 1 and not r["one_rank_group"]:  # nothing to reduce or gather
            assert r["comm_wait_ms"] == 0 and r["gather_wait_ms"] == 0
        # with sharding each rank orthogonalizes its share (a one-rank group: all of it); unsharded runs and the
        # plain process use the replicated path
        sharded = (r["world_size"] > 1 or r["one_rank_group"]) and r["shard_optimizer"]
        assert (r["orthogonalized_by_rank0"] > 0) == sharded
    assert saved["summary"][0]["world_size"] == 2 and saved["summary"][1]["world_size"] == 1
    assert "one_rank_group_overhead_ms" in saved["summary"][1]


class _SlowWork:
    def __init__(self, seconds):
        self.seconds, self.waited = seconds, 0

    def wait(self):
        time.sleep(self.seconds)
        self.waited += 1
        return True

    def is_completed(self):
        return self.waited > 0


def test_timed_waits_brackets_each_wait_and_restores_the_collectives(monkeypatch):
    """The wrapper times each wait of an asynchronous collective by its kind (reductions vs update
    gathers), passes synchronous calls (None) and other attributes through, and puts the library's
    functions back afterwards."""
    monkeypatch.setattr(collectives, "all_reduce_average", lambda buffer, async_op=True: _SlowWork(0.03))
    monkeypatch.setattr(collectives, "all_gather",
                        lambda out, inp, async_op=True: _SlowWork(0.01) if async_op else None)
    originals = {name: getattr(collectives, name) for name in timing.WAIT_KINDS}
    clock = timing.Clock(torch.device("cpu"))
    with timing.timed_waits(clock) as log:
        work = collectives.all_reduce_average(None)
        assert not work.is_completed()
        assert work.wait() is True and work.is_completed()
        collectives.all_gather(None, None).wait()
        assert collectives.all_gather(None, None, async_op=False) is None
    assert {name: getattr(collectives, name) for name in timing.WAIT_KINDS} == originals
    assert [kind for kind, _, _ in log] == ["comm_wait", "gather_wait"]
    reduce_ms, gather_ms = (clock.ms(start, end) for _, start, end in log)
    assert reduce_ms >= 30 and gather_ms >= 10  # at least the sleep inside each wait (never shorter)
