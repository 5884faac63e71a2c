"""Triton kernels of the flow-matching family: flow_interpolate, flow_matching_loss and
flow_match_euler_step, forward and backward.

Tensors are [N, D] (N samples, sigmas [N] in the accumulation dtype). Program (n, c)
handles elements [c BLOCK, (c + 1) BLOCK) of sample n: it reads sigmas[n], computes the
sample's coefficients as scalars once, then streams the block. Per-sample sums are
written per program and added in a fixed order by the launcher (deterministic). Offsets
are int64. With a = 1 - sigma, b = sigma, dt = sigma_next - sigma, d = m - (eps - x0):

    interpolate            x_t = a x0 + b eps                  backward: (a g, b g)
    loss                   c(sigma) sum_i d_i^2 / D per block  backward: h = 2 c(sigma) g_n d / D,
                                                               (h, h + a gx_t, b gx_t - h)
    euler step             x + dt m                            backward: dt g

c(sigma) is the loss weight of csrc/common/flow_matching_args.h (_loss_weight).
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from pykernels._precision import acc_dtype

from ._common import sample_blocks

SIGMA_SQRT_MIN = tl.constexpr(1e-4)
PI = tl.constexpr(3.141592653589793)


@triton.jit
def _sample_block(D, BLOCK: tl.constexpr):
    """(n, offsets of this program's block in the flat tensor, mask)."""
    n = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    return n, n.to(tl.int64) * D + cols, cols < D


@triton.jit
def _loss_weight(sigma, WEIGHTING: tl.constexpr, PRECONDITION: tl.constexpr):
    """c(sigma): w = 1 | 1 / max(sigma, 1e-4)^2 | 2 / (pi (1 - 2 sigma + 2 sigma^2)), times
    sigma^2 with preconditioning (sigma_sqrt then gives exactly 1)."""
    if WEIGHTING == 1:
        if PRECONDITION:
            c = sigma * 0.0 + 1.0
        else:
            s = tl.maximum(sigma, SIGMA_SQRT_MIN)
            c = 1.0 / (s * s)
    else:
        if WEIGHTING == 2:
            w = 2.0 / (PI * (1.0 - 2.0 * sigma + 2.0 * sigma * sigma))
        else:
            w = sigma * 0.0 + 1.0
        if PRECONDITION:
            c = w * (sigma * sigma)
        else:
            c = w
    return c


@triton.jit
def _velocity_error(M, X0, NZ, offs, mask, dtype):
    """d = m - (eps - x0) in `dtype`, and x0, eps."""
    m = tl.load(M + offs, mask=mask, other=0.0).to(dtype)
    x0 = tl.load(X0 + offs, mask=mask, other=0.0).to(dtype)
    eps = tl.load(NZ + offs, mask=mask, other=0.0).to(dtype)
    return m - (eps - x0), x0, eps


# ----------------------------------------------------------------------------- kernels
@triton.jit
def axpby_kernel(X, Y, S, SN, OUT, D, EULER: tl.constexpr, BLOCK: tl.constexpr):
    """out = p x + q y: interpolate (p = 1 - sigma, q = sigma) or Euler step (p = 1, q = dt)."""
    n, offs, mask = _sample_block(D, BLOCK)
    sigma = tl.load(S + n)
    if EULER:
        p = sigma * 0.0 + 1.0
        q = tl.load(SN + n) - sigma
    else:
        p = 1.0 - sigma
        q = sigma
    x = tl.load(X + offs, mask=mask, other=0.0).to(sigma.dtype)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(sigma.dtype)
    tl.store(OUT + offs, (p * x + q * y).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def scale_kernel(G, S, SN, GX, GY, D, EULER: tl.constexpr, BLOCK: tl.constexpr):
    """Euler step backward gx = dt g; interpolate backward gx = (1 - sigma) g, gy = sigma g."""
    n, offs, mask = _sample_block(D, BLOCK)
    sigma = tl.load(S + n)
    g = tl.load(G + offs, mask=mask, other=0.0).to(sigma.dtype)
    if EULER:
        tl.store(GX + offs, ((tl.load(SN + n) - sigma) * g).to(GX.dtype.element_ty), mask=mask)
    else:
        tl.store(GX + offs, ((1.0 - sigma) * g).to(GX.dtype.element_ty), mask=mask)
        tl.store(GY + offs, (sigma * g).to(GY.dtype.element_ty), mask=mask)


@triton.jit
def loss_kernel(
    M,
    X0,
    NZ,
    S,
    PART,
    XT,
    D,
    C,
    WEIGHTING: tl.constexpr,
    PRECONDITION: tl.constexpr,
    NOISY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n, offs, mask = _sample_block(D, BLOCK)
    sigma = tl.load(S + n)
    d, x0, eps = _velocity_error(M, X0, NZ, offs, mask, sigma.dtype)
    if NOISY:
        tl.store(XT + offs, ((1.0 - sigma) * x0 + sigma * eps).to(XT.dtype.element_ty), mask=mask)
    c = _loss_weight(sigma, WEIGHTING, PRECONDITION)
    tl.store(PART + n * C + tl.program_id(1), c * tl.sum(d * d, axis=0) / D)


@triton.jit
def loss_bwd_kernel(
    G,
    GXT,
    M,
    X0,
    NZ,
    S,
    GM,
    GX,
    GN,
    D,
    WEIGHTING: tl.constexpr,
    PRECONDITION: tl.constexpr,
    HAS_GXT: tl.constexpr,
    GRAD_M: tl.constexpr,
    GRAD_X: tl.constexpr,
    GRAD_N: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n, offs, mask = _sample_block(D, BLOCK)
    sigma = tl.load(S + n)
    d, x0, eps = _velocity_error(M, X0, NZ, offs, mask, sigma.dtype)
    h = (2.0 * _loss_weight(sigma, WEIGHTING, PRECONDITION) * tl.load(G + n) / D) * d
    if GRAD_M:
        tl.store(GM + offs, h.to(GM.dtype.element_ty), mask=mask)
    gxt = tl.zeros_like(h)
    if HAS_GXT:
        gxt = tl.load(GXT + offs, mask=mask, other=0.0).to(sigma.dtype)
    if GRAD_X:
        tl.store(GX + offs, ((1.0 - sigma) * gxt + h).to(GX.dtype.element_ty), mask=mask)
    if GRAD_N:
        tl.store(GN + offs, (sigma * gxt - h).to(GN.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers
def _acc(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(acc_dtype(like.dtype)).contiguous()


def _axpby(x, y, sigmas, sigmas_next, euler: bool):
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    N, D, C, BLOCK = sample_blocks(x)
    s = _acc(sigmas, x)
    sn = _acc(sigmas_next, x) if euler else s
    if N * C:
        wrap_triton(axpby_kernel)[(N, C)](x, y, s, sn, out, D, EULER=euler, BLOCK=BLOCK)
    return out


def flow_interpolate(x0, noise, sigmas):
    return _axpby(x0, noise, sigmas, None, euler=False)


def flow_match_euler_step(model_output, sample, sigmas, sigmas_next):
    return _axpby(sample, model_output, sigmas, sigmas_next, euler=True)


def _scale(grad, sigmas, sigmas_next, euler: bool):
    grad = grad.contiguous()
    gx = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
    gy = gx if euler else torch.empty_like(gx)
    N, D, C, BLOCK = sample_blocks(grad)
    s = _acc(sigmas, grad)
    sn = _acc(sigmas_next, grad) if euler else s
    if N * C:
        wrap_triton(scale_kernel)[(N, C)](grad, s, sn, gx, gy, D, EULER=euler, BLOCK=BLOCK)
    return gx if euler else (gx, gy)


def flow_interpolate_backward(grad, sigmas):
    return _scale(grad, sigmas, None, euler=False)


def flow_match_euler_step_backward(grad, sigmas, sigmas_next):
    return _scale(grad, sigmas, sigmas_next, euler=True)


def flow_matching_loss(
    model_output, x0, noise, sigmas, weighting: int, precondition_outputs: bool, return_noisy: bool
):
    m, x0, noise = model_output.contiguous(), x0.contiguous(), noise.contiguous()
    s = _acc(sigmas, m)
    N, D, C, BLOCK = sample_blocks(m)
    part = torch.empty((N, C), dtype=s.dtype, device=m.device)
    noisy = torch.empty(m.shape if return_noisy else (0,), dtype=m.dtype, device=m.device)
    if N * C:
        xt = noisy if return_noisy else part  # not written without return_noisy
        wrap_triton(loss_kernel)[(N, C)](
            m,
            x0,
            noise,
            s,
            part,
            xt,
            D,
            C,
            WEIGHTING=weighting,
            PRECONDITION=bool(precondition_outputs),
            NOISY=bool(return_noisy),
            BLOCK=BLOCK,
        )
    loss = part.sum(1)
    if D == 0:
        loss.fill_(float("nan"))  # a mean over no elements, as torch's
    return loss, noisy


def flow_matching_loss_backward(
    grad,
    grad_noisy,
    model_output,
    x0,
    noise,
    sigmas,
    weighting: int,
    precondition_outputs: bool,
    output_mask,
):
    """(grad model_output, grad x0, grad noise); an empty tensor where output_mask is False."""
    m, x0, noise = model_output.contiguous(), x0.contiguous(), noise.contiguous()
    s, g = _acc(sigmas, m), _acc(grad, m)
    gm, gx, gn = (
        torch.empty(m.shape if want else (0,), dtype=m.dtype, device=m.device)
        for want in output_mask
    )
    N, D, C, BLOCK = sample_blocks(m)
    gxt = grad_noisy.contiguous() if grad_noisy is not None else m
    if N * C:
        wrap_triton(loss_bwd_kernel)[(N, C)](
            g,
            gxt,
            m,
            x0,
            noise,
            s,
            gm,
            gx,
            gn,
            D,
            WEIGHTING=weighting,
            PRECONDITION=bool(precondition_outputs),
            HAS_GXT=grad_noisy is not None,
            GRAD_M=bool(output_mask[0]),
            GRAD_X=bool(output_mask[1]),
            GRAD_N=bool(output_mask[2]),
            BLOCK=BLOCK,
        )
    return gm, gx, gn
