"""The output layer and its loss: head, logit soft cap and cross-entropy, a bounded chunk of tokens
at a time.

    z = x Wᵀ + b                                logits of each token (computed in >= fp32 after the matmul)
    y = cap(z)      tanh:       c · tanh(z / c)              (the speedrun records)
                    algebraic:  c · z / sqrt(z² + c²)        (the optimization benchmark, track 3)
    loss = mean over tokens t of  logsumexp(y_t) − y_t[target_t]

Full-vocabulary fp32 logits take 4·V bytes per token (V = 50,304: 200 kB per token, 52 GB for the
262,144 tokens of one speedrun validation row), and a plain autograd loss keeps several such tensors.
Here the loss never holds the logits of more than `chunk` tokens at once, in forward or backward:

- up to `chunk` tokens: the plain computation (full logits, autograd), exactly as before;
- more tokens, no gradient needed (validation): the chunks' loss sums, one chunk at a time;
- more tokens, training: `ChunkedCrossEntropy`, which computes each chunk's gradient as soon as its
  loss is known (so no logits are recomputed in backward, and the matmuls are those of a plain
  backward: one for the logits, two for the gradients of x and W), keeps only dL/dx (tokens × width)
  and dL/dW, dL/db, and lets backward scale them by the incoming gradient:

      dL/dz_t = (softmax(y_t) − onehot(target_t)) · cap'(z_t) / N,   with cap' from y alone:
      tanh: 1 − (y/c)²,   algebraic: (1 − (y/c)²)^{3/2}
      dL/dx = dL/dz · W,   dL/dW = dL/dzᵀ · x,   dL/db = Σ_t dL/dz_t

The returned value is always the mean loss over tokens (what the trainer logs and averages).
Under bf16 autocast the matmuls run in bf16 and the cap, softmax and loss in fp32, as in the plain
computation; dL/dW and dL/db are summed over chunks in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import fp8
from model.config import SOFTCAP_KINDS


def softcap(z: Tensor, cap: float, kind: str = "tanh") -> Tensor:
    """Bound the logits to (−cap, cap); cap <= 0 leaves them as they are."""
    if cap <= 0:
        return z
    if kind == "tanh":
        return cap * torch.tanh(z / cap)
    if kind == "algebraic":
        return cap * z * torch.rsqrt(z.square() + cap * cap)
    raise ValueError(f"unknown soft cap {kind!r}; choose from {', '.join(SOFTCAP_KINDS)}")


def softcap_slope(y: Tensor, cap: float, kind: str) -> Tensor | None:
    """d cap(z) / dz written in terms of y = cap(z) (None: the identity, slope 1)."""
    if cap <= 0:
        return None
    s = (y / cap).square_().neg_().add_(1)  # 1 − (y/c)²: tanh's slope; c²/(z² + c²) for the algebraic cap
    return s if kind == "tanh" else s.pow_(1.5)


def capped_logits(x: Tensor, weight: Tensor, bias: Tensor | None, cap: float, kind: str) -> Tensor:
    """(..., width) -> (..., V) capped logits in >= fp32."""
    z = F.linear(x, weight, bias)
    z = z.to(torch.promote_types(z.dtype, torch.float32))  # softcap and loss in >= fp32
    return softcap(z, cap, kind)


def chunk_loss(x: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, cap: float, kind: str,
               grad_scale: float | None = None) -> tuple[Tensor, Tensor | None]:
    """Summed cross-entropy of the tokens of one chunk (x: (n, width), targets: (n,)); with grad_scale,
    also grad_scale · d(sum)/dz, the gradient of the matmul's output, in the matmul's dtype."""
    return logits_loss(F.linear(x, weight, bias), targets, cap, kind, grad_scale)


def logits_loss(z: Tensor, targets: Tensor, cap: float, kind: str,
                grad_scale: float | None = None) -> tuple[Tensor, Tensor | None]:
    """chunk_loss from the chunk's logits z = x Wᵀ + b."""
    y = softcap(z.to(torch.promote_types(z.dtype, torch.float32)), cap, kind)
    lse = torch.logsumexp(y, dim=-1)
    loss = (lse - y.gather(-1, targets[:, None]).squeeze(-1)).sum()
    if grad_scale is None:
        return loss, None
    slope = softcap_slope(y, cap, kind)
    g = y.sub_(lse[:, None]).exp_()  # softmax(y), in y's memory
    g[torch.arange(len(targets), device=g.device), targets] -= 1
    if slope is not None:
        g.mul_(slope)
    return loss, g.mul_(grad_scale).to(z.dtype)


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of N tokens (x: (N, width), targets: (N,)) through the head and soft cap,
    `chunk` tokens at a time; the gradients are computed in forward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, cap: float, kind: str,
                chunk: int, use_fp8: bool = False) -> Tensor:
        n = len(targets)
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if bias is not None else None
        total = torch.zeros((), dtype=acc, device=x.device)
        w8 = fp8.quantize(weight, fp8.W_SCALE) if use_fp8 else None
        w8_cm = fp8.column_major(w8) if use_fp8 else None  # once per step, not per chunk
        for start in range(0, n, chunk):
            xc, tc = x[start : start + chunk], targets[start : start + chunk]
            if use_fp8:  # the matmuls in float8 (model/fp8.py), the rest as below
                x8 = fp8.quantize(xc, fp8.X_SCALE)
                z = fp8.forward(x8, w8) + (bias if bias is not None else 0)
                loss, g = logits_loss(z, tc, cap, kind, grad_scale=1.0 / n)
                grad_x[start : start + chunk], gw = fp8.backward(g, x8, w8_cm)
                grad_w += gw
            else:
                loss, g = chunk_loss(xc, weight, bias, tc, cap, kind, grad_scale=1.0 / n)
                grad_x[start : start + chunk] = g @ weight  # (under autocast: bf16 matmuls, as in a plain backward)
                grad_w += g.mT @ xc
            total += loss
            if grad_b is not None:
                grad_b += g.sum(dim=0)
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype), grad_b)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        scaled = [g * grad_loss if g is not None else None for g in (grad_x, grad_w, grad_b)]
        return *scaled, None, None, None, None, None


