"""Optimizers: orthogonalization, Muon, and the builder that maps parameter roles to optimizers."""

from optimizers.build import build_optimizers
from optimizers.muon import Muon
from optimizers.orthogonalize import newton_schulz

__all__ = ["Muon", "build_optimizers", "newton_schulz"]
