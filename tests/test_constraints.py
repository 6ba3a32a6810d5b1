"""Weight-norm constraints against the SVD: each method on random matrices with a known spectrum (square,
wide, tall, batched), the matrix-free iterations against the exact map of the singular values.

Tolerances, β = max_norm (float64 unless the test says otherwise):
  power iteration, normalization, hammer   1e-9 relative, once the power iteration has converged
  soft cap                                 singular values equal f(σ) within 1e-9; σ <= β/2 moves by at most
                                           its leading term 3α²σ⁵/β⁴ (< 0.72% of σ for any admissible k)
  hard cap                                 |σ' − min(σ, β)| <= 1e-6·β for σ at least 1% away from β (1e-5 in
                                           float32); σ' <= β(1 + 1e-4) for every σ, also within 0.03% of β;
                                           bfloat16 (the CUDA default): σ' <= β(1 + 1e-2)
  hyperball                                Frobenius norm equal to the initial one within 1e-12
  inside the ball                          normalization and hard cap: bitwise; hard cap with skip_squarings = 0:
                                           within 1e-6·β
"""

import math

import pytest
import torch

from optimizers.constraint_methods import (
    power_iteration,
    soft_cap_alpha,
    spectral_hammer,
    spectral_hard_cap,
    spectral_normalize,
    spectral_soft_cap,
    start_vectors,
)
from optimizers.constraints import CONSTRAINTS, ConstraintSettings, ConstraintState, apply_constraint

F64 = torch.float64
SHAPES = [(40, 40), (24, 56), (56, 24), (3, 32, 48)]
CONVERGED = ConstraintSettings(power_iters=100)  # top two singular values 1 : 0.8, so the error ~ 0.8^200 ~ 4e-20
ids = lambda s: "x".join(map(str, s))  # noqa: E731


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The matrices here are small: one thread is faster than several on a loaded machine (seen: 100 power
    iterations on 3x32x48 take 8 ms on one thread and 2.4 s on two threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def with_spectrum(shape, s, seed=0):
    """Matrices U diag(s) Vᵀ with random singular vectors; s (k,) with k = min(m, n), shared by the batch."""
    g = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(*batch, m, k, generator=g, dtype=F64))[0]
    V = torch.linalg.qr(torch.randn(*batch, n, k, generator=g, dtype=F64))[0]
    return U @ torch.diag_embed(s.to(F64).expand(*batch, k)) @ V.mT


def spectrum(shape, top, gap=0.8, lo=1e-3):
    """σ_max = top, σ_2 = gap·top, the rest log-spaced from σ_2 down to lo·top."""
    k = min(shape[-2:])
    rest = torch.logspace(math.log10(gap), math.log10(lo), k - 1, dtype=F64)
    return top * torch.cat([torch.ones(1, dtype=F64), rest])


def svals(W):
    return torch.linalg.svdvals(W.double())


def test_registry_names_every_method_of_the_issue():
    assert set(CONSTRAINTS) == {"none", "spectral_normalize", "spectral_hammer", "spectral_soft_cap",
                                "spectral_hard_cap", "hyperball"}


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_power_iteration_finds_the_top_singular_triple(shape):
    W = with_spectrum(shape, spectrum(shape, top=2.0))
    sigma, u, v = power_iteration(W, start_vectors(W), 100)
    U, S, Vh = torch.linalg.svd(W)
    assert torch.allclose(sigma, S[..., 0], rtol=1e-12)
    assert torch.allclose((u * U[..., :, 0]).sum(-1).abs(), torch.ones_like(sigma), atol=1e-12)
    assert torch.allclose((v * Vh[..., 0, :]).sum(-1).abs(), torch.ones_like(sigma), atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_spectral_normalize_divides_by_max_one_sigma_over_beta(shape):
    beta = 0.7
    W = with_spectrum(shape, spectrum(shape, top=2.0))
    ref = W / max(1.0, 2.0 / beta)  # every matrix of the batch has σ_max = 2
    P = W.clone()
    apply_constraint("spectral_normalize", [P], beta, ConstraintState(), settings=CONVERGED)
    assert torch.allclose(P, ref, rtol=0, atol=1e-12)
    assert svals(P).max() <= beta * (1 + 1e-9)


def test_power_vectors_persist_between_calls():
    """A second call on (a copy of) the same matrix starts from the stored vector: one iteration is then
    exact, where one iteration from the random start is far off. The state knows a weight by its memory, so
    the parameter, its .data and .detach() are the same weight."""
    beta, shape = 1.0, (48, 48)
    W = with_spectrum(shape, spectrum(shape, top=3.0))
    ref = W / 3.0
    warm, P, Q = ConstraintState(), torch.nn.Parameter(W.clone()), W.clone()
    apply_constraint("spectral_normalize", [P], beta, warm, settings=CONVERGED)
    P.data.copy_(W)  # the same parameter, back at its old value
    one = ConstraintSettings(power_iters=1, power_iters_warm=1)
    apply_constraint("spectral_normalize", [P.detach()], beta, warm, settings=one)  # a view finds it too
    apply_constraint("spectral_normalize", [Q], beta, ConstraintState(), settings=one)
    assert (P - ref).abs().max() < 1e-12
    assert (Q - ref).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["spectral_normalize", "spectral_hard_cap"])
