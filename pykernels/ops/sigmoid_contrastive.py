"""The SigLIP sigmoid contrastive loss, fused: the [N, M] logits are never built.

The public function validates, picks a backend and calls one op,
``pykernels::sigmoid_contrastive_loss`` (C++: CPU and CUDA) or
``pykernels::sigmoid_contrastive_loss_triton``. Each takes the positives as two id vectors
(image_ids [N], text_ids [M]: equal ids are positive pairs) and returns the row losses [N]
in the accumulation dtype; the reduction happens here. The math is in
pykernels/reference/sigmoid_contrastive.py; the distributed form in
pykernels/distributed/sigmoid_contrastive.py.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from .. import _checks as chk
from .. import backends
from .._precision import acc_dtype
from ..reference import sigmoid_contrastive as ref
from ._registry import op, register_autograd, register_cpp, triton_available
from .contrastive import REDUCTIONS, _check_features


def _as_scalar_tensor(fn: str, name: str, x, like) -> Tensor:
    """A Python number becomes a 0-dim tensor on the features' device (no gradient)."""
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        device = like.device if isinstance(like, Tensor) else "cpu"
        dtype = (
            acc_dtype(like.dtype)
            if isinstance(like, Tensor) and like.is_floating_point()
            else torch.float32
        )
        return torch.tensor(float(x), device=device, dtype=dtype)
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{fn}: argument '{name}' must be a torch.Tensor or a float, got {type(x).__name__}"
        )
    return x


def _check_ids(fn: str, name: str, ids, n: int, like: Tensor) -> None:
    chk.tensor(fn, name, ids, floating=False)
    dt = ids.dtype
    if dt.is_floating_point or dt.is_complex or dt == torch.bool:
        raise TypeError(f"{fn}: argument '{name}' must be an integer tensor, got {dt}")
    chk.same_device(fn, ("image_features", like), (name, ids))
    if tuple(ids.shape) != (n,):
        raise ValueError(f"{fn}: argument '{name}' must have shape [{n}], got {tuple(ids.shape)}")


def _check_labels(fn: str, labels, N: int, M: int, like: Tensor) -> None:
    """labels: None, one integer [N] tensor (N == M) or a pair (image_ids [N], text_ids [M])."""
    if labels is None:
        return
    if isinstance(labels, Tensor):
        if N != M:
            raise ValueError(
                f"{fn}: one 'labels' tensor needs as many texts as images, got "
                f"N={N} and M={M}; pass labels=(image_ids [N], text_ids [M])"
            )
        _check_ids(fn, "labels", labels, N, like)
        return
    if not (isinstance(labels, (tuple, list)) and len(labels) == 2):
        raise TypeError(
            f"{fn}: argument 'labels' must be an integer tensor [N] or a pair "
            f"(image_ids [N], text_ids [M]), got {type(labels).__name__}"
        )
    _check_ids(fn, "labels[0]", labels[0], N, like)
    _check_ids(fn, "labels[1]", labels[1], M, like)


def _check(
    fn, image_features, text_features, logit_scale, logit_bias, labels, normalize, reduction
) -> None:
    _check_features(fn, image_features, text_features, logit_scale, logit_bias)
    if not isinstance(normalize, bool):
        raise TypeError(
            f"{fn}: argument 'normalize' must be a bool, got {type(normalize).__name__}"
        )
    chk.choice(fn, "reduction", reduction, REDUCTIONS)
    _check_labels(fn, labels, image_features.shape[0], text_features.shape[0], image_features)


# ----------------------------------------------------------------------------- C++ ops
def _forward_fake(
    image_features, text_features, logit_scale, logit_bias, image_ids, text_ids, normalize
):
    return image_features.new_empty(
        (image_features.shape[0],), dtype=acc_dtype(image_features.dtype)
    )


def _backward_fake(
    grad, image_features, text_features, logit_scale, logit_bias, image_ids, text_ids, normalize
):
    return (
        torch.empty_like(image_features),
        torch.empty_like(text_features),
        torch.empty_like(logit_scale),
        torch.empty_like(logit_bias),
    )


register_cpp("sigmoid_contrastive_loss", _forward_fake, _backward_fake)

