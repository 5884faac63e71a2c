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

from .contrastive import _blocks, _common, _score_tile


@triton.jit
def _signed_logits(raw, rows, cols, NA, NB, IDS_A, IDS_B, scale, bias):
    """(t, positive, inside) of a tile: t = -z (scale raw + bias); positive where the ids
    match; inside: the tile element lies in the [NA, NB] matrix."""
    rmask = rows < NA
    cmask = cols < NB
    ida = tl.load(IDS_A + rows, mask=rmask, other=-1)
    idb = tl.load(IDS_B + cols, mask=cmask, other=-2)
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
    rows = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    scale = tl.load(SCALE).to(ACC)
    bias = tl.load(BIAS).to(ACC)
    loss = tl.zeros([BLOCK_A], dtype=ACC)
    for b0 in range(0, NB, BLOCK_B):
        cols = b0 + tl.arange(0, BLOCK_B)
        raw, _ = _score_tile(
            A,
            B,
            rows,
            cols,
            NA,
            NB,
            D,
            s_a,
            s_b,
            scale,
            ACC,
            PRECISION,
            UPCAST,
            BLOCK_A,
            BLOCK_B,
            BLOCK_D,
        )
        t, _, inside = _signed_logits(raw, rows, cols, NA, NB, IDS_A, IDS_B, scale, bias)
        loss += tl.sum(tl.where(inside, _softplus(t), 0.0), axis=1)
    tl.store(LOSS + rows, loss.to(LOSS.dtype.element_ty), mask=rows < NA)


@triton.jit
def _dlogits(raw, rows, cols, NA, NB, IDS_A, IDS_B, GRAD, scale, bias, ACC: tl.constexpr):
    """G = GRAD[a] dLoss/dL = GRAD[a] (-z) sigmoid(t) on a tile, zero outside the matrix."""
    t, positive, inside = _signed_logits(raw, rows, cols, NA, NB, IDS_A, IDS_B, scale, bias)
    g = tl.load(GRAD + rows, mask=rows < NA, other=0.0).to(ACC)
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
    row programs of d-block 0 also write DBIAS[a] = sum_b G[a, b]."""
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    if COLUMNS:
        own = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        n_own = NB
        n_other = NA
        step = BLOCK_A
        acc = tl.zeros([BLOCK_B, BLOCK_DO], dtype=ACC)
    else:
        own = pid * BLOCK_A + tl.arange(0, BLOCK_A)
        n_own = NA
        n_other = NB
        step = BLOCK_B
        acc = tl.zeros([BLOCK_A, BLOCK_DO], dtype=ACC)
    scale = tl.load(SCALE).to(ACC)
    bias = tl.load(BIAS).to(ACC)
    dk = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dbias = tl.zeros([BLOCK_A], dtype=ACC)
    for o0 in range(0, n_other, step):
        if COLUMNS:
            other = o0 + tl.arange(0, BLOCK_A)
            raw, _ = _score_tile(
                A,
                B,
                other,
                own,
                NA,
                NB,
                D,
                s_a,
                s_b,
                scale,
                ACC,
                PRECISION,
                UPCAST,
                BLOCK_A,
                BLOCK_B,
                BLOCK_D,
            )
            g = tl.trans(_dlogits(raw, other, own, NA, NB, IDS_A, IDS_B, GRAD, scale, bias, ACC))
            px = A + other.to(tl.int64)[:, None] * s_a + dk[None, :]
        else:
            other = o0 + tl.arange(0, BLOCK_B)
            raw, _ = _score_tile(
                A,
                B,
                own,
                other,
                NA,
                NB,
                D,
                s_a,
                s_b,
                scale,
                ACC,
                PRECISION,
                UPCAST,
                BLOCK_A,
                BLOCK_B,
                BLOCK_D,
            )
            g = _dlogits(raw, own, other, NA, NB, IDS_A, IDS_B, GRAD, scale, bias, ACC)
            dbias += tl.sum(g, axis=1)
            px = B + other.to(tl.int64)[:, None] * s_b + dk[None, :]
        x = tl.load(px, mask=(other[:, None] < n_other) & (dk[None, :] < D), other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
        if GRAD_F32:  # float16: small entries of G would underflow; TF32 keeps the range
            acc = tl.dot(g, x.to(tl.float32), acc, input_precision=GRAD_PRECISION, out_dtype=ACC)
        else:  # bf16: G rounded for the tensor cores (as the flash-attention backward does)
            acc = tl.dot(g.to(x.dtype), x, acc, input_precision=PRECISION, out_dtype=ACC)
    pdx = DX + own.to(tl.int64)[:, None] * D + dk[None, :]
    tl.store(pdx, acc.to(DX.dtype.element_ty), mask=(own[:, None] < n_own) & (dk[None, :] < D))
    if not COLUMNS:
        if pid_d == 0:
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
