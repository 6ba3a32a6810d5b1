"""The Trainer: one training run, in the phases a reader looks for.

    setup()          the run directory (new, or the one a checkpoint continues), the data, the
                     model, the optimizer from the model's parameter roles, gradient reductions
    step(step)       one optimizer step: the micro-batches' forward and backward (reductions start
                     during the last backward), the schedules, the update (sharded over ranks)
    validate(step)   the mean loss on the fixed first eval.tokens of the validation shards
    checkpoint(step) everything needed to continue exactly, written atomically
    finish(status)   summary.json and the last log line
    fit()            the loop over them, with log lines and metrics rows at their intervals

Benchmarks use `build(train_files)` and `step` only (no run directory).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch

from data.loader import TrainLoader, val_batches
from model import GPT, flops_per_token
from optimizers import OPTIMIZERS, build_optimizer
from optimizers.base import Optimizer
from optimizers.grad_sync import GradSync
from optimizers.sharded import drop_foreign_state, gather_state, plan_chunks, sharded_step
from training import checkpoint as ckpt
from training import schedule
from training.atomic import remove_stale_tmp
from training.config import Config, grad_accum_steps, to_toml
from training.distributed import DistInfo, all_reduce_max_flag, all_reduce_mean, broadcast_object, broadcast_parameters
from training.hardware import device_name, peak_memory_mib, peak_tflops, synchronize
from training.meter import RunMeter
from training.run_data import prepare_data
from training.run_dir import RunOutputs, git_commit, resolve_run, start_wandb
from training.signals import StopFlag, inject_fault


class Diverged(RuntimeError):
    pass


def autocast(cfg: Config, device: torch.device):
    """bf16 autocast on CUDA when model.bf16; nothing elsewhere (CPU runs are fp32)."""
    if device.type == "cuda" and cfg.model.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    def __init__(self, cfg: Config, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.out: RunOutputs | None = None  # the run's files (set up by setup(); None in benchmarks)
        self.run_dir: Path | None = None
        self.step_count = 0  # optimizer steps done
        self.final_val: float | None = None
        self.orthogonalized = 0  # matrices this rank orthogonalized in the last sharded step
        self.meter = RunMeter()
        self.windows: dict[int, torch.Tensor] = {}
        self.step_flops: dict[int, float] = {}  # model FLOPs of one step, by attention window
        self.wandb = None

    # ------------------------------------------------------------------------------------------
    # set up

    def setup(self) -> None:
        """Resolve the run directory (and the checkpoint it continues), then build everything."""
        cfg, info = self.cfg, self.info
        run_dir, resume_from = None, None
        if info.is_main:
            run_dir, resume_from = resolve_run(cfg.log.dir, cfg.log.run_id, cfg.checkpoint.resume, cfg.name)
        self.run_dir, resume_from = broadcast_object((run_dir, resume_from), info)
        state = ckpt.load_checkpoint(resume_from) if resume_from else None
        self.step_count = state["step"] if state else 0
        resuming = cfg.checkpoint.resume != ""
        self.out = RunOutputs(self.run_dir, info.is_main, resume_step=self.step_count if resuming else None)
        self.log(f"run directory: {self.run_dir}")
        if info.is_main:
            for stale in remove_stale_tmp(self.run_dir) + remove_stale_tmp(ckpt.checkpoint_dir(self.run_dir)):
                self.log(f"removed {stale.name}, left by a write that was killed")
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restarts:
            self.log(f"torchrun restart {restarts}: every rank restarts from the last checkpoint")
        if state:
            self.log(f"resuming from {resume_from} at step {self.step_count}")
        elif resuming:
            self.log("checkpoint.resume = 'latest': no checkpoint yet, starting from step 0")
        self.out.write_config(to_toml(cfg))
        self.log("config:\n" + to_toml(cfg))
        train_files, self.val_files = prepare_data(cfg, info, self.log)
        self.build(train_files)
        if state:
            self.load_state_dict(state)
        self._log_model()
        if cfg.log.wandb and info.is_main:
            self.wandb = start_wandb(cfg, self.run_dir)

    def build(self, train_files: list[str]) -> None:
        """The model, its optimizer, this rank's data loader and the gradient reductions."""
        cfg, info = self.cfg, self.info
        torch.manual_seed(cfg.seed)
        self.model = GPT(cfg.model, max_seq_len=max(cfg.model.seq_len, cfg.eval_seq_len)).to(info.device)
        broadcast_parameters(self.model, info)
        self.optimizer = build_optimizer(self.model.params_by_role(), cfg.optim, info.device)
        self.loader = TrainLoader(
            train_files, seq_len=cfg.model.seq_len, batch_size=cfg.data.micro_batch_size, rank=info.rank,
            world_size=info.world_size, seed=cfg.seed, shuffle=cfg.data.shuffle_shards,
            align_to_docs=cfg.data.align_to_docs, eot_token=cfg.model.eot_token, vocab_size=cfg.model.vocab_size,
            device=info.device,
        )
        self.accum = grad_accum_steps(cfg, info.world_size)
        self.sync = self._grad_sync() if info.active else None
        self.forward = self._compiled_forward()
        peak = peak_tflops(info.device)
        self.meter.peak_flops = peak * 1e12 * info.world_size if peak else None
        held = {id(p) for g in self.optimizer.param_groups
                if isinstance(self.optimizer, Optimizer) and self.optimizer.holds_state_in_grad(g) for p in g["params"]}
        self.zeroable = [p for p in self.model.parameters() if id(p) not in held]  # grads reset after each step
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)  # train losses since the last log
        self.loss_count = 0

    def _grad_sync(self) -> GradSync:
        d = self.cfg.distributed
        backward_order = list(reversed(list(self.model.parameters())))  # the head's gradient arrives first
        rank_of = {id(p): i for i, p in enumerate(backward_order)}
        chunks = plan_chunks(self.optimizer, self.info.world_size, rank_of) if d.shard_optimizer else []
        return GradSync(backward_order, chunks, self.info.rank, self.info.world_size,
                        bucket_bytes=int(d.bucket_mb * 2**20), overlap=d.overlap)

    def _compiled_forward(self) -> torch.nn.Module:
        if self.info.device.type != "cuda" or not self.cfg.model.compile:
            return self.model
        if self.sync is not None and self.cfg.distributed.overlap:
            # one graph per block, so that each block's gradients (and their reductions) are ready
            # as soon as its backward is done, not when the whole model's backward graph finishes
            for block in self.model.blocks:
                block.compile(dynamic=False)
            return self.model
        return torch.compile(self.model, dynamic=False)

    def _log_model(self) -> None:
        m, info = self.cfg.model, self.info
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(f"model: {n_params / 1e6:.2f}M parameters, width {m.width}, depth {m.depth}, "
                 f"attention {self.model.attention_kind(info.device)}, "
                 f"device {device_name(info.device, info.world_size)}, world size {info.world_size}, "
                 f"grad accumulation {self.accum}")
        lrs = ", ".join(f"{g['role']} {g['initial_lr']:g}" for g in self.optimizer.param_groups)
        self.log(f"optimizer {self.cfg.optim.name} ({OPTIMIZERS[self.cfg.optim.name].about}); peak lr per role: {lrs}")
        if info.device.type != "cuda" and (m.compile or m.bf16):
            self.log("note: model.compile and model.bf16 apply on CUDA only; this CPU run uses fp32 eager mode")

    def log(self, message: str) -> None:
        if self.out is not None:
            self.out.log(message)

    # ------------------------------------------------------------------------------------------
    # one step

    @property
    def sharded(self) -> bool:
        return self.sync is not None and bool(self.sync.chunks)

    def window(self, step: int) -> torch.Tensor:
        """The attention window for `step` as a cached device tensor (no recompiles when it grows)."""
        w = self.window_size(step)
        if w not in self.windows:
            self.windows[w] = torch.tensor(w, dtype=torch.int32, device=self.info.device)
        return self.windows[w]

    def window_size(self, step: int) -> int:
        s = self.cfg.schedule
        return schedule.window_at(step, s.steps, self.cfg.model.window, s.window_warmup)

    def step(self, step: int) -> torch.Tensor:
        """Optimizer step number `step` (0-based); returns the mean loss (a device tensor)."""
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

    # ------------------------------------------------------------------------------------------
    # validate

    @torch.no_grad()
    def validate(self, step: int) -> float:
        """Mean loss over the first eval.tokens of the validation shards (the same tokens every time)."""
        cfg = self.cfg
        self.forward.eval()
        window = self.window(step)
        total, n = torch.zeros((), dtype=torch.float64, device=self.info.device), 0
        for inputs, targets in val_batches(
            self.val_files, tokens=cfg.eval.tokens, seq_len=cfg.eval_seq_len, batch_size=cfg.eval.batch_size,
            rank=self.info.rank, world_size=self.info.world_size, device=self.info.device,
            vocab_size=cfg.model.vocab_size,
        ):
            with autocast(cfg, self.info.device):
                total += self.forward(inputs, targets, window)
            n += 1
        self.forward.train()
        self.final_val = all_reduce_mean(total / n, self.info).item()
        return self.final_val

    # ------------------------------------------------------------------------------------------
    # checkpoint

    def state_dict(self) -> dict:
        """Everything a checkpoint holds. A collective when the optimizer is sharded (call it on
        every rank): each matrix's momentum is copied from its owner first."""
        if self.sharded:
            gather_state(self.optimizer, self.sync.chunks)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": ckpt.rng_state(),
            "counters": {**self.meter.state_dict(), "loss_sum": all_reduce_mean(self.loss_sum.clone(), self.info).item(),
                         "loss_count": self.loss_count},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sharded:
            drop_foreign_state(self.optimizer, self.sync.chunks, self.info.rank)
        self.loader.load_state_dict(state["loader"])
        ckpt.set_rng_state(state["rng"])
        self.meter.load_state_dict(state["counters"])
        self.loss_sum.fill_(state["counters"]["loss_sum"])
        self.loss_count = state["counters"]["loss_count"]

    def checkpoint(self, step: int) -> Path | None:
        """Called on every rank (gathering a sharded optimizer's state is a collective); rank 0 writes."""
        state = self.state_dict()
        if not self.info.is_main:
            return None
        path = ckpt.save_checkpoint(self.run_dir, step, state, self.cfg.checkpoint.keep)
        self.log(f"checkpoint: {path}")
        return path

    # ------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict:
        """Train to schedule.steps (or until stopped), then finish(); returns the summary."""
        cfg, steps = self.cfg, self.cfg.schedule.steps
        status = "completed"
        try:
            with StopFlag() as stop:
                if self.step_count == 0 and cfg.eval.every > 0:
                    self.report(0, train_loss=None)
                while self.step_count < steps:
                    if self.train_step(stop):
                        status = "interrupted"
                        self.log(f"stopped at step {self.step_count}; continue with "
                                 f"--checkpoint.resume={self.run_dir}")
                        break
        except Diverged as e:
            status = "diverged"
            last = ckpt.latest_checkpoint(self.run_dir)
            self.log(f"{e}: stopping. Last good checkpoint: {last if last else 'none'}")
        except KeyboardInterrupt:
            status = "interrupted"
            self.log(f"aborted at step {self.step_count} without a new checkpoint")
        finally:
            summary = self.finish(status)
        return summary

    def train_step(self, stop: StopFlag) -> bool:
        """One step with its bookkeeping (meter, log line, validation, checkpoint); True when the
        run must stop here (a stop was requested)."""
        cfg, steps, step = self.cfg, self.cfg.schedule.steps, self.step_count
        t0 = time.perf_counter()
        loss = self.step(step)
        self.step_count = step = step + 1
        self.loss_sum += loss
        self.loss_count += 1
        log_due = step % cfg.log.every == 0 or step == steps
        report_due = log_due or self.eval_due(step)
        if report_due:
            synchronize(self.info.device)  # GPU work is asynchronous: settle it before reading the clock
        self.meter.add_step(time.perf_counter() - t0, cfg.data.batch_tokens, self.flops_of_step(step - 1))
        if report_due:
            train_loss = all_reduce_mean(self.loss_sum / max(self.loss_count, 1), self.info).item()
            if not math.isfinite(train_loss):
                raise Diverged(f"non-finite training loss ({train_loss}) at step {step}")
            self.loss_sum.zero_()
            self.loss_count = 0
            self.report(step, train_loss)
        ckpt_due = (cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0) or (
            step == steps and cfg.checkpoint.final)
        stop_now = stop.requested
        if self.info.active:  # ranks agree on stopping at log and checkpoint steps only
            stop_now = all_reduce_max_flag(stop_now, self.info) if (log_due or ckpt_due) else False
        if ckpt_due or (stop_now and step < steps):
            self.checkpoint(step)
        inject_fault(step, self.info.rank)
        return stop_now and step < steps

    def flops_of_step(self, step: int) -> float:
        """Model FLOPs of step `step` (its attention window decides the attention part)."""
        w = self.window_size(step)
        if w not in self.step_flops:
            m = self.cfg.model
            self.step_flops[w] = flops_per_token(m, m.seq_len, w) * self.cfg.data.batch_tokens
        return self.step_flops[w]

    def eval_due(self, step: int) -> bool:
        return step == self.cfg.schedule.steps or (self.cfg.eval.every > 0 and step % self.cfg.eval.every == 0)

    def report(self, step: int, train_loss: float | None) -> None:
        """Validation when due, then a metrics row and a log line (and wandb)."""
        row = {"step": step}
        if train_loss is not None:
            row["train_loss"] = train_loss
        if self.eval_due(step):
            row["val_loss"] = self.validate(step)
        mult = schedule.lr_at(max(step - 1, 0), self.cfg)
        row["lr_mult"] = mult
        row.update({f"lr_{g['role']}": g["initial_lr"] * mult for g in self.optimizer.param_groups})
        row.update(train_time_ms=round(self.meter.train_time_ms, 3), tokens=self.meter.tokens)
        self.out.metrics(row)
        steps = self.cfg.schedule.steps
        if train_loss is None:
            self.log(f"step:{step}/{steps} val_loss:{row['val_loss']:.4f} train_time:0ms step_avg:nan")
        else:
            val = f" val_loss:{row['val_loss']:.4f}" if "val_loss" in row else ""
            self.log(f"step:{step}/{steps} train_loss:{train_loss:.4f}{val} "
                     f"train_time:{self.meter.train_time_ms:.0f}ms step_avg:{self.meter.step_avg_ms:.2f}ms "
                     f"tok/s:{self.meter.interval_tokens_per_s():,.0f} mem:{peak_memory_mib(self.info.device):,.0f}MiB "
                     f"lr_mult:{mult:.4f}")
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    # ------------------------------------------------------------------------------------------
    # finish

    def finish(self, status: str) -> dict:
        """Write summary.json (and close wandb); the last log line says how the run ended."""
        cfg, m, info = self.cfg, self.cfg.model, self.info
        summary = {
            "status": status,
            "final_val_loss": self.final_val,
            "steps": self.step_count,
            "target_steps": cfg.schedule.steps,
            "train_time_ms": round(self.meter.train_time_ms, 3),
            "step_avg_ms": self.meter.step_avg_ms,
            "tokens": self.meter.tokens,
            "tokens_per_s": self.meter.tokens_per_s,
            "mfu": self.meter.mfu,
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
            "run_dir": str(self.run_dir),
        }
        self.out.summary(summary)
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if v is not None})
            self.wandb.finish()
        final = "None" if self.final_val is None else f"{self.final_val:.4f}"
        self.log(f"{status}: {self.step_count}/{cfg.schedule.steps} steps, final val_loss {final}, "
                 f"run directory {self.run_dir}")
        return summary


def train(cfg: Config, info: DistInfo) -> dict:
    """A whole run: set up, then the loop; returns the summary."""
    trainer = Trainer(cfg, info)
    trainer.setup()
    return trainer.fit()
