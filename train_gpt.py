"""Train a modded NanoGPT: the one entry point.

    python train_gpt.py --config configs/smoke.toml                      # one process (CPU or GPU)
    torchrun --standalone --nproc_per_node=8 train_gpt.py --config configs/speedrun_124m.toml
    python train_gpt.py --config configs/smoke.toml --optim.lr=0.02 --schedule.steps=50

Flow: config -> process group -> data -> model -> optimizers (from parameter roles) -> loop of
(forward/backward over micro-batches, with bucketed gradient reductions started during the last
backward; schedules; optimizer step, each rank orthogonalizing only the matrices it owns) with
periodic validation, log lines, metrics rows and checkpoints -> summary.json in the run directory.
Exit codes: 0 done, 2 config or data error, 3 diverged, 4 collective failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.loader import DataNotFoundError, TrainLoader, find_shards, val_batches
from data.shard import ShardError
from model import GPT, flops_per_token
from optimizers import build_optimizer
from optimizers.grad_sync import GradSync
from optimizers.sharded import drop_foreign_state, gather_state, plan_chunks, sharded_step
from training import checkpoint as ckpt
from training import schedule
from training.config import Config, ConfigError, grad_accum_steps, load_config, to_toml, validate
from training.distributed import (
    DistInfo,
    all_reduce_max_flag,
    all_reduce_mean,
    barrier,
    broadcast_object,
    broadcast_parameters,
    check_same_everywhere,
    code_hash,
    env_world_size,
    init_distributed,
    shutdown,
)
from training.exit_codes import EXIT_COLLECTIVE, EXIT_CONFIG, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_OK
from training.hardware import device_name, peak_memory_mib, peak_tflops, synchronize
from training.run_dir import RunOutputs, resolve_run

REPO = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------
# Building the parts


def parse_args(argv: list[str] | None) -> tuple[str | None, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --section.key=value argument overrides that key of the config.",
    )
    parser.add_argument("--config", help="TOML config file (see configs/)")
    args, overrides = parser.parse_known_args(argv)
    return args.config, overrides


def prepare_data(cfg: Config, info: DistInfo, log=print) -> tuple[list[str], list[str]]:
    """Resolve the shard files; for a synthetic config, rank 0 writes the shards on first use."""
    d, m = cfg.data, cfg.model
    train_pattern, val_pattern = d.train_files, d.val_files
    if d.synthetic:
        from data.synthetic import make_synthetic_shards, synthetic_entropy

        params = dict(vocab_size=m.vocab_size, eot_token=m.eot_token, train_tokens=d.synthetic_train_tokens,
                      val_tokens=max(d.synthetic_val_tokens, cfg.eval.tokens + 1), seed=d.synthetic_seed)
        base = Path(d.synthetic_dir) if Path(d.synthetic_dir).is_absolute() else REPO / d.synthetic_dir
        out_dir = base / "_".join(f"{k}{v}" for k, v in params.items())
        if info.is_main:
            make_synthetic_shards(out_dir, **params)
        barrier(info)
        train_pattern, val_pattern = make_synthetic_shards(out_dir, **params)  # no-op: already valid
        h = synthetic_entropy(m.vocab_size, m.eot_token, d.synthetic_seed)
        log(f"data: SYNTHETIC Markov-chain shards in {out_dir} (not FineWeb): achievable loss ~{h:.2f} nats, "
                f"ln(vocab) = {math.log(m.vocab_size):.2f}")
    else:
        train_pattern, val_pattern = _repo_relative(train_pattern), _repo_relative(val_pattern)
    return find_shards(train_pattern), find_shards(val_pattern)


def _repo_relative(pattern: str) -> str:
    """Relative data paths are tried as given, then relative to the repository."""
    if Path(pattern).is_absolute() or list(Path().glob(pattern)):
        return pattern
    return str(REPO / pattern)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------
# One training step and one validation pass


def autocast(cfg: Config, device: torch.device):
    if device.type == "cuda" and cfg.model.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Trainer:
    """The model, its optimizer and data, and one optimizer step of training."""

    cfg: Config
    info: DistInfo
    model: GPT  # the raw module (checkpoints, parameters)
    forward: torch.nn.Module  # the module to call: compiled on CUDA when configured
    optimizer: torch.optim.Optimizer
    loader: TrainLoader
    accum: int
    sync: GradSync | None = None  # gradient reductions (several processes only)
    windows: dict = field(default_factory=dict)
    orthogonalized: int = 0  # matrices this rank orthogonalized in the last sharded step
    _zeroable: list | None = None

    @property
    def sharded(self) -> bool:
        return self.sync is not None and bool(self.sync.chunks)

    def window(self, step: int) -> torch.Tensor:
        """The attention window for `step` as a cached device tensor (no recompiles when it grows)."""
        w = schedule.window_at(step, self.cfg.schedule.steps, self.cfg.model.window, self.cfg.schedule.window_warmup)
        if w not in self.windows:
            self.windows[w] = torch.tensor(w, dtype=torch.int32, device=self.info.device)
        return self.windows[w]

    def step(self, step: int) -> torch.Tensor:
        """Run optimizer step number `step` (0-based); returns the mean loss (a device tensor)."""
        loss = self.forward_backward(step)
        self.optimizer_step(step)
        return loss

    def forward_backward(self, step: int) -> torch.Tensor:
        """All micro-batches of the step; the gradient reductions start during the last backward."""
        window = self.window(step)
        total = torch.zeros((), dtype=torch.float64, device=self.info.device)
        for micro in range(self.accum):
            if self.sync is not None:  # reduce only once, during the last backward
                self.sync.sync_this_backward = micro == self.accum - 1
            inputs, targets = self.loader.next_batch()
            with autocast(self.cfg, self.info.device):
                loss = self.forward(inputs, targets, window)
            (loss / self.accum).backward()
            total += loss.detach()
        return total / self.accum

    def optimizer_step(self, step: int) -> None:
        """Schedules, then the update: sharded over ranks when the optimizer allows it."""
        schedule.apply(self.optimizer, step, self.cfg)
        if self.sync is None:
            self.optimizer.step()
        else:
            self.sync.finish_backward()
            if self.sharded:
                self.orthogonalized = sharded_step(self.optimizer, self.sync, self.info.rank, self.info.world_size)
            else:
                self.sync.wait_replicated()
                self.optimizer.step()
            self.sync.reset()
        for p in self.zeroable:
            p.grad = None

    @property
    def zeroable(self) -> list[torch.nn.Parameter]:
        """Parameters whose gradients are reset after a step: all but those whose optimizer keeps
        state in p.grad (Scion's light variant keeps its momentum there)."""
        if self._zeroable is None:
            held = {id(p) for g in self.optimizer.param_groups if g.get("light") for p in g["params"]}
            self._zeroable = [p for p in self.model.parameters() if id(p) not in held]
        return self._zeroable

    @torch.no_grad()
    def evaluate(self, val_files: list[str], step: int) -> float:
        cfg = self.cfg
        self.forward.eval()
        window = self.window(step)
        total, n = torch.zeros((), dtype=torch.float64, device=self.info.device), 0
        for inputs, targets in val_batches(
            val_files, tokens=cfg.eval.tokens, seq_len=cfg.eval_seq_len, batch_size=cfg.eval.batch_size,
            rank=self.info.rank, world_size=self.info.world_size, device=self.info.device,
            vocab_size=cfg.model.vocab_size,
        ):
            with autocast(cfg, self.info.device):
                total += self.forward(inputs, targets, window)
            n += 1
        self.forward.train()
        return all_reduce_mean(total / n, self.info).item()

    def state(self) -> dict:
        """Everything a checkpoint holds. A collective when the optimizer is sharded (call it on
        every rank): each matrix's momentum is copied from its owner first."""
        if self.sharded:
            gather_state(self.optimizer, self.sync.chunks)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": ckpt.rng_state(),
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sharded:
            drop_foreign_state(self.optimizer, self.sync.chunks, self.info.rank)
        self.loader.load_state_dict(state["loader"])
        ckpt.set_rng_state(state["rng"])


def build_trainer(cfg: Config, info: DistInfo, train_files: list[str]) -> Trainer:
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model, max_seq_len=max(cfg.model.seq_len, cfg.eval_seq_len)).to(info.device)
    broadcast_parameters(model, info)
    optimizer = build_optimizer(model.params_by_role(), cfg.optim, info.device)
    loader = TrainLoader(
        train_files, seq_len=cfg.model.seq_len, batch_size=cfg.data.micro_batch_size, rank=info.rank,
        world_size=info.world_size, seed=cfg.seed, shuffle=cfg.data.shuffle_shards,
        align_to_docs=cfg.data.align_to_docs, eot_token=cfg.model.eot_token, vocab_size=cfg.model.vocab_size,
        device=info.device,
    )
    sync = None
    if info.active:
        d = cfg.distributed
        backward_order = list(reversed(list(model.parameters())))  # the head's gradient arrives first
        rank_of = {id(p): i for i, p in enumerate(backward_order)}
        chunks = plan_chunks(optimizer, info.world_size, rank_of) if d.shard_optimizer else []
        sync = GradSync(backward_order, chunks, info.rank, info.world_size, bucket_bytes=int(d.bucket_mb * 2**20),
                        overlap=d.overlap)
    forward = model
    if info.device.type == "cuda" and cfg.model.compile:
        if sync is not None and cfg.distributed.overlap:
            # one graph per block, so that each block's gradients (and their reductions) are ready
            # as soon as its backward is done, not when the whole model's backward graph finishes
            for block in model.blocks:
                block.compile(dynamic=False)
        else:
            forward = torch.compile(model, dynamic=False)
    return Trainer(cfg, info, model, forward, optimizer, loader, grad_accum_steps(cfg, info.world_size), sync)


