import json

from scripts import bench_comm
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
    assert [r.get("error") for r in runs] == [None] * 5
    assert [(r["world_size"], r["overlap"], r["shard_optimizer"]) for r in runs] == [
        (1, True, True), (2, True, True), (2, True, False), (2, False, True), (2, False, False)]
    for r in runs:
        assert r["step_ms"] > 0 and abs(r["step_ms"] - r["forward_backward_ms"] - r["optimizer_ms"]) < 1e-6
        assert 0 < r["optimizer_fraction"] < 1
        # with sharding each rank orthogonalizes its share; unsharded runs use the replicated path
        sharded = r["world_size"] > 1 and r["shard_optimizer"]
        assert (r["orthogonalized_by_rank0"] > 0) == sharded
    assert saved["summary"] and saved["summary"][0]["world_size"] == 2
