"""Property-based tests of info_nce_loss on every backend against the float64 reference."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import pykernels as pk
from pykernels.reference import contrastive as ref

from ._fuzz import (
    BACKENDS,
    TOLERANCE,
    backend_device,
    compare,
    confident_row_tolerance,
    describe,
    dtypes,
    on_triton,
    seeds,
    sizes,
    specs,
)

# ----------------------------------------------------------------------------- strategies
# Rows around the CPU kernel's 64-row tile of the logit matrix.
CPU_ROWS = (1, 2, 3, 5, 7, 13, 31, 64, 65, 129)


def n_rows(backend):
    return st.sampled_from((1, 2, 3, 5, 7) if on_triton(backend) else CPU_ROWS)


@st.composite
def scalar(draw, values, dtype, device):
    """A one-element tensor of shape [] or [1], in `dtype` or float32, maybe a leaf that
    requires grad."""
    shape = draw(st.sampled_from([(), (1,)]))
    dt = draw(st.sampled_from([dtype, torch.float32]))
    return torch.full(shape, draw(st.sampled_from(values)), dtype=dt, device=device).requires_grad_(
        draw(st.booleans())
    )


@st.composite
def label_vector(draw, N, M):
    g = torch.Generator().manual_seed(draw(seeds()))
    return torch.randint(0, M, (N,), generator=g).to(
        draw(st.sampled_from([torch.int64, torch.int32]))
    )


# ----------------------------------------------------------------------------- test
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_info_nce_loss(backend, data):
    dtype, dev = data.draw(dtypes(backend)), backend_device(backend)
    normalize = data.draw(st.booleans())
    # normalize with D = 1 makes every feature +-1: a gradient that is zero in exact math
    N, D = data.draw(n_rows(backend)), data.draw(sizes(backend, lo=2 if normalize else 1))
    with_labels = data.draw(st.booleans())
    M = data.draw(n_rows(backend)) if with_labels else N
    hi = 30.0 if dtype == torch.float16 else 1e4  # float16 gradients of 1e4 features overflow
    i, t = data.draw(specs((N, D), dtype, hi=hi)), data.draw(specs((M, D), dtype, hi=hi, stream=1))
    y = data.draw(label_vector(N, M)).to(dev) if with_labels else None
    scale = data.draw(scalar((1.0, 14.28, 100.0), dtype, dev))
    bias = data.draw(st.none() | scalar((-10.0, 0.0, 3.0), dtype, dev))
    kw = dict(
        labels=y,
        symmetric=data.draw(st.booleans()),
        normalize=normalize,
        reduction=data.draw(st.sampled_from(["mean", "sum", "none"])),
    )
    describe(
        backend=backend,
        image=i,
        text=t,
        labels=None if y is None else y.tolist(),
        logit_scale=scale,
        logit_bias=bias,
        **{k: v for k, v in kw.items() if k != "labels"},
    )
    # logit_bias shifts every logit of a softmax alike: its gradient is zero in exact math
    # and the reference's is rounding noise (ours exactly 0 against 1e-17 in float64). It is compared as a constant here, and the fused backends' bias
    # gradient is checked for an exact 0 below.
    bias_grad = bias is not None and bias.requires_grad
    if bias_grad:
        bias = bias.detach()
    leaves = [i.leaf(dev), t.leaf(dev, data.draw(st.booleans())), scale] + (
        [] if bias is None else [bias]
    )

    def call(f):
        return lambda a, b, s, *bb: f(
            i.view(a), t.view(b), s, logit_bias=bb[0] if bb else None, **kw
        )

    # Expanded features (every row the same) make the logits of a softmax row equal: the
    # gradient of the other side is zero in exact math, a cancellation of terms of the
    # features' size that a relative error cannot judge. Broadcast inputs: outputs only.
    expanded = "expanded" in (i.layout, t.layout)
    grad_tol = row_tolerance(leaves, call, dtype)
    if dtype == torch.bfloat16 and backend in ("cuda", "triton"):
        # The GPU backward rounds dLoss/dL to bf16 for the tensor-core products (as
        # flash-attention's backward does): each gradient term is rounded twice, and on
        # vectors of a few elements that does not average out (1.05% seen).
        grad_tol = max(grad_tol, 2 * TOLERANCE[dtype])
    fused = call(lambda *a, **k: pk.info_nce_loss(*a, backend=backend, **k))
    outs = compare(
        fused,
        call(ref.info_nce_loss),
        leaves,
        dtype,
        what="info_nce_loss",
        backend=backend,
        grads=not expanded,
        grad_tol=grad_tol,
        baseline=half_operands_baseline(call, backend, dtype, normalize),
        grad_terms=gradient_terms(i, t, y, N, kw),
    )
    if bias_grad and backend != "reference":  # the reference is the formula: PyTorch's noise
        b = bias.clone().requires_grad_()
        out = fused(*[x.detach() for x in leaves[:3]], b)
        (g,) = torch.autograd.grad(out, [b], torch.ones_like(out))
        assert torch.equal(g, torch.zeros_like(b)) or not torch.isfinite(outs[0]).all(), (
            f"bias grad {g}"
        )


def half_operands_baseline(call, backend, dtype, normalize):
    """The same-precision run of a GPU backend (cuda, triton) with normalize=True in half
    precision: it normalizes the features into their own dtype and multiplies those (the
    tensor-core products; as open_clip's bf16 pipeline normalizes with F.normalize and
    multiplies in bf16), so its logits carry logit_scale times the features' rounding,
    and a confident row's small loss that error relative (6% on a mean loss of 0.0019 at
    logit_scale 100). Its baseline is that pipeline in PyTorch:
    F.normalize in the dtype, then the reference without normalize. None: the reference."""
    if not (
        normalize and backend in ("cuda", "triton") and dtype in (torch.float16, torch.bfloat16)
    ):
        return None

    def half_normalized(x):
        return torch.nn.functional.normalize(x.float(), dim=-1, eps=ref.NORMALIZE_EPS).to(x.dtype)

    return call(
        lambda a, b, *r, **k: ref.info_nce_loss(
            half_normalized(a), half_normalized(b), *r, **{**k, "normalize": False}
        )
    )


def gradient_terms(i, t, labels, N, kw):
    """compare's grad_terms for info_nce_loss: the magnitudes of the terms each gradient
    element sums. dLoss/dlogits is w * (softmax - target) per cross-entropy row, terms p and
    y of size 1 that cancel to the softmax's deviation from its target; dI = s * G T and
    dT = s * G^T I sum those over the other side's features. Features of 1e-30 have float32
    logits of 0 (underflow): every float32 run gives the rounding of 5 * fl(0.2) - 1 times
    the features where the float64 gradient is 1e-47 (ours 2.7 times PyTorch's noise, both
    far below eps times these terms)."""

    def terms(leaves64, ws):
        a_leaf, b_leaf, s_leaf = (x.detach().requires_grad_(x.requires_grad) for x in leaves64[:3])
        I, T, s = i.view(a_leaf), t.view(b_leaf), s_leaf.reshape(())
        y = torch.arange(N, device=I.device) if labels is None else labels.long().to(I.device)
        In, Tn = (_normalized(x) if kw["normalize"] else x for x in (I, T))
        logits = s * In.detach() @ Tn.detach().T
        if len(leaves64) > 3:
            logits = logits + leaves64[3].detach().reshape(())
        a, b = _row_weights(ws[0].detach().abs(), N, kw)
        G = a[:, None] * (torch.softmax(logits, 1) + F.one_hot(y, logits.shape[1]))
        if kw["symmetric"]:  # text labels[r] scored over the images, target image r
            per_text = b[:, None] * (
                torch.softmax(logits.T[y], 1) + torch.eye(N, dtype=G.dtype, device=G.device)
            )
            G = G + torch.zeros_like(G.T).index_add_(0, y, per_text).T
        s_abs = s.detach().abs()
        dIn, dTn = s_abs * G @ Tn.detach().abs(), s_abs * G.T @ In.detach().abs()
        if kw["normalize"]:
            dIn, dTn = _normalize_terms(I.detach(), dIn), _normalize_terms(T.detach(), dTn)
        ds = (G * (In.detach().abs() @ Tn.detach().abs().T)).sum()
        out = []
        for leaf, view, d in ((a_leaf, I, dIn), (b_leaf, T, dTn)):
            if leaf.requires_grad:  # the view's backward places (transposed, strided) each term
                out.append(torch.autograd.grad(view, leaf, d)[0])
        if s_leaf.requires_grad:
            out.append(ds.reshape(s_leaf.shape))
        return out

    return terms


def _normalized(x):
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(ref.NORMALIZE_EPS)


def _normalize_terms(x, d_hat):
    """Term magnitudes through x / |x|'s backward, (d - x_hat (x_hat . d)) / |x|."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(ref.NORMALIZE_EPS)
    x_hat = (x / norm).abs()
    return (d_hat + x_hat * (x_hat * d_hat).sum(-1, keepdim=True)) / norm


def _row_weights(w, N, kw):
    """The weights of the image->text and text->image rows' losses in the reduced loss,
    given the upstream weight w of the output."""
    mean = 1.0 / N if kw["reduction"] == "mean" else 1.0
    if not kw["symmetric"]:
        return (w * mean).expand(N), torch.zeros(N, dtype=w.dtype, device=w.device)
    if kw["reduction"] == "none":
        return w[0], w[1]
    return (w * mean / 2).expand(N), (w * mean / 2).expand(N)


def row_tolerance(leaves, call, dtype):
    """confident_row_tolerance over the rows' float64 losses (both directions' when symmetric)."""
    x64 = [x.detach().double() for x in leaves]
    per_row = call(lambda *a, **k: ref.info_nce_loss(*a, **{**k, "reduction": "none"}))(*x64)
    return confident_row_tolerance(per_row, dtype)
