"""Sharded orthogonalization across ranks: each rank computes the updates of the matrices it owns.

The matrices of the sharded groups (Muon's hidden matrices, Scion's spectral-norm groups) are
grouped by shape and cut into chunks of `world_size`, in the order their gradients arrive during
backward; the last chunk of a shape is padded. Rank r owns slot r of every chunk. The chunks of one
param group and shape form a batch; for each batch, in the order its last gradient arrives:

    1. wait for the reduce-scatters that delivered the averaged gradients of this rank's matrices
       (started by distributed/grad_sync.py while backward was still running, one per chunk),
    2. compute their updates (momentum, then orthogonalization) with one call of the optimizer's
       `updates`: all of this rank's matrices of that shape as one batch (one Newton–Schulz launch
       per iteration, not one per matrix),
    3. all-gather the updates of each chunk, asynchronously: the gathers of one batch run while the
       next batch is being orthogonalized,
    4. every rank applies every update of the chunk with the optimizer's `apply_update`.

The momentum of a matrix (all of its state: `sharded_state` names it) lives on its owner only;
`gather_state` copies it to every rank before a checkpoint, so checkpoints have the single-process
layout and resume on any number of ranks.
With one process none of this runs: the optimizer's own step batches all matrices of a shape.
"""


from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from distributed import collectives
from optimizers.shardable import ShardableOptimizer


@dataclass
class Chunk:
    """`world_size` same-shape matrices of one param group; slot r belongs to rank r (None: padding)."""

    group_index: int
    shape: tuple
    params: list  # list[Parameter | None], one per rank


def plan_chunks(optimizer, world_size: int, backward_rank: dict[int, int]) -> list[Chunk]:
    """Cut the optimizer's sharded groups into chunks. backward_rank maps id(param) to its position
    in backward order (gradients that arrive first come first), so chunks complete as early as
    possible; the same on every rank, since every rank builds it from the same model."""
    chunks = []
    for gi, group in enumerate(optimizer.param_groups):
        if not (isinstance(optimizer, ShardableOptimizer) and optimizer.is_sharded(group)):
            continue
        by_shape: dict[tuple, list] = defaultdict(list)
        for p in sorted(group["params"], key=lambda p: backward_rank[id(p)]):
            by_shape[tuple(p.shape)].append(p)
        for shape, params in by_shape.items():
            for start in range(0, len(params), world_size):
                slots = params[start : start + world_size]
                chunks.append(Chunk(gi, shape, slots + [None] * (world_size - len(slots))))
    # launch (and step) order: by when the chunk's last gradient arrives
    chunks.sort(key=lambda c: max(backward_rank[id(p)] for p in c.params if p is not None))
    return chunks


def batches_of(chunks: list[Chunk]) -> list[list[int]]:
    """The chunk indices of each (param group, shape), every batch in chunk order; batches ordered by their
    last chunk (the one whose gradients arrive last)."""
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for i, chunk in enumerate(chunks):
        by_key[(chunk.group_index, chunk.shape)].append(i)
    return sorted(by_key.values(), key=lambda batch: batch[-1])


@torch.no_grad()
def sharded_step(optimizer, sync, rank: int, world_size: int) -> int:
    """One optimizer step with sharded orthogonalization; returns how many matrices this rank
    orthogonalized (its share)."""
    pending: list[tuple[Chunk, Tensor, object]] = []
    done = 0
    for batch in batches_of(sync.chunks):
        chunks = [sync.chunks[i] for i in batch]
        group = optimizer.param_groups[chunks[0].group_index]
        grads = [sync.wait_chunk(i) for i in batch]
        wire = optimizer.gather_dtype(group, grads[0])  # the same on every rank, owner or padding
        mine = [k for k, chunk in enumerate(chunks) if chunk.params[rank] is not None]
        updates = optimizer.updates(group, [chunks[k].params[rank] for k in mine], [grads[k] for k in mine]) \
            if mine else []
        update_of = dict(zip(mine, updates))
        done += len(mine)
        waiting = len(pending)  # the previous batch's gathers, finished while this batch was computed
        for k, chunk in enumerate(chunks):
            if k in update_of:
                update = update_of[k].to(wire).contiguous()
            else:  # padding slot: contribute zeros to the gather
                update = torch.zeros(chunk.shape, device=grads[k].device, dtype=wire)
            gathered = torch.empty(world_size * update.numel(), device=update.device, dtype=update.dtype)
            handle = collectives.all_gather(gathered, update.view(-1))
            pending.append((chunk, gathered.view(world_size, *chunk.shape), handle))
        for _ in range(waiting):
            _apply(optimizer, *pending.pop(0))
    for item in pending:
        _apply(optimizer, *item)
    sync.wait_replicated()
    optimizer.step_replicated()
    return done


def _apply(optimizer, chunk: Chunk, gathered: Tensor, handle) -> None:
    handle.wait()
    group = optimizer.param_groups[chunk.group_index]
    for p, update in zip(chunk.params, gathered):
        if p is not None:
            optimizer.apply_update(group, p, update)


@torch.no_grad()
def gather_state(optimizer, chunks: list[Chunk]) -> None:
    """Copy every sharded matrix's optimizer state from its owner to all ranks (before saving)."""
    for chunk in chunks:
        group = optimizer.param_groups[chunk.group_index]
        for owner, p in enumerate(chunk.params):
            if p is None:
                continue
            state = optimizer.state[p]
            for key, zeros in optimizer.sharded_state(group, p).items():
                if key not in state:  # a non-owner, or an owner before its first step
                    state[key] = zeros
                dist.broadcast(state[key], src=owner)


def drop_foreign_state(optimizer, chunks: list[Chunk], rank: int) -> None:
    """After loading a full checkpoint, keep only the state of the matrices this rank owns."""
    for chunk in chunks:
        for owner, p in enumerate(chunk.params):
            if p is not None and owner != rank:
                optimizer.state.pop(p, None)
