"""One training run: set up, the loop, the end. The step's mechanics are the Trainer's (training/trainer.py),
what the run says about itself the Reporter's (training/report.py).

    setup()   decide what the run continues from and check it, check the data, build the trainer; only
              then open the run directory (nothing is written before everything checked out)
    fit()     the loop: a step, then at their intervals a log line with a metrics row, a validation,
              a checkpoint; a stop request (Ctrl-C, SIGTERM) checkpoints and ends the run; SIGUSR1
              checkpoints and goes on (training/signals.py); with several processes, a watchdog ends a rank
              blocked on a dead peer with a summary (training/watchdog.py)
    finish()  summary.json and the last log line

Every run ends with one status: completed, interrupted (Ctrl-C / SIGTERM), diverged (a non-finite loss or
weight; training/divergence.py) or failed (any other error: its message and step go into the summary and
its traceback into the log, and the error propagates to train_gpt.py's exit code).
"""

from __future__ import annotations

import math
import os
import time
import traceback

import torch

from common.atomic import remove_stale_tmp
from common.config_io import to_dict, to_toml
from common.hardware import synchronize
from distributed.process_group import DistInfo, all_reduce_any, all_reduce_mean, broadcast_object
from training import checkpoint as ckpt
from training import schedule
from training.config import Config
from training.divergence import Diverged, DivergenceGuard, weights_finite
from training.report import Reporter
from training.resume import ResumePlan, plan_run
from training.run_data import RunData, prepare_data
from training.run_dir import RunOutputs
from training.schedule import eval_due
from training.signals import StopFlag, inject_fault
from training.trainer import Trainer
from training.watchdog import NoWatchdog, Watchdog


