import json

from scripts.bench import optimizers as bench_optimizers
from tests.test_train import SMOKE, TINY


def test_bench_optimizers_times_every_optimizer_and_writes_json(tmp_path):
    out = tmp_path / "opt.json"
    result = bench_optimizers.main(["--config", SMOKE, "--seq-len=128", "--warmup=1", "--repeat=2",
                                    f"--out={out}", *TINY])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["device"] == "cpu" and saved["seq_len"] == 128 and saved["forward_backward_ms"] > 0
    assert sorted(saved["optimizers"]) == ["adamw", "muon", "scion", "signum"]
    for name, r in saved["optimizers"].items():
        assert r["step_ms"] > 0 and r["ratio_to_fwd_bwd"] > 0
        assert (r["orthogonalize"] is not None) == (name in ("muon", "scion"))