@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_matrices_inside_the_ball_are_left_bitwise_alone(method, shape):
    W = with_spectrum(shape, spectrum(shape, top=0.9))
    P = W.clone()
    apply_constraint(method, [P], 1.0, ConstraintState())
    assert torch.equal(P, W)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_hard_cap_iteration_is_a_no_op_inside_the_ball(shape, dtype):
    """Without the skip (skip_squarings = 0) the sign iteration itself leaves a matrix inside the ball alone,
    also just below β."""
    W = with_spectrum(shape, spectrum(shape, top=0.999, gap=0.99)).to(dtype)
    P = W.clone()
    apply_constraint("spectral_hard_cap", [P], 1.0, ConstraintState(), settings=ConstraintSettings(skip_squarings=0))
    assert (P - W).abs().max() <= 1e-6


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_hammer_sets_only_the_top_singular_value_to_beta(shape):
    beta = 1.5
    W = with_spectrum(shape, spectrum(shape, top=4.0))
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    P = W.clone()
    apply_constraint("spectral_hammer", [P], beta, ConstraintState(), settings=CONVERGED)
    S_ref = S.clone()
    S_ref[..., 0] = beta
    assert torch.allclose(P, U @ torch.diag_embed(S_ref) @ Vh, rtol=0, atol=1e-10)  # same vectors, one value moved


def test_hammer_formula_with_exact_singular_vectors():
    W = with_spectrum((30, 20), spectrum((30, 20), top=0.5))
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    out = spectral_hammer(W, 2.0, S[0], U[:, 0], Vh[0])  # raises a top value below β up to β, as in the paper
    assert torch.allclose(svals(out), torch.cat([torch.tensor([2.0], dtype=F64), S[1:]]).sort(descending=True)[0])


def soft_cap_map(s, alpha):
    g = s - alpha * s**3
    return g + alpha * g**3


@pytest.mark.parametrize("k", [1.01, 1.1, 1.3, 81 / 62])
def test_soft_cap_alpha_takes_k_to_one_monotonically(k):
    alpha = soft_cap_alpha(k)
    assert abs(soft_cap_map(torch.tensor(k, dtype=F64), alpha) - 1) < 1e-12
    s = torch.linspace(0, k, 20001, dtype=F64)
    f = soft_cap_map(s, alpha)
    assert (f.diff() >= 0).all() and f.max() <= 1 + 1e-12


def test_soft_cap_alpha_refuses_what_no_monotone_cap_can_do():
    assert soft_cap_alpha(1.0) == 0.0
    with pytest.raises(ValueError, match="max_update / max_norm"):
        soft_cap_alpha(1.4)


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_soft_cap_maps_each_singular_value_through_its_polynomial(shape):
    beta, k = 2.0, 1.2
    alpha = soft_cap_alpha(k)
    s = torch.linspace(k, 0.0, min(shape[-2:]), dtype=F64)  # from k·β (to exactly β) down to 0
    W = with_spectrum(shape, beta * s)
    out = spectral_soft_cap(W, beta, alpha)
    assert torch.allclose(svals(out), beta * soft_cap_map(s, alpha), rtol=0, atol=1e-9)
    assert svals(out).max() <= beta * (1 + 1e-9)
    assert abs(svals(out).max() - beta) < 1e-9  # σ = k·β lands on β
    small = s <= 0.5
    moved = (beta * s - svals(out)).abs()[..., small]
    assert (moved <= 3 * alpha**2 * beta * s[small] ** 5 + 1e-12).all()
    assert (moved <= 0.0072 * beta * s[small] + 1e-12).all()  # 3α²/16 with the largest α, 0.1953


