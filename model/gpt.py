"""The GPT of the NanoGPT speedrun.

    x0 = rmsnorm(embed(idx))
    for each block:  x = a * x + b * x0                     (optional learned x0 mix)
                     x = x + attn(rmsnorm(x))                (rotary, QK-norm, doc-causal mask)
                     x = x + mlp(rmsnorm(x))                 (ReLU^2)
    U-net skips: the output of encoder block i is added, with a learned weight, to the input of
    the decoder block that mirrors it.
    logits = cap * tanh(head(rmsnorm(x)) / cap)              (untied, zero-initialized head)

Every parameter has a role, declared by the module that owns it: "embed" (token tables),
"hidden" (weight matrices inside blocks), "head" (the output layer) or "scalar" (gains and mixing
weights). Optimizers are built from roles, never from shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.attention import CausalSelfAttention, make_mask
from model.embeddings import ValueEmbeddings
from model.masks import document_ids
from model.mlp import MLP

ROLES = ("embed", "hidden", "head", "scalar")


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Block(nn.Module):
    def __init__(self, cfg, max_seq_len: int, has_attention: bool):
        super().__init__()
        self.attn = None
        if has_attention:
            self.attn = CausalSelfAttention(
                cfg.width, cfg.heads, cfg.head_dim, max_seq_len, scale=cfg.attn_scale,
                rope_base=cfg.rope_base, rope_fraction=cfg.rope_fraction, value_mix=cfg.value_embeds > 0,
            )
        self.mlp = MLP(cfg.width, cfg.mlp_ratio)
        # x <- lambdas[0] * x + lambdas[1] * x0, starting as the identity
        self.lambdas = nn.Parameter(torch.tensor([1.0, 0.0])) if cfg.x0_mix else None

    def param_roles(self) -> dict[str, str]:
        return {"lambdas": "scalar"} if self.lambdas is not None else {}

    def forward(self, x: Tensor, x0: Tensor, kind: str, mask, ve: Tensor | None) -> Tensor:
        if self.lambdas is not None:
            x = self.lambdas[0] * x + self.lambdas[1] * x0
        if self.attn is not None:
            x = x + self.attn(rms_norm(x), kind, mask, ve)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg, max_seq_len: int | None = None):
        """cfg: training.config.ModelConfig. max_seq_len: longest sequence forward will see
        (defaults to cfg.seq_len; pass the eval length when it is longer)."""
        super().__init__()
        self.cfg = cfg
        max_seq_len = max_seq_len or cfg.seq_len
        vocab, width = cfg.padded_vocab, cfg.width
        self.embed = nn.Embedding(vocab, width)
        self.value_embeds = (
            ValueEmbeddings(cfg.value_embeds, vocab, cfg.heads * cfg.head_dim, cfg.depth) if cfg.value_embeds else None
        )
        no_attn = set(cfg.no_attention_layers)
        self.blocks = nn.ModuleList(Block(cfg, max_seq_len, i not in no_attn) for i in range(cfg.depth))
        self.n_skips = cfg.depth // 2 if cfg.skip_connections else 0
        self.skip_weights = nn.Parameter(torch.ones(self.n_skips)) if self.n_skips else None
        self.head = nn.Linear(width, vocab, bias=False)
        nn.init.zeros_(self.head.weight)
        pattern = cfg.window_pattern or "L" * cfg.depth
        self.window_halved = [c == "S" for c in pattern]
        self.to(getattr(torch, cfg.dtype))

    # ------------------------------------------------------------------------------------------
    def param_roles(self) -> dict[str, str]:
        """Name of every parameter -> its role. Each module declares the roles of its own
        parameters; an undeclared parameter is a bug and raises."""
        roles = {"embed.weight": "embed", "head.weight": "head"}
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

    def forward(self, idx: Tensor, targets: Tensor | None = None, window: Tensor | int | None = None):
        """idx, targets: (B, T) token ids. window: attention window in tokens for 'L' blocks
        (0 = full causal; None = cfg.window); 'S' blocks use half of it.
        Returns the mean cross-entropy loss if targets are given, else the logits (B, T, V)."""
        cfg = self.cfg
        if window is None:
            window = cfg.window
        kind = self.attention_kind(idx.device)
        docs = document_ids(idx, cfg.eot_token)
        long_mask = make_mask(kind, docs, window)
        short_mask = make_mask(kind, docs, window // 2) if any(self.window_halved) else None

        x = x0 = rms_norm(self.embed(idx))
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

        logits = self.head(rms_norm(x))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # softcap and loss in >= fp32
        if cfg.logit_softcap > 0:
            logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def flops_per_token(cfg, seq_len: int, window: int = 0) -> float:
    """Training FLOPs per token of the dense algorithm: 6 x (matmul parameters) for the weights,
    plus 6 x 2 x (attended keys) x (heads * head_dim) per attention block for QK^T and AV,
    with the causal (and window) structure counted: a query at position t attends min(t+1, w) keys."""
    inner = cfg.heads * cfg.head_dim
    per_block_mlp = 2 * cfg.mlp_ratio * cfg.width * cfg.width
    per_block_attn = 4 * inner * cfg.width
    n_attn = cfg.depth - len(cfg.no_attention_layers)
    matmul_params = cfg.depth * per_block_mlp + n_attn * per_block_attn + cfg.padded_vocab * cfg.width
    w = window if window > 0 else seq_len
    t = torch.arange(seq_len, dtype=torch.float64)
    mean_keys = torch.minimum(t + 1, torch.tensor(float(w))).mean().item()
    return 6 * matmul_params + 12 * n_attn * inner * mean_keys
