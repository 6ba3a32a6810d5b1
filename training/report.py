"""What a run says about itself: log lines, metrics rows, the first validation at the target, the compile
watch (graphs, recompiles, eager fallbacks, graph breaks), wandb, and summary.json at the end. The loop
(training/run.py) hands it the figures; it never touches the model or the optimizer.

A log line looks like the speedrun's, with a few more fields:

    step:1770/1770 train_loss:3.2810 val_loss:3.2794 train_time:176000ms step_avg:99.40ms tok/s:3,955,000 ...
"""

from __future__ import annotations

import torch

from common.hardware import device_name, peak_memory_mib, peak_tflops
from distributed.process_group import DistInfo
from training import compilation
from training.config import Config
from training.meter import RunMeter
from training.run_dir import RunOutputs, git_commit, start_wandb


class Reporter:
    def __init__(self, cfg: Config, info: DistInfo, origin: dict | None = None):
        """origin: where the config came from ({"config_file": ..., "overrides": [...]}), for the summary."""
        self.cfg, self.info, self.origin = cfg, info, origin or {}
        self.out: RunOutputs | None = None  # the run's files (None: nothing is written)
        peak = peak_tflops(info.device)
        self.meter = RunMeter(peak_flops=peak * 1e12 * info.world_size if peak else None)
        self.final_val: float | None = None
        self.val_accuracy: float | None = None
        self.target_reached: tuple[int, float] | None = None  # (step, train_time_ms) of the first val <= eval.target
        self.watch: compilation.CompileWatch | None = None  # compilations and eager fallbacks, when compiling
        self.compile_time_s = 0.0
        self.graphs_compiled = 0  # by the warm-up
        self.recompiles = 0  # graphs compiled after the warm-up
        self._fallbacks_logged = 0
        self.wandb = None

    def log(self, message: str, echo: bool = True) -> None:
        """A line of log.txt, printed too unless echo is False (a traceback: log.txt only)."""
        if self.out is not None:
            self.out.log(message, echo=echo)

    def start_wandb(self, run_dir) -> None:
        if self.cfg.log.wandb and self.info.is_main:
            self.wandb = start_wandb(self.cfg, run_dir)

    # ------------------------------------------------------------------------------------------
    # compilation

    def watch_compilation(self) -> None:
        """Count the graphs compiled from now on (call it before the model first runs)."""
        self.watch = compilation.CompileWatch().start()

    def warmed_up(self, steps: int, seconds: float) -> None:
        """The compile warm-up ran `steps` steps in `seconds` (not counted in train_time)."""
        self.compile_time_s = seconds
        if self.watch:
            self.graphs_compiled = self.watch.new_graphs()
        graphs = f", {self.graphs_compiled} graph(s) compiled" if self.watch else ""
        self.log(f"warm-up: {steps} step(s) and a validation batch in {seconds:.1f}s{graphs}, "
                 f"then the initial state restored (not counted in train_time)")

    def check_compilation(self, step: int) -> None:
        """Log graphs compiled since the last report (after the warm-up: recompiles) and warn loudly on an
        eager fallback."""
        if self.watch is None:
            return
        new = self.watch.new_graphs()
        if new and step > 0:
            self.recompiles += new
            self.log(f"recompile: {new} new graph(s) by step {step} ({self.recompiles} since the warm-up)")
        for message in self.watch.fallbacks[self._fallbacks_logged:]:
            self.log(f"WARNING: a compiled function fell back to EAGER mode (slow): {message}")
        self._fallbacks_logged = len(self.watch.fallbacks)

    # ------------------------------------------------------------------------------------------
    # rows and lines

    def validated(self, step: int, val_loss: float, accuracy: float) -> None:
        """A validation's result; the first at or below eval.target is the run's time to target."""
        self.final_val, self.val_accuracy = val_loss, accuracy
        target = self.cfg.eval.target
        if target and self.target_reached is None and val_loss <= target:
            self.target_reached = (step, round(self.meter.train_time_ms, 3))
            self.log(f"target: val_loss {val_loss:.4f} <= eval.target {target:g} at step {step} "
                     f"(train_time {self.meter.train_time_ms:.0f}ms)")

    def row(self, step: int, row: dict) -> None:
        """A metrics row (step, train_loss, val_loss, lr_mult, lr per role, ...): to metrics.jsonl, the log and
        wandb, with the time and tokens so far."""
        row = {"step": step, **row, "train_time_ms": round(self.meter.train_time_ms, 3), "tokens": self.meter.tokens}
        if self.out is not None:
            self.out.metrics(row)
        self.log(self._line(step, row))
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def _line(self, step: int, row: dict) -> str:
        steps, train_loss = self.cfg.schedule.steps, row.get("train_loss")
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
    # the end

    def counters(self) -> dict:
        """What a checkpoint keeps of the reporting, to continue exactly (time, tokens, the target)."""
        target_step, target_ms = self.target_reached or (None, None)
        return {**self.meter.state_dict(), "target_step": target_step, "target_time_ms": target_ms}

    def load_counters(self, counters: dict) -> None:
        self.meter.load_state_dict(counters)
        if counters.get("target_step") is not None:
            self.target_reached = (counters["target_step"], counters["target_time_ms"])

    def summary(self, status: str, error: str | None, steps: int, run_dir, data: dict | None,
                extra: dict) -> dict:
        """summary.json (and wandb's summary); `extra`: the constraints' bound and anything the run adds."""
        cfg = self.cfg
        summary = {"status": status, "error": error, "final_val_loss": self.final_val,
                   "final_val_accuracy": self.val_accuracy, **extra, **self._progress(steps), **self._compilation(),
                   **self._machine(), **self._origin(), "data": data, "run_dir": str(run_dir)}
        if self.out is not None:
            self.out.summary(summary)
        if self.watch is not None:  # its log handler would outlive the run (several runs in one process)
            self.watch.stop()
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if v is not None})
            self.wandb.finish()
        final = "None" if self.final_val is None else f"{self.final_val:.4f}"
        self.log(f"{status}: {steps}/{cfg.schedule.steps} steps, final val_loss {final}, run directory {run_dir}"
                 + (f" ({error})" if error and status != "diverged" else ""))
        return summary

    def _progress(self, steps: int) -> dict:
        target_step, target_ms = self.target_reached or (None, None)
        return {
            "steps": steps,
            "target_steps": self.cfg.schedule.steps,
            "eval_target": self.cfg.eval.target or None,
            "steps_to_target": target_step,
            "time_to_target_ms": target_ms,
            "train_time_ms": round(self.meter.train_time_ms, 3),
            "step_avg_ms": self.meter.step_avg_ms,
            "tokens": self.meter.tokens,
            "tokens_per_s": self.meter.tokens_per_s,
            "mfu": self.meter.mfu,
        }

    def _compilation(self) -> dict:
        """Compile time and graph counts (None: not compiled, nothing watched)."""
        watching = self.watch is not None
        return {
            "compile_time_s": round(self.compile_time_s, 3),
            "graphs_compiled": self.graphs_compiled if watching else None,
            "graph_breaks": self.watch.graph_breaks if watching else None,
            "recompiles": self.recompiles if watching else None,
            "compile_fallbacks": len(self.watch.fallbacks) if watching else None,
        }

    def _machine(self) -> dict:
        info = self.info
        return {
            "peak_memory_mib": peak_memory_mib(info.device),
            "world_size": info.world_size,
            "device": device_name(info.device, info.world_size),
            "torch_version": torch.__version__,
            "git_commit": git_commit(),
        }

    def _origin(self) -> dict:
        cfg = self.cfg
        return {
            "optimizer": cfg.optim.name,
            "lr": cfg.optim.lr,
            "width": cfg.model.width,
            "depth": cfg.model.depth,
            "seed": cfg.seed,
            "config": cfg.name,
            "config_file": self.origin.get("config_file"),
            "overrides": list(self.origin.get("overrides", [])),
            "synthetic_data": cfg.data.synthetic,
        }
