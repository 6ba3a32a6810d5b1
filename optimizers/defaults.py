"""Each optimizer's default settings, per parameter role (plain data: no torch import).

A config's [optim] section and its [optim.embed], [optim.hidden], [optim.head], [optim.scalar]
tables override any of these; what is left unset comes from here (training/config.py fills it in
when the config is loaded, so the resolved config.toml of a run shows every value used).

A role's "lr" of None means "optim.lr": the optimizer's main learning rate, the one a learning-rate
sweep varies. A role's "norm" says how it is trained: a key of optimizers.norms.NORMS (a steepest
step in that norm), or "adamw" (an AdamW step).
"""

ROLES = ("embed", "hidden", "head", "scalar")
OPTIMIZERS = ("muon", "scion", "adamw", "signum")
NORM_NAMES = ("spectral", "sign", "sign_fanin", "colnorm", "rownorm", "rms", "euclidean")  # = NORMS keys
MATRIX_NORMS = ("spectral", "colnorm", "rownorm")  # undefined for vectors

DEFAULTS = {
    # The modded-nanogpt record of 2025-01-26: Muon for hidden matrices, Adam for the rest.
    "muon": dict(
        lr=0.05, momentum=0.95, nesterov=True, momentum_warmup_from=0.85, momentum_warmup_steps=300,
        adam_betas=(0.8, 0.95), adam_eps=1e-10,
        roles=dict(
            embed=dict(norm="adamw", lr=0.6, scale=1.0, weight_decay=0.0),
            hidden=dict(norm="spectral", lr=None, scale=1.0, weight_decay=0.0),
            head=dict(norm="adamw", lr=0.008, scale=1.0, weight_decay=0.0),
            scalar=dict(norm="adamw", lr=0.04, scale=1.0, weight_decay=0.0),
        ),
    ),
    # Scion's nanoGPT setting (Pethick et al. 2025; their README): Sign -> Spectral -> Sign, radius 50,
    # head radius 50 x 60 = 3000 with Sign normalized by fan-in, lr 2^-12, momentum alpha = 0.1
    # (beta = 0.9), constrained. Their model ties the embedding to the head, so the embedding saw
    # per-entry radius 3000/768; ours is untied and keeps that per-entry radius with the plain
    # (one-hot input) Sign norm. Scalars (absent from their model) get Sign with radius 1.
    "scion": dict(
        lr=2.0**-12, momentum=0.9, nesterov=False, momentum_warmup_from=None, momentum_warmup_steps=0,
        adam_betas=(0.9, 0.95), adam_eps=1e-8,
        roles=dict(
            embed=dict(norm="sign", lr=None, scale=3000.0 / 768, weight_decay=0.0),
            hidden=dict(norm="spectral", lr=None, scale=50.0, weight_decay=0.0),
            head=dict(norm="sign_fanin", lr=None, scale=3000.0, weight_decay=0.0),
            scalar=dict(norm="sign", lr=None, scale=1.0, weight_decay=0.0),
        ),
    ),
    # AdamW everywhere: hidden matrices at optim.lr (llm.c-style 0.0018), the other roles at the
    # record's Adam learning rates.
    "adamw": dict(
        lr=0.0018, momentum=None, nesterov=False, momentum_warmup_from=None, momentum_warmup_steps=0,
        adam_betas=(0.9, 0.95), adam_eps=1e-8,
        roles=dict(
            embed=dict(norm="adamw", lr=0.6, scale=1.0, weight_decay=0.0),
            hidden=dict(norm="adamw", lr=None, scale=1.0, weight_decay=0.0),
            head=dict(norm="adamw", lr=0.008, scale=1.0, weight_decay=0.0),
            scalar=dict(norm="adamw", lr=0.04, scale=1.0, weight_decay=0.0),
        ),
    ),
    # Sign descent with momentum everywhere (untuned baseline).
    "signum": dict(
        lr=0.001, momentum=0.9, nesterov=False, momentum_warmup_from=None, momentum_warmup_steps=0,
        adam_betas=(0.9, 0.95), adam_eps=1e-8,
        roles=dict(
            embed=dict(norm="sign", lr=0.01, scale=1.0, weight_decay=0.0),
            hidden=dict(norm="sign", lr=None, scale=1.0, weight_decay=0.0),
            head=dict(norm="sign", lr=0.001, scale=1.0, weight_decay=0.0),
            scalar=dict(norm="sign", lr=0.01, scale=1.0, weight_decay=0.0),
        ),
    ),
}
