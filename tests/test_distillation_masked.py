"""Distillation family with masked vocabularies: -inf logits are probability 0 (a padded
vocabulary, a top-k teacher), on every backend; an all-masked row is NaN where the kernels
cannot do better than the formula."""

import math

import pytest
import torch
import torch.nn.functional as F

import pykernels as pk
from pykernels.reference import distillation as ref

from .helpers import (
    ALL_BACKENDS,
    FUSED_BACKENDS,
    as64,
    assert_close,
    backend_device,
    dtypes_for,
    grads,
    labels,
    poisoned,
    randn,
)

# --------------------------------------------------------------------------- masked vocabularies
NEG_INF = -math.inf


def _masked(dtype, dev, kind, shape=(5, 40), pad=7, seed=150):
    """Student and teacher logits [5, 40] whose last `pad` classes both are -inf (a padded
    vocabulary). kind "top-k": the teacher also masks all but its 10 largest logits of each
    row (a top-k filtered teacher, -inf where the student has mass)."""
    s, t = (
        randn(*shape, dtype=torch.float64, seed=seed, scale=3),
        randn(*shape, dtype=torch.float64, seed=seed + 1, scale=3),
    )
    s[:, -pad:] = t[:, -pad:] = NEG_INF
    if kind == "top-k":
        kth = t.topk(10, -1).values[:, -1:]
        t = t.masked_fill(t < kth, NEG_INF)
    return s.to(dtype=dtype, device=dev), t.to(dtype=dtype, device=dev)


