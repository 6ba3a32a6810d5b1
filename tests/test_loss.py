"""The chunked loss (model/loss.py) against the plain full-logits computation, and its memory bound."""

import pytest
import torch
import torch.nn.functional as F

from model.loss import ChunkedCrossEntropy, Head, cross_entropy, softcap, softcap_slope

CAPS = [(0.0, "tanh"), (15.0, "tanh"), (15.0, "algebraic"), (3.0, "algebraic")]


def reference_loss(x, weight, bias, targets, cap, kind):
    """Plain full-logits loss, written out: logits, the cap by its formula, log-sum-exp minus the
    target's logit, mean over tokens."""
    z = x @ weight.T + (bias if bias is not None else 0)
    if cap > 0:
        z = cap * torch.tanh(z / cap) if kind == "tanh" else cap * z / torch.sqrt(z**2 + cap**2)
    return (torch.logsumexp(z, dim=-1) - z.gather(-1, targets[:, None])[:, 0]).mean()


def problem(n=300, width=24, vocab=97, bias=True, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g, dtype=torch.float64, requires_grad=True)
    w = (scale * torch.randn(vocab, width, generator=g, dtype=torch.float64) / width**0.5).requires_grad_()
    b = torch.randn(vocab, generator=g, dtype=torch.float64).requires_grad_() if bias else None
    t = torch.randint(0, vocab, (n,), generator=g)
    return x, w, b, t


def grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def test_algebraic_cap_is_the_track3_formula():
    z = torch.tensor([-1e4, -30.0, -15.0, -1.0, 0.0, 0.5, 15.0, 30.0, 1e4], dtype=torch.float64)
    y = softcap(z, 15.0, "algebraic")
    torch.testing.assert_close(y, 15 * z / torch.sqrt(z**2 + 225), rtol=1e-15, atol=0)
    assert y.abs().max() < 15 and y[4] == 0
    torch.testing.assert_close(y[6], torch.tensor(15 / 2**0.5, dtype=torch.float64))  # z = c: c/sqrt(2)
    assert not torch.allclose(y, softcap(z, 15.0, "tanh"))  # not the tanh cap
    torch.testing.assert_close(softcap(z, 15.0, "tanh"), 15 * torch.tanh(z / 15))
    assert softcap(z, 0.0, "algebraic") is z  # cap 0: off


