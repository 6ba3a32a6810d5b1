"""The minimal Muon of the trainer (the optimizer library replaces it)."""

import torch

from optimizers import Muon, newton_schulz


def with_spectrum(shape, lo=1e-2, hi=1.0):
    """A random matrix (batch) whose singular values spread log-uniformly over [lo, hi]."""
    *batch, m, n = shape
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(*batch, m, k))[0]
    V = torch.linalg.qr(torch.randn(*batch, n, k))[0]
    s = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)), k)
    return U @ torch.diag_embed(s.expand(*batch, k)) @ V.mT


def test_newton_schulz_lands_in_the_quintic_band():
    """Five quintic steps map every singular value above ~1e-3 of the Frobenius norm into
    roughly [0.68, 1.2] (we check [0.6, 1.21]: the quintic's maximum on [0, 1] is p(0.5545) = 1.2035);
    smaller ones are amplified but not yet there."""
    torch.manual_seed(0)
    for shape in [(64, 64), (32, 96), (96, 32), (3, 48, 48)]:
        G = with_spectrum(shape)
        X = newton_schulz(G, steps=5)
        assert X.shape == G.shape and X.dtype == torch.float32
        s = torch.linalg.svdvals(X)
        assert s.min() > 0.6 and s.max() < 1.21, (shape, s.min(), s.max())
        # same singular vectors as G: X = U f(S) V^T, so U^T X V is diagonal
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        D = U.mT @ X @ Vh.mT
        off = D - torch.diag_embed(torch.diagonal(D, dim1=-2, dim2=-1))
        assert off.abs().max() < 1e-3


def test_muon_step_matches_hand_computation():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8))
    w0 = w.detach().clone()
    g = torch.randn(16, 8)
    w.grad = g.clone()
    opt = Muon([w], lr=0.1, momentum=0.9, nesterov=True, ns_steps=5)
    opt.step()
    buf = 0.1 * g  # lerp from zero
    d = g + 0.9 * (buf - g)
    expected = w0 - 0.1 * (16 / 8) ** 0.5 * newton_schulz(d, 5)
    torch.testing.assert_close(w.detach(), expected)
