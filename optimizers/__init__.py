"""The optimizer library: orthogonalization, norms and their duality maps, Muon, Scion, Signum,
and the builder that maps parameter roles to them (AdamW is torch's)."""

from optimizers.build import build_optimizer
from optimizers.muon import Muon
from optimizers.norms import NORMS
from optimizers.orthogonalize import orthogonalize
from optimizers.scion import Scion
from optimizers.signum import Signum

__all__ = ["NORMS", "Muon", "Scion", "Signum", "build_optimizer", "orthogonalize"]