def test_soft_cap_through_apply_brings_far_above_down_to_beta():
    """A matrix far outside the ball (5β) is first normalized to k·β, then capped to β; the small singular
    values move by about 3α²σ⁵ relative to the normalized matrix."""
    beta, max_update = 1.0, 0.1
    shape = (3, 32, 48)
    W = with_spectrum(shape, spectrum(shape, top=5.0))
    P = W.clone()
    apply_constraint("spectral_soft_cap", [P], beta, ConstraintState(), max_update=max_update, settings=CONVERGED)
    top = svals(P)[..., 0]
    assert torch.allclose(top, torch.full_like(top, beta), atol=1e-9)
    alpha, scale = soft_cap_alpha(1 + max_update / beta), 5.0 / 1.1
    assert torch.allclose(svals(P), soft_cap_map(svals(W) / scale, alpha), atol=1e-9)


def test_soft_cap_needs_max_update():
    with pytest.raises(ValueError, match="max_update"):
        apply_constraint("spectral_soft_cap", [torch.eye(4, dtype=F64)], 1.0, ConstraintState())


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_hard_cap_is_min_sigma_beta(shape, dtype, tol):
    beta = 0.5
    k = min(shape[-2:])
    s = torch.logspace(math.log10(4.0), -3, k, dtype=F64)  # 4β .. 1e-3β
    s = s[(s - 1).abs() >= 0.01]  # at least 1% away from β
    s = torch.cat([s, torch.zeros(k - len(s), dtype=F64)])  # rank-deficient
    W = with_spectrum(shape, beta * s).to(dtype)
    out = spectral_hard_cap(W, beta)
    assert out.dtype == dtype
    assert (svals(out) - beta * s.clamp(max=1)).abs().max() <= tol * beta


@pytest.mark.parametrize("shape", [(64, 64), (48, 96)], ids=ids)
def test_hard_cap_close_to_beta_stays_between_sigma_and_beta(shape):
    """Where the sign iteration cannot resolve σ from β, σ' lies between σ and β: values above β end in
    [β, σ] and below β(1 + 1e-4), values below β in [σ, β], each up to the 1e-6·β of the iterations (the
    polish overshoots 1 slightly, so a value may end ~1e-7 past its interval)."""
    beta = 1.0
    near = torch.tensor([1.2, 1.01, 1.003, 1.001, 1.0003, 0.9997, 0.999], dtype=F64)
    s = torch.cat([near, torch.linspace(0.9, 0.01, min(shape) - len(near), dtype=F64)])
    out = svals(spectral_hard_cap(with_spectrum(shape, s), beta))  # sorted; the two groups keep their order
    above = int((s > beta).sum())
    assert (out[:above] >= beta * (1 - 1e-6)).all() and (out[:above] <= s[:above] + 1e-9).all()
    assert out.max() <= beta * (1 + 1e-4)
    assert (out[above:] >= s[above:] - 1e-6 * beta).all() and (out[above:] <= beta + 1e-9).all()


def test_hard_cap_in_bfloat16():
    W = with_spectrum((32, 48), torch.logspace(0.5, -2, 32, dtype=F64)).float()
    out = spectral_hard_cap(W, 1.0, dtype="bfloat16")
    assert out.dtype == torch.float32 and svals(out).max() <= 1.01


def test_hyperball_keeps_the_initial_frobenius_norm_of_each_matrix():
    g = torch.Generator().manual_seed(1)
    qkv, mlp = torch.randn(3, 16, 16, generator=g, dtype=F64), torch.randn(64, 16, generator=g, dtype=F64)
    r0 = qkv.norm(dim=(-2, -1)), mlp.norm()
    state = ConstraintState()
    apply_constraint("hyperball", [qkv, mlp], 0.0, state)  # records the radii, changes nothing
    assert torch.allclose(qkv.norm(dim=(-2, -1)), r0[0], rtol=1e-14)
    qkv.mul_(torch.tensor([2.0, 0.5, 3.0], dtype=F64)[:, None, None]).add_(0.1)
    mlp.add_(torch.randn(64, 16, generator=g, dtype=F64))
    apply_constraint("hyperball", [qkv, mlp], 0.0, state)
    assert torch.allclose(qkv.norm(dim=(-2, -1)), r0[0], rtol=1e-12)
    assert torch.allclose(mlp.norm(), r0[1], rtol=1e-12)


