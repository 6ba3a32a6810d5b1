"""Every orthogonalization method against the SVD: the singular values of the output lie in the
band the method promises, the singular vectors are G's, for square, wide, tall, batched and
rank-deficient inputs."""

import pytest
import torch

from optimizers import orthogonalize
from optimizers.orthogonalize import DEFAULT_STEPS, METHODS, POLAR_EXPRESS, coefficients

F64 = torch.float64

# (method, smallest singular value / ‖G‖_F the promise covers, band for those values)
BANDS = [
    ("newton_schulz", 3e-3, (0.68, 1.21)),  # quintic's max on [0, 1] is p(0.5545) = 1.20237
    ("polar_express", 3e-3, (0.85, 1.15)),
    ("cubic", 2e-2, (0.999, 1.0 + 1e-5)),  # 12 steps, converges from below
    ("modular_quintic", 2e-2, (0.999, 1.002)),  # 8 steps; p(0.894) = 1.00176 slightly overshoots
    ("monotone_quintic", 2e-2, (0.999, 1.0 + 1e-5)),  # 8 steps, increasing on [0, 1]: never above 1
    ("svd", 0.0, (1.0 - 1e-5, 1.0 + 1e-5)),  # exact up to float32 rounding
]
SHAPES = [(48, 48), (32, 80), (80, 32), (3, 40, 56)]


def with_spectrum(shape, lo, hi=1.0, rank=None, seed=0):
    """A matrix (batch) with singular values log-spaced in [lo, hi] (the last k - rank set to zero)."""
    g = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(*batch, m, k, generator=g, dtype=F64))[0]
    V = torch.linalg.qr(torch.randn(*batch, n, k, generator=g, dtype=F64))[0]
    s = torch.logspace(torch.log10(torch.tensor(hi)), torch.log10(torch.tensor(lo)), k, dtype=F64)
    if rank is not None:
        s[rank:] = 0
    return U @ torch.diag_embed(s.expand(*batch, k)) @ V.mT


def covered(G, threshold):
    """Mask of the singular values of G at or above threshold x ‖G‖_F (per matrix)."""
    s = torch.linalg.svdvals(G)
    return s >= threshold * G.norm(dim=(-2, -1), keepdim=True)[..., 0]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method, threshold, band", BANDS, ids=[b[0] for b in BANDS])
def test_singular_values_land_in_the_promised_band(method, threshold, band, shape):
    G = with_spectrum(shape, lo=1e-2 if threshold < 1e-2 else 0.1)
    X = orthogonalize(G.float(), method)
    assert X.shape == G.shape and X.dtype == torch.float32
    s = torch.linalg.svdvals(X.double())
    mask = covered(G, threshold)
    assert mask.all()  # the whole spectrum is inside the promise for these inputs
    lo, hi = band
    assert s[mask].min() >= lo and s[mask].max() <= hi, (s.min().item(), s.max().item())


@pytest.mark.parametrize("method", METHODS)
def test_singular_vectors_are_those_of_G(method):
    G = with_spectrum((40, 24), lo=0.05)
    X = orthogonalize(G.float(), method).double()
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    D = U.mT @ X @ Vh.mT  # diagonal if X = U f(S) Vᵀ
    off = D - torch.diag_embed(torch.diagonal(D, dim1=-2, dim2=-1))
    assert off.abs().max() < 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_rank_deficient_input_keeps_its_null_space(method):
    G = with_spectrum((30, 50), lo=0.1, rank=10)
    s = torch.linalg.svdvals(orthogonalize(G.float(), method).double())
    assert (s[:10] > 0.6).all() and (s[10:] < 1e-3).all()


def test_polar_express_is_closer_to_one_than_newton_schulz_at_equal_steps():
    """At the 5 steps its schedule was optimized for, and beyond (a truncated schedule, e.g. its
    first 4 steps, is not optimal for 4 steps and can lose)."""
    G = with_spectrum((64, 64), lo=1e-2)
    for steps in (5, 6, 8):
        err = {m: (torch.linalg.svdvals(orthogonalize(G.float(), m, steps).double()) - 1).abs().max().item()
               for m in ("newton_schulz", "polar_express")}
        assert err["polar_express"] < err["newton_schulz"], (steps, err)


def test_coefficient_schedules():
    assert coefficients("newton_schulz") == [(3.4445, -4.7750, 2.0315)] * 5
    assert coefficients("cubic", 3) == [(1.5, -0.5, 0.0)] * 3
    assert coefficients("modular_quintic", 2) == [(2.0, -1.5, 0.5)] * 2
    pe = coefficients("polar_express", 7)
    assert pe[:5] == list(POLAR_EXPRESS) and pe[5] == pe[6] == POLAR_EXPRESS[-1]
    assert {m: len(coefficients(m)) for m in DEFAULT_STEPS} == DEFAULT_STEPS
    with pytest.raises(ValueError, match="unknown orthogonalization method"):
        orthogonalize(torch.randn(4, 4), "qr")
    with pytest.raises(ValueError, match="needs matrices"):
        orthogonalize(torch.randn(4), "newton_schulz")
    with pytest.raises(ValueError, match="unknown backend"):
        orthogonalize(torch.randn(4, 4), backend="cuda")


