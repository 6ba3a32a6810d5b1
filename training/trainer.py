"""The Trainer: one training run, in the phases a reader looks for.

    setup()          decide what the run continues from and check it, check the data, build the
                     model, the optimizer from the model's parameter roles, gradient reductions;
                     only then open the run directory (nothing is written before everything checked out)
    step(step)       one optimizer step: the micro-batches' forward and backward (reductions start
                     during the last backward), the schedules, the update (sharded over ranks)
    validate(step)   the mean loss on the fixed first tokens of the validation shards
    checkpoint(step) everything needed to continue exactly, written atomically (never a diverged state)
    finish(status)   summary.json and the last log line
    fit()            the loop over them, with log lines and metrics rows at their intervals

Every run ends with one status: completed, interrupted (Ctrl-C / SIGTERM), diverged (a non-finite
loss or weight; training/divergence.py) or failed (any other error: its message and step go into
the summary and its traceback into the log, and the error propagates to train_gpt.py's exit code).
Benchmarks use `build(train_files)` and `step` only (no run directory).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import traceback
from pathlib import Path

import torch

from common.atomic import remove_stale_tmp
from common.config_io import to_dict, to_toml
from common.errors import ConfigError
from common.hardware import device_name, peak_memory_mib, peak_tflops, synchronize
from data.loader import TrainLoader, val_batches
from distributed.grad_sync import GradSync
from distributed.process_group import (
    DistInfo,
    all_reduce_max_flag,
    all_reduce_mean,
    broadcast_object,
    broadcast_parameters,
)
from distributed.sharding import drop_foreign_state, gather_state, plan_chunks, sharded_step
from model import GPT, flops_per_token, fp8
from optimizers import OPTIMIZERS, build_optimizer
from optimizers.base import Optimizer
from training import checkpoint as ckpt
from training import compilation, schedule
from training.config import Config
from training.constrain import Constrainer
from training.divergence import Diverged, DivergenceGuard, weights_finite
from training.meter import RunMeter
from training.resume import plan_run
from training.run_data import RunData, prepare_data
from training.run_dir import RunOutputs, git_commit, start_wandb
from training.schedule import eval_batch_size, eval_due, eval_tokens, grad_accum_steps
from training.signals import StopFlag, inject_fault


def autocast(cfg: Config, device: torch.device):
    """bf16 autocast on CUDA when model.bf16; nothing elsewhere (CPU runs are fp32)."""
    if device.type == "cuda" and cfg.model.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    def __init__(self, cfg: Config, info: DistInfo, origin: dict | None = None):
        """origin: where the config came from ({"config_file": ..., "overrides": [...]}), for the summary."""
        self.cfg, self.info, self.origin = cfg, info, origin or {}
        self.out: RunOutputs | None = None  # the run's files (set up by setup(); None in benchmarks)
        self.run_dir: Path | None = None
        self.data: RunData | None = None
        self.step_count = 0  # optimizer steps done
        self.final_val: float | None = None
        self.val_accuracy: float | None = None
        self.target_reached: tuple[int, float] | None = None  # (step, train_time_ms) of the first val <= eval.target
        self.orthogonalized = 0  # matrices this rank orthogonalized in the last sharded step
        self.meter = RunMeter()
        self.guard = DivergenceGuard(info.device)
        self.windows: dict[int, torch.Tensor] = {}
        self.step_flops: dict[int, float] = {}  # model FLOPs of one step, by attention window
        self.wandb = None
        self.watch: compilation.CompileWatch | None = None  # compilations and eager fallbacks (CUDA)
        self.compile_note = ""
        self.compile_time_s = 0.0
        self.recompiles = 0  # graphs compiled after the warm-up
        self.graphs_compiled = 0  # graphs compiled by the warm-up
        self.graphs_declared = 0  # the graphs the run needs per piece of compiled code (compilation.graphs_needed)
        self._fallbacks_logged = 0

    # ------------------------------------------------------------------------------------------
    # set up

    def setup(self) -> dict | None:
        """Decide and check what the run continues from, check the data, build everything; then open
        the run directory. Returns the summary of a run that had already completed when asked to
        resume it (nothing is done or written), else None."""
        cfg, info = self.cfg, self.info
        plan = self._plan()
        self.run_dir = plan.run_dir
        self.out = RunOutputs(self.run_dir, info.is_main)
        for note in plan.notes:
            self.log(note)
        if plan.completed is not None:
            self.log(f"{self.run_dir} already completed {plan.completed.get('steps')} steps (final val_loss "
                     f"{plan.completed.get('final_val_loss')}): nothing to do, nothing changed")
            return plan.completed
        state = plan.state if plan.state is not None or plan.checkpoint is None else ckpt.load_checkpoint(plan.checkpoint)
        self.data = prepare_data(cfg, info, self.log)
        self.build(self.data.train_files)
        self.loader.open()  # the first training shard's token ids are checked now, not at step 1
        self.val_files = self.data.val_files
        if state:
            self.load_state_dict(state)
        self.warmup()
        self.out.open(resume_step=self.step_count if cfg.checkpoint.resume else None)
        self._log_start(plan, state)
        if cfg.log.wandb and info.is_main:
            self.wandb = start_wandb(cfg, self.run_dir)
        return None

    def _plan(self):
        """Rank 0 plans (training/resume.py) and every rank gets the plan, or the same error."""
        plan, error = None, None
        if self.info.is_main:
            try:
                plan = plan_run(self.cfg)
            except (ValueError, OSError) as e:  # ConfigError, CheckpointError, unreadable files
                error = e
        shared = None if plan is None else (plan.run_dir, plan.checkpoint, plan.completed, plan.notes)
        shared, error = broadcast_object((shared, error), self.info)
        if error is not None:
            raise error
        if plan is None:  # another rank: the same plan without the loaded checkpoint
            from training.resume import ResumePlan

            plan = ResumePlan(shared[0], shared[1], None, shared[2], shared[3])
        return plan

    def _log_start(self, plan, state) -> None:
        cfg, info = self.cfg, self.info
        self.log(f"run directory: {self.run_dir}")
        if info.is_main:
            for stale in remove_stale_tmp(self.run_dir) + remove_stale_tmp(ckpt.checkpoint_dir(self.run_dir)):
                self.log(f"removed {stale.name}, left by a write that was killed")
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restarts:
            self.log(f"torchrun restart {restarts}: every rank restarts from the last checkpoint")
        if state:
            self.log(f"resuming from {plan.checkpoint} at step {self.step_count}")
        else:
            self.out.write_config(to_toml(cfg))
        self.log("config:\n" + to_toml(cfg))
        self.log(self.data.describe(cfg))
        self._log_model()

    def build(self, train_files: list[str]) -> None:
        """The model, its optimizer, this rank's data loader and the gradient reductions."""
        cfg, info = self.cfg, self.info
        if cfg.model.fp8_head and info.device.type == "cuda" and not fp8.supported(info.device):
            raise ConfigError(f"model.fp8_head needs FP8 tensor cores (compute capability 8.9+, e.g. H100); "
                              f"{device_name(info.device, 1)} has none: set --model.fp8_head=false")
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
        self.constrain = Constrainer(cfg, self.model, self.optimizer, info, self.sync)  # [constraint]: at init too
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

    @property
    def compiling(self) -> bool:
        m = self.cfg.model
        return m.compile and (self.info.device.type == "cuda" or m.compile_cpu)

    def _compiled_forward(self) -> torch.nn.Module:
        """The model, compiled on CUDA or with model.compile_cpu (training/compilation.py: the graphs it needs
        fit the limit)."""
        if not self.compiling:
            return self.model
        per_block = self.sync is not None and self.cfg.distributed.overlap
        self.graphs_declared = compilation.graphs_needed(self.cfg, per_block)
        limit = compilation.configure(self.graphs_declared)
        self.watch = compilation.CompileWatch().start()
        self.compile_note = f"compile: {'each block' if per_block else 'the model'}, recompile limit {limit}"
        if per_block:
            # one graph per block, so that each block's gradients (and their reductions) are ready
            # as soon as its backward is done, not when the whole model's backward graph finishes
            for block in self.model.blocks:
                block.compile(dynamic=False)
            self.model.head.compile(dynamic=False)  # the head with its soft cap and chunked loss (model/loss.py)
            return self.model
        return torch.compile(self.model, dynamic=False)

    def warmup(self) -> None:
        """Run model.compile_warmup_steps steps and one validation batch (compilation, kernel autotuning),
        then put everything back as it was, so that the timed run starts from the same state and
        its train_time leaves compilation out (reported as compile_time_s)."""
        steps = self.cfg.model.compile_warmup_steps
        steps = (3 if self.compiling else 0) if steps < 0 else steps
        if not steps:
            return
        t0 = time.perf_counter()
        saved = copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                               "loader": self.loader.state_dict(), "rng": ckpt.rng_state()})
        saved["constraint"] = self.constrain.snapshot()
        grads = {p: None if p.grad is None else p.grad.clone() for p in self.model.parameters()}
        for i in range(steps):
            self.step(self.step_count + i)
        with torch.no_grad(), autocast(self.cfg, self.info.device):
            inputs, targets = next(iter(self._val_batches(self.step_count)))
            self.forward.eval()
            self.forward(inputs, targets, self.window(self.step_count), accuracy=True)  # validation's own graph
            self.forward.train()
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.loader.load_state_dict(saved["loader"])
        ckpt.set_rng_state(saved["rng"])
        self.constrain.restore(saved["constraint"])
        self._restore_grads(grads)
        synchronize(self.info.device)
        self.compile_time_s = time.perf_counter() - t0
        if self.watch:
            self.graphs_compiled = self.watch.new_graphs()
        graphs = f", {self.graphs_compiled} graph(s) compiled" if self.watch else ""
        self.log(f"warm-up: {steps} step(s) and a validation batch in {self.compile_time_s:.1f}s{graphs}, "
                 f"then the initial state restored (not counted in train_time)")

    def _log_model(self) -> None:
        m, info = self.cfg.model, self.info
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(f"model: {n_params / 1e6:.2f}M parameters, width {m.width}, depth {m.depth}, "
                 f"attention {self.model.attention_kind(info.device)}, "
                 f"device {device_name(info.device, info.world_size)}, world size {info.world_size}, "
                 f"grad accumulation {self.accum}")
        lrs = ", ".join(f"{g['role']} {g['initial_lr']:g}" for g in self.optimizer.param_groups)
        self.log(f"optimizer {self.cfg.optim.name} ({OPTIMIZERS[self.cfg.optim.name].about}); peak lr per role: {lrs}")
        self.log(self.constrain.describe())
        if self.compile_note:
            self.log(self.compile_note)
        if info.device.type != "cuda" and ((m.compile and not m.compile_cpu) or m.bf16):
            mode = "compiled (model.compile_cpu)" if self.compiling else "eager"
            self.log(f"note: model.bf16 applies on CUDA only, model.compile on CPU only with model.compile_cpu; "
                     f"this CPU run is fp32, {mode}")

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
        self.constrain.apply()  # [constraint], right after the step
        if self.sync is None:
            for p in self.zeroable:
                p.grad = None
        else:  # the gradients are views into the reduction buffers: zero them, keep them
            self.sync.zero_grads(self.zeroable)

    # ------------------------------------------------------------------------------------------
    # validate

    @torch.no_grad()
    def validate(self, step: int) -> float:
        """Mean loss over the first validation tokens (all of eval.tokens at the end, the cheaper
        eval.interval_tokens before; the same tokens every time)."""
        cfg = self.cfg
        self.forward.eval()
        window = self.window(step)
        total, n = torch.zeros(2, dtype=torch.float64, device=self.info.device), 0  # loss, top-1 accuracy
        for inputs, targets in self._val_batches(step):
            with autocast(cfg, self.info.device):
                total += self.forward(inputs, targets, window, accuracy=True)
            n += 1
        self.forward.train()
        self.final_val, self.val_accuracy = all_reduce_mean(total / n, self.info).tolist()
        return self.final_val

    def _restore_grads(self, grads: dict) -> None:
        """Gradients back to what they were (kept in place where they are views into reduction
        buffers; an optimizer may keep state there: Scion's light variant)."""
        for p, g in grads.items():
            if p.grad is None or (g is None and self.sync is None):
                p.grad = g
            elif g is None:
                p.grad.zero_()
            else:
                p.grad.copy_(g)

    def _val_batches(self, step: int):
        """The validation batches; their token ids were checked once at start-up (training/run_data.py), not
        again at every validation."""
        cfg, info = self.cfg, self.info
        return val_batches(self.val_files, tokens=eval_tokens(cfg, step), seq_len=cfg.eval_seq_len,
                           batch_size=eval_batch_size(cfg, info.world_size), rank=info.rank,
                           world_size=info.world_size, device=info.device, vocab_size=None)

    # ------------------------------------------------------------------------------------------
    # checkpoint

    def state_dict(self) -> dict:
        """Everything a checkpoint holds. A collective when the optimizer is sharded (call it on
        every rank): each matrix's momentum is copied from its owner first."""
        if self.sharded:
            gather_state(self.optimizer, self.sync.chunks)
        target_step, target_ms = self.target_reached or (None, None)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": ckpt.rng_state(),
            "config": to_dict(self.cfg),  # a resume with a different training config is refused
            "constraint": self.constrain.state_dict(),  # power-iteration vectors (a collective: from their owners)
            "counters": {**self.meter.state_dict(), "loss_sum": all_reduce_mean(self.loss_sum.clone(), self.info).item(),
                         "loss_count": self.loss_count, "target_step": target_step, "target_time_ms": target_ms},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sharded:
            drop_foreign_state(self.optimizer, self.sync.chunks, self.info.rank)
        self.loader.load_state_dict(state["loader"])
        self.constrain.load_state_dict(state.get("constraint", {}))
        ckpt.set_rng_state(state["rng"])
        counters = state["counters"]
        self.meter.load_state_dict(counters)
        self.loss_sum.fill_(counters["loss_sum"])
        self.loss_count = counters["loss_count"]
        if counters.get("target_step") is not None:
            self.target_reached = (counters["target_step"], counters["target_time_ms"])
        self.step_count = state["step"]

    def checkpoint(self, step: int) -> Path | None:
        """Called on every rank (gathering a sharded optimizer's state is a collective); rank 0
        writes. Refuses (Diverged) to save non-finite weights; ranks drop the copies of momentum they
        do not own once it is written."""
        if not weights_finite(self.model):
            raise Diverged(f"non-finite weights after step {step}")
        state = self.state_dict()
        path = None
        if self.info.is_main:
            path = ckpt.save_checkpoint(self.run_dir, step, state, self.cfg.checkpoint.keep)
            self.log(f"checkpoint: {path}")
        if self.sharded:
            drop_foreign_state(self.optimizer, self.sync.chunks, self.info.rank)
        return path

    # ------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict:
        """Train to schedule.steps (or until stopped), then finish(); returns the summary. An error
        other than divergence or an interruption is recorded (status failed) and raised again."""
        cfg, steps = self.cfg, self.cfg.schedule.steps
        status, error = "completed", None
        try:
            with StopFlag() as stop:
                if self.step_count == 0 and eval_due(cfg, 0):
                    self.report(0, train_loss=None)
                if self.step_count >= steps:  # resumed from the final checkpoint of a run that stopped before its summary
                    self.report(self.step_count, train_loss=None)
                while self.step_count < steps:
                    if self.train_step(stop):
                        status = "interrupted"
                        self.log(f"stopped at step {self.step_count}; continue with "
                                 f"--checkpoint.resume={self.run_dir}")
                        break
        except Diverged as e:
            status, error = "diverged", str(e)
            last = ckpt.latest_checkpoint(self.run_dir)
            self.log(f"{e}: stopping. Last good checkpoint: {last if last else 'none'}")
        except KeyboardInterrupt:
            status = "interrupted"
            self.log(f"aborted at step {self.step_count} without a new checkpoint")
        except Exception as e:
            status, error = "failed", f"{type(e).__name__}: {e}"
            self.log(f"failed during step {self.step_count + 1}: {error}\n{traceback.format_exc().rstrip()}")
            raise
        finally:
            summary = self.finish(status, error)
        return summary

    def train_step(self, stop: StopFlag) -> bool:
        """One step with its bookkeeping (meter, divergence guard, log line, validation, checkpoint);
        True when the run must stop here (a stop was requested)."""
        cfg, steps, step = self.cfg, self.cfg.schedule.steps, self.step_count
        t0 = time.perf_counter()
        loss = self.step(step)
        self.step_count = step = step + 1
        self.loss_sum += loss
        self.loss_count += 1
        self.guard.observe(loss, step)
        log_due = step % cfg.log.every == 0 or step == steps
        report_due = log_due or eval_due(cfg, step)
        ckpt_due = (cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0) or (
            step == steps and cfg.checkpoint.final)
        if report_due or ckpt_due:
            synchronize(self.info.device)  # GPU work is asynchronous: settle it before reading the clock
        self.meter.add_step(time.perf_counter() - t0, cfg.data.batch_tokens, self.flops_of_step(step - 1))
        if report_due or ckpt_due:
            self.guard.check(self.info)
        if report_due:
            train_loss = all_reduce_mean(self.loss_sum / max(self.loss_count, 1), self.info).item()
            self.loss_sum.zero_()
            self.loss_count = 0
            self.report(step, train_loss)
        stop_now = stop.requested
        if self.info.active:  # ranks agree on stopping at log and checkpoint steps only
            stop_now = all_reduce_max_flag(stop_now, self.info) if (log_due or ckpt_due) else False
        if ckpt_due or (stop_now and step < steps):
            if stop_now and not ckpt_due:
                self.guard.check(self.info)
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

    def report(self, step: int, train_loss: float | None) -> None:
        """Validation when due, then a metrics row and a log line (and wandb)."""
        row = {"step": step}
        if train_loss is not None:
            row["train_loss"] = train_loss
        if eval_due(self.cfg, step):
            row["val_loss"] = self.validate(step)
            row["val_accuracy"] = self.val_accuracy
            if not math.isfinite(row["val_loss"]):
                raise Diverged(f"non-finite validation loss ({row['val_loss']}) at step {step}")
            self._check_target(step, row["val_loss"])
            row.update(self.constrain.metrics())  # the Lipschitz bound and each matrix's sigma_max, when covered
        mult = schedule.lr_at(max(step - 1, 0), self.cfg)
        row["lr_mult"] = mult
        row.update({f"lr_{g['role']}": g["initial_lr"] * mult for g in self.optimizer.param_groups})
        self._check_compilation(step)
        extra = getattr(self.optimizer, "metrics", None)  # what an optimizer reports of itself (e.g. Prodigy's d)
        if callable(extra):
            row.update(extra())
        row.update(train_time_ms=round(self.meter.train_time_ms, 3), tokens=self.meter.tokens)
        self.out.metrics(row)
        self.log(self._log_line(step, train_loss, row))
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def _check_compilation(self, step: int) -> None:
        """Log graphs compiled since the last report (after the warm-up: recompiles) and warn loudly
        on an eager fallback."""
        if self.watch is None:
            return
        new = self.watch.new_graphs()
        if new and step > 0:
            self.recompiles += new
            self.log(f"recompile: {new} new graph(s) by step {step} ({self.recompiles} since the warm-up)")
        for message in self.watch.fallbacks[self._fallbacks_logged:]:
            self.log(f"WARNING: a compiled function fell back to EAGER mode (slow): {message}")
        self._fallbacks_logged = len(self.watch.fallbacks)

    def _check_target(self, step: int, val_loss: float) -> None:
        target = self.cfg.eval.target
        if target and self.target_reached is None and val_loss <= target:
            self.target_reached = (step, round(self.meter.train_time_ms, 3))
            self.log(f"target: val_loss {val_loss:.4f} <= eval.target {target:g} at step {step} "
                     f"(train_time {self.meter.train_time_ms:.0f}ms)")

    def _log_line(self, step: int, train_loss: float | None, row: dict) -> str:
        steps = self.cfg.schedule.steps
        val = f" val_loss:{row['val_loss']:.4f}" if "val_loss" in row else ""
        acc = f" val_acc:{row['val_accuracy']:.4f}" if "val_loss" in row else ""
        acc += f" lipschitz:{row['lipschitz_bound']:.4g}" if "lipschitz_bound" in row else ""
        if train_loss is None:
            return f"step:{step}/{steps}{val} train_time:0ms step_avg:nan{acc}"
        return (f"step:{step}/{steps} train_loss:{train_loss:.4f}{val} "
                f"train_time:{self.meter.train_time_ms:.0f}ms step_avg:{self.meter.step_avg_ms:.2f}ms "
                f"tok/s:{self.meter.interval_tokens_per_s():,.0f} mem:{peak_memory_mib(self.info.device):,.0f}MiB "
                f"lr_mult:{row['lr_mult']:.4f}{acc}")

    # ------------------------------------------------------------------------------------------
    # finish

    def finish(self, status: str, error: str | None = None) -> dict:
        """Write summary.json (and close wandb); the last log line says how the run ended."""
        cfg, m, info = self.cfg, self.cfg.model, self.info
        target_step, target_ms = self.target_reached or (None, None)
        summary = {
            "status": status,
            "error": error,
            "final_val_loss": self.final_val,
            "final_val_accuracy": self.val_accuracy,
            **self.constrain.summary(),  # lipschitz_bound, log10_lipschitz_bound (the last validation's)
            "steps": self.step_count,
            "target_steps": cfg.schedule.steps,
            "eval_target": cfg.eval.target or None,
            "steps_to_target": target_step,
            "time_to_target_ms": target_ms,
            "train_time_ms": round(self.meter.train_time_ms, 3),
            "step_avg_ms": self.meter.step_avg_ms,
            "tokens": self.meter.tokens,
            "tokens_per_s": self.meter.tokens_per_s,
            "mfu": self.meter.mfu,
            "compile_time_s": round(self.compile_time_s, 3),
            "graphs_compiled": self.graphs_compiled if self.watch else None,
            "graphs_declared": self.graphs_declared if self.watch else None,
            "graph_breaks": self.watch.graph_breaks if self.watch else None,
            "recompiles": self.recompiles if self.watch else None,
            "compile_fallbacks": len(self.watch.fallbacks) if self.watch else None,
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
            "config_file": self.origin.get("config_file"),
            "overrides": list(self.origin.get("overrides", [])),
            "synthetic_data": cfg.data.synthetic,
            "data": self.data.summary(cfg) if self.data else None,
            "run_dir": str(self.run_dir),
        }
        self.out.summary(summary)
        if self.watch is not None:  # its log handler would outlive the run (several Trainers in one process)
            self.watch.stop()
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if v is not None})
            self.wandb.finish()
        final = "None" if self.final_val is None else f"{self.final_val:.4f}"
        self.log(f"{status}: {self.step_count}/{cfg.schedule.steps} steps, final val_loss {final}, "
                 f"run directory {self.run_dir}" + (f" ({error})" if error and status != "diverged" else ""))
        return summary


def train(cfg: Config, info: DistInfo, origin: dict | None = None) -> dict:
    """A whole run: set up, then the loop; returns the summary (of the earlier run, when resuming
    one that had already completed)."""
    trainer = Trainer(cfg, info, origin)
    done = trainer.setup()
    return done if done is not None else trainer.fit()
