"""Gradient reduction across ranks that starts while backward is still running.

A hook on every parameter (`register_post_accumulate_grad_hook`) counts the gradients of its
bucket as they arrive; when a bucket is complete, its reduction starts asynchronously and backward
goes on. Two kinds of buckets:

    chunks   `world_size` same-shape matrices of a sharded optimizer group (optimizers/sharded.py):
             a reduce-scatter delivers to each rank the averaged gradient of the one matrix it owns.
    buckets  everything else, packed in backward order up to `bucket_bytes`: an all-reduce gives
             every rank the averaged gradients.

With gradient accumulation only the last micro-batch's backward reduces (`sync_this_backward`);
earlier ones accumulate into p.grad locally. The optimizer waits for each chunk only when it is
about to orthogonalize it (`wait_chunk`) and for the buckets when it steps the rest
(`wait_replicated`). With overlap=False the same reductions start only after backward (for
measuring what the overlap buys).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from optimizers.sharded import Chunk


@dataclass
class _Bucket:
    params: list
    chunk: Chunk | None = None  # set for reduce-scatter buckets
    arrived: int = 0
    handle: object = None
    buffer: Tensor | None = None
    launched: bool = False


class GradSync:
    def __init__(self, params: list, chunks: list[Chunk], rank: int, world_size: int,
                 bucket_bytes: int = 25 * 2**20, overlap: bool = True, record: bool = False):
        """params: all trainable parameters, in backward order (first gradient first)."""
        self.rank, self.world_size, self.overlap = rank, world_size, overlap
        self.chunks = chunks
        self.events: list[tuple] | None = [] if record else None  # ("grad", i) / ("launch", kind, b), for tests
        sharded = {id(p) for c in chunks for p in c.params if p is not None}
        self.chunk_buckets = [_Bucket([p for p in c.params if p is not None], chunk=c) for c in chunks]
        self.buckets = self._pack([p for p in params if id(p) not in sharded], bucket_bytes)
        self._bucket_of = {id(p): b for b in self.chunk_buckets + self.buckets for p in b.params}
        self._index = {id(p): i for i, p in enumerate(params)}
        self.sync_this_backward = True
        self.comm_wait_s = 0.0  # time spent blocked in waits (what the overlap did not hide)
        if overlap:
            for p in params:
                p.register_post_accumulate_grad_hook(self._on_grad)

    @staticmethod
    def _pack(params: list, bucket_bytes: int) -> list[_Bucket]:
        buckets, current, size = [], [], 0
        for p in params:
            current.append(p)
            size += p.numel() * p.element_size()
            if size >= bucket_bytes:
                buckets.append(_Bucket(current))
                current, size = [], 0
        if current:
            buckets.append(_Bucket(current))
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
        if self.events is not None:
            kind = "reduce_scatter" if bucket.chunk else "all_reduce"
            self.events.append(("launch", kind, id(bucket)))
        if bucket.chunk is not None:
            self._launch_chunk(bucket)
        else:
            grads = [self._grad(p) for p in bucket.params]
            bucket.buffer = torch.cat([g.reshape(-1) for g in grads])
            bucket.handle = dist.all_reduce(bucket.buffer, op=dist.ReduceOp.SUM, async_op=True)

    def _launch_chunk(self, bucket: _Bucket) -> None:
        chunk = bucket.chunk
        ref = next(p for p in chunk.params if p is not None)
        slots = [self._grad(p) if p is not None else torch.zeros_like(ref) for p in chunk.params]
        stacked = torch.cat([g.reshape(-1) for g in slots])  # rank r's slot is the r-th flat segment
        for p in chunk.params:  # the local, unreduced gradients are no longer needed
            if p is not None:
                p.grad = None
        bucket.buffer = torch.empty(ref.numel(), dtype=ref.dtype, device=ref.device)
        bucket.handle = dist.reduce_scatter_tensor(bucket.buffer, stacked, op=dist.ReduceOp.SUM, async_op=True)

    @staticmethod
    def _grad(p: Tensor) -> Tensor:
        return p.grad if p.grad is not None else torch.zeros_like(p)  # unused params count as zero

    def finish_backward(self) -> None:
        """Start whatever has not started (everything, when overlap is off)."""
        for bucket in self.chunk_buckets + self.buckets:
            if not bucket.launched:
                self._launch(bucket)

    # ------------------------------------------------------------------------------------------
    # during the optimizer step

    def _wait(self, bucket: _Bucket) -> None:
        t0 = time.perf_counter()
        bucket.handle.wait()
        self.comm_wait_s += time.perf_counter() - t0
        bucket.buffer /= self.world_size

    def wait_chunk(self, i: int) -> Tensor:
        """The averaged gradient of this rank's matrix in chunk i (zeros for a padding slot)."""
        bucket = self.chunk_buckets[i]
        self._wait(bucket)
        return bucket.buffer.view(bucket.chunk.shape)

    def wait_replicated(self) -> None:
        """Wait for every all-reduce bucket and write the averaged gradients back to p.grad."""
        for bucket in self.buckets:
            self._wait(bucket)
            offset = 0
            for p in bucket.params:
                n = p.numel()
                p.grad = bucket.buffer[offset : offset + n].view_as(p)
                offset += n

    def reset(self) -> None:
        """Before the next step's backward."""
        for bucket in self.chunk_buckets + self.buckets:
            bucket.arrived, bucket.handle, bucket.buffer = 0, None, None
            bucket.launched = False
        if self.events is not None:
            self.events.clear()
