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
from model.roles import ROLES

WINDOW_KINDS = ("L", "S")  # per block in model.window_pattern: 'L' attends over the window, 'S' over half of it
DTYPES = {"float32": torch.float32, "float64": torch.float64}  # parameter dtypes (float64: numerical checks)


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
        pattern = cfg.window_pattern or WINDOW_KINDS[0] * cfg.depth
        self.window_halved = [c == WINDOW_KINDS[1] for c in pattern]
        self.to(DTYPES[cfg.dtype])

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
    """Model FLOPs per training token (forward and backward, i.e. 3 x the forward's):

        6 x (matmul parameters: the q/k/v/out and MLP weights of every block, and the head)
      + 12 x (heads x head_dim) x keys_b    for each attention block b (QK^T and AV, 2 x 2 each),

    where keys_b is the mean number of keys a query attends in block b: min(t + 1, w_b) averaged
    over positions t < seq_len, w_b being `window` for 'L' blocks and window // 2 for 'S' blocks
    (0: full causal). Embedding lookups, norms, activations and the loss are not counted, nor is
    document masking (the attention kernel skips only whole blocks outside a document)."""
    inner = cfg.heads * cfg.head_dim
    attention = [i for i in range(cfg.depth) if i not in set(cfg.no_attention_layers)]
    matmul_params = cfg.depth * 2 * cfg.mlp_ratio * cfg.width**2 + len(attention) * 4 * inner * cfg.width
    matmul_params += cfg.padded_vocab * cfg.width
    pattern = cfg.window_pattern or WINDOW_KINDS[0] * cfg.depth
    t = torch.arange(seq_len, dtype=torch.float64)

    def mean_keys(w: int) -> float:
        return torch.minimum(t + 1, torch.tensor(float(w if w > 0 else seq_len))).mean().item()

    keys = sum(mean_keys(window // 2 if pattern[i] == WINDOW_KINDS[1] else window) for i in attention)
    return 6 * matmul_params + 12 * inner * keys