def test_hyperball_refuses_zero_initial_matrices():
    with pytest.raises(ValueError, match="hyperball"):
        apply_constraint("hyperball", [torch.zeros(4, 4)], 0.0, ConstraintState())


def test_apply_constrains_each_matrix_of_each_shape_in_place():
    """A role's list: merged QKV (3, d, d), an output projection (d, d), MLP matrices (4d, d) and (d, 4d);
    every matrix of every shape ends inside the ball, in the parameters' own storage."""
    d, beta = 16, 1.0
    params = [torch.nn.Parameter(with_spectrum(shape, spectrum(shape, top=t), seed=i).float())
              for i, (shape, t) in enumerate([((3, d, d), 3.0), ((d, d), 2.0), ((4 * d, d), 1.5), ((d, 4 * d), 0.5)])]
    ptrs = [p.data_ptr() for p in params]
    state = ConstraintState()
    apply_constraint("spectral_hard_cap", params, beta, state)
    assert [p.data_ptr() for p in params] == ptrs
    for p in params:
        assert p.dtype == torch.float32 and svals(p.detach()).max() <= beta * (1 + 1e-4)
    assert not state.vectors  # the hard cap decides with a certified bound: no power iteration to keep
    apply_constraint("spectral_normalize", params, beta, state)
    assert state.vectors[params[0].data_ptr(), (3, d, d)].shape == (3, d)
    assert len(state.vectors) == 4


def test_shape_scaled_bounds_the_rms_to_rms_norm():
    W = with_spectrum((64, 16), spectrum((64, 16), top=5.0)).float()
    apply_constraint("spectral_hard_cap", [W], 1.0, ConstraintState(), settings=ConstraintSettings(shape_scaled=True))
    assert abs(svals(W).max() - math.sqrt(64 / 16)) < 1e-4


def test_none_changes_nothing_and_bad_settings_name_their_key():
    W = torch.randn(8, 8)
    P = W.clone()
    apply_constraint("none", [P], 1.0, ConstraintState())
    assert torch.equal(P, W)
    with pytest.raises(ValueError, match="constraint.method 'spectral_clip' is not one of"):
        apply_constraint("spectral_clip", [P], 1.0, ConstraintState())
    with pytest.raises(ValueError, match="constraint.max_norm"):
        apply_constraint("spectral_normalize", [P], 0.0, ConstraintState())
    with pytest.raises(ValueError, match="constraint.dtype"):
        apply_constraint("spectral_hard_cap", [P], 1.0, ConstraintState(), settings=ConstraintSettings(dtype="fp8"))


def test_state_dict_round_trip_restores_the_vectors_and_radii():
    params = [torch.randn(3, 8, 8), torch.randn(8, 8)]
    state = ConstraintState()
    apply_constraint("spectral_normalize", params, 1.0, state)
    apply_constraint("hyperball", params, 1.0, state)
    saved = state.state_dict(params)
    clones = [p.clone() for p in params]
    restored = ConstraintState()
    restored.load_state_dict(clones, saved)
    for p, q in zip(params, clones):
        key_p, key_q = (p.data_ptr(), tuple(p.shape)), (q.data_ptr(), tuple(q.shape))
        assert torch.equal(restored.vectors[key_q], state.vectors[key_p])
        assert torch.equal(restored.radii[key_q], state.radii[key_p])


def test_normalize_formula_with_exact_sigma_keeps_bits_inside():
    W = torch.randn(5, 7)
    assert torch.equal(spectral_normalize(W, 10.0, torch.tensor(3.0)), W)
    assert torch.allclose(spectral_normalize(W, 1.0, torch.tensor(4.0)), W / 4)


def test_bench_constraints_times_every_method_next_to_muon_and_writes_json(tmp_path):
    import json

    from scripts.bench import constraints as bench_constraints
    from tests.test_train import SMOKE, TINY

    out = tmp_path / "constraints.json"
    result = bench_constraints.main(["--config", SMOKE, "--warmup=0", "--repeat=1", f"--out={out}", *TINY])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["device"] == "cpu" and saved["muon"]["step_ms"] > 0
    assert sorted(saved["constraints"]) == sorted(m for m in CONSTRAINTS if m != "none")
    assert saved["matrices"] == 2 * (3 + 1 + 2)  # depth 2: QKV (3 matrices), output, MLP in and out
    for r in saved["constraints"].values():
        assert r["ms"] > 0 and r["ratio_to_muon_step"] > 0


