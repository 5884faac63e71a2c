"""Triton kernels of the distillation family: one program per row, looping over V in
BLOCK_V chunks.

    pass 1  online softmax statistics of the student (and teacher) at temperature T: running
            maxima, sums of exp((x - max) / T) and the KL numerators, rescaled whenever a
            maximum grows; the hard term's sum at T = 1 rides along;
    pass 2  (0 < beta < 1 only) KL(p_S || m), KL(p_T || m) with log m by logaddexp;
    pass 3  the gradient of the row's loss w.r.t. the student (and teacher), so that the
            backward is a scaling by the upstream gradient (scale_grad_kernel).
All in float32 (float64 for float64). Row offsets are int64. A label out of [0, V) other
than ignore_index gives a nan loss and gradient row (checking it would synchronise).
"""
import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import tl_acc_dtype, f32_arg, rows_of

MODE_KL, MODE_REVERSE_KL, MODE_JSD = 0, 1, 2


@triton.jit
def _expm1(x):
    """exp(x) - 1 to a few ulps near 0 (Kahan: (u - 1) x / log u with u = exp(x))."""
    u = tl.exp(x)
    um1 = u - 1.0
    special = (um1 == 0.0) | (um1 == -1.0) | (x == float("inf"))  # x, -1, inf: no 0 / 0, no inf / inf
    r = um1 * x / tl.log(tl.where(special, 2.0, u))
    return tl.where(um1 == 0.0, x, tl.where(special, um1, r))


@triton.jit
def _log1p(x):
    """log(1 + x) to a few ulps near 0 (Kahan: log(u) x / (u - 1) with u = 1 + x)."""
    u = 1.0 + x
    um1 = u - 1.0
    special = (um1 == 0.0) | (x == float("inf"))
    r = tl.log(u) * x / tl.where(special, 1.0, um1)
    return tl.where(special, tl.where(um1 == 0.0, x, u), r)


@triton.jit
def _exp_diff(a, b, ea, eb):
    """exp(a) - exp(b), given ea = exp(a) and eb = exp(b): eb expm1(a - b) where a and b
    are close (no cancellation), ea - eb elsewhere (expm1 could overflow against an eb of 0)."""
    near = tl.abs(a - b) < 1.0
    return tl.where(near, eb * _expm1(tl.where(near, a - b, 0.0)), ea - eb)


@triton.jit
def _jsd_logs(x, beta, omb, log_b, log_1b):
    """(log p_S - log m, log p_T - log m) for m = beta p_T + (1 - beta) p_S, from
    x = log p_T - log p_S alone (formed without the log zb - log za cancellation). Near
    x = 0 (close distributions, where log m - log p_S cancelled: 2.6e-5 off in float32,
    fuzz): log(m / p_S) = log1p(beta expm1(x)). Elsewhere log m is the larger of
    log(beta p_T), log((1 - beta) p_S) plus e = log1p(exp(-|d|)), d = x + log(beta / (1 - beta)),
    and each ratio is a difference taken exactly (log p_S - logaddexp lost log(1 - beta)
    below p_S's rounding: a loss of 9e-39 for 3.3e-38 at beta = 1e-38, fuzz)."""
    near = tl.abs(x) < 1.0
    xn = tl.where(near, x, 0.0)
    # beta > 1/2: the mirror image, log(m / p_T) = log1p((1 - beta) expm1(-x)), with
    # omb = 1 - beta from the host's float64 (a float32 beta of 1 - 1e-7 is 1, and the
    # loss of beta = 1 - 1e-16 was 3.7% off, fuzz)
    # one log1p / expm1 per element: w = log(m / p_S), or log(m / p_T) for the mirror image
    mirror = beta > 0.5
    w = _log1p(tl.where(mirror, omb, beta) * _expm1(tl.where(mirror, -xn, xn)))
    ls_near = tl.where(mirror, -w - xn, -w)
    lt_near = tl.where(mirror, -w, xn - w)
    d = x + (log_b - log_1b)
    e = _log1p(tl.exp(-tl.abs(d)))
    up = d >= 0.0
    ls_far = tl.where(up, -x - log_b, -log_1b) - e
    lt_far = tl.where(up, -log_b, x - log_1b) - e
    return tl.where(near, ls_near, ls_far), tl.where(near, lt_near, lt_far)


