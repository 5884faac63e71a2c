"""Property-based tests of the cosine family on every backend against the float64 reference:
cosine_similarity, pairwise_cosine_similarity, feature_distillation_loss."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pykernels as pk
from pykernels.reference import cosine as ref

from ._fuzz import BACKENDS, LAYOUTS, backend_device, compare, describe, dtypes, rows, sizes, specs
from .helpers import assert_close, dtypes_for

EPS = st.sampled_from([1e-8, 1e-6, 1e-3])


# ----------------------------------------------------------------------------- strategies
@st.composite
def broadcast_pair(draw, backend):
    """(shape1, shape2, dim) of rank 1-3 that broadcast together; dim any valid index."""
    rank = draw(st.integers(1, 3))
    full = [draw(rows(backend, 5)) for _ in range(rank - 1)] + [
        draw(sizes(backend, big=True, lo=2))
    ]
    # The reduced dim: of size >= 2 and broadcast in neither input. A vector that is one
    # value repeated along it has a cosine independent of that value, so its gradient is
    # zero in exact math and the relative error would measure only the cancellation of
    # two terms of size 1/|x| (see test_single_feature_is_sign_with_zero_gradient).
    dim = draw(st.sampled_from([d for d in range(-rank, rank) if full[d] > 1]))
    s1, s2 = list(full), list(full)
    for i in range(rank):
        which = draw(st.sampled_from(["none", "x1", "x2"]))  # a size-1 dim that broadcasts
        if i == dim % rank:
            continue
        if which == "x1":
            s1[i] = 1
        elif which == "x2":
            s2[i] = 1
    if draw(st.booleans()) and rank > 1 and dim % rank != 0:
        s2 = s2[1:]  # fewer dims: leading broadcast
    return tuple(s1), tuple(s2), dim


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_cosine_similarity(backend, data):
    dtype = data.draw(dtypes(backend))
    s1, s2, dim = data.draw(broadcast_pair(backend))

    # expanded rows (an input's dim 0) along the reduced dim would be the repeated-value
    # case again; s2 may have fewer dims, so its dim 0 is the reduced one at another
    # index (b [2, 2] expanded against a [1, 2, 2] at dim -2 is such a case)
    def layouts(shape):
        return (
            ("contiguous", "transposed", "sliced")
            if dim % len(s1) == len(s1) - len(shape)
            else LAYOUTS
        )

    a = data.draw(specs(s1, dtype, layouts=layouts(s1)))
    b = data.draw(specs(s2, dtype, layouts=layouts(s2), stream=1))
    eps = data.draw(EPS)
    describe(backend=backend, a=a, b=b, dim=dim, eps=eps)
    dev = backend_device(backend)
    x1, x2 = a.leaf(dev), b.leaf(dev)
    compare(
        lambda u, v: pk.cosine_similarity(a.view(u), b.view(v), dim, eps, backend=backend),
        lambda u, v: ref.cosine_similarity(a.view(u), b.view(v), dim, eps),
        [x1, x2],
        dtype,
        what="cosine",
        backend=backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_pairwise_cosine_similarity(backend, data):
    dtype = data.draw(dtypes(backend))
    batch = data.draw(st.sampled_from([(), (2,), (1,), (2, 1)]))
    N, M, D = (
        data.draw(rows(backend, 40)),
        data.draw(rows(backend, 40)),
        data.draw(sizes(backend, lo=2)),
    )
    b_batch = data.draw(st.sampled_from([batch, batch[1:], tuple(1 for _ in batch)]))
    b = data.draw(st.none() | specs(b_batch + (M, D), dtype, stream=1))
    if b is None:
        # a against itself: with one row, or all rows equal (expanded), every output is
        # cos(x, x) = 1 and the gradient is zero in exact math (see the cosine test).
        N = max(N, 2)
        a = data.draw(specs(batch + (N, D), dtype, layouts=("contiguous", "transposed", "sliced")))
    else:
        a = data.draw(specs(batch + (N, D), dtype))
    eps = data.draw(EPS)
    describe(backend=backend, a=a, b=b, eps=eps)
    dev = backend_device(backend)
    leaves = [a.leaf(dev)] + ([] if b is None else [b.leaf(dev)])

    def args(*xs):
        return a.view(xs[0]), None if b is None else b.view(xs[1])

    # b=None: the diagonal cos(a_i, a_i) = 1 has a gradient that is zero in exact math, so
    # its rounding noise enters the gradient of every case: outputs only (the gradient of
    # the self-similarity is checked by tests/test_cosine.py::test_pairwise).
    compare(
        lambda *xs: pk.pairwise_cosine_similarity(*args(*xs), eps, backend=backend),
        lambda *xs: ref.pairwise_cosine_similarity(*args(*xs), eps),
        leaves,
        dtype,
        what="pairwise",
        backend=backend,
        grads=b is not None,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_feature_distillation_loss(backend, data):
    dtype = data.draw(dtypes(backend))
    shape = tuple(data.draw(rows(backend, 6)) for _ in range(data.draw(st.integers(0, 2))))
    shape += (data.draw(sizes(backend, big=True, lo=2)),)
    s, t = data.draw(specs(shape, dtype)), data.draw(specs(shape, dtype, stream=1))
    kind = data.draw(st.sampled_from(["mse", "cosine"]))
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
    eps, teacher_grad = data.draw(EPS), data.draw(st.booleans())
    describe(
        backend=backend,
        student=s,
        teacher=t,
        kind=kind,
        reduction=reduction,
        eps=eps,
        teacher_grad=teacher_grad,
    )
    dev = backend_device(backend)
    compare(
        lambda u, v: pk.feature_distillation_loss(
            s.view(u), t.view(v), kind, reduction, eps=eps, backend=backend
        ),
        lambda u, v: ref.feature_distillation_loss(s.view(u), t.view(v), kind, reduction, eps),
        [s.leaf(dev), t.leaf(dev, teacher_grad)],
        dtype,
        what="feature_distillation_loss",
        backend=backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_feature_is_sign_with_zero_gradient(backend):
    """D = 1: cos = sign(x1) sign(x2) (within the dtype's tolerance), and its gradient is 0
    in exact math, as the difference of two terms of size 1/|x|. The fuzz tests above draw
    D >= 2, since a relative error against an exact zero only measures that cancellation;
    here the gradient must be zero up to rounding of those terms."""
    dev = backend_device(backend)
    for dtype in dtypes_for(backend):
        x1 = torch.tensor(
            [[3e-3], [-2.0], [5.0], [-7e2]], dtype=dtype, device=dev, requires_grad=True
        )
        x2 = torch.tensor(
            [[4.0], [1e-3], [-3.0], [-1.0]], dtype=dtype, device=dev, requires_grad=True
        )
        w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype, device=dev)
        out = pk.cosine_similarity(x1, x2, backend=backend)
        sign = torch.sign(x1 * x2).squeeze(-1).detach().double()
        assert_close(out, sign, dtype, what="cosine")
        g1, g2 = torch.autograd.grad(out, [x1, x2], w)
        ulp = torch.finfo(dtype).eps
        for g, x in ((g1, x1), (g2, x2)):
            bound = 8 * ulp * w.abs()[:, None] / x.detach().abs()
            assert (g.abs() <= bound).all(), f"{dtype}: grad {g.flatten().tolist()} not ~0"
        pair = pk.pairwise_cosine_similarity(x1, x2, backend=backend)
        assert_close(pair, torch.sign(x1 * x2.T).detach().double(), dtype, what="pairwise")
        loss = pk.feature_distillation_loss(x1, x2, "cosine", "none", backend=backend)
        assert_close(loss, 1 - sign, dtype, what="1 - cos")