# ----------------------------------------------------------------------------- Triton ops
if triton_available():
    from torch.library import triton_op

    from ..triton_kernels import cosine as tk_cos
    from ..triton_kernels import sigmoid_contrastive as tk
    from .contrastive import NORMALIZE_EPS, _normalized

    def _check_op(
        fn, image_features, text_features, logit_scale, logit_bias, image_ids, text_ids
    ) -> None:
        """The Triton ops' checks, as the C++ ops' (csrc/common/sigmoid_contrastive_args.h)."""
        _check_features(fn, image_features, text_features, logit_scale, logit_bias)
        for name, ids, n in (
            ("image_ids", image_ids, image_features.shape[0]),
            ("text_ids", text_ids, text_features.shape[0]),
        ):
            _check_ids(fn, name, ids, n, image_features)
            if ids.dtype != torch.int64:
                raise TypeError(f"{fn}: argument '{name}' must be int64, got {ids.dtype}")

    @triton_op("pykernels::sigmoid_contrastive_loss_triton", mutates_args=())
    def _sigmoid_contrastive_loss_triton(
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
        image_ids: Tensor,
        text_ids: Tensor,
        normalize: bool,
    ) -> Tensor:
        fn = "pykernels::sigmoid_contrastive_loss_triton"
        _check_op(fn, image_features, text_features, logit_scale, logit_bias, image_ids, text_ids)
        i = _normalized(image_features.contiguous(), normalize)
        t = _normalized(text_features.contiguous(), normalize)
        return tk.row_losses(
            i,
            t,
            image_ids.contiguous(),
            text_ids.contiguous(),
            logit_scale.reshape(1),
            logit_bias.reshape(1),
        )

    @triton_op("pykernels::sigmoid_contrastive_loss_backward_triton", mutates_args=())
    def _sigmoid_contrastive_loss_backward_triton(
        grad: Tensor,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
        image_ids: Tensor,
        text_ids: Tensor,
        normalize: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        fn = "pykernels::sigmoid_contrastive_loss_backward_triton"
        _check_op(fn, image_features, text_features, logit_scale, logit_bias, image_ids, text_ids)
        chk.grad(fn, grad, (image_features.shape[0],), image_features)
        i0, t0 = image_features.contiguous(), text_features.contiguous()
        i, t = _normalized(i0, normalize), _normalized(t0, normalize)
        acc = acc_dtype(i.dtype)
        args = (
            image_ids.contiguous(),
            text_ids.contiguous(),
            logit_scale.reshape(1),
            logit_bias.reshape(1),
            grad.to(acc).contiguous(),
        )
        di, dbias_rows = tk.grad_side(i, t, *args, columns=False)
        dt, _ = tk.grad_side(i, t, *args, columns=True)
        # d(scale) = sum_ij G_ij <I_i, T_j> = sum_i <(G T)_i, I_i>: O(N D), no third tile pass
        dscale = (di * i.to(acc)).sum()
        scale = logit_scale.to(acc).reshape(())
        di, dt = di * scale, dt * scale
        if normalize:
            di = tk_cos.normalize_backward(di, i0, NORMALIZE_EPS)
            dt = tk_cos.normalize_backward(dt, t0, NORMALIZE_EPS)
        return (
            di.to(i0.dtype),
            dt.to(t0.dtype),
            dscale.to(logit_scale.dtype).reshape(logit_scale.shape),
            dbias_rows.sum().to(logit_bias.dtype).reshape(logit_bias.shape),
        )


# ----------------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    *tensors, normalize = inputs
    ctx.save_for_backward(*tensors)
    ctx.normalize = normalize


def _backward(ops, ctx, grad):
    grads = ops("sigmoid_contrastive_loss_backward")(grad, *ctx.saved_tensors, ctx.normalize)
    return (*grads, None, None, None)


register_autograd("sigmoid_contrastive_loss", _setup_context, _backward)


# ----------------------------------------------------------------------------- public API
@chk.autocast_rule("image_features", "text_features")
def sigmoid_contrastive_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale,
    logit_bias,
    *,
    labels=None,
    normalize: bool = False,
    reduction: str = "mean",
    backend: str | None = None,
) -> Tensor:
    """SigLIP's sigmoid loss of image_features [N, D] against text_features [M, D]:
    -sum_ij log sigmoid(z_ij (logit_scale <I_i, T_j> + logit_bias)), z = +1 on positive pairs
    and -1 elsewhere, without ever building the [N, M] logits.

    logit_scale, logit_bias: scalar tensors or floats; logit_scale is the multiplier itself
    (open_clip passes ``logit_scale.exp()``). labels: None (positives on the diagonal
    i == j, N != M allowed), one integer tensor [N] of group ids (N == M; image i and text j
    are positive when labels[i] == labels[j]) or a pair (image_ids [N], text_ids [M]).
    normalize: L2-normalise both feature sets first (max(|x|, 1e-12), as F.normalize).
    reduction: "mean" divides the sum by N (open_clip's SigLipLoss), "sum", or "none": the
    [N] row losses. Returns float32 (float64 for float64 features); gradients flow to both
    feature sets, logit_scale and logit_bias.
    """
    fn = "pykernels.sigmoid_contrastive_loss"
    logit_scale = _as_scalar_tensor(fn, "logit_scale", logit_scale, image_features)
    logit_bias = _as_scalar_tensor(fn, "logit_bias", logit_bias, image_features)
    _check(fn, image_features, text_features, logit_scale, logit_bias, labels, normalize, reduction)
    name = backends.resolve(backend, image_features.device, fn)
    if name == "reference":
        return ref.sigmoid_contrastive_loss(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            labels=labels,
            normalize=normalize,
            reduction=reduction,
        )
    N, M = image_features.shape[0], text_features.shape[0]
    image_ids, text_ids = ref.pair_ids(labels, N, M, image_features.device)
    rows = op("sigmoid_contrastive_loss", name)(
        image_features, text_features, logit_scale, logit_bias, image_ids, text_ids, normalize
    )
    if reduction == "none":
        return rows
    return rows.sum() / (N if reduction == "mean" else 1)
