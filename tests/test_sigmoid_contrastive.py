"""SigLIP sigmoid contrastive loss: sigmoid_contrastive_loss and nn.SigLipLoss (single process)."""

import math

import pytest
import torch
import torch.nn.functional as F

import pykernels as pk
from pykernels.reference import sigmoid_contrastive as ref

from .helpers import (
    ALL_BACKENDS,
    COMPILE_BACKENDS,
    CPP_BACKENDS,
    TRITON_BACKENDS,
    assert_close,
    assert_compiles_fullgraph,
    backend_device,
    opcheck_test,
    poisoned,
    randn,
)

try:
    from open_clip.loss import SigLipLoss as OpenClipSigLipLoss

    OPEN_CLIP_MISSING = None
except ImportError as e:  # optional test dependency
    OpenClipSigLipLoss, OPEN_CLIP_MISSING = None, f"open_clip is not installed ({e})"

needs_open_clip = pytest.mark.skipif(OPEN_CLIP_MISSING is not None, reason=str(OPEN_CLIP_MISSING))


def _interp(backend):
    """The Triton interpreter runs on CPU tensors: keep its shapes tiny."""
    return backend == "triton" and not torch.cuda.is_available()


def _features(n, m, d, dtype, dev, seed, scale=1.0):
    i = randn(n, d, dtype=dtype, device=dev, seed=seed, scale=scale).requires_grad_()
    t = randn(m, d, dtype=dtype, device=dev, seed=seed + 1, scale=scale).requires_grad_()
    return i, t


def _composition(i, t, s, b, labels=None, normalize=False):
    """open_clip's SigLipLoss math in the inputs' dtype (the idiomatic baseline)."""
    if normalize:
        i, t = F.normalize(i, dim=-1), F.normalize(t, dim=-1)
    logits = s * i @ t.T + b
    ids_i, ids_t = ref.pair_ids(labels, i.shape[0], t.shape[0], i.device)
    z = (ids_i[:, None] == ids_t[None, :]).to(logits.dtype) * 2 - 1
    return -F.logsigmoid(z * logits).sum() / i.shape[0]


# --------------------------------------------------------------------------- reference


def test_reference_matches_explicit_float64_math():
    I, T = randn(4, 5, dtype=torch.float64, seed=1), randn(6, 5, dtype=torch.float64, seed=2)
    s, b = 3.0, -1.5
    ids_i, ids_t = [0, 1, 1, 7], [1, 0, 2, 3, 1, 9]
    want = 0.0
    for a in range(4):
        for c in range(6):
            L = s * sum(x * y for x, y in zip(I[a].tolist(), T[c].tolist())) + b
            z = 1.0 if ids_i[a] == ids_t[c] else -1.0
            want += math.log1p(math.exp(-z * L))
    got = ref.sigmoid_contrastive_loss(
        I, T, s, b, labels=(torch.tensor(ids_i), torch.tensor(ids_t)), reduction="sum"
    )
    assert abs(got.item() - want) <= 1e-12 * abs(want)


@needs_open_clip
def test_reference_matches_open_clip_float64():
    I, T = randn(7, 8, dtype=torch.float64, seed=3), randn(7, 8, dtype=torch.float64, seed=4)
    s, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    want = OpenClipSigLipLoss()(I, T, s, b)
    torch.testing.assert_close(ref.sigmoid_contrastive_loss(I, T, s, b), want, rtol=1e-13, atol=0)


# --------------------------------------------------------------------------- every backend

CASES = [
    # (id, N, M, D, labels kind, normalize, scale, bias)
    ("square", 12, 12, 16, None, False, 2.0, 0.5),
    ("n_ne_m", 9, 14, 16, None, False, 2.0, 0.5),
    ("groups", 12, 12, 16, "groups", True, 10.0, -10.0),
    ("pair", 10, 13, 8, "pair", False, 1.5, -2.0),
    ("siglip_init", 16, 16, 32, None, True, 10.0, -10.0),
]


def _labels(kind, n, m, dev):
    if kind == "groups":
        return torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 0][:n], device=dev)
    if kind == "pair":
        return (torch.arange(n, device=dev) % 4, torch.arange(m, device=dev) % 5)
    return None


