"""Distillation family: distillation_loss, cross_entropy, soft_target_cross_entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

import pykernels as pk
from pykernels._precision import acc_dtype
from pykernels.reference import distillation as ref

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
    labels,
    opcheck_test,
    peak_cpu_bytes,
    poisoned,
    randn,
)

# --------------------------------------------------------------------------- reference vs PyTorch


@pytest.mark.parametrize("T", [0.05, 1.0, 4.0, 20.0])
def test_reference_kl_matches_torch(T):
    s, t = (
        randn(6, 37, dtype=torch.float64, seed=1, scale=3),
        randn(6, 37, dtype=torch.float64, seed=2, scale=3),
    )
    ls, lt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    fwd = F.kl_div(ls, lt, reduction="batchmean", log_target=True) * T * T
    rev = F.kl_div(lt, ls, reduction="batchmean", log_target=True) * T * T
    torch.testing.assert_close(ref.distillation_loss(s, t, T), fwd)
    torch.testing.assert_close(ref.distillation_loss(s, t, T, beta=1.0), rev)
    torch.testing.assert_close(
        ref.distillation_loss(s, t, T, reduction="sum"),
        F.kl_div(ls, lt, reduction="sum", log_target=True) * T * T,
    )


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_reference_jsd_matches_probability_space(beta):
    s, t = (
        randn(5, 23, dtype=torch.float64, seed=3, scale=2),
        randn(5, 23, dtype=torch.float64, seed=4, scale=2),
    )
    T = 2.0
    ps, pt = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
    m = beta * pt + (1 - beta) * ps
    want = (
        T * T * (beta * (pt * (pt / m).log()).sum(-1) + (1 - beta) * (ps * (ps / m).log()).sum(-1))
    )
    torch.testing.assert_close(ref.distillation_loss(s, t, T, beta=beta, reduction="none"), want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_reference_cross_entropy_matches_torch(reduction, smoothing):
    x = randn(9, 17, dtype=torch.float64, seed=5, scale=2)
    y = labels((9,), 17, seed=6, ignored=(1, 4))
    torch.testing.assert_close(
        ref.cross_entropy(x, y, -100, smoothing, reduction),
        F.cross_entropy(x, y, ignore_index=-100, label_smoothing=smoothing, reduction=reduction),
    )


def test_reference_kd_with_hard_term_matches_torch():
    s, t = randn(8, 19, dtype=torch.float64, seed=7), randn(8, 19, dtype=torch.float64, seed=8)
    y = labels((8,), 19, seed=9, ignored=(2, 5))
    T, sw, hw, ls = 3.0, 0.7, 0.4, 0.1
    kept = y != -100
    kl = F.kl_div(
        F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="none", log_target=True
    ).sum(-1)
    ce = F.cross_entropy(s, y, label_smoothing=ls, reduction="none")
    want = ((sw * T * T * kl + hw * ce) * kept).sum() / kept.sum()
    got = ref.distillation_loss(s, t, T, y, sw, hw, 0.0, -100, ls)
    torch.testing.assert_close(got, want)


def test_reference_soft_target_matches_torch():
    x = randn(7, 13, dtype=torch.float64, seed=10)
    q = torch.softmax(randn(7, 13, dtype=torch.float64, seed=11), -1)
    T = 2.0
    torch.testing.assert_close(ref.soft_target_cross_entropy(x, q, T), F.cross_entropy(x / T, q))
    torch.testing.assert_close(
        ref.soft_target_cross_entropy(x, q, T, "sum"), F.cross_entropy(x / T, q, reduction="sum")
    )


# --------------------------------------------------------------------------- every backend vs reference

# (beta, T, labels, hard_weight, label_smoothing, reduction)
KD_CASES = [
    (0.0, 1.0, False, 0.0, 0.0, "batchmean"),
    (0.0, 4.0, True, 0.5, 0.1, "sum"),
    (0.0, 20.0, True, 0.0, 0.0, "none"),
    (1.0, 0.05, False, 0.0, 0.0, "sum"),
    (1.0, 4.0, True, 1.0, 0.0, "batchmean"),
    (0.5, 1.0, True, 0.3, 0.2, "batchmean"),
    (0.5, 0.05, True, 0.5, 0.0, "none"),
    (0.5, 20.0, False, 0.0, 0.0, "sum"),
]


def _kd_call(case, backend, s, t, y):
    beta, T, _, hw, ls, red = case
    return pk.distillation_loss(
        s,
        t,
        temperature=T,
        labels=y,
        hard_weight=hw,
        beta=beta,
        label_smoothing=ls,
        soft_weight=0.8,
        reduction=red,
        backend=backend,
    )


def _ref_call(case, s, t, y):
    beta, T, _, hw, ls, red = case
    return ref.distillation_loss(s, t, T, y, 0.8, hw, beta, -100, ls, red)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "case",
    KD_CASES,
    ids=[f"beta{c[0]}-T{c[1]}-{'lab' if c[2] else 'nolab'}-{c[5]}" for c in KD_CASES],
)
def test_distillation_loss(backend, case):
    dev = backend_device(backend)
    shape = (2, 3, 300) if backend != "triton" else (4, 300)  # V = 300: no block size divides it
    y = labels(shape[:-1], shape[-1], dev, seed=12) if case[2] else None
    for dtype in dtypes_for(backend):
        s = randn(*shape, dtype=dtype, device=dev, seed=13, scale=4, requires_grad=True)
        t = randn(*shape, dtype=dtype, device=dev, seed=14, scale=4, requires_grad=True)
        with poisoned():
            loss = _kd_call(case, backend, s, t, y)
            gs, gt = grads(loss, [s, t])
        assert loss.dtype == acc_dtype(dtype)
        r = [x.detach().double().requires_grad_() for x in (s, t)]
        want = _ref_call(case, *r, y)
        ws, wt = grads(want, r)
        b = [x.detach().requires_grad_() for x in (s, t)]
        base = _ref_call(case, *b, y)  # PyTorch at the same precision
        bs, bt = grads(base, b)
        assert_close(loss, want, dtype, baseline=base)
        # The gradient w.r.t. (student, teacher) as one vector...
        joint = lambda u, v: torch.cat([u.reshape(-1).double().cpu(), v.reshape(-1).double().cpu()])  # noqa: E731
        assert_close(
            joint(gs, gt),
            joint(ws, wt),
            dtype,
            baseline=joint(bs, bt),
            what="grad (student, teacher)",
        )
        # ... and each part on its own where that is well conditioned: at T = 0.05 a one-hot
        # teacher's gradient is ~1e-18, a sum of O(1) terms that cancel, so its relative error
        # says nothing (even float64 PyTorch formulations differ there by ~50%).
        assert_close(gs, ws, dtype, baseline=bs, what="grad student")
        if case[1] >= 1:
            assert_close(gt, wt, dtype, baseline=bt, what="grad teacher")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(backend, reduction):
    dev = backend_device(backend)
    shape = (3, 5, 1001) if backend != "triton" else (4, 301)
    y = labels(shape[:-1], shape[-1], dev, seed=20, ignored=(0, 3))
    for dtype in dtypes_for(backend):
        x = randn(*shape, dtype=dtype, device=dev, seed=21, scale=3, requires_grad=True)
        for ls in (0.0, 0.1):
            with poisoned():
                loss = pk.cross_entropy(
                    x, y, label_smoothing=ls, reduction=reduction, backend=backend
                )
                (g,) = grads(loss, [x])
            x64 = x.detach().double().requires_grad_()
            want = F.cross_entropy(
                x64.reshape(-1, shape[-1]), y.reshape(-1), label_smoothing=ls, reduction=reduction
            )
            want = want.reshape(shape[:-1]) if reduction == "none" else want
            (w,) = grads(want, [x64])
            base = F.cross_entropy(
                x.detach().float().reshape(-1, shape[-1]),
                y.reshape(-1),
                label_smoothing=ls,
                reduction=reduction,
            ).reshape(want.shape)
            assert_close(loss, want, dtype, baseline=base)
            assert_close(g, w, dtype, what="grad")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_soft_target_cross_entropy(backend, reduction):
    dev = backend_device(backend)
    shape = (2, 4, 257) if backend != "triton" else (4, 257)
    for dtype in dtypes_for(backend):
        x = randn(*shape, dtype=dtype, device=dev, seed=30, scale=3, requires_grad=True)
        q = (
            torch.softmax(randn(*shape, dtype=torch.float64, seed=31), -1)
            .to(dtype=dtype, device=dev)
            .requires_grad_()
        )
        with poisoned():
            loss = pk.soft_target_cross_entropy(
                x, q, temperature=2.0, reduction=reduction, backend=backend
            )
            gx, gq = grads(loss, [x, q])
        r = [v.detach().double().requires_grad_() for v in (x, q)]
        want = ref.soft_target_cross_entropy(*r, 2.0, reduction)
        wx, wq = grads(want, r)
        assert_close(
            loss,
            want,
            dtype,
            baseline=ref.soft_target_cross_entropy(x.detach(), q.detach(), 2.0, reduction),
        )
        assert_close(gx, wx, dtype, what="grad logits")
        assert_close(gq, wq, dtype, what="grad target")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_teacher_without_grad_gets_none_and_student_is_right(backend):
    dev = backend_device(backend)
    s = randn(4, 300, device=dev, seed=40, scale=3, requires_grad=True)
    t = randn(4, 300, device=dev, seed=41, scale=3)
    loss = pk.distillation_loss(s, t, temperature=2.0, backend=backend)
    loss.backward()
    assert t.grad is None
    s64 = s.detach().double().requires_grad_()
    ref.distillation_loss(s64, t.double(), 2.0).backward()
    assert_close(s.grad, s64.grad, torch.float32, what="grad student")
    with torch.no_grad():  # no gradient is computed or allocated
        out = pk.distillation_loss(s, t, temperature=2.0, backend=backend)
    assert not out.requires_grad
    assert_close(out, ref.distillation_loss(s.double(), t.double(), 2.0), torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("T", [0.05, 20.0])
def test_extreme_logits(backend, T):
    """Logits of +-1e4 stay finite and match float64 at T in {0.05, 20}."""
    dev = backend_device(backend)
    gen = torch.Generator().manual_seed(50)
    base = torch.randint(-1, 2, (4, 300), generator=gen).double() * 1e4 + torch.randn(
        4, 300, generator=gen, dtype=torch.float64
    )
    s = base.float().to(dev).requires_grad_()
    t = (
        (base.flip(-1) + torch.randn(4, 300, generator=gen, dtype=torch.float64))
        .float()
        .to(dev)
        .requires_grad_()
    )
    y = labels((4,), 300, dev, seed=51, ignored=())
    for beta in (0.0, 0.5, 1.0):
        loss = pk.distillation_loss(
            s,
            t,
            temperature=T,
            labels=y,
            beta=beta,
            hard_weight=0.5,
            label_smoothing=0.1,
            reduction="none",
            backend=backend,
        )
        gs, gt = grads(loss, [s, t])
        r = [x.detach().double().requires_grad_() for x in (s, t)]
        want = ref.distillation_loss(
            *r, T, y.cpu() if dev.type == "cpu" else y, 1.0, 0.5, beta, -100, 0.1, "none"
        )
        ws, wt = grads(want, r)
        b = [x.detach().cpu().requires_grad_() for x in (s, t)]  # PyTorch in float32
        base = ref.distillation_loss(*b, T, y.cpu(), 1.0, 0.5, beta, -100, 0.1, "none")
        bs, bt = grads(base, b)
        assert torch.isfinite(loss).all() and torch.isfinite(gs).all() and torch.isfinite(gt).all()
        assert_close(loss, want, torch.float32, baseline=base)
        assert_close(gs, ws, torch.float32, baseline=bs, what="grad student")
        # At T = 0.05 the teacher's gradient c p_T (log p_T - log p_S - KL) subtracts terms
        # of ~4e5: held to PyTorch's float32 error (see also test_distillation_loss).
        assert_close(
            torch.cat([gs, gt]).cpu(),
            torch.cat([ws, wt]).cpu(),
            torch.float32,
            baseline=torch.cat([bs, bt]),
            what="grad (student, teacher)",
        )
        if T >= 1:
            assert_close(gt, wt, torch.float32, baseline=bt, what="grad teacher")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_all_rows_ignored(backend):
    """Like F.cross_entropy(reduction="mean") over an all-ignored batch: nan loss, zero grads;
    "sum" is 0 and "none" is zeros."""
    dev = backend_device(backend)
    s = randn(3, 40, device=dev, seed=60, requires_grad=True)
    t = randn(3, 40, device=dev, seed=61, requires_grad=True)
    y = torch.full((3,), -100, device=dev)
    torch_loss = F.cross_entropy(s, y)
    torch_loss.backward()
    assert math.isnan(torch_loss.item()) and torch.count_nonzero(s.grad) == 0
    for call in (
        lambda: pk.cross_entropy(s, y, backend=backend),
        lambda: pk.distillation_loss(s, t, labels=y, hard_weight=1.0, backend=backend),
    ):
        s.grad = t.grad = None
        loss = call()
        loss.backward()
        assert math.isnan(loss.item())
        assert torch.count_nonzero(s.grad) == 0
        assert t.grad is None or torch.count_nonzero(t.grad) == 0
    for red in ("sum", "none"):
        loss = pk.distillation_loss(s, t, labels=y, hard_weight=1.0, reduction=red, backend=backend)
        assert torch.count_nonzero(loss) == 0
        gs, gt = grads(loss, [s, t])
        assert torch.count_nonzero(gs) == 0 and torch.count_nonzero(gt) == 0


def test_large_vocabulary_cpu():
    """V = 262144 (larger than any block) on the C++ kernel, a few rows."""
    if "cpu" not in pk.backends.available(torch.device("cpu")):
        pytest.skip("pykernels._C not built")
    V = 262144
    s = randn(3, V, seed=70, scale=5, requires_grad=True)
    t = randn(3, V, seed=71, scale=5, requires_grad=True)
    y = torch.tensor([5, V - 1, -100])
    for beta in (0.0, 0.5):
        loss = pk.distillation_loss(
            s,
            t,
            temperature=2.0,
            labels=y,
            beta=beta,
            hard_weight=0.5,
            reduction="sum",
            backend="cpu",
        )
        gs, gt = grads(loss, [s, t])
        r = [x.detach().double().requires_grad_() for x in (s, t)]
        want = ref.distillation_loss(*r, 2.0, y, 1.0, 0.5, beta, -100, 0.0, "sum")
        ws, wt = grads(want, r)
        base = ref.distillation_loss(
            s.detach(), t.detach(), 2.0, y, 1.0, 0.5, beta, -100, 0.0, "sum"
        )
        assert_close(loss, want, torch.float32, baseline=base)
        assert_close(gs, ws, torch.float32, what="grad student")
        assert_close(gt, wt, torch.float32, what="grad teacher")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous(backend):
    dev = backend_device(backend)
    s = randn(300, 8, device=dev, seed=80).t().requires_grad_()  # [8, 300], transposed
    t = randn(8, 600, device=dev, seed=81)[:, ::2].requires_grad_()  # strided
    y = labels((8,), 300, dev, seed=82)
    loss = pk.distillation_loss(s, t, temperature=2.0, labels=y, hard_weight=0.5, backend=backend)
    gs, gt = grads(loss, [s, t])
    want = ref.distillation_loss(s, t, 2.0, y, 1.0, 0.5)
    ws, wt = grads(want, [s, t])
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gs, ws, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gt, wt, rtol=1e-4, atol=1e-7)
    x = randn(8, 600, device=dev, seed=83)[:, 1::2].requires_grad_()
    torch.testing.assert_close(pk.cross_entropy(x, y, backend=backend), F.cross_entropy(x, y))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch(backend):
    dev = backend_device(backend)
    s = torch.zeros(0, 7, device=dev, requires_grad=True)
    y = torch.zeros(0, dtype=torch.int64, device=dev)
    with poisoned():
        got = pk.cross_entropy(s, y, backend=backend)
    assert math.isnan(got.item()) and math.isnan(F.cross_entropy(s, y).item())
    assert pk.distillation_loss(s, s, reduction="sum", backend=backend).item() == 0.0
    assert pk.distillation_loss(s, s, reduction="none", backend=backend).shape == (0,)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_deterministic(backend):
    dev = backend_device(backend)
    s = randn(4, 300, device=dev, seed=90, requires_grad=True)
    t = randn(4, 300, device=dev, seed=91, requires_grad=True)
    y = labels((4,), 300, dev, seed=92)
    runs = []
    for _ in range(2):
        loss = pk.distillation_loss(
            s, t, temperature=2.0, labels=y, beta=0.5, hard_weight=0.5, backend=backend
        )
        runs.append((loss, *grads(loss, [s, t])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_forward_memory_is_the_gradient_plus_rows():
    """The forward's only [rows, V] allocation is the student gradient (plus O(threads V) scratch)."""
    if "cpu" not in pk.backends.available(torch.device("cpu")):
        pytest.skip("pykernels._C not built")
    R, V = 64, 8192
    s = randn(R, V, seed=93, requires_grad=True)
    t = randn(R, V, seed=94)
    peak = peak_cpu_bytes(lambda: pk.distillation_loss(s, t, temperature=2.0, backend="cpu"))
    grad_bytes = R * V * 4
    scratch = 4 * V * 4 * torch.get_num_threads()
    assert grad_bytes <= peak <= grad_bytes + scratch + 64 * R, f"peak {peak} bytes"
    # Forward + backward: the saved gradient is scaled in place and returned; nothing else
    # of size [rows, V] (no second gradient, no materialised zero gradients).
    peak = peak_cpu_bytes(
        lambda: torch.autograd.grad(pk.distillation_loss(s, t, temperature=2.0, backend="cpu"), [s])
    )
    assert grad_bytes <= peak <= grad_bytes + scratch + 64 * R, f"peak {peak} bytes"


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_in_place_scaling_only_when_the_graph_is_freed(backend):
    """The backward scales the saved gradient in place only when nothing can read it again:
    with retain_graph every backward gives the same gradient, and a plain backward gives
    that gradient too (upstream weights that are not 1, so a missed or double scaling shows)."""
    dev = backend_device(backend)
    s = randn(5, 300, device=dev, seed=95, requires_grad=True)
    t = randn(5, 300, device=dev, seed=96, requires_grad=True)
    w = torch.arange(1.0, 6.0, device=dev)
    loss = pk.distillation_loss(s, t, temperature=2.0, reduction="none", backend=backend)
    kept = [torch.autograd.grad(loss, [s, t], w, retain_graph=True) for _ in range(3)]
    freed = torch.autograd.grad(loss, [s, t], w)
    s64, t64 = as64(s, t)
    want = torch.autograd.grad(
        pk.distillation_loss(s64, t64, temperature=2.0, reduction="none", backend="reference"),
        [s64, t64],
        w.double().cpu(),
    )
    for got in kept + [freed]:
        for g, r in zip(got, want):
            assert_close(g, r, torch.float32, what="gradient")
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(loss, [s, t], w)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
def test_gradient_of_the_reduced_loss(backend, reduction):
    """The forward writes the gradient of grad_scale * (row loss), grad_scale the weight
    "batchmean" gives a row (1 / counted rows): a plain backward returns it as written, and
    any other upstream gradient (retained graph, a weighted loss) is scaled to match."""
    dev = backend_device(backend)
    s = randn(6, 300, device=dev, seed=97, requires_grad=True)
    t = randn(6, 300, device=dev, seed=98)
    y = labels((6,), 300, dev, seed=99, ignored=(2,))
    kw = dict(temperature=2.0, labels=y, hard_weight=0.5, reduction=reduction)
    s64 = s.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(
        pk.distillation_loss(s64, t.double(), backend="reference", **kw), [s64]
    )
    for weight, retain in ((1.0, True), (1.0, False), (0.5, False)):
        loss = pk.distillation_loss(s, t, backend=backend, **kw)
        (got,) = torch.autograd.grad(weight * loss, [s], retain_graph=retain)
        assert_close(
            got, weight * want, torch.float32, what=f"grad, weight {weight}, retain_graph={retain}"
        )


