"""Every norm's duality map: unit norm, attains the dual norm, beats random feasible points,
scale invariant; and the matching initialization lands on the unit sphere."""

import pytest
import torch

from optimizers import NORMS
from optimizers.spec import MATRIX_NORMS

F64 = torch.float64

SHAPES = [(12, 7), (7, 12), (3, 6, 5), (9,)]


def cases():
    return [
        pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}")
        for name, norm in NORMS.items()
        for shape in SHAPES
        if not (norm.matrix_only and len(shape) < 2)
    ]


def test_matrix_norms_are_the_matrix_only_ones():
    assert set(MATRIX_NORMS) == {"spectral", "spectral_max", "colnorm", "colnorm_normalized", "rownorm",
                                 "rownorm_unnormalized"}


@pytest.mark.parametrize("name, shape", cases())
def test_direction_is_the_unit_maximizer(name, shape):
    norm = NORMS[name]
    g = torch.Generator().manual_seed(0)
    G = torch.randn(*shape, generator=g, dtype=F64)
    T = norm.direction(G)
    assert T.shape == G.shape
    assert norm.norm(T).item() == pytest.approx(1.0, rel=1e-9)
    dual = norm.dual_norm(G).item()
    assert (G * T).sum().item() == pytest.approx(dual, rel=1e-9)
    # no feasible point does better: random points scaled onto the unit sphere
    for _ in range(2000 // 50):
        R = torch.randn(50, *shape, generator=g, dtype=F64)
        values = torch.stack([(G * (r / norm.norm(r))).sum() for r in R])
        assert values.max().item() <= dual * (1 + 1e-9)
    # invariant to positive scaling of G
    torch.testing.assert_close(norm.direction(3.7 * G), T)
    torch.testing.assert_close(norm.direction(1e-6 * G), T)


@pytest.mark.parametrize("name, shape", cases())
def test_init_lands_on_the_unit_sphere(name, shape):
    norm = NORMS[name]
    torch.manual_seed(1)
    W = norm.init_(torch.empty(*shape, dtype=F64))
    assert norm.norm(W).item() == pytest.approx(1.0, rel=1e-9)


def test_lmo_is_minus_radius_times_direction():
    G = torch.randn(5, 4, dtype=F64)
    torch.testing.assert_close(NORMS["spectral"].lmo(G, radius=3.0), -3.0 * NORMS["spectral"].direction(G))


def test_matrix_norms_reject_vectors():
    for name in MATRIX_NORMS:
        with pytest.raises(ValueError, match="needs matrices"):
            NORMS[name].direction(torch.randn(5, dtype=F64))


def test_spectral_direction_is_scaled_polar_factor():
    G = torch.randn(8, 4, dtype=F64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    torch.testing.assert_close(NORMS["spectral"].direction(G), (8 / 4) ** 0.5 * U @ Vh)
    # with Newton-Schulz instead of SVD the direction is approximate (singular values ~[0.68, 1.2])
    approx = NORMS["spectral"].direction(G, method="newton_schulz")
    assert 0.6 < NORMS["spectral"].norm(approx) < 1.21


def test_zero_gradient_has_zero_direction():
    for name, norm in NORMS.items():
        Z = torch.zeros(4, 3, dtype=F64)
        assert torch.isfinite(norm.direction(Z)).all() and norm.direction(Z).abs().max() == 0, name


# The reference Scion's norm variants (LIONS-EPFL/scion, scion.py), its LMO formulas written out here (issue 25)


@pytest.mark.parametrize("shape", [(12, 7), (7, 12), (1, 5)])
def test_variants_match_the_reference_formulas(shape):
    """ColNorm(normalized=True): g / (rms of each column · d_in); RowNorm(normalized=False): g / ‖each row‖₂;
    Spectral(max=True): max(1, √(d_out/d_in)) · U Vᵀ; and the default variants: ColNorm() g / rms of each
    column, RowNorm() g / (‖row‖₂ · √d_in), Spectral() √(d_out/d_in) · U Vᵀ."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    d_out, d_in = shape
    col_rms = (g**2).sum(dim=0, keepdim=True).sqrt() / d_out**0.5
    row_l2 = (g**2).sum(dim=1, keepdim=True).sqrt()
    U, _, Vh = torch.linalg.svd(g, full_matrices=False)
    expected = {
        "colnorm": g / col_rms,
        "colnorm_normalized": g / (col_rms * d_in),
        "rownorm": g / (row_l2 * d_in**0.5),
        "rownorm_unnormalized": g / row_l2,
        "spectral": (d_out / d_in) ** 0.5 * U @ Vh,
        "spectral_max": max(1.0, (d_out / d_in) ** 0.5) * U @ Vh,
    }
    for name, want in expected.items():
        torch.testing.assert_close(NORMS[name].direction(g), want, rtol=1e-9, atol=1e-12, msg=name)


def test_colnorm_and_its_normalized_variant_differ_by_the_fan_in():
    """On a head (vocab, width) the two differ by a factor width: the step of one is width-dependent."""
    for width in (64, 256, 1024):
        g = torch.randn(50, width, dtype=F64)
        ratio = NORMS["colnorm"].direction(g) / NORMS["colnorm_normalized"].direction(g)
        torch.testing.assert_close(ratio, torch.full_like(ratio, float(width)))
