"""Triton kernels of the MAE family.

    gather_rows_kernel         out[n, t] = src[n, idx[n, t]], a fill row or zeros: random_masking
                               forward and backward, unshuffle_with_mask_tokens forward, and its
                               backward's visible rows (through invert_ids_kernel)
    mask_token_partial_kernel  unshuffle_with_mask_tokens' mask token gradient, per sample;
    sum_rows_kernel            then summed over samples
    gather_patches_kernel      gather_patches; scatter_patches_kernel its backward
    masked_patch_loss_kernel   masked_patch_loss's per-patch terms (the masked mean is torch's)

Index semantics (no host synchronisation, so no exceptions from ids): a row whose id
is out of range is written as NaN; `invert_ids` marks a repeated id with -1, which
the gathers that consume it also turn into NaN. Every sum runs in a fixed order
(per-program tiles, then a second pass over samples): deterministic. Offsets that can
pass 2^31 are int64.
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from pykernels._precision import acc_dtype

from ._common import tl_acc_dtype


def _rows_block(D: int, on_cpu: bool, cap: int = 4096):
    block_d = min(triton.next_power_of_2(max(D, 1)), cap)
    block_r = max(1, min(64 if on_cpu else 16, cap // block_d))
    return block_r, block_d


# ----------------------------------------------------------------------------- tokens
@triton.jit
def gather_rows_kernel(
    SRC,
    IDX,
    FILL,
    OUT,
    R,
    T,
    S,
    D,
    hi,
    HAS_FILL: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """OUT[n, t] = SRC[n, i] for 0 <= i < S, FILL (or 0) for S <= i < hi, NaN otherwise;
    i = IDX[n, t]. Rows r = n*T + t."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    idx = tl.load(IDX + rows, mask=rmask, other=0)
    n = (rows // T).to(tl.int64)
    in_src = (idx >= 0) & (idx < S)
    in_fill = (idx >= S) & (idx < hi)
    bad = (in_src | in_fill) == 0
    src_row = (n * S + tl.where(in_src, idx, 0)) * D
    out_row = rows.to(tl.int64) * D
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cm = cols < D
        m = rmask[:, None] & cm[None, :]
        v = tl.load(SRC + src_row[:, None] + cols[None, :], mask=m & in_src[:, None], other=0.0)
        if HAS_FILL:
            f = tl.load(FILL + cols, mask=cm, other=0.0)
            v = tl.where(in_fill[:, None], f[None, :], v)
        # in ACC: the interpreter has no bf16 NaN constant
        v = tl.where(bad[:, None], float("nan"), v.to(ACC))
        tl.store(OUT + out_row[:, None] + cols[None, :], v.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def invert_ids_kernel(IDS, INV, R, K, T, MARK: tl.constexpr, BLOCK: tl.constexpr):
    """MARK=False: INV[n, IDS[n, k]] = k for ids in [0, T). MARK=True (a second launch):
    where INV[n, IDS[n, k]] != k another k claimed the slot: mark it -1. Whatever
    order the stores land in, a repeated id ends as -1."""
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = r < R
    v = tl.load(IDS + r, mask=m, other=-1)
    k = (r % K).to(tl.int64)
    ok = m & (v >= 0) & (v < T)
    dst = INV + (r // K).to(tl.int64) * T + tl.where(ok, v, 0)
    if MARK:
        cur = tl.load(dst, mask=ok, other=0)
        tl.store(dst, tl.full([BLOCK], -1, tl.int64), mask=ok & (cur != k))
    else:
        tl.store(dst, k, mask=ok)


@triton.jit
def mask_token_partial_kernel(
    G, IDS, PART, L, D, K, ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr
):
    """PART[n, d] = sum over l (in order) with K <= IDS[n, l] < L of G[n, l, d]."""
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cm = cols < D
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for l0 in range(0, L, BLOCK_L):
        ls = l0 + tl.arange(0, BLOCK_L)
        lm = ls < L
        ids = tl.load(IDS + n * L + ls, mask=lm, other=0)
        sel = lm & (ids >= K) & (ids < L)
        g = tl.load(
            G + (n * L + ls)[:, None] * D + cols[None, :],
            mask=sel[:, None] & cm[None, :],
            other=0.0,
        )
        acc += tl.sum(g.to(ACC), axis=0)
    tl.store(PART + n * D + cols, acc, mask=cm)


@triton.jit
def sum_rows_kernel(
    PART, OUT, N, D, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr
):
    """OUT[d] = sum over n of PART[n, d], tiles in n order."""
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    cm = cols < D
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        p = tl.load(
            PART + ns.to(tl.int64)[:, None] * D + cols[None, :],
            mask=(ns < N)[:, None] & cm[None, :],
            other=0.0,
        )
        acc += tl.sum(p, axis=0)
    tl.store(OUT + cols, acc.to(OUT.dtype.element_ty), mask=cm)


# ----------------------------------------------------------------------------- patches
@triton.jit
def _pixel(n, l, e, C, H, W, p, w):
    """Offsets into [N, C, H, W] of element e of patch l of image n (n, l: [R]; e: [E])."""
    c = e % C
    q = e // C
    pi = q // p
    pj = q % p
    y0 = (l // w) * p
    x0 = (l % w) * p
    return (
        ((n[:, None] * C + c[None, :]) * H + y0[:, None] + pi[None, :]) * W
        + x0[:, None]
        + pj[None, :]
    )


@triton.jit
def gather_patches_kernel(
    IMG,
    IDS,
    OUT,
    R,
    K,
    C,
    H,
    W,
    p,
    w,
    L,
    P,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rows < R
    ids = tl.load(IDS + rows, mask=rm, other=0)
    valid = (ids >= 0) & (ids < L)
    n = (rows // K).to(tl.int64)
    e = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    m = rm[:, None] & (e < P)[None, :]
    v = tl.load(
        IMG + _pixel(n, tl.where(valid, ids, 0), e, C, H, W, p, w),
        mask=m & valid[:, None],
        other=0.0,
    )
    v = tl.where(valid[:, None], v.to(ACC), float("nan"))
    tl.store(OUT + rows.to(tl.int64)[:, None] * P + e[None, :], v.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def scatter_patches_kernel(
    G, INV, OUT, total, K, C, H, W, p, w, L, P, ACC: tl.constexpr, BLOCK: tl.constexpr
):
    """Image gradient in image order: pixel of patch l gets G[n, k] (k = INV[n, l]),
    0 where k == K (patch not kept), NaN where k == -1 (repeated id)."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = idx < total
    x = idx % W
    y = (idx // W) % H
    c = (idx // (W * H)) % C
    n = idx // (W * H * C)
    l = (y // p) * w + x // p
    k = tl.load(INV + n * L + l, mask=m, other=0)
    valid = (k >= 0) & (k < K)
    off = (n * K + tl.where(valid, k, 0)) * P + ((y % p) * p + x % p) * C + c
    v = tl.load(G + off, mask=m & valid, other=0.0).to(ACC)
    v = tl.where(valid, v, tl.where(k == K, 0.0, float("nan")))
    tl.store(OUT + idx, v.to(OUT.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------- masked_patch_loss
@triton.jit
def _target(IMG, n, l, e, rm, P, C, H, W, p, w, ACC: tl.constexpr):
    """Elements e of the target patches (n, l), in patchify's order, and their mask."""
    m = rm[:, None] & (e < P)[None, :]
    return tl.load(IMG + _pixel(n, l, e, C, H, W, p, w), mask=m, other=0.0).to(ACC), m


@triton.jit
def _target_norm(
    IMG, n, l, rm, P, C, H, W, p, w, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr
):
    """Pass 1: mean = sum(t) / P and rstd = 1 / sqrt(var + 1e-6) of each target patch,
    var = sum((t - mean)^2) / (P - 1) (unbiased, as torch.var), in two passes."""
    s = tl.zeros([BLOCK_R], dtype=ACC)
    for e0 in range(0, P, BLOCK_P):
        t, m = _target(IMG, n, l, e0 + tl.arange(0, BLOCK_P), rm, P, C, H, W, p, w, ACC)
        s += tl.sum(t, axis=1)
    mean = s / P
    ss = tl.zeros([BLOCK_R], dtype=ACC)
    for e0 in range(0, P, BLOCK_P):
        t, m = _target(IMG, n, l, e0 + tl.arange(0, BLOCK_P), rm, P, C, H, W, p, w, ACC)
        d = tl.where(m, t - mean[:, None], 0.0)
        ss += tl.sum(d * d, axis=1)
    return mean, 1.0 / tl.sqrt(ss / (P - 1) + 1e-6)


@triton.jit
def masked_patch_loss_kernel(
    PRED,
    IMG,
    COEF,
    OUT,
    GRAD,
    R,
    L,
    C,
    H,
    W,
    p,
    w,
    P,
    NORM: tl.constexpr,
    BACKWARD: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """The per-patch terms of masked_patch_loss, patches r = n*L + l: pass 1 the target's
    norm (_target_norm, when NORM), pass 2 OUT[r] = mean_e (PRED[r, e] - t[e])^2 with t the
    normalised target and, BACKWARD, GRAD[r, e] = COEF[r] (PRED[r, e] - t[e])."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rows < R
    n = (rows // L).to(tl.int64)
    l = rows % L
    mean = tl.zeros([BLOCK_R], dtype=ACC)
    rstd = tl.zeros([BLOCK_R], dtype=ACC) + 1.0
    if NORM:
        mean, rstd = _target_norm(IMG, n, l, rm, P, C, H, W, p, w, ACC, BLOCK_R, BLOCK_P)
    if BACKWARD:
        k = tl.load(COEF + rows, mask=rm, other=0.0).to(ACC)
    loss = tl.zeros([BLOCK_R], dtype=ACC)
    for e0 in range(0, P, BLOCK_P):
        e = e0 + tl.arange(0, BLOCK_P)
        t, m = _target(IMG, n, l, e, rm, P, C, H, W, p, w, ACC)
        ptr = rows.to(tl.int64)[:, None] * P + e[None, :]
        x = tl.load(PRED + ptr, mask=m, other=0.0).to(ACC)
        d = tl.where(m, x - (t - mean[:, None]) * rstd[:, None], 0.0)
        if BACKWARD:
            tl.store(GRAD + ptr, (k[:, None] * d).to(GRAD.dtype.element_ty), mask=m)
        loss += tl.sum(d * d, axis=1)
    tl.store(OUT + rows, loss / P, mask=rm)


# ----------------------------------------------------------------------------- launchers
def gather_rows(src: torch.Tensor, idx: torch.Tensor, fill, hi: int) -> torch.Tensor:
    """src [N, S, D], idx [N, T] -> [N, T, D] (see gather_rows_kernel); fill [D] or None."""
    src, idx = src.contiguous(), idx.contiguous()
    N, S, D = src.shape
    T = idx.shape[1]
    out = torch.empty((N, T, D), dtype=src.dtype, device=src.device)
    R = N * T
    if out.numel() == 0:
        return out
    br, bd = _rows_block(D, src.device.type == "cpu")
    has_fill = fill is not None
    wrap_triton(gather_rows_kernel)[(triton.cdiv(R, br),)](
        src,
        idx,
        fill.contiguous() if has_fill else src,
        out,
        R,
        T,
        S,
        D,
        hi,
        HAS_FILL=has_fill,
        ACC=tl_acc_dtype(src.dtype),
        BLOCK_R=br,
        BLOCK_D=bd,
    )
    return out


def invert_ids(ids: torch.Tensor, T: int) -> torch.Tensor:
    """inv [N, T] int64: inv[n, ids[n, k]] = k; K = ids.shape[1] where no k points
    (unused), -1 where several do (repeated id). Ids outside [0, T) are ignored."""
    ids = ids.contiguous()
    N, K = ids.shape
    inv = torch.full((N, T), K, dtype=torch.int64, device=ids.device)
    R = N * K
    if R == 0 or T == 0:
        return inv
    block = 1024
    for mark in (False, True):
        wrap_triton(invert_ids_kernel)[(triton.cdiv(R, block),)](
            ids, inv, R, K, T, MARK=mark, BLOCK=block
        )
    return inv


def mask_token_grad(grad: torch.Tensor, ids_restore: torch.Tensor, K: int) -> torch.Tensor:
    """Sum of grad [N, L, D] over the slots with ids_restore >= K: [D] in grad's dtype."""
    grad, ids = grad.contiguous(), ids_restore.contiguous()
    N, L, D = grad.shape
    out = torch.empty((D,), dtype=grad.dtype, device=grad.device)
    if D == 0:
        return out
    part = torch.empty((N, D), dtype=acc_dtype(grad.dtype), device=grad.device)
    bd = min(triton.next_power_of_2(D), 256)
    if N * L:
        wrap_triton(mask_token_partial_kernel)[(N, triton.cdiv(D, bd))](
            grad, ids, part, L, D, K, ACC=tl_acc_dtype(grad.dtype), BLOCK_L=32, BLOCK_D=bd
        )
    else:
        part.zero_()
    wrap_triton(sum_rows_kernel)[(triton.cdiv(D, bd),)](
        part, out, N, D, ACC=tl_acc_dtype(grad.dtype), BLOCK_N=16, BLOCK_D=bd
    )
    return out


def _geometry(C: int, H: int, W: int, p: int):
    w = W // p
    return w, (H // p) * w, p * p * C


def gather_patches(imgs: torch.Tensor, ids: torch.Tensor, p: int) -> torch.Tensor:
    imgs, ids = imgs.contiguous(), ids.contiguous()
    N, C, H, W = imgs.shape
    K = ids.shape[1]
    w, L, P = _geometry(C, H, W, p)
    out = torch.empty((N, K, P), dtype=imgs.dtype, device=imgs.device)
    if out.numel() == 0:
        return out
    br, bp = _rows_block(P, imgs.device.type == "cpu", cap=1024)
    wrap_triton(gather_patches_kernel)[(triton.cdiv(N * K, br), triton.cdiv(P, bp))](
        imgs,
        ids,
        out,
        N * K,
        K,
        C,
        H,
        W,
        p,
        w,
        L,
        P,
        ACC=tl_acc_dtype(imgs.dtype),
        BLOCK_R=br,
        BLOCK_P=bp,
    )
    return out


def scatter_patches(
    grad: torch.Tensor, inv: torch.Tensor, p: int, C: int, H: int, W: int
) -> torch.Tensor:
    grad = grad.contiguous()
    N, K, _ = grad.shape
    w, L, P = _geometry(C, H, W, p)
    out = torch.empty((N, C, H, W), dtype=grad.dtype, device=grad.device)
    total = out.numel()
    if total == 0:
        return out
    block = 4096 if grad.device.type == "cpu" else 1024
    wrap_triton(scatter_patches_kernel)[(triton.cdiv(total, block),)](
        grad, inv, out, total, K, C, H, W, p, w, L, P, ACC=tl_acc_dtype(grad.dtype), BLOCK=block
    )
    return out


def _masked_patch_loss_rows(pred, imgs, p, norm, coef):
    """(per-patch losses [N, L] in the accumulation dtype, grad_pred or None)."""
    pred, imgs = pred.contiguous(), imgs.contiguous()
    N, C, H, W = imgs.shape
    w, L, P = _geometry(C, H, W, p)
    backward = coef is not None
    grad = torch.empty_like(pred) if backward else None
    out = torch.empty((N, L), dtype=acc_dtype(pred.dtype), device=pred.device)
    R = N * L
    if R == 0 or P == 0:  # P == 0 (no channels): a mean over nothing, NaN as torch gives
        return out.fill_(float("nan")), grad
    br, bp = _rows_block(P, pred.device.type == "cpu", cap=2048)
    wrap_triton(masked_patch_loss_kernel)[(triton.cdiv(R, br),)](
        pred,
        imgs,
        coef.contiguous() if backward else out,
        out,
        grad if backward else out,
        R,
        L,
        C,
        H,
        W,
        p,
        w,
        P,
        NORM=norm,
        BACKWARD=backward,
        ACC=tl_acc_dtype(pred.dtype),
        BLOCK_R=br,
        BLOCK_P=bp,
    )
    return out, grad


def masked_patch_loss_rows(pred, imgs, p, norm):
    """masked_patch_loss's per-patch losses [N, L] (accumulation dtype)."""
    return _masked_patch_loss_rows(pred, imgs, p, norm, None)[0]


def masked_patch_loss_rows_backward(coef, pred, imgs, p, norm):
    """(grad_pred = coef[r] (pred - target), the per-patch losses [N, L])."""
    out, grad = _masked_patch_loss_rows(pred, imgs, p, norm, coef)
    return grad, out
