"""Triton kernels of the contrastive family: the fused InfoNCE / CLIP loss, flash-style.

L = scale * A B^T (A = images, B = texts) is never stored. Every kernel computes it in
the same [BLOCK_A, BLOCK_B] tiles of A B^T, so each logit is rounded the same way in the
forward and the backward; a kernel's program owns a block of rows of A ("row
programs") or of rows of B ("column programs") and streams the other side. The
log-sum-exp kernel keeps a running (max, sum) per owned row: row programs give the
image->text LSE and the positive logits, column programs the text->image LSE. The
gradient kernel recomputes the tiles, turns them into dLoss/dL (softmax minus one-hot,
weighted by the upstream gradient) and multiplies by the other side's features: row
programs give dI, column programs dT (with the transposed dL tile, as the
flash-attention backward forms dK). Tiles are visited in a fixed order and d(scale) is
summed from per-program partials: deterministic. Offsets are int64. tl.dot uses tensor
cores for bf16/fp16 and TF32 for float32 when torch.backends.cuda.matmul.allow_tf32 is set.

    _owned_rows, _tile_axes  a program's rows; a tile's rows of A and of B, either side
    _score_tile              the tile's logits L = scale A B^T, rounded once
    _online_lse              the running (max, sum) of exp(L) over the streamed side
    _dlogits                 G = dLoss/dL on a tile
    _streamed_features, _grad_dot, _store_rows
                             dX = G X_other, accumulated over the streamed side
The SigLIP kernels (sigmoid_contrastive.py) share these with their own G.
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import dot_upcast, tl_acc_dtype


@triton.jit
def _score_tile(
    A,
    B,
    ia,
    ib,
    NA,
    NB,
    D,
    s_a,
    s_b,
    scale,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """(raw, L): raw[a, b] = <A[ia[a]], B[ib[b]]> over D, L = scale * raw rounded once.
    The tile is [len(ia), len(ib)]. The + 0.0 keeps that rounding: LLVM may fuse a
    product into a following subtraction (exp(L - lse) as one FMA, L unrounded), and the
    kernels' maxima, log-sum-exps and softmaxes would then see differently rounded logits
    (fused, it is fma(raw, scale, 0))."""
    raw = tl.zeros([ia.shape[0], ib.shape[0]], dtype=ACC)
    dk = tl.arange(0, BLOCK_D)
    pa = A + ia.to(tl.int64)[:, None] * s_a + dk[None, :]
    pb = B + ib.to(tl.int64)[None, :] * s_b + dk[:, None]
    for d0 in range(0, D, BLOCK_D):
        km = (d0 + dk) < D
        a = tl.load(pa, mask=(ia[:, None] < NA) & km[None, :], other=0.0)
        b = tl.load(pb, mask=km[:, None] & (ib[None, :] < NB), other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        raw = tl.dot(a, b, raw, input_precision=PRECISION, out_dtype=ACC)
        pa += BLOCK_D
        pb += BLOCK_D
    return raw, raw * scale + 0.0


@triton.jit
def _owned_rows(NA, NB, COLUMNS: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """(own, n_own, n_other): a row program's BLOCK_A rows of A, or a column program's
    (COLUMNS) BLOCK_B rows of B; the row counts of the owned and of the streamed side."""
    if COLUMNS:
        own = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        n_own = NB
        n_other = NA
    else:
        own = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
        n_own = NA
        n_other = NB
    return own, n_own, n_other


@triton.jit
def _tile_axes(own, other, COLUMNS: tl.constexpr):
    """(ia, ib): the rows of A and of B of a tile of A B^T. A column program's own rows are B's, so
    its tiles are the row programs' [BLOCK_A, BLOCK_B] tiles, each logit rounded alike."""
    if COLUMNS:
        ia = other
        ib = own
    else:
        ia = own
        ib = other
    return ia, ib


@triton.jit
def _online_lse(m, s, L, ax_other: tl.constexpr):
    """Online log-sum-exp over axis ax_other of a masked tile L (-inf outside the matrix):
    m' = max(m, max L), s' = s exp(m - m') + sum exp(L - m')."""
    m_new = tl.maximum(m, tl.max(L, axis=ax_other))
    # rows whose logits so far are all -inf keep a zero shift (no -inf - -inf)
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    e = tl.exp(L - tl.expand_dims(shift, ax_other))
    s = s * tl.exp(m - shift) + tl.sum(e, axis=ax_other)
    return m_new, s