def test_dtype_and_layout_are_kept():
    G = torch.randn(2, 3, 20, 12)
    X = orthogonalize(G, "newton_schulz")
    assert X.shape == G.shape and X.dtype == G.dtype
    Xt = orthogonalize(G.mT, "newton_schulz")  # a non-contiguous, wide view
    torch.testing.assert_close(Xt, X.mT, rtol=1e-5, atol=1e-5)
    assert orthogonalize(G.bfloat16(), "newton_schulz", dtype=torch.float32).dtype == torch.bfloat16
    assert torch.isfinite(orthogonalize(torch.zeros(5, 7), "polar_express")).all()


def test_keep_dtype_returns_the_iteration_dtype():
    """Muon asks for the iteration's dtype (bf16 on CUDA) so that sharded updates are gathered in it."""
    G = torch.randn(3, 16, 24)
    X = orthogonalize(G, "newton_schulz", dtype=torch.bfloat16, keep_dtype=True)
    assert X.dtype == torch.bfloat16 and X.shape == G.shape
    torch.testing.assert_close(X.float(), orthogonalize(G, "newton_schulz", dtype=torch.bfloat16), rtol=0, atol=0)
    assert orthogonalize(G.double(), "cubic", keep_dtype=True).dtype == torch.float64  # CPU: as before


# The numbers the docstrings state, recomputed here by brute force (issue 25)


def brute_force_max(abc, steps, hi=1.0):
    """max over s in (0, hi] of the polynomial composed `steps` times, on a 2-million-point grid (log and
    linear), written here independently of orthogonalize.largest_singular_value."""
    s = torch.cat([torch.logspace(-8, 0, 10**6, dtype=F64), torch.linspace(0, 1, 10**6, dtype=F64)]) * hi
    a, b, c = abc
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return float(s.max())


def test_newton_schulz_largest_value_is_1_20237_and_computed():
    """Muon's 5-step quintic leaves singular values up to 1.20237 (not 1.2035, not 1.2, not ~1.13): the
    single quintic's maximum, reached after five steps from normalized values near 4e-3."""
    from optimizers.orthogonalize import largest_singular_value
    ours = largest_singular_value("newton_schulz", 5)
    assert abs(ours - brute_force_max((3.4445, -4.7750, 2.0315), 5)) < 1e-6
    assert abs(ours - 1.20237) < 5e-6
    a, b, c = 3.4445, -4.7750, 2.0315
    s = torch.tensor(0.5545, dtype=F64)
    assert abs(float(a * s + b * s**3 + c * s**5) - 1.20237) < 1e-5  # the single step's maximum
    x = torch.logspace(-4, 0, 100001, dtype=F64)
    y = x
    for _ in range(5):
        y = a * y + b * y**3 + c * y**5
    assert 3e-3 < float(x[y.argmax()]) < 5e-3  # reached from tiny inputs, not from s near 1


@pytest.mark.parametrize("method, steps", [("cubic", 12), ("monotone_quintic", 8), ("modular_quintic", 8),
                                           ("polar_express", 5), ("newton_schulz", 3)])
def test_largest_singular_value_matches_brute_force(method, steps):
    from optimizers.orthogonalize import POLAR_EXPRESS_SAFETY, largest_singular_value
    coeffs = coefficients(method, steps)
    hi = 1 / POLAR_EXPRESS_SAFETY if method == "polar_express" else 1.0
    if len(set(coeffs)) == 1:
        expected = brute_force_max(coeffs[0], steps, hi)
    else:
        s = torch.cat([torch.logspace(-8, 0, 10**6, dtype=F64), torch.linspace(0, 1, 10**6, dtype=F64)]) * hi
        for a, b, c in coeffs:
            s = a * s + b * s**3 + c * s**5
        expected = float(s.max())
    assert abs(largest_singular_value(method, steps) - expected) < 1e-6


def test_modular_quintic_overshoots_and_monotone_quintic_does_not():
    """(2, −1.5, 0.5) has p(1) = 1, p'(1) = 0 and p''(1) = 1 (not 0): its error near 1 is e²/2 and it
    overshoots to 1.00176 at s ≈ 0.894. (15/8, −5/4, 3/8) has p''(1) = 0 too and p' >= 0 on [0, 1]: it
    stays at or below 1 and its error near 1 is 2.5e³."""
    def p(abc, s):
        a, b, c = abc
        return a * s + b * s**3 + c * s**5
    s = torch.linspace(0, 1, 200001, dtype=F64)
    modular, monotone = p((2.0, -1.5, 0.5), s), p((15 / 8, -5 / 4, 3 / 8), s)
    assert abs(float(modular.max()) - 1.00176) < 1e-5 and abs(float(s[modular.argmax()]) - 0.894) < 1e-3
    assert float(monotone.max()) <= 1.0 + 1e-15 and bool((monotone.diff() >= 0).all())
    e = torch.tensor(1e-3, dtype=F64)
    assert abs(float(p((2.0, -1.5, 0.5), 1 - e) - 1) / float(e**2 / 2) - 1) < 1e-2
    assert abs(float(1 - p((15 / 8, -5 / 4, 3 / 8), 1 - e)) / float(2.5 * e**3) - 1) < 1e-2
