"""The SigLIP sigmoid loss over a data-parallel batch on torch.distributed, per rank as
open_clip's ``SigLipLoss(rank=r, world_size=W)`` computes it.

Every rank holds its local image and text features, ``[n_r, D]`` each. Rank r's loss is
its n_r images against the texts of every rank, with positive pairs only on its own
diagonal block (image i, text i of rank r), divided by n_r ("mean"):

    loss_r = ( sum_ij softplus(-z_ij L(I_r, T_r)_ij) + sum_{k != r} sum_ij softplus(L(I_r, T_k)_ij) ) / n_r

Its backward gives rank r's images, logit_scale and logit_bias the gradient of loss_r, and
every rank's texts the sum over ranks of the gradients of their losses with respect to them
(open_clip's exchanges with gradient do the same): after every rank's ``loss.backward()``,
each tensor holds exactly what open_clip's SigLipLoss gives on that rank.

``mode="ring"``
    text blocks travel around the ring of ranks with point-to-point send/recv; each step
    posts the next exchange, then scores the local images against the block in hand with
    the fused op (no [n, n] tile is stored). The backward is a second ring pass in which a
    block carries the accumulating gradient of its features back to its owner. Memory per
    rank: O(n D), independent of W. Blocks may differ in size between ranks.
``mode="gather"``
    all-gather the texts (O(W n D) per rank), then one fused call against every text, with
    the positives at rank r's slots; the gathered gradient is summed back to its owners.
    Every rank must hold the same n.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks, backends
from .._precision import acc_dtype
from ..ops import sigmoid_contrastive as _ops
from ..ops._registry import op as _op
from ..reference import sigmoid_contrastive as _ref
from ..reference.contrastive import normalized
from .collectives import Ring, all_gather_with_grad, gather_shapes, group_rank_and_size

MODES = ("ring", "gather")
REDUCTIONS = ("mean", "sum")
_FN = "pykernels.distributed.sigmoid_contrastive_loss"
_TAG_BLOCK, _TAG_GRAD = 40, 50


def _rank_sizes(image_features: Tensor, text_features: Tensor, group, world: int) -> list[int]:
    """n of every rank (collectives.gather_shapes)."""
    shapes = gather_shapes(image_features, text_features, group, world)
    if any(s[0] != s[2] or s[1] != s[3] or s[1] != shapes[0][1] for s in shapes):
        raise ValueError(
            f"{_FN}: every rank must pass image_features and text_features of "
            f"one shape [n, D] (n may differ between ranks in ring mode, D may "
            f"not); got (image shape, text shape) per rank: "
            f"{[(s[:2], s[2:]) for s in shapes]}"
        )
    return [s[0] for s in shapes]


# ----------------------------------------------------------------------------- block kernels
def _block_rows(kernel, img, blk, scale, bias, own: bool) -> Tensor:
    """Row losses of my images against one text block (positives on the diagonal if own)."""
    ids_i, ids_t = _block_ids(img, blk, own)
    if kernel == "reference":
        return _ref.sigmoid_contrastive_loss(
            img, blk, scale, bias, labels=(ids_i, ids_t), reduction="none"
        )
    return _op("sigmoid_contrastive_loss", kernel)(img, blk, scale, bias, ids_i, ids_t, False)


def _block_grads(kernel, grad, img, blk, scale, bias, own: bool):
    """(d img, d blk, d scale, d bias) of <grad, _block_rows(...)>."""
    ids_i, ids_t = _block_ids(img, blk, own)
    if kernel != "reference":
        return _op("sigmoid_contrastive_loss_backward", kernel)(
            grad, img, blk, scale, bias, ids_i, ids_t, False
        )
    with torch.enable_grad():
        xs = [x.detach().requires_grad_() for x in (img, blk, scale, bias)]
        rows = _ref.sigmoid_contrastive_loss(*xs, labels=(ids_i, ids_t), reduction="none")
        return torch.autograd.grad(rows, xs, grad.to(rows.dtype))


def _block_ids(img: Tensor, blk: Tensor, own: bool) -> tuple[Tensor, Tensor]:
    n, m = img.shape[0], blk.shape[0]
    ids_i = torch.arange(n, device=img.device)
    ids_t = torch.arange(m, device=img.device) if own else torch.full((m,), -1, device=img.device)
    return ids_i, ids_t


# ----------------------------------------------------------------------------- ring mode
class _RingSigmoid(torch.autograd.Function):
    """Row losses [n] of my images against every rank's texts (see the module docstring)."""

    @staticmethod
    def forward(ctx, img, txt, scale, bias, group, rank, world, sizes, kernel):
        ctx.save_for_backward(img, txt, scale, bias)
        ctx.group, ctx.rank, ctx.world, ctx.sizes, ctx.kernel = group, rank, world, sizes, kernel
        ring, pending = Ring(group, rank, world), []
        rows = torch.zeros(img.shape[0], dtype=acc_dtype(img.dtype), device=img.device)
        blk = txt.detach().contiguous()
        for s in range(world):  # at step s: the block of rank (rank - s) mod W
            if s + 1 < world:  # post the next exchange first: it overlaps this step's work
                (nxt,) = ring.start([blk], _TAG_BLOCK, pending, sizes[(rank - s - 1) % world])
            rows += _block_rows(kernel, img, blk, scale, bias, own=s == 0).to(rows.dtype)
            if s + 1 < world:
                Ring.finish(pending)
                blk = nxt
        return rows

    @staticmethod
    def backward(ctx, grad):
        img, txt, scale, bias = ctx.saved_tensors
        rank, world, sizes = ctx.rank, ctx.world, ctx.sizes
        ring, pending = Ring(ctx.group, rank, world), []
        acc = acc_dtype(img.dtype)
        d_img = torch.zeros(img.shape, dtype=acc, device=img.device)
        d_scale = torch.zeros((), dtype=acc, device=img.device)
        d_bias = torch.zeros((), dtype=acc, device=img.device)
        blk = txt.detach().contiguous()
        d_blk = torch.zeros(blk.shape, dtype=acc, device=img.device)  # travels with blk
        for s in range(world):
            if s + 1 < world:
                (nxt,) = ring.start([blk], _TAG_BLOCK, pending, sizes[(rank - s - 1) % world])
            di, dt, ds, db = _block_grads(ctx.kernel, grad, img, blk, scale, bias, own=s == 0)
            d_img += di
            d_blk += dt
            d_scale += ds.reshape(())
            d_bias += db.reshape(())
            # the block and its gradient go on to the next rank; after the last step the
            # gradient of the block I hold (rank + 1's) goes home, and mine comes back
            (d_nxt,) = ring.start([d_blk], _TAG_GRAD, pending, sizes[(rank - s - 1) % world])
            Ring.finish(pending)
            if s + 1 < world:
                blk = nxt
            d_blk = d_nxt
        return (
            d_img.to(img.dtype),
            d_blk.to(txt.dtype),
            d_scale.to(scale.dtype).reshape(scale.shape),
            d_bias.to(bias.dtype).reshape(bias.shape),
            None,
            None,
            None,
            None,
            None,
        )


