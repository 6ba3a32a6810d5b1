"""Gradient reduction across ranks that starts while backward is still running.

Gradients live in persistent flat buffers. At construction every parameter's `p.grad` becomes a
view into its bucket's buffer, so backward adds into the buffer in place (torch accumulates into an
existing p.grad), each reduction runs on the buffer itself without a copy, and `p.grad` is never
rebound: an optimizer that keeps state in p.grad (Scion's light variant) sees the same tensor
before and after the reduction. The trainer zeroes the gradients after each step (`zero_grads`)
instead of dropping them.

A hook on every parameter (`register_post_accumulate_grad_hook`) counts the gradients of its
bucket as they arrive; when a bucket is complete, its reduction starts asynchronously and backward
goes on. Two kinds of buckets:

    chunks   `world_size` same-shape matrices of a sharded optimizer group (distributed/sharding.py):
             the buffer has one slot per rank (slot r: the matrix rank r owns; a padding slot stays
             zero), and a reduce-scatter delivers to each rank the averaged gradient of its matrix
             into a persistent output buffer.
    buckets  everything else, packed in backward order up to `bucket_bytes`, one dtype per bucket:
             an all-reduce averages them in place.

Averages use the backend's AVG operation where it has one (NCCL), else a SUM and a division
(distributed/collectives.py). With gradient accumulation only the last micro-batch's backward
reduces (`sync_this_backward`); earlier ones accumulate locally. The optimizer waits for each chunk
only when it is about to orthogonalize it (`wait_chunk`) and for the buckets when it steps the rest
(`wait_replicated`). With overlap=False the same reductions start only after backward (for
measuring what the overlap buys).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from distributed import collectives
from distributed.sharding import Chunk


@dataclass
class _Bucket:
    params: list  # the parameters whose gradients are views into `buffer`
    buffer: Tensor  # the flat gradients (a chunk: world_size slots of the chunk's shape)
    views: list  # p.grad of each param, a view into `buffer`
    chunk: Chunk | None = None  # set for reduce-scatter buckets
    output: Tensor | None = None  # a chunk's reduced slot: this rank's averaged gradient
    arrived: int = 0
    handle: object = None
    launched: bool = False

    def attach(self) -> None:
        """Make each p.grad its view again (keeping a value that was put in its place)."""
        for p, view in zip(self.params, self.views):
            if p.grad is not view:
                if p.grad is not None:
                    view.copy_(p.grad)
                else:
                    view.zero_()
                p.grad = view


def _flat_bucket(params: list, chunk: Chunk | None = None) -> _Bucket:
    """One flat zero buffer for `params` (in order; a chunk: one slot per rank, padding included),
    and each p.grad set to its view into it."""
    ref = params[0]
    slots = chunk.params if chunk is not None else params
    buffer = torch.zeros(sum(ref.numel() if p is None else p.numel() for p in slots), dtype=ref.dtype,
                         device=ref.device)
    views, offset = [], 0
    for p in slots:
        n = ref.numel() if p is None else p.numel()
        if p is not None:
            views.append(buffer[offset:offset + n].view_as(p))
        offset += n
    bucket = _Bucket(list(params), buffer, views, chunk)
    if chunk is not None:
        bucket.output = torch.empty(ref.numel(), dtype=ref.dtype, device=ref.device)
    bucket.attach()
    return bucket


class GradSync:
    def __init__(self, params: list, chunks: list[Chunk], rank: int, world_size: int,
                 bucket_bytes: int = 25 * 2**20, overlap: bool = True, record: bool = False):
        """params: all trainable parameters, in backward order (first gradient first)."""
        self.rank, self.world_size, self.overlap = rank, world_size, overlap
        self.chunks = chunks
        self.events: list[tuple] | None = [] if record else None  # ("grad", i) / ("launch", kind, b), for tests
        sharded = {id(p) for c in chunks for p in c.params if p is not None}
        self.chunk_buckets = [_flat_bucket([p for p in c.params if p is not None], chunk=c) for c in chunks]
        self.buckets = [_flat_bucket(group) for group in
                        self._pack([p for p in params if id(p) not in sharded], bucket_bytes)]
        self._bucket_of = {id(p): b for b in self.chunk_buckets + self.buckets for p in b.params}
        self._index = {id(p): i for i, p in enumerate(params)}
        self.divide = collectives.needs_division()
        self.sync_this_backward = True
        if overlap:
            for p in params:
                p.register_post_accumulate_grad_hook(self._on_grad)

    @staticmethod
    def _pack(params: list, bucket_bytes: int) -> list[list]:
        """Consecutive params up to `bucket_bytes` per bucket; a new bucket where the dtype changes."""
        buckets, current, size = [], [], 0
        for p in params:
            if current and (p.dtype != current[0].dtype or size >= bucket_bytes):
                buckets.append(current)
                current, size = [], 0
            current.append(p)
            size += p.numel() * p.element_size()
        if current:
            buckets.append(current)
        return buckets

    # ------------------------------------------------------------------------------------------
    # during backward

    def _on_grad(self, p: Tensor) -> None:
        if not self.sync_this_backward:
            return
        if self.events is not None:
            self.events.append(("grad", self._index[id(p)]))
        bucket = self._bucket_of[id(p)]
        bucket.arrived += 1
        if bucket.arrived == len(bucket.params):
            self._launch(bucket)

    def _launch(self, bucket: _Bucket) -> None:
        bucket.launched = True
        bucket.attach()  # a gradient that someone rebound goes back into the buffer first
        if self.events is not None:
            kind = "reduce_scatter" if bucket.chunk else "all_reduce"
            self.events.append(("launch", kind, id(bucket)))
        if bucket.chunk is not None:
            bucket.handle = collectives.reduce_scatter_average(bucket.output, bucket.buffer)
        else:
            bucket.handle = collectives.all_reduce_average(bucket.buffer)

    def finish_backward(self) -> None:
        """Start whatever has not started (everything, when overlap is off)."""
        for bucket in self.chunk_buckets + self.buckets:
            if not bucket.launched:
                self._launch(bucket)

    # ------------------------------------------------------------------------------------------
    # during the optimizer step

    def _wait(self, bucket: _Bucket, result: Tensor) -> None:
        bucket.handle.wait()
        if self.divide:
            result /= self.world_size

    def wait_chunk(self, i: int) -> Tensor:
        """The averaged gradient of this rank's matrix in chunk i (zeros for a padding slot)."""
        bucket = self.chunk_buckets[i]
        self._wait(bucket, bucket.output)
        return bucket.output.view(bucket.chunk.shape)

    def wait_replicated(self) -> None:
        """Wait for every all-reduce bucket: each p.grad then holds the averaged gradient."""
        for bucket in self.buckets:
            self._wait(bucket, bucket.buffer)

    def zero_grads(self, params: list) -> None:
        """After the step: zero the gradients of `params` in place (their buffers stay)."""
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def reset(self) -> None:
        """Before the next step's backward."""
        for bucket in self.chunk_buckets + self.buckets:
            bucket.arrived, bucket.handle = 0, None
            bucket.launched = False
        if self.events is not None:
            self.events.clear()
