"""Contrastive family: info_nce_loss (fused InfoNCE / CLIP loss), non-distributed tests."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

import pykernels as pk
from pykernels.ops._registry import op
from pykernels.reference import contrastive as ref

from ._fuzz import logit_rounding_limit
from .helpers import (
    ALL_BACKENDS,
    COMPILE_BACKENDS,
    FUSED_BACKENDS,
    TOLERANCE,
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


def _explicit_loss(I, T, s, labels, symmetric, reduction):
    """The loss written element by element in float64 Python (independent of torch ops)."""
    I, T = I.tolist(), T.tolist()
    N, M = len(I), len(T)
    L = [[s * sum(a * b for a, b in zip(I[i], T[j])) for j in range(M)] for i in range(N)]

    def lse(xs):
        m = max(xs)
        return m + math.log(sum(math.exp(x - m) for x in xs))

    i2t = [lse(L[i]) - L[i][labels[i]] for i in range(N)]
    t2i = [lse([L[k][labels[i]] for k in range(N)]) - L[i][labels[i]] for i in range(N)]
    if reduction == "none":
        return torch.tensor([i2t, t2i] if symmetric else i2t, dtype=torch.float64)
    per = [(a + b) / 2 for a, b in zip(i2t, t2i)] if symmetric else i2t
    return torch.tensor(sum(per) / (N if reduction == "mean" else 1), dtype=torch.float64)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reference_matches_float64_math(symmetric, reduction):
    I, T = randn(5, 7, dtype=torch.float64, seed=1), randn(6, 7, dtype=torch.float64, seed=2)
    labels = [3, 0, 3, 5, 1]  # text 3 is the positive of two images; texts 2 and 4 of none
    got = ref.info_nce_loss(
        I,
        T,
        torch.tensor(2.5, dtype=torch.float64),
        labels=torch.tensor(labels),
        symmetric=symmetric,
        reduction=reduction,
    )
    want = _explicit_loss(I, T, 2.5, labels, symmetric, reduction)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_reference_matches_cross_entropy_on_explicit_logits():
    """CLIP's loss as open_clip writes it, and a permutation of labels."""
    I, T = randn(8, 16, seed=3), randn(8, 16, seed=4)
    s, b = torch.tensor(7.0), torch.tensor(-2.0)
    logits = s * I @ T.T + b
    y = torch.arange(8)
    want = (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2
    torch.testing.assert_close(ref.info_nce_loss(I, T, s, logit_bias=b), want)
    torch.testing.assert_close(
        ref.info_nce_loss(I, T, s, symmetric=False), F.cross_entropy(logits, y)
    )
    # one-to-one labels: text perm[i] belongs to image i, so text j's positive is image inv[j]
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    inv = torch.argsort(perm)
    per = ref.info_nce_loss(I, T, s, labels=perm, reduction="none")
    torch.testing.assert_close(per[0], F.cross_entropy(logits, perm, reduction="none"))
    torch.testing.assert_close(per[1][inv], F.cross_entropy(logits.T, inv, reduction="none"))
    In, Tn = F.normalize(I, dim=-1), F.normalize(T, dim=-1)
    torch.testing.assert_close(
        ref.info_nce_loss(I, T, s, normalize=True),
        (F.cross_entropy(s * In @ Tn.T, y) + F.cross_entropy(s * Tn @ In.T, y)) / 2,
    )


def test_logit_bias_cancels():
    I, T = randn(6, 8, dtype=torch.float64, seed=5), randn(6, 8, dtype=torch.float64, seed=6)
    s = torch.tensor(3.0, dtype=torch.float64)
    b = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    loss = ref.info_nce_loss(I, T, s, logit_bias=b)
    torch.testing.assert_close(loss, ref.info_nce_loss(I, T, s))
    assert abs(torch.autograd.grad(loss, b)[0].item()) < 1e-12


# --------------------------------------------------------------------------- every backend vs reference


def _features(N, M, D, dtype, device, seed, scale=None):
    # rows of norm ~1 so that logit_scale sets the logit range, as in CLIP
    scale = 1 / math.sqrt(D) if scale is None else scale
    i = randn(N, D, dtype=dtype, device=device, seed=seed, scale=scale, requires_grad=True)
    t = randn(M, D, dtype=dtype, device=device, seed=seed + 1, scale=scale, requires_grad=True)
    return i, t


def _run(backend, i, t, s, b=None, **kw):
    """Output and gradients (for a fixed random upstream gradient) of every float input."""
    with poisoned():
        out = pk.info_nce_loss(i, t, s, logit_bias=b, backend=backend, **kw)
        leaves = [x for x in (i, t, s, b) if x is not None]
        return out, grads(out, leaves, seed=7)


def _check_against_reference(backend, i, t, s, b=None, **kw):
    """Loss and every gradient against the float64 reference, within the dtype's
    tolerance or twice the error of the reference run in the inputs' own dtypes."""
    out, got = _run(backend, i, t, s, b, **kw)
    leaves = [x for x in (i, t, s, b) if x is not None]

    def reference(xs):
        return ref.info_nce_loss(*xs[:3], logit_bias=xs[3] if b is not None else None, **kw)

    r64 = [x.detach().double().requires_grad_() for x in leaves]
    want = reference(r64)
    wgrads = grads(want, r64, seed=7)
    same = [x.detach().requires_grad_() for x in leaves]
    base = reference(same)
    base_grads = grads(base, same, seed=7)
    dtype = i.dtype
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), out.dtype
    assert out.shape == want.shape
    limit = max(TOLERANCE[dtype], 2 * rel_err(base, want))
    assert rel_err(out, want) <= limit, f"loss: {rel_err(out, want):.3g} > {limit:.3g} ({dtype})"
    names = ["image_features", "text_features", "logit_scale", "logit_bias"]
    for name, g, w, bg, x in zip(names, got, wgrads, base_grads, leaves):
        assert g.shape == x.shape and g.dtype == x.dtype, (name, g.shape, g.dtype)
        if name == "logit_bias":  # softmax CE is shift invariant: zero (exactly, on fused backends)
            assert abs(w.item()) < 1e-9
            assert abs(g.item()) <= (1e-4 if backend == "reference" else 0.0), g.item()
            continue
        limit = max(TOLERANCE[dtype], 2 * rel_err(bg, w))
        err = rel_err(g, w)
        assert err <= limit, f"grad {name}: relative error {err:.3g} > {limit:.3g} ({dtype})"


