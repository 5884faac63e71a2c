"""Diffusion family: forward noising, velocity, training loss, DDPM / DDIM sampler steps.

Public functions validate, pick a backend, and call one op. Each op exists as
pykernels::<name> (C++: cpu, cuda) and pykernels::<name>_triton, with a <name>_backward
op; their fakes, autograd and Triton ops are registered below. The math is in
pykernels/reference/diffusion.py.

Below the ops, three kernels do the element work, each fed per-sample coefficients by a
function named after its op (csrc/common/diffusion_args.h, triton_kernels/diffusion.py):
  blend         out = cx x + cy y                       add_noise, get_velocity
  target_error  (m - (tx x0 + tn noise))^2              diffusion_loss
  sampler_step  x0, its clip, out = ox x0c + os s ...   ddpm_step, ddim_step
A new op with per-sample coefficients (flow matching's interpolation, an Euler step) adds
a coefficient function and an op, not a kernel.

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
from ._registry import op, register_autograd, register_cpp, triton_available

PREDICTION_TYPES = ref.PREDICTION_TYPES
REDUCTIONS = ("mean", "sum", "none")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# ----------------------------------------------------------------------------- checks
def _check_table(fn: str, table, like_name: str, like: Tensor) -> None:
    if not isinstance(table, Tensor):
        raise TypeError(
            f"{fn}: argument 'alphas_cumprod' must be a torch.Tensor, got {type(table).__name__}"
        )
    if table.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{fn}: argument 'alphas_cumprod' must be float32 (or float64), got {table.dtype}"
        )
    if table.dim() != 1 or table.shape[0] == 0:
        raise ValueError(
            f"{fn}: argument 'alphas_cumprod' must be a non-empty 1-D table [T], "
            f"got shape {tuple(table.shape)}"
        )
    chk.same_device(fn, (like_name, like), ("alphas_cumprod", table))


def _check_range(fn: str, name: str, t: Tensor, T: int, allow_negative: bool) -> None:
    """Timestep values of a CPU tensor in [0, T - 1] (prev timesteps: below T; negative
    means "final"). CUDA ones are not read (that would sync): the kernels clamp them."""
    if t.device.type != "cpu" or torch.compiler.is_compiling() or not t.numel():
        return
    vals = t.tolist()  # one host copy of [N] ints: cheaper than reductions + .item()s
    lo, hi = min(vals), max(vals)
    if (lo < 0 and not allow_negative) or hi >= T:
        bad = lo if lo < 0 and not allow_negative else hi
        lo_ok = "-inf" if allow_negative else 0
        raise IndexError(
            f"{fn}: argument '{name}' has {bad}, outside [{lo_ok}, {T - 1}] "
            f"(alphas_cumprod has {T} entries)"
        )


def _check_timesteps_op(fn: str, name: str, t, like_name: str, like: Tensor) -> None:
    """A Triton op's timesteps: an int64 or int32 tensor [N] on like's device. Their values
    are not read (a data-dependent check would not trace): the kernels clamp them into the
    table, as on CUDA; the public functions range-check CPU tensors."""
    if not isinstance(t, Tensor) or t.dtype not in (torch.int64, torch.int32):
        what = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{fn}: argument '{name}' must be an int64 or int32 tensor, got {what}")
    chk.same_device(fn, (like_name, like), (name, t))
    if tuple(t.shape) != (like.shape[0],):
        raise ValueError(
            f"{fn}: argument '{name}' must have shape [N] = [{like.shape[0]}] (one "
            f"per sample), got {tuple(t.shape)}"
        )


def _timesteps(
    fn: str,
    name: str,
    t,
    like: Tensor,
    T: int,
    *,
    allow_negative: bool = False,
    check_range: bool = True,
) -> Tensor:
    """Per-sample timesteps as an int tensor [N] on like's device. A Python int or a 0-dim
    tensor is broadcast to every sample. check_range: range-check CPU tensors here (the
    cpu backend's op checks them itself)."""
    N = like.shape[0]
    if isinstance(t, int) and not isinstance(t, bool):
        if not (allow_negative or t >= 0) or t >= T:
            lo_ok = "-inf" if allow_negative else 0
            raise IndexError(f"{fn}: argument '{name}' is {t}, outside [{lo_ok}, {T - 1}]")
        return torch.full((N,), t, dtype=torch.int64, device=like.device)
    if not isinstance(t, Tensor):
        raise TypeError(
            f"{fn}: argument '{name}' must be an int or an integer tensor [N], got "
            f"{type(t).__name__}"
        )
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{fn}: argument '{name}' must be an int64 or int32 tensor, got {t.dtype}")
    chk.same_device(fn, ("sample", like), (name, t))
    if t.dim() == 0:
        t = t.expand(N)
    if t.shape != (N,):
        raise ValueError(
            f"{fn}: argument '{name}' must have shape [N] = [{N}] (one per sample), "
            f"got {tuple(t.shape)}"
        )
    if check_range:
        _check_range(fn, name, t, T, allow_negative)
    return t


def _check_threshold(fn: str, q, sample: Tensor) -> None:
    if q.dtype != acc_dtype(sample.dtype):
        raise TypeError(
            f"{fn}: argument 'threshold' must be in the accumulation dtype "
            f"({acc_dtype(sample.dtype)}), got {q.dtype}"
        )
    chk.same_device(fn, ("sample", sample), ("threshold", q))
    if tuple(q.shape) != (sample.shape[0],):
        raise ValueError(
            f"{fn}: argument 'threshold' must have shape [N] = [{sample.shape[0]}], "
            f"got {tuple(q.shape)}"
        )


def _check_step_args(fn, clip_sample_range, thresholding, ratio, max_value, eta=0.0, final=1.0):
    chk.positive(fn, "clip_sample_range", clip_sample_range)
    if thresholding:
        if not 0 <= ratio <= 1:
            raise ValueError(
                f"{fn}: argument 'dynamic_thresholding_ratio' must be in [0, 1], got {ratio}"
            )
        chk.positive(fn, "sample_max_value", max_value)
    if not eta >= 0:
        raise ValueError(f"{fn}: argument 'eta' must be >= 0, got {eta}")
    if not 0 < final <= 1:
        raise ValueError(f"{fn}: argument 'final_alpha_cumprod' must be in (0, 1], got {final}")


def _check_step(fn, model_output, sample, prediction_type, *step_args, eta=0.0, final=1.0):
    """The public step functions' checks; step_args: clip_sample_range, thresholding,
    dynamic_thresholding_ratio, sample_max_value."""
    chk.samples(fn, ("sample", sample), ("model_output", model_output))
    chk.choice(fn, "prediction_type", prediction_type, PREDICTION_TYPES)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)):
        raise TypeError(f"{fn}: argument 'eta' must be a number, got {type(eta).__name__}")
    _check_step_args(fn, *step_args, eta, final)


