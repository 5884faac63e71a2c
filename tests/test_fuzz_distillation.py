"""Property-based tests of the distillation family on every backend against the float64
reference: distillation_loss, cross_entropy, soft_target_cross_entropy. The baseline of the
precision contract is PyTorch's composition in the same dtype (the reference with
precise=False: torch.log_softmax, logaddexp), also for float64, where the reference's exact
forms are the answer and not what the kernels are held to."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import pykernels as pk
from pykernels.reference import distillation as ref

from ._fuzz import (
    BACKENDS,
    backend_device,
    compare,
    confident_row_tolerance,
    describe,
    dtypes,
    rows,
    seeds,
    sizes,
    specs,
)
from .helpers import dtypes_for

# ----------------------------------------------------------------------------- strategies
TEMPERATURES = st.sampled_from([0.05, 0.5, 1.0, 2.0, 4.0, 10.0]) | st.floats(0.05, 20.0)
BETAS = st.sampled_from([0.0, 1.0, 0.5]) | st.floats(0.0, 1.0)
SMOOTHING = st.sampled_from([0.0, 0.1, 0.5, 1.0])


@st.composite
def logits_shape(draw, backend, lo=1):
    """[..., V]: zero to two leading dims, V from `lo` to past the CPU kernel's 4096 block."""
    lead = tuple(draw(rows(backend, 6)) for _ in range(draw(st.integers(0, 2))))
    return lead + (draw(sizes(backend, big=True, lo=lo)),)


@st.composite
def labels(draw, shape, ignore_index):
    """int64 labels [...] in [0, V), each row ignored (ignore_index) with probability ~1/4:
    no row, some rows or every row may be ignored."""
    V = shape[-1]
    g = torch.Generator().manual_seed(draw(seeds()))
    y = torch.randint(0, V, shape[:-1], generator=g)
    p_ignore = draw(st.sampled_from([0.0, 0.25, 1.0]))
    return torch.where(
        torch.rand(shape[:-1], generator=g) < p_ignore, torch.full_like(y, ignore_index), y
    )


def conditioned(temperature, *logits):
    """Whether the gradient is checked: logits / T spanning at most ~60 (scale / T <= 10).
    Past that, row probabilities of e^-60 and less enter the gradient as differences of
    float32 numbers that round to 1: every float32 formulation loses digits there and the
    relative error is rounding luck (1% errors at T = 0.05 on two classes, where the
    reference's own float32 error is 0.05%). Outputs always."""
    return all(x.scale / temperature <= 10 for x in logits)


def _not_uniform(q) -> bool:
    """A "probs" target sharp enough that its rows are not uniform: a uniform target
    against tiny (so uniform) logits is a zero gradient, which no relative error judges.
    (Its rows are the view's, not the leaf's: Spec.values64.)"""
    return q.scale >= 1


def hard_row_tolerance(logits, y, dtype, ignore_index, smoothing):
    """confident_row_tolerance over the float64 hard cross entropy of the counted rows
    (the labelled class's gradient softmax - 1 of a confident row)."""
    rows = ref.hard_cross_entropy(logits.detach().double(), y.cpu(), ignore_index, smoothing)
    return confident_row_tolerance(rows[y.cpu() != ignore_index], dtype)


def cross_entropy_terms(x, y, ignore_index, smoothing, reduction):
    """compare's grad_terms for cross_entropy: each logit's gradient w (softmax - target) is
    a difference of terms w softmax and w target that cancel where the softmax is close to
    the target (label_smoothing = 1 on logits of 1e-3: softmax - 1/V of 7e-4 from terms of
    1/3)."""

    def terms(leaves64, ws):
        leaf = leaves64[0].detach().requires_grad_()
        view = x.view(leaf)
        logits = view.detach().reshape(-1, view.shape[-1])
        labels = y.reshape(-1).to(logits.device)
        counted = labels != ignore_index
        w = ws[0].detach().abs()
        if reduction == "none":
            w = w.reshape(-1)
        else:
            w = (w / max(1, int(counted.sum())) if reduction == "mean" else w).expand(
                labels.shape[0]
            )
        target = (1 - smoothing) * F.one_hot(
            torch.where(counted, labels, 0), logits.shape[-1]
        ) + smoothing / logits.shape[-1]
        t = (w * counted)[:, None] * (torch.softmax(logits, -1) + target)
        return [
            torch.autograd.grad(view, leaf, t.reshape(view.shape))[0]
        ]  # through the view: its layout

    return terms


