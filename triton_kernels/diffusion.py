"""Triton kernels of the diffusion family, the same three as the C++ kernels, with the
coefficient formulas of csrc/common/diffusion_args.h:

    blend_kernel           out = cx x + cy y                add_noise, get_velocity
    target_error_kernel    (m - (tx x0 + tn noise))^2       diffusion_loss (and its backward)
    sampler_step_kernel    x0, its clip, the step           ddpm_step, ddim_step (and backward)

Tensors are [N, D] (N samples). Program p handles elements [c BLOCK, (c+1) BLOCK) of
sample n = p // C (C = cdiv(D, BLOCK)): it reads timesteps[n], indexes the alphas_cumprod
table on the device, computes the sample's coefficients as scalars once, then streams the
block. Per-sample sums are written per program and added in a fixed order by the
launcher (deterministic). Offsets are int64. Timesteps are clamped into the table (no
host sync; the public API range-checks CPU timesteps).
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from pykernels._precision import acc_dtype

from ._common import sample_blocks

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
NO_CLIP, CLIP, THRESHOLD = 0, 1, 2


@triton.jit
def _alpha(TAB, T, t):
    return tl.load(TAB + tl.minimum(tl.maximum(t, 0), T - 1))


@triton.jit
def _block(D, C, BLOCK: tl.constexpr):
    """(n, offsets of this program's block in the flat tensor, mask)."""
    pid = tl.program_id(0)
    n = pid // C
    cols = (pid % C) * BLOCK + tl.arange(0, BLOCK)
    return n, n.to(tl.int64) * D + cols, cols < D


# ----------------------------------------------------------------------------- coefficients
@triton.jit
def _add_noise_coefs(a):
    """sqrt(a) x0 + sqrt(1 - a) noise."""
    return tl.sqrt(a), tl.sqrt(1.0 - a)


@triton.jit
def _get_velocity_coefs(a):
    """sqrt(a) noise - sqrt(1 - a) x0."""
    return -tl.sqrt(1.0 - a), tl.sqrt(a)


@triton.jit
def _blend_coefs(COEFS: tl.constexpr, a):
    if COEFS == "add_noise":
        cx, cy = _add_noise_coefs(a)
    else:
        cx, cy = _get_velocity_coefs(a)
    return cx, cy


@triton.jit
def _diffusion_loss_coefs(PRED: tl.constexpr, a):
    """The target = tx x0 + tn noise: noise, x0 or the velocity."""
    if PRED == 0:
        tx = a * 0.0
        tn = a * 0.0 + 1.0
    elif PRED == 1:
        tx = a * 0.0 + 1.0
        tn = a * 0.0
    else:
        tx, tn = _get_velocity_coefs(a)
    return tx, tn


@triton.jit
def _x0_coefs(PRED: tl.constexpr, a):
    """x0 = xs s + xm m per prediction type."""
    sa = tl.sqrt(a)
    sb = tl.sqrt(1.0 - a)
    if PRED == 0:
        xs = 1.0 / sa
        xm = -sb / sa
    elif PRED == 1:
        xs = sa * 0.0
        xm = sa * 0.0 + 1.0
    else:
        xs = sa
        xm = -sb
    return xs, xm


@triton.jit
def _ddpm_step_coefs(a, ap, t):
    """(ox, os, om, on, kox, kos): ox = sqrt(a') beta / (1 - a), os = sqrt(a / a') (1 - a') /
    (1 - a), beta = (a' - a) / a', on = [t > 0] sqrt(max((1 - a') / (1 - a) beta, 1e-20))."""
    beta_t = (ap - a) / ap
    ox = tl.sqrt(ap) * beta_t / (1.0 - a)
    os = tl.sqrt(a / ap) * (1.0 - ap) / (1.0 - a)
    var = tl.maximum((1.0 - ap) / (1.0 - a) * beta_t, 1e-20)
    on = tl.where(t > 0, tl.sqrt(var), a * 0.0)
    return ox, os, a * 0.0, on, ox, os


@triton.jit
def _ddim_step_coefs(PRED: tl.constexpr, a, ap, eta):
    """(ox, os, om, on, kox, kos): out = sqrt(a') x0c + dir eps + sd z, with the closed-form
    dir = sqrt(1 - a' - sd^2) and eps per prediction type (diffusion_args.h's ddim_step_coefs)."""
    sa = tl.sqrt(a)
    sb = tl.sqrt(1.0 - a)
    var = (1.0 - ap) / (1.0 - a) * ((ap - a) / ap)
    sd = tl.where(eta > 0, eta * tl.sqrt(var), 0.0)  # var < 0 when a' < a: eta = 0 takes no sqrt
    e2 = eta * eta
    # eta = 0: no 0 * inf at a' = 0
    noisy = tl.where(e2 > 0, e2 * (a / ap) * ((1.0 - ap) / (1.0 - a)), 0.0)
    dir2 = (1.0 - ap) * ((1.0 - e2) + noisy)
    dir2 = tl.where(sd != sd, sd, dir2)
    dr = tl.sqrt(tl.where(dir2 < 0.0, 0.0, dir2))  # not tl.maximum: NaN stays NaN
    ox = tl.sqrt(ap)
    if PRED == 0:
        os = a * 0.0
        om = dr
    elif PRED == 1:
        os = dr / sb
        om = -dr * sa / sb
    else:
        os = dr * sb
        om = dr * sa
    return ox, os, om, sd, ox - dr * sa / sb, dr / sb


@triton.jit
def _step_coefs(TAB, T, t, prev, eta, final_alpha, DDIM: tl.constexpr, PRED: tl.constexpr):
    """(xs, xm, ox, os, om, on, kox, kos) of a sample: x0 = xs s + xm m; out = ox x0c +
    os s + om m + on z, or with use_clipped_model_output where the clip changed x0,
    out = kox x0c + kos s + on z (see _elem_coefs). a' = 1 (DDPM) or final_alpha (DDIM)
    for prev < 0."""
    a = _alpha(TAB, T, t)
    xs, xm = _x0_coefs(PRED, a)
    if DDIM:
        ap = tl.where(prev >= 0, _alpha(TAB, T, prev), a * 0.0 + final_alpha)
        ox, os, om, on, kox, kos = _ddim_step_coefs(PRED, a, ap, eta)
    else:
        ap = tl.where(prev >= 0, _alpha(TAB, T, prev), a * 0.0 + 1.0)
        ox, os, om, on, kox, kos = _ddpm_step_coefs(a, ap, t)
    return xs, xm, ox, os, om, on, kox, kos


@triton.jit
def _elem_coefs(x0, lim, ox, os, om, kox, kos, CLIP_MODE: tl.constexpr, RECLIP: tl.constexpr):
    """(ox, os, om) of each element. With use_clipped_model_output (RECLIP) the eps is
    (s - sqrt(a) x0c) / sqrt(1 - a) where the clip changed x0; where it did not (no clip,
    strictly inside a scalar range) that is the model's own eps, formed without the x0c
    form's 1/sqrt(1 - a)-fold cancellation. The threshold has a gradient of its own:
    always the x0c form."""
    z = tl.zeros_like(x0)  # per-element shape (not x0 * 0: an inf x0 would make it NaN)
    if RECLIP:
        if CLIP_MODE == 1:
            own = (x0 > -lim) & (x0 < lim)
            return (
                tl.where(own, ox, kox) + z,
                tl.where(own, os, kos) + z,
                tl.where(own, om, 0.0) + z,
            )
        elif CLIP_MODE == 2:
            return kox + z, kos + z, z
    return ox + z, os + z, om + z


@triton.jit
def _clip(x0, lim, MODE: tl.constexpr):
    if MODE == 0:
        return x0
    # NaN-propagating, as torch.clamp (the default min/max would turn a NaN into a bound)
    c = tl.minimum(
        tl.maximum(x0, -lim, propagate_nan=tl.PropagateNan.ALL),
        lim,
        propagate_nan=tl.PropagateNan.ALL,
    )
    if MODE == 2:
        c = c / lim
    return c


# ----------------------------------------------------------------------------- blend
@triton.jit
def blend_kernel(X, Y, TS, TAB, OUT, T, D, C, COEFS: tl.constexpr, BLOCK: tl.constexpr):
    """OUT = cx X + cy Y, (cx, cy) = the COEFS op's coefficients of a = TAB[TS[n]]."""
    n, offs, mask = _block(D, C, BLOCK)
    a = _alpha(TAB, T, tl.load(TS + n))
    cx, cy = _blend_coefs(COEFS, a)
    x = tl.load(X + offs, mask=mask, other=0.0).to(a.dtype)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(a.dtype)
    tl.store(OUT + offs, (cx * x + cy * y).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def blend_backward_kernel(G, TS, TAB, GX, GY, T, D, C, COEFS: tl.constexpr, BLOCK: tl.constexpr):
    """GX = cx G, GY = cy G."""
    n, offs, mask = _block(D, C, BLOCK)
    a = _alpha(TAB, T, tl.load(TS + n))
    cx, cy = _blend_coefs(COEFS, a)
    g = tl.load(G + offs, mask=mask, other=0.0).to(a.dtype)
    tl.store(GX + offs, (cx * g).to(GX.dtype.element_ty), mask=mask)
    tl.store(GY + offs, (cy * g).to(GY.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- diffusion_loss
@triton.jit
def _target_diff(M, X0, NZ, TS, TAB, T, n, offs, mask, PRED: tl.constexpr):
    """(d = m - (tx x0 + tn noise), tx, tn) of this block."""
    a = _alpha(TAB, T, tl.load(TS + n))
    tx, tn = _diffusion_loss_coefs(PRED, a)
    m = tl.load(M + offs, mask=mask, other=0.0).to(a.dtype)
    x0 = tl.load(X0 + offs, mask=mask, other=0.0).to(a.dtype)
    z = tl.load(NZ + offs, mask=mask, other=0.0).to(a.dtype)
    return m - (tx * x0 + tn * z), tx, tn


@triton.jit
def target_error_kernel(
    M,
    X0,
    NZ,
    TS,
    TAB,
    OUT,
    PART,
    T,
    D,
    C,
    PRED: tl.constexpr,
    ELEMENTWISE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """OUT = d^2 (ELEMENTWISE); PART[program] = the block's sum of d^2."""
    n, offs, mask = _block(D, C, BLOCK)
    d, tx, tn = _target_diff(M, X0, NZ, TS, TAB, T, n, offs, mask, PRED)
    sq = d * d
    if ELEMENTWISE:
        tl.store(OUT + offs, sq, mask=mask)
    tl.store(PART + tl.program_id(0), tl.sum(sq, axis=0))


@triton.jit
def target_error_backward_kernel(
    G,
    M,
    X0,
    NZ,
    TS,
    TAB,
    GM,
    GX,
    GN,
    T,
    D,
    C,
    g_scale,
    PRED: tl.constexpr,
    ELEMENTWISE: tl.constexpr,
    GRAD_M: tl.constexpr,
    GRAD_X: tl.constexpr,
    GRAD_N: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """h = 2 g d (g per element, or the scalar G times g_scale): GM = h, GX = -tx h, GN = -tn h."""
    n, offs, mask = _block(D, C, BLOCK)
    d, tx, tn = _target_diff(M, X0, NZ, TS, TAB, T, n, offs, mask, PRED)
    if ELEMENTWISE:
        g = tl.load(G + offs, mask=mask, other=0.0)
    else:
        g = tl.load(G) * g_scale
    h = 2.0 * g * d
    if GRAD_M:
        tl.store(GM + offs, h.to(GM.dtype.element_ty), mask=mask)
    if GRAD_X:
        tl.store(GX + offs, (-tx * h).to(GX.dtype.element_ty), mask=mask)
    if GRAD_N:
        tl.store(GN + offs, (-tn * h).to(GN.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- sampler_step
@triton.jit
def _step_inputs(
    M,
    S,
    TS,
    PS,
    TAB,
    Q,
    T,
    n,
    offs,
    mask,
    clip_range,
    eta,
    final_alpha,
    DDIM: tl.constexpr,
    PRED: tl.constexpr,
    CLIP_MODE: tl.constexpr,
    USE_CLIPPED: tl.constexpr,
):
    """What a step's forward and backward both start from, for sample n's elements offs:
    (xs, xm, ox, os, om, on, lim, s, m, x0), the coefficients per element (_elem_coefs)."""
    xs, xm, ox, os, om, on, kox, kos = _step_coefs(
        TAB, T, tl.load(TS + n), tl.load(PS + n), eta, final_alpha, DDIM, PRED
    )
    if CLIP_MODE == 2:
        lim = tl.load(Q + n)
    else:
        lim = xs * 0.0 + clip_range
    s = tl.load(S + offs, mask=mask, other=0.0).to(xs.dtype)
    m = tl.load(M + offs, mask=mask, other=0.0).to(xs.dtype)
    x0 = xs * s + xm * m
    ox, os, om = _elem_coefs(x0, lim, ox, os, om, kox, kos, CLIP_MODE, USE_CLIPPED)
    return xs, xm, ox, os, om, on, lim, s, m, x0


@triton.jit
def sampler_step_kernel(
    M,
    S,
    NZ,
    TS,
    PS,
    TAB,
    Q,
    OUT,
    X0C,
    T,
    D,
    C,
    clip_range,
    eta,
    final_alpha,
    DDIM: tl.constexpr,
    PRED: tl.constexpr,
    CLIP_MODE: tl.constexpr,
    USE_CLIPPED: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """X0C = clip(x0), OUT = ox X0C + os S + om M (+ on NZ)."""
    n, offs, mask = _block(D, C, BLOCK)
    xs, xm, ox, os, om, on, lim, s, m, x0 = _step_inputs(
        M,
        S,
        TS,
        PS,
        TAB,
        Q,
        T,
        n,
        offs,
        mask,
        clip_range,
        eta,
        final_alpha,
        DDIM,
        PRED,
        CLIP_MODE,
        USE_CLIPPED,
    )
    c = _clip(x0, lim, CLIP_MODE)
    # A term whose coefficient is 0 is absent from the formula: skip it, so an inf there
    # (clipped away in x0) does not come back as 0 * inf = nan.
    r = ox * c + tl.where(os != 0.0, os * s, 0.0) + tl.where(om != 0.0, om * m, 0.0)
    if HAS_NOISE:
        # The noise is not read where its coefficient is 0 (DDPM at t = 0, DDIM at eta = 0).
        z = tl.load(
            NZ + offs, mask=mask & (tl.zeros_like(offs) + (on != 0.0).to(tl.int32) != 0), other=0.0
        )
        r = r + on * z.to(xs.dtype)
    tl.store(OUT + offs, r.to(OUT.dtype.element_ty), mask=mask)
    tl.store(X0C + offs, c.to(X0C.dtype.element_ty), mask=mask)


@triton.jit
def sampler_step_backward_kernel(
    GP,
    GX,
    M,
    S,
    TS,
    PS,
    TAB,
    Q,
    GM,
    GS,
    PART,
    T,
    D,
    C,
    clip_range,
    eta,
    final_alpha,
    DDIM: tl.constexpr,
    PRED: tl.constexpr,
    CLIP_MODE: tl.constexpr,
    USE_CLIPPED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """GM = om gp + xm g_x0, GS = os gp + xs g_x0, g_x0 = the gradient through the clip of
    gc = ox gp + gx; PART[program] = the block's terms of the threshold's gradient
    (diffusion_args.h's step_grad_element)."""
    n, offs, mask = _block(D, C, BLOCK)
    xs, xm, ox, os, om, on, lim, s, m, x0 = _step_inputs(
        M,
        S,
        TS,
        PS,
        TAB,
        Q,
        T,
        n,
        offs,
        mask,
        clip_range,
        eta,
        final_alpha,
        DDIM,
        PRED,
        CLIP_MODE,
        USE_CLIPPED,
    )
    gp = tl.load(GP + offs, mask=mask, other=0.0).to(xs.dtype)
    gc = ox * gp + tl.load(GX + offs, mask=mask, other=0.0).to(xs.dtype)
    g0 = gc
    if CLIP_MODE != 0:
        # torch.clamp's gradient: strictly inside for scalar bounds (clip); a tensor
        # bound (threshold) shares it half-half at a tie.
        g0 = tl.where((x0 > -lim) & (x0 < lim), gc, 0.0)
        if CLIP_MODE == 2:
            tie = (x0 == lim).to(xs.dtype) * 0.5
            ntie = (x0 == -lim).to(xs.dtype) * 0.5
            g0 = (g0 + gc * (tie + ntie)) / lim
            above = (x0 > lim).to(xs.dtype) - (x0 < -lim).to(xs.dtype) + tie - ntie
            tl.store(
                PART + tl.program_id(0), tl.sum(gc * (above - _clip(x0, lim, 2)), axis=0) / lim
            )
    tl.store(GM + offs, (om * gp + xm * g0).to(GM.dtype.element_ty), mask=mask)
    tl.store(GS + offs, (os * gp + xs * g0).to(GS.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers
def _schedule(ts, table, dtype):
    """int64 timesteps and the table in the accumulation dtype of `dtype`."""
    return ts.to(torch.int64).contiguous(), table.to(acc_dtype(dtype)).contiguous()


def blend(x, y, ts, table, coefs: str):
    """add_noise / get_velocity (coefs: which), x's dtype."""
    x, y = x.contiguous(), y.contiguous()
    ts, table = _schedule(ts, table, x.dtype)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    N, D, C, BLOCK = sample_blocks(x)
    if N * C:
        wrap_triton(blend_kernel)[(N * C,)](
            x, y, ts, table, out, table.shape[0], D, C, COEFS=coefs, BLOCK=BLOCK
        )
    return out


def blend_backward(grad, ts, table, coefs: str):
    """(grad x, grad y) in grad's dtype."""
    grad = grad.contiguous()
    ts, table = _schedule(ts, table, grad.dtype)
    gx = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
    gy = torch.empty_like(gx)
    N, D, C, BLOCK = sample_blocks(grad)
    if N * C:
        wrap_triton(blend_backward_kernel)[(N * C,)](
            grad, ts, table, gx, gy, table.shape[0], D, C, COEFS=coefs, BLOCK=BLOCK
        )
    return gx, gy


def diffusion_loss(m, x0, noise, ts, table, prediction_type: str, reduction: str):
    m, x0, noise = m.contiguous(), x0.contiguous(), noise.contiguous()
    ts, table = _schedule(ts, table, m.dtype)
    acc = acc_dtype(m.dtype)
    N, D, C, BLOCK = sample_blocks(m)
    elementwise = reduction == "none"
    out = torch.empty(m.shape, dtype=acc, device=m.device) if elementwise else None
    part = torch.zeros((N, C), dtype=acc, device=m.device)
    if N * C:
        wrap_triton(target_error_kernel)[(N * C,)](
            m,
            x0,
            noise,
            ts,
            table,
            out if elementwise else part,
            part,
            table.shape[0],
            D,
            C,
            PRED=PREDICTION_TYPES.index(prediction_type),
            ELEMENTWISE=elementwise,
            BLOCK=BLOCK,
        )
    if elementwise:
        return out
    total = part.sum()
    return total / m.numel() if reduction == "mean" else total


def diffusion_loss_backward(
    grad, m, x0, noise, ts, table, prediction_type: str, reduction: str, output_mask
):
    """(grad model_output, grad x0, grad noise); an empty tensor where output_mask is False."""
    m, x0, noise = m.contiguous(), x0.contiguous(), noise.contiguous()
    ts, table = _schedule(ts, table, m.dtype)
    grad = grad.to(acc_dtype(m.dtype)).contiguous()
    gm, gx, gn = (
        torch.empty(m.shape if want else (0,), dtype=m.dtype, device=m.device)
        for want in output_mask
    )
    N, D, C, BLOCK = sample_blocks(m)
    scale = 1.0 / m.numel() if reduction == "mean" and m.numel() else 1.0
    if N * C:
        wrap_triton(target_error_backward_kernel)[(N * C,)](
            grad,
            m,
            x0,
            noise,
            ts,
            table,
            gm,
            gx,
            gn,
            table.shape[0],
            D,
            C,
            scale,
            PRED=PREDICTION_TYPES.index(prediction_type),
            ELEMENTWISE=reduction == "none",
            GRAD_M=bool(output_mask[0]),
            GRAD_X=bool(output_mask[1]),
            GRAD_N=bool(output_mask[2]),
            BLOCK=BLOCK,
        )
    return gm, gx, gn


@dataclasses.dataclass
class StepParams:
    """A DDPM or DDIM step's parameters as the kernels take them."""

    ddim: bool
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float
    eta: float = 0.0
    use_clipped_model_output: bool = False
    final_alpha_cumprod: float = 1.0

    def scalars(self):
        return float(self.clip_sample_range), float(self.eta), float(self.final_alpha_cumprod)

    def constexprs(self, threshold):
        clip = THRESHOLD if threshold is not None else (CLIP if self.clip_sample else NO_CLIP)
        return dict(
            DDIM=self.ddim,
            PRED=PREDICTION_TYPES.index(self.prediction_type),
            CLIP_MODE=clip,
            USE_CLIPPED=bool(self.use_clipped_model_output) and self.ddim,
        )


def sampler_step(m, ts, prev, s, table, noise, threshold, p: StepParams):
    """(prev_sample, pred_original_sample), the sample's dtype."""
    m, s = m.contiguous(), s.contiguous()
    ts, table = _schedule(ts, table, s.dtype)
    prev = prev.to(torch.int64).contiguous()
    out = torch.empty(s.shape, dtype=s.dtype, device=s.device)
    x0c = torch.empty_like(out)
    N, D, C, BLOCK = sample_blocks(s)
    if N * C:
        nz = s if noise is None else noise.contiguous()
        q = table if threshold is None else threshold.contiguous()
        wrap_triton(sampler_step_kernel)[(N * C,)](
            m,
            s,
            nz,
            ts,
            prev,
            table,
            q,
            out,
            x0c,
            table.shape[0],
            D,
            C,
            *p.scalars(),
            HAS_NOISE=noise is not None,
            BLOCK=BLOCK,
            **p.constexprs(threshold),
        )
    return out, x0c


def sampler_step_backward(gp, gx, m, ts, prev, s, table, threshold, p: StepParams):
    """(grad model_output, grad sample, grad threshold [N], or [0] without a threshold)."""
    m, s, gp, gx = m.contiguous(), s.contiguous(), gp.contiguous(), gx.contiguous()
    ts, table = _schedule(ts, table, s.dtype)
    prev = prev.to(torch.int64).contiguous()
    gm = torch.empty(s.shape, dtype=s.dtype, device=s.device)
    gs = torch.empty_like(gm)
    N, D, C, BLOCK = sample_blocks(s)
    acc = acc_dtype(s.dtype)
    part = torch.zeros((N if threshold is not None else 0, C), dtype=acc, device=s.device)
    if N * C:
        q = table if threshold is None else threshold.contiguous()
        wrap_triton(sampler_step_backward_kernel)[(N * C,)](
            gp,
            gx,
            m,
            s,
            ts,
            prev,
            table,
            q,
            gm,
            gs,
            part if threshold is not None else gm,
            table.shape[0],
            D,
            C,
            *p.scalars(),
            BLOCK=BLOCK,
            **p.constexprs(threshold),
        )
    gq = part.sum(1) if threshold is not None else torch.empty((0,), dtype=acc, device=s.device)
    return gm, gs, gq
