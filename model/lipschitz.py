"""An upper bound on the Lipschitz constant of the GPT, from the spectral norms of its matrices.

What is bounded: the map f: x0 -> logits from the input embedding x0 (B, T, width: the rows of the
embedding table the tokens look up, what the first block sees) to the logits of the real vocabulary (after
the soft cap, if any; the rows the head is padded with for speed name no token and are left out), for a
fixed attention mask (document masks and windows depend on the token ids, not on x0).

The norm: a sequence X = (x_1 .. x_T) of vectors is measured by ‖X‖ = max_t RMS(x_t), RMS(x) = ‖x‖₂/√dim
(per token the RMS norm, over the tokens the largest: the norms of Newhouse et al.; over the logits the RMS
runs over the real vocabulary, model.vocab_size of them). The result L satisfies

    ‖f(X) − f(Y)‖ <= L·‖X − Y‖   for all X, Y whose rows have RMS <= R,

R = the largest RMS of a row of the embedding table (its real-vocabulary rows): every token sequence lies
in this domain. Attention is not Lipschitz on all of R^{T×d} (its Jacobian grows with its inputs), so the
bound holds on this ball only; the ball is convex, so bounding the Jacobian at every point of it bounds f.

The proof, in Euclidean norms per token (an RMS->RMS factor √(d/V) at the end). A = √width·R bounds ‖x_t‖₂
at the first block; along the way A bounds ‖x_t‖₂ at each branch's input, and every factor is a bound on
the branch's Jacobian (∞ over tokens, ℓ2 per token) at inputs within A:

  linear map W, token by token          σ_max(W)                  (growth ‖Wx‖ <= σ_max·‖x‖)
  gelu_scaled                           1                         (|φ'| <= 1, φ(0) = 0)
  MLP  x -> P φ(F x)                    σ(P)·σ(F)                 (growth the same)
  attention head h (q, k, v = W_q x, W_k x, W_v x per token, each of its D rows of the merged matrix;
      rotary embeddings rotate q_t and k_s, an orthogonal map that changes no norm; scores
      c·q_t·k_s over the keys s the mask allows, c the logit scale (its size |c| enters the bound: a
      negative c flips the pattern, not the sensitivity); p_t = softmax; y_t = Σ_s p_ts v_s):
      dy_t = Σ_s p_ts dv_s + Σ_s p_ts (ds_s − Σ_r p_tr ds_r)(v_s − v̄_t), so by Cauchy-Schwarz
      ‖dy_t‖ <= max_s ‖dv_s‖ + max_s |ds_s| · max_s ‖v_s‖, with |ds_s| <= c (‖dq_t‖‖k_s‖ + ‖q_t‖‖dk_s‖):
                                        L_h = σ_v,h (1 + 2 |c| σ_q,h σ_k,h A²)   (growth σ_v,h)
  attention  x -> γ·O concat_h(y_h)     γ·σ(O)·sqrt(Σ_h L_h²)     (growth γ·σ(O)·sqrt(Σ_h σ_v,h²));
      the heads may attend to different tokens, so their changes add up in squares: with one matrix
      for all heads sqrt(Σ_h σ²) can be √heads times σ_max of the whole V (a bound on the whole V only
      would be too small); γ = model.attn_out_scale
  residual  x + f(x)                    1 + L_f                   (growth 1 + G_f)
            (1 − a)x + a f(x)           |1 − a| + a·L_f           (growth |1 − a| + a·G_f)
  head z = W x, then the soft cap      σ(W_head)·1               (tanh and algebraic caps have slope <= 1)

L = Π over the branches, times σ(W_head), times √(width / vocab) for RMS in and out, W_head and vocab the real
vocabulary's rows (over the padded rows, with their own σ, the figure would be √(padded / vocab) times
smaller for the same real logits: an under-count). σ_max comes from
an SVD in float64 (exact, unlike a power iteration, which approaches σ_max from below); rounding (rotary
tables in float32, the model's own arithmetic) is not part of the bound.

What the bound assumes (`uncovered` lists every departure, and `lipschitz_bound` refuses them): no RMSNorm
anywhere (model.layer_norm = false, model.qk_norm = false: a norm's Jacobian grows without bound near 0),
the 1-Lipschitz activation (model.activation = "gelu_scaled"; ReLU² is not Lipschitz), no biases, no
value embeddings, no U-net skips, no x0 mix, no FP8 head (rounding to float8 is not continuous). It covers
either residual, any attention scale, any attn_out_scale, rotary embeddings, document masks, sliding windows,
blocks without attention and both soft caps. On the width: the thesis's 1/head_dim scale keeps c·σ_q·σ_k·A²
free of the width only in per-head units, i.e. when σ_q,h and σ_k,h are measured as RMS→RMS norms of each
head's (head_dim × width) block (σ·√(width/head_dim)) and A as an RMS; in the raw spectral norms used here
the term carries width/head_dim, and a wider model at the same per-head norms has the same bound.

`reference_formula` is the recipe of the paper's code (phess2/lipschitz-transformers, utils.py), for
comparison: it tracks activation norms from 1, uses whole-matrix RMS→RMS norms of q, k, v (not per head),
multiplies the whole attention term by its softmax_scale (the logits' factor beyond 1/head_dim, which its
RMS units absorb: ours is attn_scale · head_dim, 1 for the thesis's 1/head_dim) and divides the MLP's by
GELU's largest slope (1.1289). Those are its choices, not ours; the two are reported side by side.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor


class LipschitzNotCovered(ValueError):
    """The model has a part the bound's proof does not cover; the message names the config keys."""