def cross_entropy(x: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, cap: float, kind: str,
                  chunk: int, accuracy: bool = False, use_fp8: bool = False) -> Tensor:
    """Mean cross-entropy of the capped logits of x (..., width) against targets (...), holding the
    logits of at most `chunk` tokens at a time (see the module docstring for the three paths). With
    `accuracy` (validation: no gradients), the tensor [mean loss, top-1 accuracy]: the fraction of
    tokens whose largest logit is the target's (the cap is monotonic: the same as before the cap).
    use_fp8: the training path's matmuls in float8 (model/fp8.py); validation stays in bf16."""
    n = targets.numel()
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if use_fp8 and needs_grad and not accuracy:
        return ChunkedCrossEntropy.apply(x.reshape(n, x.size(-1)), weight, bias, targets.reshape(n), cap, kind,
                                         chunk, True)
    if n <= chunk:  # the plain computation
        logits = capped_logits(x, weight, bias, cap, kind).view(-1, weight.size(0))
        loss = F.cross_entropy(logits, targets.reshape(-1))
        return torch.stack([loss, _correct(logits, targets.reshape(-1)) / n]) if accuracy else loss
    x, targets = x.reshape(n, x.size(-1)), targets.reshape(n)
    if needs_grad:
        if accuracy:
            raise ValueError("accuracy is a validation figure: compute it without gradients")
        return ChunkedCrossEntropy.apply(x, weight, bias, targets, cap, kind, chunk)
    total = correct = 0
    for xc, tc in zip(x.split(chunk), targets.split(chunk)):
        if accuracy:
            logits = capped_logits(xc, weight, bias, cap, kind)
            total = total + F.cross_entropy(logits, tc, reduction="sum")
            correct = correct + _correct(logits, tc)
        else:
            total = total + chunk_loss(xc, weight, bias, tc, cap, kind)[0]
    return torch.stack([total / n, correct / n]) if accuracy else total / n


def _correct(logits: Tensor, targets: Tensor) -> Tensor:
    """How many rows of `logits` have their largest value at the target (as the logits' dtype)."""
    return (logits.argmax(dim=-1) == targets).sum().to(logits.dtype)


class Head(nn.Linear):
    """The output layer (untied, zero-initialized, with an optional bias) with its soft cap and loss.

    head(x) -> capped logits (..., V);   head(x, targets) -> mean cross-entropy (chunked as above);
    head(x, targets, accuracy=True) -> [mean cross-entropy, top-1 accuracy] (validation).
    A module of its own so that the trainer can compile it together with the loss."""

    def __init__(self, width: int, vocab: int, *, bias: bool = False, cap: float = 0.0, cap_kind: str = "tanh",
                 chunk: int = 8192, use_fp8: bool = False):
        super().__init__(width, vocab, bias=bias)
        self.cap, self.cap_kind, self.chunk, self.use_fp8 = cap, cap_kind, chunk, use_fp8
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def param_roles(self) -> dict[str, str]:
        return {"weight": "head", "bias": "scalar"} if self.bias is not None else {"weight": "head"}

    def forward(self, x: Tensor, targets: Tensor | None = None, accuracy: bool = False) -> Tensor:
        if targets is None:
            return capped_logits(x, self.weight, self.bias, self.cap, self.cap_kind)
        return cross_entropy(x, self.weight, self.bias, targets, self.cap, self.cap_kind, self.chunk, accuracy,
                             self.use_fp8)