def test_direct_op_keeps_its_gradient_outputs():
    """A backward that frees the graph scales the saved gradient in place only when the
    caller dropped the op's gradient outputs (the public functions); a direct caller of the
    op keeps them as the forward wrote them."""
    if "cpu" not in pk.backends.available(torch.device("cpu")):
        pytest.skip("pykernels._C not built")
    s, t = randn(4, 30, seed=100, requires_grad=True), randn(4, 30, seed=101)
    loss, gs, _ = torch.ops.pykernels.distillation_loss(
        s, t, None, 2.0, 1.0, 0.0, 0.0, -100, 0.0, True, False, 0.25
    )
    before = gs.detach().clone()
    (g,) = torch.autograd.grad(loss, [s], torch.full_like(loss, 3.0))
    assert torch.equal(gs, before)
    torch.testing.assert_close(g, before * 12.0)


def test_bad_labels_raise_on_cpu_tensors():
    s, t = randn(3, 10, seed=95), randn(3, 10, seed=96)
    for backend in [
        b for b in ("cpu", "reference", "triton") if b in pk.backends.available(torch.device("cpu"))
    ]:
        for bad in (10, -1):
            y = torch.tensor([1, bad, 2])
            with pytest.raises(IndexError, match="'labels'"):
                pk.cross_entropy(s, y, backend=backend)
            with pytest.raises(IndexError, match="'labels'"):
                pk.distillation_loss(s, t, labels=y, hard_weight=1.0, backend=backend)