def _check_step_op(
    fn: str,
    model_output,
    timesteps,
    prev_timesteps,
    sample,
    alphas_cumprod,
    noise,
    threshold,
    prediction_type,
    clip_sample_range,
    eta=0.0,
    final_alpha_cumprod=1.0,
) -> None:
    """The checks the C++ step ops make, for the Triton ops and their backward ops (noise
    None there): a wrong table or timestep shape would read out of bounds."""
    chk.samples(
        fn,
        ("sample", sample),
        ("model_output", model_output),
        *([("noise", noise)] if noise is not None else []),
    )
    chk.choice(fn, "prediction_type", prediction_type, PREDICTION_TYPES)
    _check_step_args(fn, clip_sample_range, False, 0.0, 1.0, eta, final_alpha_cumprod)
    _check_table(fn, alphas_cumprod, "sample", sample)
    _check_timesteps_op(fn, "timesteps", timesteps, "sample", sample)
    _check_timesteps_op(fn, "prev_timesteps", prev_timesteps, "sample", sample)
    if threshold is not None:
        _check_threshold(fn, threshold, sample)


def _check_step_grads(fn: str, sample, grad_prev_sample, grad_pred_original_sample) -> None:
    """A step's upstream gradients: like the sample, dtype included (as the C++ ops)."""
    chk.samples(
        fn,
        ("sample", sample),
        ("grad_prev_sample", grad_prev_sample),
        ("grad_pred_original_sample", grad_pred_original_sample),
    )