# ----------------------------------------------------------------------------------------------
# Stopping cleanly on Ctrl-C / SIGTERM


class StopFlag:
    """The first SIGINT/SIGTERM asks the loop to stop after the current step (it then writes a
    checkpoint); a second SIGINT interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nsignal {signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
              f"(Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Diverged(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# The loop


def train(cfg: Config, info: DistInfo) -> dict:
    run_dir, resume_from = None, None
    if info.is_main:
        run_dir, resume_from = resolve_run(cfg.log.dir, cfg.log.run_id, cfg.checkpoint.resume, cfg.name)
    run_dir, resume_from = broadcast_object((run_dir, resume_from), info)
    state = ckpt.load_checkpoint(resume_from) if resume_from else None
    start_step = state["step"] if state else 0
    resuming = cfg.checkpoint.resume != ""
    out = RunOutputs(run_dir, info.is_main, resume_step=start_step if resuming else None)
    out.log(f"run directory: {run_dir}")
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restarts:
        out.log(f"torchrun restart {restarts}: every rank restarts from the last checkpoint")
    if state:
        out.log(f"resuming from {resume_from} at step {start_step}")
    elif resuming:
        out.log("checkpoint.resume = 'latest': no checkpoint yet, starting from step 0")
    out.write_config(to_toml(cfg))
    out.log("config:\n" + to_toml(cfg))

    train_files, val_files = prepare_data(cfg, info, out.log)
    trainer = build_trainer(cfg, info, train_files)
    if state:
        trainer.load_state(state)
    counters = state["counters"] if state else {"train_time_ms": 0.0, "tokens": 0, "loss_sum": 0.0, "loss_count": 0}
    del state

    m = cfg.model
    n_params = sum(p.numel() for p in trainer.model.parameters())
    out.log(f"model: {n_params / 1e6:.2f}M parameters, width {m.width}, depth {m.depth}, "
            f"attention {trainer.model.attention_kind(info.device)}, device {device_name(info.device, info.world_size)}, "
            f"world size {info.world_size}, grad accumulation {trainer.accum}, optimizer {cfg.optim.name}")
    if info.device.type != "cuda" and (m.compile or m.bf16):
        out.log("note: model.compile and model.bf16 apply on CUDA only; this CPU run uses fp32 eager mode")

    wandb_run = _start_wandb(cfg, run_dir, info) if cfg.log.wandb else None
    steps = cfg.schedule.steps
    tokens_per_step = cfg.data.batch_tokens
    status, final_val, step = "completed", None, start_step
    step_times: list[float] = []
    loss_sum = torch.tensor(counters["loss_sum"], dtype=torch.float64, device=info.device)
    loss_count = counters["loss_count"]
    interval = {"time": 0.0, "tokens": 0}  # training time and tokens since the last log line
    summary = {}

    def save(at_step: int) -> Path | None:
        """Called on every rank (gathering a sharded optimizer's state is a collective); rank 0 writes."""
        counters.update(loss_sum=all_reduce_mean(loss_sum.clone(), info).item(), loss_count=loss_count)
        state = trainer.state()
        if not info.is_main:
            return None
        return ckpt.save_checkpoint(run_dir, at_step, {**state, "counters": counters}, cfg.checkpoint.keep)

    def eval_due(at_step: int) -> bool:
        return at_step == steps or (cfg.eval.every > 0 and at_step % cfg.eval.every == 0)

    def validate_and_row(at_step: int, train_loss: float | None) -> dict:
        nonlocal final_val
        row = {"step": at_step}
        if train_loss is not None:
            row["train_loss"] = train_loss
        if eval_due(at_step):
            final_val = trainer.evaluate(val_files, at_step)
            row["val_loss"] = final_val
        return row

    try:
        with StopFlag() as stop:
            if start_step == 0 and cfg.eval.every > 0:
                row = validate_and_row(0, None)
                row.update(lr=schedule.lr_at(0, cfg), train_time_ms=0.0, tokens=0)
                out.metrics(row)
                out.log(f"step:0/{steps} val_loss:{row['val_loss']:.4f} train_time:0ms step_avg:nan")
            while step < steps:
                t0 = time.perf_counter()
                loss = trainer.step(step)
                step += 1
                loss_sum += loss
                loss_count += 1
                log_due = step % cfg.log.every == 0 or step == steps
                report_due = log_due or eval_due(step)
                if report_due:
                    synchronize(info.device)  # GPU work is asynchronous: settle it before reading the clock
                dt = time.perf_counter() - t0
                counters["train_time_ms"] += 1000 * dt
                counters["tokens"] += tokens_per_step
                interval["time"] += dt
                interval["tokens"] += tokens_per_step
                step_times.append(dt)

                if report_due:
                    train_loss = all_reduce_mean(loss_sum / max(loss_count, 1), info).item()
                    if not math.isfinite(train_loss):
                        raise Diverged(f"non-finite training loss ({train_loss}) at step {step}")
                    loss_sum.zero_()
                    loss_count = 0
                    row = validate_and_row(step, train_loss)
                    tok_s = interval["tokens"] / max(interval["time"], 1e-9)
                    interval.update(time=0.0, tokens=0)
                    lr = schedule.lr_at(step - 1, cfg)
                    row.update(lr=lr, train_time_ms=round(counters["train_time_ms"], 3), tokens=counters["tokens"])
                    out.metrics(row)
                    avg = _step_avg_ms(step_times)
                    val = f" val_loss:{row['val_loss']:.4f}" if "val_loss" in row else ""
                    out.log(f"step:{step}/{steps} train_loss:{train_loss:.4f}{val} "
                            f"train_time:{counters['train_time_ms']:.0f}ms step_avg:{avg:.2f}ms "
                            f"tok/s:{tok_s:,.0f} mem:{peak_memory_mib(info.device):,.0f}MiB lr:{lr:.4f}")
                    if wandb_run is not None:
                        wandb_run.log(row, step=step)

                ckpt_due = cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0
                if step == steps and cfg.checkpoint.final:
                    ckpt_due = True
                stop_now = stop.requested
                if info.active:  # ranks agree on stopping at log and checkpoint steps only
                    stop_now = all_reduce_max_flag(stop_now, info) if (log_due or ckpt_due) else False
                if ckpt_due or (stop_now and step < steps):
                    path = save(step)
                    if path:
                        out.log(f"checkpoint: {path}")
                inject_fault(step, info)
                if stop_now and step < steps:
                    status = "interrupted"
                    out.log(f"stopped at step {step}; continue with --checkpoint.resume={run_dir}")
                    break
    except Diverged as e:
        status = "diverged"
        last = ckpt.latest_checkpoint(run_dir)
        out.log(f"{e}: stopping. Last good checkpoint: {last if last else 'none'}")
    except KeyboardInterrupt:
        status = "interrupted"
        out.log(f"aborted at step {step} without a new checkpoint")
    finally:
        summary = {
            "status": status,
            "final_val_loss": final_val,
            "steps": step,
            "target_steps": steps,
            "train_time_ms": round(counters["train_time_ms"], 3),
            "step_avg_ms": _step_avg_ms(step_times),
            "tokens": counters["tokens"],
            "tokens_per_s": counters["tokens"] / max(counters["train_time_ms"] / 1000, 1e-9),
            "mfu": _mfu(cfg, info, step_times),
            "peak_memory_mib": peak_memory_mib(info.device),
            "world_size": info.world_size,
            "device": device_name(info.device, info.world_size),
            "torch_version": torch.__version__,
            "git_commit": git_commit(),
            "optimizer": cfg.optim.name,
            "lr": cfg.optim.lr,
            "width": m.width,
            "depth": m.depth,
            "seed": cfg.seed,
            "config": cfg.name,
            "synthetic_data": cfg.data.synthetic,
            "run_dir": str(run_dir),
        }
        out.summary(summary)
        if wandb_run is not None:
            wandb_run.summary.update({k: v for k, v in summary.items() if v is not None})
            wandb_run.finish()
    out.log(f"{status}: {step}/{steps} steps, final val_loss {final_val if final_val is None else f'{final_val:.4f}'}, "
            f"run directory {run_dir}")
    return summary


def _step_avg_ms(step_times: list[float]) -> float:
    """Mean step time, leaving out the first 10 steps of this process (compilation, warm-up)
    when there are enough steps to do so."""
    timed = step_times[10:] if len(step_times) > 20 else step_times
    return 1000 * sum(timed) / len(timed) if timed else float("nan")


def _mfu(cfg: Config, info: DistInfo, step_times: list[float]) -> float | None:
    """Model FLOPs utilization against the bf16 dense peak, on CUDA only."""
    if info.device.type != "cuda" or not step_times:
        return None
    peak = peak_tflops(info.device)
    if not peak:
        return None
    flops = flops_per_token(cfg.model, cfg.model.seq_len, cfg.model.window) * cfg.data.batch_tokens
    return flops / (_step_avg_ms(step_times) / 1000) / (peak * 1e12 * info.world_size)


def _start_wandb(cfg: Config, run_dir: Path, info: DistInfo):
    if not info.is_main:
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError("log.wandb = true needs the wandb package: pip install wandb "
                          "(set WANDB_MODE=offline to log without an account or network)") from None
    from training.config import to_dict

    return wandb.init(project=cfg.log.wandb_project, name=run_dir.name, dir=str(run_dir), config=to_dict(cfg))


def inject_fault(step: int, info: DistInfo) -> None:
    """Fault injection for testing restarts: NANOGPT_FAULT_KILL_AT=RANK:STEP makes that rank
    SIGKILL itself after that step, in the first attempt of a torchrun job only."""
    spec = os.environ.get("NANOGPT_FAULT_KILL_AT")
    if spec and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        rank, at = map(int, spec.split(":"))
        if info.rank == rank and step == at:
            os.kill(os.getpid(), signal.SIGKILL)


def _collective_failure(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.distributed.DistError) or any(
        k in text for k in ("Timed out", "timed out", "Connection closed by peer", "Connection reset by peer"))


def main(argv: list[str] | None = None) -> int:
    try:
        config_path, overrides = parse_args(argv)
        cfg = load_config(config_path, overrides)
        validate(cfg, env_world_size())
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    info = init_distributed(cfg.device, cfg.distributed.timeout_s)
    try:
        check_same_everywhere(info, to_toml(cfg), code_hash(REPO))
        summary = train(cfg, info)
    except (ConfigError, DataNotFoundError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except RuntimeError as e:
        if not (info.active and _collective_failure(e)):
            raise
        print(f"error on rank {info.rank}: a collective operation failed: {e}\n"
              f"Another rank probably crashed or stalled (see its log), or did not reach the same point within "
              f"distributed.timeout_s = {cfg.distributed.timeout_s:g} s.", file=sys.stderr)
        return EXIT_COLLECTIVE
    finally:
        shutdown()
    return {"completed": EXIT_OK, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED}[summary["status"]]


if __name__ == "__main__":
    sys.exit(main())