MASKED_CASES = [("padded", 0.0), ("padded", 0.5), ("padded", 1.0), ("top-k", 0.0), ("top-k", 0.5)]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind, beta", MASKED_CASES, ids=[f"{k}-beta{b}" for k, b in MASKED_CASES])
def test_masked_teacher(backend, kind, beta):
    """-inf teacher logits are probabilities of 0 whose terms are 0: loss and both gradients
    finite, within the precision contract of the float64 reference, with a hard term."""
    dev = backend_device(backend)
    y = labels((5,), 33, dev, seed=152, ignored=(3,))
    for dtype in dtypes_for(backend):
        s, t = (x.requires_grad_() for x in _masked(dtype, dev, kind))
        with poisoned():
            loss = pk.distillation_loss(
                s,
                t,
                temperature=2.0,
                labels=y,
                hard_weight=0.5,
                beta=beta,
                reduction="none",
                backend=backend,
            )
            gs, gt = grads(loss, [s, t])
        args = (2.0, y, 1.0, 0.5, beta, -100, 0.0, "none")
        r = as64(s, t)
        want = ref.distillation_loss(*r, *args)
        ws, wt = grads(want, r)
        b = [x.detach().requires_grad_() for x in (s, t)]
        base = ref.distillation_loss(*b, *args)
        bs, bt = grads(base, b)
        assert torch.isfinite(loss).all() and torch.isfinite(gs).all() and torch.isfinite(gt).all()
        assert_close(loss, want, dtype, baseline=base)
        assert_close(gs, ws, dtype, baseline=bs, what="grad student")
        assert_close(gt, wt, dtype, baseline=bt, what="grad teacher")
        assert torch.count_nonzero(gt[torch.isneginf(t.detach())]) == 0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_masked_classes_are_absent(backend, beta):
    """Classes that both student and teacher mask change nothing: the loss over the padded
    vocabulary is the loss over the unpadded one, their gradient is exactly 0, and the
    rest of the gradient is the unpadded one's. Also for the hard term and soft targets."""
    dev = backend_device(backend)
    s, t = (x.requires_grad_() for x in _masked(torch.float32, dev, "padded"))
    y = labels((5,), 33, dev, seed=153, ignored=())
    kw = dict(
        temperature=3.0, labels=y, hard_weight=0.7, beta=beta, reduction="none", backend=backend
    )
    loss = pk.distillation_loss(s, t, **kw)
    short = [x.detach()[:, :33].clone().requires_grad_() for x in (s, t)]
    want = pk.distillation_loss(*short, **kw)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(grads(loss, [s, t]), grads(want, short)):
        assert torch.count_nonzero(g[:, 33:]) == 0
        torch.testing.assert_close(g[:, :33], w, rtol=1e-4, atol=1e-7)
    q = torch.softmax(t.detach() / 3.0, -1).requires_grad_()  # 0 on the padding
    soft = pk.soft_target_cross_entropy(s, q, temperature=3.0, reduction="none", backend=backend)
    q_short = q.detach()[:, :33].clone().requires_grad_()
    soft_short = pk.soft_target_cross_entropy(
        short[0], q_short, temperature=3.0, reduction="none", backend=backend
    )
    torch.testing.assert_close(soft, soft_short, rtol=1e-5, atol=1e-6)
    for g, w in zip(grads(soft, [s, q]), grads(soft_short, [short[0], q_short])):
        assert torch.count_nonzero(g[:, 33:]) == 0
        torch.testing.assert_close(g[:, :33], w, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_masked_teacher_matches_kl_div(backend):
    """beta = 0 is F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True) * T^2 where
    that is defined: it is nan for a -inf teacher logit (exp(-inf) * (-inf - log p_S)), and a
    finite stand-in (-1e30: a probability of exactly 0) gives the masked loss."""
    dev = backend_device(backend)
    s, t = _masked(torch.float32, dev, "top-k")
    T = 2.0

    def kl_div(s, t):
        return (
            F.kl_div(
                F.log_softmax(s / T, -1),
                F.log_softmax(t / T, -1),
                log_target=True,
                reduction="batchmean",
            )
            * T
            * T
        )

    assert kl_div(s.double(), t.double()).isnan()
    stand_in = lambda x: x.masked_fill(torch.isneginf(x), -1e30)  # noqa: E731
    got = pk.distillation_loss(s, t, temperature=T, backend=backend)
    assert_close(
        got,
        kl_div(stand_in(s.double()), stand_in(t.double())),
        torch.float32,
        baseline=kl_div(stand_in(s), stand_in(t)),
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_masked_student_where_the_teacher_has_mass(backend):
    """KL(p_T || p_S) is +inf on a row where the student masks a class the teacher does not
    (and KL(p_S || p_T) where the teacher masks one the student does not), never nan; the
    student gradient stays finite, c (p_S - p_T); the generalised JSD stays finite."""
    dev = backend_device(backend)
    s, t = (randn(3, 20, dtype=torch.float64, seed=154 + k, scale=2) for k in range(2))
    s[1, 4] = NEG_INF
    t[2, 6] = NEG_INF
    s, t = s.float().to(dev).requires_grad_(), t.float().to(dev)
    for beta, inf_row in ((0.0, 1), (1.0, 2), (0.5, None)):
        loss = pk.distillation_loss(
            s, t, temperature=2.0, beta=beta, reduction="none", backend=backend
        )
        want = ref.distillation_loss(
            s.detach().double(), t.double(), 2.0, beta=beta, reduction="none"
        )
        assert not loss.isnan().any()
        finite = [r for r in range(3) if r != inf_row]
        if inf_row is not None:
            assert loss[inf_row].item() == math.inf
        assert_close(
            loss[finite],
            want[finite],
            torch.float32,
            baseline=ref.distillation_loss(s.detach(), t, 2.0, beta=beta, reduction="none")[finite],
        )
    s64 = s.detach().double().requires_grad_()
    (gs,) = grads(
        pk.distillation_loss(s, t, temperature=2.0, reduction="none", backend=backend), [s]
    )
    (ws,) = grads(ref.distillation_loss(s64, t.double(), 2.0, reduction="none"), [s64])
    assert torch.isfinite(gs).all()
    assert_close(gs, ws, torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_all_masked_row(backend):
    """A counted row whose logits are all -inf has no distribution: a ValueError naming the
    argument on CPU tensors (every backend); with the label ignore_index the row is
    ignored (loss and gradient 0)."""
    dev = backend_device(backend)
    s, t = randn(3, 9, device=dev, seed=156), randn(3, 9, device=dev, seed=157)
    y = torch.tensor([1, 2, 3], device=dev)
    for name, s_, t_ in (
        ("teacher_logits", s, t.index_fill(0, torch.tensor([1], device=dev), NEG_INF)),
        ("student_logits", s.index_fill(0, torch.tensor([1], device=dev), NEG_INF), t),
    ):
        if dev.type == "cpu":
            with pytest.raises(ValueError, match=f"'{name}' has a row whose logits are all -inf"):
                pk.distillation_loss(s_, t_, labels=y, hard_weight=0.5, backend=backend)
        s_, t_ = s_.clone().requires_grad_(), t_.clone().requires_grad_()
        y_ign = y.index_fill(0, torch.tensor([1], device=dev), -100)
        loss = pk.distillation_loss(
            s_,
            t_,
            temperature=2.0,
            labels=y_ign,
            hard_weight=0.5,
            reduction="none",
            backend=backend,
        )
        gs, gt = grads(loss, [s_, t_])
        assert loss[1].item() == 0 and torch.isfinite(loss).all()
        assert torch.count_nonzero(gs[1]) == 0 and torch.count_nonzero(gt[1]) == 0
        assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
    if dev.type == "cpu":
        with pytest.raises(ValueError, match="'logits' has a row whose logits are all -inf"):
            pk.cross_entropy(s.index_fill(0, torch.tensor([2]), NEG_INF), y, backend=backend)


@pytest.mark.parametrize("backend", [p for p in FUSED_BACKENDS if p.id in ("cuda", "triton")])
def test_all_masked_row_is_nan_on_triton_and_cuda_kernels(backend):
    """GPU kernels do not synchronise to check: a counted all -inf row gets a nan loss and
    gradient, the other rows are unaffected. Called through the op, which skips the
    Python check on CPU tensors."""
    dev = backend_device(backend)
    s, t = randn(3, 10, device=dev, seed=158), randn(3, 10, device=dev, seed=159)
    t[1] = NEG_INF
    name = "distillation_loss_triton" if backend == "triton" else "distillation_loss"
    loss, gs, gt = getattr(torch.ops.pykernels, name)(
        s, t, None, 2.0, 1.0, 0.0, 0.0, -100, 0.0, True, True, 1.0
    )
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    assert (
        torch.isnan(gs[1]).all()
        and torch.isfinite(gs[[0, 2]]).all()
        and torch.isfinite(gt[[0, 2]]).all()
    )