@pytest.mark.parametrize("backend", [p for p in FUSED_BACKENDS if p.id in ("cuda", "triton")])
def test_bad_label_gives_nan_row_on_triton_and_cuda_kernels(backend):
    """GPU kernels do not synchronise to check labels: an out-of-range label gives a nan row
    (never an out-of-bounds read). Called through the op, which skips the Python check."""
    dev = backend_device(backend)
    s = randn(3, 10, device=dev, seed=97)
    y = torch.tensor([1, 12, 2], device=dev)
    name = "cross_entropy_triton" if backend == "triton" else "cross_entropy"
    loss, g = getattr(torch.ops.pykernels, name)(s, y, -100, 0.0, True, 1.0)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    assert torch.isnan(g[1]).all() and torch.isfinite(g[[0, 2]]).all()


# --------------------------------------------------------------------------- autograd, opcheck, compile


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    if backend == "cpu" and "cpu" not in pk.backends.available(torch.device("cpu")):
        pytest.skip("pykernels._C not built")
    s = randn(3, 7, dtype=torch.float64, seed=100, scale=2, requires_grad=True)
    t = randn(3, 7, dtype=torch.float64, seed=101, scale=2, requires_grad=True)
    y = torch.tensor([2, -100, 6])
    for beta in (0.0, 0.5, 1.0):
        assert torch.autograd.gradcheck(
            lambda a, b: pk.distillation_loss(
                a,
                b,
                temperature=1.5,
                labels=y,
                beta=beta,
                hard_weight=0.7,
                label_smoothing=0.1,
                reduction="none",
                backend=backend,
            ),
            (s, t),
        )
    assert torch.autograd.gradcheck(
        lambda a: pk.cross_entropy(a, y, label_smoothing=0.2, backend=backend), (s,)
    )
    q = torch.softmax(t.detach(), -1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: pk.soft_target_cross_entropy(
            a, b, temperature=3.0, reduction="none", backend=backend
        ),
        (s, q),
    )


