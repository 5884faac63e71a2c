"""Triton kernels of the cosine family: row-wise cosine / feature distances (forward and
backward), row normalisation, and a batched matmul with a row/column scaling epilogue
that fuses the normalisation into pairwise cosine similarity.

Row-wise kernels process a [BLOCK_R, BLOCK_D] tile per step and loop over D; each row
is reduced by one program in a fixed order (deterministic). Row offsets are int64.
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import dot_upcast, row_blocks, rows_of, tl_acc_dtype

MODE_COS, MODE_ONE_MINUS_COS, MODE_SQDIST = 0, 1, 2


@triton.jit
def _row_pointers(X, row0, R, D, BLOCK_R: tl.constexpr):
    rows = row0 + tl.arange(0, BLOCK_R)
    return X + rows.to(tl.int64)[:, None] * D, rows, rows < R


@triton.jit
def _dot_and_squares(
    P1, P2, row_mask, D, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    """Per row of the tile: x1.x2, |x1|^2, |x2|^2, |x1 - x2|^2 (unused ones are dropped)."""
    dot = tl.zeros([BLOCK_R], dtype=ACC)
    s1 = tl.zeros([BLOCK_R], dtype=ACC)
    s2 = tl.zeros([BLOCK_R], dtype=ACC)
    sd = tl.zeros([BLOCK_R], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = row_mask[:, None] & (cols[None, :] < D)
        a = tl.load(P1 + cols[None, :], mask=m, other=0.0).to(ACC)
        b = tl.load(P2 + cols[None, :], mask=m, other=0.0).to(ACC)
        dot += tl.sum(a * b, axis=1)
        s1 += tl.sum(a * a, axis=1)
        s2 += tl.sum(b * b, axis=1)
        sd += tl.sum((a - b) * (a - b), axis=1)
    return dot, s1, s2, sd


@triton.jit
def rowwise_fwd_kernel(
    X1,
    X2,
    OUT,
    R,
    D,
    eps,
    MODE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    P1, rows, rmask = _row_pointers(X1, tl.program_id(0) * BLOCK_R, R, D, BLOCK_R)
    P2, _, _ = _row_pointers(X2, tl.program_id(0) * BLOCK_R, R, D, BLOCK_R)
    dot, s1, s2, sd = _dot_and_squares(P1, P2, rmask, D, ACC, BLOCK_R, BLOCK_D)
    if MODE == 2:
        out = sd
    else:
        out = dot / (tl.maximum(tl.sqrt(s1), eps) * tl.maximum(tl.sqrt(s2), eps))
        if MODE == 1:
            out = 1.0 - out
    tl.store(OUT + rows, out.to(OUT.dtype.element_ty), mask=rmask)


@triton.jit
def _grad_coefs(g, dot, s1, s2, eps, MODE: tl.constexpr):
    """(k11, k12, k21, k22) of g * d(out)/d(x1, x2) per row:
    MODE 2: d|x1 - x2|^2 = 2 (x1 - x2) (dx1 - dx2);
    MODE 0, 1: dc/dx1 = x2 / (a b) - [n1 > eps] c x1 / a^2 (symmetric for x2),
    a = max(n1, eps), b = max(n2, eps); MODE 1 (1 - c) negates g."""
    if MODE == 2:
        k11 = 2.0 * g
        return k11, -k11, -k11, k11
    if MODE == 1:
        g = -g
    n1 = tl.sqrt(s1)
    n2 = tl.sqrt(s2)
    a = tl.maximum(n1, eps)
    b = tl.maximum(n2, eps)
    c = dot / (a * b)
    k12 = g / (a * b)
    k11 = tl.where(n1 > eps, -g * c / (a * a), 0.0)
    k22 = tl.where(n2 > eps, -g * c / (b * b), 0.0)
    return k11, k12, k12, k22


@triton.jit
def _write_pair(
    P1,
    P2,
    Q1,
    Q2,
    rmask,
    D,
    k11,
    k12,
    k21,
    k22,
    WRITE_1: tl.constexpr,
    WRITE_2: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Pass write_pair: g1 = k11 x1 + k12 x2 (WRITE_1), g2 = k21 x1 + k22 x2 (WRITE_2)."""
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = rmask[:, None] & (cols[None, :] < D)
        x1 = tl.load(P1 + cols[None, :], mask=m, other=0.0).to(ACC)
        x2 = tl.load(P2 + cols[None, :], mask=m, other=0.0).to(ACC)
        if WRITE_1:
            g1 = k11[:, None] * x1 + k12[:, None] * x2
            tl.store(Q1 + cols[None, :], g1.to(Q1.dtype.element_ty), mask=m)
        if WRITE_2:
            g2 = k21[:, None] * x1 + k22[:, None] * x2
            tl.store(Q2 + cols[None, :], g2.to(Q2.dtype.element_ty), mask=m)


