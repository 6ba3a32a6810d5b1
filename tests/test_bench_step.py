import json

from scripts.bench import step as bench_step
from tests.test_train import SMOKE, TINY


def test_bench_step_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = bench_step.main(["--config", SMOKE, *TINY, "--steps=2", "--warmup=1", "--random-data", f"--out={out}"])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["device"] == "cpu" and saved["timed_steps"] == 2 and saved["tokens_per_step"] == 1024
    assert saved["step_ms_mean"] > 0 and saved["tokens_per_s"] > 0 and saved["mfu"] is None
