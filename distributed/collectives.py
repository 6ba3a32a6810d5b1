"""The collectives of the gradient reductions and the sharded step, spelled in one place.

- The current names, `reduce_scatter_single` and `all_gather_single` (torch 2.13 deprecates
  `reduce_scatter_tensor` and `all_gather_into_tensor` with a FutureWarning on every call), with the
  older names as the fallback for a torch that lacks the new ones.
- Averages use the collective's own AVG operation where the backend has one (NCCL); elsewhere (gloo)
  a SUM, and the caller divides by the world size (`needs_division`).
"""

from __future__ import annotations

import torch.distributed as dist

_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def needs_division() -> bool:
    """True when averages are computed as SUM then a division (the backend has no AVG)."""
    return dist.get_backend() != "nccl"


def _average_op():
    return dist.ReduceOp.SUM if needs_division() else dist.ReduceOp.AVG


def all_reduce_average(buffer, async_op: bool = True):
    """Average `buffer` over ranks in place (a SUM when `needs_division()`)."""
    return dist.all_reduce(buffer, op=_average_op(), async_op=async_op)


def reduce_scatter_average(output, stacked, async_op: bool = True):
    """Rank r receives into `output` the average over ranks of the r-th slot of `stacked`."""
    return _reduce_scatter(output, stacked, op=_average_op(), async_op=async_op)


def all_gather(output, input, async_op: bool = True):
    """`output` (world_size x input's size, flat) receives every rank's `input`, in rank order."""
    return _all_gather(output, input, async_op=async_op)