@triton.jit
def rowwise_bwd_kernel(
    G,
    X1,
    X2,
    G1,
    G2,
    R,
    D,
    eps,
    MODE: tl.constexpr,
    WRITE_1: tl.constexpr,
    WRITE_2: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The gradients of a block of rows: the rows' stats (_dot_and_squares), their
    coefficients (_grad_coefs), then _write_pair."""
    row0 = tl.program_id(0) * BLOCK_R
    P1, rows, rmask = _row_pointers(X1, row0, R, D, BLOCK_R)
    P2, _, _ = _row_pointers(X2, row0, R, D, BLOCK_R)
    g = tl.load(G + rows, mask=rmask, other=0.0).to(ACC)
    if MODE == 2:
        k11, k12, k21, k22 = _grad_coefs(g, g, g, g, eps, MODE)
    else:
        dot, s1, s2, _ = _dot_and_squares(P1, P2, rmask, D, ACC, BLOCK_R, BLOCK_D)
        k11, k12, k21, k22 = _grad_coefs(g, dot, s1, s2, eps, MODE)
    Q1, _, _ = _row_pointers(G1, row0, R, D, BLOCK_R)
    Q2, _, _ = _row_pointers(G2, row0, R, D, BLOCK_R)
    _write_pair(P1, P2, Q1, Q2, rmask, D, k11, k12, k21, k22, WRITE_1, WRITE_2, ACC, BLOCK_D)


@triton.jit
def normalize_kernel(
    X,
    Y,
    INV,
    R,
    D,
    eps,
    WRITE_Y: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """INV = 1 / max(|x|, eps) per row (float32); Y = x * INV when WRITE_Y."""
    row0 = tl.program_id(0) * BLOCK_R
    P, rows, rmask = _row_pointers(X, row0, R, D, BLOCK_R)
    _, ss, _, _ = _dot_and_squares(P, P, rmask, D, ACC, BLOCK_R, BLOCK_D)
    inv = 1.0 / tl.maximum(tl.sqrt(ss), eps)
    tl.store(INV + rows, inv.to(INV.dtype.element_ty), mask=rmask)
    if WRITE_Y:
        Q, _, _ = _row_pointers(Y, row0, R, D, BLOCK_R)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            m = rmask[:, None] & (cols[None, :] < D)
            x = tl.load(P + cols[None, :], mask=m, other=0.0).to(ACC)
            tl.store(Q + cols[None, :], (x * inv[:, None]).to(Y.dtype.element_ty), mask=m)


@triton.jit
def normalize_bwd_kernel(
    GY, X, GX, R, D, eps, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    """Gradient of y = x / max(|x|, eps): gx = gy / a - [n > eps] x (x . gy) / (n^2 a)."""
    row0 = tl.program_id(0) * BLOCK_R
    P, rows, rmask = _row_pointers(X, row0, R, D, BLOCK_R)
    PG, _, _ = _row_pointers(GY, row0, R, D, BLOCK_R)
    xg, xx, _, _ = _dot_and_squares(P, PG, rmask, D, ACC, BLOCK_R, BLOCK_D)
    n = tl.sqrt(xx)
    a = tl.maximum(n, eps)
    kx = tl.where(n > eps, -xg / (a * a * a), 0.0)  # a == n where n > eps; no 0/0 elsewhere
    kg = 1.0 / a
    Q, _, _ = _row_pointers(GX, row0, R, D, BLOCK_R)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = rmask[:, None] & (cols[None, :] < D)
        x = tl.load(P + cols[None, :], mask=m, other=0.0).to(ACC)
        gy = tl.load(PG + cols[None, :], mask=m, other=0.0).to(ACC)
        gx = kx[:, None] * x + kg[:, None] * gy
        tl.store(Q + cols[None, :], gx.to(GX.dtype.element_ty), mask=m)


@triton.jit
def scaled_matmul_kernel(
    A,
    B,
    C,
    RS,
    CS,
    M,
    N,
    K,
    s_ab,
    s_am,
    s_ak,
    s_bb,
    s_bk,
    s_bn,
    s_cb,
    s_cm,
    s_cn,
    SCALE: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """C[z] = diag(RS[z]) A[z] B[z] diag(CS[z]) (scales only when SCALE), fp32 accumulate.

    The scaling is the epilogue that fuses row normalisation into pairwise cosine
    similarity: the N x M product is written once, already normalised.
    """
    z = tl.program_id(1).to(tl.int64)
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: GROUP_M row-blocks share each column block while it is in L2.
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % size_m
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    pa = A + z * s_ab + rm.to(tl.int64)[:, None] * s_am + rk[None, :] * s_ak
    pb = B + z * s_bb + rk[:, None] * s_bk + rn.to(tl.int64)[None, :] * s_bn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ka = (k0 + rk) < K
        a = tl.load(pa, mask=(rm[:, None] < M) & ka[None, :], other=0.0)
        b = tl.load(pb, mask=ka[:, None] & (rn[None, :] < N), other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
        pa += BLOCK_K * s_ak
        pb += BLOCK_K * s_bk
    if SCALE:
        rs = tl.load(RS + z * M + rm, mask=rm < M, other=0.0)
        cs = tl.load(CS + z * N + rn, mask=rn < N, other=0.0)
        acc = acc * rs[:, None].to(ACC) * cs[None, :].to(ACC)
    pc = C + z * s_cb + rm.to(tl.int64)[:, None] * s_cm + rn.to(tl.int64)[None, :] * s_cn
    tl.store(pc, acc.to(C.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


# ----------------------------------------------------------------------------- launchers
def _row_grid(R, block_r):
    return (triton.cdiv(R, block_r),)


def rowwise_forward(x1: torch.Tensor, x2: torch.Tensor, eps: float, mode: int) -> torch.Tensor:
    """Cosine (mode 0, input dtype) or feature distance (modes 1, 2, accumulation dtype)."""
    x1, x2 = x1.contiguous(), x2.contiguous()
    acc = torch.float64 if x1.dtype == torch.float64 else torch.float32
    out_dtype = x1.dtype if mode == MODE_COS else acc
    out = torch.empty(x1.shape[:-1], dtype=out_dtype, device=x1.device)
    R, D = out.numel(), x1.shape[-1]
    if R == 0:
        return out
    br, bd = row_blocks(D, x1.element_size(), x1.device.type == "cpu")
    wrap_triton(rowwise_fwd_kernel)[_row_grid(R, br)](
        x1, x2, out, R, D, eps, MODE=mode, ACC=tl_acc_dtype(x1.dtype), BLOCK_R=br, BLOCK_D=bd
    )
    return out


def rowwise_backward(
    grad: torch.Tensor,
    x1: torch.Tensor,
    x2: torch.Tensor,
    eps: float,
    mode: int,
    mask: tuple[bool, bool],
):
    """(grad x1, grad x2), each empty where `mask` is False."""
    x1, x2 = x1.contiguous(), x2.contiguous()
    g1 = torch.empty_like(x1) if mask[0] else x1.new_empty(0)
    g2 = torch.empty_like(x2) if mask[1] else x2.new_empty(0)
    R, D = rows_of(x1)
    if R == 0 or not (mask[0] or mask[1]):
        return g1, g2
    br, bd = row_blocks(D, x1.element_size(), x1.device.type == "cpu")
    wrap_triton(rowwise_bwd_kernel)[_row_grid(R, br)](
        grad.contiguous(),
        x1,
        x2,
        g1 if mask[0] else x1,
        g2 if mask[1] else x2,
        R,
        D,
        eps,
        MODE=mode,
        WRITE_1=mask[0],
        WRITE_2=mask[1],
        ACC=tl_acc_dtype(x1.dtype),
        BLOCK_R=br,
        BLOCK_D=bd,
    )
    return g1, g2


def normalize(x: torch.Tensor, eps: float, write_y: bool):
    """(y or None, inv_norm float32 [...]) for rows of x."""
    x = x.contiguous()
    inv = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    y = torch.empty_like(x) if write_y else inv
    R, D = inv.numel(), x.shape[-1]  # D == 0: every inverse norm is 1 / eps
    if R:
        br, bd = row_blocks(D, x.element_size(), x.device.type == "cpu")
        wrap_triton(normalize_kernel)[_row_grid(R, br)](
            x, y, inv, R, D, eps, WRITE_Y=write_y, ACC=tl_acc_dtype(x.dtype), BLOCK_R=br, BLOCK_D=bd
        )
    return (y if write_y else None), inv


def normalize_backward(gy: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    x, gy = x.contiguous(), gy.contiguous()
    gx = torch.empty_like(x)
    R, D = rows_of(x)
    if R:
        br, bd = row_blocks(D, x.element_size(), x.device.type == "cpu")
        wrap_triton(normalize_bwd_kernel)[_row_grid(R, br)](
            gy, x, gx, R, D, eps, ACC=tl_acc_dtype(x.dtype), BLOCK_R=br, BLOCK_D=bd
        )
    return gx


def _matmul_blocks(dtype: torch.dtype, on_cpu: bool):
    if on_cpu:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=4)
    if dtype in (torch.float16, torch.bfloat16):
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)


def scaled_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale=None,
    col_scale=None,
    allow_tf32=False,
    out_dtype=None,
):
    """a [Z, M, K] @ b [Z, K, N] (any strides) -> [Z, M, N] in `out_dtype` (default a's
    dtype), optionally scaled by row_scale [Z, M] and col_scale [Z, N] (float32) in the
    epilogue."""
    Z, M, K = a.shape
    N = b.shape[2]
    c = torch.empty((Z, M, N), dtype=out_dtype or a.dtype, device=a.device)
    if c.numel() == 0:
        return c
    scale = row_scale is not None
    rs = row_scale.contiguous() if scale else c
    cs = col_scale.contiguous() if scale else c
    on_cpu = a.device.type == "cpu"
    precision = "tf32" if (a.dtype == torch.float32 and allow_tf32 and not on_cpu) else "ieee"
    blocks = _matmul_blocks(a.dtype, on_cpu)
    grid = (triton.cdiv(M, blocks["BLOCK_M"]) * triton.cdiv(N, blocks["BLOCK_N"]), Z)
    wrap_triton(scaled_matmul_kernel)[grid](
        a,
        b,
        c,
        rs,
        cs,
        M,
        N,
        K,
        a.stride(0),
        a.stride(1),
        a.stride(2),
        b.stride(0),
        b.stride(1),
        b.stride(2),
        c.stride(0),
        c.stride(1),
        c.stride(2),
        SCALE=scale,
        ACC=tl_acc_dtype(a.dtype),
        PRECISION=precision,
        UPCAST=dot_upcast(a.dtype, a.device),
        **blocks,
    )
    return c