# ----------------------------------------------------------------------------- public
def _check_local(
    image_features, text_features, logit_scale, logit_bias, normalize, mode, reduction
):
    """This rank's arguments: the fused op's checks, then [n, D] images and texts of one n."""
    _ops._check(
        _FN, image_features, text_features, logit_scale, logit_bias, None, normalize, reduction
    )
    _checks.choice(_FN, "mode", mode, MODES)
    _checks.choice(_FN, "reduction", reduction, REDUCTIONS)
    if text_features.shape[0] != image_features.shape[0]:
        raise ValueError(
            f"{_FN}: arguments 'image_features' and 'text_features' must have the "
            f"same number of rows n (pair i is (image i, text i)), got "
            f"{image_features.shape[0]} and {text_features.shape[0]}"
        )


def _gather_loss(img, txt, scale, bias, group, rank, world, sizes, normalize, reduction, backend):
    """Gather mode: every rank's texts, then one fused call with the positives at my slots."""
    if len(set(sizes)) > 1:
        raise ValueError(
            f"{_FN}: mode='gather' needs the same n on every rank, got {sizes};"
            f" use mode='ring' for unequal batches"
        )
    n = img.shape[0]
    all_text = all_gather_with_grad(txt, group)
    labels = (
        torch.arange(rank * n, (rank + 1) * n, device=img.device),
        torch.arange(world * n, device=img.device),
    )
    return _ops.sigmoid_contrastive_loss(
        img,
        all_text,
        scale,
        bias,
        labels=labels,
        normalize=normalize,
        reduction=reduction,
        backend=backend,
    )


def sigmoid_contrastive_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale,
    logit_bias,
    *,
    process_group=None,
    mode: str = "ring",
    normalize: bool = False,
    reduction: str = "mean",
    check_sizes: bool = True,
    backend: str | None = None,
) -> Tensor:
    """Rank r's SigLIP loss (see the module docstring): its [n, D] images against the texts
    of every rank of process_group, positives on its own diagonal block. logit_scale,
    logit_bias: scalar tensors or floats (logit_scale is the multiplier, open_clip's
    ``logit_scale.exp()``). reduction: "mean" (divided by this rank's n, as open_clip) or
    "sum". Every rank must call backward (the texts' gradients travel back to their
    owners). check_sizes: one small all-gather of the shapes (ring mode needs the sizes;
    with it off, every rank must hold the same n). backend: the fused op's backend for the
    local work. Without an initialised process group this is the single-process loss.
    """
    logit_scale = _ops._as_scalar_tensor(_FN, "logit_scale", logit_scale, image_features)
    logit_bias = _ops._as_scalar_tensor(_FN, "logit_bias", logit_bias, image_features)
    _check_local(image_features, text_features, logit_scale, logit_bias, normalize, mode, reduction)
    rank, world = group_rank_and_size(process_group)
    n = image_features.shape[0]
    sizes = (
        _rank_sizes(image_features, text_features, process_group, world)
        if world > 1 and check_sizes
        else [n] * world
    )
    args = (image_features, text_features, logit_scale, logit_bias)
    if world == 1:
        return _ops.sigmoid_contrastive_loss(
            *args, normalize=normalize, reduction=reduction, backend=backend
        )
    if mode == "gather":
        return _gather_loss(*args, process_group, rank, world, sizes, normalize, reduction, backend)
    if normalize:  # row-local, so it is done before the ring, with autograd
        image_features, text_features = normalized(image_features), normalized(text_features)
    kernel = backends.resolve(backend, image_features.device, _FN)
    rows = _RingSigmoid.apply(
        image_features,
        text_features,
        logit_scale,
        logit_bias,
        process_group,
        rank,
        world,
        sizes,
        kernel,
    )
    return rows.sum() / (n if reduction == "mean" else 1)
