"""Fused linear + loss family: fused_linear_cross_entropy, fused_linear_distillation_loss.

Every backend against the unfused composition (matmul, then F.cross_entropy or
pykernels.distillation_loss) in float64, held to the precision contract with the same-dtype
unfused composition as the baseline; gradients to hidden, weight, bias (and the teacher's);
reductions with per-row upstream gradients; ignored rows; num_items_in_batch; gradcheck,
opcheck, torch.compile; errors; memory; the Hugging Face recipe."""

import pytest
import torch
import torch.nn.functional as F

import pykernels as pk
from pykernels.reference import fused_linear as ref

from .helpers import (
    ALL_BACKENDS,
    COMPILE_BACKENDS,
    CPP_BACKENDS,
    FUSED_BACKENDS,
    as64,
    assert_close,
    assert_compiles_fullgraph,
    backend_device,
    opcheck_ops,
    peak_cpu_bytes,
    poisoned,
    randn,
)

# Interpreter-sized shapes: rows, H (student), H_t (teacher), V (not a multiple of any block).
N, H, HT, V = 13, 8, 12, 37


def _labels(n, device, seed=0, ignored=(0, 5)):
    y = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))
    for i in ignored:
        y[i] = -100
    return y.to(device)


def _head(dtype, device, seed, h=H, bias=True, rows=N, scale=0.7):
    hid = randn(rows, h, dtype=dtype, device=device, seed=seed, requires_grad=True)
    w = randn(V, h, dtype=dtype, device=device, seed=seed + 1, scale=scale, requires_grad=True)
    b = randn(V, dtype=dtype, device=device, seed=seed + 2, requires_grad=True) if bias else None
    return hid, w, b


def _unfused_ce(hidden, weight, labels, bias=None, softcap=None, z_loss=0.0, **kw):
    """What users run: the matmul, then F.cross_entropy (plus the z-loss term)."""
    logits = hidden @ weight.T + (bias if bias is not None else 0)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    loss = F.cross_entropy(
        logits.float() if logits.dtype != torch.float64 else logits, labels, **kw
    )
    if z_loss:
        lse = torch.logsumexp(logits.float() if logits.dtype != torch.float64 else logits, -1)
        counted = labels != kw.get("ignore_index", -100)
        loss = loss + z_loss * (lse * lse * counted).sum() / counted.sum()
    return loss


def _leaves(*xs):
    return [x for x in xs if x is not None]


def _check(out, want64, baseline, inputs, inputs64, base_inputs, dtype, what, seed=0):
    """Value and gradients (of <out, w> for one random w) against float64, with the
    unfused same-dtype composition as the baseline of the precision contract."""
    assert_close(
        out.detach().double(),
        want64.detach(),
        dtype,
        baseline=baseline.detach().double(),
        what=what,
    )
    w = randn(*out.shape, dtype=torch.float64, seed=seed)
    got = torch.autograd.grad(out, inputs, w.to(out.dtype).to(out.device))
    want = torch.autograd.grad(want64, inputs64, w)
    base = torch.autograd.grad(baseline, base_inputs, w.to(baseline.dtype).to(baseline.device))
    for k, (g, r, b) in enumerate(zip(got, want, base)):
        assert_close(g.double().cpu(), r, dtype, baseline=b.double().cpu(), what=f"{what} grad {k}")


def _copies(xs, dtype=None):
    """Leaf copies (float64 by default) that keep requires_grad."""
    dtype = dtype or torch.float64
    return [None if x is None else x.detach().to(dtype).requires_grad_(x.requires_grad) for x in xs]


# --------------------------------------------------------------------------- reference
def test_reference_is_the_unfused_composition():
    h, w, b = _head(torch.float64, "cpu", 1)
    y = _labels(N, "cpu")
    for kw in [{}, {"label_smoothing": 0.2}, {"reduction": "sum"}, {"reduction": "none"}]:
        torch.testing.assert_close(
            ref.fused_linear_cross_entropy(h, w, y, b, **kw), _unfused_ce(h, w, y, b, **kw)
        )
    got = ref.fused_linear_cross_entropy(h, w, y, b, softcap=2.0, z_loss=1e-2)
    torch.testing.assert_close(got, _unfused_ce(h, w, y, b, softcap=2.0, z_loss=1e-2))
    th, tw, tb = _head(torch.float64, "cpu", 10, h=HT)
    kd = ref.fused_linear_distillation_loss(h, w, th, tw, y, b, tb, 2.0, 0.5, 1.0, 0.3)
    want = pk.distillation_loss(
        h @ w.T + b,
        th @ tw.T + tb,
        temperature=2.0,
        labels=y,
        beta=0.5,
        hard_weight=0.3,
        backend="reference",
    )
    torch.testing.assert_close(kd, want)


