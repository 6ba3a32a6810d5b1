"""Process group setup from torchrun's environment, and the few collectives the trainer uses.

`python train_gpt.py` runs one process with no process group; under torchrun (RANK, WORLD_SIZE,
LOCAL_RANK set; one node or several, `--nnodes`/`--rdzv-endpoint`) every process joins one group:
NCCL when the device is CUDA, gloo on CPU. Collectives fail after `timeout_s` instead of hanging (on NCCL the
training loop's watchdog acts at `timeout_s` and NCCL's own timeout is `nccl_margin_s` later:
training/watchdog.py).

`distributed.one_rank_group = true` makes a group of one process (the same backends): every
distributed path then runs with a world of one (gradient hooks and buckets, reduce-scatter, sharded
orthogonalization and its all-gather, per-block compilation), so that one GPU runs the code that 8
GPUs run, and its results equal the plain single-process run's (tests/test_distributed.py).
Gradient reductions: distributed/grad_sync.py; the sharded optimizer step: distributed/sharding.py.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    grouped: bool | None = None  # a process group exists; None: when world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether the distributed paths run: several processes, or a one-rank group."""
        return self.world_size > 1 if self.grouped is None else self.grouped


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device = 'cuda' was requested but CUDA is not available; use --device=cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device_preference: str = "auto", timeout_s: float = 600.0,
                     one_rank_group: bool = False, nccl_margin_s: float = 0.0) -> DistInfo:
    """Join the process group of torchrun's processes (or, with one_rank_group and a world of one, make a
    group of this process alone); no group for one process otherwise.

    On NCCL, an error that NCCL's watchdog finds (a peer's connection lost) aborts the communicators and is
    raised in the loop at the next collective (TORCH_NCCL_ASYNC_ERROR_HANDLING=2, unless set already; torch's
    default 3 ends the process at once, before the run can write its summary)."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = env_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    grouped = world_size > 1 or one_rank_group
    if grouped and not dist.is_initialized():
        nccl = device.type == "cuda"
        if nccl:
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        timeout = datetime.timedelta(seconds=timeout_s + (nccl_margin_s if nccl else 0.0))
        kwargs = dict(backend="nccl", device_id=device) if nccl else dict(backend="gloo")
        if world_size == 1 and "MASTER_ADDR" not in os.environ:  # plain python: an in-process store, no ports
            store = dict(store=dist.HashStore(), rank=0, world_size=1)
        else:
            store = _attempt_store(rank, world_size, timeout)
        dist.init_process_group(**kwargs, timeout=timeout, **store)
    return DistInfo(rank, world_size, local_rank, device, grouped)


def _attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dict:
    """Under torchrun, a key prefix per restart attempt on torchrun's own store: after a restart the
    new processes must never read the addresses the dead attempt published (seen here: gloo then
    connects to a closed port and fails). Empty outside torchrun (plain env:// init)."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=False, timeout=timeout)
    return dict(store=dist.PrefixStore(f"nanogpt/attempt_{attempt}/", store), rank=rank, world_size=world_size)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's value of a picklable object, on every rank."""
    if not info.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def all_reduce_min(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The smallest value of `t` over the ranks, in place."""
    if info.active:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def all_reduce_any(flags: tuple[bool, ...], info: DistInfo) -> tuple[bool, ...]:
    """Each flag True on every rank if it is True on any rank (one collective for all of them)."""
    if not info.active:
        return tuple(flags)
    t = torch.tensor([int(f) for f in flags], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(x) for x in t.tolist())


@torch.no_grad()
def broadcast_parameters(module: torch.nn.Module, info: DistInfo) -> None:
    if info.active:
        for p in module.parameters():
            dist.broadcast(p.detach(), src=0)


def check_same_everywhere(info: DistInfo, config_text: str, code_hash: str) -> None:
    """Fail on every rank, naming the ranks, if the ranks run different configs or code."""
    if not info.active:
        return
    mine = (hashlib.sha256(config_text.encode()).hexdigest()[:12], code_hash)
    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, mine)
    for what, i in (("config", 0), ("code", 1)):
        values = {v[i] for v in everyone}
        if len(values) > 1:
            groups = {h: [r for r, v in enumerate(everyone) if v[i] == h] for h in values}
            detail = "; ".join(f"ranks {ranks}: {h}" for h, ranks in groups.items())
            raise ConfigError(f"ranks disagree on the {what} ({detail}): every rank must run the same "
                               f"{'config and overrides' if what == 'config' else 'version of the repository'}")


CODE_PATHS = ("train_gpt.py", "common", "data", "model", "optimizers", "distributed", "training")


def code_hash(root) -> str:
    """A hash of the Python sources the training run executes (what every rank must agree on):
    the entry point and the model/optimizers/training/data packages, not virtual environments,
    run outputs or tests, which may differ from node to node."""
    from pathlib import Path

    root = Path(root)
    files = [root / "train_gpt.py", *(f for d in CODE_PATHS[1:] for f in (root / d).rglob("*.py"))]
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]