def _labels_note(y):
    return None if y is None else y.tolist()


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_distillation_loss(backend, data):
    # The divergence of two equal distributions is zero in exact math, and every backend
    # returns rounding noise there, which a relative error cannot judge: V >= 2 and a
    # teacher of logits >= 1 in size (not uniform). V = 1: test_one_class_gives_zero.
    dtype, shape = data.draw(dtypes(backend)), data.draw(logits_shape(backend, lo=2))
    s = data.draw(specs(shape, dtype))
    t = data.draw(specs(shape, dtype, stream=1).filter(lambda x: x.scale >= 1))
    ignore_index = data.draw(st.sampled_from([-100, -1, 0]))
    y = data.draw(st.none() | labels(shape, ignore_index))
    args = dict(
        temperature=data.draw(TEMPERATURES),
        soft_weight=data.draw(st.sampled_from([1.0, 0.5, 0.0, 2.0])),
        hard_weight=0.0 if y is None else data.draw(st.sampled_from([0.0, 0.5, 1.0])),
        beta=data.draw(BETAS),
        ignore_index=ignore_index,
        label_smoothing=data.draw(SMOOTHING),
        reduction=data.draw(st.sampled_from(["batchmean", "sum", "none"])),
    )
    teacher_grad = data.draw(st.booleans())
    describe(
        backend=backend,
        student=s,
        teacher=t,
        labels=_labels_note(y),
        teacher_grad=teacher_grad,
        **args,
    )
    dev = backend_device(backend)
    y = None if y is None else y.to(dev)

    def reference(u, v, precise=True):
        return ref.distillation_loss(
            s.view(u),
            t.view(v),
            args["temperature"],
            y,
            args["soft_weight"],
            args["hard_weight"],
            args["beta"],
            ignore_index,
            args["label_smoothing"],
            args["reduction"],
            precise=precise,
        )

    compare(
        lambda u, v: pk.distillation_loss(s.view(u), t.view(v), labels=y, backend=backend, **args),
        reference,
        [s.leaf(dev), t.leaf(dev, teacher_grad)],
        dtype,
        what="distillation_loss",
        backend=backend,
        baseline=lambda u, v: reference(u, v, precise=False),
        grads=conditioned(args["temperature"], s, t),
        grad_tol=None
        if y is None or args["hard_weight"] == 0
        else hard_row_tolerance(
            s.view(s.leaf("cpu")), y, dtype, ignore_index, args["label_smoothing"]
        ),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_cross_entropy(backend, data):
    dtype, shape = data.draw(dtypes(backend)), data.draw(logits_shape(backend))
    x = data.draw(specs(shape, dtype))
    ignore_index = data.draw(st.sampled_from([-100, -1, 0]))
    y = data.draw(labels(shape, ignore_index))
    smoothing, reduction = data.draw(SMOOTHING), data.draw(st.sampled_from(["mean", "sum", "none"]))
    describe(
        backend=backend,
        logits=x,
        labels=_labels_note(y),
        ignore_index=ignore_index,
        label_smoothing=smoothing,
        reduction=reduction,
    )
    # label_smoothing = 1 makes the target uniform, and the gradient softmax - 1/V is then
    # (x - mean x) / V: against logits of 1e-30 that is far below the rounding of 1/V in
    # the float64 reference itself (2e-17 against an exact 1e-31). Outputs only there. So
    # also for expanded logits (every row the same) under an equal weight per row (mean,
    # sum): the leaf's gradient is sum_r (softmax - onehot(y_r)), which cancels to ~0 when
    # the labels spread like the softmax (two rows labelled 0 and 1 on logits of 1e-3).
    dev = backend_device(backend)
    y = y.to(dev)
    compare(
        lambda u: pk.cross_entropy(
            x.view(u),
            y,
            ignore_index=ignore_index,
            label_smoothing=smoothing,
            reduction=reduction,
            backend=backend,
        ),
        lambda u: ref.cross_entropy(x.view(u), y, ignore_index, smoothing, reduction),
        [x.leaf(dev)],
        dtype,
        what="cross_entropy",
        backend=backend,
        baseline=lambda u: ref.cross_entropy(
            x.view(u), y, ignore_index, smoothing, reduction, precise=False
        ),
        grad_tol=hard_row_tolerance(x.view(x.leaf("cpu")), y, dtype, ignore_index, smoothing),
        grad_terms=cross_entropy_terms(x, y, ignore_index, smoothing, reduction),
        grads=not (smoothing == 1.0 and x.scale <= 1e-16)
        and not (x.layout == "expanded" and reduction != "none"),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_soft_target_cross_entropy(backend, data):
    dtype, shape = (
        data.draw(dtypes(backend)),
        data.draw(logits_shape(backend, lo=2)),
    )  # V = 1: test_one_class_gives_zero
    x = data.draw(specs(shape, dtype))
    # target probabilities: each row of the view a softmax (a sliced view: a subset of
    # one, which the op's math, linear in q, does not mind)
    # (not uniform: a uniform q against tiny, so uniform, logits is a zero gradient)
    q = data.draw(specs(shape, dtype, hi=30.0, values=("probs",), stream=1).filter(_not_uniform))
    temperature, reduction = (
        data.draw(TEMPERATURES),
        data.draw(st.sampled_from(["batchmean", "sum", "none"])),
    )
    target_grad = data.draw(st.booleans())
    describe(
        backend=backend,
        logits=x,
        target=q,
        temperature=temperature,
        reduction=reduction,
        target_grad=target_grad,
    )
    dev = backend_device(backend)
    compare(
        lambda u, v: pk.soft_target_cross_entropy(
            x.view(u), q.view(v), temperature=temperature, reduction=reduction, backend=backend
        ),
        lambda u, v: ref.soft_target_cross_entropy(x.view(u), q.view(v), temperature, reduction),
        [x.leaf(dev), q.leaf(dev, target_grad)],
        dtype,
        what="soft_target_cross_entropy",
        backend=backend,
        baseline=lambda u, v: ref.soft_target_cross_entropy(
            x.view(u), q.view(v), temperature, reduction, precise=False
        ),
        grads=conditioned(temperature, x),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_class_gives_zero(backend):
    """V = 1: every softmax is [1], so every loss and gradient is 0 in exact math; the
    backends give 0 up to a few float32 roundings of the log terms (scaled by T^2)."""
    dev = backend_device(backend)
    for dtype in dtypes_for(backend):
        s = torch.tensor([[3.0], [-1e4], [1e-30]], dtype=dtype, device=dev, requires_grad=True)
        t = torch.tensor([[-2.0], [5.0], [0.0]], dtype=dtype, device=dev, requires_grad=True)
        y = torch.tensor([0, -100, 0], device=dev)
        ulp = torch.finfo(torch.float32 if dtype != torch.float64 else dtype).eps
        for T in (0.05, 1.0, 4.0):
            for beta in (0.0, 0.3, 1.0):
                loss = pk.distillation_loss(
                    s,
                    t,
                    temperature=T,
                    labels=y,
                    hard_weight=0.5,
                    beta=beta,
                    label_smoothing=0.1,
                    reduction="sum",
                    backend=backend,
                )
                gs, gt = torch.autograd.grad(loss, [s, t])
                assert abs(loss.item()) <= 16 * ulp * max(T * T, 1), (T, beta, loss.item())
                assert gs.abs().max().item() <= 16 * ulp * max(
                    T, 1
                ) and gt.abs().max().item() <= 16 * ulp * max(T, 1)
        assert pk.cross_entropy(s, y, reduction="sum", backend=backend).item() == 0
        q = torch.ones_like(s)
        assert pk.soft_target_cross_entropy(s, q, reduction="sum", backend=backend).item() == 0
