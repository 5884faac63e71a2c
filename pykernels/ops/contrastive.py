"""Contrastive family: the fused InfoNCE / CLIP loss (BLIP's image-text contrastive loss).

The public function validates, picks a backend and calls one op,
``pykernels::info_nce_loss`` (C++: CPU and CUDA) or ``pykernels::info_nce_loss_triton``.
Each returns per-pair losses [K, N] (K = 2 when symmetric) plus the row and column
log-sum-exps that its backward op needs; the reduction happens here. The math (and the
definition of the text->image direction with explicit labels) is in
pykernels/reference/contrastive.py. The distributed forms are in pykernels/distributed/.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks as chk
from .. import backends
from .._precision import acc_dtype
from ..reference import contrastive as ref
from ._registry import op, register_autograd, register_cpp, triton_available

REDUCTIONS = ("mean", "sum", "none")
NORMALIZE_EPS = ref.NORMALIZE_EPS


def _scalar_tensor(fn: str, name: str, x, like: Tensor) -> None:
    chk.tensor(fn, name, x)
    chk.same_device(fn, ("image_features", like), (name, x))
    if x.numel() != 1 or x.dim() > 1:
        raise ValueError(
            f"{fn}: argument '{name}' must be a scalar tensor (shape [] or [1]), "
            f"got shape {tuple(x.shape)}"
        )


def _check_features(fn, image_features, text_features, logit_scale, logit_bias) -> None:
    for name, x in (("image_features", image_features), ("text_features", text_features)):
        chk.tensor(fn, name, x)
        if x.dim() != 2:
            raise ValueError(
                f"{fn}: argument '{name}' must have shape [rows, D], got {tuple(x.shape)}"
            )
    chk.same_device(fn, ("image_features", image_features), ("text_features", text_features))
    chk.same_dtype(fn, ("image_features", image_features), ("text_features", text_features))
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"{fn}: arguments 'image_features' [N, D] and 'text_features' [M, D] "
            f"must have the same feature size D, got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    _scalar_tensor(fn, "logit_scale", logit_scale, image_features)
    if logit_bias is not None:
        _scalar_tensor(fn, "logit_bias", logit_bias, image_features)


def _check_labels(fn, labels, N: int, M: int, like: Tensor, check_range: bool) -> None:
    if labels is None:
        if N != M:
            raise ValueError(
                f"{fn}: without 'labels', image_features and text_features must "
                f"have the same number of rows (pair i is (image i, text i)), got "
                f"N={N} and M={M}; pass labels for N != M"
            )
        return
    chk.tensor(fn, "labels", labels, floating=False)
    dt = labels.dtype
    if dt.is_floating_point or dt.is_complex or dt == torch.bool:
        raise TypeError(f"{fn}: argument 'labels' must be an integer tensor, got {dt}")
    chk.same_device(fn, ("image_features", like), ("labels", labels))
    if tuple(labels.shape) != (N,):
        raise ValueError(
            f"{fn}: argument 'labels' must have shape [N] = [{N}], got {tuple(labels.shape)}"
        )
    # Range check where it costs no device sync: on CPU, outside torch.compile. CUDA
    # kernels never read out of range; an out-of-range label gives a NaN loss there.
    if check_range and labels.device.type == "cpu" and N and not torch.compiler.is_compiling():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= M:
            raise IndexError(
                f"{fn}: argument 'labels' must hold row indices of text_features "
                f"in [0, {M}), got {lo if lo < 0 else hi}"
            )


def _check(
    fn,
    image_features,
    text_features,
    logit_scale,
    labels,
    logit_bias,
    symmetric,
    normalize,
    reduction,
    check_range=True,
):
    _check_features(fn, image_features, text_features, logit_scale, logit_bias)
    for name, v in (("symmetric", symmetric), ("normalize", normalize)):
        if not isinstance(v, bool):
            raise TypeError(f"{fn}: argument '{name}' must be a bool, got {type(v).__name__}")
    chk.choice(fn, "reduction", reduction, REDUCTIONS)
    _check_labels(
        fn, labels, image_features.shape[0], text_features.shape[0], image_features, check_range
    )


def _check_backward(fn, grad, image_features, text_features, row_lse, col_lse, symmetric):
    """The backward op's own inputs (as csrc/common/contrastive_args.h checks them)."""
    N, M = image_features.shape[0], text_features.shape[0]
    chk.grad(fn, grad, (2 if symmetric else 1, N), image_features)
    for name, x, n in (("row_lse", row_lse, N), ("col_lse", col_lse, M if symmetric else 0)):
        chk.grad(fn, x, (n,), image_features, name=name)