def uncovered(cfg) -> list[str]:
    """What about a ModelConfig the bound does not cover, one entry per config key (empty: covered)."""
    checks = [
        (cfg.layer_norm, "model.layer_norm = true (RMSNorm is not Lipschitz near 0): set it to false"),
        (cfg.qk_norm, "model.qk_norm = true (RMSNorm of queries and keys): set it to false"),
        (cfg.activation != "gelu_scaled", f"model.activation = {cfg.activation!r} is not 1-Lipschitz: use "
                                          f"'gelu_scaled'"),
        (cfg.bias, "model.bias = true (biases are not part of the proof)"),
        (cfg.value_embeds > 0, "model.value_embeds > 0 (value embeddings bypass x0)"),
        (cfg.skip_connections, "model.skip_connections = true (U-net skips are not part of the proof)"),
        (cfg.x0_mix, "model.x0_mix = true (the x0 mix is not part of the proof)"),
        (cfg.fp8_head, "model.fp8_head = true (float8 rounding is not continuous)"),
    ]
    return [reason for bad, reason in checks if bad]


def check_covered(cfg) -> None:
    reasons = uncovered(cfg)
    if reasons:
        raise LipschitzNotCovered("the Lipschitz bound (model/lipschitz.py) does not cover this model: "
                                  + "; ".join(reasons))


@dataclass(frozen=True)
class LipschitzBound:
    bound: float  # L, RMS -> RMS, max over tokens, on inputs with rows of RMS <= radius
    radius: float  # R: the largest RMS of an embedding row
    sigmas: dict  # σ_max of every matrix, by compact name ("b0.q", "b0.o", "b1.fc", "head", ...)
    reference: float | None = None  # the paper's code's estimate (reference_formula), for comparison

    @property
    def log10(self) -> float | None:
        return math.log10(self.bound) if self.bound > 0 else None

    def metrics(self) -> dict:
        """The metrics row's entries: lipschitz_bound, log10_lipschitz_bound, embed_rms and sigma.<name>."""
        return {"lipschitz_bound": self.bound, "log10_lipschitz_bound": self.log10, "embed_rms": self.radius,
                "lipschitz_reference": self.reference, **{f"sigma.{k}": v for k, v in self.sigmas.items()}}


def sigma_max(W: Tensor) -> Tensor:
    """The spectral norm of each matrix of W (..., m, n), exactly (SVD in float64)."""
    return torch.linalg.matrix_norm(W.detach().double(), ord=2)


def attention_bound(attn, radius: float) -> tuple[float, float, dict]:
    """(Jacobian bound, growth, σ_max of q, k, v, o) of a CausalSelfAttention for inputs of Euclidean norm
    <= radius per token (see the module docstring)."""
    qkv = attn.qkv_w.detach()
    per_head = sigma_max(qkv.view(3, attn.heads, attn.head_dim, qkv.size(-1)))  # (3, heads)
    sq, sk, sv = per_head
    heads = sv * (1 + 2 * abs(attn.scale) * sq * sk * radius**2)
    s_o = sigma_max(attn.proj.weight).item()
    lip = attn.out_scale * s_o * heads.square().sum().sqrt().item()
    growth = attn.out_scale * s_o * sv.square().sum().sqrt().item()
    whole = sigma_max(qkv).tolist()
    return lip, growth, {"q": whole[0], "k": whole[1], "v": whole[2], "o": s_o}