@triton.jit
def _take_rest(n_max, dominant, rest, rest_abs):
    """Whether the row's maximum takes minus the sum of the other elements' gradients: it is
    unique, holds more than half of the probability (where its own formula cancels) and the
    others do not cancel among themselves (their sum is at least 1/4 of their magnitudes);
    a NaN or inf keeps the element's own formula."""
    finite = (rest == rest) & (tl.abs(rest) < float("inf"))
    return (n_max == 1) & dominant & finite & (4.0 * tl.abs(rest) >= rest_abs)


@triton.jit
def distill_kernel(S, T_, LAB, LOSS, GS, GT, V, inv_t, temp, sw, hw, beta, omb, log_b, log_1b, ls, ignore_index,
                   SOFT: tl.constexpr, HARD: tl.constexpr, PROBS: tl.constexpr, HAS_LABELS: tl.constexpr,
                   MODE: tl.constexpr, SHARE1: tl.constexpr, GRAD_S: tl.constexpr, GRAD_T: tl.constexpr,
                   ACC: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * V
    offs = tl.arange(0, BLOCK_V)
    counted = True
    bad = False
    y = 0
    if HAS_LABELS:
        lab = tl.load(LAB + row)
        counted = lab != ignore_index
        if HARD:
            bad = counted & ((lab < 0) | (lab >= V))
            y = tl.where(bad | ~counted, 0, lab)
    if counted:
        # ---- pass 1: maxima start at the first chunk's, so every rescaling factor is finite
        ninf = float("-inf")
        ms = tl.max(tl.load(S + base + offs, mask=offs < V, other=ninf).to(ACC), 0)
        mt = ms
        if SOFT:
            mt = tl.max(tl.load(T_ + base + offs, mask=offs < V, other=ninf).to(ACC), 0)
        za = tl.zeros([], ACC)
        zb = tl.zeros([], ACC)
        wf = tl.zeros([], ACC)   # sum f (dt - ds)
        wr = tl.zeros([], ACC)   # sum e (ds - dt)
        dd = tl.zeros([], ACC)   # sum (f - e) by _exp_diff = zb - za without the cancellation
        qs = tl.zeros([], ACC)
        wq = tl.zeros([], ACC)   # sum q ds
        z1 = tl.zeros([], ACC)
        ssum = tl.zeros([], ACC)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + offs
            msk = cols < V
            s = tl.load(S + base + cols, mask=msk, other=ninf).to(ACC)
            ms_new = tl.maximum(ms, tl.max(s, 0))
            dsh = (ms_new - ms) * inv_t
            ds = tl.where(msk, (s - ms_new) * inv_t, 0.0)
            e = tl.where(msk, tl.exp(ds), 0.0)
            if SOFT:
                t = tl.load(T_ + base + cols, mask=msk, other=ninf).to(ACC)
                mt_new = tl.maximum(mt, tl.max(t, 0))
                dth = (mt_new - mt) * inv_t
                dt = tl.where(msk, (t - mt_new) * inv_t, 0.0)
                f = tl.where(msk, tl.exp(dt), 0.0)
                a_t = tl.exp(-dth)
                a_s = tl.exp(-dsh)
                wf = a_t * (wf + zb * (dsh - dth)) + tl.sum(f * (dt - ds), 0)
                wr = a_s * (wr + za * (dth - dsh)) + tl.sum(e * (ds - dt), 0)
                # zb - za after the rescaling: a_t zb - a_s za = a_t (zb - za) + (a_t - a_s) za
                dd = a_t * dd + _exp_diff(-dth, -dsh, a_t, a_s) * za + tl.sum(tl.where(msk, _exp_diff(dt, ds, f, e), 0.0), 0)
                zb = a_t * zb + tl.sum(f, 0)
                mt = mt_new
            if PROBS:
                q = tl.load(T_ + base + cols, mask=msk, other=0.0).to(ACC)
                wq = wq - qs * dsh + tl.sum(q * ds, 0)
                qs += tl.sum(q, 0)
            if HARD:
                if not SHARE1:
                    z1 = tl.exp(ms - ms_new) * z1 + tl.sum(tl.where(msk, tl.exp(s - ms_new), 0.0), 0)
                ssum += tl.sum(tl.where(msk, s, 0.0), 0)
            za = tl.exp(-dsh) * za + tl.sum(e, 0)
            ms = ms_new
        lza = tl.log(za)
        lzb = tl.zeros([], ACC)
        lzba = tl.zeros([], ACC)  # log(zb / za)
        klf = tl.zeros([], ACC)
        klr = tl.zeros([], ACC)
        if SOFT:
            lzb = tl.log(zb)
            # log(zb / za): log1p(dd / za) for close distributions (zb / za in [1/2, 2]), where
            # lzb - lza cancels (a KL of 1e-8 with 1e-7 of rounding); elsewhere dd cancels and
            # the log of the ratio is better (the CPU kernel's log_ratio; docs/distillation.md,
            # "Precision for close distributions")
            ratio = zb / za
            near = (ratio >= 0.5) & (ratio <= 2.0)
            lzba = tl.where(near, _log1p(dd / za), tl.log(tl.where(near, 1.0, ratio)))
            klf = wf / zb - lzba
            klr = wr / za + lzba
        # ---- pass 2: generalised JSD terms
        ks = tl.zeros([], ACC)
        kt = tl.zeros([], ACC)
        if SOFT:
            if MODE == 2:
                for v0 in range(0, V, BLOCK_V):
                    cols = v0 + offs
                    msk = cols < V
                    ds = (tl.load(S + base + cols, mask=msk, other=0.0).to(ACC) - ms) * inv_t
                    dt = (tl.load(T_ + base + cols, mask=msk, other=0.0).to(ACC) - mt) * inv_t
                    ls_m, lt_m = _jsd_logs((dt - ds) - lzba, beta, omb, log_b, log_1b)
                    ks += tl.sum(tl.where(msk, tl.exp(ds - lza) * ls_m, 0.0), 0)
                    kt += tl.sum(tl.where(msk, tl.exp(dt - lzb) * lt_m, 0.0), 0)
        loss = tl.zeros([], ACC)
        if SOFT:
            if MODE == 0:
                d = klf
            elif MODE == 1:
                d = klr
            else:
                d = beta * kt + omb * ks
            loss += sw * temp * temp * d
        if PROBS:
            loss += qs * lza - wq
        if HARD:
            lz1 = lza
            if not SHARE1:
                lz1 = tl.log(z1)
            s_y = tl.load(S + base + y).to(ACC)
            nll = lz1 + (ms - s_y)
            smooth = lz1 + ms - ssum / V
            # ls = 0: no smoothing term at all (a -inf logit makes it inf, and 0 * inf = nan)
            loss += hw * ((1.0 - ls) * nll + tl.where(ls != 0.0, ls * smooth, 0.0))
            loss = tl.where(bad, float("nan"), loss)
        tl.store(LOSS + row, loss.to(LOSS.dtype.element_ty))
        # ---- pass 3: gradients
        if GRAD_S or GRAD_T:
            c = sw * temp
            # Each gradient row sums to 0 (the loss is invariant to a shift of the logits),
            # so the element at a row's unique maximum is minus the sum of the others. Its
            # own formula cancels when it holds most of the mass (a reverse KL of two
            # confident rows: 47% off in float32, fuzz): see _take_rest. Sums over the
            # non-maximal elements, and of their magnitudes:
            gs_rest = tl.zeros([], ACC)
            gt_rest = tl.zeros([], ACC)
            gs_abs = tl.zeros([], ACC)
            gt_abs = tl.zeros([], ACC)
            n_smax = tl.zeros([], tl.int32)
            n_tmax = tl.zeros([], tl.int32)
            i_smax = tl.zeros([], tl.int32)
            i_tmax = tl.zeros([], tl.int32)
            for v0 in range(0, V, BLOCK_V):
                cols = v0 + offs
                msk = cols < V
                s = tl.load(S + base + cols, mask=msk, other=0.0).to(ACC)
                ds = (s - ms) * inv_t
                lps = ds - lza
                ps = tl.exp(lps)
                g = tl.zeros([BLOCK_V], ACC)
                h = tl.zeros([BLOCK_V], ACC)
                if SOFT:
                    t = tl.load(T_ + base + cols, mask=msk, other=0.0).to(ACC)
                    dt = (t - mt) * inv_t
                    lpt = dt - lzb
                    pt = tl.exp(lpt)
                    if MODE == 0:
                        g = c * (ps - pt)
                        h = c * pt * (lpt - lps - klf)
                    elif MODE == 1:
                        g = c * ps * (lps - lpt - klr)
                        h = c * (pt - ps)
                    else:
                        ls_m, lt_m = _jsd_logs((dt - ds) - lzba, beta, omb, log_b, log_1b)
                        g = c * omb * ps * (ls_m - ks)
                        h = c * beta * pt * (lt_m - kt)
                if PROBS:
                    q = tl.load(T_ + base + cols, mask=msk, other=0.0).to(ACC)
                    g = (ps * qs - q) * inv_t
                    h = lza - ds
                if HARD:
                    p1 = ps
                    if not SHARE1:
                        p1 = tl.exp(s - ms - lz1)
                    g += hw * (p1 - ls / V) - tl.where(cols == y, hw * (1.0 - ls), 0.0)
                    g = tl.where(bad, float("nan"), g)
                if GRAD_S:
                    tl.store(GS + base + cols, g.to(GS.dtype.element_ty), mask=msk)
                    top = msk & (s == ms)
                    gs_rest += tl.sum(tl.where(msk & ~top, g, 0.0), 0)
                    gs_abs += tl.sum(tl.where(msk & ~top, tl.abs(g), 0.0), 0)
                    n_smax += tl.sum(top.to(tl.int32), 0)
                    i_smax += tl.sum(tl.where(top, cols, 0), 0)
                if GRAD_T:
                    tl.store(GT + base + cols, h.to(GT.dtype.element_ty), mask=msk)
                    if SOFT:
                        top = msk & (t == mt)  # t: the teacher logits loaded above
                        gt_rest += tl.sum(tl.where(msk & ~top, h, 0.0), 0)
                        gt_abs += tl.sum(tl.where(msk & ~top, tl.abs(h), 0.0), 0)
                        n_tmax += tl.sum(top.to(tl.int32), 0)
                        i_tmax += tl.sum(tl.where(top, cols, 0), 0)
            tl.debug_barrier()  # the loop's stores come first: the maxima are written again
            if GRAD_S:
                # the maximum's probability: 1 / za, or 1 / z1 for the hard term's softmax
                dominant = lza < 0.6931471805599453
                if HARD:
                    dominant = dominant | (lz1 < 0.6931471805599453)
                if _take_rest(n_smax, dominant, gs_rest, gs_abs):
                    tl.store(GS + base + i_smax, (-gs_rest).to(GS.dtype.element_ty))
            if GRAD_T:
                if SOFT:  # a gradient with respect to logits (not to probabilities)
                    if _take_rest(n_tmax, lzb < 0.6931471805599453, gt_rest, gt_abs):
                        tl.store(GT + base + i_tmax, (-gt_rest).to(GT.dtype.element_ty))
    else:  # an ignored row drops out of every term
        tl.store(LOSS + row, tl.zeros([], LOSS.dtype.element_ty))
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + offs
            msk = cols < V
            if GRAD_S:
                tl.store(GS + base + cols, tl.zeros([BLOCK_V], GS.dtype.element_ty), mask=msk)
            if GRAD_T:
                tl.store(GT + base + cols, tl.zeros([BLOCK_V], GT.dtype.element_ty), mask=msk)


@triton.jit
def scale_grad_kernel(G, X, OUT, V, ACC: tl.constexpr, BLOCK_V: tl.constexpr):
    """OUT[r, :] = G[r] * X[r, :], 0 where X is 0."""
    row = tl.program_id(0).to(tl.int64)
    g = tl.load(G + row).to(ACC)
    offs = tl.arange(0, BLOCK_V)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        msk = cols < V
        x = tl.load(X + row * V + cols, mask=msk, other=0.0).to(ACC)
        # an exact zero stays zero (an ignored row, even under an inf upstream gradient)
        tl.store(OUT + row * V + cols, tl.where(x == 0, 0.0, g * x).to(OUT.dtype.element_ty), mask=msk)


# ----------------------------------------------------------------------------- launchers
def _block_v(V: int, on_cpu: bool) -> int:
    cap = 1 << 16 if on_cpu else 4096   # the interpreter prefers few, large steps
    return min(triton.next_power_of_2(V), cap)


def _mode(beta: float) -> int:
    return MODE_KL if beta == 0 else MODE_REVERSE_KL if beta == 1 else MODE_JSD


def distill_rows(student, teacher, labels, *, temperature=1.0, soft_weight=0.0, hard_weight=0.0, beta=0.0,
                 ignore_index=-100, label_smoothing=0.0, probs=False, grad_s=False, grad_t=False):
    """(per-row loss, grad w.r.t. student or an empty tensor, grad w.r.t. teacher or an empty
    tensor). teacher: logits (soft term), probabilities (probs=True), or None."""
    s = student.contiguous()
    t = teacher.contiguous() if teacher is not None else None
    acc = torch.float64 if s.dtype == torch.float64 else torch.float32
    loss = torch.empty(s.shape[:-1], dtype=acc, device=s.device)
    gs = torch.empty(s.shape, dtype=s.dtype, device=s.device) if grad_s else s.new_empty((0,))
    gt = torch.empty(s.shape, dtype=s.dtype, device=s.device) if grad_t else s.new_empty((0,))
    R, V = rows_of(s)
    if R == 0:
        return loss, gs, gt
    soft = t is not None and not probs
    hard = labels is not None and hard_weight != 0
    lab = labels.contiguous() if labels is not None else loss
    on_cpu = s.device.type == "cpu"
    b = float(beta)
    wrap_triton(distill_kernel)[(R,)](
        s, t if t is not None else s, lab, loss, gs if grad_s else loss, gt if grad_t else loss, V,
        *map(f32_arg, (1.0 / temperature, temperature, soft_weight, hard_weight, b, 1.0 - b,
                       math.log(b) if 0 < b < 1 else 0.0, math.log1p(-b) if 0 < b < 1 else 0.0, label_smoothing)),
        int(ignore_index), SOFT=soft, HARD=hard, PROBS=bool(probs), HAS_LABELS=labels is not None, MODE=_mode(b),
        SHARE1=float(temperature) == 1.0, GRAD_S=bool(grad_s), GRAD_T=bool(grad_t), ACC=tl_acc_dtype(s.dtype),
        BLOCK_V=_block_v(V, on_cpu), num_warps=1 if on_cpu else 8)
    return loss, gs, gt


def scale_grad(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """grad[r] * x[r, :] into a new tensor, or into `out` (contiguous, may be x itself)."""
    x = x.contiguous()
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    R, V = rows_of(x)
    if R:
        wrap_triton(scale_grad_kernel)[(R,)](grad.contiguous(), x, out, V, ACC=tl_acc_dtype(x.dtype),
                                             BLOCK_V=_block_v(V, x.device.type == "cpu"))
    return out
