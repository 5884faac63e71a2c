"""Triton kernels of the SigLIP sigmoid contrastive loss, flash-style.

L = scale * A B^T + bias (A = images, B = texts) is never stored: every kernel computes it
in [BLOCK_A, BLOCK_B] tiles of A B^T (contrastive._score_tile, the InfoNCE kernels' tile), so
each logit is rounded the same way in the forward and the backward. With z = +1 where
IDS_A[a] == IDS_B[b] (a positive pair) and -1 elsewhere, and t = -z L:
    loss row a = sum_b softplus(t) = sum_b max(t, 0) + log1p(exp(-|t|))
    dLoss/dL   = -z sigmoid(t)
The loss kernel's programs own blocks of rows of A; the gradient kernel's own blocks of rows
of A (dA = G B, plus each row's sum of G for d(bias)) or of B (dB = G^T A, the transposed G
tile, as the flash-attention backward forms dK). Tiles are visited in a fixed order:
deterministic. tl.dot uses tensor cores for bf16/fp16 and TF32 for float32 when
torch.backends.cuda.matmul.allow_tf32 is set.
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .contrastive import (
    _blocks,
    _common,
    _grad_dot,
    _owned_rows,
    _score_tile,
    _store_rows,
    _streamed_features,
    _tile_axes,
)


@triton.jit
def _signed_logits(raw, ia, ib, NA, NB, IDS_A, IDS_B, scale, bias):
    """(t, positive, inside) of a tile: t = -z (scale raw + bias); positive where the ids
    match; inside: the tile element lies in the [NA, NB] matrix."""
    rmask = ia < NA
    cmask = ib < NB
    ida = tl.load(IDS_A + ia, mask=rmask, other=-1)
    idb = tl.load(IDS_B + ib, mask=cmask, other=-2)
    positive = ida[:, None] == idb[None, :]
    L = raw * scale + bias
    return tl.where(positive, -L, L), positive, rmask[:, None] & cmask[None, :]


@triton.jit
def _softplus(t):
    """max(t, 0) + log1p(exp(-|t|)); log1p(e) as e - e^2/2 below 1e-4, where log(1 + e) would
    lose a confident pair's whole loss (e under float32's eps rounds 1 + e to 1)."""
    e = tl.exp(-tl.abs(t))
    return tl.maximum(t, 0.0) + tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))


@triton.jit
def loss_kernel(
    A,
    B,
    IDS_A,
    IDS_B,
    SCALE,
    BIAS,
    LOSS,
    NA,
    NB,
    D,
    s_a,
    s_b,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """LOSS[a] = sum_b softplus(t[a, b]) for a program's BLOCK_A rows of A."""
    ia = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    scale = tl.load(SCALE).to(ACC)
    bias = tl.load(BIAS).to(ACC)
    loss = tl.zeros([BLOCK_A], dtype=ACC)
    for b0 in range(0, NB, BLOCK_B):
        ib = b0 + tl.arange(0, BLOCK_B)
        raw, _ = _score_tile(
            A, B, ia, ib, NA, NB, D, s_a, s_b, scale, ACC, PRECISION, UPCAST, BLOCK_D
        )
        t, _, inside = _signed_logits(raw, ia, ib, NA, NB, IDS_A, IDS_B, scale, bias)
        loss += tl.sum(tl.where(inside, _softplus(t), 0.0), axis=1)
    tl.store(LOSS + ia, loss.to(LOSS.dtype.element_ty), mask=ia < NA)


@triton.jit
def _dlogits(raw, ia, ib, NA, NB, IDS_A, IDS_B, GRAD, scale, bias, ACC: tl.constexpr):
    """G = GRAD[a] dLoss/dL = GRAD[a] (-z) sigmoid(t) on a tile, zero outside the matrix."""
    t, positive, inside = _signed_logits(raw, ia, ib, NA, NB, IDS_A, IDS_B, scale, bias)
    g = tl.load(GRAD + ia, mask=ia < NA, other=0.0).to(ACC)
    e = tl.exp(-tl.abs(t))  # sigmoid(t) from exp(-|t|) <= 1: no overflow for any |t|
    sig = g[:, None] * tl.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return tl.where(inside, tl.where(positive, -sig, sig), 0.0)