def _check_against_reference(
    backend, dtype, n, m, d, kind, normalize, s0, b0, seed, transpose=False
):
    dev = backend_device(backend)
    i, t = _features(n, m, d, dtype, dev, seed)
    if transpose:  # non-contiguous features: columns of a [D, rows] tensor
        i = randn(d, n, dtype=dtype, device=dev, seed=seed).T.requires_grad_()
        t = randn(d, m, dtype=dtype, device=dev, seed=seed + 1).T.requires_grad_()
    s = torch.tensor(s0, device=dev, requires_grad=True)
    b = torch.tensor(b0, device=dev, requires_grad=True)
    y = _labels(kind, n, m, dev)
    with poisoned():
        out = pk.sigmoid_contrastive_loss(
            i, t, s, b, labels=y, normalize=normalize, backend=backend
        )
    g = torch.autograd.grad(out, [i, t, s, b])
    i64, t64, s64, b64 = (x.detach().double().requires_grad_() for x in (i, t, s, b))
    want = ref.sigmoid_contrastive_loss(i64, t64, s64, b64, labels=y, normalize=normalize)
    g64 = torch.autograd.grad(want, [i64, t64, s64, b64])
    base = _composition(i, t, s, b, y, normalize)
    gbase = torch.autograd.grad(base, [i, t, s, b])
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(out, want, dtype, baseline=base, what="loss")
    for name, a, x, w, c in zip(
        ("d image", "d text", "d scale", "d bias"), g, (i, t, s, b), g64, gbase
    ):
        assert a.dtype == x.dtype and a.shape == x.shape, name
        assert_close(a, w, dtype, baseline=c, what=name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_reference_float32(backend, case):
    _, n, m, d, kind, normalize, s0, b0 = case
    _check_against_reference(backend, torch.float32, n, m, d, kind, normalize, s0, b0, seed=10)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("normalize", [False, True])
def test_half_dtypes_and_non_contiguous(backend, dtype, normalize):
    _check_against_reference(
        backend, dtype, 11, 13, 16, None, normalize, 10.0, -10.0, seed=20, transpose=True
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_blocks_beyond_one_tile(backend):
    """Several row and column blocks (and Triton tiles with masked edges)."""
    n, m, d = (40, 70, 24) if _interp(backend) else (300, 2500, 40)
    _check_against_reference(backend, torch.float32, n, m, d, "pair", True, 10.0, -10.0, seed=30)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_large_logits_are_stable(backend):
    """|logits| up to 1e4: softplus, never exp of a large argument. The float64 reference
    gives the loss and gradients; the float32 result must be finite and agree."""
    dev = backend_device(backend)
    for s0, b0 in ((1e4, 0.0), (5e3, -5e3)):
        i, t = _features(6, 6, 8, torch.float32, dev, seed=40)
        s = torch.tensor(s0, device=dev, requires_grad=True)
        b = torch.tensor(b0, device=dev, requires_grad=True)
        out = pk.sigmoid_contrastive_loss(i, t, s, b, normalize=True, backend=backend)
        g = torch.autograd.grad(out, [i, t, s, b])
        i64, t64, s64, b64 = (x.detach().double().requires_grad_() for x in (i, t, s, b))
        want = ref.sigmoid_contrastive_loss(i64, t64, s64, b64, normalize=True)
        g64 = torch.autograd.grad(want, [i64, t64, s64, b64])
        assert torch.isfinite(out) and all(torch.isfinite(x).all() for x in g)
        assert_close(out, want, torch.float32, baseline=_composition(i, t, s, b, normalize=True))
        for a, w in zip(g, g64):
            # logits of 1e4 carry 1e4 * eps of rounding in float32: the gradients' sigmoid terms
            # are 0 or 1 except within that of zero, so compare at float32's logit rounding
            assert_close(a, w, torch.float32, tol=1e-3)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_reductions_and_float_scale_bias(backend):
    dev = backend_device(backend)
    i, t = _features(5, 7, 8, torch.float32, dev, seed=50)
    rows = pk.sigmoid_contrastive_loss(i, t, 4.0, -2.0, reduction="none", backend=backend)
    want = ref.sigmoid_contrastive_loss(i.double(), t.double(), 4.0, -2.0, reduction="none")
    assert rows.shape == (5,)
    torch.testing.assert_close(rows.double(), want, rtol=1e-5, atol=1e-6)
    total = pk.sigmoid_contrastive_loss(i, t, 4.0, -2.0, reduction="sum", backend=backend)
    torch.testing.assert_close(total.double(), want.sum(), rtol=1e-5, atol=1e-6)
    mean = pk.sigmoid_contrastive_loss(i, t, 4.0, -2.0, backend=backend)
    torch.testing.assert_close(mean.double(), want.sum() / 5, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_side(backend):
    dev = backend_device(backend)
    i, t = _features(4, 0, 8, torch.float32, dev, seed=55)
    out = pk.sigmoid_contrastive_loss(
        i,
        t,
        2.0,
        1.0,
        labels=(torch.arange(4, device=dev), torch.arange(0, device=dev)),
        reduction="sum",
        backend=backend,
    )
    assert out.item() == 0.0
    (gi,) = torch.autograd.grad(out, [i])
    assert (gi == 0).all()


# --------------------------------------------------------------------------- open_clip parity


@needs_open_clip
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_open_clip_siglip_loss(backend, dtype):
    dev = backend_device(backend)
    i, t = _features(12, 12, 16, dtype, dev, seed=60)
    i, t = (
        F.normalize(i, dim=-1).detach().requires_grad_(),
        F.normalize(t, dim=-1).detach().requires_grad_(),
    )
    log_s = torch.tensor(math.log(10.0), device=dev, requires_grad=True)
    b = torch.tensor(-10.0, device=dev, requires_grad=True)
    got = pk.nn.SigLipLoss(backend=backend)(i, t, log_s.exp(), b)
    g = torch.autograd.grad(got, [i, t, log_s, b])
    want = OpenClipSigLipLoss()(i, t, log_s.exp(), b)
    gw = torch.autograd.grad(want, [i, t, log_s, b])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(got.float(), want.float(), **tol)
    for a, w in zip(g, gw):
        torch.testing.assert_close(a.float(), w.float(), **tol)
    d = pk.nn.SigLipLoss(backend=backend)(i, t, log_s.exp(), b, output_dict=True)
    assert set(d) == {"contrastive_loss"}


# --------------------------------------------------------------------------- autograd, opcheck, compile


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    i = randn(5, 6, dtype=torch.float64, seed=90, requires_grad=True)
    t = randn(7, 6, dtype=torch.float64, seed=91, requires_grad=True)
    s = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    y = (torch.tensor([6, 0, 6, 2, 3]), torch.tensor([0, 1, 2, 3, 4, 5, 6]))
    for normalize in (False, True):

        def f(i, t, s, b):
            return pk.sigmoid_contrastive_loss(
                i, t, s, b, labels=y, normalize=normalize, reduction="none", backend=backend
            )

        assert torch.autograd.gradcheck(f, (i, t, s, b))


def _opcheck_cases(dev):
    i, t = randn(6, 12, device=dev, seed=100), randn(9, 12, device=dev, seed=101)
    s, b = torch.tensor(3.0, device=dev), torch.tensor(-1.0, device=dev)
    ids_i, ids_t = torch.tensor([0, 8, 8, 3, 4, 1], device=dev), torch.arange(9, device=dev)
    g = randn(6, device=dev, seed=102)
    cases = []
    for norm in (False, True):
        cases.append(
            (
                "sigmoid_contrastive_loss",
                (
                    i.clone().requires_grad_(),
                    t.clone().requires_grad_(),
                    s.clone().requires_grad_(),
                    b.clone().requires_grad_(),
                    ids_i,
                    ids_t,
                    norm,
                ),
            )
        )
        cases.append(("sigmoid_contrastive_loss_backward", (g, i, t, s, b, ids_i, ids_t, norm)))
    return cases


test_opcheck = opcheck_test(_opcheck_cases, device=torch.device("cpu"))


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_fullgraph(backend):
    dev = backend_device(backend)

    def f(i, t, s, b, y):
        return (
            pk.sigmoid_contrastive_loss(i, t, s, b, backend=backend)
            + pk.sigmoid_contrastive_loss(
                i, t[:7], s, b, labels=(y, y[:7]), normalize=True, reduction="none", backend=backend
            ).sum()
        )

    def want(i, t, s, b, y):
        return (
            ref.sigmoid_contrastive_loss(i, t, s, b)
            + ref.sigmoid_contrastive_loss(
                i, t[:7], s, b, labels=(y, y[:7]), normalize=True, reduction="none"
            ).sum()
        )

    i, t = _features(9, 9, 16, torch.float32, dev, seed=110)
    s = torch.tensor(8.0, device=dev, requires_grad=True)
    b = torch.tensor(-3.0, device=dev, requires_grad=True)
    y = torch.tensor([0, 6, 6, 1, 2, 3, 4, 5, 0], device=dev)
    assert_compiles_fullgraph(f, want, (i, t, s, b, y), [i, t, s, b], dev)


# --------------------------------------------------------------------------- bad input


def _ok(n=4, m=4, d=3):
    return torch.ones(n, d), torch.ones(m, d), torch.tensor(1.0), torch.tensor(0.0)


BAD = [
    # (call, exception, text that must appear)
    (
        lambda: pk.sigmoid_contrastive_loss(torch.ones(4, 3), torch.ones(4, 5), 1.0, 0.0),
        ValueError,
        "feature size D",
    ),
    (
        lambda: pk.sigmoid_contrastive_loss(*_ok()[:2], torch.ones(2), 0.0),
        ValueError,
        "'logit_scale' must be a scalar",
    ),
    (
        lambda: pk.sigmoid_contrastive_loss(*_ok()[:3], torch.ones(1, 2)),
        ValueError,
        "'logit_bias' must be a scalar",
    ),
    (lambda: pk.sigmoid_contrastive_loss(*_ok()[:2], "10", 0.0), TypeError, "'logit_scale'"),
    (
        lambda: pk.sigmoid_contrastive_loss(*_ok(), labels=torch.zeros(3, dtype=torch.long)),
        ValueError,
        "'labels' must have shape [4]",
    ),
    (lambda: pk.sigmoid_contrastive_loss(*_ok(), labels=torch.zeros(4)), TypeError, "'labels'"),
    (
        lambda: pk.sigmoid_contrastive_loss(*_ok(4, 5), labels=torch.zeros(4, dtype=torch.long)),
        ValueError,
        "labels=(image_ids [N], text_ids [M])",
    ),
    (
        lambda: pk.sigmoid_contrastive_loss(
            *_ok(4, 5), labels=(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
        ),
        ValueError,
        "'labels[1]' must have shape [5]",
    ),
    (
        lambda: pk.sigmoid_contrastive_loss(*_ok(), labels=[torch.zeros(4, dtype=torch.long)]),
        TypeError,
        "'labels'",
    ),
    (lambda: pk.sigmoid_contrastive_loss(*_ok(), reduction="batchmean"), ValueError, "'reduction'"),
    (lambda: pk.sigmoid_contrastive_loss(*_ok(), normalize=1), TypeError, "'normalize'"),
    (
        lambda: pk.sigmoid_contrastive_loss(
            torch.ones(4, 3), torch.ones(4, 3, dtype=torch.float64), 1.0, 0.0
        ),
        TypeError,
        "'text_features'",
    ),
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("k", range(len(BAD)))
def test_bad_input_names_the_argument(backend, k):
    call, exc, text = BAD[k]
    with pytest.raises(exc, match=None) as e:
        call()
    assert text in str(e.value)


@pytest.mark.parametrize("backend", CPP_BACKENDS + TRITON_BACKENDS)
def test_op_checks_its_arguments(backend):
    """The ops themselves (torch.ops.pykernels.*) name the argument too."""
    dev = backend_device(backend)
    op = getattr(
        torch.ops.pykernels, "sigmoid_contrastive_loss" + ("_triton" if backend == "triton" else "")
    )
    i, t = torch.ones(4, 3, device=dev), torch.ones(5, 3, device=dev)
    s, b = torch.tensor(1.0, device=dev), torch.tensor(0.0, device=dev)
    ids_i, ids_t = torch.arange(4, device=dev), torch.arange(5, device=dev)
    with pytest.raises(TypeError, match="'image_ids' must be int64"):
        op(i, t, s, b, ids_i.int(), ids_t, False)
    with pytest.raises(ValueError, match=r"'text_ids' must have shape \[5\]"):
        op(i, t, s, b, ids_i, ids_t[:4], False)
    with pytest.raises(ValueError, match="'logit_bias' must be a scalar"):
        op(i, t, s, torch.zeros(2, device=dev), ids_i, ids_t, False)