class Run:
    def __init__(self, cfg: Config, info: DistInfo, origin: dict | None = None):
        """origin: where the config came from ({"config_file": ..., "overrides": [...]}), for the summary."""
        self.cfg, self.info = cfg, info
        self.trainer = Trainer(cfg, info)
        self.report = Reporter(cfg, info, origin)
        self.guard = DivergenceGuard(info.device)
        self.run_dir = None
        self.data: RunData | None = None
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)  # train losses since the last log
        self.loss_count = 0
        self.watchdog = NoWatchdog()

    # ------------------------------------------------------------------------------------------
    # set up

    def setup(self) -> dict | None:
        """Decide and check what the run continues from, check the data, build everything; then open
        the run directory. Returns the summary of a run that had already completed when asked to
        resume it (nothing is done or written), else None."""
        cfg, info, report, trainer = self.cfg, self.info, self.report, self.trainer
        plan = self._plan()
        self.run_dir = plan.run_dir
        report.out = RunOutputs(self.run_dir, info.is_main)
        for note in plan.notes:
            report.log(note)
        if plan.completed is not None:
            report.log(f"{self.run_dir} already completed {plan.completed.get('steps')} steps (final val_loss "
                       f"{plan.completed.get('final_val_loss')}): nothing to do, nothing changed")
            return plan.completed
        state = plan.state if plan.state is not None or plan.checkpoint is None else ckpt.load_checkpoint(plan.checkpoint)
        self.data = prepare_data(cfg, info, report.log)
        if trainer.compiling:
            report.watch_compilation()
        trainer.build(self.data.train_files, self.data.train_tokens)
        trainer.loader.open()  # the first training shard's token ids are checked now, not at step 1
        trainer.val_shards = self.data.val_shards
        if state:
            self.load_state_dict(state)
        t0 = time.perf_counter()
        if steps := trainer.warmup():
            report.warmed_up(steps, time.perf_counter() - t0)
        report.out.open(resume_step=trainer.step_count if cfg.checkpoint.resume else None)
        self._log_start(plan, state)
        report.start_wandb(self.run_dir)
        return None

    def _plan(self) -> ResumePlan:
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
            plan = ResumePlan(shared[0], shared[1], None, shared[2], shared[3])
        return plan

    def _log_start(self, plan, state) -> None:
        """The start-up lines: where the run writes, what it resumes, the data, the model, the optimizer. The
        full config goes to the run's config.toml (and log.txt), not to the screen first."""
        cfg, info, log = self.cfg, self.info, self.report.log
        log(f"run directory: {self.run_dir}")
        if info.is_main:
            for stale in remove_stale_tmp(self.run_dir) + remove_stale_tmp(ckpt.checkpoint_dir(self.run_dir)):
                log(f"removed {stale.name}, left by a write that was killed")
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restarts:
            log(f"torchrun restart {restarts}: every rank restarts from the last checkpoint")
        if state:
            log(f"resuming from {plan.checkpoint} at step {self.trainer.step_count}")
        else:
            self.report.out.write_config(to_toml(cfg))
        self.report.out.log("config:\n" + to_toml(cfg), echo=False)
        log(f"config: {self.run_dir / 'config.toml'} (every key, defaults included)")
        log(self.data.describe(cfg))
        for line in self.trainer.describe():
            log(line)

    # ------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict:
        """Train to schedule.steps (or until stopped), then finish(); returns the summary. An error
        other than divergence or an interruption is recorded (status failed) and raised again. The signal
        handlers stay installed until the summary is written: torchrun answers a dead peer with SIGTERM to
        this process, which then often comes while it is ending, and the default SIGTERM would kill it first."""
        status, error = "completed", None
        with StopFlag() as stop:
            try:
                with self._watchdog():
                    if self._loop(stop):
                        status = "interrupted"
            except Diverged as e:
                status, error = "diverged", str(e)
                last = ckpt.latest_checkpoint(self.run_dir)
                self.report.log(f"{e}: stopping. Last good checkpoint: {last if last else 'none'}")
            except KeyboardInterrupt:
                status = "interrupted"
                self.report.log(f"aborted at step {self.trainer.step_count} without a new checkpoint")
            except Exception as e:
                status, error = "failed", f"{type(e).__name__}: {e}"
                # the message on the screen (train_gpt.py prints it, and a traceback only for unexpected errors);
                # the traceback always in log.txt, for whoever needs it
                self.report.log(f"failed during step {self.trainer.step_count + 1}: {error}", echo=False)
                self.report.log(traceback.format_exc().rstrip(), echo=False)
                raise
            finally:
                self.watchdog = NoWatchdog()
                summary = self.finish(status, error)
        return summary

    def _loop(self, stop: StopFlag) -> bool:
        """The steps, from the current one to schedule.steps; True when a requested stop ended them early."""
        steps, trainer = self.cfg.schedule.steps, self.trainer
        if trainer.step_count == 0 and eval_due(self.cfg, 0):
            self.log_row(0, train_loss=None)
        if trainer.step_count >= steps:  # resumed from the final checkpoint of a run that stopped before its summary
            self.log_row(trainer.step_count, train_loss=None)
        while trainer.step_count < steps:
            if self.train_step(stop):
                self.report.log(f"stopped at step {trainer.step_count}; continue with "
                                f"--checkpoint.resume={self.run_dir}")
                return True
        return False

    def _watchdog(self):
        """With several processes: end this one, with a summary that says failed, when it is blocked on a peer
        that died or hangs (training/watchdog.py); the stall rule on NCCL only (gloo raises its own timeout)."""
        d = self.cfg.distributed
        if self.info.world_size < 2:
            return self.watchdog
        stall = d.timeout_s if self.info.device.type == "cuda" else None
        self.watchdog = Watchdog(self.info.rank, stall, d.stop_grace_s,
                                 on_fire=lambda reason: self.finish("failed", reason))
        return self.watchdog

    def train_step(self, stop: StopFlag) -> bool:
        """One step with its bookkeeping (meter, divergence guard, log line, validation, checkpoint);
        True when the run must stop here (a stop was requested)."""
        cfg, steps, trainer = self.cfg, self.cfg.schedule.steps, self.trainer
        self.watchdog.tick()
        t0 = time.perf_counter()
        loss = trainer.step(trainer.step_count)
        trainer.step_count = step = trainer.step_count + 1
        self.loss_sum += loss
        self.loss_count += 1
        self.guard.observe(loss, step)
        log_due = step % cfg.log.every == 0 or step == steps
        report_due = log_due or eval_due(cfg, step)
        ckpt_due = (cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0) or (
            step == steps and cfg.checkpoint.final)
        if report_due or ckpt_due:
            synchronize(self.info.device)  # GPU work is asynchronous: settle it before reading the clock
        self.report.meter.add_step(time.perf_counter() - t0, cfg.data.batch_tokens, trainer.flops_of_step(step - 1))
        if report_due or ckpt_due:
            self.guard.check(self.info)
        if report_due:
            train_loss = all_reduce_mean(self.loss_sum / max(self.loss_count, 1), self.info).item()
            self.loss_sum.zero_()
            self.loss_count = 0
            self.log_row(step, train_loss)
        stop_now, save_now = stop.requested, stop.checkpoint_requested  # SIGINT/SIGTERM; SIGUSR1 (signals.py)
        if self.info.active:  # ranks agree on stopping and on a requested checkpoint at log and checkpoint steps only
            stop_now, save_now = all_reduce_any((stop_now, save_now), self.info) if (log_due or ckpt_due) \
                else (False, False)
        if ckpt_due or ((stop_now or save_now) and step < steps):
            if (stop_now or save_now) and not ckpt_due:
                self.guard.check(self.info)
            self.checkpoint(step)
            if save_now:
                stop.checkpoint_requested = False
                self.report.log(f"step {step}: checkpoint written on request (SIGUSR1); continuing")
        inject_fault(step, self.info.rank)
        return stop_now and step < steps

    def log_row(self, step: int, train_loss: float | None) -> None:
        """Validation when due, then a metrics row and a log line (and wandb)."""
        row = {} if train_loss is None else {"train_loss": train_loss}
        if eval_due(self.cfg, step):
            val_loss, accuracy = self.trainer.validate(step, progress=self.watchdog.tick)
            if not math.isfinite(val_loss):
                raise Diverged(f"non-finite validation loss ({val_loss}) at step {step}")
            self.report.validated(step, val_loss, accuracy)
            row.update(val_loss=val_loss, val_accuracy=accuracy)
            row.update(self.trainer.constrain.metrics())  # the Lipschitz bound and each matrix's sigma_max, when covered
        mult = schedule.lr_at(max(step - 1, 0), self.cfg)
        row["lr_mult"] = mult
        row.update({f"lr_{role}": self.trainer.peak_lr[role] * mult for role in self.trainer.roles})
        self.report.check_compilation(step)
        extra = getattr(self.trainer.optimizer, "metrics", None)  # what an optimizer reports of itself (Prodigy's d)
        if callable(extra):
            row.update(extra())
        self.report.row(step, row)

    # ------------------------------------------------------------------------------------------
    # checkpoints and the end

    def state_dict(self) -> dict:
        """Everything a checkpoint holds: the trainer's state, the config (a resume with another training
        config is refused), the counters of the run and its reporting."""
        counters = {**self.report.counters(), "loss_sum": all_reduce_mean(self.loss_sum.clone(), self.info).item(),
                    "loss_count": self.loss_count}
        return {**self.trainer.state_dict(), "config": to_dict(self.cfg), "counters": counters}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state)
        counters = state["counters"]
        self.report.load_counters(counters)
        self.loss_sum.fill_(counters["loss_sum"])
        self.loss_count = counters["loss_count"]

    def checkpoint(self, step: int):
        """Called on every rank (gathering a sharded optimizer's state is a collective); rank 0 writes. Refuses
        (Diverged) to save non-finite weights."""
        if not weights_finite(self.trainer.model):
            raise Diverged(f"non-finite weights after step {step}")
        state = self.state_dict()
        path = None
        if self.info.is_main:
            with self.watchdog.busy():
                path = ckpt.save_checkpoint(self.run_dir, step, state, self.cfg.checkpoint.keep)
            self.report.log(f"checkpoint: {path}")
        self.trainer.drop_foreign_state()
        return path

    def finish(self, status: str, error: str | None = None) -> dict:
        """Write summary.json (and close wandb); the last log line says how the run ended."""
        trainer = self.trainer
        extra = {**(trainer.constrain.summary() if trainer.constrain else {}),
                 "graphs_declared": trainer.graphs_declared if self.report.watch else None}
        return self.report.summary(status, error, trainer.step_count, self.run_dir,
                                   self.data.summary(self.cfg) if self.data else None, extra)


def train(cfg: Config, info: DistInfo, origin: dict | None = None) -> dict:
    """A whole run: set up, then the loop; returns the summary (of the earlier run, when resuming
    one that had already completed)."""
    run = Run(cfg, info, origin)
    done = run.setup()
    return done if done is not None else run.fit()
