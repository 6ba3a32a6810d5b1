"""The Triton Newton-Schulz kernels against plain torch.

On CPU the kernels run in Triton's interpreter (the `interpreter` fixture sets TRITON_INTERPRET=1 for
one test only; the module jits its kernels per mode at call time), in float32 and float16, which the
interpreter computes exactly (bfloat16 loads come back garbled there). Tests marked `gpu` run the
compiled kernels on CUDA, in bfloat16 too, and skip without a GPU.
"""

import functools
import importlib.util
import json
import sys
import warnings

import pytest
import torch

from optimizers import newton_schulz_triton as nst

orth = importlib.import_module("optimizers.orthogonalize")  # the module (the package exports its function)

QUINTIC = (3.4445, -4.7750, 2.0315)
# varying per-step coefficients, like Polar Express (the first triples of its table)
VARYING = [(8.1566, -22.4833, 15.8788), (4.0429, -2.8089, 0.5000), (3.8917, -2.7725, 0.5061)]

HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON:
    # Import triton now, before any test sets TRITON_INTERPRET: triton jits its own language helpers at import, in
    # the mode of that moment, and other tests in this process (inductor, the GPU tests) need them compiled. The
    # kernels under test use builtins only, so they run in the interpreter either way.
    import triton  # noqa: F401
HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")

# Interpreter results are exact fp32/fp16 arithmetic; only the summation order differs from torch's.
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3)}
SHAPES = [(33, 70), (100, 37), (64, 64), (2, 3, 40, 72)]  # wide, tall, square, batched; none a 32-multiple but one


@pytest.fixture
def interpreter(monkeypatch):
    """Run this test's Triton kernels on CPU in Triton's interpreter."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    blocked = interpreter_blocked()
    if blocked:
        pytest.skip(blocked)


NUMPY_REFUSES = "only 0-dimensional arrays can be converted to Python scalars"


@functools.cache
def interpreter_blocked() -> str | None:
    """Why Triton's interpreter cannot run the kernels here, for the one known case; None when it can. Triton
    3.6's interpreter (torch 2.11's) reads a loop bound with int() of a one-element array, which NumPy 2.4
    refuses; triton 3.9 squeezes the array first. Any other error is the test's to report, not a skip."""
    import numpy
    import triton

    try:
        nst.xxt(torch.ones(4, 8))
    except Exception as e:  # noqa: BLE001 - triton wraps it in its InterpreterError
        if NUMPY_REFUSES in str(e):
            return (f"triton {triton.__version__}'s interpreter cannot run under numpy {numpy.__version__} "
                    f"(int() of a one-element array): use numpy < 2.4 with this triton, or triton >= 3.9")
    return None


@pytest.fixture
def compiled_triton(monkeypatch):
    """Run this test's Triton kernels compiled for the GPU, whatever the caller's environment says."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def fresh_fallback(monkeypatch):
    """Start with the fallback flag cleared and restore it afterwards."""
    monkeypatch.setattr(orth, "_fallback_reason", None)


def normalized(*shape, dtype=torch.float32, seed=0):
    """A random (batch of) matrices with Frobenius norm 1, so spectral norm <= 1."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(*shape, generator=g)
    return (X / X.norm(dim=(-2, -1), keepdim=True)).to(dtype)


def gram(X):
    """fp32 X·Xᵀ, made exactly symmetric: a valid symmetric input for ba_plus_caa."""
    A = X.float() @ X.float().mT
    return (A + A.mT) / 2


def assert_close(actual, expected, dtype):
    assert actual.dtype == dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float().to(dtype).float(), **TOLERANCE[dtype])


def assert_mirrored(A):
    assert torch.equal(A, A.mT), "upper and lower triangles differ"


# ----------------------------------------------------------------------------------------------------------------------
# Kernels on CPU (interpreter)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_xxt_matches_torch(interpreter, shape, dtype):
    X = normalized(*shape, dtype=dtype)
    A = nst.xxt(X)
    assert_close(A, X.float() @ X.float().mT, dtype)
    assert_mirrored(A)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_ba_plus_caa_matches_torch(interpreter, shape, dtype):
    A = gram(normalized(*shape)).to(dtype)
    b, c = QUINTIC[1:]
    B = nst.ba_plus_caa(A, b, c)
    A32 = A.float()
    assert_close(B, b * A32 + c * (A32 @ A32), dtype)
    assert_mirrored(B)