# --------------------------------------------------------------------------- cross entropy
CE_CASES = {
    "plain": {},
    "no-bias": {"bias": False},
    "smoothing": {"label_smoothing": 0.1},
    "softcap-zloss": {"softcap": 3.0, "z_loss": 1e-2},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
}


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", list(CE_CASES))
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_cross_entropy_matches_unfused(backend, case, chunk_size):
    kw = dict(CE_CASES[case])
    bias = kw.pop("bias", True)
    dev, dtype = backend_device(backend), torch.float32
    h, w, b = _head(dtype, dev, 2, bias=bias)
    y = _labels(N, dev)
    with poisoned():
        out = pk.fused_linear_cross_entropy(
            h, w, y, bias=b, chunk_size=chunk_size, backend=backend, **kw
        )
    x64 = _copies([h, w, b])
    want = _unfused_ce(*x64[:2], y.cpu(), x64[2], **kw)
    base_x = _copies([h, w, b], dtype)
    base = _unfused_ce(*base_x[:2], y, base_x[2], **kw)
    _check(out, want, base, _leaves(h, w, b), _leaves(*x64), _leaves(*base_x), dtype, case)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cross_entropy_half_inputs(backend, dtype):
    dev = backend_device(backend)
    h, w, b = _head(dtype, dev, 3)
    y = _labels(N, dev)
    out = pk.fused_linear_cross_entropy(h, w, y, bias=b, chunk_size=5, backend=backend)
    assert out.dtype == torch.float32
    x64 = _copies([h, w, b])
    base_x = _copies([h, w, b], dtype)
    _check(
        out,
        _unfused_ce(*x64[:2], y.cpu(), x64[2]),
        _unfused_ce(*base_x[:2], y, base_x[2]),
        [h, w, b],
        x64,
        base_x,
        dtype,
        str(dtype),
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_reduction_none_honours_per_row_upstream_gradients(backend):
    """A per-row weighting of the losses reaches hidden and weight (the gradient is not
    formed early for a scalar mean: Liger-Kernel's issue #968)."""
    dev = backend_device(backend)
    h, w, b = _head(torch.float32, dev, 4)
    y = _labels(N, dev)
    rows = pk.fused_linear_cross_entropy(
        h, w, y, bias=b, reduction="none", chunk_size=4, backend=backend
    )
    assert rows.shape == (N,)
    weights = torch.linspace(-1.0, 3.0, N, device=dev)
    got = torch.autograd.grad((rows * weights).sum(), [h, w, b])
    h64, w64, b64 = as64(h, w, b)
    want_rows = _unfused_ce(h64, w64, y.cpu(), b64, reduction="none")
    want = torch.autograd.grad((want_rows * weights.double().cpu()).sum(), [h64, w64, b64])
    for g, r in zip(got, want):
        torch.testing.assert_close(g.double().cpu(), r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_all_rows_ignored(backend):
    dev = backend_device(backend)
    h, w, b = _head(torch.float32, dev, 5)
    y = torch.full((N,), -100, device=dev)
    out = pk.fused_linear_cross_entropy(h, w, y, bias=b, backend=backend)
    assert torch.isnan(out)
    gh, gw, gb = torch.autograd.grad(out, [h, w, b])
    base = torch.autograd.grad(_unfused_ce(h, w, y, b), [h, w, b])
    for g, r in zip((gh, gw, gb), base):
        torch.testing.assert_close(g, r, equal_nan=True)
    total = pk.fused_linear_cross_entropy(h, w, y, bias=b, reduction="sum", backend=backend)
    assert total.item() == 0.0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_num_items_in_batch_replaces_the_divisor(backend, as_tensor):
    dev = backend_device(backend)
    h, w, b = _head(torch.float32, dev, 6)
    y = _labels(N, dev)
    n = torch.tensor(40, device=dev) if as_tensor else 40
    out = pk.fused_linear_cross_entropy(h, w, y, bias=b, num_items_in_batch=n, backend=backend)
    h64, w64, b64 = as64(h, w, b)
    want = _unfused_ce(h64, w64, y.cpu(), b64, reduction="sum") / 40
    torch.testing.assert_close(out.double().cpu(), want, rtol=1e-5, atol=1e-6)
    got, want = torch.autograd.grad(out, [h, w, b]), torch.autograd.grad(want, [h64, w64, b64])
    for g, r in zip(got, want):
        torch.testing.assert_close(g.double().cpu(), r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_return_lse(backend):
    dev = backend_device(backend)
    h, w, b = _head(torch.float32, dev, 7)
    y = _labels(N, dev)
    loss, lse = pk.fused_linear_cross_entropy(
        h, w, y, bias=b, return_lse=True, chunk_size=3, backend=backend
    )
    want = torch.logsumexp((h @ w.T + b).double(), -1).masked_fill(y == -100, 0.0)
    assert lse.shape == (N,) and lse.dtype == torch.float32 and not lse.requires_grad
    torch.testing.assert_close(lse.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_extreme_logits_are_stable(backend):
    """Logits of +-1e4 (hidden of size ~100 against unit weights)."""
    dev = backend_device(backend)
    h = randn(N, H, device=dev, seed=8, scale=3e3, requires_grad=True)
    w = randn(V, H, device=dev, seed=9, requires_grad=True)
    y = _labels(N, dev)
    out = pk.fused_linear_cross_entropy(h, w, y, chunk_size=4, backend=backend)
    h64, w64 = as64(h, w)
    want = _unfused_ce(h64, w64, y.cpu())
    assert torch.isfinite(out)
    torch.testing.assert_close(out.double().cpu(), want, rtol=1e-4, atol=1e-2)
    gh, gw = torch.autograd.grad(out, [h, w])
    assert torch.isfinite(gh).all() and torch.isfinite(gw).all()


# --------------------------------------------------------------------------- distillation
KD_CASES = [
    (beta, labels, bias)
    for beta in (0.0, 0.5, 1.0)
    for labels, bias in ((True, True), (False, False))
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("beta, with_labels, bias", KD_CASES)
@pytest.mark.parametrize("teacher_grad", [False, True])
def test_distillation_matches_unfused(backend, beta, with_labels, bias, teacher_grad):
    dev, dtype = backend_device(backend), torch.float32
    h, w, b = _head(dtype, dev, 20, bias=bias)
    th, tw, tb = _head(dtype, dev, 30, h=HT, bias=bias)
    for x in (th, tw, tb):
        if x is not None:
            x.requires_grad_(teacher_grad)
    y = _labels(N, dev, ignored=(1, 2, 9)) if with_labels else None
    kw = dict(
        temperature=2.0,
        beta=beta,
        hard_weight=0.4 if with_labels else 0.0,
        label_smoothing=0.1 if with_labels else 0.0,
    )
    with poisoned():
        out = pk.fused_linear_distillation_loss(
            h,
            w,
            th,
            tw,
            labels=y,
            student_bias=b,
            teacher_bias=tb,
            chunk_size=5,
            backend=backend,
            **kw,
        )

    def unfused(h, w, b, th, tw, tb, be):
        s = h @ w.T + (b if b is not None else 0)
        t = th @ tw.T + (tb if tb is not None else 0)
        return pk.distillation_loss(
            s, t, labels=None if y is None else y.to(s.device), backend=be, **kw
        )

    xs = [h, w, b, th, tw, tb]
    x64 = _copies(xs)
    base_x = _copies(xs, dtype)
    want = unfused(*x64, "reference")
    base = unfused(*base_x, backend)
    pick = lambda zs: [z for z in zs if z is not None and z.requires_grad]  # noqa: E731
    _check(out, want, base, pick(xs), pick(x64), pick(base_x), dtype, f"beta={beta}")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_distillation_none_and_bf16(backend):
    dev = backend_device(backend)
    h, w, _ = _head(torch.bfloat16, dev, 40, bias=False)
    th, tw, _ = _head(torch.bfloat16, dev, 50, h=HT, bias=False)
    y = _labels(N, dev)
    rows = pk.fused_linear_distillation_loss(
        h,
        w,
        th,
        tw,
        labels=y,
        temperature=2.0,
        hard_weight=0.5,
        reduction="none",
        chunk_size=6,
        backend=backend,
    )
    assert rows.shape == (N,) and rows.dtype == torch.float32
    h64, w64, th64, tw64 = _copies([h, w, th, tw])
    want = pk.distillation_loss(
        h64 @ w64.T,
        th64 @ tw64.T,
        labels=y.cpu(),
        temperature=2.0,
        hard_weight=0.5,
        reduction="none",
        backend="reference",
    )
    base = pk.distillation_loss(
        h.detach() @ w.detach().T,
        th @ tw.T,
        labels=y,
        temperature=2.0,
        hard_weight=0.5,
        reduction="none",
    )
    assert_close(rows.double().cpu(), want.detach(), torch.bfloat16, baseline=base.double().cpu())
    weights = torch.linspace(0.5, 2.0, N, device=dev)
    gh, gw = torch.autograd.grad((rows * weights).sum(), [h, w])
    rh, rw = torch.autograd.grad((want * weights.double().cpu()).sum(), [h64, w64])
    assert_close(gh.double().cpu(), rh, torch.bfloat16)
    assert_close(gw.double().cpu(), rw, torch.bfloat16)


# --------------------------------------------------------------------------- autograd tools
CPU_ONLY = [p for p in CPP_BACKENDS if p.id == "cpu"] + [pytest.param("reference", id="reference")]


@pytest.mark.parametrize("backend", CPU_ONLY)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(backend, reduction):
    dev = backend_device(backend)
    h, w, b = _head(torch.float64, dev, 60, rows=5)
    y = _labels(5, dev, ignored=(1,))
    torch.autograd.gradcheck(
        lambda h, w, b: pk.fused_linear_cross_entropy(
            h,
            w,
            y,
            bias=b,
            softcap=4.0,
            z_loss=1e-2,
            label_smoothing=0.1,
            reduction=reduction,
            chunk_size=2,
            backend=backend,
        ),
        (h, w, b),
    )
    th, tw, tb = _head(torch.float64, dev, 70, h=HT, rows=5)
    kd_red = "batchmean" if reduction == "mean" else reduction
    torch.autograd.gradcheck(
        lambda *xs: pk.fused_linear_distillation_loss(
            xs[0],
            xs[1],
            xs[3],
            xs[4],
            labels=y,
            student_bias=xs[2],
            teacher_bias=xs[5],
            temperature=2.0,
            beta=0.5,
            hard_weight=0.3,
            reduction=kd_red,
            chunk_size=2,
            backend=backend,
        ),
        (h, w, b, th, tw, tb),
    )


def _op_cases():
    h, w, b = _head(torch.float32, "cpu", 80, rows=6)
    th, tw, tb = _head(torch.float32, "cpu", 90, h=HT, rows=6)
    y = _labels(6, "cpu", ignored=(2,))
    g = randn(6, seed=99)
    ce = (h, w, y, b, -100, 0.1, 3.0, 1e-2, 4)
    kd = (h, w, th, tw, y, b, tb, 2.0, 1.0, 0.5, 0.5, -100, 0.0, 4)

    # backward ops are not differentiable themselves: their inputs require no grad
    def plain(xs):
        return tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in xs)

    return [
        ("fused_linear_cross_entropy", ce + (True, 0.25, True, [True, True, True])),
        ("fused_linear_cross_entropy", ce + (False, 1.0, False, [False] * 3)),
        ("fused_linear_cross_entropy_backward", plain((g,) + ce + ([True, True, True],))),
        ("fused_linear_distillation_loss", kd + (True, 0.2, [True] * 6)),
        ("fused_linear_distillation_loss_backward", plain((g,) + kd + ([True] * 6,))),
    ]


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_opcheck(backend):
    opcheck_ops(_op_cases(), backend)


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph(backend, reduction):
    dev = backend_device(backend)
    h, w, b = _head(torch.float32, dev, 100)
    th, tw, _ = _head(torch.float32, dev, 110, h=HT, bias=False)
    y = _labels(N, dev)
    kd_red = "batchmean" if reduction == "mean" else reduction

    def f(h, w, b, th, tw, n):
        ce = pk.fused_linear_cross_entropy(
            h,
            w,
            y,
            bias=b,
            reduction=reduction,
            num_items_in_batch=n if reduction == "mean" else None,
            backend=backend,
        )
        kd = pk.fused_linear_distillation_loss(
            h,
            w,
            th,
            tw,
            labels=y,
            temperature=2.0,
            hard_weight=0.5,
            reduction=kd_red,
            backend=backend,
        )
        return (ce + kd).sum()

    n = torch.tensor(11.0, device=dev)
    fp32 = (1.3e-6, 1e-5)  # assert_close's float32 default
    assert_compiles_fullgraph(f, f, (h, w, b, th, tw, n), [h, w, b], dev, tol=fp32, grad_tol=fp32)


# --------------------------------------------------------------------------- contract
def _mm_rows(fn):
    """The rows of every aten::mm / addmm's first operand that fn runs."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    ) as prof:
        fn()
    rows = []
    for e in prof.events():
        if e.name in ("aten::mm", "aten::addmm") and e.input_shapes:
            first = e.input_shapes[1] if e.name == "aten::addmm" else e.input_shapes[0]
            rows.append(first[0])
    return rows


@pytest.mark.parametrize("backend", [p for p in FUSED_BACKENDS if p.id in ("cpu", "triton")])
def test_ignored_rows_cost_no_matmul(backend):
    dev = backend_device(backend)
    if dev.type != "cpu":
        pytest.skip("on a GPU ignored rows go through (gathering them out would synchronise)")
    h, w, b = _head(torch.float32, dev, 120, rows=40)
    y = torch.full((40,), -100, device=dev)
    y[::4] = 3  # 10 counted rows
    rows = _mm_rows(
        lambda: pk.fused_linear_cross_entropy(
            h, w, y, bias=b, chunk_size=7, backend=backend
        ).backward()
    )
    # forward logits (chunks of 7 over 10 counted rows) and the hidden gradient; the weight
    # gradient's G^T h has V rows
    assert sorted(r for r in rows if r != V) == [3, 3, 7, 7], rows


def test_peak_memory_is_a_fraction_of_unfused():
    if "cpu" not in pk.backends.available(torch.device("cpu")):
        pytest.skip("pykernels._C not built")
    R, Hs, Vb = 1024, 64, 8192
    h = randn(R, Hs, seed=130, requires_grad=True)
    w = randn(Vb, Hs, seed=131, scale=0.1, requires_grad=True)
    y = torch.randint(0, Vb, (R,), generator=torch.Generator().manual_seed(132))

    def fused():
        torch.autograd.grad(
            pk.fused_linear_cross_entropy(h, w, y, chunk_size=128, backend="cpu"), [h, w]
        )

    def unfused():
        torch.autograd.grad(F.cross_entropy(h @ w.T, y), [h, w])

    fused_peak, unfused_peak = peak_cpu_bytes(fused), peak_cpu_bytes(unfused)
    assert fused_peak <= unfused_peak / 4, (fused_peak, unfused_peak)
    chunk_bytes = 128 * Vb * 4
    assert fused_peak <= 3 * chunk_bytes + 2 * Vb * Hs * 4 + R * Hs * 4, fused_peak


def test_modules():
    h, w, b = _head(torch.float32, "cpu", 140)
    th, tw, _ = _head(torch.float32, "cpu", 150, h=HT, bias=False)
    y = _labels(N, "cpu")
    ce = pk.nn.FusedLinearCrossEntropyLoss(label_smoothing=0.1, backend="reference")
    torch.testing.assert_close(ce(h, w, y, b), _unfused_ce(h, w, y, b, label_smoothing=0.1))
    kd = pk.nn.FusedLinearDistillationLoss(2.0, hard_weight=0.5, backend="reference")
    want = pk.distillation_loss(h @ w.T, th @ tw.T, labels=y, temperature=2.0, hard_weight=0.5)
    torch.testing.assert_close(kd(h, w, th, tw, y), want)


# --------------------------------------------------------------------------- errors
def _bad_calls(dev):
    h, w, b = _head(torch.float32, dev, 160)
    th, tw, _ = _head(torch.float32, dev, 170, h=HT, bias=False)
    y = _labels(N, dev)
    ce, kd = pk.fused_linear_cross_entropy, pk.fused_linear_distillation_loss
    return {
        "weight H": (lambda be: ce(h, w[:, :-1], y, backend=be), ValueError, "'weight'"),
        "bias shape": (lambda be: ce(h, w, y, bias=b[:-1], backend=be), ValueError, "'bias'"),
        "teacher V": (lambda be: kd(h, w, th, tw[:-1], backend=be), ValueError, "'teacher_weight'"),
        "teacher rows": (
            lambda be: kd(h, w, th[:-1], tw, backend=be),
            ValueError,
            "'teacher_hidden'",
        ),
        "label range": (
            lambda be: ce(h, w, torch.full_like(y, V), backend=be),
            IndexError,
            "'labels'",
        ),
        "integer hidden": (
            lambda be: ce(h.detach().long(), w, y, backend=be),
            TypeError,
            "'hidden'",
        ),
        "integer weight": (
            lambda be: kd(h, w.detach().int(), th, tw, backend=be),
            TypeError,
            "'student_weight'",
        ),
        "labels dtype": (lambda be: ce(h, w, y.int(), backend=be), TypeError, "'labels'"),
        "dtype mix": (
            lambda be: kd(h, w, th.double(), tw.double(), backend=be),
            TypeError,
            "'teacher_hidden'",
        ),
        "chunk_size": (
            lambda be: ce(h, w, y, chunk_size=-1, backend=be),
            ValueError,
            "'chunk_size'",
        ),
        "num_items": (
            lambda be: ce(h, w, y, num_items_in_batch=0, backend=be),
            ValueError,
            "'num_items_in_batch'",
        ),
        "softcap": (lambda be: ce(h, w, y, softcap=-1.0, backend=be), ValueError, "'softcap'"),
    }


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", list(_bad_calls("cpu")))
def test_bad_input_names_the_argument(backend, case):
    call, exc, name = _bad_calls(backend_device(backend))[case]
    with pytest.raises(exc, match=name):
        call(backend)


@pytest.mark.parametrize("backend", CPP_BACKENDS)
def test_cpp_op_errors_name_the_argument(backend):
    dev = backend_device(backend)
    h, w, b = _head(torch.float32, dev, 180)
    y = _labels(N, dev)
    op = torch.ops.pykernels.fused_linear_cross_entropy
    with pytest.raises(ValueError, match="'weight'"):
        op(h, w[:, :-1], y, b, -100, 0.0, 0.0, 0.0, 0, True, 1.0, False, [True] * 3)
    with pytest.raises(TypeError, match="'labels'"):
        op(h, w, y.int(), b, -100, 0.0, 0.0, 0.0, 0, True, 1.0, False, [True] * 3)
    th, tw, _ = _head(torch.float32, dev, 190, h=HT, bias=False)
    kd = torch.ops.pykernels.fused_linear_distillation_loss
    with pytest.raises(ValueError, match="'teacher_weight'"):
        kd(
            h,
            w,
            th,
            tw[:-1],
            y,
            None,
            None,
            1.0,
            1.0,
            0.0,
            0.0,
            -100,
            0.0,
            0,
            True,
            1.0,
            [True] * 6,
        )
    if dev.type == "cpu":
        with pytest.raises(IndexError, match="'labels'"):
            op(h, w, torch.full_like(y, V), b, -100, 0.0, 0.0, 0.0, 0, True, 1.0, False, [True] * 3)


# --------------------------------------------------------------------------- transformers
def _tiny_llama(layers, seed, dtype=torch.float64):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).to(dtype)


@pytest.mark.parametrize("backend", CPU_ONLY)
@pytest.mark.parametrize("num_items", [None, 17])
def test_hf_recipe_equals_the_models_own_loss(backend, num_items):
    from pykernels.integrations.transformers import causal_lm_loss

    model = _tiny_llama(2, 0, torch.float32)  # the model's loss upcasts its logits to float32
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 101, (2, 9), generator=gen)
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt that does not count
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    kw = {} if num_items is None else {"num_items_in_batch": num_items}
    want = model(input_ids=ids, attention_mask=mask, labels=labels, **kw).loss
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    got = causal_lm_loss(
        model, ids, labels, attention_mask=mask, chunk_size=5, backend=backend, **kw
    )
    torch.testing.assert_close(got, want)
    for g, r in zip(torch.autograd.grad(got, list(model.parameters())), want_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_hf_distillation_recipe_equals_the_unfused_loss():
    from pykernels.integrations.transformers import causal_lm_distillation_loss, shift_labels

    student, teacher = _tiny_llama(1, 2), _tiny_llama(2, 3)
    ids = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(4))
    got = causal_lm_distillation_loss(
        student, teacher, ids, ids, temperature=2.0, hard_weight=0.5, chunk_size=4
    )
    with torch.no_grad():
        t_logits = teacher(ids).logits
    want = pk.distillation_loss(
        student(ids).logits,
        t_logits,
        labels=shift_labels(ids),
        temperature=2.0,
        hard_weight=0.5,
        backend="reference",
    )
    torch.testing.assert_close(got, want)
    params = list(student.parameters())
    for g, r in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, r)
