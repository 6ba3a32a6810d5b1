"""The GPT of the NanoGPT speedrun, and the plain GPT of the optimization benchmark (track 3).

    x0 = norm(embed(idx))
    for each block:  x = a * x + b * x0                     (optional learned x0 mix)
                     x = x + attn(norm(x))                   (rotary, QK-norm, causal; doc mask, window)
                     x = x + mlp(norm(x))                    (ReLU^2)
    U-net skips: the output of encoder block i is added, with a learned weight, to the input of
    the decoder block that mirrors it.
    logits = cap(head(norm(x)))                              (untied, zero-initialized head;
                                                              cap: tanh or algebraic, model/loss.py)

The variants are switches of ModelConfig (model/config.py), each on its own:

    speedrun records   value_embeds, skip_connections, x0_mix, window (+ window_pattern), document
                       masking, tanh soft cap, no biases, norms without gains
    track 3            bias (every linear layer), norm_gains (every RMSNorm but the QK-norm),
                       doc_masking = false and window = 0 (plain causal attention over each row),
                       softcap_kind = "algebraic", hidden_init = "normal", embed_bf16
    Lipschitz          layer_norm = false (no RMSNorm anywhere: norm(x) = x), qk_norm = false,
    transformer        activation = "gelu_scaled" (1-Lipschitz), attn_scale_rule = "inv_d" (logits
    (Newhouse et al.,  q·k / head_dim), attn_out_scale = 1/3, logit_softcap = 0, and
    2025)              residual = "convex": x = (1 − a)·x + a·f(x) for each attention and MLP branch,
                       a = residual_scale / (2·depth); model/lipschitz.py bounds the Lipschitz
                       constant of this family (configs/lipschitz_shakespeare.toml)

Every parameter has a role, declared by the module that owns it: "embed" (token tables),
"hidden" (weight matrices inside blocks), "head" (the output layer) or "scalar" (gains, biases and
mixing weights). Optimizers are built from roles, never from shapes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.attention import CausalSelfAttention, make_mask
from model.config import DTYPES, WINDOW_KINDS, ModelConfig
from model.embeddings import ValueEmbeddings
from model.loss import Head
from model.masks import document_ids, window_block_count
from model.mlp import MLP
from model.norm import RMSNorm
from model.roles import ROLES


def attention_scale(cfg: ModelConfig) -> float:
    """The attention logit scale: model.attn_scale, or (0) the model.attn_scale_rule of head_dim."""
    if cfg.attn_scale:
        return cfg.attn_scale
    return 1.0 / cfg.head_dim if cfg.attn_scale_rule == "inv_d" else cfg.head_dim**-0.5


def branch_weight(cfg: ModelConfig) -> float | None:
    """a of the convex residual (1 − a)·x + a·f(x); None for the plain x + f(x)."""
    return cfg.residual_scale / (2 * cfg.depth) if cfg.residual == "convex" else None


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The RMSNorm of a block, the embedding or the head; the identity with model.layer_norm = false."""
    return RMSNorm(cfg.width, gain=cfg.norm_gains) if cfg.layer_norm else nn.Identity()


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, max_seq_len: int, has_attention: bool):
        super().__init__()
        self.attn = None
        if has_attention:
            self.attn = CausalSelfAttention(
                cfg.width, cfg.heads, cfg.head_dim, max_seq_len, scale=attention_scale(cfg),
                rope_base=cfg.rope_base, rope_fraction=cfg.rope_fraction, value_mix=cfg.value_embeds > 0,
                bias=cfg.bias, init=cfg.hidden_init, qk_norm=cfg.qk_norm, out_scale=cfg.attn_out_scale,
            )
        self.mlp = MLP(cfg.width, cfg.mlp_ratio, bias=cfg.bias, init=cfg.hidden_init, activation=cfg.activation)
        self.branch_weight = branch_weight(cfg)
        # x <- lambdas[0] * x + lambdas[1] * x0, starting as the identity
        self.lambdas = nn.Parameter(torch.tensor([1.0, 0.0])) if cfg.x0_mix else None
        self.norm1 = make_norm(cfg)  # before attention
        self.norm2 = make_norm(cfg)  # before the MLP

    def param_roles(self) -> dict[str, str]:
        return {"lambdas": "scalar"} if self.lambdas is not None else {}

    def forward(self, x: Tensor, x0: Tensor, kind: str, mask, ve: Tensor | None) -> Tensor:
        if self.lambdas is not None:
            x = self.lambdas[0] * x + self.lambdas[1] * x0
        if self.attn is not None:
            x = self.residual(x, self.attn(self.norm1(x), kind, mask, ve))
        return self.residual(x, self.mlp(self.norm2(x)))

    def residual(self, x: Tensor, branch: Tensor) -> Tensor:
        a = self.branch_weight
        return x + branch if a is None else (1 - a) * x + a * branch


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, max_seq_len: int | None = None):
        """cfg: model/config.py (every switch). max_seq_len: longest sequence forward will see
        (defaults to cfg.seq_len; pass the eval length when it is longer)."""
        super().__init__()
        self.cfg = cfg
        max_seq_len = max_seq_len or cfg.seq_len
        vocab, width = cfg.padded_vocab, cfg.width
        self.embed = nn.Embedding(vocab, width)  # N(0, 1)
        self.embed_norm = make_norm(cfg)
        self.value_embeds = (
            ValueEmbeddings(cfg.value_embeds, vocab, cfg.heads * cfg.head_dim, cfg.depth) if cfg.value_embeds else None
        )
        no_attn = set(cfg.no_attention_layers)
        self.blocks = nn.ModuleList(Block(cfg, max_seq_len, i not in no_attn) for i in range(cfg.depth))
        self.n_skips = cfg.depth // 2 if cfg.skip_connections else 0
        self.skip_weights = nn.Parameter(torch.ones(self.n_skips)) if self.n_skips else None
        self.head_norm = make_norm(cfg)
        self.head = Head(width, vocab, bias=cfg.bias, cap=cfg.logit_softcap, cap_kind=cfg.softcap_kind,
                         chunk=cfg.loss_chunk, use_fp8=cfg.fp8_head)
        pattern = cfg.window_pattern or WINDOW_KINDS[0] * cfg.depth
        self.window_halved = [c == WINDOW_KINDS[1] for c in pattern]
        self.compute_dtype = DTYPES[cfg.dtype]  # the parameters' (embed_bf16: the table's rows are cast to it)
        self.to(self.compute_dtype)
        if cfg.embed_bf16:  # every token table, as the records store them (the rows are cast up on lookup)
            self.embed.to(torch.bfloat16)
            if self.value_embeds is not None:
                self.value_embeds.to(torch.bfloat16)

    # ------------------------------------------------------------------------------------------
    def param_roles(self) -> dict[str, str]:
        """Name of every parameter -> its role. Each module declares the roles of its own
        parameters; an undeclared parameter is a bug and raises."""
        roles = {"embed.weight": "embed"}
        if self.skip_weights is not None:
            roles["skip_weights"] = "scalar"
        for prefix, module in self.named_modules():
            if module is not self and hasattr(module, "param_roles"):
                roles.update({f"{prefix}.{name}": role for name, role in module.param_roles().items()})
        names = {name for name, _ in self.named_parameters()}
        missing, extra = names - roles.keys(), roles.keys() - names
        if missing or extra:
            raise RuntimeError(f"parameter roles out of date: undeclared {sorted(missing)}, unknown {sorted(extra)}")
        return roles

    def params_by_role(self) -> dict[str, list[nn.Parameter]]:
        params = dict(self.named_parameters())
        out: dict[str, list[nn.Parameter]] = {role: [] for role in ROLES}
        for name, role in self.param_roles().items():
            out[role].append(params[name])
        return out

    # ------------------------------------------------------------------------------------------
    def attention_kind(self, device: torch.device) -> str:
        kind = self.cfg.attention
        if kind == "auto":
            kind = "flex" if device.type == "cuda" else "sdpa"
        return kind

    def forward(self, idx: Tensor, targets: Tensor | None = None, window: Tensor | int | None = None,
                accuracy: bool = False):
        """idx, targets: (B, T) token ids. window: attention window in tokens for 'L' blocks
        (0 = full causal; None = cfg.window); 'S' blocks use half of it.
        Returns the mean cross-entropy loss if targets are given (computed a bounded chunk of tokens at
        a time, model/loss.py), with `accuracy` the tensor [loss, top-1 accuracy] (validation), else
        the logits (B, T, V)."""
        x0 = self.embed_norm(self.embed(idx).to(self.compute_dtype))
        return self.head(self.head_norm(self.trunk(x0, idx, window)), targets, accuracy)

    def trunk(self, x0: Tensor, idx: Tensor, window: Tensor | int | None = None) -> Tensor:
        """The blocks: x0 (B, T, width), the (normalized) embedding of idx, -> the last hidden state.
        idx gives the document masks and the value embeddings (model/lipschitz.py feeds other x0)."""
        cfg = self.cfg
        if window is None:
            window = cfg.window
        kind = self.attention_kind(idx.device)
        long_mask, short_mask = self.masks(idx, kind, window)
        x = x0
        ve = self.value_embeds(idx) if self.value_embeds is not None else [None] * cfg.depth
        skips: list[Tensor] = []
        first_decoder = cfg.depth - self.n_skips
        for i, block in enumerate(self.blocks):
            if self.n_skips and i >= first_decoder:
                j = i - first_decoder
                x = x + self.skip_weights[j] * skips[self.n_skips - 1 - j]
            mask = short_mask if self.window_halved[i] else long_mask
            x = block(x, x0, kind, mask, ve[i])
            if i < self.n_skips:
                skips.append(x)
        return x

    def masks(self, idx: Tensor, kind: str, window: Tensor | int):
        """The attention masks of the 'L' blocks and of the 'S' blocks (None when there are none).
        Without document masking every row is one document; without a window too, SDPA needs no mask."""
        cfg = self.cfg
        docs = document_ids(idx, cfg.eot_token) if cfg.doc_masking else torch.zeros_like(idx)
        causal_only = not cfg.doc_masking and cfg.window == 0
        long_mask = make_mask(kind, docs, window, causal_only, cfg.window_blocks)
        short_mask = make_mask(kind, docs, window // 2, causal_only, cfg.window_blocks) if any(self.window_halved) else None
        return long_mask, short_mask


def flops_per_token(cfg: ModelConfig, seq_len: int, window: int = 0) -> float:
    """Model FLOPs per training token (forward and backward, i.e. 3 x the forward's):

        6 x (matmul parameters: the q/k/v/out and MLP weights of every block, and the head)
      + 12 x (heads x head_dim) x keys_b    for each attention block b (QK^T and AV, 2 x 2 each),

    where keys_b is the mean number of keys a query attends in block b: min(t + 1, w_b) averaged
    over positions t < seq_len, w_b being `window` for 'L' blocks and window // 2 for 'S' blocks
    (0: full causal); with model.window_blocks, min(t + 1, t mod 128 + 1 + 128 (max(1, w_b // 128) − 1)).
    Embedding lookups, norms, activations and the loss are not counted, nor is document masking
    (the attention kernel skips only whole blocks outside a document)."""
    inner = cfg.heads * cfg.head_dim
    attention = [i for i in range(cfg.depth) if i not in set(cfg.no_attention_layers)]
    matmul_params = cfg.depth * 2 * cfg.mlp_ratio * cfg.width**2 + len(attention) * 4 * inner * cfg.width
    matmul_params += cfg.padded_vocab * cfg.width
    pattern = cfg.window_pattern or WINDOW_KINDS[0] * cfg.depth
    t = torch.arange(seq_len, dtype=torch.float64)

    def mean_keys(w: int) -> float:
        if w <= 0:
            return (t + 1).mean().item()
        reach = t % 128 + 1 + 128 * (window_block_count(w) - 1) if cfg.window_blocks else torch.full_like(t, float(w))
        return torch.minimum(t + 1, reach).mean().item()

    keys = sum(mean_keys(window // 2 if pattern[i] == WINDOW_KINDS[1] else window) for i in attention)
    return 6 * matmul_params + 12 * inner * keys