@pytest.mark.parametrize("cap,kind", CAPS[1:])
def test_softcap_slope_is_the_derivative(cap, kind):
    z = torch.linspace(-60, 60, 241, dtype=torch.float64, requires_grad=True)
    y = softcap(z, cap, kind)
    (dz,) = torch.autograd.grad(y.sum(), z)
    torch.testing.assert_close(softcap_slope(y.detach(), cap, kind), dz, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cap,kind", CAPS)
@pytest.mark.parametrize("chunk", [64, 100, 299])
def test_chunked_loss_and_gradients_equal_the_plain_computation(cap, kind, chunk):
    x, w, b, t = problem()
    ref = reference_loss(x, w, b, t, cap, kind)
    out = cross_entropy(x, w, b, t, cap, kind, chunk)  # 300 tokens > chunk: the autograd.Function
    assert out.grad_fn is not None and "ChunkedCrossEntropy" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
    # an upstream gradient other than 1 (the trainer's 1 / accumulation steps) scales every gradient
    for got, want in zip(grads(0.37 * out, (x, w, b)), grads(0.37 * ref, (x, w, b))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_without_bias_and_with_plain_path():
    x, w, _, t = problem(bias=False)
    for chunk in (32, 300, 10_000):  # chunked; exactly N tokens and more: the plain path
        ref = reference_loss(x, w, None, t, 15.0, "algebraic")
        out = cross_entropy(x, w, None, t, 15.0, "algebraic", chunk)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
        for got, want in zip(grads(out, (x, w)), grads(ref, (x, w))):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_validation_path_without_gradients():
    x, w, b, t = problem()
    ref = reference_loss(x, w, b, t, 15.0, "tanh")
    with torch.no_grad():
        out = cross_entropy(x, w, b, t, 15.0, "tanh", 64)
    assert out.grad_fn is None
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("chunk", [1000, 64, 7])  # the plain path, and chunks that do and do not divide the tokens
def test_validation_accuracy_is_the_top1_rate(chunk):
    """val_accuracy (issue 15): the fraction of tokens whose largest logit is the target."""
    x, w, b, t = problem(scale=6.0)
    t[:100] = (x[:100] @ w.T + b).argmax(-1)  # a third of the tokens predicted right, the rest mostly not
    expected = ((x @ w.T + b).argmax(-1) == t).double().mean()
    with torch.no_grad():
        loss, acc = cross_entropy(x, w, b, t, 15.0, "algebraic", chunk, accuracy=True)
    assert acc == expected and 0.3 < acc < 0.5
    torch.testing.assert_close(loss, reference_loss(x, w, b, t, 15.0, "algebraic").detach(), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="without gradients"):
        cross_entropy(x, w, b, t, 15.0, "tanh", 7, accuracy=True)


def test_fp8_head_training_path_follows_the_full_precision_loss():
    """model.fp8_head (issue 13): the training matmuls in float8 with the record's scales (CPU: torch's
    reference implementation of _scaled_mm). Loss within fp8 rounding, gradients pointing the same way;
    validation (no gradients) does not use fp8."""
    g = torch.Generator().manual_seed(0)
    n, width, vocab = 512, 64, 256
    x = F.rms_norm(torch.randn(n, width, generator=g), (width,)).requires_grad_()
    w = (0.05 * torch.randn(vocab, width, generator=g)).requires_grad_()
    t = torch.randint(0, vocab, (n,), generator=g)
    ref = cross_entropy(x, w, None, t, 15.0, "tanh", 128)
    ref_grads = torch.autograd.grad(ref, (x, w))
    out = cross_entropy(x, w, None, t, 15.0, "tanh", 128, use_fp8=True)
    out_grads = torch.autograd.grad(out, (x, w))
    assert out.item() == pytest.approx(ref.item(), rel=2e-3) and out.item() != ref.item()
    for a, b in zip(out_grads, ref_grads):
        cos = F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0)
        assert cos > 0.99 and (a - b).norm() / b.norm() < 0.1
    with torch.no_grad():
        assert cross_entropy(x, w, None, t, 15.0, "tanh", 128, use_fp8=True) == cross_entropy(x, w, None, t, 15.0, "tanh", 128)


def test_head_batches_and_plain_path_unchanged():
    """Head(x, targets) on (B, T, width): the same loss through both paths; up to `chunk` tokens it is
    bitwise the plain computation of the speedrun model (head, fp32 cap, F.cross_entropy)."""
    torch.manual_seed(0)
    head = Head(16, 64, bias=True, cap=15.0, cap_kind="tanh", chunk=1024)
    with torch.no_grad():
        head.weight.normal_()
        head.bias.normal_()
    x, t = torch.randn(2, 50, 16), torch.randint(0, 64, (2, 50))
    logits = 15.0 * torch.tanh(F.linear(x, head.weight, head.bias) / 15.0)
    assert torch.equal(head(x, t), F.cross_entropy(logits.view(-1, 64), t.reshape(-1)))
    assert torch.equal(head(x), logits)
    head.chunk = 7
    torch.testing.assert_close(head(x, t), F.cross_entropy(logits.view(-1, 64), t.reshape(-1)))


# ----------------------------------------------------------------------------------------------
# memory: the peak of live tensor bytes, from every allocation and free that torch's profiler records
# (profile_memory=True), in time order


def peak_bytes(phases: dict) -> dict:
    """{name: fn} -> {name: the most bytes of tensors allocated during fn() and alive at once}; the
    functions run one after another inside one profiling session (starting one costs about a second)."""
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with prof:
        for name, fn in phases.items():
            with torch.profiler.record_function(name):
                fn()
    events = prof.profiler.kineto_results.events()
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    peaks = {}
    for e in events:
        if e.name() in phases:
            live = peak = 0
            for t, nbytes in memory:
                if e.start_ns() <= t <= e.end_ns():
                    live += nbytes
                    peak = max(peak, live)
            peaks[e.name()] = peak
    return peaks


def test_loss_memory_is_bounded_by_the_chunk_not_the_tokens():
    width, vocab, chunk = 8, 2048, 64
    chunk_logits = chunk * vocab * 4  # 0.5 MiB
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(vocab, width, generator=g) / width**0.5).requires_grad_()
    b = torch.zeros(vocab, requires_grad=True)

    def train(x, t, c):
        cross_entropy(x, w, b, t, 15.0, "algebraic", c).backward()
        x.grad = w.grad = b.grad = None

    @torch.no_grad()
    def validate(x, t, c):
        cross_entropy(x, w, b, t, 15.0, "algebraic", c)

    phases = {}
    for n in (512, 2048):
        x = torch.randn(n, width, generator=g, requires_grad=True)
        t = torch.randint(0, vocab, (n,), generator=g)
        for c in (n, chunk):  # the plain computation (chunk >= tokens), the chunked one
            phases[f"train {n} {c}"] = lambda x=x, t=t, c=c: train(x, t, c)
            phases[f"validate {n} {c}"] = lambda x=x, t=t, c=c: validate(x, t, c)
    peaks = peak_bytes(phases)
    for n in (512, 2048):
        full = n * vocab * 4  # one fp32 logits tensor of all tokens: 4 and 16 MiB
        # the plain computation holds several full logits (measured: 7 in training, 4 in validation) ...
        assert peaks[f"train {n} {n}"] >= 4 * full and peaks[f"validate {n} {n}"] >= 2 * full, peaks
        # ... the chunked one a few chunks' worth (measured: 5 and 4), whatever the number of tokens,
        # plus buffers of tokens x width (x's gradient) and vocab x width (W's)
        small = 4 * (2 * n * width + 2 * vocab * width + 2 * vocab)
        for phase in (f"train {n} {chunk}", f"validate {n} {chunk}"):
            assert peaks[phase] <= 6 * chunk_logits + small, (
                f"{phase}: peaked at {peaks[phase] / 2**20:.1f} MiB, over 6 chunks of logits "
                f"({6 * chunk_logits / 2**20:.0f} MiB); the full logits are {full / 2**20:.0f} MiB")


def test_function_is_the_training_path_only_above_the_chunk():
    x, w, b, t = problem(n=10)
    assert ChunkedCrossEntropy.__name__ not in type(cross_entropy(x, w, b, t, 15.0, "tanh", 10).grad_fn).__name__
