"""Triton kernels of the distillation family: distillation_loss, cross_entropy and
soft_target_cross_entropy are one kernel (distillation_kernel), one program per row, looping
over V in BLOCK_V chunks; scale_grad_kernel is the backward of all three.

    _row_sums   pass 1, online softmax statistics: running maxima ms, mt of the student and
                teacher logits, Za = sum exp((s - ms) / T), Zb = sum exp((t - mt) / T) and the
                soft term's sum w, rescaled whenever a maximum grows; the hard term's
                Z1 = sum exp(s - ms) and sum s ride along
    _jsd_sums   pass 2 (0 < beta < 1 only): KL(p_S || m), KL(p_T || m)
    _row_stats  passes 1 and 2 and the logarithms of their sums
    _row_loss   the row's loss from those sums
    _row_grads  pass 3: d loss / d logits (and teacher), written in the forward so that the
                backward only scales it by the upstream gradient (scale_grad_kernel); per
                chunk the soft term's (_soft_term_grads) plus the hard term's (_hard_term_grad)
All in float32 (float64 for float64). Row offsets are int64. Masked vocabularies: a logit of
-inf is a probability of 0 and every term that probability weighs is 0 (0 log 0 = 0). A
counted row whose maximum is -inf (all masked), or whose label is outside [0, V), gives a
nan loss and gradient row: checking would synchronise with the host.
"""

import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import f32_arg, rows_of, tl_acc_dtype

# The soft term a row computes (distillation_kernel's MODE).
MODE_NONE = tl.constexpr(0)  # cross_entropy: the hard term alone
MODE_KL = tl.constexpr(1)  # KL(p_T || p_S), beta = 0
MODE_REVERSE_KL = tl.constexpr(2)  # KL(p_S || p_T), beta = 1
MODE_JSD = tl.constexpr(3)  # generalised Jensen-Shannon, 0 < beta < 1
MODE_TARGET_PROBS = tl.constexpr(4)  # soft_target_cross_entropy


@triton.jit
def _shift(old_max, new_max, inv_t):
    """(new_max - old_max) / T, 0 when the maximum did not change (also -inf to -inf)."""
    return tl.where(new_max == old_max, 0.0, (new_max - old_max) * inv_t)


