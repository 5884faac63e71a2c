"""Triton kernels of the contrastive family: the fused InfoNCE / CLIP loss, flash-style.

L = scale * A B^T is never stored. One kernel computes a log-sum-exp over the rows of
B for a block of rows of A, streaming B in tiles and keeping a running (max, sum)
per row: launched with (A, B) = (images, texts) it gives the image->text row LSE and
the positive logits, launched with (texts, images) the text->image column LSE. The
backward kernel recomputes the same tiles, turns them into dLoss/dL (softmax minus
one-hot, weighted by the upstream gradient) and multiplies by the other side's
features: (images, texts) gives dI, (texts, images) dT, since dL^T has the same form
with the roles swapped. Tiles are visited in a fixed order and d(scale) is summed from
per-program partials: deterministic. Offsets are int64. tl.dot uses tensor cores for
bf16/fp16 and TF32 for float32 when torch.backends.cuda.matmul.allow_tf32 is set.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import acc_dtype, dot_upcast


@triton.jit
def _score_tile(A, B, rows_a, cols_b, NA, NB, D, s_a, s_b, scale, ACC: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_A: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """(raw, L): raw[a, b] = <A[rows_a[a]], B[cols_b[b]]> over D, L = scale * raw."""
    raw = tl.zeros([BLOCK_A, BLOCK_B], dtype=ACC)
    dk = tl.arange(0, BLOCK_D)
    pa = A + rows_a.to(tl.int64)[:, None] * s_a + dk[None, :]
    pb = B + cols_b.to(tl.int64)[None, :] * s_b + dk[:, None]
    for d0 in range(0, D, BLOCK_D):
        km = (d0 + dk) < D
        a = tl.load(pa, mask=(rows_a[:, None] < NA) & km[None, :], other=0.0)
        b = tl.load(pb, mask=km[:, None] & (cols_b[None, :] < NB), other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        raw = tl.dot(a, b, raw, input_precision=PRECISION, out_dtype=ACC)
        pa += BLOCK_D
        pb += BLOCK_D
    return raw, raw * scale


@triton.jit
def lse_kernel(A, B, LAB, SCALE, MAX, LOGSUM, POS, NA, NB, D, s_a, s_b,
               HAS_POS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
               BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """logsumexp_b scale <A_a, B_b> = MAX[a] + LOGSUM[a] (kept apart so that the loss
    (MAX - POS) + LOGSUM stays precise under large logits); POS[a] = scale <A_a, B_LAB[a]>
    (NaN when LAB[a] is outside [0, NB): no out-of-range read, the loss shows it)."""
    rows = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    rmask = rows < NA
    scale = tl.load(SCALE).to(ACC)
    m = tl.full([BLOCK_A], float("-inf"), dtype=ACC)
    s = tl.zeros([BLOCK_A], dtype=ACC)
    pos = tl.zeros([BLOCK_A], dtype=ACC)
    if HAS_POS:
        lab = tl.load(LAB + rows, mask=rmask, other=-1)
    for b0 in range(0, NB, BLOCK_B):
        cols = b0 + tl.arange(0, BLOCK_B)
        _, L = _score_tile(A, B, rows, cols, NA, NB, D, s_a, s_b, scale, ACC, PRECISION, UPCAST,
                           BLOCK_A, BLOCK_B, BLOCK_D)
        L = tl.where(cols[None, :] < NB, L, float("-inf"))
        m_new = tl.maximum(m, tl.max(L, axis=1))
        # rows whose logits so far are all -inf keep a zero shift (no -inf - -inf)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(L - shift[:, None]), axis=1)
        m = m_new
        if HAS_POS:
            pos += tl.sum(tl.where(cols[None, :] == lab[:, None], L, 0.0), axis=1)
    tl.store(MAX + rows, m.to(MAX.dtype.element_ty), mask=rmask)
    tl.store(LOGSUM + rows, tl.log(s).to(LOGSUM.dtype.element_ty), mask=rmask)
    if HAS_POS:
        pos = tl.where((lab >= 0) & (lab < NB), pos, float("nan"))
        tl.store(POS + rows, pos.to(POS.dtype.element_ty), mask=rmask)


@triton.jit
def grad_kernel(A, B, LAB, SCALE, LSE_A, LSE_A_LO, LSE_B, LSE_B_LO, W_A, W_B, W_POS, DA, DSCALE, NA, NB, D, s_a, s_b,
                USE_A: tl.constexpr, USE_B: tl.constexpr, LABELS_ON_A: tl.constexpr, WITH_DSCALE: tl.constexpr,
                ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                GRAD_F32: tl.constexpr, GRAD_PRECISION: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    """DA[a, d-block] = scale * sum_b G[a, b] B[b, d-block], with
        G[a, b] = W_A[a] exp(L - LSE_A[a]) + W_B[b] exp(L - LSE_B[b]) - [pair (a, b)] W_POS[pair],
    pairs (a, LAB[a]) when LABELS_ON_A, else (LAB[b], b); the W_POS of a pair is indexed
    like LAB. DSCALE[program] = sum G * raw (only for d-block 0 when WITH_DSCALE). Each
    LSE comes as hi + lo (split_lse): L - LSE is formed as (L - hi) - lo."""
    pid_a = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    rmask = rows < NA
    scale = tl.load(SCALE).to(ACC)
    if USE_A:
        w_a = tl.load(W_A + rows, mask=rmask, other=0.0).to(ACC)
        lse_a = tl.load(LSE_A + rows, mask=rmask, other=0.0).to(ACC)
        lse_a_lo = tl.load(LSE_A_LO + rows, mask=rmask, other=0.0).to(ACC)
    if LABELS_ON_A:
        lab_a = tl.load(LAB + rows, mask=rmask, other=-1)
        wpos_a = tl.load(W_POS + rows, mask=rmask, other=0.0).to(ACC)
    d0 = pid_d * BLOCK_DO
    dk = d0 + tl.arange(0, BLOCK_DO)
    acc = tl.zeros([BLOCK_A, BLOCK_DO], dtype=ACC)
    dsc = tl.zeros([BLOCK_A], dtype=ACC)
    for b0 in range(0, NB, BLOCK_B):
        cols = b0 + tl.arange(0, BLOCK_B)
        cmask = cols < NB
        raw, L = _score_tile(A, B, rows, cols, NA, NB, D, s_a, s_b, scale, ACC, PRECISION, UPCAST,
                             BLOCK_A, BLOCK_B, BLOCK_D)
        g = tl.zeros([BLOCK_A, BLOCK_B], dtype=ACC)
        if USE_A:
            g += w_a[:, None] * tl.exp((L - lse_a[:, None]) - lse_a_lo[:, None])
        if USE_B:
            w_b = tl.load(W_B + cols, mask=cmask, other=0.0).to(ACC)
            lse_b = tl.load(LSE_B + cols, mask=cmask, other=0.0).to(ACC)
            lse_b_lo = tl.load(LSE_B_LO + cols, mask=cmask, other=0.0).to(ACC)
            g += w_b[None, :] * tl.exp((L - lse_b[None, :]) - lse_b_lo[None, :])
        if LABELS_ON_A:
            g -= tl.where(cols[None, :] == lab_a[:, None], wpos_a[:, None], 0.0)
        else:
            lab_b = tl.load(LAB + cols, mask=cmask, other=-1)
            wpos_b = tl.load(W_POS + cols, mask=cmask, other=0.0).to(ACC)
            g -= tl.where(lab_b[None, :] == rows[:, None], wpos_b[None, :], 0.0)
        g = tl.where(rmask[:, None] & cmask[None, :], g, 0.0)
        if WITH_DSCALE:
            dsc += tl.sum(g * raw, axis=1)
        pb = B + cols.to(tl.int64)[:, None] * s_b + dk[None, :]
        bt = tl.load(pb, mask=cmask[:, None] & (dk[None, :] < D), other=0.0)
        if UPCAST:
            bt = bt.to(tl.float32)
        if GRAD_F32:  # float16: G's small entries (~1/N) would underflow; TF32 keeps the range
            acc = tl.dot(g, bt.to(tl.float32), acc, input_precision=GRAD_PRECISION, out_dtype=ACC)
        else:  # bf16: G rounded for the tensor cores (as the flash-attention backward does)
            acc = tl.dot(g.to(bt.dtype), bt, acc, input_precision=PRECISION, out_dtype=ACC)
    pda = DA + rows.to(tl.int64)[:, None] * D + dk[None, :]
    tl.store(pda, (acc * scale).to(DA.dtype.element_ty), mask=rmask[:, None] & (dk[None, :] < D))
    if WITH_DSCALE:
        if pid_d == 0:
            tl.store(DSCALE + pid_a, tl.sum(dsc, axis=0).to(DSCALE.dtype.element_ty))


@triton.jit
def column_weight_kernel(LAB, W, C, N, M, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """C[j] = sum of W[i] over the i with LAB[i] == j, summed in a fixed order."""
    cols = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M], dtype=tl.float32 if C.dtype.element_ty != tl.float64 else tl.float64)
    for n0 in range(0, N, BLOCK_N):
        r = n0 + tl.arange(0, BLOCK_N)
        lab = tl.load(LAB + r, mask=r < N, other=-1)
        w = tl.load(W + r, mask=r < N, other=0.0).to(acc.dtype)
        acc += tl.sum(tl.where(lab[:, None] == cols[None, :], w[:, None], 0.0), axis=0)
    tl.store(C + cols, acc.to(C.dtype.element_ty), mask=cols < M)


# ----------------------------------------------------------------------------- launchers
def _blocks(dtype: torch.dtype, D: int, on_cpu: bool) -> dict:
    if on_cpu:  # the interpreter runs one program at a time: few, small programs
        return dict(BLOCK_A=32, BLOCK_B=32, BLOCK_D=32)
    if dtype in (torch.float16, torch.bfloat16):
        return dict(BLOCK_A=128, BLOCK_B=64, BLOCK_D=64, num_warps=8, num_stages=3)
    return dict(BLOCK_A=64, BLOCK_B=64, BLOCK_D=32, num_warps=4, num_stages=3)


def _precision(dtype, device):
    tf32 = dtype == torch.float32 and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 else "ieee"


def _common(x: torch.Tensor) -> dict:
    return dict(ACC=acc_dtype(x.dtype), PRECISION=_precision(x.dtype, x.device),
                UPCAST=dot_upcast(x.dtype, x.device))


def logsumexp(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor | None):
    """(max [NA], log_sum [NA], pos [NA] or None) of L = scale a b^T over b's rows, with
    logsumexp = max + log_sum; a, b contiguous."""
    NA, D = a.shape
    NB = b.shape[0]
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    mx, log_sum = (torch.empty(NA, dtype=acc, device=a.device) for _ in range(2))
    pos = torch.empty(NA, dtype=acc, device=a.device) if labels is not None else mx
    if NA:
        blocks = _blocks(a.dtype, D, a.device.type == "cpu")
        grid = (triton.cdiv(NA, blocks["BLOCK_A"]),)
        wrap_triton(lse_kernel)[grid](
            a, b, labels if labels is not None else mx, scale, mx, log_sum, pos, NA, NB, D, a.stride(0),
            b.stride(0), HAS_POS=labels is not None, **_common(a), **blocks)
    return mx, log_sum, (pos if labels is not None else None)


def column_weights(labels: torch.Tensor, w: torch.Tensor, M: int) -> torch.Tensor:
    c = torch.empty(M, dtype=w.dtype, device=w.device)
    if M:
        BM, BN = (32, 32) if w.device.type == "cpu" else (128, 64)
        wrap_triton(column_weight_kernel)[(triton.cdiv(M, BM),)](labels, w, c, labels.shape[0], M,
                                                                 BLOCK_M=BM, BLOCK_N=BN)
    return c


def grad_side(a, b, labels, scale, lse_a, lse_b, w_a, w_b, w_pos, labels_on_a: bool, with_dscale: bool):
    """(dA in the accumulation dtype, per-program d(scale) partials or None); see grad_kernel.
    lse_a, lse_b: (hi, lo) pairs (split_lse)."""
    NA, D = a.shape
    NB = b.shape[0]
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    da = torch.empty((NA, D), dtype=acc, device=a.device)
    on_cpu = a.device.type == "cpu"
    blocks = _blocks(a.dtype, D, on_cpu)
    cap = 32 if on_cpu else (128 if a.dtype in (torch.float16, torch.bfloat16) else 64)
    block_do = min(triton.next_power_of_2(max(D, 1)), cap)
    grid = (triton.cdiv(NA, blocks["BLOCK_A"]), max(1, triton.cdiv(D, block_do)))
    parts = torch.empty(grid[0], dtype=acc, device=a.device) if with_dscale else da
    if NA == 0:
        return da, (parts.sum() if with_dscale else None)
    cm = _common(a)
    wrap_triton(grad_kernel)[grid](
        a, b, labels, scale, *(lse_a if w_a is not None else (da, da)), *(lse_b if w_b is not None else (da, da)),
        w_a if w_a is not None else da, w_b if w_b is not None else da, w_pos, da, parts, NA, NB, D,
        a.stride(0), b.stride(0), USE_A=w_a is not None, USE_B=w_b is not None, LABELS_ON_A=labels_on_a,
        WITH_DSCALE=with_dscale, GRAD_F32=a.dtype == torch.float16,
        GRAD_PRECISION="ieee" if on_cpu else "tf32", BLOCK_DO=block_do, **cm, **blocks)
    return da, (parts.sum() if with_dscale else None)