def test_non_contiguous_inputs(interpreter):
    """Transposed and sliced views are read through their strides (equal to their contiguous copies)."""
    Y = normalized(2, 72, 40)
    big = normalized(2, 50, 90)
    for X in (Y.mT, big[:, 5:38, 3:73], big[:, ::2, 1::2], big[1, 2:35, 10:80].mT):
        assert not X.is_contiguous()
        A = nst.xxt(X)
        assert_close(A, X @ X.mT, torch.float32)
        assert_mirrored(A)
    S = gram(normalized(80, 96))
    for A in (S[10:50, 10:50], S[::2, ::2], S.expand(2, 80, 80)):
        assert not A.is_contiguous()
        B = nst.ba_plus_caa(A, -1.5, 0.5)
        assert_close(B, -1.5 * A + 0.5 * (A @ A), torch.float32)
        assert_mirrored(B)
        assert torch.equal(B, nst.ba_plus_caa(A.contiguous(), -1.5, 0.5))


def test_square_check():
    with pytest.raises(ValueError, match="square"):
        nst.ba_plus_caa(torch.zeros(3, 4), 1.0, 1.0)


@pytest.mark.parametrize("coefficients", [[QUINTIC] * 5, VARYING], ids=["quintic", "varying"])
def test_polynomial_iteration_matches_torch(interpreter, coefficients):
    X = normalized(2, 40, 72)
    Y = nst.polynomial_iteration(X, coefficients)
    torch.testing.assert_close(Y, orth.polynomial_iteration_torch(X, coefficients), rtol=1e-4, atol=1e-5)


