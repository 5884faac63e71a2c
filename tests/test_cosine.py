"""Cosine family: cosine_similarity, pairwise_cosine_similarity, feature_distillation_loss."""

import math

import pytest
import torch
import torch.nn.functional as F

import pykernels as pk
from pykernels.reference import cosine as ref

from .helpers import (
    ALL_BACKENDS,
    COMPILE_BACKENDS,
    FUSED_BACKENDS,
    as64,
    assert_close,
    assert_compiles_fullgraph,
    backend_device,
    dtypes_for,
    grads,
    opcheck_test,
    peak_cpu_bytes,
    poisoned,
    randn,
    rel_err,
)

# --------------------------------------------------------------------------- reference


def test_reference_matches_closed_form_float64():
    x1, x2 = randn(7, 13, dtype=torch.float64, seed=1), randn(7, 13, dtype=torch.float64, seed=2)
    want = torch.tensor(
        [
            sum(a * b for a, b in zip(r1, r2))
            / math.sqrt(sum(a * a for a in r1) * sum(b * b for b in r2))
            for r1, r2 in zip(x1.tolist(), x2.tolist())
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(ref.cosine_similarity(x1, x2), want, rtol=1e-12, atol=1e-12)
    d = ref.feature_distillation_loss(x1, x2, "mse", "none")
    torch.testing.assert_close(
        d,
        torch.tensor(
            [sum((a - b) ** 2 for a, b in zip(r1, r2)) for r1, r2 in zip(x1.tolist(), x2.tolist())],
            dtype=torch.float64,
        ),
    )
    # kind "mse", reduction "mean": 1/N sum_i |f_i^T - f_i^S|^2
    torch.testing.assert_close(ref.feature_distillation_loss(x1, x2), d.sum() / 7)
    torch.testing.assert_close(ref.feature_distillation_loss(x1, x2, "cosine", "none"), 1 - want)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_reference_matches_torch(dim):
    x1, x2 = randn(5, 1, 6, seed=3), randn(1, 4, 6, seed=4)
    torch.testing.assert_close(ref.cosine_similarity(x1, x2, dim), F.cosine_similarity(x1, x2, dim))
    a, b = randn(3, 5, 8, seed=5), randn(3, 4, 8, seed=6)
    torch.testing.assert_close(
        ref.pairwise_cosine_similarity(a, b), F.cosine_similarity(a[:, :, None], b[:, None], dim=-1)
    )


def test_reference_eps_clamps_each_norm():
    x1 = torch.tensor([[1e-9, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    x2 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [4.0, 3.0]], dtype=torch.float64)
    eps = 1e-6
    torch.testing.assert_close(
        ref.cosine_similarity(x1, x2, eps=eps), F.cosine_similarity(x1, x2, dim=-1, eps=eps)
    )
    assert ref.cosine_similarity(x1, x2, eps=eps)[0].item() == pytest.approx(1e-9 / eps)


# --------------------------------------------------------------------------- every backend vs reference


def _inputs(shape, dtype, device, seed, scale=1.0):
    return [
        randn(*shape, dtype=dtype, device=device, seed=seed + i, scale=scale, requires_grad=True)
        for i in range(2)
    ]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(33,), (6, 40), (3, 5, 128), (2, 1000)])
def test_cosine_forward_backward(backend, shape):
    dev = backend_device(backend)
    for dtype in dtypes_for(backend):
        x1, x2 = _inputs(shape, dtype, dev, seed=10)
        with poisoned():
            out = pk.cosine_similarity(x1, x2, backend=backend)
            g1, g2 = grads(out, [x1, x2])
        assert out.dtype == dtype and out.shape == shape[:-1]
        r1, r2 = as64(x1, x2)
        want = ref.cosine_similarity(r1, r2)
        w1, w2 = grads(want, [r1, r2])
        base = F.cosine_similarity(x1.detach(), x2.detach(), dim=-1)
        assert_close(out, want, dtype, baseline=base)
        assert_close(g1, w1, dtype, what="grad x1")
        assert_close(g2, w2, dtype, what="grad x2")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind", ["mse", "cosine"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_feature_distillation_loss(backend, kind, reduction):
    dev = backend_device(backend)
    for dtype in dtypes_for(backend):
        s, t = _inputs((4, 3, 72), dtype, dev, seed=20)
        with poisoned():
            loss = pk.feature_distillation_loss(s, t, kind, reduction, backend=backend)
            gs, gt = grads(loss, [s, t])
        assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        r1, r2 = as64(s, t)
        want = ref.feature_distillation_loss(r1, r2, kind, reduction)
        w1, w2 = grads(want, [r1, r2])
        assert_close(loss, want, dtype)
        assert_close(gs, w1, dtype, what="grad student")
        assert_close(gt, w2, dtype, what="grad teacher")


def test_feature_distillation_mse_is_seed_formula():
    s, t = randn(6, 9, seed=1), randn(6, 9, seed=2)
    want = ((t - s) ** 2).sum(-1).mean()
    torch.testing.assert_close(pk.feature_distillation_loss(s, t), want)
    torch.testing.assert_close(
        pk.feature_distillation_loss(s, t, "cosine"), (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "shapes",
    [((9, 24), (7, 24)), ((2, 5, 40), (2, 33, 40)), ((3, 1, 6, 16), (4, 5, 16)), ((37, 70), None)],
)
def test_pairwise(backend, shapes):
    dev = backend_device(backend)
    for dtype in dtypes_for(backend):
        a = randn(*shapes[0], dtype=dtype, device=dev, seed=30, requires_grad=True)
        b = (
            None
            if shapes[1] is None
            else randn(*shapes[1], dtype=dtype, device=dev, seed=31, requires_grad=True)
        )
        with poisoned():
            out = pk.pairwise_cosine_similarity(a, b, backend=backend)
        leaves = [a] if b is None else [a, b]
        got = grads(out, leaves)
        r = as64(*leaves)
        want = ref.pairwise_cosine_similarity(r[0], None if b is None else r[1])
        wgrads = grads(want, r)
        bb = a if b is None else b
        base = F.normalize(a.detach(), dim=-1) @ F.normalize(bb.detach(), dim=-1).transpose(-1, -2)
        assert_close(out, want, dtype, baseline=base)
        for g, w in zip(got, wgrads):
            assert_close(
                g,
                w,
                dtype,
                tol=max(3e-2, 2 * rel_err(base, want)) if dtype == torch.bfloat16 else None,
                what="grad",
            )


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_zero_and_near_eps_vectors(backend):
    dev = backend_device(backend)
    dtype = torch.float64 if backend in ("cpu", "reference") else torch.float32
    eps = 1e-4
    x1 = torch.tensor(
        [[0.0, 0.0, 0.0], [1e-5, 0.0, 0.0], [3e-5, 4e-5, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]],
        dtype=dtype,
        device=dev,
    )
    x2 = torch.tensor(
        [[1.0, 2.0, 3.0], [1.0, 1.0, 0.0], [2e-4, 0.0, 1e-4], [1e-5, 0.0, 0.0], [0.0, 0.0, 0.0]],
        dtype=dtype,
        device=dev,
    )
    x1.requires_grad_(True)
    x2.requires_grad_(True)
    out = pk.cosine_similarity(x1, x2, eps=eps, backend=backend)
    torch.testing.assert_close(out, F.cosine_similarity(x1, x2, dim=-1, eps=eps))
    g = grads(out, [x1, x2])
    r1, r2 = as64(x1, x2)
    w = grads(ref.cosine_similarity(r1, r2, eps=eps), [r1, r2])
    for gi, wi in zip(g, w):
        assert torch.isfinite(gi).all()
        torch.testing.assert_close(gi.double(), wi.to(gi.device), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_broadcast_input_gradient_in_half_precision(backend):
    """x1 [2, 1] broadcast against x2 [2, 64] along dim 0: x1's gradient is a sum of 64
    column gradients, here in nearly opposite pairs that cancel. In bf16 that sum must be
    taken before rounding: summing 64 rounded terms left 1.4% error here (3.5% on a similar
    case of test_fuzz_cosine). x1 is below eps, as in that case."""
    dev = backend_device(backend)
    u = randn(2, 32, seed=1, dtype=torch.float64)
    pairs = torch.stack([u, -u + 0.05 * randn(2, 32, seed=2, dtype=torch.float64)], -1).reshape(
        2, 64
    )
    a = (randn(2, 1, seed=3, dtype=torch.float64) * 1e-30).bfloat16().to(dev).requires_grad_()
    b = (pairs * 1e-3).bfloat16().to(dev).requires_grad_()
    w = torch.ones(
        64, dtype=torch.bfloat16, device=dev
    )  # the same upstream weights in bf16 and float64
    out = pk.cosine_similarity(a, b, dim=0, backend=backend)
    assert out.dtype == torch.bfloat16 and out.shape == (64,)
    a64, b64 = (x.detach().double().cpu().requires_grad_() for x in (a, b))
    want = F.cosine_similarity(a64, b64, dim=0)
    assert_close(out, want, torch.bfloat16)
    got_g = torch.autograd.grad(out, [a, b], w)
    want_g = torch.autograd.grad(want, [a64, b64], w.double().cpu())
    for g, r in zip(got_g, want_g):
        assert g.dtype == torch.bfloat16
        assert_close(g, r, torch.bfloat16, what="gradient")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_broadcasting_and_dims(backend):
    dev = backend_device(backend)
    x1 = randn(4, 1, 10, device=dev, seed=1)
    x2 = randn(1, 6, 10, device=dev, seed=2)
    for dim in (-1, 0, 1, 2):
        a, b = (
            (x1, x2)
            if dim in (-1, 2)
            else (randn(4, 6, 10, device=dev, seed=3), randn(6, 10, device=dev, seed=4))
        )
        a, b = a.requires_grad_(), b.requires_grad_()
        out = pk.cosine_similarity(a, b, dim=dim, backend=backend)
        want = F.cosine_similarity(a, b, dim=dim)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        for g, w in zip(grads(out, [a, b]), grads(want, [a, b])):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous(backend):
    dev = backend_device(backend)
    base = randn(20, 32, device=dev, seed=5)
    x1 = base.t()[:, ::2]  # [32, 10], transposed and strided
    x2 = randn(10, 32, device=dev, seed=6).t()
    x1, x2 = x1.requires_grad_(), x2.requires_grad_()
    out = pk.cosine_similarity(x1, x2, backend=backend)
    torch.testing.assert_close(out, F.cosine_similarity(x1, x2, dim=-1), rtol=1e-5, atol=1e-6)
    a = randn(16, 40, device=dev, seed=7)[::2]
    b = randn(24, 40, device=dev, seed=8).t().contiguous().t()
    torch.testing.assert_close(
        pk.pairwise_cosine_similarity(a, b, backend=backend),
        ref.pairwise_cosine_similarity(a, b),
        rtol=1e-5,
        atol=1e-5,
    )
    s = randn(8, 30, device=dev, seed=9).t()
    t = randn(30, 8, device=dev, seed=10)
    torch.testing.assert_close(
        pk.feature_distillation_loss(s, t, backend=backend), ref.feature_distillation_loss(s, t)
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_inputs(backend):
    dev = backend_device(backend)
    for shape in [(0, 8), (5, 0), (2, 0, 4)]:
        x1 = torch.zeros(shape, device=dev, requires_grad=True)
        x2 = torch.ones(shape, device=dev, requires_grad=True)
        with poisoned():
            out = pk.cosine_similarity(x1, x2, backend=backend)
        torch.testing.assert_close(out, F.cosine_similarity(x1, x2, dim=-1))
        out.sum().backward()
        assert x1.grad.shape == x1.shape
        loss = pk.feature_distillation_loss(x1, x2, "mse", "sum", backend=backend)
        assert loss.item() == 0.0
    a, b = torch.zeros(0, 5, device=dev), torch.ones(3, 5, device=dev)
    assert pk.pairwise_cosine_similarity(a, b, backend=backend).shape == (0, 3)
    with poisoned():
        z = pk.pairwise_cosine_similarity(
            torch.ones(2, 0, device=dev), torch.ones(3, 0, device=dev), backend=backend
        )
    torch.testing.assert_close(z, torch.zeros(2, 3, device=dev))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_deterministic(backend):
    dev = backend_device(backend)
    x1, x2 = _inputs((16, 300), torch.float32, dev, seed=40)
    runs = []
    for _ in range(2):
        out = pk.cosine_similarity(x1, x2, backend=backend)
        runs.append((out, *grads(out, [x1, x2])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_pairwise_never_builds_n_m_d():
    a, b = randn(256, 512, seed=1), randn(256, 512, seed=2)
    n_m_d = 256 * 256 * 512 * 4
    peak = peak_cpu_bytes(lambda: pk.pairwise_cosine_similarity(a, b, backend="cpu"))
    assert 0 < peak < n_m_d / 20, f"peak {peak} bytes"


# --------------------------------------------------------------------------- autograd, opcheck, compile


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    x1 = randn(3, 7, dtype=torch.float64, seed=50, requires_grad=True)
    x2 = randn(3, 7, dtype=torch.float64, seed=51, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: pk.cosine_similarity(a, b, backend=backend), (x1, x2)
    )
    for kind in ("mse", "cosine"):
        assert torch.autograd.gradcheck(
            lambda a, b: pk.feature_distillation_loss(a, b, kind, "none", backend=backend), (x1, x2)
        )
    a = randn(2, 4, 5, dtype=torch.float64, seed=52, requires_grad=True)
    b = randn(2, 3, 5, dtype=torch.float64, seed=53, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: pk.pairwise_cosine_similarity(a, b, backend=backend), (a, b)
    )


def _opcheck_cases(dev, dtype=torch.float32):
    x1, x2 = (
        randn(4, 19, dtype=dtype, device=dev, seed=60),
        randn(4, 19, dtype=dtype, device=dev, seed=61),
    )
    a, b = (
        randn(2, 5, 19, dtype=dtype, device=dev, seed=62),
        randn(2, 3, 19, dtype=dtype, device=dev, seed=63),
    )
    g = randn(4, dtype=torch.float32 if dtype != torch.float64 else dtype, device=dev, seed=64)
    gp = randn(2, 5, 3, dtype=dtype, device=dev, seed=65)
    return [
        ("cosine_similarity", (x1.requires_grad_(), x2.requires_grad_(), 1e-8)),
        ("cosine_similarity_backward", (g, x1.detach(), x2.detach(), 1e-8, [True, True])),
        ("cosine_similarity_backward", (g, x1.detach(), x2.detach(), 1e-8, [False, True])),
        ("feature_distillation_loss", (x1, x2, "mse", 1e-8)),
        ("feature_distillation_loss", (x1, x2, "cosine", 1e-8)),
        (
            "feature_distillation_loss_backward",
            (g, x1.detach(), x2.detach(), "cosine", 1e-8, [True, True]),
        ),
        (
            "feature_distillation_loss_backward",
            (g, x1.detach(), x2.detach(), "mse", 1e-8, [True, False]),
        ),
        ("pairwise_cosine_similarity", (a.requires_grad_(), b.requires_grad_(), 1e-8)),
        ("pairwise_cosine_similarity_backward", (gp, a.detach(), b.detach(), 1e-8, [True, True])),
        ("pairwise_cosine_similarity_backward", (gp, a.detach(), b.detach(), 1e-8, [False, True])),
    ]


test_opcheck = opcheck_test(_opcheck_cases)


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_fullgraph(backend):
    dev = backend_device(backend)

    def f(x1, x2, a, b, s, t):
        return (
            pk.cosine_similarity(x1, x2, backend=backend).sum()
            + pk.pairwise_cosine_similarity(a, b, backend=backend).sum()
            + pk.feature_distillation_loss(s, t, "cosine", backend=backend)
        )

    def want(x1, x2, a, b, s, t):
        return (
            F.cosine_similarity(x1, x2, dim=-1).sum()
            + ref.pairwise_cosine_similarity(a, b).sum()
            + ref.feature_distillation_loss(s, t, "cosine")
        )

    args = [randn(6, 16, device=dev, seed=70 + i, requires_grad=True) for i in range(6)]
    assert_compiles_fullgraph(f, want, args, args, dev)


def test_torch_compile_inductor_cpu():
    torch._dynamo.reset()
    f = torch.compile(lambda a, b: pk.cosine_similarity(a, b, backend="cpu") * 2, fullgraph=True)
    a, b = randn(5, 12, seed=1), randn(5, 12, seed=2)
    torch.testing.assert_close(f(a, b), 2 * F.cosine_similarity(a, b, dim=-1))


# --------------------------------------------------------------------------- modules


def test_modules():
    x1, x2 = randn(4, 8, seed=1), randn(4, 8, seed=2)
    torch.testing.assert_close(
        pk.nn.CosineSimilarity()(x1, x2), F.cosine_similarity(x1, x2, dim=-1)
    )
    torch.testing.assert_close(
        pk.nn.CosineSimilarity(dim=0)(x1, x2), F.cosine_similarity(x1, x2, dim=0)
    )
    torch.testing.assert_close(
        pk.nn.PairwiseCosineSimilarity()(x1), ref.pairwise_cosine_similarity(x1)
    )
    torch.testing.assert_close(
        pk.nn.FeatureDistillationLoss("cosine", "sum")(x1, x2),
        ref.feature_distillation_loss(x1, x2, "cosine", "sum"),
    )


# --------------------------------------------------------------------------- bad input


def test_backend_unavailable_names_what_is_available():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(RuntimeError, match="Available for cpu"):
        pk.cosine_similarity(torch.ones(2, 3), torch.ones(2, 3), backend="cuda")