# ----------------------------------------------------------------------------- fakes
def _blend_fake(x0, noise, timesteps, alphas_cumprod):
    return torch.empty_like(x0, memory_format=torch.contiguous_format)


def _blend_backward_fake(grad, timesteps, alphas_cumprod):
    return (
        torch.empty_like(grad, memory_format=torch.contiguous_format),
        torch.empty_like(grad, memory_format=torch.contiguous_format),
    )


def _loss_fake(model_output, x0, noise, timesteps, alphas_cumprod, prediction_type, reduction):
    shape = model_output.shape if reduction == "none" else ()
    return model_output.new_empty(shape, dtype=acc_dtype(model_output.dtype))


def _loss_backward_fake(grad, model_output, *args):
    return tuple(model_output.new_empty(model_output.shape if want else (0,)) for want in args[-1])


def _step_fake(model_output, *args):
    return model_output.new_empty(model_output.shape), model_output.new_empty(model_output.shape)


def _step_grads_fake(model_output, threshold):
    n = model_output.shape[0] if threshold is not None else 0
    return (
        model_output.new_empty(model_output.shape),
        model_output.new_empty(model_output.shape),
        model_output.new_empty((n,), dtype=acc_dtype(model_output.dtype)),
    )


def _ddpm_step_backward_fake(
    grad_prev_sample,
    grad_pred_original_sample,
    model_output,
    timesteps,
    sample,
    alphas_cumprod,
    prev_timesteps,
    threshold,
    *args,
):
    return _step_grads_fake(model_output, threshold)


def _ddim_step_backward_fake(
    grad_prev_sample,
    grad_pred_original_sample,
    model_output,
    timesteps,
    prev_timesteps,
    sample,
    alphas_cumprod,
    eta,
    threshold,
    *args,
):
    return _step_grads_fake(model_output, threshold)


for _name, _fake, _backward_fake in (
    ("add_noise", _blend_fake, _blend_backward_fake),
    ("get_velocity", _blend_fake, _blend_backward_fake),
    ("diffusion_loss", _loss_fake, _loss_backward_fake),
    ("ddpm_step", _step_fake, _ddpm_step_backward_fake),
    ("ddim_step", _step_fake, _ddim_step_backward_fake),
):
    register_cpp(_name, _fake, _backward_fake)

