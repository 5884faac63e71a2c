"""The InfoNCE / CLIP loss over a data-parallel batch on torch.distributed.

Every rank holds its local image and text features, ``[n, D]`` each, rows in the same
order; the global batch is the concatenation over ranks in rank order (N = W * n) and
the positive of global image i is global text i. ``info_nce_loss`` returns, on every
rank, the loss one process would compute on the global batch, and its backward gives
every rank exactly the gradient of that global loss with respect to the rank's own
features, and the global gradient of ``logit_scale`` / ``logit_bias``.

Two ways to get there:

``mode="gather"``
    all-gather both feature sets (O(N * D) per rank), then each rank computes its share
    of the loss with the fused ``pykernels.info_nce_loss`` on local-vs-global blocks:
    its n image rows against all N texts and its n text rows against all N images
    (2 * n * N * D multiply-adds, never an [N, N] matrix). The partial losses are
    summed with an all-reduce; in the backward the gradients of the gathered features
    are summed back to their owners (reduce-scatter) and the ``logit_scale`` gradient
    is all-reduced.

``mode="ring"``
    no rank ever gathers the batch. Text blocks travel around the ring of ranks with
    point-to-point send/recv; each rank scores its image rows against the block in
    hand, keeping running row log-sum-exps for its rows, while the block carries the
    running column log-sum-exp of its own columns with it. The backward is a second
    ring pass in which the travelling block also carries the accumulating gradient of
    those text features. The per-tile work runs in the fused op's kernels (cpu, cuda,
    triton: no [n, n] tile is stored) or, on the reference backend, in chunked PyTorch.
    Memory per rank: its own blocks, the travelling block in use and the one arriving,
    plus the gradient accumulators in the backward: O(n * D), independent of W.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _checks, backends
from .._precision import acc_dtype
from ..ops._registry import op as _op
from ..ops.contrastive import info_nce_loss as _fused  # the single-process fused op
from ..ops.contrastive import split_lse
from ..reference.contrastive import normalized
from .collectives import (
    AllReduceGrad,
    AllReduceSum,
    Ring,
    all_gather_with_grad,
    gather_shapes,
    group_rank_and_size,
)

MODES = ("gather", "ring")
REDUCTIONS = ("mean", "sum")
_FN = "pykernels.distributed.info_nce_loss"


# ----------------------------------------------------------------------------- checks
def _check_local(image_features, text_features, logit_scale, logit_bias, mode, reduction):
    _checks.choice(_FN, "mode", mode, MODES)
    _checks.choice(_FN, "reduction", reduction, REDUCTIONS)
    _checks.tensor(_FN, "image_features", image_features)
    _checks.tensor(_FN, "text_features", text_features)
    _checks.tensor(_FN, "logit_scale", logit_scale)
    for name, x in (("image_features", image_features), ("text_features", text_features)):
        if x.dim() != 2:
            raise ValueError(f"{_FN}: argument '{name}' must be [n, D], got shape {tuple(x.shape)}")
    if logit_scale.numel() != 1 or logit_scale.dim() > 1:
        raise ValueError(
            f"{_FN}: argument 'logit_scale' must be a scalar tensor (shape [] or "
            f"[1]), got shape {tuple(logit_scale.shape)}"
        )
    named = [
        ("image_features", image_features),
        ("text_features", text_features),
        ("logit_scale", logit_scale),
    ]
    if logit_bias is not None:
        _checks.tensor(_FN, "logit_bias", logit_bias)
        if logit_bias.numel() != 1 or logit_bias.dim() > 1:
            raise ValueError(
                f"{_FN}: argument 'logit_bias' must be a scalar tensor (shape [] "
                f"or [1]), got shape {tuple(logit_bias.shape)}"
            )
        named.append(("logit_bias", logit_bias))
    _checks.same_device(_FN, *named)
    _checks.same_dtype(_FN, *named[:2])


def _check_sizes_across_ranks(image_features, text_features, group, world):
    """Every rank must hold [n, D] image and text blocks with the same n and D
    (collectives.gather_shapes)."""
    shapes = gather_shapes(image_features, text_features, group, world)
    first = shapes[0]
    if any(s != first for s in shapes) or first[0] != first[2] or first[1] != first[3]:
        raise ValueError(
            f"{_FN}: every rank must pass image_features and text_features of one shape [n, D] "
            f"(same n and D on all ranks); got (image shape, text shape) per rank: "
            f"{[(s[:2], s[2:]) for s in shapes]}"
        )


# ----------------------------------------------------------------------------- gather mode
def _gather_loss(
    img, txt, scale, bias, group, rank, world, symmetric, normalize, reduction, backend
):
    n = img.shape[0]
    scale = AllReduceGrad.apply(scale, group)
    bias = None if bias is None else AllReduceGrad.apply(bias, group)
    labels = torch.arange(rank * n, (rank + 1) * n, device=img.device)
    common = dict(
        labels=labels,
        logit_bias=bias,
        symmetric=False,
        normalize=normalize,
        reduction="sum",
        backend=backend,
    )
    partial = _fused(img, all_gather_with_grad(txt, group), scale, **common)  # our rows
    if symmetric:  # our text columns, scored over every image
        partial = (partial + _fused(txt, all_gather_with_grad(img, group), scale, **common)) / 2
    if reduction == "mean":
        partial = partial / (world * n)
    return AllReduceSum.apply(partial, group)


# ----------------------------------------------------------------------------- ring mode


_TAG_BLOCK, _TAG_LSE, _TAG_GRAD = 10, 20, 30


class _Tile:
    """The two things a ring step needs from one tile (my n image rows x one text block):
    its row and column log-sum-exps, and, given the global ones, the gradient of the
    dense (softmax) part of the loss. On cpu / cuda / triton the fused op's kernels do
    the O(n^2 D) work without materialising the tile; on `reference` it is chunked
    PyTorch ([chunk, n] logits at a time). Logits here carry no logit_bias: a constant
    shift cancels in every log-softmax."""

    def __init__(self, kernel: str | None, symmetric: bool, chunk: int):
        self.kernel, self.symmetric, self.chunk = kernel, symmetric, chunk

    def _labels(self, img):  # any in-range labels: the positives are handled by the caller
        return torch.arange(img.shape[0], device=img.device)

    def lse(self, img, blk, scale, with_pos: bool = False):
        """(row LSE [n], column LSE [m] or None, positive logits [n] or None) of
        L = scale * img @ blk^T; LSEs float64 (as the fused op keeps them: see
        pykernels.ops.contrastive.split_lse). with_pos (a square tile, the rank's own
        block): also the positives L[i, i], float64, the values the LSEs were taken over (a
        separate dot product would round differently, at logits of 1e3 by a small loss)."""
        if self.kernel is not None:
            loss, row, col = _op("info_nce_loss", self.kernel)(
                img, blk, scale, self._labels(img), self.symmetric, False
            )
            pos = row - loss[0].double() if with_pos else None  # loss = lse - L[i, i]
            return row, (col if self.symmetric else None), pos
        row, col, pos = [], None, []
        for rows, _, logits in self._chunks(img, blk, scale):
            row.append(_lse64(logits, 1))
            if with_pos:  # chunk row r is row rows.start + r, its positive at column rows.start + r
                pos.append(logits.diagonal(rows.start).double())
            if self.symmetric:
                part = _lse64(logits, 0)
                col = part if col is None else torch.logaddexp(col, part)
        return torch.cat(row), col, (torch.cat(pos) if with_pos else None)

    def grad(self, img, blk, scale, row_lse, col_lse, a, c):
        """d/d(img, blk, scale) of sum_ij (a exp(L_ij - row_lse_i) + c exp(L_ij - col_lse_j)) * L_ij
        with the LSEs held constant, i.e. the softmax part of the cross-entropy gradient
        (c = None: rows only). Returns (d_img, d_blk, d_scale) in the accumulation dtype."""
        acc = acc_dtype(img.dtype)
        s = scale.detach().to(acc).reshape(())
        if self.kernel is not None:
            n = img.shape[0]
            weights = [a.expand(n)] + ([c.expand(n)] if self.symmetric else [])
            empty = row_lse.new_empty(0)
            d_img, d_blk, d_scale = _op("info_nce_loss_backward", self.kernel)(
                torch.stack(weights),
                img,
                blk,
                scale,
                self._labels(img),
                row_lse,
                col_lse if self.symmetric else empty,
                self.symmetric,
                False,
            )
            # the op also took the positive pairs (i, i) of this tile: give them back
            w_pos = a + c if self.symmetric else a
            i, t = img.to(acc), blk.to(acc)
            d_img = d_img.to(acc).addcmul_(t, s * w_pos)
            d_blk = d_blk.to(acc).addcmul_(i, s * w_pos)
            return d_img, d_blk, d_scale.to(acc).reshape(()) + w_pos * _row_dots(i, t).sum()
        t = blk.to(acc)
        row_hi, row_lo = split_lse(row_lse, acc)
        col_hi, col_lo = split_lse(col_lse, acc) if c is not None else (None, None)
        d_img = torch.zeros(img.shape, dtype=acc, device=img.device)
        d_blk = torch.zeros(blk.shape, dtype=acc, device=blk.device)
        d_scale = torch.zeros((), dtype=acc, device=img.device)
        for rows, raw, logits in self._chunks(img, t, s):
            g = a * torch.exp((logits - row_hi[rows, None]) - row_lo[rows, None])
            if c is not None:
                g = g + c * torch.exp((logits - col_hi[None, :]) - col_lo[None, :])
            d_scale += (g * raw).sum()
            g = g * s  # d loss / d raw dot products, [chunk, m]
            d_img[rows] = g @ t
            d_blk.addmm_(g.T, img[rows].to(acc))  # in place: no [m, D] temporary
        return d_img, d_blk, d_scale

    def _chunks(self, img, blk, scale):
        """Row chunks of the tile: (rows, raw dot products, logits), [chunk, m] each."""
        acc = acc_dtype(img.dtype)
        s = scale.detach().to(acc).reshape(())
        t = blk.to(acc)
        for i0 in range(0, img.shape[0], self.chunk):
            rows = slice(i0, min(i0 + self.chunk, img.shape[0]))
            raw = img[rows].to(acc) @ t.T
            yield rows, raw, raw * s


def _no_autocast(fn):
    """The ring's tile math chooses its own precision (fp32 accumulation): an enclosing
    autocast region must not turn its matmuls into bf16 ones."""

    @functools.wraps(fn)
    def run(ctx, first, *args):
        with torch.autocast(device_type=first.device.type, enabled=False):
            return fn(ctx, first, *args)

    return run


class _RingInfoNCE(torch.autograd.Function):
    """Forward: W steps; at step k this rank holds the text block of rank - k (its own at
    k = 0) and folds the tile (my images x that block) into the running row LSE of my
    rows and the running column LSE that travels with the block. Backward: the same
    ring again, the block now travelling with its (complete) column LSE and the
    accumulator of its gradient, which arrives home complete."""

    @staticmethod
    @_no_autocast
    def forward(ctx, img, txt, scale, group, rank, world, symmetric, reduction, tile):
        ring = Ring(group, rank, world)
        block, row_lse, col_lse, pending = txt.contiguous(), None, None, []
        for k in range(world):
            # send the block in hand on while we work on it
            incoming = ring.start([block], _TAG_BLOCK, pending) if k < world - 1 else None
            rows, cols, diag = tile.lse(img, block, scale, with_pos=k == 0)
            if k == 0:  # my own block: the positive pairs (i, i)
                pos = diag
            row_lse = rows if k == 0 else torch.logaddexp(row_lse, rows)
            if symmetric:  # col_lse: the running column LSE that came with this block
                col_lse = cols if k == 0 else torch.logaddexp(col_lse, cols)
                if world > 1:  # it goes on with the block (the last hop: home)
                    (col_lse,) = ring.start([col_lse], _TAG_LSE, pending)
            ring.finish(pending)
            if incoming is not None:
                (block,) = incoming
        w_row, w_col = _weights(symmetric, reduction, world * img.shape[0])
        # the log-sum-exps are float64, so lse - pos keeps a small loss's digits
        partial = w_row * (row_lse - pos).sum()
        if symmetric:
            partial = partial + w_col * (col_lse - pos).sum()
        if world > 1:
            dist.all_reduce(partial, group=group)
        partial = partial.to(acc_dtype(img.dtype))
        ctx.save_for_backward(
            img, txt, scale, row_lse, col_lse if symmetric else row_lse.new_empty(0)
        )
        ctx.cfg = (group, rank, world, symmetric, reduction, tile)
        return partial

    @staticmethod
    @_no_autocast
    def backward(ctx, grad):
        img, txt, scale, row_lse, col_lse = ctx.saved_tensors
        group, rank, world, symmetric, reduction, tile = ctx.cfg
        acc = acc_dtype(img.dtype)
        s = scale.detach().to(acc).reshape(())
        w_row, w_col = _weights(symmetric, reduction, world * img.shape[0])
        a = grad.to(acc) * w_row  # d loss / d (row i's CE)
        c = grad.to(acc) * w_col if symmetric else None  # d loss / d (column j's CE)
        ring = Ring(group, rank, world)
        block, block_lse = txt.contiguous(), (col_lse if symmetric else None)
        d_img = d_block = d_scale = None
        pending = []
        for k in range(world):
            # the block and its column LSE are read-only: send them on while we work
            incoming = None
            if k < world - 1:
                travelling = [block, block_lse] if symmetric else [block]
                incoming = ring.start(travelling, _TAG_BLOCK, pending)
            gi, gb, gs = tile.grad(img, block, scale, row_lse, block_lse, a, c)
            d_img = gi if d_img is None else d_img.add_(gi)
            d_scale = gs if d_scale is None else d_scale + gs
            d_block = gb if d_block is None else d_block.add_(gb)
            del gi, gb
            if world > 1:  # the block's gradient accumulator follows it (the last hop: home)
                (d_block,) = ring.start([d_block], _TAG_GRAD, pending)
            ring.finish(pending)
            if incoming is not None:
                block, block_lse = incoming if symmetric else (incoming[0], None)
        # the positive pairs (i, i): all on this rank
        w_pos = a + c if symmetric else a
        d_img.addcmul_(txt.to(acc), -s * w_pos)  # in place: no [n, D] temporaries
        d_txt = d_block.addcmul_(img.to(acc), -s * w_pos)
        d_scale = d_scale - w_pos * _row_dots(img.to(acc), txt.to(acc)).sum()
        if world > 1:
            dist.all_reduce(d_scale, group=group)
        return (
            d_img.to(img.dtype),
            d_txt.to(txt.dtype),
            d_scale.reshape(scale.shape).to(scale.dtype),
            None,
            None,
            None,
            None,
            None,
            None,
        )


def _lse64(logits: Tensor, dim: int) -> Tensor:
    """logsumexp along `dim` as float64 max + log(sum): the float32 digits of both parts."""
    m = logits.amax(dim, keepdim=True)
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    log_sum = torch.log(torch.exp(logits - shift).sum(dim, keepdim=True))
    return (shift.double() + log_sum.double()).squeeze(dim)


def _row_dots(x: Tensor, y: Tensor) -> Tensor:
    """[n] dot products of matching rows, without an [n, D] product temporary."""
    return torch.bmm(x[:, None, :], y[:, :, None]).reshape(-1)


def _weights(symmetric: bool, reduction: str, total: int) -> tuple[float, float]:
    """Weights of each row's and each column's cross entropy in the loss."""
    w = 1.0 / total if reduction == "mean" else 1.0
    return (w / 2, w / 2) if symmetric else (w, 0.0)


def _check_args(
    image_features,
    text_features,
    logit_scale,
    logit_bias,
    mode,
    reduction,
    chunk_size,
    process_group,
    check_sizes,
) -> tuple[int, int]:
    """info_nce_loss's checks -> (rank, world size): this rank's arguments, then, with
    check_sizes, the shapes of every rank."""
    _check_local(image_features, text_features, logit_scale, logit_bias, mode, reduction)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(
            f"{_FN}: argument 'chunk_size' must be an int, got {type(chunk_size).__name__}"
        )
    _checks.positive(_FN, "chunk_size", chunk_size)
    rank, world = group_rank_and_size(process_group)
    if world > 1 and check_sizes:
        _check_sizes_across_ranks(image_features, text_features, process_group, world)
    elif image_features.shape != text_features.shape:
        raise ValueError(
            f"{_FN}: arguments 'image_features' and 'text_features' must have the same shape "
            f"[n, D], "
            f"got {tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    return rank, world


def _ring_loss(
    img, txt, scale, bias, group, rank, world, symmetric, normalize, reduction, chunk_size, backend
):
    """Ring mode: the fused op (or the reference's PyTorch tiles) on one text block at a time."""
    if normalize:  # row-local, so it is done before the ring, with autograd
        img, txt = normalized(img), normalized(txt)
    kernel = backends.resolve(backend, img.device, _FN)
    tile = _Tile(None if kernel == "reference" else kernel, symmetric, chunk_size)
    loss = _RingInfoNCE.apply(img, txt, scale, group, rank, world, symmetric, reduction, tile)
    if bias is not None:  # cancels in the loss: a zero gradient, and a NaN bias still shows
        loss = loss + (bias.reshape(()) * 0).to(loss.dtype)
    return loss


# ----------------------------------------------------------------------------- public
def info_nce_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    *,
    logit_bias: Tensor | None = None,
    process_group=None,
    mode: str = "gather",
    symmetric: bool = True,
    normalize: bool = False,
    reduction: str = "mean",
    check_sizes: bool = True,
    chunk_size: int = 1024,
    backend: str | None = None,
) -> Tensor:
    """The global-batch InfoNCE loss from per-rank blocks (see the module docstring).

    image_features, text_features: this rank's [n, D] blocks (same n and D on every rank);
    logit_scale (and logit_bias): scalar tensors, the same on every rank. Returns the
    global loss (float32; float64 for float64 features) on every rank. Every rank must
    call backward with the same upstream gradient (as data-parallel training does).
    Without an initialised process group this is the single-process fused loss.
    check_sizes: verify with one small all-gather that all ranks agree on n and D (a
    host sync; turn off once your shapes are known to match). backend: the fused op's
    backend for the local work (both modes). chunk_size: rows per logit chunk of the
    ring's PyTorch tiles (backend="reference" only).
    """
    rank, world = _check_args(
        image_features,
        text_features,
        logit_scale,
        logit_bias,
        mode,
        reduction,
        chunk_size,
        process_group,
        check_sizes,
    )
    if world == 1 and mode == "gather":
        return _fused(
            image_features,
            text_features,
            logit_scale,
            logit_bias=logit_bias,
            symmetric=symmetric,
            normalize=normalize,
            reduction=reduction,
            backend=backend,
        )
    args = (image_features, text_features, logit_scale, logit_bias, process_group, rank, world)
    if mode == "gather":
        return _gather_loss(*args, symmetric, normalize, reduction, backend)
    return _ring_loss(*args, symmetric, normalize, reduction, int(chunk_size), backend)
