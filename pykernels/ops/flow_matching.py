"""Flow-matching family: the rectified-flow interpolation, the SD3 / Flux training loss,
the flow-match Euler sampler step, SD3's timestep sampling, and min-SNR weights for
DDPM-style training.

Public functions validate, pick a backend, and call one op; the ops are registered
below (fake implementations, autograd, Triton ops). The math is in
pykernels/reference/flow_matching.py; docs/flow_matching.md has the contract.

Every op takes one noise level per sample, `sigmas`: a number, a 0-dim tensor, a 1-D
tensor [N], or diffusers' [N, 1, ..., 1] shape, on the samples' device. The kernels read
it there: no host synchronisation, so a sampling loop can be captured in a CUDA graph.
Sigmas on CPU tensors are checked to lie in [0, 1] (ValueError); on CUDA tensors reading
them back would synchronise, so they are not checked. The timestep sampling and min-SNR
helpers work on [N] vectors and are plain PyTorch on any device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks as chk
from .. import backends
from .._precision import acc_dtype
from ..reference import flow_matching as ref
from ._registry import op, register_autograd, register_cpp, triton_available

WEIGHTING_SCHEMES = ref.WEIGHTING_SCHEMES
TIMESTEP_SCHEMES = ref.TIMESTEP_SCHEMES
PREDICTION_TYPES = ref.PREDICTION_TYPES
REDUCTIONS = ("mean", "none")
# The "mode" density 1 - u - s (cos^2(pi u / 2) - 1 + u) maps [0, 1] onto [0, 1]
# (decreasing) exactly for these mode_scale values.
MODE_SCALE_RANGE = (-1.0, 1.0 / (math.pi / 2 - 1))


# ----------------------------------------------------------------------------- fakes
def _interpolate_fake(x0, noise, sigmas):
    return x0.new_empty(x0.shape)


def _interpolate_backward_fake(grad, sigmas):
    return grad.new_empty(grad.shape), grad.new_empty(grad.shape)


def _loss_fake(
    model_output, x0, noise, sigmas, weighting_scheme, precondition_outputs, return_noisy
):
    m = model_output
    noisy = m.new_empty(m.shape if return_noisy else (0,))
    return m.new_empty(m.shape[:1], dtype=acc_dtype(m.dtype)), noisy


def _loss_backward_fake(
    grad,
    grad_noisy,
    model_output,
    x0,
    noise,
    sigmas,
    weighting_scheme,
    precondition_outputs,
    output_mask,
):
    m = model_output
    return tuple(m.new_empty(m.shape if want else (0,)) for want in output_mask)


def _euler_step_fake(model_output, sample, sigmas, sigmas_next):
    return sample.new_empty(sample.shape)


def _euler_step_backward_fake(grad, sigmas, sigmas_next):
    return grad.new_empty(grad.shape)


for _name, _fake, _backward_fake in (
    ("flow_interpolate", _interpolate_fake, _interpolate_backward_fake),
    ("flow_matching_loss", _loss_fake, _loss_backward_fake),
    ("flow_match_euler_step", _euler_step_fake, _euler_step_backward_fake),
):
    register_cpp(_name, _fake, _backward_fake)


# ----------------------------------------------------------------------------- Triton ops
if triton_available():
    from torch.library import triton_op

    from ..triton_kernels import flow_matching as tk

    @triton_op("pykernels::flow_interpolate_triton", mutates_args=())
    def _flow_interpolate_triton(x0: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
        fn = "pykernels::flow_interpolate_triton"
        chk.samples(fn, ("x0", x0), ("noise", noise))
        _check_op_sigmas(fn, ("x0", x0), ("sigmas", sigmas))
        return tk.flow_interpolate(x0, noise, sigmas)

    @triton_op("pykernels::flow_interpolate_backward_triton", mutates_args=())
    def _flow_interpolate_backward_triton(grad: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
        fn = "pykernels::flow_interpolate_backward_triton"
        chk.samples(fn, ("grad", grad))
        _check_op_sigmas(fn, ("grad", grad), ("sigmas", sigmas))
        return tk.flow_interpolate_backward(grad, sigmas)

    @triton_op("pykernels::flow_matching_loss_triton", mutates_args=())
    def _flow_matching_loss_triton(
        model_output: Tensor,
        x0: Tensor,
        noise: Tensor,
        sigmas: Tensor,
        weighting_scheme: str,
        precondition_outputs: bool,
        return_noisy: bool,
    ) -> tuple[Tensor, Tensor]:
        fn = "pykernels::flow_matching_loss_triton"
        _check_loss_op(fn, model_output, x0, noise, sigmas, weighting_scheme)
        return tk.flow_matching_loss(
            model_output,
            x0,
            noise,
            sigmas,
            _weighting(weighting_scheme),
            precondition_outputs,
            return_noisy,
        )

    @triton_op("pykernels::flow_matching_loss_backward_triton", mutates_args=())
    def _flow_matching_loss_backward_triton(
        grad: Tensor,
        grad_noisy: Tensor | None,
        model_output: Tensor,
        x0: Tensor,
        noise: Tensor,
        sigmas: Tensor,
        weighting_scheme: str,
        precondition_outputs: bool,
        output_mask: list[bool],
    ) -> tuple[Tensor, Tensor, Tensor]:
        fn = "pykernels::flow_matching_loss_backward_triton"
        _check_loss_op(fn, model_output, x0, noise, sigmas, weighting_scheme)
        chk.grad(fn, grad, model_output.shape[:1], model_output)
        if grad_noisy is not None:
            chk.samples(fn, ("model_output", model_output), ("grad_noisy", grad_noisy))
        if len(output_mask) != 3:
            # The C++ op's schema (bool[3]) refuses it in PyTorch's argument parser:
            # a RuntimeError too.
            raise RuntimeError(
                f"{fn}: argument 'output_mask' must have 3 elements (one per "
                f"input), got {len(output_mask)}"
            )
        return tk.flow_matching_loss_backward(
            grad,
            grad_noisy,
            model_output,
            x0,
            noise,
            sigmas,
            _weighting(weighting_scheme),
            precondition_outputs,
            output_mask,
        )

    @triton_op("pykernels::flow_match_euler_step_triton", mutates_args=())
    def _flow_match_euler_step_triton(
        model_output: Tensor, sample: Tensor, sigmas: Tensor, sigmas_next: Tensor
    ) -> Tensor:
        fn = "pykernels::flow_match_euler_step_triton"
        chk.samples(fn, ("sample", sample), ("model_output", model_output))
        _check_op_sigmas(fn, ("sample", sample), ("sigmas", sigmas), ("sigmas_next", sigmas_next))
        return tk.flow_match_euler_step(model_output, sample, sigmas, sigmas_next)

    @triton_op("pykernels::flow_match_euler_step_backward_triton", mutates_args=())
    def _flow_match_euler_step_backward_triton(
        grad: Tensor, sigmas: Tensor, sigmas_next: Tensor
    ) -> Tensor:
        fn = "pykernels::flow_match_euler_step_backward_triton"
        chk.samples(fn, ("grad", grad))
        _check_op_sigmas(fn, ("grad", grad), ("sigmas", sigmas), ("sigmas_next", sigmas_next))
        return tk.flow_match_euler_step_backward(grad, sigmas, sigmas_next)

    def _check_loss_op(fn: str, model_output, x0, noise, sigmas, weighting_scheme) -> None:
        chk.samples(fn, ("model_output", model_output), ("x0", x0), ("noise", noise))
        _check_op_sigmas(fn, ("model_output", model_output), ("sigmas", sigmas))
        chk.choice(fn, "weighting_scheme", weighting_scheme, WEIGHTING_SCHEMES)

    def _weighting(weighting_scheme: str) -> int:
        return WEIGHTING_SCHEMES.index(weighting_scheme)


# ----------------------------------------------------------------------------- autograd
def _interpolate_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])


def _interpolate_backward(ops, ctx, grad):
    (sigmas,) = ctx.saved_tensors
    grad_x0, grad_noise = ops("flow_interpolate_backward")(grad, sigmas)
    return grad_x0, grad_noise, None


def _loss_setup(ctx, inputs, output):
    model_output, x0, noise, sigmas, weighting_scheme, precondition_outputs, return_noisy = inputs
    ctx.save_for_backward(model_output, x0, noise, sigmas)
    ctx.args = (weighting_scheme, precondition_outputs)
    ctx.return_noisy = return_noisy


def _loss_backward(ops, ctx, grad, grad_noisy):
    # Only the gradients autograd needs (usually model_output's alone) are computed; x_t's
    # gradient reaches x0 and noise only.
    mask = list(ctx.needs_input_grad[:3])
    grad_noisy = grad_noisy if ctx.return_noisy and (mask[1] or mask[2]) else None
    g = ops("flow_matching_loss_backward")(grad, grad_noisy, *ctx.saved_tensors, *ctx.args, mask)
    return tuple(gi if want else None for gi, want in zip(g, mask)) + (None,) * 4


def _euler_step_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2], inputs[3])


def _euler_step_backward(ops, ctx, grad):
    # out = sample + dt model_output in one dtype: the sample's gradient is grad itself.
    sigmas, sigmas_next = ctx.saved_tensors
    want_m, want_sample = ctx.needs_input_grad[:2]
    grad_m = ops("flow_match_euler_step_backward")(grad, sigmas, sigmas_next) if want_m else None
    return grad_m, grad if want_sample else None, None, None


register_autograd("flow_interpolate", _interpolate_setup, _interpolate_backward)
register_autograd("flow_matching_loss", _loss_setup, _loss_backward)
register_autograd("flow_match_euler_step", _euler_step_setup, _euler_step_backward)


# ----------------------------------------------------------------------------- validation
def _check_sigma_range(fn: str, name: str, s: Tensor) -> None:
    """Values in [0, 1], read on CPU only (on CUDA it would synchronise); NaN passes and
    propagates to the results like any NaN input."""
    if s.device.type != "cpu" or torch.compiler.is_compiling() or s.numel() == 0:
        return
    lo, hi = (s.item(),) * 2 if s.numel() == 1 else (v.item() for v in torch.aminmax(s))
    if lo < 0 or hi > 1:  # (a NaN compares false)
        flat = s.reshape(-1)
        i = int(((flat < 0) | (flat > 1)).nonzero()[0, 0])
        raise ValueError(
            f"{fn}: argument '{name}' has {flat[i].item()} at index {i}, outside [0, 1]"
        )


def _check_op_sigmas(fn: str, like: tuple[str, Tensor], *named) -> None:
    """The C++ ops' checks of their per-sample sigmas [N], for the Triton ops: metadata
    only (the values are the public functions' to check; the Triton ops read no tensor
    back to the host, as the CUDA kernels)."""
    ref_name, x = like
    for name, s in named:
        chk.tensor(fn, name, s)
        chk.same_device(fn, like, (name, s))
        if tuple(s.shape) != (x.shape[0],):
            raise ValueError(
                f"{fn}: argument '{name}' must have shape [N] = [{x.shape[0]}] "
                f"(one per sample), got {tuple(s.shape)}"
            )


def _sigmas(fn: str, name: str, sigmas, samples: tuple[str, Tensor]) -> Tensor:
    """Per-sample noise levels as a tensor [N] on like's device (any float dtype: the
    kernels use them in the accumulation dtype). Accepted: a number, a tensor with one
    element, [N], or a shape that broadcasts against like [N, ...] with every dim but
    the batch dim of size 1 (diffusers' [N, 1, ..., 1])."""
    like = samples[1]
    N = like.shape[0]
    if isinstance(sigmas, (int, float)) and not isinstance(sigmas, bool):
        if not 0 <= sigmas <= 1:
            raise ValueError(f"{fn}: argument '{name}' must be in [0, 1], got {sigmas}")
        return torch.full((N,), float(sigmas), dtype=acc_dtype(like.dtype), device=like.device)
    chk.tensor(fn, name, sigmas)
    chk.same_device(fn, samples, (name, sigmas))
    if sigmas.requires_grad:
        raise ValueError(
            f"{fn}: argument '{name}' must not require grad (the ops have no "
            f"gradient with respect to the noise levels): pass {name}.detach()"
        )
    if not _per_sample_shape(tuple(sigmas.shape), tuple(like.shape)):
        raise ValueError(
            f"{fn}: argument '{name}' must hold one noise level per sample: a "
            f"scalar, [N] or [N, 1, ..., 1] with N = {N} for samples of shape "
            f"{tuple(like.shape)}, got shape {tuple(sigmas.shape)}"
        )
    _check_sigma_range(fn, name, sigmas)
    if sigmas.dim() == 1 and sigmas.shape[0] == N:
        return sigmas
    return sigmas.reshape(-1).expand(N) if sigmas.numel() == 1 else sigmas.reshape(N)


def _per_sample_shape(shape: tuple, like: tuple) -> bool:
    if len(shape) == 1 and shape[0] == like[0]:
        return True  # [N]: one per sample by convention
    if len(shape) > len(like):
        return False
    if len(shape) == len(like) and shape[0] not in (1, like[0]):
        return False
    rest = shape[1:] if len(shape) == len(like) else shape
    return all(d == 1 for d in rest)


def _flag(fn: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: argument '{name}' must be a bool, got {type(value).__name__}")
    return value


# ----------------------------------------------------------------------------- public API
@chk.autocast_rule("x0", "noise")
def flow_interpolate(x0: Tensor, noise: Tensor, sigmas, *, backend: str | None = None) -> Tensor:
    """x_t = (1 - sigma) x0 + sigma noise per sample (sigmas: see the module docstring),
    computed in float32 for half inputs, returned in x0's dtype. Gradients to x0 and
    noise."""
    fn = "pykernels.flow_interpolate"
    chk.samples(fn, ("x0", x0), ("noise", noise))
    s = _sigmas(fn, "sigmas", sigmas, ("x0", x0))
    name = backends.resolve(backend, x0.device, fn)
    if name == "reference":
        return ref.flow_interpolate(x0, noise, s)
    return op("flow_interpolate", name)(x0, noise, s)


@chk.autocast_rule("model_output", "x0", "noise")
def flow_matching_loss(
    model_output: Tensor,
    x0: Tensor,
    noise: Tensor,
    sigmas,
    *,
    weighting_scheme: str = "none",
    precondition_outputs: bool = False,
    reduction: str = "mean",
    return_noisy: bool = False,
    backend: str | None = None,
):
    """The SD3 / Flux rectified-flow training loss, as diffusers' training scripts compute
    it, in one pass that never writes x_t: target noise - x0 for the prediction
    model_output, or with precondition_outputs the prediction -sigma model_output + x_t
    against the target x0; weighted by compute_loss_weighting_for_sd3's "none",
    "sigma_sqrt" (sigma clamped to 1e-4) or "cosmap"; squared error averaged per sample,
    then over the batch (reduction "mean"), or the per-sample losses [N] ("none").
    float32 (float64 for float64 inputs). return_noisy=True also returns x_t:
    (loss, x_t). Gradients to model_output, and to x0 / noise when they require grad."""
    fn = "pykernels.flow_matching_loss"
    chk.samples(fn, ("model_output", model_output), ("x0", x0), ("noise", noise))
    chk.choice(fn, "weighting_scheme", weighting_scheme, WEIGHTING_SCHEMES)
    chk.choice(fn, "reduction", reduction, REDUCTIONS)
    pre = _flag(fn, "precondition_outputs", precondition_outputs)
    noisy = _flag(fn, "return_noisy", return_noisy)
    s = _sigmas(fn, "sigmas", sigmas, ("model_output", model_output))
    name = backends.resolve(backend, model_output.device, fn)
    if name == "reference":
        return ref.flow_matching_loss(
            model_output, x0, noise, s, weighting_scheme, pre, reduction, noisy
        )
    loss, x_t = op("flow_matching_loss", name)(
        model_output, x0, noise, s, weighting_scheme, pre, noisy
    )
    loss = loss.mean() if reduction == "mean" else loss
    return (loss, x_t) if noisy else loss


@chk.autocast_rule("model_output", "sample")
def flow_match_euler_step(
    model_output: Tensor, sample: Tensor, sigmas, sigmas_next, *, backend: str | None = None
) -> Tensor:
    """One flow-match Euler step per sample: sample + (sigma_next - sigma) model_output,
    computed in float32 (float64 for float64) and returned in model_output's dtype, as
    diffusers' FlowMatchEulerDiscreteScheduler.step does. Differentiable w.r.t.
    model_output and sample; no host synchronisation."""
    fn = "pykernels.flow_match_euler_step"
    chk.samples(fn, ("sample", sample), ("model_output", model_output))
    s = _sigmas(fn, "sigmas", sigmas, ("sample", sample))
    s_next = _sigmas(fn, "sigmas_next", sigmas_next, ("sample", sample))
    name = backends.resolve(backend, sample.device, fn)
    if name == "reference":
        return ref.flow_match_euler_step(model_output, sample, s, s_next)
    return op("flow_match_euler_step", name)(model_output, sample, s, s_next)


def sample_flow_timesteps(
    batch_size: int,
    *,
    weighting_scheme: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    shift: float = 1.0,
    num_train_timesteps: int = 1000,
    generator: torch.Generator | None = None,
    device=None,
    u: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(timesteps, sigmas) [batch_size] float32 for a flow-matching training step: u
    drawn from SD3's density ("logit_normal": sigmoid of N(logit_mean, logit_std);
    "mode": mode_scale's density; "uniform"), with the same draws from `generator` as
    diffusers' compute_density_for_timestep_sampling, then index floor(u T) of
    FlowMatchEulerDiscreteScheduler's shifted schedule (T = num_train_timesteps,
    sigma <- shift sigma / (1 + (shift - 1) sigma)), bitwise the values diffusers'
    training scripts look up. u: the density samples [batch_size] in [0, 1] to use
    instead of drawing (then the scheme's parameters are not used); u = 1 gives the last
    entry, where diffusers' lookup would index past the table. device: where to draw
    (default CPU, as diffusers; u's device when u is given)."""
    fn = "pykernels.sample_flow_timesteps"
    _check_count(fn, "batch_size", batch_size, minimum=0)
    _check_count(fn, "num_train_timesteps", num_train_timesteps, minimum=1)
    chk.positive(fn, "shift", shift)
    if u is None:
        _check_density(fn, weighting_scheme, logit_mean, logit_std, mode_scale)
        u = ref.timestep_density(
            weighting_scheme, batch_size, logit_mean, logit_std, mode_scale, device, generator
        )
    else:
        chk.tensor(fn, "u", u)
        if tuple(u.shape) != (batch_size,):
            raise ValueError(
                f"{fn}: argument 'u' must have shape [batch_size] = [{batch_size}], "
                f"got {tuple(u.shape)}"
            )
        _check_sigma_range(fn, "u", u)
    return ref.timesteps_for_density(u, *_schedule(num_train_timesteps, float(shift), u.device))


_SCHEDULES: dict = {}


def _schedule(num_train_timesteps: int, shift: float, device: torch.device):
    """shifted_schedule's tables, built once per (T, shift, device) and reused: a training
    loop asks for the same ones every step (the lookup then indexes into them)."""
    key = (num_train_timesteps, shift, str(device))
    if key not in _SCHEDULES:
        if len(_SCHEDULES) >= 16:
            _SCHEDULES.clear()
        _SCHEDULES[key] = ref.shifted_schedule(num_train_timesteps, shift, device)
    return _SCHEDULES[key]


def _check_count(fn: str, name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: argument '{name}' must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{fn}: argument '{name}' must be >= {minimum}, got {value}")


def _check_density(fn: str, weighting_scheme: str, logit_mean, logit_std, mode_scale) -> None:
    chk.choice(fn, "weighting_scheme", weighting_scheme, TIMESTEP_SCHEMES)
    for name, v in (("logit_mean", logit_mean), ("mode_scale", mode_scale)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{fn}: argument '{name}' must be a number, got {type(v).__name__}")
        if not math.isfinite(v):
            raise ValueError(f"{fn}: argument '{name}' must be finite, got {v}")
    chk.positive(fn, "logit_std", logit_std)
    lo, hi = MODE_SCALE_RANGE
    if weighting_scheme == "mode" and not lo <= mode_scale <= hi:
        raise ValueError(
            f"{fn}: argument 'mode_scale' must be in [{lo}, {hi:.4f}] (where the "
            f"density maps [0, 1] onto [0, 1]), got {mode_scale}"
        )


# ----------------------------------------------------------------------------- min-SNR
def _check_snr_args(fn: str, timesteps, alphas_cumprod) -> None:
    chk.tensor(fn, "alphas_cumprod", alphas_cumprod)
    if alphas_cumprod.dim() != 1 or alphas_cumprod.shape[0] == 0:
        raise ValueError(
            f"{fn}: argument 'alphas_cumprod' must be a non-empty 1-D table [T], "
            f"got shape {tuple(alphas_cumprod.shape)}"
        )
    chk.tensor(fn, "timesteps", timesteps, floating=False)
    if timesteps.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"{fn}: argument 'timesteps' must be an int64 or int32 tensor, got {timesteps.dtype}"
        )
    T = alphas_cumprod.shape[0]
    if timesteps.device.type == "cpu" and not torch.compiler.is_compiling() and timesteps.numel():
        lo, hi = int(timesteps.min()), int(timesteps.max())
        if lo < 0 or hi >= T:
            raise IndexError(
                f"{fn}: argument 'timesteps' has {lo if lo < 0 else hi}, outside "
                f"[0, {T - 1}] (alphas_cumprod has {T} entries)"
            )


def compute_snr(timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """SNR(t) = alphas_cumprod[t] / (1 - alphas_cumprod[t]), float32, timesteps' shape
    and device: diffusers.training_utils.compute_snr with the table instead of the
    scheduler (compute_snr(t, scheduler.alphas_cumprod))."""
    _check_snr_args("pykernels.compute_snr", timesteps, alphas_cumprod)
    return ref.compute_snr(timesteps, alphas_cumprod)


def min_snr_weights(
    timesteps: Tensor, alphas_cumprod: Tensor, gamma: float, prediction_type: str = "epsilon"
) -> Tensor:
    """Min-SNR-gamma loss weights per sample (Hang et al. 2023, diffusers'
    train_text_to_image.py --snr_gamma): min(SNR, gamma) / SNR for "epsilon",
    min(SNR, gamma) / (SNR + 1) for "v_prediction", min(SNR, gamma) for "sample".
    Multiply them into per-sample mean losses:

        per_sample = pk.diffusion_loss(m, x0, noise, t, table, reduction="none").flatten(1).mean(1)
        loss = (per_sample * pk.min_snr_weights(t, table, 5.0)).mean()
    """
    fn = "pykernels.min_snr_weights"
    _check_snr_args(fn, timesteps, alphas_cumprod)
    chk.positive(fn, "gamma", gamma)
    chk.choice(fn, "prediction_type", prediction_type, PREDICTION_TYPES)
    return ref.min_snr_weights(timesteps, alphas_cumprod, float(gamma), prediction_type)
