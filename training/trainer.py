"""The Trainer: the mechanics of one run's steps, apart from reporting (training/report.py) and the loop
around them (training/run.py).

    build(train_files)  the model, its optimizer from the model's parameter roles, this rank's loader, the
                        gradient reductions, the constraints, the compiled model
    warmup()            compile (and autotune) on a few steps and a validation batch, then put everything back
    step(step)          one optimizer step: the schedules for the step (the one place the lr multiplier is
                        applied), the micro-batches' forward and backward (reductions start during the last
                        backward), the update (sharded over ranks), the constraints
    validate(step)      mean loss and top-1 accuracy on the fixed first tokens of the validation shards
    state_dict()        everything needed to continue exactly (a collective when the optimizer is sharded)

Benchmarks use `build` and `step` only (no run directory).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from common.errors import ConfigError
from common.hardware import device_name, synchronize
from data.loader import TrainLoader, val_batches
from distributed.grad_sync import GradSync
from distributed.process_group import DistInfo, all_reduce_mean, broadcast_parameters
from distributed.sharding import drop_foreign_state, gather_state, plan_chunks, sharded_step
from model import GPT, ROLES, flops_per_token, fp8
from optimizers import OPTIMIZERS, build_optimizer
from optimizers.base import Optimizer
from training import checkpoint as ckpt
from training import compilation, schedule
from training.config import Config
from training.constrain import Constrainer
from training.schedule import eval_batch_size, eval_tokens, grad_accum_steps


def autocast(cfg: Config, device: torch.device):
    """bf16 autocast on CUDA when model.bf16; nothing elsewhere (CPU runs are fp32)."""
    if device.type == "cuda" and cfg.model.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    def __init__(self, cfg: Config, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.step_count = 0  # optimizer steps done
        self.peak_lr = {role: cfg.optim.role_lr(role) for role in ROLES}  # each role's, before the schedule
        self.lr = dict(self.peak_lr)  # each role's at the current step (set_schedules)
        self.orthogonalized = 0  # matrices this rank orthogonalized in the last sharded step
        self.windows: dict[int, torch.Tensor] = {}  # attention window (tokens) -> its device tensor
        self.step_flops: dict[int, float] = {}  # attention window -> model FLOPs of one step
        self.val_shards: list = []  # the validation shards' tokens (data/loader.py open_shards)
        # build():
        self.model: GPT | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.loader: TrainLoader | None = None
        self.accum = grad_accum_steps(cfg, info.world_size)  # micro-batches per step on this rank
        self.sync: GradSync | None = None  # gradient reductions (a process group only)
        self.constrain: Constrainer | None = None
        self.compiled_model: torch.nn.Module | None = None  # the model as forward calls it (compiled or not)
        self.zeroable: list[torch.nn.Parameter] = []  # parameters whose gradients are reset after a step
        self.roles: list[str] = []  # the roles that have parameters (one param group each)
        self.compile_note = ""  # how the model is compiled (the log's "compile:" line)
        self.graphs_declared = 0  # the graphs the run needs per piece of compiled code (compilation.graphs_needed)

    # ------------------------------------------------------------------------------------------
    # build

    def build(self, train_files: list[str], train_tokens: list[int] | None = None) -> None:
        """The model, its optimizer, this rank's data loader (train_tokens: the files' token counts, when their
        headers were read already) and the gradient reductions."""
        cfg, info = self.cfg, self.info
        if cfg.model.fp8_head and info.device.type == "cuda" and not fp8.supported(info.device):
            raise ConfigError(f"model.fp8_head needs FP8 tensor cores (compute capability 8.9+, e.g. H100); "
                              f"{device_name(info.device, 1)} has none: set --model.fp8_head=false")
        torch.manual_seed(cfg.seed)
        self.model = GPT(cfg.model, max_seq_len=max(cfg.model.seq_len, cfg.eval_seq_len)).to(info.device)
        broadcast_parameters(self.model, info)
        self.optimizer = build_optimizer(self.model.params_by_role(), cfg.optim, info.device)
        self.roles = [role for role, params in self.model.params_by_role().items() if params]
        self.loader = TrainLoader(
            train_files, seq_len=cfg.model.seq_len, batch_size=cfg.data.micro_batch_size, rank=info.rank,
            world_size=info.world_size, seed=cfg.seed, shuffle=cfg.data.shuffle_shards,
            align_to_docs=cfg.data.align_to_docs, eot_token=cfg.model.eot_token, vocab_size=cfg.model.vocab_size,
            device=info.device, token_counts=train_tokens,
        )
        self.sync = self._grad_sync() if info.active else None
        self.constrain = Constrainer(cfg, self.model, info, self.sync, self.peak_lr)  # [constraint]: at init too
        self.compiled_model = self._compile()
        held = {id(p) for g in self.optimizer.param_groups
                if isinstance(self.optimizer, Optimizer) and self.optimizer.holds_state_in_grad(g) for p in g["params"]}
        self.zeroable = [p for p in self.model.parameters() if id(p) not in held]

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

    @property
    def sharded(self) -> bool:
        return self.sync is not None and bool(self.sync.chunks)

    def _compile(self) -> torch.nn.Module:
        """The model, compiled on CUDA or with model.compile_cpu (training/compilation.py: the graphs it needs
        fit the limit)."""
        if not self.compiling:
            return self.model
        per_block = self.sync is not None and self.cfg.distributed.overlap
        self.graphs_declared = compilation.graphs_needed(self.cfg, per_block)
        limit = compilation.configure(self.graphs_declared)
        self.compile_note = f"compile: {'each block' if per_block else 'the model'}, recompile limit {limit}"
        if per_block:
            # one graph per block, so that each block's gradients (and their reductions) are ready
            # as soon as its backward is done, not when the whole model's backward graph finishes
            for block in self.model.blocks:
                block.compile(dynamic=False)
            self.model.head.compile(dynamic=False)  # the head with its soft cap and chunked loss (model/loss.py)
            return self.model
        return torch.compile(self.model, dynamic=False)

    def warmup(self) -> int:
        """Run model.compile_warmup_steps steps and one validation batch (compilation, kernel autotuning),
        then put everything back as it was, so that the timed run starts from the same state and its
        train_time leaves compilation out. Returns the number of steps (0: no warm-up)."""
        steps = self.cfg.model.compile_warmup_steps
        steps = (3 if self.compiling else 0) if steps < 0 else steps
        if not steps:
            return 0
        saved = copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                               "loader": self.loader.state_dict(), "rng": ckpt.rng_state()})
        saved["constraint"] = self.constrain.snapshot()
        grads = {p: None if p.grad is None else p.grad.clone() for p in self.model.parameters()}
        for i in range(steps):
            self.step(self.step_count + i)
        with torch.no_grad(), autocast(self.cfg, self.info.device):
            inputs, targets = next(iter(self._val_batches(self.step_count)))
            self.compiled_model.eval()
            self.compiled_model(inputs, targets, self.window(self.step_count), accuracy=True)  # validation's graph
            self.compiled_model.train()
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.loader.load_state_dict(saved["loader"])
        ckpt.set_rng_state(saved["rng"])
        self.constrain.restore(saved["constraint"])
        self._restore_grads(grads)
        synchronize(self.info.device)
        return steps

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

    # ------------------------------------------------------------------------------------------
    # one step

    def window(self, step: int) -> torch.Tensor:
        """The attention window for `step` as a cached device tensor (no recompiles when it grows)."""
        w = self.window_size(step)
        if w not in self.windows:
            self.windows[w] = torch.tensor(w, dtype=torch.int32, device=self.info.device)
        return self.windows[w]

    def window_size(self, step: int) -> int:
        s = self.cfg.schedule
        return schedule.window_at(step, s.steps, self.cfg.model.window, s.window_warmup)

    def flops_of_step(self, step: int) -> float:
        """Model FLOPs of step `step` (its attention window decides the attention part)."""
        w = self.window_size(step)
        if w not in self.step_flops:
            m = self.cfg.model
            self.step_flops[w] = flops_per_token(m, m.seq_len, w) * self.cfg.data.batch_tokens
        return self.step_flops[w]

    def step(self, step: int) -> torch.Tensor:
        """Optimizer step number `step` (0-based); returns the mean loss (a device tensor)."""
        self.set_schedules(step)
        loss = self.forward_backward(step)
        self.optimizer_step(step)
        return loss

    def set_schedules(self, step: int) -> None:
        """The learning rate of every role for `step`: its peak lr times the schedule's multiplier (the one
        place it is applied; optimizers read their group's lr), and a warming-up momentum."""
        mult = schedule.lr_at(step, self.cfg)
        self.lr = {role: peak * mult for role, peak in self.peak_lr.items()}
        momentum = self.cfg.optim.settings.momentum_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr[group["role"]]
            if momentum is not None and "momentum" in group:
                group["momentum"] = momentum

    def forward_backward(self, step: int) -> torch.Tensor:
        """All micro-batches of the step; the gradient reductions start during the last backward."""
        window = self.window(step)
        total = torch.zeros((), dtype=torch.float64, device=self.info.device)
        for micro in range(self.accum):
            if self.sync is not None:  # reduce only once, during the last backward
                self.sync.sync_this_backward = micro == self.accum - 1
            inputs, targets = self.loader.next_batch()
            with autocast(self.cfg, self.info.device):
                loss = self.compiled_model(inputs, targets, window)
            (loss / self.accum).backward()
            total += loss.detach()
        return total / self.accum

    def optimizer_step(self, step: int) -> None:
        """The update (sharded over ranks when the optimizer allows it), then the constraints."""
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
        self.constrain.apply(self.lr)  # [constraint], right after the step
        if self.sync is None:
            for p in self.zeroable:
                p.grad = None
        else:  # the gradients are views into the reduction buffers: zero them, keep them
            self.sync.zero_grads(self.zeroable)

    # ------------------------------------------------------------------------------------------
    # validate

    @torch.no_grad()
    def validate(self, step: int, progress=lambda: None) -> tuple[float, float]:
        """Mean loss and top-1 accuracy over the first validation tokens (all of eval.tokens at the end, the
        cheaper eval.interval_tokens before; the same tokens every time). progress(): called at each batch."""
        self.compiled_model.eval()
        window = self.window(step)
        total, n = torch.zeros(2, dtype=torch.float64, device=self.info.device), 0  # loss, top-1 accuracy
        for inputs, targets in self._val_batches(step):
            with autocast(self.cfg, self.info.device):
                total += self.compiled_model(inputs, targets, window, accuracy=True)
            n += 1
            progress()
        self.compiled_model.train()
        loss, accuracy = all_reduce_mean(total / n, self.info).tolist()
        return loss, accuracy

    def _val_batches(self, step: int):
        """The validation batches; their token ids were checked once at start-up (training/run_data.py), not
        again at every validation."""
        cfg, info = self.cfg, self.info
        return val_batches(self.val_shards, tokens=eval_tokens(cfg, step), seq_len=cfg.eval_seq_len,
                           batch_size=eval_batch_size(cfg, info.world_size), rank=info.rank,
                           world_size=info.world_size, device=info.device, vocab_size=None)

    # ------------------------------------------------------------------------------------------
    # state

    def state_dict(self) -> dict:
        """The model, optimizer, loader, RNG and constraint state. A collective when the optimizer is sharded
        (call it on every rank): each matrix's momentum is copied from its owner first."""
        if self.sharded:
            gather_state(self.optimizer, self.sync.chunks)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": ckpt.rng_state(),
            "constraint": self.constrain.state_dict(),  # power-iteration vectors (a collective: from their owners)
            "step": self.step_count,
        }

    def drop_foreign_state(self) -> None:
        """After a checkpoint: ranks drop the copies of momentum they do not own."""
        if self.sharded:
            drop_foreign_state(self.optimizer, self.sync.chunks, self.info.rank)

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.drop_foreign_state()
        self.loader.load_state_dict(state["loader"])
        self.constrain.load_state_dict(state.get("constraint", {}))
        ckpt.set_rng_state(state["rng"])
        self.step_count = state["step"]

    def describe(self) -> list[str]:
        """The log's start-up lines about the model, the optimizer and the constraints."""
        m, info = self.cfg.model, self.info
        n_params = sum(p.numel() for p in self.model.parameters())
        lines = [f"model: {n_params / 1e6:.2f}M parameters, width {m.width}, depth {m.depth}, "
                 f"attention {self.model.attention_kind(info.device)}, "
                 f"device {device_name(info.device, info.world_size)}, world size {info.world_size}, "
                 f"grad accumulation {self.accum}"]
        lrs = ", ".join(f"{role} {self.peak_lr[role]:g}" for role in self.roles)
        lines.append(f"optimizer {self.cfg.optim.name} ({OPTIMIZERS[self.cfg.optim.name].about}); peak lr per role: "
                     f"{lrs}")
        lines.append(self.constrain.describe())
        if self.compile_note:
            lines.append(self.compile_note)
        if info.device.type != "cuda" and ((m.compile and not m.compile_cpu) or m.bf16):
            mode = "compiled (model.compile_cpu)" if self.compiling else "eager"
            lines.append(f"note: model.bf16 applies on CUDA only, model.compile on CPU only with model.compile_cpu; "
                         f"this CPU run is fp32, {mode}")
        return lines