# ----------------------------------------------------------------------------- Triton ops
if triton_available():
    from torch.library import triton_op

    from ..triton_kernels import diffusion as tk

    def _check_blend_op(fn: str, x0, noise, timesteps, alphas_cumprod) -> None:
        chk.samples(fn, ("x0", x0), ("noise", noise))
        _check_table(fn, alphas_cumprod, "x0", x0)
        _check_timesteps_op(fn, "timesteps", timesteps, "x0", x0)

    def _check_blend_backward_op(fn: str, grad, timesteps, alphas_cumprod) -> None:
        chk.samples(fn, ("grad", grad))
        _check_table(fn, alphas_cumprod, "grad", grad)
        _check_timesteps_op(fn, "timesteps", timesteps, "grad", grad)

    def _define_blend_ops(name: str) -> None:
        """The Triton ops of add_noise or get_velocity (`name`): the blend kernel with that
        op's coefficients, and its backward."""
        fn, fn_backward = f"pykernels::{name}_triton", f"pykernels::{name}_backward_triton"

        @triton_op(fn, mutates_args=())
        def forward(x0: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
            _check_blend_op(fn, x0, noise, timesteps, alphas_cumprod)
            return tk.blend(x0, noise, timesteps, alphas_cumprod, name)

        @triton_op(fn_backward, mutates_args=())
        def backward(
            grad: Tensor, timesteps: Tensor, alphas_cumprod: Tensor
        ) -> tuple[Tensor, Tensor]:
            _check_blend_backward_op(fn_backward, grad, timesteps, alphas_cumprod)
            return tk.blend_backward(grad, timesteps, alphas_cumprod, name)

    for _name in ("add_noise", "get_velocity"):
        _define_blend_ops(_name)

    def _check_loss_op(
        fn: str, model_output, x0, noise, timesteps, alphas_cumprod, prediction_type, reduction
    ) -> None:
        chk.samples(fn, ("model_output", model_output), ("x0", x0), ("noise", noise))
        chk.choice(fn, "prediction_type", prediction_type, PREDICTION_TYPES)
        chk.choice(fn, "reduction", reduction, REDUCTIONS)
        _check_table(fn, alphas_cumprod, "model_output", model_output)
        _check_timesteps_op(fn, "timesteps", timesteps, "model_output", model_output)

    @triton_op("pykernels::diffusion_loss_triton", mutates_args=())
    def _diffusion_loss_triton(
        model_output: Tensor,
        x0: Tensor,
        noise: Tensor,
        timesteps: Tensor,
        alphas_cumprod: Tensor,
        prediction_type: str,
        reduction: str,
    ) -> Tensor:
        _check_loss_op(
            "pykernels::diffusion_loss_triton",
            model_output,
            x0,
            noise,
            timesteps,
            alphas_cumprod,
            prediction_type,
            reduction,
        )
        return tk.diffusion_loss(
            model_output, x0, noise, timesteps, alphas_cumprod, prediction_type, reduction
        )

    @triton_op("pykernels::diffusion_loss_backward_triton", mutates_args=())
    def _diffusion_loss_backward_triton(
        grad: Tensor,
        model_output: Tensor,
        x0: Tensor,
        noise: Tensor,
        timesteps: Tensor,
        alphas_cumprod: Tensor,
        prediction_type: str,
        reduction: str,
        output_mask: list[bool],
    ) -> tuple[Tensor, Tensor, Tensor]:
        fn = "pykernels::diffusion_loss_backward_triton"
        _check_loss_op(
            fn, model_output, x0, noise, timesteps, alphas_cumprod, prediction_type, reduction
        )
        chk.grad(fn, grad, model_output.shape if reduction == "none" else (), model_output)
        if len(output_mask) != 3:
            # The C++ op's schema (bool[3]) refuses it in PyTorch's argument parser: a
            # RuntimeError too.
            raise RuntimeError(
                f"{fn}: argument 'output_mask' must have 3 elements (one per "
                f"input), got {len(output_mask)}"
            )
        return tk.diffusion_loss_backward(
            grad,
            model_output,
            x0,
            noise,
            timesteps,
            alphas_cumprod,
            prediction_type,
            reduction,
            output_mask,
        )

    def _sampler_step(fn, m, t, prev, s, alphas_cumprod, noise, threshold, params):
        """A step op's checks (those of the C++ op), then its kernel."""
        p = params
        _check_step_op(
            fn,
            m,
            t,
            prev,
            s,
            alphas_cumprod,
            noise,
            threshold,
            p.prediction_type,
            p.clip_sample_range,
            p.eta,
            p.final_alpha_cumprod,
        )
        return tk.sampler_step(m, t, prev, s, alphas_cumprod, noise, threshold, params)

    def _sampler_step_backward(fn, grads, m, t, prev, s, alphas_cumprod, threshold, params):
        """A step backward op's checks, then its kernel; grads: (grad_prev_sample,
        grad_pred_original_sample)."""
        p = params
        _check_step_op(
            fn,
            m,
            t,
            prev,
            s,
            alphas_cumprod,
            None,
            threshold,
            p.prediction_type,
            p.clip_sample_range,
            p.eta,
            p.final_alpha_cumprod,
        )
        _check_step_grads(fn, s, *grads)
        return tk.sampler_step_backward(*grads, m, t, prev, s, alphas_cumprod, threshold, params)

    @triton_op("pykernels::ddpm_step_triton", mutates_args=())
    def _ddpm_step_triton(
        model_output: Tensor,
        timesteps: Tensor,
        sample: Tensor,
        alphas_cumprod: Tensor,
        prev_timesteps: Tensor,
        noise: Tensor | None,
        threshold: Tensor | None,
        prediction_type: str,
        clip_sample: bool,
        clip_sample_range: float,
    ) -> tuple[Tensor, Tensor]:
        return _sampler_step(
            "pykernels::ddpm_step_triton",
            model_output,
            timesteps,
            prev_timesteps,
            sample,
            alphas_cumprod,
            noise,
            threshold,
            tk.StepParams(False, prediction_type, clip_sample, clip_sample_range),
        )

    @triton_op("pykernels::ddpm_step_backward_triton", mutates_args=())
    def _ddpm_step_backward_triton(
        grad_prev_sample: Tensor,
        grad_pred_original_sample: Tensor,
        model_output: Tensor,
        timesteps: Tensor,
        sample: Tensor,
        alphas_cumprod: Tensor,
        prev_timesteps: Tensor,
        threshold: Tensor | None,
        prediction_type: str,
        clip_sample: bool,
        clip_sample_range: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        return _sampler_step_backward(
            "pykernels::ddpm_step_backward_triton",
            (grad_prev_sample, grad_pred_original_sample),
            model_output,
            timesteps,
            prev_timesteps,
            sample,
            alphas_cumprod,
            threshold,
            tk.StepParams(False, prediction_type, clip_sample, clip_sample_range),
        )

    def _ddim_params(
        prediction_type, clip_sample, clip_sample_range, eta, use_clipped, final_alpha_cumprod
    ):
        return tk.StepParams(
            True,
            prediction_type,
            clip_sample,
            clip_sample_range,
            eta,
            use_clipped,
            final_alpha_cumprod,
        )

    @triton_op("pykernels::ddim_step_triton", mutates_args=())
    def _ddim_step_triton(
        model_output: Tensor,
        timesteps: Tensor,
        prev_timesteps: Tensor,
        sample: Tensor,
        alphas_cumprod: Tensor,
        eta: float,
        noise: Tensor | None,
        threshold: Tensor | None,
        prediction_type: str,
        clip_sample: bool,
        clip_sample_range: float,
        use_clipped_model_output: bool,
        final_alpha_cumprod: float,
    ) -> tuple[Tensor, Tensor]:
        params = _ddim_params(
            prediction_type,
            clip_sample,
            clip_sample_range,
            eta,
            use_clipped_model_output,
            final_alpha_cumprod,
        )
        return _sampler_step(
            "pykernels::ddim_step_triton",
            model_output,
            timesteps,
            prev_timesteps,
            sample,
            alphas_cumprod,
            noise,
            threshold,
            params,
        )

    @triton_op("pykernels::ddim_step_backward_triton", mutates_args=())
    def _ddim_step_backward_triton(
        grad_prev_sample: Tensor,
        grad_pred_original_sample: Tensor,
        model_output: Tensor,
        timesteps: Tensor,
        prev_timesteps: Tensor,
        sample: Tensor,
        alphas_cumprod: Tensor,
        eta: float,
        threshold: Tensor | None,
        prediction_type: str,
        clip_sample: bool,
        clip_sample_range: float,
        use_clipped_model_output: bool,
        final_alpha_cumprod: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        params = _ddim_params(
            prediction_type,
            clip_sample,
            clip_sample_range,
            eta,
            use_clipped_model_output,
            final_alpha_cumprod,
        )
        return _sampler_step_backward(
            "pykernels::ddim_step_backward_triton",
            (grad_prev_sample, grad_pred_original_sample),
            model_output,
            timesteps,
            prev_timesteps,
            sample,
            alphas_cumprod,
            threshold,
            params,
        )


# ----------------------------------------------------------------------------- autograd
def _blend_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2], inputs[3])


def _blend_backward(name):
    def backward(ops, ctx, grad):
        timesteps, alphas_cumprod = ctx.saved_tensors
        grad_x0, grad_noise = ops(name + "_backward")(grad, timesteps, alphas_cumprod)
        return grad_x0, grad_noise, None, None

    return backward


def _loss_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.args = inputs[5:]


def _loss_backward(ops, ctx, grad):
    # Only the gradients autograd needs (usually model_output's alone) are computed.
    mask = list(ctx.needs_input_grad[:3])
    g = ops("diffusion_loss_backward")(grad, *ctx.saved_tensors, *ctx.args, mask)
    return tuple(gi if want else None for gi, want in zip(g, mask)) + (None,) * 4


def _register_step_autograd(name: str, sample: int, noise: int, threshold: int) -> None:
    """A step's autograd. Its backward op takes the two upstream gradients, then the
    forward's arguments without the noise; gradients go to model_output (argument 0), the
    sample and the threshold (arguments `sample`, `threshold` of the forward)."""

    def setup(ctx, inputs, output):
        args = [a for i, a in enumerate(inputs) if i != noise]
        ctx.slots = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        ctx.save_for_backward(*(args[i] for i in ctx.slots))
        ctx.args = [None if i in ctx.slots else a for i, a in enumerate(args)]
        ctx.n_inputs, ctx.has_threshold = len(inputs), inputs[threshold] is not None

    def backward(ops, ctx, grad_prev_sample, grad_pred_original_sample):
        args = list(ctx.args)
        for i, t in zip(ctx.slots, ctx.saved_tensors):
            args[i] = t
        grad_m, grad_s, grad_q = ops(name + "_backward")(
            grad_prev_sample, grad_pred_original_sample, *args
        )
        grads = [None] * ctx.n_inputs
        grads[0], grads[sample] = grad_m, grad_s
        if ctx.has_threshold:
            grads[threshold] = grad_q
        return tuple(grads)

    register_autograd(name, setup, backward)


for _name in ("add_noise", "get_velocity"):
    register_autograd(_name, _blend_setup, _blend_backward(_name))
register_autograd("diffusion_loss", _loss_setup, _loss_backward)
_register_step_autograd("ddpm_step", sample=2, noise=5, threshold=6)
_register_step_autograd("ddim_step", sample=3, noise=6, threshold=7)


# ----------------------------------------------------------------------------- public API
def make_schedule(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Tensor:
    """alphas_cumprod [num_train_timesteps] (float32, CPU) of a beta schedule: "linear",
    "scaled_linear" (linear in sqrt(beta), latent diffusion) or "squaredcos_cap_v2" (the
    GLIDE cosine schedule), identical to diffusers' schedulers. Move it to the samples'
    device once: every op indexes it there."""
    fn = "pykernels.make_schedule"
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
        raise TypeError(
            f"{fn}: argument 'num_train_timesteps' must be an int, got "
            f"{type(num_train_timesteps).__name__}"
        )
    chk.positive(fn, "num_train_timesteps", num_train_timesteps)
    chk.choice(fn, "beta_schedule", beta_schedule, BETA_SCHEDULES)
    if beta_schedule != "squaredcos_cap_v2":
        chk.positive(fn, "beta_start", beta_start)
        chk.positive(fn, "beta_end", beta_end)
        for name, beta in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not beta < 1:  # a beta >= 1 makes alpha = 1 - beta <= 0: a signed or NaN table
                raise ValueError(f"{fn}: argument '{name}' must be < 1, got {beta}")
    return ref.make_schedule(num_train_timesteps, beta_schedule, beta_start, beta_end)


def _resolve(
    fn: str, backend, like: Tensor, alphas_cumprod, *timesteps
) -> tuple[str, list[Tensor]]:
    """(backend, the timesteps as int tensors [N]): (name, value, allow_negative) triples.
    The cpu backend's ops range-check CPU timesteps themselves."""
    _check_table(fn, alphas_cumprod, "sample", like)
    name = backends.resolve(backend, like.device, fn)
    T = alphas_cumprod.shape[0]
    return name, [
        _timesteps(fn, n, t, like, T, allow_negative=neg, check_range=name != "cpu")
        for n, t, neg in timesteps
    ]


def _blend(
    fn: str, x0: Tensor, noise: Tensor, timesteps, alphas_cumprod: Tensor, backend
) -> Tensor:
    chk.samples(fn, ("x0", x0), ("noise", noise))
    name, (t,) = _resolve(fn, backend, x0, alphas_cumprod, ("timesteps", timesteps, False))
    if name == "reference":
        return getattr(ref, fn.split(".")[-1])(x0, noise, t, alphas_cumprod)
    return op(fn.split(".")[-1], name)(x0, noise, t, alphas_cumprod)


@chk.autocast_rule("x0", "noise")
def add_noise(
    x0: Tensor, noise: Tensor, timesteps, alphas_cumprod: Tensor, *, backend: str | None = None
) -> Tensor:
    """Forward diffusion: sqrt(a_t) x0 + sqrt(1 - a_t) noise, a_t = alphas_cumprod[t] per
    sample (timesteps [N], x0 and noise [N, ...]). Coefficients in float32 from the table
    (so an fp16 sample at t = 0 really gets noise); output in x0's dtype. Gradients to
    x0 and noise."""
    return _blend("pykernels.add_noise", x0, noise, timesteps, alphas_cumprod, backend)


@chk.autocast_rule("x0", "noise")
def get_velocity(
    x0: Tensor, noise: Tensor, timesteps, alphas_cumprod: Tensor, *, backend: str | None = None
) -> Tensor:
    """The v-prediction target: sqrt(a_t) noise - sqrt(1 - a_t) x0, per sample."""
    return _blend("pykernels.get_velocity", x0, noise, timesteps, alphas_cumprod, backend)


@chk.autocast_rule("model_output", "x0", "noise")
def diffusion_loss(
    model_output: Tensor,
    x0: Tensor,
    noise: Tensor,
    timesteps,
    alphas_cumprod: Tensor,
    *,
    prediction_type: str = "epsilon",
    reduction: str = "mean",
    backend: str | None = None,
) -> Tensor:
    """Mean squared error of model_output against the training target (noise for
    "epsilon", x0 for "sample", the velocity for "v_prediction"), target and error in
    one pass. reduction "mean" / "sum" over every element, or "none" (per element).
    float32 (float64 for float64 inputs). Gradients to all three tensors."""
    fn = "pykernels.diffusion_loss"
    chk.samples(fn, ("model_output", model_output), ("x0", x0), ("noise", noise))
    chk.choice(fn, "prediction_type", prediction_type, PREDICTION_TYPES)
    chk.choice(fn, "reduction", reduction, REDUCTIONS)
    name, (t,) = _resolve(
        fn, backend, model_output, alphas_cumprod, ("timesteps", timesteps, False)
    )
    if name == "reference":
        return ref.diffusion_loss(
            model_output, x0, noise, t, alphas_cumprod, prediction_type, reduction
        )
    return op("diffusion_loss", name)(
        model_output, x0, noise, t, alphas_cumprod, prediction_type, reduction
    )


def _noise(fn: str, noise, generator, like: Tensor):
    if noise is not None:
        chk.samples(fn, ("sample", like), ("noise", noise))
        return noise
    gen_device = generator.device if generator is not None else like.device
    z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=gen_device)
    return z.to(like.device)


def _threshold_operands(
    model_output: Tensor, sample: Tensor, noise: Tensor | None, thresholding: bool
):
    """(model_output, sample, noise, dtype to round the outputs to or None) for a step.
    With thresholding, x0's gradient is the difference of the clip's path and the
    threshold's (through the quantile), each up to 1/sqrt(a) times the result (2e4 at
    a = 2.5e-9), and the two meet only at the inputs: rounded to half precision apart,
    their difference is lost (a gradient of 2.0 for 1.0, where PyTorch's own float16
    composition is 2.4e-3 off). Where a half-precision gradient is taken, both paths run
    on one float32 copy of the inputs, so they meet and cancel in float32; the outputs are
    rounded back (test_threshold_gradient_in_half_precision_at_high_noise). Inference keeps
    the native dtype."""
    half = sample.dtype in (torch.float16, torch.bfloat16)
    if not (
        thresholding
        and half
        and torch.is_grad_enabled()
        and (model_output.requires_grad or sample.requires_grad)
    ):
        return model_output, sample, noise, None
    z = None if noise is None else noise.float()
    return model_output.float(), sample.float(), z, sample.dtype


def _fused_step(
    model_output, sample, noise, timesteps, alphas_cumprod, prediction_type, thresh, call
):
    """A step on a fused backend: call(model_output, sample, noise, threshold) runs its op,
    with the dynamic threshold when asked (in float32 where _threshold_operands says so).
    thresh: (thresholding, dynamic_thresholding_ratio, sample_max_value)."""
    thresholding, ratio, max_value = thresh
    m, s, z, out_dtype = _threshold_operands(model_output, sample, noise, thresholding)
    q = (
        _threshold(m, timesteps, s, alphas_cumprod, prediction_type, ratio, max_value)
        if thresholding
        else None
    )
    out = call(m, s, z, q)
    return out if out_dtype is None else tuple(o.to(out_dtype) for o in out)


def _threshold(model_output, timesteps, sample, alphas_cumprod, prediction_type, ratio, max_value):
    """Dynamic thresholding's per-sample limit clamp(quantile(|x0|, ratio), 1, max_value),
    differentiable: x0 from the reference's formula, the quantile from torch.quantile (a
    sort on the device, no host sync)."""
    x0 = ref.predicted_x0(model_output, timesteps, sample, alphas_cumprod, prediction_type)
    return torch.quantile(x0.abs().reshape(sample.shape[0], -1), ratio, dim=1).clamp(1, max_value)


@chk.autocast_rule("model_output", "sample", "noise")
def ddpm_step(
    model_output: Tensor,
    timesteps,
    sample: Tensor,
    alphas_cumprod: Tensor,
    *,
    prev_timesteps=None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
    clip_sample: bool = True,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One DDPM ancestral step per sample -> (prev_sample, pred_original_sample): the math
    of diffusers' DDPMScheduler.step with variance_type "fixed_small". prev_timesteps
    (default timesteps - 1, as diffusers' training schedule; pass the next entry of the
    inference schedule otherwise; < 0 means a' = 1). Samples at t = 0 get no noise
    (decided per sample on the device). noise=None draws randn (with `generator`).
    Differentiable w.r.t. model_output and sample."""
    fn = "pykernels.ddpm_step"
    thresh = (thresholding, dynamic_thresholding_ratio, sample_max_value)
    _check_step(fn, model_output, sample, prediction_type, clip_sample_range, *thresh)
    given_prev = [] if prev_timesteps is None else [("prev_timesteps", prev_timesteps, True)]
    name, ts = _resolve(
        fn, backend, sample, alphas_cumprod, ("timesteps", timesteps, False), *given_prev
    )
    t, prev = ts[0], ts[1] if given_prev else ts[0] - 1
    z = _noise(fn, noise, generator, sample)
    if name == "reference":
        return ref.ddpm_step(
            model_output,
            t,
            sample,
            alphas_cumprod,
            prev_timesteps=prev,
            noise=z,
            prediction_type=prediction_type,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
        )
    clip = (bool(clip_sample), float(clip_sample_range))

    def call(m, s, z, q):
        return op("ddpm_step", name)(m, t, s, alphas_cumprod, prev, z, q, prediction_type, *clip)

    return _fused_step(model_output, sample, z, t, alphas_cumprod, prediction_type, thresh, call)


@chk.autocast_rule("model_output", "sample", "noise")
def ddim_step(
    model_output: Tensor,
    timesteps,
    prev_timesteps,
    sample: Tensor,
    alphas_cumprod: Tensor,
    *,
    eta: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    use_clipped_model_output: bool = False,
    final_alpha_cumprod: float = 1.0,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One DDIM step per sample -> (prev_sample, pred_original_sample): the math of
    diffusers' DDIMScheduler.step. prev_timesteps < 0 use final_alpha_cumprod. eta > 0
    adds eta * sigma_t noise (noise=None draws randn with `generator`); eta = 0 reads no
    noise. Differentiable w.r.t. model_output and sample."""
    fn = "pykernels.ddim_step"
    thresh = (thresholding, dynamic_thresholding_ratio, sample_max_value)
    _check_step(
        fn,
        model_output,
        sample,
        prediction_type,
        clip_sample_range,
        *thresh,
        eta=eta,
        final=final_alpha_cumprod,
    )
    name, (t, prev) = _resolve(
        fn,
        backend,
        sample,
        alphas_cumprod,
        ("timesteps", timesteps, False),
        ("prev_timesteps", prev_timesteps, True),
    )
    z = _noise(fn, noise, generator, sample) if eta > 0 else None
    if name == "reference":
        return ref.ddim_step(
            model_output,
            t,
            prev,
            sample,
            alphas_cumprod,
            eta=eta,
            noise=z,
            prediction_type=prediction_type,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
            use_clipped_model_output=use_clipped_model_output,
            final_alpha_cumprod=final_alpha_cumprod,
        )
    flags = (prediction_type, bool(clip_sample), float(clip_sample_range))
    ddim = (bool(use_clipped_model_output), float(final_alpha_cumprod))

    def call(m, s, z, q):
        return op("ddim_step", name)(m, t, prev, s, alphas_cumprod, float(eta), z, q, *flags, *ddim)

    return _fused_step(model_output, sample, z, t, alphas_cumprod, prediction_type, thresh, call)