@triton.jit
def lse_kernel(
    A,
    B,
    LAB,
    SCALE,
    MAX,
    LOGSUM,
    POS,
    NA,
    NB,
    D,
    s_a,
    s_b,
    COLUMNS: tl.constexpr,
    HAS_POS: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The log-sum-exp of L = scale A B^T over each row (COLUMNS=False: a program owns
    BLOCK_A rows of A) or each column (COLUMNS: BLOCK_B rows of B), as MAX + LOGSUM (kept
    apart so that the loss (MAX - POS) + LOGSUM stays precise under large logits);
    POS[a] = L[a, LAB[a]] for rows (NaN when LAB[a] is outside [0, NB): no out-of-range
    read, the loss shows it). Column programs take the same [BLOCK_A, BLOCK_B] tiles of
    A B^T and reduce them over axis 0, so every logit is rounded as in the row pass and
    in the backward (a tile of B A^T would round differently: |L| * eps in exp(L - LSE))."""
    own, n_own, n_other = _owned_rows(NA, NB, COLUMNS, BLOCK_A, BLOCK_B)
    omask = own < n_own
    scale = tl.load(SCALE).to(ACC)
    m = tl.full([own.shape[0]], float("-inf"), dtype=ACC)
    s = tl.zeros_like(m)
    pos = tl.zeros_like(m)
    if HAS_POS:
        lab = tl.load(LAB + own, mask=omask, other=-1)
    # the other side runs along axis ax_other of the [BLOCK_A, BLOCK_B] tile (reduced over),
    # the own side along ax_own; tl.expand_dims(v, ax) lays v along the other axis
    if COLUMNS:
        BLOCK_O: tl.constexpr = BLOCK_A
        ax_other: tl.constexpr = 0
        ax_own: tl.constexpr = 1
    else:
        BLOCK_O: tl.constexpr = BLOCK_B
        ax_other: tl.constexpr = 1
        ax_own: tl.constexpr = 0
    for o0 in range(0, n_other, BLOCK_O):
        # 1. the tile's logits, -inf outside the matrix
        other = o0 + tl.arange(0, BLOCK_O)
        ia, ib = _tile_axes(own, other, COLUMNS)
        _, L = _score_tile(
            A, B, ia, ib, NA, NB, D, s_a, s_b, scale, ACC, PRECISION, UPCAST, BLOCK_D
        )
        L = tl.where(tl.expand_dims(other < n_other, ax_own), L, float("-inf"))
        # 2. running (max, sum): LSE = m + log s
        m, s = _online_lse(m, s, L, ax_other)
        # 3. the positive logits L[a, LAB[a]] (rows only)
        if HAS_POS:
            pos += tl.sum(tl.where(other[None, :] == lab[:, None], L, 0.0), axis=1)
    tl.store(MAX + own, m.to(MAX.dtype.element_ty), mask=omask)
    tl.store(LOGSUM + own, tl.log(s).to(LOGSUM.dtype.element_ty), mask=omask)
    if HAS_POS:
        pos = tl.where((lab >= 0) & (lab < NB), pos, float("nan"))
        tl.store(POS + own, pos.to(POS.dtype.element_ty), mask=omask)


@triton.jit
def _dlogits(
    L,
    ia,
    ib,
    NA,
    NB,
    LAB,
    LSE_A,
    LSE_A_LO,
    LSE_B,
    LSE_B_LO,
    W_A,
    W_B,
    W_POS,
    USE_A: tl.constexpr,
    USE_B: tl.constexpr,
):
    """dLoss/dL (in L's dtype) of the tile of A's rows ia and B's rows ib:
        G[a, b] = W_A[a] exp(L - LSE_A[a]) + W_B[b] exp(L - LSE_B[b]) - [b = LAB[a]] W_POS[a],
    zero outside the matrix. Each LSE comes as hi + lo (split_lse): L - LSE is formed as
    (L - hi) - lo."""
    rmask = ia < NA
    cmask = ib < NB
    g = tl.zeros_like(L)
    if USE_A:
        w_a = tl.load(W_A + ia, mask=rmask, other=0.0).to(L.dtype)
        lse_a = tl.load(LSE_A + ia, mask=rmask, other=0.0).to(L.dtype)
        lse_a_lo = tl.load(LSE_A_LO + ia, mask=rmask, other=0.0).to(L.dtype)
        g += w_a[:, None] * tl.exp((L - lse_a[:, None]) - lse_a_lo[:, None])
    if USE_B:
        w_b = tl.load(W_B + ib, mask=cmask, other=0.0).to(L.dtype)
        lse_b = tl.load(LSE_B + ib, mask=cmask, other=0.0).to(L.dtype)
        lse_b_lo = tl.load(LSE_B_LO + ib, mask=cmask, other=0.0).to(L.dtype)
        g += w_b[None, :] * tl.exp((L - lse_b[None, :]) - lse_b_lo[None, :])
    lab = tl.load(LAB + ia, mask=rmask, other=-1)
    w_pos = tl.load(W_POS + ia, mask=rmask, other=0.0).to(L.dtype)
    g -= tl.where(ib[None, :] == lab[:, None], w_pos[:, None], 0.0)
    return tl.where(rmask[:, None] & cmask[None, :], g, 0.0)


@triton.jit
def _streamed_features(
    A, B, other, dk, n_other, D, s_a, s_b, COLUMNS: tl.constexpr, UPCAST: tl.constexpr
):
    """X[other, dk] of the streamed side (A for column programs, B for row programs), 0
    outside the matrix: the features a gradient tile multiplies."""
    if COLUMNS:
        px = A + other.to(tl.int64)[:, None] * s_a + dk[None, :]
    else:
        px = B + other.to(tl.int64)[:, None] * s_b + dk[None, :]
    x = tl.load(px, mask=(other[:, None] < n_other) & (dk[None, :] < D), other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _grad_dot(
    acc,
    g,
    x,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    GRAD_F32: tl.constexpr,
    GRAD_PRECISION: tl.constexpr,
):
    """acc + g x: an owned-rows gradient tile g [own, other] times the streamed features."""
    if GRAD_F32:  # float16: G's small entries (~1/N) would underflow; TF32 keeps the range
        acc = tl.dot(g, x.to(tl.float32), acc, input_precision=GRAD_PRECISION, out_dtype=ACC)
    else:  # bf16: G rounded for the tensor cores (as the flash-attention backward does)
        acc = tl.dot(g.to(x.dtype), x, acc, input_precision=PRECISION, out_dtype=ACC)
    return acc


@triton.jit
def _store_rows(DX, dx, own, n_own, dk, D):
    """DX[own, dk] = dx, DX a contiguous [n_own, D] gradient."""
    pdx = DX + own.to(tl.int64)[:, None] * D + dk[None, :]
    tl.store(pdx, dx.to(DX.dtype.element_ty), mask=(own[:, None] < n_own) & (dk[None, :] < D))


@triton.jit
def grad_kernel(
    A,
    B,
    LAB,
    SCALE,
    LSE_A,
    LSE_A_LO,
    LSE_B,
    LSE_B_LO,
    W_A,
    W_B,
    W_POS,
    DX,
    DSCALE,
    NA,
    NB,
    D,
    s_a,
    s_b,
    COLUMNS: tl.constexpr,
    USE_A: tl.constexpr,
    USE_B: tl.constexpr,
    WITH_DSCALE: tl.constexpr,
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
    """dA (COLUMNS=False) or dB (COLUMNS) for a block of its rows and one d-block:
    DA[a, d] = scale * sum_b G[a, b] B[b, d], DB[b, d] = scale * sum_a G[a, b] A[a, d]
    (G: _dlogits). The tiles are recomputed as the forward took them ([BLOCK_A, BLOCK_B]
    of A B^T, transposed for columns), so exp(L - LSE) sees the forward's own logits.
    DSCALE[program] = sum G * raw (row programs of d-block 0, when WITH_DSCALE)."""
    own, n_own, n_other = _owned_rows(NA, NB, COLUMNS, BLOCK_A, BLOCK_B)
    BLOCK_O: tl.constexpr = BLOCK_A if COLUMNS else BLOCK_B  # the streamed side's block
    scale = tl.load(SCALE).to(ACC)
    dk = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    acc = tl.zeros([own.shape[0], BLOCK_DO], dtype=ACC)
    dsc = tl.zeros([BLOCK_A], dtype=ACC)
    for o0 in range(0, n_other, BLOCK_O):
        # 1. the forward's logits of the tile, L = scale raw
        other = o0 + tl.arange(0, BLOCK_O)
        ia, ib = _tile_axes(own, other, COLUMNS)
        raw, L = _score_tile(
            A, B, ia, ib, NA, NB, D, s_a, s_b, scale, ACC, PRECISION, UPCAST, BLOCK_D
        )
        # 2. G = dLoss/dL = W_A softmax_row + W_B softmax_col - W_POS onehot, owned rows first
        g = _dlogits(
            L, ia, ib, NA, NB, LAB, LSE_A, LSE_A_LO, LSE_B, LSE_B_LO, W_A, W_B, W_POS, USE_A, USE_B
        )
        if COLUMNS:
            g = tl.trans(g)
        elif WITH_DSCALE:
            # 3. d(scale) = sum G raw
            dsc += tl.sum(g * raw, axis=1)
        # 4. dX += G X_other
        x = _streamed_features(A, B, other, dk, n_other, D, s_a, s_b, COLUMNS, UPCAST)
        acc = _grad_dot(acc, g, x, ACC, PRECISION, GRAD_F32, GRAD_PRECISION)
    _store_rows(DX, acc * scale, own, n_own, dk, D)
    if WITH_DSCALE:
        if tl.program_id(1) == 0:
            tl.store(DSCALE + tl.program_id(0), tl.sum(dsc, axis=0).to(DSCALE.dtype.element_ty))


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
    tf32 = (
        dtype == torch.float32 and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    )
    return "tf32" if tf32 else "ieee"


def _common(x: torch.Tensor) -> dict:
    return dict(
        ACC=tl_acc_dtype(x.dtype),
        PRECISION=_precision(x.dtype, x.device),
        UPCAST=dot_upcast(x.dtype, x.device),
    )


def logsumexp(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    labels: torch.Tensor | None,
    columns: bool = False,
):
    """(max, log_sum, pos or None) of L = scale a b^T per row of a ([NA]; pos: L[i, labels[i]]
    when labels are given) or, with columns, per column ([NB], no pos), with
    logsumexp = max + log_sum; a, b contiguous."""
    NA, D = a.shape
    NB = b.shape[0]
    n = NB if columns else NA
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    mx, log_sum = (torch.empty(n, dtype=acc, device=a.device) for _ in range(2))
    pos = torch.empty(n, dtype=acc, device=a.device) if labels is not None else mx
    if n:
        blocks = _blocks(a.dtype, D, a.device.type == "cpu")
        grid = (triton.cdiv(n, blocks["BLOCK_B" if columns else "BLOCK_A"]),)
        wrap_triton(lse_kernel)[grid](
            a,
            b,
            labels if labels is not None else mx,
            scale,
            mx,
            log_sum,
            pos,
            NA,
            NB,
            D,
            a.stride(0),
            b.stride(0),
            COLUMNS=columns,
            HAS_POS=labels is not None,
            **_common(a),
            **blocks,
        )
    return mx, log_sum, (pos if labels is not None else None)


def column_weights(labels: torch.Tensor, w: torch.Tensor, M: int) -> torch.Tensor:
    c = torch.empty(M, dtype=w.dtype, device=w.device)
    if M:
        BM, BN = (32, 32) if w.device.type == "cpu" else (128, 64)
        wrap_triton(column_weight_kernel)[(triton.cdiv(M, BM),)](
            labels, w, c, labels.shape[0], M, BLOCK_M=BM, BLOCK_N=BN
        )
    return c


def grad_side(a, b, labels, scale, lse_a, lse_b, w_a, w_b, w_pos, columns: bool, with_dscale: bool):
    """(dA, or dB with columns, in the accumulation dtype; per-program d(scale) partials or
    None); see grad_kernel. lse_a, lse_b: (hi, lo) pairs (split_lse); labels, w_a, w_pos
    index a's rows, w_b b's rows; with_dscale needs row programs."""
    NA, D = a.shape
    NB = b.shape[0]
    n = NB if columns else NA
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    dx = torch.empty((n, D), dtype=acc, device=a.device)
    on_cpu = a.device.type == "cpu"
    blocks = _blocks(a.dtype, D, on_cpu)
    cap = 32 if on_cpu else (128 if a.dtype in (torch.float16, torch.bfloat16) else 64)
    block_do = min(triton.next_power_of_2(max(D, 1)), cap)
    grid = (
        triton.cdiv(n, blocks["BLOCK_B" if columns else "BLOCK_A"]),
        max(1, triton.cdiv(D, block_do)),
    )
    parts = torch.empty(grid[0], dtype=acc, device=a.device) if with_dscale else dx
    if n == 0:
        return dx, (parts.sum() if with_dscale else None)
    wrap_triton(grad_kernel)[grid](
        a,
        b,
        labels,
        scale,
        *(lse_a if w_a is not None else (dx, dx)),
        *(lse_b if w_b is not None else (dx, dx)),
        w_a if w_a is not None else dx,
        w_b if w_b is not None else dx,
        w_pos,
        dx,
        parts,
        NA,
        NB,
        D,
        a.stride(0),
        b.stride(0),
        COLUMNS=columns,
        USE_A=w_a is not None,
        USE_B=w_b is not None,
        WITH_DSCALE=with_dscale,
        GRAD_F32=a.dtype == torch.float16,
        GRAD_PRECISION="ieee" if on_cpu else "tf32",
        BLOCK_DO=block_do,
        **_common(a),
        **blocks,
    )
    return dx, (parts.sum() if with_dscale else None)
