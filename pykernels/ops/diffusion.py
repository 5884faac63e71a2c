"""Diffusion family: forward noising, velocity, training loss, DDPM / DDIM sampler steps.

Public functions validate, pick a backend, and call one op; the ops are registered
below (fake implementations, autograd, Triton ops). The math is in
pykernels/reference/diffusion.py.

Every op takes per-sample integer timesteps [N] that index the alphas_cumprod table on
the tensors' device inside the kernel: no host synchronisation, so a sampling loop can
be captured in a CUDA graph. Timesteps on CPU tensors are range-checked (IndexError);
on CUDA tensors they are clamped into the table (reading them back would sync).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks as chk
from .. import backends
from .._precision import acc_dtype
from ..reference import diffusion as ref
from ._registry import op, register_cpp, triton_available

PREDICTION_TYPES = ref.PREDICTION_TYPES
REDUCTIONS = ("mean", "sum", "none")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
KIND_ADD_NOISE, KIND_VELOCITY, KIND_X0 = 0, 1, 2
DDPM, DDIM = 0, 1




# ----------------------------------------------------------------------------- C++ / Triton ops
def _mix_fake(x, y, timesteps, table, kind):
    return x.new_empty(x.shape, dtype=acc_dtype(x.dtype) if kind >= KIND_X0 else x.dtype)


def _mix_backward_fake(grad, x, timesteps, table, kind):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def _loss_fake(m, x0, noise, timesteps, table, prediction, elementwise):
    return m.new_empty(m.shape if elementwise else m.shape[:1], dtype=acc_dtype(m.dtype))


def _loss_backward_fake(grad, m, x0, noise, timesteps, table, prediction, elementwise, output_mask):
    return tuple(m.new_empty(m.shape if want else (0,)) for want in output_mask)


def _step_fake(m, s, *rest):
    return s.new_empty(s.shape), s.new_empty(s.shape)


def _step_backward_fake(gp, gx, m, s, timesteps, prev, table, threshold, *rest):
    n = s.shape[0] if threshold is not None else 0
    return s.new_empty(s.shape), s.new_empty(s.shape), s.new_empty((n,), dtype=acc_dtype(s.dtype))


def _register_autograd(backend: str) -> None:
    """Autograd of the three ops on `backend` (their backward ops run on the same one)."""
    suffix = "_triton" if backend == "triton" else ""

    def mix_setup(ctx, inputs, output):
        x, _, t, table, kind = inputs
        ctx.save_for_backward(x, t, table)
        ctx.kind = kind

    def mix_backward(ctx, grad):
        x, t, table = ctx.saved_tensors
        gx, gy = op("diffusion_mix_backward", backend)(grad, x, t, table, ctx.kind)
        return gx, gy, None, None, None

    def loss_setup(ctx, inputs, output):
        m, x0, noise, t, table, prediction, elementwise = inputs
        ctx.save_for_backward(m, x0, noise, t, table)
        ctx.args = (prediction, elementwise)

    def loss_backward(ctx, grad):
        # Only the gradients autograd needs (usually model_output's alone) are computed.
        mask = list(ctx.needs_input_grad[:3])
        g = op("diffusion_loss_backward", backend)(grad, *ctx.saved_tensors, *ctx.args, mask)
        return tuple(gi if want else None for gi, want in zip(g, mask)) + (None,) * 4

    def step_setup(ctx, inputs, output):
        m, s, _, t, prev, table, threshold = inputs[:7]
        ctx.has_threshold = threshold is not None
        ctx.save_for_backward(m, s, t, prev, table, threshold if threshold is not None else table)
        ctx.args = inputs[7:]

    def step_backward(ctx, gp, gx):
        m, s, t, prev, table, q = ctx.saved_tensors
        q = q if ctx.has_threshold else None
        gm, gs, gq = op("diffusion_step_backward", backend)(gp, gx, m, s, t, prev, table, q, *ctx.args)
        return (gm, gs, None, None, None, None, gq if ctx.has_threshold else None) + (None,) * 7

    for name, bwd, setup in (("diffusion_mix", mix_backward, mix_setup),
                             ("diffusion_loss", loss_backward, loss_setup),
                             ("diffusion_step", step_backward, step_setup)):
        torch.library.register_autograd(f"pykernels::{name}{suffix}", bwd, setup_context=setup)


if (register_cpp("diffusion_mix", _mix_fake, _mix_backward_fake)
        and register_cpp("diffusion_loss", _loss_fake, _loss_backward_fake)
        and register_cpp("diffusion_step", _step_fake, _step_backward_fake)):
    _register_autograd("cpp")

if triton_available():
    from torch.library import triton_op

    from ..triton_kernels import diffusion as tk

    @triton_op("pykernels::diffusion_mix_triton", mutates_args=())
    def _mix_triton(x: Tensor, y: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, kind: int) -> Tensor:
        _check_mix_op("pykernels::diffusion_mix_triton", x, timesteps, alphas_cumprod, kind, y)
        return tk.mix(x, y, timesteps, alphas_cumprod, kind)

    @triton_op("pykernels::diffusion_mix_backward_triton", mutates_args=())
    def _mix_backward_triton(grad: Tensor, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor,
                             kind: int) -> tuple[Tensor, Tensor]:
        fn = "pykernels::diffusion_mix_backward_triton"
        _check_mix_op(fn, x, timesteps, alphas_cumprod, kind)
        chk.grad(fn, grad, x.shape, x)
        return tk.mix_backward(grad, x, timesteps, alphas_cumprod, kind)

    @triton_op("pykernels::diffusion_loss_triton", mutates_args=())
    def _loss_triton(model_output: Tensor, x0: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor,
                     prediction: int, elementwise: bool) -> Tensor:
        _check_loss_op("pykernels::diffusion_loss_triton", model_output, x0, noise, timesteps, alphas_cumprod,
                       prediction)
        return tk.loss(model_output, x0, noise, timesteps, alphas_cumprod, prediction, elementwise)

    @triton_op("pykernels::diffusion_loss_backward_triton", mutates_args=())
    def _loss_backward_triton(grad: Tensor, model_output: Tensor, x0: Tensor, noise: Tensor, timesteps: Tensor,
                              alphas_cumprod: Tensor, prediction: int, elementwise: bool,
                              output_mask: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
        fn = "pykernels::diffusion_loss_backward_triton"
        _check_loss_op(fn, model_output, x0, noise, timesteps, alphas_cumprod, prediction)
        chk.grad(fn, grad, model_output.shape if elementwise else model_output.shape[:1], model_output)
        if len(output_mask) != 3:
            # The C++ op's schema (bool[3]) refuses it in PyTorch's argument parser: a RuntimeError too.
            raise RuntimeError(f"{fn}: argument 'output_mask' must have 3 elements (one per input), "
                               f"got {len(output_mask)}")
        return tk.loss_backward(grad, model_output, x0, noise, timesteps, alphas_cumprod, prediction, elementwise,
                                output_mask)

    @triton_op("pykernels::diffusion_step_triton", mutates_args=())
    def _step_triton(model_output: Tensor, sample: Tensor, noise: Tensor | None, timesteps: Tensor,
                     prev_timesteps: Tensor, alphas_cumprod: Tensor, threshold: Tensor | None, kind: int,
                     prediction: int, clip_sample: bool, clip_sample_range: float, eta: float,
                     use_clipped_model_output: bool, final_alpha_cumprod: float) -> tuple[Tensor, Tensor]:
        _check_step_op("pykernels::diffusion_step_triton", model_output, sample, noise, timesteps, prev_timesteps,
                       alphas_cumprod, threshold, kind, prediction, clip_sample_range, eta, final_alpha_cumprod)
        return tk.step(model_output, sample, noise, timesteps, prev_timesteps, alphas_cumprod, threshold, kind,
                       prediction, clip_sample, clip_sample_range, eta, use_clipped_model_output, final_alpha_cumprod)

    @triton_op("pykernels::diffusion_step_backward_triton", mutates_args=())
    def _step_backward_triton(grad_prev_sample: Tensor, grad_pred_original_sample: Tensor, model_output: Tensor,
                              sample: Tensor, timesteps: Tensor, prev_timesteps: Tensor, alphas_cumprod: Tensor,
                              threshold: Tensor | None, kind: int, prediction: int, clip_sample: bool,
                              clip_sample_range: float, eta: float, use_clipped_model_output: bool,
                              final_alpha_cumprod: float) -> tuple[Tensor, Tensor, Tensor]:
        fn = "pykernels::diffusion_step_backward_triton"
        _check_step_op(fn, model_output, sample, None, timesteps, prev_timesteps, alphas_cumprod, threshold, kind,
                       prediction, clip_sample_range, eta, final_alpha_cumprod)
        # Both gradients like the sample, dtype included, as the C++ op checks them.
        _check_samples(fn, ("sample", sample), ("grad_prev_sample", grad_prev_sample),
                       ("grad_pred_original_sample", grad_pred_original_sample))
        return tk.step_backward(grad_prev_sample, grad_pred_original_sample, model_output, sample, timesteps,
                                prev_timesteps, alphas_cumprod, threshold, kind, prediction, clip_sample,
                                clip_sample_range, eta, use_clipped_model_output, final_alpha_cumprod)

    # The checks of each Triton op, shared by its backward op (which gets the same
    # arguments, bar the ones it does not need: y, noise).
    def _check_mix_op(fn: str, x, timesteps, alphas_cumprod, kind, y=None) -> None:
        _check_samples(fn, ("x", x), *([("y", y)] if y is not None else []))
        _check_op_args(fn, x, alphas_cumprod, ("timesteps", timesteps), kind=("kind", kind, 5))

    def _check_loss_op(fn: str, model_output, x0, noise, timesteps, alphas_cumprod, prediction) -> None:
        _check_samples(fn, ("model_output", model_output), ("x0", x0), ("noise", noise))
        _check_op_args(fn, model_output, alphas_cumprod, ("timesteps", timesteps), kind=("prediction", prediction, 3))

    def _check_step_op(fn: str, model_output, sample, noise, timesteps, prev_timesteps, alphas_cumprod, threshold,
                       kind, prediction, clip_sample_range, eta, final_alpha_cumprod) -> None:
        named = [("sample", sample), ("model_output", model_output)] + ([("noise", noise)] if noise is not None else [])
        _check_samples(fn, *named)
        _check_op_args(fn, sample, alphas_cumprod, ("timesteps", timesteps), ("prev_timesteps", prev_timesteps),
                       kind=("kind", kind, 2))
        _check_op_args(fn, sample, alphas_cumprod, kind=("prediction", prediction, 3))
        _check_step_args(fn, clip_sample_range, False, 0.0, 1.0, eta, final_alpha_cumprod)
        if threshold is not None:
            _check_threshold(fn, threshold, sample)

    _register_autograd("triton")


# ----------------------------------------------------------------------------- validation
def _check_samples(fn: str, *named) -> None:
    """Float tensors [N, ...] of one shape, dtype and device (the first one leads)."""
    for name, x in named:
        chk.tensor(fn, name, x, min_dim=1)
    chk.same_device(fn, *named)
    chk.same_dtype(fn, *named)
    chk.same_shape(fn, *named)


def _check_op_args(fn: str, like: Tensor, table, *timesteps, kind) -> None:
    """The checks the C++ ops make of their table, timestep and enum arguments, for the
    Triton ops: a wrong table or timestep shape would read out of bounds. Timestep values
    are not range-checked (the kernels clamp them, as on CUDA)."""
    _check_table(fn, table, like)
    for name, t in timesteps:
        if not isinstance(t, Tensor) or t.dtype not in (torch.int64, torch.int32):
            what = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{fn}: argument '{name}' must be an int64 or int32 tensor, got {what}")
        chk.same_device(fn, ("sample", like), (name, t))
        if tuple(t.shape) != (like.shape[0],):
            raise ValueError(f"{fn}: argument '{name}' must have shape [N] = [{like.shape[0]}] (one per sample), "
                             f"got {tuple(t.shape)}")
    name, value, n = kind
    if not 0 <= value < n:
        raise ValueError(f"{fn}: argument '{name}' must be in [0, {n - 1}], got {value}")


def _check_threshold(fn: str, q, sample: Tensor) -> None:
    if q.dtype != acc_dtype(sample.dtype):
        raise TypeError(f"{fn}: argument 'threshold' must be in the accumulation dtype ({acc_dtype(sample.dtype)}), "
                        f"got {q.dtype}")
    chk.same_device(fn, ("sample", sample), ("threshold", q))
    if tuple(q.shape) != (sample.shape[0],):
        raise ValueError(f"{fn}: argument 'threshold' must have shape [N] = [{sample.shape[0]}], got {tuple(q.shape)}")


def _check_table(fn: str, table, like: Tensor) -> None:
    if not isinstance(table, Tensor):
        raise TypeError(f"{fn}: argument 'alphas_cumprod' must be a torch.Tensor, got {type(table).__name__}")
    if table.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{fn}: argument 'alphas_cumprod' must be float32 (or float64), got {table.dtype}")
    if table.dim() != 1 or table.shape[0] == 0:
        raise ValueError(f"{fn}: argument 'alphas_cumprod' must be a non-empty 1-D table [T], got shape "
                         f"{tuple(table.shape)}")
    chk.same_device(fn, ("sample", like), ("alphas_cumprod", table))


def _timesteps(fn: str, name: str, t, like: Tensor, T: int, *, allow_negative: bool = False) -> Tensor:
    """Per-sample timesteps as an int tensor [N] on like's device. A Python int or a 0-dim
    tensor is broadcast to every sample. CPU tensors are range-checked: [0, T - 1]
    (prev timesteps may be negative: "final"). CUDA ones are not (that would sync)."""
    N = like.shape[0]
    if isinstance(t, int) and not isinstance(t, bool):
        if not (allow_negative or t >= 0) or t >= T:
            raise IndexError(f"{fn}: argument '{name}' is {t}, outside [{'-inf' if allow_negative else 0}, {T - 1}]")
        return torch.full((N,), t, dtype=torch.int64, device=like.device)
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: argument '{name}' must be an int or an integer tensor [N], got {type(t).__name__}")
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{fn}: argument '{name}' must be an int64 or int32 tensor, got {t.dtype}")
    chk.same_device(fn, ("sample", like), (name, t))
    if t.dim() == 0:
        t = t.expand(N)
    if t.shape != (N,):
        raise ValueError(f"{fn}: argument '{name}' must have shape [N] = [{N}] (one per sample), got {tuple(t.shape)}")
    if t.device.type == "cpu" and not torch.compiler.is_compiling() and t.numel():
        vals = t.tolist()  # one host copy of [N] ints: cheaper than reductions + .item()s
        lo, hi = min(vals), max(vals)
        if (lo < 0 and not allow_negative) or hi >= T:
            bad = lo if lo < 0 and not allow_negative else hi
            raise IndexError(f"{fn}: argument '{name}' has {bad}, outside [{'-inf' if allow_negative else 0}, "
                             f"{T - 1}] (alphas_cumprod has {T} entries)")
    return t


def _noise(fn: str, noise, generator, like: Tensor):
    if noise is not None:
        _check_samples(fn, ("sample", like), ("noise", noise))
        return noise
    gen_device = generator.device if generator is not None else like.device
    z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=gen_device)
    return z.to(like.device)


def _prediction(fn: str, prediction_type: str) -> int:
    chk.choice(fn, "prediction_type", prediction_type, PREDICTION_TYPES)
    return PREDICTION_TYPES.index(prediction_type)


# ----------------------------------------------------------------------------- public API
def make_schedule(num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> Tensor:
    """alphas_cumprod [num_train_timesteps] (float32, CPU) of a beta schedule: "linear",
    "scaled_linear" (linear in sqrt(beta), latent diffusion) or "squaredcos_cap_v2" (the
    GLIDE cosine schedule), identical to diffusers' schedulers. Move it to the samples'
    device once: every op indexes it there."""
    fn = "pykernels.make_schedule"
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
        raise TypeError(f"{fn}: argument 'num_train_timesteps' must be an int, got {type(num_train_timesteps).__name__}")
    chk.positive(fn, "num_train_timesteps", num_train_timesteps)
    chk.choice(fn, "beta_schedule", beta_schedule, BETA_SCHEDULES)
    if beta_schedule != "squaredcos_cap_v2":
        chk.positive(fn, "beta_start", beta_start)
        chk.positive(fn, "beta_end", beta_end)
        for name, beta in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not beta < 1:  # a beta >= 1 makes alpha = 1 - beta <= 0: a signed or NaN table
                raise ValueError(f"{fn}: argument '{name}' must be < 1, got {beta}")
    return ref.make_schedule(num_train_timesteps, beta_schedule, beta_start, beta_end)


def _mix(fn: str, x0: Tensor, noise: Tensor, timesteps, alphas_cumprod: Tensor, kind: int, backend) -> Tensor:
    _check_samples(fn, ("x0", x0), ("noise", noise))
    _check_table(fn, alphas_cumprod, x0)
    t = _timesteps(fn, "timesteps", timesteps, x0, alphas_cumprod.shape[0])
    name = backends.resolve(backend, x0.device, fn)
    if name == "reference":
        f = ref.add_noise if kind == KIND_ADD_NOISE else ref.get_velocity
        return f(x0, noise, t, alphas_cumprod)
    return op("diffusion_mix", name)(x0, noise, t, alphas_cumprod, kind)


@chk.autocast_rule("x0", "noise")
def add_noise(x0: Tensor, noise: Tensor, timesteps, alphas_cumprod: Tensor, *, backend: str | None = None) -> Tensor:
    """Forward diffusion: sqrt(a_t) x0 + sqrt(1 - a_t) noise, a_t = alphas_cumprod[t] per
    sample (timesteps [N], x0 and noise [N, ...]). Coefficients in float32 from the table
    (so an fp16 sample at t = 0 really gets noise); output in x0's dtype. Gradients to
    x0 and noise."""
    return _mix("pykernels.add_noise", x0, noise, timesteps, alphas_cumprod, KIND_ADD_NOISE, backend)


@chk.autocast_rule("x0", "noise")
def get_velocity(x0: Tensor, noise: Tensor, timesteps, alphas_cumprod: Tensor, *,
                 backend: str | None = None) -> Tensor:
    """The v-prediction target: sqrt(a_t) noise - sqrt(1 - a_t) x0, per sample."""
    return _mix("pykernels.get_velocity", x0, noise, timesteps, alphas_cumprod, KIND_VELOCITY, backend)


@chk.autocast_rule("model_output", "x0", "noise")
def diffusion_loss(model_output: Tensor, x0: Tensor, noise: Tensor, timesteps, alphas_cumprod: Tensor, *,
                   prediction_type: str = "epsilon", reduction: str = "mean", backend: str | None = None) -> Tensor:
    """Mean squared error of model_output against the training target (noise for
    "epsilon", x0 for "sample", the velocity for "v_prediction"), target and error in
    one pass. reduction "mean" / "sum" over every element, or "none" (per element).
    float32 (float64 for float64 inputs). Gradients to all three tensors."""
    fn = "pykernels.diffusion_loss"
    _check_samples(fn, ("model_output", model_output), ("x0", x0), ("noise", noise))
    pred = _prediction(fn, prediction_type)
    chk.choice(fn, "reduction", reduction, REDUCTIONS)
    _check_table(fn, alphas_cumprod, model_output)
    t = _timesteps(fn, "timesteps", timesteps, model_output, alphas_cumprod.shape[0])
    name = backends.resolve(backend, model_output.device, fn)
    if name == "reference":
        return ref.diffusion_loss(model_output, x0, noise, t, alphas_cumprod, prediction_type, reduction)
    out = op("diffusion_loss", name)(model_output, x0, noise, t, alphas_cumprod, pred, reduction == "none")
    if reduction == "none":
        return out
    return out.sum() / model_output.numel() if reduction == "mean" else out.sum()


def _threshold_operands(model_output: Tensor, sample: Tensor, noise: Tensor | None, thresholding: bool):
    """(model_output, sample, noise, dtype to round the outputs to or None) for a step.
    With thresholding, x0's gradient is the difference of the clip's path and the
    threshold's (through the quantile), each up to 1/sqrt(a) times the result (2e4 at
    a = 2.5e-9), and the two meet only at the inputs: rounded to half precision apart,
    their difference was lost (a gradient of 2.0 for 1.0). Where a half-precision
    gradient is taken, both paths run on one float32 copy of the inputs, so they meet and
    cancel in float32; the outputs are rounded back. Inference keeps the native dtype."""
    half = sample.dtype in (torch.float16, torch.bfloat16)
    if not (thresholding and half and torch.is_grad_enabled()
            and (model_output.requires_grad or sample.requires_grad)):
        return model_output, sample, noise, None
    return model_output.float(), sample.float(), None if noise is None else noise.float(), sample.dtype


def _step(name, model_output, sample, z, t, prev, alphas_cumprod, kind, pred, clip_sample, clip_sample_range,
          thresholding, ratio, max_value, eta=0.0, use_clipped=False, final=1.0):
    """The fused step of ddpm_step / ddim_step, with the dynamic threshold when asked."""
    m, s, z, out_dtype = _threshold_operands(model_output, sample, z, thresholding)
    q = _threshold(name, m, t, s, alphas_cumprod, pred, ratio, max_value) if thresholding else None
    out, x0 = op("diffusion_step", name)(m, s, z, t, prev, alphas_cumprod, q, kind, pred, bool(clip_sample),
                                         float(clip_sample_range), float(eta), bool(use_clipped), float(final))
    return (out, x0) if out_dtype is None else (out.to(out_dtype), x0.to(out_dtype))


def _threshold(name, model_output, t, sample, alphas_cumprod, pred, ratio, max_value):
    """Dynamic thresholding's per-sample limit clamp(quantile(|x0|, ratio), 1, max_value),
    differentiable: x0 comes from the fused op, the quantile from torch.quantile (a sort
    on the device, no host sync)."""
    x0 = op("diffusion_mix", name)(sample, model_output, t, alphas_cumprod, KIND_X0 + pred)
    N = sample.shape[0]
    return torch.quantile(x0.abs().reshape(N, -1), ratio, dim=1).clamp(1, max_value)


def _check_step_args(fn, clip_sample_range, thresholding, ratio, max_value, eta=0.0, final=1.0):
    chk.positive(fn, "clip_sample_range", clip_sample_range)
    if thresholding:
        if not 0 <= ratio <= 1:
            raise ValueError(f"{fn}: argument 'dynamic_thresholding_ratio' must be in [0, 1], got {ratio}")
        chk.positive(fn, "sample_max_value", max_value)
    if not eta >= 0:
        raise ValueError(f"{fn}: argument 'eta' must be >= 0, got {eta}")
    if not 0 < final <= 1:
        raise ValueError(f"{fn}: argument 'final_alpha_cumprod' must be in (0, 1], got {final}")


@chk.autocast_rule("model_output", "sample", "noise")
def ddpm_step(model_output: Tensor, timesteps, sample: Tensor, alphas_cumprod: Tensor, *,
              prev_timesteps=None, noise: Tensor | None = None, generator: torch.Generator | None = None,
              prediction_type: str = "epsilon", clip_sample: bool = True, clip_sample_range: float = 1.0,
              thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
              backend: str | None = None) -> tuple[Tensor, Tensor]:
    """One DDPM ancestral step per sample -> (prev_sample, pred_original_sample): the math
    of diffusers' DDPMScheduler.step with variance_type "fixed_small". prev_timesteps
    (default timesteps - 1, as diffusers' training schedule; pass the next entry of the
    inference schedule otherwise; < 0 means a' = 1). Samples at t = 0 get no noise
    (decided per sample on the device). noise=None draws randn (with `generator`).
    Differentiable w.r.t. model_output and sample."""
    fn = "pykernels.ddpm_step"
    _check_samples(fn, ("sample", sample), ("model_output", model_output))
    pred = _prediction(fn, prediction_type)
    _check_step_args(fn, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value)
    _check_table(fn, alphas_cumprod, sample)
    T = alphas_cumprod.shape[0]
    t = _timesteps(fn, "timesteps", timesteps, sample, T)
    prev = t - 1 if prev_timesteps is None else _timesteps(fn, "prev_timesteps", prev_timesteps, sample, T,
                                                            allow_negative=True)
    z = _noise(fn, noise, generator, sample)
    name = backends.resolve(backend, sample.device, fn)
    if name == "reference":
        return ref.ddpm_step(model_output, t, sample, alphas_cumprod, prev_timesteps=prev, noise=z,
                             prediction_type=prediction_type, clip_sample=clip_sample,
                             clip_sample_range=clip_sample_range, thresholding=thresholding,
                             dynamic_thresholding_ratio=dynamic_thresholding_ratio,
                             sample_max_value=sample_max_value)
    return _step(name, model_output, sample, z, t, prev, alphas_cumprod, DDPM, pred, clip_sample, clip_sample_range,
                 thresholding, dynamic_thresholding_ratio, sample_max_value)


@chk.autocast_rule("model_output", "sample", "noise")
def ddim_step(model_output: Tensor, timesteps, prev_timesteps, sample: Tensor, alphas_cumprod: Tensor, *,
              eta: float = 0.0, noise: Tensor | None = None, generator: torch.Generator | None = None,
              prediction_type: str = "epsilon", clip_sample: bool = False, clip_sample_range: float = 1.0,
              thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
              use_clipped_model_output: bool = False, final_alpha_cumprod: float = 1.0,
              backend: str | None = None) -> tuple[Tensor, Tensor]:
    """One DDIM step per sample -> (prev_sample, pred_original_sample): the math of
    diffusers' DDIMScheduler.step. prev_timesteps < 0 use final_alpha_cumprod. eta > 0
    adds eta * sigma_t noise (noise=None draws randn with `generator`); eta = 0 reads no
    noise. Differentiable w.r.t. model_output and sample."""
    fn = "pykernels.ddim_step"
    _check_samples(fn, ("sample", sample), ("model_output", model_output))
    pred = _prediction(fn, prediction_type)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)):
        raise TypeError(f"{fn}: argument 'eta' must be a number, got {type(eta).__name__}")
    _check_step_args(fn, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value,
                     eta, final_alpha_cumprod)
    _check_table(fn, alphas_cumprod, sample)
    T = alphas_cumprod.shape[0]
    t = _timesteps(fn, "timesteps", timesteps, sample, T)
    prev = _timesteps(fn, "prev_timesteps", prev_timesteps, sample, T, allow_negative=True)
    z = _noise(fn, noise, generator, sample) if eta > 0 else None
    name = backends.resolve(backend, sample.device, fn)
    if name == "reference":
        return ref.ddim_step(model_output, t, prev, sample, alphas_cumprod, eta=eta, noise=z,
                             prediction_type=prediction_type, clip_sample=clip_sample,
                             clip_sample_range=clip_sample_range, thresholding=thresholding,
                             dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value,
                             use_clipped_model_output=use_clipped_model_output,
                             final_alpha_cumprod=final_alpha_cumprod)
    return _step(name, model_output, sample, z, t, prev, alphas_cumprod, DDIM, pred, clip_sample, clip_sample_range,
                 thresholding, dynamic_thresholding_ratio, sample_max_value, eta, use_clipped_model_output,
                 final_alpha_cumprod)


# ----------------------------------------------------------------------------- self-check
_TABLE = None


def _table(device):
    global _TABLE
    if _TABLE is None:
        _TABLE = ref.make_schedule()
    return _TABLE.to(device)


def _rand_step(device, dtype):
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 4, 16, 16, generator=g).to(device=device, dtype=dtype).requires_grad_()
    s = torch.randn(4, 4, 16, 16, generator=g).to(device=device, dtype=dtype).requires_grad_()
    return m, s


SELFCHECK = [
    ("add_noise [4, 4, 16, 16]", _rand_step,
     lambda be, a, b: add_noise(a, b, torch.tensor([0, 1, 500, 999], device=a.device), _table(a.device), backend=be)),
    ("diffusion_loss v_prediction", _rand_step,
     lambda be, a, b: diffusion_loss(a, b, b.detach(), torch.tensor([0, 1, 500, 999], device=a.device),
                                     _table(a.device), prediction_type="v_prediction", backend=be)),
    ("ddim_step eta=0", _rand_step,
     lambda be, a, b: ddim_step(a, torch.tensor([999, 500, 20, 0], device=a.device),
                                torch.tensor([979, 480, 0, -20], device=a.device), b, _table(a.device),
                                backend=be)[0]),
]