def _opcheck_cases(dev):
    s, t = randn(4, 19, device=dev, seed=110), randn(4, 19, device=dev, seed=111)
    y = torch.tensor([3, -100, 0, 18], device=dev)
    q = torch.softmax(randn(4, 19, device=dev, seed=112), -1)
    g = randn(4, device=dev, seed=113)
    rg = lambda x: x.clone().requires_grad_()  # noqa: E731
    return [
        ("distillation_loss", (rg(s), rg(t), y, 2.0, 1.0, 0.5, 0.0, -100, 0.1, True, True, 1.0)),
        ("distillation_loss", (rg(s), t, None, 0.5, 1.0, 0.0, 0.5, -100, 0.0, True, False, 0.25)),
        ("distillation_loss", (s, t, y, 1.0, 0.5, 0.5, 1.0, -100, 0.0, False, False, 1.0)),
        ("cross_entropy", (rg(s), y, -100, 0.1, True, 1.0 / 3)),
        ("soft_target_cross_entropy", (rg(s), rg(q), 2.0, True, True, 0.5)),
        ("distillation_scale_grad", (g, s)),
        ("distillation_scale_grad_inplace", (g, s.clone())),
    ]


test_opcheck = opcheck_test(_opcheck_cases)


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_fullgraph(backend):
    dev = backend_device(backend)

    def f(s, t, x, q, y):
        return (
            pk.distillation_loss(
                s, t, temperature=2.0, labels=y, beta=0.5, hard_weight=0.5, backend=backend
            )
            + pk.cross_entropy(x, y, label_smoothing=0.1, backend=backend)
            + pk.soft_target_cross_entropy(x, q, backend=backend)
        )

    def want(s, t, x, q, y):
        return (
            ref.distillation_loss(s, t, 2.0, y, 1.0, 0.5, 0.5)
            + F.cross_entropy(x, y, label_smoothing=0.1)
            + ref.soft_target_cross_entropy(x, q)
        )

    args = [randn(6, 33, device=dev, seed=120 + i, requires_grad=True) for i in range(4)]
    y = labels((6,), 33, dev, seed=125)
    assert_compiles_fullgraph(f, want, (*args, y), args, dev, grad_tol=(1e-4, 1e-6))


# --------------------------------------------------------------------------- modules


def test_modules():
    s, t = randn(4, 30, seed=130), randn(4, 30, seed=131)
    y = labels((4,), 30, seed=132)
    m = pk.nn.DistillationLoss(2.0, hard_weight=0.5, beta=0.5)
    torch.testing.assert_close(m(s, t, y), ref.distillation_loss(s, t, 2.0, y, 1.0, 0.5, 0.5))
    torch.testing.assert_close(
        pk.nn.CrossEntropyLoss(label_smoothing=0.1)(s, y),
        F.cross_entropy(s, y, label_smoothing=0.1),
    )
    q = torch.softmax(t, -1)
    torch.testing.assert_close(
        pk.nn.SoftTargetCrossEntropy(2.0, "sum")(s, q),
        ref.soft_target_cross_entropy(s, q, 2.0, "sum"),
    )
    assert "temperature=2.0" in repr(m)


# --------------------------------------------------------------------------- bad input