def mlp_bound(mlp) -> tuple[float, float, dict]:
    """(Jacobian bound, growth, σ_max of fc and proj) of the MLP with the 1-Lipschitz activation."""
    s_fc, s_proj = sigma_max(mlp.fc.weight).item(), sigma_max(mlp.proj.weight).item()
    return s_proj * s_fc, s_proj * s_fc, {"fc": s_fc, "proj": s_proj}


def residual_factor(a: float | None, branch: float) -> float:
    """The bound of x + f(x) (a None) or (1 − a)·x + a·f(x), from the bound of f."""
    return 1 + branch if a is None else abs(1 - a) + a * branch


@contextlib.contextmanager
def _one_thread(device: torch.device):
    """On CPU, LAPACK's threads thrash on these small SVDs when the cores are busy (measured here: 20 s
    for the smoke model's bound with 2 threads on a loaded 2-core machine, 0.1 s with one)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def lipschitz_bound(model) -> LipschitzBound:
    """The bound of the module docstring for a GPT (model/gpt.py); LipschitzNotCovered for a model it
    does not cover."""
    check_covered(model.cfg)
    with _one_thread(model.embed.weight.device):
        return _bound(model)


def _bound(model) -> LipschitzBound:
    cfg = model.cfg
    rows = model.embed.weight[: cfg.vocab_size].detach().double()
    radius = rows.square().mean(dim=-1).sqrt().max().item()
    reach = math.sqrt(cfg.width) * radius  # Euclidean bound per token at the current branch's input
    lip, sigmas = 1.0, {}
    for i, block in enumerate(model.blocks):
        parts = [("attn", attention_bound(block.attn, reach))] if block.attn is not None else []
        for _, (branch, growth, s) in parts + [("mlp", mlp_bound(block.mlp))]:
            lip *= residual_factor(block.branch_weight, branch)
            reach *= residual_factor(block.branch_weight, growth)
            sigmas.update({f"b{i}.{k}": v for k, v in s.items()})
    sigmas["head"] = sigma_max(model.head.weight[: cfg.vocab_size]).item()  # the real vocabulary's rows
    lip *= sigmas["head"] * math.sqrt(cfg.width / cfg.vocab_size)
    return LipschitzBound(lip, radius, sigmas, reference_formula(model))


def _rms_norm(W: Tensor) -> float:
    """The RMS→RMS operator norm √(d_in/d_out)·σ_max of a matrix (the units of the paper's weight norms)."""
    return math.sqrt(W.size(-1) / W.size(-2)) * sigma_max(W).item()


def reference_formula(model) -> float:
    """The paper's code's Lipschitz estimate (module docstring), in its units: RMS→RMS norms of whole
    matrices, the embedding's and unembedding's norms at the ends, activation norms tracked from 1."""
    cfg = model.cfg
    alpha = 1 / (2 * cfg.depth)
    attn = model.blocks[0].attn
    scale = abs(attn.scale) * cfg.head_dim if attn is not None else 0.0  # its softmax_scale: beyond 1/head_dim
    table = model.embed.weight.detach()[: cfg.vocab_size].double()
    act, lip = 1.0, table.square().mean(-1).sqrt().max().item()  # its Embed norm: the largest token's RMS
    for block in model.blocks:
        mlp = _rms_norm(block.mlp.proj.weight.detach()) * _rms_norm(block.mlp.fc.weight.detach()) / 1.1289
        if block.attn is not None:
            q, k, v = (_rms_norm(w) for w in block.attn.qkv_w.detach())
            o = _rms_norm(block.attn.proj.weight.detach())
            att = block.attn.out_scale * o * (v + 2 * v * act**2 * q * k) * scale
            act = (1 - alpha) * act + alpha * block.attn.out_scale * o * v * act
            lip = (1 - alpha) * lip + alpha * lip * att
        act = (1 - alpha) * act + alpha * mlp * act
        lip = (1 - alpha) * lip + alpha * lip * mlp
    return lip * _rms_norm(model.head.weight.detach()[: cfg.vocab_size])
