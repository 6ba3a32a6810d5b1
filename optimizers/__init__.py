"""The optimizer library: orthogonalization, norms and their duality maps, one module per optimizer
(Muon, Scion, AdamW, Signum, Shampoo, Prodigy, NorMuon), and the registry that names them and builds one from parameter roles."""

from optimizers.muon import Muon
from optimizers.norms import NORMS
from optimizers.orthogonalize import orthogonalize
from optimizers.registry import OPTIMIZERS, build_optimizer
from optimizers.scion import Scion
from optimizers.signum import Signum

__all__ = ["NORMS", "OPTIMIZERS", "Muon", "Scion", "Signum", "build_optimizer", "orthogonalize"]