def _shapes(backend):
    # (N, M, D, labels?) -- tiny for the Triton interpreter
    return [
        (24, 24, 32, False),
        (13, 37, 20, True),
        (1, 1, 8, False),
        (1, 5, 8, True),
        (40, 17, 32, True),
    ]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_forward_backward_vs_reference(backend, symmetric):
    dev = backend_device(backend)
    for dtype in dtypes_for(backend):
        for k, (N, M, D, with_labels) in enumerate(_shapes(backend)):
            i, t = _features(N, M, D, dtype, dev, seed=10 + k)
            s = torch.tensor(10.0, device=dev, requires_grad=True)
            y = (
                torch.randint(0, M, (N,), generator=torch.Generator().manual_seed(k)).to(dev)
                if with_labels
                else None
            )
            reduction = ("mean", "none", "sum")[k % 3]
            _check_against_reference(
                backend, i, t, s, labels=y, symmetric=symmetric, reduction=reduction
            )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_normalize_bias_and_scales(backend):
    dev = backend_device(backend)
    for dtype in dtypes_for(backend):
        for scale_value in (1.0, 100.0) if dtype == torch.float32 else (100.0,):
            i, t = _features(20, 31, 24, dtype, dev, seed=30, scale=3.0)  # far from unit norm
            s = torch.tensor(scale_value, device=dev, requires_grad=True)
            b = torch.tensor(-4.0, device=dev, requires_grad=True)
            y = torch.randint(0, 31, (20,), generator=torch.Generator().manual_seed(1)).to(dev)
            _check_against_reference(backend, i, t, s, b, labels=y, normalize=True, reduction="sum")
            i, t = _features(20, 20, 24, dtype, dev, seed=31)
            _check_against_reference(backend, i, t, s, b)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_and_mixed_scale_dtype(backend):
    dev = backend_device(backend)
    i = (
        randn(32, 48, device=dev, seed=40, scale=0.2).t()[:, ::2].requires_grad_()
    )  # [48, 16], strided
    t = randn(16, 48, device=dev, seed=41, scale=0.2).t().requires_grad_()  # [48, 16], transposed
    s = torch.tensor([5.0], device=dev, requires_grad=True)  # shape [1]
    _check_against_reference(backend, i, t, s)
    # AMP style: half features, float32 logit_scale
    for dtype in (torch.bfloat16, torch.float16):
        a, b = _features(12, 12, 16, dtype, dev, seed=42)
        _check_against_reference(backend, a, b, torch.tensor(20.0, device=dev, requires_grad=True))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_small_loss_under_large_logits_keeps_float32_precision(backend):
    """Logits near 3e3 with a clear positive: the loss is small and each backend must get it
    to one float32 rounding of the logits (logit_rounding_limit) or twice PyTorch's own
    float32 error. Formed as lse - positive, it would carry |lse| * eps ~ 1e-3 of absolute
    error."""
    dev = backend_device(backend)
    g = torch.Generator().manual_seed(7)
    # rows close to one direction: logits ~3e3 that differ by a few units
    base = torch.randn(1, 8, generator=g, dtype=torch.float64)
    img = F.normalize(base + 0.03 * torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = img.clone()
    scale = torch.tensor(3e3, dtype=torch.float64)
    want = ref.info_nce_loss(img, txt, scale, reduction="none")
    i32, t32, s32 = (x.float().to(dev) for x in (img, txt, scale))
    base = ref.info_nce_loss(i32.cpu(), t32.cpu(), s32.cpu(), reduction="none")
    got = pk.info_nce_loss(i32, t32, s32, reduction="none", backend=backend)
    assert want.abs().max() < 50 and (want > 1e-3).all()  # small losses, logits up to 3e3
    assert_close(got, want, torch.float32, baseline=base, tol=logit_rounding_limit(3e3))


def _confident_rows(spread=0.06):
    """float64 features whose logits are ~3e3 and differ by tens of units: losses down to 1e-3."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(1, 8, generator=g, dtype=torch.float64)
    img = F.normalize(base + spread * torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + 0.003 * torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    return img, txt, torch.tensor(3e3, dtype=torch.float64)


def _grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    return grads(fn(*xs), xs)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_confident_rows_gradient_keeps_float32_precision(backend):
    """The backward's softmax exp(L - lse) at logits ~3e3 and losses of 1e-3. A log-sum-exp
    rounded to float32 (a step of 2.4e-4) would put up to 2400x PyTorch's float32 error in
    the gradients; the forward keeps it in float64 (row_lse, col_lse) and the backward forms
    (L - hi) - lo. Each logit's own float32 rounding (1e-4) dominates every formulation's
    gradient here, and which one comes out ahead depends on how each product rounds (on
    closer rows a d(scale) of 3.7x PyTorch's error, and below it under another upstream
    weight): within 5x PyTorch's error, not the usual 2x."""
    dev = backend_device(backend)
    x64 = _confident_rows()
    x32 = [x.float() for x in x64]
    fn = functools.partial(pk.info_nce_loss, reduction="none", backend=backend)
    want = _grads(functools.partial(ref.info_nce_loss, reduction="none"), *x64)
    base = _grads(functools.partial(ref.info_nce_loss, reduction="none"), *x32)
    got = _grads(fn, *(x.to(dev) for x in x32))
    for g, w, b, name in zip(got, want, base, ("image", "text", "scale")):
        limit = max(TOLERANCE[torch.float32], 5 * rel_err(b, w))
        assert rel_err(g, w) <= limit, f"grad {name}: {rel_err(g, w):.3g} > {limit:.3g}"
    if backend != "reference":
        _, row_lse, col_lse = op("info_nce_loss", backend)(
            x32[0].to(dev), x32[1].to(dev), x32[2].to(dev), torch.arange(6, device=dev), True, False
        )
        assert row_lse.dtype == col_lse.dtype == torch.float64


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_backward_sees_the_forward_logits(backend, symmetric):
    """Logits of ~300 and nearly one-hot softmaxes: the backward's exp(L - lse) is exact
    only if it recomputes each logit bit for bit as the forward took it, since a logit
    rounded otherwise carries |L| * eps = 2e-5 (20x PyTorch's error here: recomputing dT's
    tiles as T I^T, another summation order, or fusing the logit's product into the
    following subtraction). The features are float32 values, so the float64 reference sees
    the same inputs; the limit is the precision rule's."""
    dev = backend_device(backend)
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        img, txt = torch.randn(8, 16, generator=g), 30 * torch.randn(8, 16, generator=g)
        labels, scale = torch.randint(0, 8, (8,), generator=g), torch.tensor(1.0)
        loss = functools.partial(ref.info_nce_loss, labels=labels, symmetric=symmetric)
        want = _grads(loss, img.double(), txt.double(), scale.double())
        torch_f32 = _grads(loss, img, txt, scale)
        fn = functools.partial(
            pk.info_nce_loss, labels=labels.to(dev), symmetric=symmetric, backend=backend
        )
        got = _grads(fn, img.to(dev), txt.to(dev), scale.to(dev))
        for gr, w, b, name in zip(got, want, torch_f32, ("image", "text", "scale")):
            assert_close(gr, w, torch.float32, baseline=b, what=f"seed {seed}, grad {name}")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_reduction_none_layout(backend):
    dev = backend_device(backend)
    i, t = _features(6, 9, 8, torch.float32, dev, seed=50)
    s = torch.tensor(4.0, device=dev)
    y = torch.tensor([8, 0, 8, 3, 1, 2], device=dev)
    per = pk.info_nce_loss(i, t, s, labels=y, reduction="none", backend=backend)
    assert per.shape == (2, 6)
    assert pk.info_nce_loss(
        i, t, s, labels=y, symmetric=False, reduction="none", backend=backend
    ).shape == (6,)
    torch.testing.assert_close(
        pk.info_nce_loss(i, t, s, labels=y, backend=backend), per.mean(), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        pk.info_nce_loss(i, t, s, labels=y, reduction="sum", backend=backend),
        per.sum() / 2,
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch(backend):
    dev = backend_device(backend)
    i = torch.zeros(0, 8, device=dev, requires_grad=True)
    t = torch.zeros(0, 8, device=dev, requires_grad=True)
    s = torch.tensor(2.0, device=dev, requires_grad=True)
    with poisoned():
        loss = pk.info_nce_loss(i, t, s, reduction="sum", backend=backend)
        assert loss.item() == 0.0
        gi, gt, gs = torch.autograd.grad(loss, [i, t, s])
    assert gi.shape == (0, 8) and gs.item() == 0.0
    assert math.isnan(
        pk.info_nce_loss(i, t, s, backend=backend).item()
    )  # mean of nothing, as torch
    # texts nobody points to: loss and grads still defined
    t2 = randn(3, 8, device=dev, seed=1, requires_grad=True)
    loss = pk.info_nce_loss(
        i,
        t2,
        s,
        labels=torch.zeros(0, dtype=torch.long, device=dev),
        reduction="sum",
        backend=backend,
    )
    assert loss.item() == 0.0
    assert torch.equal(torch.autograd.grad(loss, t2)[0], torch.zeros(3, 8, device=dev))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_deterministic(backend):
    dev = backend_device(backend)
    i, t = _features(40, 33, 32, torch.float32, dev, seed=60)
    s = torch.tensor(30.0, device=dev, requires_grad=True)
    y = torch.randint(0, 33, (40,), generator=torch.Generator().manual_seed(2)).to(dev)
    runs = [_run(backend, i, t, s, labels=y) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", [p for p in FUSED_BACKENDS if p.id in ("triton", "cuda")])
def test_out_of_range_labels_give_nan_on_gpu_kernels(backend):
    """CUDA and Triton do not check labels (no host sync): an out-of-range label never
    reads out of bounds and turns its losses into NaN."""
    dev = backend_device(backend)
    i, t = _features(5, 7, 8, torch.float32, dev, seed=70)
    s = torch.tensor(3.0, device=dev)
    y = torch.tensor([1, 7, 2, -1, 0], device=dev)
    name = "info_nce_loss_triton" if backend == "triton" else "info_nce_loss"
    loss, _, _ = getattr(torch.ops.pykernels, name)(i.detach(), t.detach(), s, y, True, False)
    bad = torch.tensor([False, True, False, True, False])
    assert torch.isnan(loss[:, bad.to(dev)]).all()
    assert torch.isfinite(loss[:, ~bad.to(dev)]).all()


@pytest.mark.parametrize("normalize", [False, True])
def test_cpu_blocks_of_the_logits(normalize):
    """The CPU kernel takes the logits in blocks of at most 2048 columns and 2^21 elements:
    here 2 x 2 blocks, the last ones partial, so the running row and column statistics
    are merged across blocks and the gradients accumulated over them."""
    i, t = _features(1100, 2100, 16, torch.float32, "cpu", seed=85)
    s = torch.tensor(20.0, requires_grad=True)
    y = torch.randint(0, 2100, (1100,), generator=torch.Generator().manual_seed(3))
    _check_against_reference("cpu", i, t, s, labels=y, normalize=normalize, reduction="none")


def test_fused_path_allocates_no_n_by_m_buffer():
    N = M = 4096
    i, t = _features(N, M, 64, torch.float32, "cpu", seed=80)
    s = torch.tensor(20.0, requires_grad=True)
    n_m = N * M * 4

    def fwd_bwd(backend):
        def f():
            loss = pk.info_nce_loss(i, t, s, backend=backend)
            torch.autograd.grad(loss, [i, t, s])

        return f

    fused = peak_cpu_bytes(fwd_bwd("cpu"))
    assert 0 < fused < n_m / 2, (
        f"fused peak {fused / 2**20:.1f} MiB vs N*M*4 = {n_m / 2**20:.0f} MiB"
    )
    # the check can fail: the reference, which builds the logits, is far above the bound
    assert peak_cpu_bytes(fwd_bwd("reference")) > n_m


# --------------------------------------------------------------------------- autograd, opcheck, compile


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gradcheck_float64(backend, symmetric):
    i = randn(5, 6, dtype=torch.float64, seed=90, requires_grad=True)
    t = randn(7, 6, dtype=torch.float64, seed=91, requires_grad=True)
    s = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([6, 0, 6, 2, 3])
    for normalize in (False, True):

        def f(i, t, s, b):
            return pk.info_nce_loss(
                i,
                t,
                s,
                labels=y,
                logit_bias=b,
                symmetric=symmetric,
                normalize=normalize,
                reduction="none",
                backend=backend,
            )

        assert torch.autograd.gradcheck(f, (i, t, s, b))


def _opcheck_cases(dev, dtype=torch.float32):
    i, t = (
        randn(6, 12, dtype=dtype, device=dev, seed=100),
        randn(9, 12, dtype=dtype, device=dev, seed=101),
    )
    s = torch.tensor(3.0, device=dev)
    y = torch.tensor([0, 8, 8, 3, 4, 1], device=dev)
    cases = []
    for sym, norm in ((True, False), (False, True)):
        cases.append(
            (
                "info_nce_loss",
                (
                    i.clone().requires_grad_(),
                    t.clone().requires_grad_(),
                    s.clone().requires_grad_(),
                    y,
                    sym,
                    norm,
                ),
            )
        )
        _, rl, cl = (
            torch.ops.pykernels.info_nce_loss(i, t, s, y, sym, norm)
            if dev.type == "cpu"
            else (None,) * 3
        )
        if rl is not None:
            g = randn(2 if sym else 1, 6, device=dev, seed=102)
            cases.append(("info_nce_loss_backward", (g, i, t, s, y, rl, cl, sym, norm)))
    return cases


test_opcheck = opcheck_test(_opcheck_cases, device=torch.device("cpu"))


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_fullgraph(backend):
    dev = backend_device(backend)

    def f(i, t, s, b, y):
        return (
            pk.info_nce_loss(i, t, s, logit_bias=b, backend=backend)
            + pk.info_nce_loss(
                i, t[:7], s, labels=y, normalize=True, reduction="none", backend=backend
            ).sum()
        )

    def want(i, t, s, b, y):
        return (
            ref.info_nce_loss(i, t, s, logit_bias=b)
            + ref.info_nce_loss(i, t[:7], s, labels=y, normalize=True, reduction="none").sum()
        )

    i, t = _features(9, 9, 16, torch.float32, dev, seed=110)
    s = torch.tensor(8.0, device=dev, requires_grad=True)
    b = torch.tensor(1.0, device=dev, requires_grad=True)
    y = torch.tensor([0, 6, 6, 1, 2, 3, 4, 5, 0], device=dev)
    assert_compiles_fullgraph(f, want, (i, t, s, b, y), [i, t, s, b], dev)


# --------------------------------------------------------------------------- bad input


def _ok(n=4, m=4, d=3):
    return torch.ones(n, d), torch.ones(m, d), torch.tensor(1.0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bad_labels_every_backend(backend):
    if backend_device(backend).type != "cpu":
        pytest.skip("labels are range-checked on CPU tensors only (see the NaN test for GPUs)")
    with pytest.raises(IndexError, match="'labels'"):
        pk.info_nce_loss(*_ok(3, 5), labels=torch.tensor([0, 9, 1]), backend=backend)
