"""The optimizer side of sharded orthogonalization: the three parts an optimizer's step splits into so
that distributed/sharding.py can run them over ranks (each rank computes the updates of the matrices
it owns, then the updates are gathered and applied everywhere). With one process the optimizer's own
`step` runs the same parts, batching all matrices of a shape."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from optimizers.base import Optimizer


def same_shape_batches(params: list[Tensor]) -> list[list[Tensor]]:
    """The params that have gradients, grouped by shape (each group is orthogonalized as one batch)."""
    by_shape: dict[tuple, list[Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is not None:
            by_shape[tuple(p.shape)].append(p)
    return list(by_shape.values())


class ShardableOptimizer(Optimizer):
    """An optimizer whose step splits into the three parts `sharded_step` distributes:

        updates(group, params, grads)   momentum + direction of same-shape matrices (owner rank only)
        apply_update(group, p, update)  the parameter update (every rank, every matrix)
        step_replicated()               the groups that are not sharded (every rank)

    `is_sharded(group)` says which groups go through the first two. With one process, `step` runs
    the same parts, batching all matrices of a shape.
    """

    def is_sharded(self, group: dict) -> bool:
        raise NotImplementedError

    def updates(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    @staticmethod
    def apply_update(group: dict, p: Tensor, update: Tensor) -> None:
        raise NotImplementedError

    def step_replicated(self) -> None:
        raise NotImplementedError

    def gather_dtype(self, group: dict, grad: Tensor) -> torch.dtype:
        """The dtype the owners' updates travel in (`sharded_step` casts the owner's update and the padding
        slots' zeros to it, so that every rank sends the same dtype): the gradient's, unless the optimizer
        says otherwise (Muon: bf16 on CUDA)."""
        return grad.dtype

    def sharded_state(self, group: dict, p: Tensor) -> dict[str, Tensor]:
        """The state of one sharded matrix, zero-filled, with every key its owner holds after a step:
        what the other ranks allocate to receive the owner's copy (`gather_state`). Momentum only,
        unless the optimizer keeps more per matrix (Shampoo's factors, NorMuon's second moment)."""
        return {"momentum_buffer": torch.zeros_like(p)}

    def update(self) -> None:
        for group in self.param_groups:
            if self.is_sharded(group):
                self.step_group(group)
        self.step_replicated()

    def step_group(self, group: dict) -> None:
        """`updates` then `apply_update` for every param of the group, one batch per shape."""
        for params in same_shape_batches(group["params"]):
            for p, u in zip(params, self.updates(group, params, [p.grad for p in params])):
                self.apply_update(group, p, u)