def split_lse(lse: Tensor, acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """(hi, lo) in `acc` with hi + lo = lse (float64). The forward keeps each row's
    log-sum-exp in float64: at |L| ~ 15 a float32 lse is rounded by 1e-6, the size of a
    confident row's loss, and exp(L - lse), the softmax of its positive, would carry that
    error (8x PyTorch's). A backward forms L - lse as (L - hi) - lo, exact up to the
    rounding of L. lo is 0 where lse is infinite."""
    lse = lse.double()
    hi = lse.to(acc)
    return hi.contiguous(), (lse - hi.double()).nan_to_num(0.0, 0.0, 0.0).to(acc).contiguous()


# ----------------------------------------------------------------------------- C++ ops
def _forward_fake(image_features, text_features, logit_scale, labels, symmetric, normalize):
    acc = acc_dtype(image_features.dtype)
    N, M = image_features.shape[0], text_features.shape[0]
    return (
        image_features.new_empty((2 if symmetric else 1, N), dtype=acc),
        image_features.new_empty((N,), dtype=torch.float64),  # log-sum-exps: split_lse
        image_features.new_empty((M if symmetric else 0,), dtype=torch.float64),
    )


def _backward_fake(
    grad, image_features, text_features, logit_scale, labels, row_lse, col_lse, symmetric, normalize
):
    return (
        torch.empty_like(image_features),
        torch.empty_like(text_features),
        torch.empty_like(logit_scale),
    )


register_cpp("info_nce_loss", _forward_fake, _backward_fake)

# ----------------------------------------------------------------------------- Triton ops
if triton_available():
    from torch.library import triton_op

    from ..triton_kernels import contrastive as tk
    from ..triton_kernels import cosine as tk_cos

    def _normalized(x: Tensor, normalize: bool) -> Tensor:
        return tk_cos.normalize(x, NORMALIZE_EPS, write_y=True)[0] if normalize else x

    def _check_op(
        fn, image_features, text_features, logit_scale, labels, symmetric, normalize
    ) -> None:
        """The Triton ops' checks, as the C++ ops': labels are not range-checked (GPU
        semantics: out of range -> NaN loss, no read) and must be int64 (the public
        function casts)."""
        _check(
            fn,
            image_features,
            text_features,
            logit_scale,
            labels,
            None,
            symmetric,
            normalize,
            "mean",
            check_range=False,
        )
        if labels.dtype != torch.int64:
            raise TypeError(f"{fn}: argument 'labels' must be int64, got {labels.dtype}")

    @triton_op("pykernels::info_nce_loss_triton", mutates_args=())
    def _info_nce_loss_triton(
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        labels: Tensor,
        symmetric: bool,
        normalize: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        fn = "pykernels::info_nce_loss_triton"
        _check_op(fn, image_features, text_features, logit_scale, labels, symmetric, normalize)
        i = _normalized(image_features.contiguous(), normalize)
        t = _normalized(text_features.contiguous(), normalize)
        scale = logit_scale.reshape(1)
        # loss = (max - positive) + log_sum: lse - positive would lose |lse| * eps
        row_max, row_log_sum, pos = tk.logsumexp(i, t, scale, labels.contiguous())
        l_i2t = (row_max - pos) + row_log_sum
        row_lse = row_max.double() + row_log_sum.double()  # float64: see split_lse
        if not symmetric:
            return l_i2t[None], row_lse, row_lse.new_empty(0)
        col_max, col_log_sum, _ = tk.logsumexp(i, t, scale, None, columns=True)
        M = t.shape[0]
        if M == 0:  # every label is out of range
            l_t2i = torch.full_like(pos, float("nan"))
        else:
            # pos is NaN where a label is out of range; clamp only keeps the gather in bounds
            j = labels.clamp(0, M - 1)
            l_t2i = (col_max[j] - pos) + col_log_sum[j]
        return torch.stack([l_i2t, l_t2i]), row_lse, col_max.double() + col_log_sum.double()

    @triton_op("pykernels::info_nce_loss_backward_triton", mutates_args=())
    def _info_nce_loss_backward_triton(
        grad: Tensor,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        labels: Tensor,
        row_lse: Tensor,
        col_lse: Tensor,
        symmetric: bool,
        normalize: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        fn = "pykernels::info_nce_loss_backward_triton"
        _check_op(fn, image_features, text_features, logit_scale, labels, symmetric, normalize)
        _check_backward(fn, grad, image_features, text_features, row_lse, col_lse, symmetric)
        i0, t0 = image_features.contiguous(), text_features.contiguous()
        i, t = _normalized(i0, normalize), _normalized(t0, normalize)
        labels = labels.contiguous()
        scale = logit_scale.reshape(1)
        acc = acc_dtype(i.dtype)
        grad = grad.to(acc).contiguous()
        a = grad[0].contiguous()
        b = grad[1].contiguous() if symmetric else None
        w_pos = a + b if symmetric else a
        c = tk.column_weights(labels, b, t.shape[0]) if symmetric else None
        lse = dict(lse_a=split_lse(row_lse, acc), lse_b=split_lse(col_lse, acc))
        # dI by row programs, dT by column programs over the same tiles of I T^T
        di, ds = tk.grad_side(
            i, t, labels, scale, w_a=a, w_b=c, w_pos=w_pos, columns=False, with_dscale=True, **lse
        )
        dt, _ = tk.grad_side(
            i, t, labels, scale, w_a=a, w_b=c, w_pos=w_pos, columns=True, with_dscale=False, **lse
        )
        if normalize:
            di = tk_cos.normalize_backward(di, i0, NORMALIZE_EPS)
            dt = tk_cos.normalize_backward(dt, t0, NORMALIZE_EPS)
        ds = ds.to(logit_scale.dtype).reshape(logit_scale.shape)
        return di.to(i0.dtype), dt.to(t0.dtype), ds


def _setup_context(ctx, inputs, output):
    image_features, text_features, logit_scale, labels, symmetric, normalize = inputs
    _, row_lse, col_lse = output
    ctx.save_for_backward(image_features, text_features, logit_scale, labels, row_lse, col_lse)
    ctx.symmetric, ctx.normalize = symmetric, normalize
    ctx.mark_non_differentiable(row_lse, col_lse)


def _backward(ops, ctx, grad, _grad_row_lse, _grad_col_lse):
    i, t, s, labels, row_lse, col_lse = ctx.saved_tensors
    di, dt, ds = ops("info_nce_loss_backward")(
        grad, i, t, s, labels, row_lse, col_lse, ctx.symmetric, ctx.normalize
    )
    return di, dt, ds, None, None, None


register_autograd("info_nce_loss", _setup_context, _backward)


# ----------------------------------------------------------------------------- public API
@chk.autocast_rule("image_features", "text_features")
def info_nce_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    *,
    labels: Tensor | None = None,
    logit_bias: Tensor | None = None,
    symmetric: bool = True,
    normalize: bool = False,
    reduction: str = "mean",
    backend: str | None = None,
) -> Tensor:
    """InfoNCE / CLIP contrastive loss of image_features [N, D] against text_features [M, D],
    logits = logit_scale * I T^T (+ logit_bias), without ever building the [N, M] logits.

    logit_scale: scalar tensor, already exponentiated (open_clip's ``logit_scale.exp()``).
    labels: int [N], image i's positive text (default arange(N); then M must equal N).
    symmetric: average of the image->text and text->image cross entropies; with labels,
    text labels[i] is scored over the N images with target image i (one term per pair).
    normalize: L2-normalise both feature sets first (max(|x|, 1e-12), as F.normalize).
    reduction: "mean" / "sum" over the N pairs, or "none": [2, N] (row 0 image->text,
    row 1 text->image) when symmetric, [N] otherwise. logit_bias cancels in softmax
    cross entropy: it does not change the loss and gets a zero gradient.
    Returns float32 (float64 for float64 features); gradients flow to both feature sets,
    logit_scale and logit_bias.
    """
    fn = "pykernels.info_nce_loss"
    _check(
        fn,
        image_features,
        text_features,
        logit_scale,
        labels,
        logit_bias,
        symmetric,
        normalize,
        reduction,
    )
    name = backends.resolve(backend, image_features.device, fn)
    if name == "reference":
        return ref.info_nce_loss(
            image_features,
            text_features,
            logit_scale,
            labels=labels,
            logit_bias=logit_bias,
            symmetric=symmetric,
            normalize=normalize,
            reduction=reduction,
        )
    N = image_features.shape[0]
    labels = torch.arange(N, device=image_features.device) if labels is None else labels.long()
    loss = op("info_nce_loss", name)(
        image_features, text_features, logit_scale, labels, symmetric, normalize
    )[0]
    if reduction == "none":
        out = loss if symmetric else loss[0]
    else:
        out = loss.sum() / loss.shape[0]  # per pair: the mean of the directions
        if reduction == "mean":
            out = out / N
    if logit_bias is not None:
        # exact zero gradient, and a NaN/inf bias still shows as it does in the reference
        out = out + (logit_bias.reshape(()) * 0).to(out.dtype)
    return out
