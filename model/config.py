"""[model]: the GPT's configuration (model/gpt.py builds one from it), every switch with its choices,
and the check of what cannot run.

The variants are switches, each on its own (model/gpt.py's docstring says what each does):

    speedrun records   value_embeds, skip_connections, x0_mix, window (+ window_pattern, window_blocks),
                       document masking, tanh soft cap, fp8_head, embed_bf16; no biases, norms without gains
    track 3            bias, norm_gains, doc_masking = false, window = 0, softcap_kind = "algebraic",
                       hidden_init = "normal", embed_bf16
    Lipschitz          layer_norm = false, qk_norm = false, activation = "gelu_scaled", attn_scale_rule = "inv_d",
                       attn_out_scale, logit_softcap = 0, residual = "convex" (model/lipschitz.py)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.config_io import check as _check
from common.config_io import choice as _choice

ATTENTION_KINDS = ("auto", "flex", "sdpa")  # auto: flex on CUDA, sdpa elsewhere
WINDOW_KINDS = ("L", "S")  # per block in model.window_pattern: 'L' attends over the window, 'S' over half of it
DTYPES = {"float32": torch.float32, "float64": torch.float64}  # parameter dtypes (float64: numerical checks)
RESIDUALS = ("add", "convex")  # model.residual: x + f(x) | (1 − a)·x + a·f(x), a = residual_scale / (2 depth)
ATTN_SCALE_RULES = ("inv_sqrt_d", "inv_d")  # model.attn_scale = 0: logits scaled by 1/√head_dim | 1/head_dim
HIDDEN_INITS = ("uniform", "normal", "orthogonal")  # q/k/v, MLP in: uniform std 0.5/√fan_in | normal var 0.33/fan_in
# | orthogonal: RMS->RMS singular values all 1 (model/linear.py)
SOFTCAP_KINDS = ("tanh", "algebraic")  # cap·tanh(z/cap) | cap·z/√(z² + cap²)
ACTIVATIONS = ("relu2", "gelu_scaled")  # relu(x)² | GELU(x)/1.1289 (1-Lipschitz)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 50257  # real vocabulary; embeddings and head are padded to `vocab_multiple`
    vocab_multiple: int = 128  # pad the vocabulary to a multiple of this (faster matmuls)
    width: int = 768  # residual stream dimension
    depth: int = 12  # number of transformer blocks
    heads: int = 6  # attention heads
    head_dim: int = 128  # each head's dimension (the attention's inner width is heads x head_dim)
    mlp_ratio: int = 4  # the MLP's hidden width is mlp_ratio x width
    seq_len: int = 1024  # training sequence length (tokens per row)
    eot_token: int = 50256  # document separator: attention never crosses it
    value_embeds: int = 0  # number of value-embedding tables, used by the first and last layers
    skip_connections: bool = False  # U-net style skips from encoder to decoder half, learned weights
    x0_mix: bool = False  # each block mixes the normalized embedding x0 back in with learned weights
    logit_softcap: float = 0.0  # logits -> cap * tanh(logits / cap); 0 disables
    attn_scale: float = 0.0  # attention logit scale; 0 means 1/sqrt(head_dim)
    rope_base: float = 10000.0  # rotary embeddings' base (the record: 1024)
    rope_fraction: float = 1.0  # fraction of each head's dims that rotate (0.5 = half-truncated RoPE)
    no_attention_layers: tuple[int, ...] = ()  # blocks without attention (MLP only)
    window: int = 0  # sliding-window size in tokens; 0 = full causal attention
    window_pattern: str = ""  # per block 'L' (window) or 'S' (window // 2); empty = all 'L'
    window_blocks: bool = False  # the window counts whole 128-token key blocks, as the records do (model/masks.py)
    attention: str = "auto"  # "auto" (flex on CUDA, sdpa elsewhere) | "flex" | "sdpa"
    compile: bool = True  # torch.compile the model (on CUDA; on CPU only with compile_cpu)
    compile_cpu: bool = False  # compile on CPU too (inductor): the CPU proxy for compile problems (tests/test_compile.py)
    compile_warmup_steps: int = -1  # steps run and undone before the clock starts (compile, autotune); -1: 3 if compiling
    bf16: bool = True  # bf16 autocast (CUDA only); fp32 on CPU
    dtype: str = "float32"  # parameter dtype; "float64" is for numerical checks on CPU
    # Track 3 (modded-nanogpt's optimization benchmark: configs/track3_*.toml) switches these on:
    bias: bool = False  # every linear layer has a bias (q, k, v, attention out, MLP in and out, head)
    norm_gains: bool = False  # every RMSNorm but the QK-norm has a learned gain (2 per block, embedding, head)
    doc_masking: bool = True  # attention stays inside documents (split at eot_token); false: plain causal per row
    softcap_kind: str = "tanh"  # logit cap: "tanh" cap*tanh(z/cap) | "algebraic" cap*z/sqrt(z^2+cap^2)
    hidden_init: str = "uniform"  # q/k/v, MLP in: "uniform" std 0.5/sqrt(fan_in) | "normal" var 0.33/fan_in | "orthogonal"
    embed_bf16: bool = False  # store the token tables (embedding, value embeddings) in bfloat16
    fp8_head: bool = False  # the head's training matmuls in float8 with the record's scales (model/fp8.py; Hopper)
    loss_chunk: int = 8192  # head + cap + loss: at most this many tokens' full-vocabulary logits at once
    # The Lipschitz transformer (Newhouse et al. 2025; configs/lipschitz_*.toml; model/lipschitz.py) switches these:
    layer_norm: bool = True  # RMSNorm after the embedding, before attention, the MLP and the head; false: none
    qk_norm: bool = True  # RMSNorm of queries and keys inside attention
    activation: str = "relu2"  # MLP: "relu2" relu(x)^2 | "gelu_scaled" GELU(x)/1.1289 (1-Lipschitz)
    attn_scale_rule: str = "inv_sqrt_d"  # with attn_scale = 0: logits q.k/sqrt(head_dim) | "inv_d": q.k/head_dim
    attn_out_scale: float = 1.0  # the heads' output times this before the out projection (the paper's 1/3)
    residual: str = "add"  # "add" x + f(x) | "convex" (1 - a) x + a f(x) with a = residual_scale / (2 depth)
    residual_scale: float = 1.0  # the convex residual's branch weight is residual_scale / (2 depth)

    @property
    def padded_vocab(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def check(self) -> None:
        check_model(self)


def check_model(m: ModelConfig) -> None:
    """ConfigError (naming the key) for a model setting that cannot run."""
    _choice("model.attention", m.attention, ATTENTION_KINDS)
    _choice("model.dtype", m.dtype, tuple(DTYPES))
    for key in ("width", "depth", "heads", "head_dim", "mlp_ratio", "seq_len", "vocab_size", "vocab_multiple"):
        _check(getattr(m, key) > 0, f"model.{key} must be positive, got {getattr(m, key)}")
    _check(m.head_dim % 2 == 0, f"model.head_dim ({m.head_dim}) must be even for rotary embeddings")
    _check(0.0 < m.rope_fraction <= 1.0, f"model.rope_fraction must be in (0, 1], got {m.rope_fraction}")
    _check(0 <= m.eot_token < m.vocab_size, f"model.eot_token ({m.eot_token}) must be < model.vocab_size ({m.vocab_size})")
    _check(
        2 * m.value_embeds <= m.depth,
        f"model.value_embeds ({m.value_embeds}) needs model.depth >= {2 * m.value_embeds} "
        f"(each table feeds one of the first and one of the last blocks), got {m.depth}",
    )
    for i in m.no_attention_layers:
        _check(0 <= i < m.depth, f"model.no_attention_layers: block {i} does not exist (depth {m.depth})")
    _check(m.window >= 0, f"model.window must be >= 0, got {m.window}")
    if m.window_pattern:
        _check(
            len(m.window_pattern) == m.depth and set(m.window_pattern) <= set(WINDOW_KINDS),
            f"model.window_pattern must be {m.depth} letters of {'/'.join(map(repr, WINDOW_KINDS))} (one per block), "
            f"got {m.window_pattern!r}",
        )
        _check(m.window > 0, "model.window_pattern needs model.window > 0")
    if m.window_blocks:
        _check(m.window % 128 == 0 and m.window >= 256 if m.window_pattern else m.window % 128 == 0,
               f"model.window_blocks counts the window in 128-token blocks: model.window ({m.window}) must be a "
               f"multiple of 128 (and at least 256 with 'S' blocks, which get half of it)")
    _check(m.logit_softcap >= 0, f"model.logit_softcap must be >= 0, got {m.logit_softcap}")
    _check(m.compile_warmup_steps >= -1, f"model.compile_warmup_steps must be >= 0 (or -1: automatic), got "
                                         f"{m.compile_warmup_steps}")
    _choice("model.softcap_kind", m.softcap_kind, SOFTCAP_KINDS)
    _check(m.softcap_kind == "tanh" or m.logit_softcap > 0,
           f"model.softcap_kind = {m.softcap_kind!r} needs model.logit_softcap > 0 (0 turns the cap off)")
    _choice("model.hidden_init", m.hidden_init, HIDDEN_INITS)
    _check(m.loss_chunk > 0, f"model.loss_chunk must be positive (tokens per chunk of the loss), got {m.loss_chunk}")
    _check(not m.fp8_head or m.loss_chunk % 16 == 0,
           f"model.fp8_head: the FP8 matmul (torch._scaled_mm) needs model.loss_chunk to be a multiple of 16, "
           f"got {m.loss_chunk}")
    _check(m.attn_scale >= 0, f"model.attn_scale must be > 0 (or 0: model.attn_scale_rule of head_dim), got "
                              f"{m.attn_scale} (a negative scale flips the attention pattern)")
    _check(not (m.embed_bf16 and m.dtype == "float64"),
           "model.embed_bf16 stores the embedding in bfloat16, which defeats model.dtype = 'float64' (numerical "
           "checks): turn one of them off")
    check_lipschitz_switches(m)


def check_lipschitz_switches(m: ModelConfig) -> None:
    _choice("model.activation", m.activation, ACTIVATIONS)
    _choice("model.attn_scale_rule", m.attn_scale_rule, ATTN_SCALE_RULES)
    _choice("model.residual", m.residual, RESIDUALS)
    _check(m.attn_out_scale > 0, f"model.attn_out_scale must be positive, got {m.attn_out_scale}")
    _check(0 < m.residual_scale <= 2 * m.depth,
           f"model.residual_scale must be in (0, 2 x model.depth = {2 * m.depth}] (the branch weight "
           f"residual_scale / (2 depth) is at most 1), got {m.residual_scale}")
    _check(m.layer_norm or not m.norm_gains,
           "model.norm_gains are the gains of the RMSNorms, but model.layer_norm = false removes them: turn one off")