@triton.jit
def _finite_or_zero(m):
    """A running maximum to subtract: 0 while it is -inf (then every logit so far is -inf,
    and x - 0 = -inf gives exp = 0 where x - m would be nan)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _zero_where(p, v):
    """v, or 0 where the probability p is 0: 0 log 0 = 0, whatever v is (-inf or nan)."""
    return tl.where(p == 0.0, 0.0, v)


@triton.jit
def _row_sums(
    S,
    T_,
    base,
    V,
    inv_t,
    MODE: tl.constexpr,
    HARD1: tl.constexpr,
    SMOOTH: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Pass 1: (ms, mt, za, zb, w, qs, z1, ss) with ds = (s - ms) / T, dt = (t - mt) / T,
    e = exp(ds), f = exp(dt): za = sum e, zb = sum f, qs = sum q, z1 = sum exp(s - ms),
    ss = sum s, and w = sum f (dt - ds) (MODE_KL), sum e (ds - dt) (MODE_REVERSE_KL) or
    sum q ds (MODE_TARGET_PROBS). When a maximum grows by sh = (new - old) / T, sums of
    exponentials scale by exp(-sh), and w by the same factor after adding the shift of its
    log-ratio: sum f (dt - ds) becomes exp(-sh_t) (w + zb (sh_s - sh_t))."""
    TEACHER: tl.constexpr = (MODE == MODE_KL) | (MODE == MODE_REVERSE_KL) | (MODE == MODE_JSD)
    offs = tl.arange(0, BLOCK_V)
    ms = tl.full([], float("-inf"), ACC)
    mt = tl.full([], float("-inf"), ACC)
    za = tl.zeros([], ACC)
    zb = tl.zeros([], ACC)
    w = tl.zeros([], ACC)
    qs = tl.zeros([], ACC)
    z1 = tl.zeros([], ACC)
    ss = tl.zeros([], ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        msk = cols < V
        s = tl.load(S + base + cols, mask=msk, other=float("-inf")).to(ACC)
        ms_new = tl.maximum(ms, tl.max(s, 0))
        sh_s = _shift(ms, ms_new, inv_t)
        ds = (s - _finite_or_zero(ms_new)) * inv_t
        e = tl.exp(ds)
        if TEACHER:
            t = tl.load(T_ + base + cols, mask=msk, other=float("-inf")).to(ACC)
            mt_new = tl.maximum(mt, tl.max(t, 0))
            sh_t = _shift(mt, mt_new, inv_t)
            dt = (t - _finite_or_zero(mt_new)) * inv_t
            f = tl.exp(dt)
            if MODE == MODE_KL:
                w = _zero_where(zb, tl.exp(-sh_t) * (w + zb * (sh_s - sh_t)))
                w += tl.sum(_zero_where(f, f * (dt - ds)), 0)
            if MODE == MODE_REVERSE_KL:
                w = _zero_where(za, tl.exp(-sh_s) * (w + za * (sh_t - sh_s)))
                w += tl.sum(_zero_where(e, e * (ds - dt)), 0)
            zb = tl.exp(-sh_t) * zb + tl.sum(f, 0)
            mt = mt_new
        if MODE == MODE_TARGET_PROBS:
            q = tl.load(T_ + base + cols, mask=msk, other=0.0).to(ACC)
            w = _zero_where(qs, w - qs * sh_s) + tl.sum(_zero_where(q, q * ds), 0)
            qs += tl.sum(q, 0)
        if HARD1:
            z1 = tl.exp(-_shift(ms, ms_new, 1.0)) * z1
            z1 += tl.sum(tl.exp(s - _finite_or_zero(ms_new)), 0)
        if SMOOTH:
            ss += tl.sum(tl.where(msk, s, 0.0), 0)
        za = tl.exp(-sh_s) * za + tl.sum(e, 0)
        ms = ms_new
    return ms, mt, za, zb, w, qs, z1, ss


@triton.jit
def _log1p(x):
    """log(1 + x) for x > -1 to a few ulps, also where 1 + x rounds to 1 (Kahan: with
    u = 1 + x, log(u) x / (u - 1) cancels u's rounding)."""
    u = 1.0 + x
    um1 = u - 1.0
    special = (um1 == 0.0) | (x == float("inf"))
    r = tl.log(u) * x / tl.where(special, 1.0, um1)
    return tl.where(special, tl.where(um1 == 0.0, x, u), r)


@triton.jit
def _expm1(x):
    """exp(x) - 1 to a few ulps near 0 (Kahan: (u - 1) x / log u with u = exp(x))."""
    u = tl.exp(x)
    um1 = u - 1.0
    special = (um1 == 0.0) | (um1 == -1.0) | (x == float("inf"))  # no 0 / 0, no inf / inf
    r = um1 * x / tl.log(tl.where(special, 2.0, u))
    return tl.where(um1 == 0.0, x, tl.where(special, um1, r))


@triton.jit
def _jsd_ratios(x, jsd, MIRROR: tl.constexpr):
    """(log p_S - log m, log p_T - log m) for m = beta p_T + (1 - beta) p_S from
    x = log p_T - log p_S; jsd = (beta, omb, log_b, log_1b), the mixture's constants. Close distributions (|x| < 1), where log m - log p cancels:
    log(m / p_S) = log1p(beta expm1(x)), or (MIRROR: beta > 1/2) its mirror image
    log(m / p_T) = log1p((1 - beta) expm1(-x)), omb = 1 - beta from the host's float64.
    Elsewhere logaddexp: log m is the larger of log(beta p_T), log((1 - beta) p_S) plus
    log1p(exp(-|d|)), d = x + log(beta / (1 - beta)), each ratio a difference of exact terms.
    A masked side (x = +-inf) has ratio -inf, dropped by _zero_where; the other side's is
    then exactly -log beta or -log(1 - beta)."""
    beta, omb, log_b, log_1b = jsd
    d = x + (log_b - log_1b)
    e = _log1p(tl.exp(-tl.abs(d)))
    up = d >= 0.0
    near = tl.abs(x) < 1.0
    xn = tl.where(near, x, 0.0)
    if MIRROR:
        v = _log1p(omb * _expm1(-xn))
        ls_near = -v - xn
        lt_near = -v
    else:
        u = _log1p(beta * _expm1(xn))
        ls_near = -u
        lt_near = xn - u
    ls_m = tl.where(near, ls_near, tl.where(up, -x - log_b, -log_1b) - e)
    lt_m = tl.where(near, lt_near, tl.where(up, -log_b, x - log_1b) - e)
    return ls_m, lt_m


@triton.jit
def _jsd_sums(
    S,
    T_,
    base,
    V,
    inv_t,
    ms,
    mt,
    lza,
    lzb,
    lzba,
    jsd,
    MIRROR: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Pass 2: KS = sum p_S log(p_S / m), KT = sum p_T log(p_T / m)."""
    offs = tl.arange(0, BLOCK_V)
    ks = tl.zeros([], ACC)
    kt = tl.zeros([], ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        msk = cols < V
        ds = (tl.load(S + base + cols, mask=msk, other=float("-inf")).to(ACC) - ms) * inv_t
        dt = (tl.load(T_ + base + cols, mask=msk, other=float("-inf")).to(ACC) - mt) * inv_t
        ls_m, lt_m = _jsd_ratios((dt - ds) - lzba, jsd, MIRROR)
        ps = tl.exp(ds - lza)
        pt = tl.exp(dt - lzb)
        ks += tl.sum(_zero_where(ps, ps * ls_m), 0)
        kt += tl.sum(_zero_where(pt, pt * lt_m), 0)
    return ks, kt


@triton.jit
def _row_loss(
    MODE: tl.constexpr,
    HARD: tl.constexpr,
    SMOOTH: tl.constexpr,
    lza,
    kl,
    w,
    qs,
    ks,
    kt,
    lz1,
    ms,
    s_y,
    ss,
    V,
    c_t,
    beta,
    omb,
    hw,
    ls,
):
    """soft_weight T^2 D + soft-target CE + hard_weight CE, with KL(p_T || p_S) =
    w / Zb - log(Zb / Za), KL(p_S || p_T) = w / Za + log(Zb / Za) (kl),
    JSD = beta KT + (1 - beta) KS, soft-target CE = Q log Za - sum q ds,
    CE = (1 - ls) (log Z1 - (s_y - ms)) + ls (log Z1 + ms - sum s / V)."""
    loss = tl.zeros_like(lza)
    if (MODE == MODE_KL) | (MODE == MODE_REVERSE_KL):
        loss = c_t * kl
    if MODE == MODE_JSD:
        loss = c_t * (beta * kt + omb * ks)
    if MODE == MODE_TARGET_PROBS:
        loss = qs * lza - w
    if HARD:
        nll = lz1 - (s_y - ms)
        if SMOOTH:  # without smoothing no mean over classes: a -inf logit would make it inf
            loss += hw * ((1.0 - ls) * nll + ls * (lz1 + ms - ss / V))
        else:
            loss += hw * nll
    return loss


@triton.jit
def _soft_grads(ps, pt, x, MODE: tl.constexpr, MIRROR: tl.constexpr, c, jsd, kl, ks, kt):
    """The soft term's (d loss / d s, d loss / d t) from p_S, p_T and x = log p_T - log p_S
    (c = soft_weight T): KL: c (p_S - p_T), c p_T (x - KL); reverse KL: c p_S (-x - KL),
    c (p_T - p_S); JSD: c (1 - beta) p_S (log(p_S / m) - KS), c beta p_T (log(p_T / m) - KT).
    Probability-0 terms are 0."""
    if MODE == MODE_KL:
        g = c * (ps - pt)
        h = _zero_where(pt, c * pt * (x - kl))
    elif MODE == MODE_REVERSE_KL:
        g = _zero_where(ps, c * ps * (-x - kl))
        h = c * (pt - ps)
    else:
        beta, omb, _, _ = jsd
        ls_m, lt_m = _jsd_ratios(x, jsd, MIRROR)
        g = _zero_where(ps, c * omb * ps * (ls_m - ks))
        h = _zero_where(pt, c * beta * pt * (lt_m - kt))
    return g, h


@triton.jit
def _rest_of_row(g, top, msk, cols):
    """This chunk's part of _write_rest's sums: (sum of g off the maximum, sum of |g| off it,
    lanes at the maximum, the sum of their indices)."""
    other = msk & ~top
    return (
        tl.sum(tl.where(other, g, 0.0), 0),
        tl.sum(tl.where(other, tl.abs(g), 0.0), 0),
        tl.sum(top.to(tl.int32), 0),
        tl.sum(tl.where(top, cols, 0), 0),
    )


@triton.jit
def _write_rest(G, base, rest, rest_abs, n_max, i_max, dominant):
    """Each gradient row sums to 0 (the loss does not move when every logit of the row does),
    so the element at the row's maximum can be minus the sum of the others. Forms
    p_j (a_j - sum_k p_k a_k) cancel at an element that holds almost all the probability;
    written where the maximum is unique, holds more than half of the probability (dominant),
    the others do not cancel among themselves (their sum is at least 1/4 of their
    magnitudes) and the sum is finite
    (test_confident_rows_gradient_meets_the_precision_contract)."""
    finite = (rest == rest) & (tl.abs(rest) < float("inf"))
    if (n_max == 1) & dominant & finite & (4.0 * tl.abs(rest) >= rest_abs):
        tl.store(G + base + i_max, (-rest).to(G.dtype.element_ty))


@triton.jit
def _soft_term_grads(
    T_,
    base,
    cols,
    msk,
    ds,
    ps,
    stats,
    inv_t,
    c,
    jsd,
    MODE: tl.constexpr,
    MIRROR: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """The soft term's (g, h, t) on a chunk: g = d loss / d s and h = d loss / d t
    (_soft_grads; soft-target CE: g = (Q p_S - q) / T, h = -log p_S, 0 where q = 0 on a
    masked logit), t the teacher logits (0 where MODE has none)."""
    ms, mt, lza, lzb, lzba, lz1, qs, kl, ks, kt = stats
    g = tl.zeros([BLOCK_V], ACC)
    h = tl.zeros([BLOCK_V], ACC)
    t = tl.zeros([BLOCK_V], ACC)
    if (MODE == MODE_KL) | (MODE == MODE_REVERSE_KL) | (MODE == MODE_JSD):
        t = tl.load(T_ + base + cols, mask=msk, other=float("-inf")).to(ACC)
        dt = (t - mt) * inv_t
        g, h = _soft_grads(ps, tl.exp(dt - lzb), (dt - ds) - lzba, MODE, MIRROR, c, jsd, kl, ks, kt)
    if MODE == MODE_TARGET_PROBS:
        q = tl.load(T_ + base + cols, mask=msk, other=0.0).to(ACC)
        g = (ps * qs - q) * inv_t
        h = tl.where((q == 0.0) & (ds == float("-inf")), 0.0, lza - ds)
    return g, h, t


@triton.jit
def _hard_term_grad(s, ps, cols, y, ms, lz1, hw, ls, V, HARD1: tl.constexpr):
    """The hard term's d loss / d s on a chunk: hw (softmax(s) - ls / V - (1 - ls) [j == y]),
    softmax(s) at T = 1: p_S itself, or with HARD1 its own exp(s - ms - log Z1)."""
    p1 = ps
    if HARD1:
        p1 = tl.exp(s - ms - lz1)
    return hw * (p1 - ls / V) - tl.where(cols == y, hw * (1.0 - ls), 0.0)


@triton.jit
def _row_grads(
    S,
    T_,
    GS,
    GT,
    base,
    V,
    y,
    nan_row,
    stats,
    inv_t,
    c,
    jsd,
    hw,
    ls,
    grad_scale,
    MODE: tl.constexpr,
    MIRROR: tl.constexpr,
    HARD: tl.constexpr,
    HARD1: tl.constexpr,
    GRAD_S: tl.constexpr,
    GRAD_T: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Pass 3: d loss / d s into GS and d loss / d t into GT (_soft_term_grads plus
    _hard_term_grad), times grad_scale; nan on a nan row. stats: the row's
    (ms, mt, lza, lzb, lzba, lz1, qs, kl, ks, kt). The forms p (a - mean a) go through
    _write_rest."""
    ms, mt, lza, lzb, lzba, lz1, qs, kl, ks, kt = stats
    REST_S: tl.constexpr = ((MODE == MODE_REVERSE_KL) | (MODE == MODE_JSD)) & GRAD_S
    REST_T: tl.constexpr = ((MODE == MODE_KL) | (MODE == MODE_JSD)) & GRAD_T
    offs = tl.arange(0, BLOCK_V)
    rs = tl.zeros([], ACC)
    rs_abs = tl.zeros([], ACC)
    rt = tl.zeros([], ACC)
    rt_abs = tl.zeros([], ACC)
    ns = tl.zeros([], tl.int32)
    nt = tl.zeros([], tl.int32)
    i_s = tl.zeros([], tl.int32)
    i_t = tl.zeros([], tl.int32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        msk = cols < V
        # 1. p_S = exp((s - ms) / T - log Za)
        s = tl.load(S + base + cols, mask=msk, other=float("-inf")).to(ACC)
        ds = (s - ms) * inv_t
        ps = tl.exp(ds - lza)
        # 2. g = d loss / d s, h = d loss / d t: the soft term, then the hard term's
        g, h, t = _soft_term_grads(
            T_, base, cols, msk, ds, ps, stats, inv_t, c, jsd, MODE, MIRROR, ACC, BLOCK_V
        )
        if HARD:
            g += _hard_term_grad(s, ps, cols, y, ms, lz1, hw, ls, V, HARD1)
        # 3. times grad_scale, nan on a nan row
        g = tl.where(nan_row, float("nan"), g * grad_scale)
        h = tl.where(nan_row, float("nan"), h * grad_scale)
        if GRAD_S:
            tl.store(GS + base + cols, g.to(GS.dtype.element_ty), mask=msk)
        if GRAD_T:
            tl.store(GT + base + cols, h.to(GT.dtype.element_ty), mask=msk)
        # 4. the sums off each row's maximum, for _write_rest
        if REST_S:
            a, b, n, i = _rest_of_row(g, msk & (s == ms), msk, cols)
            rs, rs_abs, ns, i_s = rs + a, rs_abs + b, ns + n, i_s + i
        if REST_T:
            a, b, n, i = _rest_of_row(h, msk & (t == mt), msk, cols)
            rt, rt_abs, nt, i_t = rt + a, rt_abs + b, nt + n, i_t + i
    tl.debug_barrier()  # the loop's stores come first: the maximum is written again
    ln2 = 0.6931471805599453  # the maximum's probability is 1 / Za > 1/2 where log Za < log 2
    if REST_S:
        dominant = lza < ln2
        if HARD1:
            dominant = dominant | (lz1 < ln2)
        _write_rest(GS, base, rs, rs_abs, ns, i_s, dominant)
    if REST_T:
        _write_rest(GT, base, rt, rt_abs, nt, i_t, lzb < ln2)


@triton.jit
def _row_label(LABELS, row, V, ignore_index, HAS_LABELS: tl.constexpr, HARD: tl.constexpr):
    """(counted, bad, y): the row counts unless its label is ignore_index; bad: a hard term's
    label outside [0, V), read as y = 0 (no out-of-range read; the row becomes nan)."""
    counted = True
    bad = False
    y = 0
    if HAS_LABELS:
        label = tl.load(LABELS + row)
        counted = label != ignore_index
        if HARD:
            bad = (label < 0) | (label >= V)
            y = tl.where(bad, 0, label)
    return counted, bad, y


@triton.jit
def _row_stats(
    S,
    T_,
    base,
    V,
    inv_t,
    jsd,
    MODE: tl.constexpr,
    MIRROR: tl.constexpr,
    HARD1: tl.constexpr,
    SMOOTH: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Passes 1 and 2 and their logarithms: (ms, mt, lza, lzb, lzba, lz1, w, qs, kl, ks, kt,
    ss), with log Z1 = log Za at T = 1 (no HARD1), KL(p_T || p_S) = w / Zb - log(Zb / Za)
    and KL(p_S || p_T) = w / Za + log(Zb / Za) (MODE_REVERSE_KL) as kl."""
    ms, mt, za, zb, w, qs, z1, ss = _row_sums(
        S, T_, base, V, inv_t, MODE, HARD1, SMOOTH, ACC, BLOCK_V
    )
    lza = tl.log(za)
    lzb = tl.log(zb)
    lzba = tl.log(zb / za)  # one rounding of the ratio, not a difference of two logs
    lz1 = lza
    if HARD1:
        lz1 = tl.log(z1)
    ks = tl.zeros([], ACC)
    kt = tl.zeros([], ACC)
    if MODE == MODE_JSD:
        ks, kt = _jsd_sums(S, T_, base, V, inv_t, ms, mt, lza, lzb, lzba, jsd, MIRROR, ACC, BLOCK_V)
    kl = w / zb - lzba
    if MODE == MODE_REVERSE_KL:
        kl = w / za + lzba
    return ms, mt, lza, lzb, lzba, lz1, w, qs, kl, ks, kt, ss


@triton.jit
def _nan_row(bad, ms, mt, MODE: tl.constexpr):
    """A row without a defined loss: its label is out of range, or every logit of a side it
    reads is -inf (maximum -inf). Checking on the host would synchronise."""
    nan_row = bad | (ms == float("-inf"))
    if (MODE == MODE_KL) | (MODE == MODE_REVERSE_KL) | (MODE == MODE_JSD):
        nan_row = nan_row | (mt == float("-inf"))
    return nan_row


@triton.jit
def _zero_row(
    LOSS, GS, GT, row, base, V, GRAD_S: tl.constexpr, GRAD_T: tl.constexpr, BLOCK_V: tl.constexpr
):
    """An ignored row: loss 0 and gradient 0."""
    tl.store(LOSS + row, tl.zeros([], LOSS.dtype.element_ty))
    offs = tl.arange(0, BLOCK_V)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        if GRAD_S:
            tl.store(GS + base + cols, tl.zeros([BLOCK_V], GS.dtype.element_ty), mask=cols < V)
        if GRAD_T:
            tl.store(GT + base + cols, tl.zeros([BLOCK_V], GT.dtype.element_ty), mask=cols < V)


@triton.jit
def distillation_kernel(
    S,
    T_,
    LABELS,
    LOSS,
    GS,
    GT,
    V,
    inv_t,
    c,
    c_t,
    hw,
    beta,
    omb,
    log_b,
    log_1b,
    ls,
    grad_scale,
    ignore_index,
    MODE: tl.constexpr,
    MIRROR: tl.constexpr,
    HARD: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HARD1: tl.constexpr,
    SMOOTH: tl.constexpr,
    GRAD_S: tl.constexpr,
    GRAD_T: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One row of any op of the family. MODE: the soft term (MIRROR: JSD with beta > 1/2);
    HARD: the hard term, HARD1 with its own softmax at T = 1 (T != 1); SMOOTH: label
    smoothing; GRAD_S, GRAD_T: which gradients to write, those of grad_scale * (row loss)."""
    row = tl.program_id(0).to(tl.int64)
    base = row * V
    counted, bad, y = _row_label(LABELS, row, V, ignore_index, HAS_LABELS, HARD)
    jsd = (beta, omb, log_b, log_1b)
    if counted:
        # passes 1 and 2: the row's softmax statistics
        ms, mt, lza, lzb, lzba, lz1, w, qs, kl, ks, kt, ss = _row_stats(
            S, T_, base, V, inv_t, jsd, MODE, MIRROR, HARD1, SMOOTH, ACC, BLOCK_V
        )
        # the loss: soft_weight T^2 D + soft-target CE + hard_weight CE, nan on a nan row
        s_y = tl.load(S + base + y).to(ACC)
        loss = _row_loss(
            MODE, HARD, SMOOTH, lza, kl, w, qs, ks, kt, lz1, ms, s_y, ss, V, c_t, beta, omb, hw, ls
        )
        nan_row = _nan_row(bad, ms, mt, MODE)
        tl.store(LOSS + row, tl.where(nan_row, float("nan"), loss).to(LOSS.dtype.element_ty))
        # pass 3: the gradients
        if GRAD_S or GRAD_T:
            stats = (ms, mt, lza, lzb, lzba, lz1, qs, kl, ks, kt)
            _row_grads(
                S,
                T_,
                GS,
                GT,
                base,
                V,
                y,
                nan_row,
                stats,
                inv_t,
                c,
                jsd,
                hw,
                ls,
                grad_scale,
                MODE,
                MIRROR,
                HARD,
                HARD1,
                GRAD_S,
                GRAD_T,
                ACC,
                BLOCK_V,
            )
    else:  # an ignored row drops out of every term
        _zero_row(LOSS, GS, GT, row, base, V, GRAD_S, GRAD_T, BLOCK_V)


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
        y = tl.where(x == 0, 0.0, g * x)
        tl.store(OUT + row * V + cols, y.to(OUT.dtype.element_ty), mask=msk)


# ----------------------------------------------------------------------------- launchers
def _block_v(V: int, on_cpu: bool) -> int:
    cap = 1 << 16 if on_cpu else 4096  # the interpreter prefers few, large steps
    return min(triton.next_power_of_2(V), cap)


def _mode(teacher, target_probs: bool, beta: float) -> int:
    if teacher is None:
        mode = MODE_NONE
    elif target_probs:
        mode = MODE_TARGET_PROBS
    else:
        mode = MODE_KL if beta == 0 else MODE_REVERSE_KL if beta == 1 else MODE_JSD
    return mode.value


def _grad_buffer(s: torch.Tensor, wanted: bool) -> torch.Tensor:
    """A new gradient tensor shaped like s, or an empty one where it is not wanted."""
    return torch.empty(s.shape, dtype=s.dtype, device=s.device) if wanted else s.new_empty((0,))


def distillation_rows(
    logits,
    teacher,
    labels,
    *,
    temperature=1.0,
    soft_weight=0.0,
    hard_weight=0.0,
    beta=0.0,
    ignore_index=-100,
    label_smoothing=0.0,
    target_probs=False,
    grad_logits=False,
    grad_teacher=False,
    grad_scale=1.0,
    out=None,
):
    """(per-row loss, grad w.r.t. logits or an empty tensor, grad w.r.t. teacher or an empty
    tensor). teacher: teacher logits (soft term), target probabilities (target_probs=True),
    or None (cross entropy). The gradients are those of grad_scale * (row loss). out: the
    three outputs, contiguous buffers of the caller's (the fused linear ops reuse theirs
    across chunks of rows), else new tensors."""
    s = logits.contiguous()
    t = teacher.contiguous() if teacher is not None else None
    acc = torch.float64 if s.dtype == torch.float64 else torch.float32
    if out is not None:
        loss, gs, gt = out
    else:
        loss = torch.empty(s.shape[:-1], dtype=acc, device=s.device)
        gs, gt = _grad_buffer(s, grad_logits), _grad_buffer(s, grad_teacher)
    R, V = rows_of(s)
    if R == 0:
        return loss, gs, gt
    hard = labels is not None and hard_weight != 0
    b = float(beta)
    mixed = 0 < b < 1  # MODE_JSD: log beta, log(1 - beta) are finite
    T = float(temperature)
    on_cpu = s.device.type == "cpu"
    wrap_triton(distillation_kernel)[(R,)](
        s,
        t if t is not None else s,
        labels.contiguous() if labels is not None else loss,
        loss,
        gs if grad_logits else loss,
        gt if grad_teacher else loss,
        V,
        *map(
            f32_arg,
            (
                1.0 / T,
                soft_weight * T,
                soft_weight * T * T,
                hard_weight,
                b,
                1.0 - b,
                math.log(b) if mixed else 0.0,
                math.log1p(-b) if mixed else 0.0,
                label_smoothing,
                grad_scale,
            ),
        ),
        int(ignore_index),
        MODE=_mode(t, target_probs, b),
        MIRROR=b > 0.5,
        HARD=hard,
        HAS_LABELS=labels is not None,
        HARD1=hard and T != 1.0,
        SMOOTH=hard and label_smoothing != 0,
        GRAD_S=bool(grad_logits),
        GRAD_T=bool(grad_teacher),
        ACC=tl_acc_dtype(s.dtype),
        BLOCK_V=_block_v(V, on_cpu),
        num_warps=1 if on_cpu else 8,
    )
    return loss, gs, gt


def scale_grad(
    grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """grad[r] * x[r, :] into a new tensor, or into `out` (contiguous, may be x itself)."""
    x = x.contiguous()
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    R, V = rows_of(x)
    if R:
        wrap_triton(scale_grad_kernel)[(R,)](
            grad.contiguous(),
            x,
            out,
            V,
            ACC=tl_acc_dtype(x.dtype),
            BLOCK_V=_block_v(V, x.device.type == "cpu"),
        )
    return out