# ---------------------------------------------------------------------------------------------------------------------
# The hard cap cannot be fooled, its polish never overshoots (issue 25)


def test_the_hard_cap_is_not_fooled_when_the_top_direction_turns():
    """A matrix whose stored power vector points at an old top direction (σ 0.9) while a new direction has grown
    to σ 1.1: the warm power iteration (2 steps from the stored vector) still reads about 0.9, but the skip
    decision rests on a certified upper bound, so the matrix is capped: σ_max <= β after the constraint. (With
    the former skip on σ̂ <= 0.95 β the matrix kept its bits and σ_max stayed 1.1.)"""
    m = n = 48
    U = torch.linalg.qr(torch.randn(m, m, generator=torch.Generator().manual_seed(1), dtype=F64))[0]
    V = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(2), dtype=F64))[0]
    s = torch.full((n,), 0.1, dtype=F64)
    s[0], s[1] = 0.9, 1.1  # the old top direction (0.9) and a new one that grew past β
    P = U @ torch.diag(s) @ V.mT
    state = ConstraintState()
    state.vectors[(P.data_ptr(), tuple(P.shape))] = V[:, 0].clone()  # what earlier steps' iterations learned
    assert power_iteration(P, V[:, 0], 2)[0].item() < 0.95  # what the former skip test trusted
    apply_constraint("spectral_hard_cap", [P], 1.0, state)
    assert torch.linalg.matrix_norm(P, ord=2).item() <= 1.0 + 1e-6


@pytest.mark.parametrize("squarings", [0, 1, 2, 4, 6])
def test_the_certified_bound_is_an_upper_bound_and_tightens_with_squarings(squarings):
    from optimizers.constraint_methods import certified_spectral_bound

    shape = (3, 40, 64)
    W = with_spectrum(shape, spectrum(shape, top=2.0, gap=0.95))
    exact = torch.linalg.matrix_norm(W, ord=2)
    bound = certified_spectral_bound(W, squarings)
    assert (bound >= exact).all()
    assert (bound <= exact * 40 ** (1 / 2 ** (squarings + 1)) * (1 + 1e-6)).all()  # within rank^(1/2^(k+1))


def test_a_matrix_certified_inside_keeps_its_bits_and_one_near_beta_is_capped_exactly():
    shape = (40, 40)
    inside = with_spectrum(shape, spectrum(shape, top=0.5, gap=0.9))
    P = inside.clone()
    apply_constraint("spectral_hard_cap", [P], 1.0, ConstraintState())
    assert torch.equal(P, inside)
    near = with_spectrum(shape, spectrum(shape, top=0.99, gap=0.999))  # inside, but not certifiable
    P = near.clone()
    apply_constraint("spectral_hard_cap", [P], 1.0, ConstraintState())
    assert (P - near).abs().max() <= 1e-6 and torch.linalg.matrix_norm(P, ord=2) <= 1.0


def test_the_polish_converges_to_one_from_both_sides_faster_than_the_modular_quintic():
    """The hard cap's sign and polar iterations end with monotone-quintic steps (p' = p'' = 0 at 1: cubic
    convergence from both sides). Above β the cap leaves σ' = the polar factor's singular value, so what the
    polish leaves above 1 is what σ_max exceeds β by. Measured on the scalar map after Polar Express, for inputs
    in [1e-3, 1]/1.02, after 1, 2, 3 polish steps: monotone max |p − 1| = 8.0e-3, 1.3e-6, 4e-16 (above 1 by at
    most 7.8e-3, 1.2e-6); the former modular quintic (p''(1) = 1: quadratic) 2.1e-2, 2.5e-4, 3.1e-8, and it leaves
    every value at or above 1."""
    from optimizers.constraint_methods import sign_coefficients
    from optimizers.orthogonalize import coefficients

    s = torch.logspace(-3, 0, 20001, dtype=F64) / 1.02

    def image(coeffs):
        x = s.clone()
        for a, b, c in coeffs:
            x = a * x + b * x**3 + c * x**5
        return x

    ours = image(sign_coefficients(3))
    old = image(coefficients("polar_express") + coefficients("modular_quintic", 3))
    assert (ours - 1).abs().max() < 1e-12
    assert old.max() - 1 > 1e-8 and old.min() >= 1 - 1e-15  # above β by up to 3e-8, never below
    for steps, bound in ((1, 1e-2), (2, 2e-6)):
        assert (image(sign_coefficients(steps)) - 1).abs().max() < bound
