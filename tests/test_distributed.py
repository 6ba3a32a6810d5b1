"""Distributed training on CPU with gloo: several processes end where one process ends, reductions
overlap backward, each rank orthogonalizes only its share, a killed rank is restarted from the last
checkpoint with nothing lost, and bad input fails with a message instead of hanging."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import train_gpt
from tests.test_train import SMOKE, TINY
from training.run_dir import read_metrics

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# The equality runs are in float64 (model.dtype): reductions sum in a different order than one
# process does, so weights agree to rounding (~1e-10 after 12 steps), not bitwise. Adam's eps is
# the one amplifier: an entry whose gradient is mathematically (nearly) zero carries a rounding
# residue of ~1e-18, and Adam steps it by lr x residue / eps. With Muon's eps of 1e-10 that grows
# to ~1e-6 in the value embeddings after 12 steps (in float32 to ~1e-3), so these runs use eps 1e-8
# (AdamW's default), which keeps every weight within ~5e-10. A real bug moves weights by >= 1e-3.
ATOL = 1e-8
EPS = ["--optim.muon.adam_eps=1e-8"]


def torchrun(nproc, args, tmp_path, run_id, extra=(), env=None, script=None, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra,
           str(script or REPO / "train_gpt.py"), "--config", SMOKE, *TINY, f"--log.dir={tmp_path}",
           f"--log.run_id={run_id}", *args]
    return subprocess.run(cmd, cwd=REPO, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def final_weights(run_dir):
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))
    return torch.load(ckpts[-1], weights_only=True)["model"]


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"largest weight difference {worst:.3g} > {atol:g}"


@pytest.mark.parametrize("nproc, optim, flags", [
    (2, "muon", ()), (2, "scion", ()), (2, "adamw", ()), (4, "muon", ()), (4, "scion", ()),
    # momentum kept in p.grad: the reduction must not rebind it
    pytest.param(2, "scion", ("--optim.scion.light=true",), id="2-scion-light"),
    # reductions after backward, 2 micro-batches per step
    pytest.param(2, "muon", ("--distributed.overlap=false", "--data.micro_batch_size=1"), id="2-muon-no-overlap-accum"),
    # every rank orthogonalizes every matrix
    pytest.param(2, "scion", ("--distributed.shard_optimizer=false",), id="2-scion-unsharded"),
])
def test_several_processes_end_with_the_weights_of_one(tmp_path, nproc, optim, flags):
    """Same global batch: each of N ranks takes 1/N of the rows. Depth 2 gives 2 matrices per
    shape, so with 4 ranks every chunk is padded (more ranks than matrices) and must still work."""
    args = [f"--optim.name={optim}", "--checkpoint.every=0", "--eval.every=0", "--data.micro_batch_size=2",
            "--model.dtype=float64", *EPS, *flags]
    out = torchrun(nproc, args, tmp_path, "many")
    assert out.returncode == 0, out.stderr[-3000:]
    assert train_gpt.main(["--config", SMOKE, *TINY, f"--log.dir={tmp_path}", "--log.run_id=one", *args]) == 0
    assert_same_weights(final_weights(tmp_path / "many"), final_weights(tmp_path / "one"), ATOL)
    many, one = read_metrics(tmp_path / "many"), read_metrics(tmp_path / "one")
    for a, b in zip(many, one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-9)


@pytest.mark.parametrize("optim, flags", [
    ("muon", ()), ("scion", ()), ("adamw", ()),
    pytest.param("muon", ("--constraint.method=spectral_normalize", "--data.micro_batch_size=1"),
                 id="muon-constrained-accum"),
])
def test_a_one_rank_group_runs_the_distributed_paths_and_ends_where_one_process_ends(tmp_path, optim, flags):
    """distributed.one_rank_group: one plain process with a group of one takes every distributed path
    (gradient hooks and flat buckets, reduce-scatter, sharded step with its all-gather, the constraint's
    gather) and ends with bitwise the weights and losses of the plain run without a group."""
    args = ["--config", SMOKE, *TINY, f"--log.dir={tmp_path}", f"--optim.name={optim}", "--checkpoint.every=0",
            "--eval.every=3", "--data.micro_batch_size=2", *flags]
    assert train_gpt.main([*args, "--log.run_id=plain"]) == 0
    assert train_gpt.main([*args, "--log.run_id=group", "--distributed.one_rank_group=true"]) == 0
    assert_same_weights(final_weights(tmp_path / "group"), final_weights(tmp_path / "plain"), 0.0)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_time_ms"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "group")) == strip(read_metrics(tmp_path / "plain"))
    assert "world size 1" in (tmp_path / "group" / "log.txt").read_text()


@pytest.mark.slow
def test_a_two_process_muon_checkpoint_resumes_on_one_process(tmp_path):
    """A job checkpointed by 2 ranks (each owning half of Muon's matrices, momenta gathered into the
    checkpoint) and resumed by 1 process ends where the 2-process run ends (float64, same global batch)."""
    import shutil

    args = ["--optim.name=muon", "--schedule.steps=8", "--checkpoint.every=4", "--eval.every=0",
            "--data.micro_batch_size=2", "--model.dtype=float64", *EPS]
    out = torchrun(2, args, tmp_path, "many")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "many", run)
    (run / "checkpoints" / "step_000008.pt").unlink()
    resume = [*args, f"--checkpoint.resume={run / 'checkpoints/step_000004.pt'}"]
    assert train_gpt.main(["--config", SMOKE, *TINY, f"--log.dir={tmp_path}", *resume]) == 0
    assert "at step 4" in (run / "log.txt").read_text()
    assert_same_weights(final_weights(tmp_path / "many"), final_weights(run), ATOL)


def test_the_one_rank_group_really_takes_the_distributed_paths(tmp_path, monkeypatch):
    """The same switch, watched: the trainer has a gradient sync, its chunks go through sharded_step with
    one batched orthogonalization per shape, and the process group exists while the run lasts."""
    import torch.distributed as dist

    from distributed import sharding as sharded

    seen = {"batches": [], "group": []}
    original_step, original_updates = sharded.sharded_step, None

    def watch_step(optimizer, sync, rank, world_size):
        nonlocal original_updates
        seen["group"].append((dist.is_initialized() and dist.get_world_size(), len(sync.chunks)))
        if original_updates is None:
            original_updates = type(optimizer).updates

            def updates(self, group, params, grads):
                seen["batches"].append(len(params))
                return original_updates(self, group, params, grads)

            monkeypatch.setattr(type(optimizer), "updates", updates)
        return original_step(optimizer, sync, rank, world_size)

    monkeypatch.setattr("training.trainer.sharded_step", watch_step)
    assert train_gpt.main(["--config", SMOKE, *TINY, f"--log.dir={tmp_path}", "--schedule.steps=2",
                           "--eval.every=0", "--distributed.one_rank_group=true"]) == 0
    assert not dist.is_initialized()  # shut down at the end
    chunks = seen["group"][0][1]
    assert seen["group"] == [(1, chunks)] * 2 and chunks > 0  # one chunk per matrix with a world of one
    assert len(seen["batches"]) < 2 * chunks and sum(seen["batches"]) == 2 * chunks  # batched by shape


def test_kill_a_rank_and_restart_loses_nothing(tmp_path):
    """torchrun --max-restarts=1: rank 1 is SIGKILLed after step 7; every rank restarts from the
    step-4 checkpoint and the run ends with exactly the weights and losses of an uninterrupted run."""
    args = ["--optim.name=muon", "--checkpoint.every=4", "--checkpoint.resume=latest", "--eval.every=6"]
    killed = torchrun(2, args, tmp_path, "killed", extra=["--max-restarts=1"],
                      env={"NANOGPT_FAULT_KILL_AT": "1:7"})
    assert killed.returncode == 0, killed.stderr[-3000:]
    straight = torchrun(2, args, tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    log = (tmp_path / "killed" / "log.txt").read_text()
    assert "torchrun restart 1" in log and "at step 4" in log
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_time_ms"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "killed")) == strip(read_metrics(tmp_path / "straight"))
    assert_same_weights(final_weights(tmp_path / "killed"), final_weights(tmp_path / "straight"), 0.0)


WRAPPER = """
import os, sys, time
import train_gpt
rank = int(os.environ["RANK"])
{body}
sys.exit(train_gpt.main(sys.argv[1:]))
"""


def test_ranks_with_different_configs_fail_with_a_message(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(WRAPPER.format(body='if rank == 1: sys.argv.append("--seed=7")'))
    out = torchrun(2, [], tmp_path, "mismatch", script=script)
    assert out.returncode != 0
    assert "ranks disagree on the config" in out.stderr


def test_a_stalled_rank_times_out_with_a_message_instead_of_hanging(tmp_path):
    body = textwrap.dedent("""
        from distributed import process_group as distributed
        real = distributed.check_same_everywhere
        def stall(*a, **k):
            if rank == 1:
                time.sleep(15)
            return real(*a, **k)
        distributed.check_same_everywhere = stall
    """)
    script = tmp_path / "stall.py"
    script.write_text(WRAPPER.format(body=body))
    t0 = time.time()
    out = torchrun(2, ["--distributed.timeout_s=3"], tmp_path, "stall", script=script, timeout=120)
    assert out.returncode != 0 and time.time() - t0 < 100
    assert "a collective operation failed" in out.stderr and "distributed.timeout_s = 3" in out.stderr


# ---------------------------------------------------------------------------------------------
# The machinery itself, in spawned gloo processes


def _worker(rank, world, port, result_path):
    import torch.distributed as dist

    from distributed.grad_sync import GradSync
    from distributed.sharding import plan_chunks, sharded_step
    from model import GPT
    from optimizers import build_optimizer
    from optimizers import muon as muon_module
    from training.config import load_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = load_config(SMOKE, [*TINY, "--model.depth=3", "--model.window_pattern=LSL"])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model.params_by_role(), cfg.optim, torch.device("cpu"))
    order = list(reversed(list(model.parameters())))
    chunks = plan_chunks(opt, world, {id(p): i for i, p in enumerate(order)})
    sync = GradSync(order, chunks, rank, world, bucket_bytes=4096, overlap=True, record=True)
    calls = []
    real = muon_module.orthogonalize
    muon_module.orthogonalize = lambda G, *a, **k: calls.append(G.shape[0]) or real(G, *a, **k)
    x = torch.randint(0, 1000, (2, 128), generator=torch.Generator().manual_seed(rank))
    model(x, x).backward()
    events = list(sync.events)
    sync.finish_backward()
    done = sharded_step(opt, sync, rank, world)
    hidden = model.params_by_role()["hidden"]
    shapes = [tuple(p.shape) for p in hidden]
    share = sum(-(-shapes.count(s) // world) for s in set(shapes))  # ceil(n / world) per shape
    Path(result_path).write_text(json.dumps({"events": events, "done": done, "calls": calls, "hidden": len(hidden),
                                             "share": share, "params": len(order),
                                             "shapes": len(set(shapes))}))
    dist.barrier()  # no rank tears gloo down while its peer still sends (seen: SIGABRT at exit under load)
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_reductions_overlap_backward_and_each_rank_orthogonalizes_its_share(tmp_path, world):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = [tmp_path / f"rank{r}.json" for r in range(world)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, world, port, str(results[r]))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    res = [json.loads(r.read_text()) for r in results]
    for r in res:
        kinds = [e[0] for e in r["events"]]
        first_launch = kinds.index("launch")
        last_grad = len(kinds) - 1 - kinds[::-1].index("grad")
        # a reduction was started while later gradients were still to come
        assert first_launch < last_grad
        assert kinds.count("grad") == r["params"]
        assert "reduce_scatter" in [e[1] for e in r["events"] if e[0] == "launch"]
        # one orthogonalize call per shape, batching every matrix of that shape this rank owns
        assert sum(r["calls"]) == r["done"] and len(r["calls"]) <= r["shapes"]
    hidden = res[0]["hidden"]
    assert sum(r["done"] for r in res) == hidden  # every matrix exactly once over all ranks
    assert all(r["done"] <= r["share"] for r in res)  # no rank does more than ceil(n / world) per shape


def test_padding_slots_send_the_dtype_the_owners_send(monkeypatch):
    """A rank that owns no matrix of a chunk (padding) sends zeros in the optimizer's gather dtype, the dtype
    the owner casts its update to (Muon: bf16 on CUDA while the weights are fp32): one dtype per gather on
    every rank, as NCCL needs. Checked without a process group: rank 1 of 2, the collective recorded."""
    from distributed import collectives
    from distributed.sharding import Chunk, sharded_step
    from optimizers.muon import Muon

    class Half(Muon):  # stands in for Muon on CUDA: the wire dtype differs from the weights'
        def gather_dtype(self, group, grad):
            return torch.float16

    w = torch.nn.Parameter(torch.randn(8, 4))
    opt = Half([dict(params=[w], algorithm="muon")], lr=0.1)
    sent = []

    class Sync:
        chunks = [Chunk(0, (8, 4), [w, None])]

        def wait_chunk(self, i):
            return torch.randn(8, 4)

        def wait_replicated(self):
            pass

    class Done:
        def wait(self):
            pass

    def fake_gather(out, inp, async_op=True):
        sent.append(inp.dtype)
        out.copy_(torch.cat([inp, inp]))
        return Done()

    monkeypatch.setattr(collectives, "all_gather", fake_gather)
    assert sharded_step(opt, Sync(), rank=1, world_size=2) == 0  # rank 1: the padding slot
    assert sharded_step(opt, Sync(), rank=0, world_size=2) == 1  # rank 0: the owner
    assert sent == [torch.float16, torch.float16]