@triton.jit
def grad_kernel(
    A,
    B,
    IDS_A,
    IDS_B,
    SCALE,
    BIAS,
    GRAD,
    DX,
    DBIAS,
    NA,
    NB,
    D,
    s_a,
    s_b,
    COLUMNS: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    GRAD_F32: tl.constexpr,
    GRAD_PRECISION: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
):
    """One d-block of DA = G B (COLUMNS=False) or DB = G^T A (COLUMNS), without the scale;
    row programs of d-block 0 also write DBIAS[a] = sum_b G[a, b]. The prologue, tiling and
    products are the InfoNCE gradient kernel's (contrastive.grad_kernel)."""
    own, n_own, n_other = _owned_rows(NA, NB, COLUMNS, BLOCK_A, BLOCK_B)
    BLOCK_O: tl.constexpr = BLOCK_A if COLUMNS else BLOCK_B  # the streamed side's block
    scale = tl.load(SCALE).to(ACC)
    bias = tl.load(BIAS).to(ACC)
    dk = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    acc = tl.zeros([own.shape[0], BLOCK_DO], dtype=ACC)
    dbias = tl.zeros([BLOCK_A], dtype=ACC)
    for o0 in range(0, n_other, BLOCK_O):
        # 1. the forward's raw products of the tile, raw = A B^T
        other = o0 + tl.arange(0, BLOCK_O)
        ia, ib = _tile_axes(own, other, COLUMNS)
        raw, _ = _score_tile(
            A, B, ia, ib, NA, NB, D, s_a, s_b, scale, ACC, PRECISION, UPCAST, BLOCK_D
        )
        # 2. G = GRAD[a] dLoss/dL = -GRAD[a] z sigmoid(t), owned rows first
        g = _dlogits(raw, ia, ib, NA, NB, IDS_A, IDS_B, GRAD, scale, bias, ACC)
        if COLUMNS:
            g = tl.trans(g)
        else:
            # 3. d(bias) = sum_b G
            dbias += tl.sum(g, axis=1)
        # 4. dX += G X_other
        x = _streamed_features(A, B, other, dk, n_other, D, s_a, s_b, COLUMNS, UPCAST)
        acc = _grad_dot(acc, g, x, ACC, PRECISION, GRAD_F32, GRAD_PRECISION)
    _store_rows(DX, acc, own, n_own, dk, D)
    if not COLUMNS:
        if tl.program_id(1) == 0:
            tl.store(DBIAS + own, dbias.to(DBIAS.dtype.element_ty), mask=own < n_own)


# ----------------------------------------------------------------------------- launchers
def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def row_losses(a, b, ids_a, ids_b, scale, bias) -> torch.Tensor:
    """[NA] row losses (accumulation dtype) of contiguous a [NA, D], b [NB, D]."""
    NA, D = a.shape
    loss = torch.zeros(NA, dtype=_acc(a), device=a.device)
    if NA and b.shape[0]:
        blocks = _blocks(a.dtype, D, a.device.type == "cpu")
        wrap_triton(loss_kernel)[(triton.cdiv(NA, blocks["BLOCK_A"]),)](
            a,
            b,
            ids_a,
            ids_b,
            scale,
            bias,
            loss,
            NA,
            b.shape[0],
            D,
            a.stride(0),
            b.stride(0),
            **_common(a),
            **blocks,
        )
    return loss


def grad_side(a, b, ids_a, ids_b, scale, bias, grad, columns: bool):
    """(dA, or dB with columns, unscaled, in the accumulation dtype; the rows' d(bias) [NA],
    row programs only, else None); see grad_kernel."""
    NA, D = a.shape
    NB = b.shape[0]
    n = NB if columns else NA
    dx = torch.zeros((n, D), dtype=_acc(a), device=a.device)
    dbias = None if columns else torch.zeros(NA, dtype=_acc(a), device=a.device)
    if NA == 0 or NB == 0:
        return dx, dbias
    on_cpu = a.device.type == "cpu"
    blocks = _blocks(a.dtype, D, on_cpu)
    cap = 32 if on_cpu else (128 if a.dtype in (torch.float16, torch.bfloat16) else 64)
    block_do = min(triton.next_power_of_2(max(D, 1)), cap)
    grid = (
        triton.cdiv(n, blocks["BLOCK_B" if columns else "BLOCK_A"]),
        max(1, triton.cdiv(D, block_do)),
    )
    wrap_triton(grad_kernel)[grid](
        a,
        b,
        ids_a,
        ids_b,
        scale,
        bias,
        grad,
        dx,
        dx if dbias is None else dbias,
        NA,
        NB,
        D,
        a.stride(0),
        b.stride(0),
        COLUMNS=columns,
        GRAD_F32=a.dtype == torch.float16,
        GRAD_PRECISION="ieee" if on_cpu else "tf32",
        BLOCK_DO=block_do,
        **_common(a),
        **blocks,
    )
    return dx, dbias