def test_polynomial_iteration_float16_and_views(interpreter):
    """float16 in, float16 out, close to the float32 reference; 2-D and transposed inputs keep their shape."""
    X = normalized(33, 70)
    Y = nst.polynomial_iteration(X.half(), [QUINTIC] * 5)
    assert Y.dtype == torch.float16 and Y.shape == X.shape
    torch.testing.assert_close(Y.float(), orth.polynomial_iteration_torch(X, [QUINTIC] * 5), rtol=0, atol=1e-2)
    Xt = normalized(70, 33).mT
    torch.testing.assert_close(nst.polynomial_iteration(Xt, [QUINTIC] * 2),
                               orth.polynomial_iteration_torch(Xt, [QUINTIC] * 2), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Custom ops and torch.compile
# ----------------------------------------------------------------------------------------------------------------------


def test_fake_registrations_give_shapes_and_dtypes():
    """The fake (meta) kernels: what torch.compile sees, bfloat16 included; no Triton needed."""
    X = torch.empty(2, 3, 40, 72, dtype=torch.bfloat16, device="meta")
    A = nst.xxt(X)
    assert A.shape == (2, 3, 40, 40) and A.dtype == torch.bfloat16 and A.device.type == "meta"
    B = nst.ba_plus_caa(A, -4.775, 2.0315)
    assert B.shape == A.shape and B.dtype == torch.bfloat16
    Y = nst.polynomial_iteration(X, [QUINTIC] * 5)
    assert Y.shape == X.shape and Y.dtype == torch.bfloat16


def test_custom_ops_pass_opcheck(interpreter):
    X = normalized(2, 40, 72)
    A = gram(X)
    torch.library.opcheck(nst._xxt_op, (X,))
    torch.library.opcheck(nst._ba_plus_caa_op, (A, -4.775, 2.0315))


def test_torch_compile_on_cpu_interpreter(interpreter):
    def orthogonalize(G):
        X = G / G.norm(dim=(-2, -1), keepdim=True)
        return nst.polynomial_iteration(X, [QUINTIC] * 3)

    torch._dynamo.reset()
    G = torch.randn(2, 40, 72, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(torch.compile(orthogonalize)(G), orthogonalize(G), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Backend choice and fallback
# ----------------------------------------------------------------------------------------------------------------------


def test_triton_available_reasons(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ok, why = nst.triton_available()
    assert ok == HAS_TRITON and (("interpreter" in why) if ok else ("pip install triton" in why))
    monkeypatch.delenv("TRITON_INTERPRET")
    if HAS_TRITON and not HAS_CUDA:
        ok, why = nst.triton_available()
        assert not ok and "no CUDA device" in why
    monkeypatch.setattr(nst, "triton", None)
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    ok, why = nst.triton_available()
    assert not ok and "pip install triton" in why


def test_backend_torch_and_auto_on_cpu_use_torch(monkeypatch, fresh_fallback):
    def boom(*args, **kwargs):
        raise AssertionError("the Triton path must not run")

    monkeypatch.setattr(nst, "polynomial_iteration", boom)
    X = normalized(33, 70)
    expected = orth.polynomial_iteration_torch(X, [QUINTIC] * 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for backend in ("torch", "auto"):
            assert torch.equal(orth.iterate(X, [QUINTIC] * 5, backend=backend), expected)
    with pytest.raises(ValueError, match="backend"):
        orth.iterate(X, [QUINTIC], backend="cuda")


def test_backend_triton_on_cpu_interpreter(interpreter):
    X = normalized(33, 70)
    torch.testing.assert_close(orth.iterate(X, [QUINTIC] * 2, backend="triton"),
                               orth.polynomial_iteration_torch(X, [QUINTIC] * 2), rtol=1e-4, atol=1e-5)


def test_backend_triton_unavailable_raises(monkeypatch):
    monkeypatch.setattr(nst, "triton_available", lambda: (False, "triton is not installed (simulated)"))
    with pytest.raises(RuntimeError, match="backend='triton'.*simulated"):
        orth.iterate(normalized(8, 16), [QUINTIC], backend="triton")
    if HAS_TRITON and not HAS_CUDA:  # the real thing: no GPU and no interpreter
        monkeypatch.undo()
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(RuntimeError, match="no CUDA device"):
            orth.iterate(normalized(8, 16), [QUINTIC], backend="triton")


def test_auto_falls_back_once_when_a_kernel_fails(interpreter, monkeypatch, fresh_fallback):
    """A failing kernel: one warning naming the error, the torch result, and no retry afterwards."""
    calls = []

    def failing_xxt(X):
        calls.append(1)
        raise RuntimeError("simulated launch failure")

    monkeypatch.setattr(orth, "_triton_device", lambda X: True)  # pretend X is on a GPU
    monkeypatch.setattr(nst, "xxt", failing_xxt)
    X = normalized(2, 16, 24)
    expected = orth.polynomial_iteration_torch(X, [QUINTIC] * 5)
    with pytest.warns(RuntimeWarning, match="simulated launch failure") as record:
        assert torch.equal(orth.iterate(X, [QUINTIC] * 5), expected)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(orth.iterate(X, [QUINTIC] * 5), expected)
    assert len(calls) == 1


def test_auto_falls_back_once_when_triton_is_missing(monkeypatch, fresh_fallback):
    monkeypatch.setattr(orth, "_triton_device", lambda X: True)
    monkeypatch.setattr(nst, "triton_available", lambda: (False, "triton is not installed (simulated)"))
    X = normalized(16, 24)
    expected = orth.polynomial_iteration_torch(X, [QUINTIC] * 5)
    with pytest.warns(RuntimeWarning, match="not installed"):
        assert torch.equal(orth.iterate(X, [QUINTIC] * 5), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(orth.iterate(X, [QUINTIC] * 5), expected)


# ----------------------------------------------------------------------------------------------------------------------
# Benchmark script (smoke)
# ----------------------------------------------------------------------------------------------------------------------


def test_bench_quick_writes_json(interpreter, tmp_path):
    from scripts.bench import newton_schulz as bench_newton_schulz

    out = tmp_path / "bench.json"
    result = bench_newton_schulz.main(["--quick", "--variants=torch,triton", "--shapes=2x32x48,1x40x24",
                                       "--steps=2", "--warmup=0", "--repeats=1", f"--out={out}"])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert [row["shape"] for row in saved["rows"]] == [[2, 32, 48], [1, 40, 24]]
    for row in saved["rows"]:
        assert row["torch_ms"] > 0 and row["triton_ms"] > 0 and row["speedup_triton_vs_torch"] > 0
        assert row["triton_max_abs_diff_vs_torch"] < 1e-4
    assert bench_newton_schulz.dense_flops((12, 3072, 768), 5) == 12 * 5 * (4 * 768 * 768 * 3072 + 2 * 768**3)


# ----------------------------------------------------------------------------------------------------------------------
# GPU (compiled kernels, bfloat16)
# ----------------------------------------------------------------------------------------------------------------------

# Cut to what runs in training and what catches masking bugs (each case autotunes its kernels: seconds on a
# cold cache): bf16, the dtype Muon uses, at the 124M model's wide shape, a batch of odd sizes and a shape
# below one tile; fp16 and fp32 at the wide shape only.
GPU_CASES = [((768, 3072), torch.bfloat16), ((3, 256, 320), torch.bfloat16), ((100, 37), torch.bfloat16),
             ((768, 3072), torch.float16), ((768, 3072), torch.float32)]


@pytest.mark.parametrize("shape, dtype", GPU_CASES)
@pytest.mark.usefixtures("compiled_triton")
@pytest.mark.gpu
@needs_gpu
def test_gpu_kernels_close_to_fp32_and_mirrored(shape, dtype):
    """Each product, from the same low-precision inputs, within 1% of the largest entry of the fp32
    result (one bf16 rounding is 0.4%), and exactly symmetric."""
    X = normalized(*shape).cuda().to(dtype)
    A = nst.xxt(X)
    A_ref = X.float() @ X.float().mT
    assert_mirrored(A)
    torch.testing.assert_close(A.float(), A_ref, rtol=0, atol=1e-2 * A_ref.abs().max().item())
    b, c = QUINTIC[1:]
    B = nst.ba_plus_caa(A, b, c)
    B_ref = b * A.float() + c * (A.float() @ A.float())
    assert_mirrored(B)
    torch.testing.assert_close(B.float(), B_ref, rtol=0, atol=1e-2 * B_ref.abs().max().item())


@pytest.mark.parametrize("shape", [(768, 3072), (3072, 768)])
@pytest.mark.usefixtures("compiled_triton")
@pytest.mark.gpu
@needs_gpu
def test_gpu_bf16_iteration_as_accurate_as_torch_bf16(shape):
    """Five bf16 quintic steps: relative Frobenius error against the fp32 torch iteration below 5%, and
    at most 1.5× the error of torch's own bf16 iteration (plus 0.5%)."""
    X = normalized(*shape).cuda()
    if X.size(-2) > X.size(-1):
        X = X.mT
    reference = orth.polynomial_iteration_torch(X, [QUINTIC] * 5)

    def relative_error(Z):
        return ((Z.float() - reference).norm() / reference.norm()).item()

    torch_error = relative_error(orth.polynomial_iteration_torch(X.bfloat16(), [QUINTIC] * 5))
    Y = nst.polynomial_iteration(X.bfloat16(), [QUINTIC] * 5)
    assert Y.dtype == torch.bfloat16 and Y.shape == X.shape
    error = relative_error(Y)
    assert error < 0.05 and error <= 1.5 * torch_error + 0.005, (error, torch_error)
    assert torch.equal(orth.iterate(X.bfloat16(), [QUINTIC] * 5),
                       nst.polynomial_iteration(X.bfloat16(), [QUINTIC] * 5))


@pytest.mark.usefixtures("compiled_triton")
@pytest.mark.gpu
@needs_gpu
def test_gpu_torch_compile():
    def orthogonalize(G):
        X = G / G.norm(dim=(-2, -1), keepdim=True)
        return nst.polynomial_iteration(X, [QUINTIC] * 5)

    torch._dynamo.reset()
    G = torch.randn(12, 768, 3072, device="cuda", dtype=torch.bfloat16)
    expected = orthogonalize(G).float()  # compiled normalization may round differently: compare loosely
    actual = torch.compile(orthogonalize)(G).float()
    torch.testing.assert_close(actual, expected, rtol=0, atol=2e-2 * expected.abs().max().item())


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express"])
@pytest.mark.parametrize("shape", [(40, 72), (72, 40), (2, 3, 33, 70)])
def test_library_orthogonalize_through_the_kernels_equals_torch(interpreter, method, shape):
    """optimizers.orthogonalize(..., backend="triton") (transpose, normalize, iterate on the kernels)
    equals the torch backend, in fp32 and fp16."""
    from optimizers import orthogonalize

    G = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-2)):
        ours = orthogonalize(G, method, backend="triton", dtype=dtype)
        ref = orthogonalize(G, method, backend="torch", dtype=dtype)
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_muon_step_through_the_kernels_equals_torch(interpreter):
    from optimizers import Muon

    ps = [torch.nn.Parameter(torch.randn(24, 40, generator=torch.Generator().manual_seed(i))) for i in range(2)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for p, q in zip(ps, qs):
        p.grad = q.grad = torch.randn(24, 40)
    Muon(ps, lr=0.1, backend="triton").step()
    Muon(qs, lr=0.1, backend="torch").step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
