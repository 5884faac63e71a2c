"""Triton kernels of the diffusion family: add_noise / velocity / predicted x0 ("mix"),
the training loss and the DDPM / DDIM sampler steps, forward and backward.

Tensors are [N, D] (N samples). Program p handles elements [c BLOCK, (c+1) BLOCK) of
sample n = p // C (C = cdiv(D, BLOCK)): it reads timesteps[n], indexes the alphas_cumprod
table on the device, computes the sample's coefficients as scalars once, then streams
the block. Per-sample sums are written per program and added in a fixed order by the
launcher (deterministic). Offsets are int64. Timesteps are clamped into the table (no
host sync; the public API range-checks CPU timesteps).

The coefficient formulas are those of csrc/common/diffusion_args.h.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from pykernels._precision import acc_dtype

KIND_ADD_NOISE, KIND_VELOCITY, KIND_X0 = 0, 1, 2  # KIND_X0 + prediction (0, 1, 2)
DDPM, DDIM = 0, 1
NO_CLIP, CLIP, THRESHOLD = 0, 1, 2


@triton.jit
def _alpha(TAB, T, t):
    return tl.load(TAB + tl.minimum(tl.maximum(t, 0), T - 1))


@triton.jit
def _mix_coefs(KIND: tl.constexpr, a):
    sa = tl.sqrt(a)
    sb = tl.sqrt(1.0 - a)
    if KIND == 0:
        cx = sa
        cy = sb
    elif KIND == 1:
        cx = -sb
        cy = sa
    elif KIND == 2:
        cx = 1.0 / sa
        cy = -sb / sa
    elif KIND == 3:
        cx = sa * 0.0
        cy = sa * 0.0 + 1.0
    else:
        cx = sa
        cy = -sb
    return cx, cy


@triton.jit
def _target_coefs(PRED: tl.constexpr, a):
    if PRED == 0:
        tx = a * 0.0
        tn = a * 0.0 + 1.0
    elif PRED == 1:
        tx = a * 0.0 + 1.0
        tn = a * 0.0
    else:
        tx, tn = _mix_coefs(1, a)
    return tx, tn


@triton.jit
def _step_coefs(TAB, T, t, prev, eta, final_alpha, KIND: tl.constexpr, PRED: tl.constexpr):
    """(xs, xm, ox, os, om, on, kox, kos): x0 = xs s + xm m; out = ox x0c + os s + om m + on z,
    or with use_clipped_model_output where the clip changed x0, out = kox x0c + kos s + on z
    (see _elem_coefs)."""
    a = _alpha(TAB, T, t)
    if KIND == 0:
        ap = tl.where(prev >= 0, _alpha(TAB, T, prev), a * 0.0 + 1.0)
    else:
        ap = tl.where(prev >= 0, _alpha(TAB, T, prev), a * 0.0 + final_alpha)
    sa = tl.sqrt(a)
    sb = tl.sqrt(1.0 - a)
    xs, xm = _mix_coefs(2 + PRED, a)
    om = a * 0.0
    if KIND == 0:
        beta_t = (ap - a) / ap
        ox = tl.sqrt(ap) * beta_t / (1.0 - a)
        os = tl.sqrt(a / ap) * (1.0 - ap) / (1.0 - a)
        var = tl.maximum((1.0 - ap) / (1.0 - a) * beta_t, 1e-20)
        on = tl.where(t > 0, tl.sqrt(var), a * 0.0)
        kox, kos = ox, os
    else:
        var = (1.0 - ap) / (1.0 - a) * ((ap - a) / ap)
        # var < 0 when ap < a: eta = 0 needs no sd; eta > 0 gives NaN (see diffusion_args.h)
        sd = tl.where(eta > 0, eta * tl.sqrt(var), 0.0)
        # 1 - ap - sd^2 in closed form (no cancellation where sd^2 ~ 1 - ap; see diffusion_args.h)
        e2 = eta * eta
        noisy = tl.where(e2 > 0, e2 * (a / ap) * ((1.0 - ap) / (1.0 - a)), 0.0)  # eta = 0: no 0 * inf at ap = 0
        dir2 = (1.0 - ap) * ((1.0 - e2) + noisy)
        dir2 = tl.where(sd != sd, sd, dir2)
        dr = tl.sqrt(tl.where(dir2 < 0.0, 0.0, dir2))  # not tl.maximum: NaN stays NaN
        ox = tl.sqrt(ap)
        on = sd
        kox = ox - dr * sa / sb  # eps = (s - sqrt(a) x0c) / sqrt(1 - a)
        kos = dr / sb
        if PRED == 0:
            os = a * 0.0
            om = dr
        elif PRED == 1:
            os = dr / sb
            om = -dr * sa / sb
        else:
            os = dr * sb
            om = dr * sa
    return xs, xm, ox, os, om, on, kox, kos


@triton.jit
def _elem_coefs(x0, lim, ox, os, om, kox, kos, CLIP_MODE: tl.constexpr, RECLIP: tl.constexpr):
    """(ox, os, om) of each element. With use_clipped_model_output (RECLIP) the eps is
    (s - sqrt(a) x0c) / sqrt(1 - a) where the clip changed x0; where it did not (no clip,
    strictly inside a scalar range) that is the model's own eps, formed without the x0c
    form's 1/sqrt(1 - a)-fold cancellation (see diffusion_args.h). The threshold has a
    gradient of its own: always the x0c form."""
    z = tl.zeros_like(x0)  # per-element shape (not x0 * 0: an inf x0 would make it NaN)
    if RECLIP:
        if CLIP_MODE == 1:
            own = (x0 > -lim) & (x0 < lim)
            return tl.where(own, ox, kox) + z, tl.where(own, os, kos) + z, tl.where(own, om, 0.0) + z
        elif CLIP_MODE == 2:
            return kox + z, kos + z, z
    return ox + z, os + z, om + z


@triton.jit
def _block(D, C, BLOCK: tl.constexpr):
    """(n, offsets of this program's block in the flat tensor, mask)."""
    pid = tl.program_id(0)
    n = pid // C
    cols = (pid % C) * BLOCK + tl.arange(0, BLOCK)
    return n, n.to(tl.int64) * D + cols, cols < D


@triton.jit
def _clip(x0, lim, MODE: tl.constexpr):
    if MODE == 0:
        return x0
    # NaN-propagating, as torch.clamp (the default min/max would turn a NaN into a bound)
    c = tl.minimum(tl.maximum(x0, -lim, propagate_nan=tl.PropagateNan.ALL), lim, propagate_nan=tl.PropagateNan.ALL)
    if MODE == 2:
        c = c / lim
    return c


# ----------------------------------------------------------------------------- kernels
@triton.jit
def mix_kernel(X, Y, TS, TAB, OUT, T, D, C, KIND: tl.constexpr, BLOCK: tl.constexpr):
    n, offs, mask = _block(D, C, BLOCK)
    a = _alpha(TAB, T, tl.load(TS + n))
    cx, cy = _mix_coefs(KIND, a)
    x = tl.load(X + offs, mask=mask, other=0.0).to(a.dtype)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(a.dtype)
    tl.store(OUT + offs, (cx * x + cy * y).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def mix_bwd_kernel(G, TS, TAB, GX, GY, T, D, C, KIND: tl.constexpr, BLOCK: tl.constexpr):
    n, offs, mask = _block(D, C, BLOCK)
    a = _alpha(TAB, T, tl.load(TS + n))
    cx, cy = _mix_coefs(KIND, a)
    g = tl.load(G + offs, mask=mask, other=0.0).to(a.dtype)
    tl.store(GX + offs, (cx * g).to(GX.dtype.element_ty), mask=mask)
    tl.store(GY + offs, (cy * g).to(GY.dtype.element_ty), mask=mask)


@triton.jit
def loss_kernel(M, X0, NZ, TS, TAB, OUT, PART, T, D, C, PRED: tl.constexpr, ELEMENTWISE: tl.constexpr,
                BLOCK: tl.constexpr):
    n, offs, mask = _block(D, C, BLOCK)
    a = _alpha(TAB, T, tl.load(TS + n))
    tx, tn = _target_coefs(PRED, a)
    m = tl.load(M + offs, mask=mask, other=0.0).to(a.dtype)
    x0 = tl.load(X0 + offs, mask=mask, other=0.0).to(a.dtype)
    z = tl.load(NZ + offs, mask=mask, other=0.0).to(a.dtype)
    d = m - (tx * x0 + tn * z)
    sq = d * d
    if ELEMENTWISE:
        tl.store(OUT + offs, sq, mask=mask)
    tl.store(PART + tl.program_id(0), tl.sum(sq, axis=0))


@triton.jit
def loss_bwd_kernel(G, M, X0, NZ, TS, TAB, GM, GX, GN, T, D, C, PRED: tl.constexpr,
                    ELEMENTWISE: tl.constexpr, GRAD_M: tl.constexpr, GRAD_X: tl.constexpr,
                    GRAD_N: tl.constexpr, BLOCK: tl.constexpr):
    n, offs, mask = _block(D, C, BLOCK)
    a = _alpha(TAB, T, tl.load(TS + n))
    tx, tn = _target_coefs(PRED, a)
    if ELEMENTWISE:
        g = tl.load(G + offs, mask=mask, other=0.0)
    else:
        g = tl.load(G + n)
    m = tl.load(M + offs, mask=mask, other=0.0).to(a.dtype)
    x0 = tl.load(X0 + offs, mask=mask, other=0.0).to(a.dtype)
    z = tl.load(NZ + offs, mask=mask, other=0.0).to(a.dtype)
    h = 2.0 * g * (m - (tx * x0 + tn * z))
    if GRAD_M:
        tl.store(GM + offs, h.to(GM.dtype.element_ty), mask=mask)
    if GRAD_X:
        tl.store(GX + offs, (-tx * h).to(GX.dtype.element_ty), mask=mask)
    if GRAD_N:
        tl.store(GN + offs, (-tn * h).to(GN.dtype.element_ty), mask=mask)


@triton.jit
def _step_inputs(M, S, TS, PS, TAB, Q, T, n, offs, mask, clip_range, eta, final_alpha, KIND: tl.constexpr,
                 PRED: tl.constexpr, CLIP_MODE: tl.constexpr, USE_CLIPPED: tl.constexpr):
    """What a step's forward and backward both start from, for sample n's elements offs:
    (xs, xm, ox, os, om, on, lim, s, m, x0), the coefficients per element (_elem_coefs)."""
    xs, xm, ox, os, om, on, kox, kos = _step_coefs(TAB, T, tl.load(TS + n), tl.load(PS + n), eta, final_alpha,
                                                   KIND, PRED)
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
def step_kernel(M, S, NZ, TS, PS, TAB, Q, OUT, X0C, T, D, C, clip_range, eta, final_alpha,
                KIND: tl.constexpr, PRED: tl.constexpr, CLIP_MODE: tl.constexpr, USE_CLIPPED: tl.constexpr,
                HAS_NOISE: tl.constexpr, BLOCK: tl.constexpr):
    n, offs, mask = _block(D, C, BLOCK)
    xs, xm, ox, os, om, on, lim, s, m, x0 = _step_inputs(M, S, TS, PS, TAB, Q, T, n, offs, mask, clip_range, eta,
                                                         final_alpha, KIND, PRED, CLIP_MODE, USE_CLIPPED)
    c = _clip(x0, lim, CLIP_MODE)
    # A term whose coefficient is 0 is absent from the formula: skip it, so an inf there
    # (clipped away in x0) does not come back as 0 * inf = nan.
    r = ox * c + tl.where(os != 0.0, os * s, 0.0) + tl.where(om != 0.0, om * m, 0.0)
    if HAS_NOISE:
        # The noise is not read where its coefficient is 0 (DDPM at t = 0, DDIM at eta = 0).
        z = tl.load(NZ + offs, mask=mask & (tl.zeros_like(offs) + (on != 0.0).to(tl.int32) != 0), other=0.0).to(xs.dtype)
        r = r + on * z
    tl.store(OUT + offs, r.to(OUT.dtype.element_ty), mask=mask)
    tl.store(X0C + offs, c.to(X0C.dtype.element_ty), mask=mask)


@triton.jit
def step_bwd_kernel(GP, GX, M, S, TS, PS, TAB, Q, GM, GS, PART, T, D, C, clip_range, eta, final_alpha,
                    KIND: tl.constexpr, PRED: tl.constexpr, CLIP_MODE: tl.constexpr, USE_CLIPPED: tl.constexpr,
                    BLOCK: tl.constexpr):
    n, offs, mask = _block(D, C, BLOCK)
    xs, xm, ox, os, om, on, lim, s, m, x0 = _step_inputs(M, S, TS, PS, TAB, Q, T, n, offs, mask, clip_range, eta,
                                                         final_alpha, KIND, PRED, CLIP_MODE, USE_CLIPPED)
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
            x0c = _clip(x0, lim, 2)
            tl.store(PART + tl.program_id(0), tl.sum(gc * (above - x0c), axis=0) / lim)
    tl.store(GM + offs, (om * gp + xm * g0).to(GM.dtype.element_ty), mask=mask)
    tl.store(GS + offs, (os * gp + xs * g0).to(GS.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def _geometry(x: torch.Tensor):
    """(N, D, C, BLOCK): C blocks of BLOCK elements per sample."""
    N = x.shape[0]
    D = x.numel() // N if N else 0
    cap = 65536 if x.device.type == "cpu" else 4096  # the interpreter prefers few, large programs
    block = min(triton.next_power_of_2(max(D, 16)), cap)
    return N, D, triton.cdiv(D, block), block


def _prep(ts, table, dtype):
    return ts.to(torch.int64).contiguous(), table.to(acc_dtype(dtype)).contiguous()


def mix(x, y, ts, table, kind: int):
    x, y = x.contiguous(), y.contiguous()
    ts, table = _prep(ts, table, x.dtype)
    out = torch.empty(x.shape, dtype=acc_dtype(x.dtype) if kind >= KIND_X0 else x.dtype, device=x.device)
    N, D, C, BLOCK = _geometry(x)
    if N * C:
        wrap_triton(mix_kernel)[(N * C,)](x, y, ts, table, out, table.shape[0], D, C, KIND=kind, BLOCK=BLOCK)
    return out


def mix_backward(grad, x, ts, table, kind: int):
    grad = grad.contiguous()
    ts, table = _prep(ts, table, x.dtype)
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    gy = torch.empty_like(gx)
    N, D, C, BLOCK = _geometry(x)
    if N * C:
        wrap_triton(mix_bwd_kernel)[(N * C,)](grad, ts, table, gx, gy, table.shape[0], D, C, KIND=kind, BLOCK=BLOCK)
    return gx, gy


def loss(m, x0, noise, ts, table, pred: int, elementwise: bool):
    m, x0, noise = m.contiguous(), x0.contiguous(), noise.contiguous()
    ts, table = _prep(ts, table, m.dtype)
    acc = acc_dtype(m.dtype)
    N, D, C, BLOCK = _geometry(m)
    out = torch.empty(m.shape, dtype=acc, device=m.device) if elementwise else None
    part = torch.empty((N, C), dtype=acc, device=m.device)
    if N * C:
        wrap_triton(loss_kernel)[(N * C,)](m, x0, noise, ts, table, out if elementwise else part, part,
                                           table.shape[0], D, C, PRED=pred, ELEMENTWISE=elementwise, BLOCK=BLOCK)
    return out if elementwise else part.sum(1)


def loss_backward(grad, m, x0, noise, ts, table, pred: int, elementwise: bool, output_mask):
    """(grad model_output, grad x0, grad noise); an empty tensor where output_mask is False."""
    m, x0, noise = m.contiguous(), x0.contiguous(), noise.contiguous()
    ts, table = _prep(ts, table, m.dtype)
    grad = grad.to(acc_dtype(m.dtype)).contiguous()
    gm, gx, gn = (torch.empty(m.shape if want else (0,), dtype=m.dtype, device=m.device) for want in output_mask)
    N, D, C, BLOCK = _geometry(m)
    if N * C:
        wrap_triton(loss_bwd_kernel)[(N * C,)](grad, m, x0, noise, ts, table, gm, gx, gn, table.shape[0], D, C,
                                               PRED=pred, ELEMENTWISE=elementwise, GRAD_M=bool(output_mask[0]),
                                               GRAD_X=bool(output_mask[1]), GRAD_N=bool(output_mask[2]),
                                               BLOCK=BLOCK)
    return gm, gx, gn


def _clip_mode(threshold, clip_sample):
    return THRESHOLD if threshold is not None else (CLIP if clip_sample else NO_CLIP)


def step(m, s, noise, ts, prev, table, threshold, kind, pred, clip_sample, clip_range, eta, use_clipped,
         final_alpha):
    m, s = m.contiguous(), s.contiguous()
    ts, table = _prep(ts, table, s.dtype)
    prev = prev.to(torch.int64).contiguous()
    out = torch.empty(s.shape, dtype=s.dtype, device=s.device)
    x0c = torch.empty_like(out)
    N, D, C, BLOCK = _geometry(s)
    if N * C:
        nz = s if noise is None else noise.contiguous()
        q = table if threshold is None else threshold.contiguous()
        wrap_triton(step_kernel)[(N * C,)](
            m, s, nz, ts, prev, table, q, out, x0c, table.shape[0], D, C, float(clip_range), float(eta),
            float(final_alpha), KIND=kind, PRED=pred, CLIP_MODE=_clip_mode(threshold, clip_sample),
            USE_CLIPPED=bool(use_clipped) and kind == DDIM, HAS_NOISE=noise is not None, BLOCK=BLOCK)
    return out, x0c


def step_backward(gp, gx, m, s, ts, prev, table, threshold, kind, pred, clip_sample, clip_range, eta,
                  use_clipped, final_alpha):
    m, s, gp, gx = m.contiguous(), s.contiguous(), gp.contiguous(), gx.contiguous()
    ts, table = _prep(ts, table, s.dtype)
    prev = prev.to(torch.int64).contiguous()
    gm = torch.empty(s.shape, dtype=s.dtype, device=s.device)
    gs = torch.empty_like(gm)
    N, D, C, BLOCK = _geometry(s)
    acc = acc_dtype(s.dtype)
    part = torch.zeros((N if threshold is not None else 0, C), dtype=acc, device=s.device)
    if N * C:
        q = table if threshold is None else threshold.contiguous()
        wrap_triton(step_bwd_kernel)[(N * C,)](
            gp, gx, m, s, ts, prev, table, q, gm, gs, part if threshold is not None else gm, table.shape[0], D, C,
            float(clip_range), float(eta), float(final_alpha), KIND=kind, PRED=pred,
            CLIP_MODE=_clip_mode(threshold, clip_sample), USE_CLIPPED=bool(use_clipped) and kind == DDIM,
            BLOCK=BLOCK)
    gq = part.sum(1) if threshold is not None else torch.empty((0,), dtype=acc, device=s.device)
    return gm, gs, gq
