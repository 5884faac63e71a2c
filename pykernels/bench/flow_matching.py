"""Flow-matching family cases: the training step's interpolation and loss (forward and
backward), flow_interpolate alone, one flow-match Euler step and a 28-step sampling loop
around a no-op model, against diffusers' training-script composition (the eager rows:
train_dreambooth_sd3.py's operations in plain PyTorch) and diffusers'
FlowMatchEulerDiscreteScheduler.step.

Noise levels are drawn as SD3 trains (logit-normal timesteps, shift 3.0), one per
sample; the self-check size includes sigma = 0 and 1. The sampler cases use the
scheduler's 28-step schedule with shift 3.0: diffusers' step takes one timestep per
batch, so every sample steps from the same sigma.
"""

from __future__ import annotations

import math

import torch

import pykernels as pk
from pykernels.reference import flow_matching as ref

from .case import Case, Point, randn, roofline, speedup, tensor_bytes

# (N, C, S): samples [N, C, S, S]
SAMPLES = {
    "tiny": (3, 2, 4),
    "small": (4, 2, 8),
    "check": (4, 4, 16),
    "quick": (32, 16, 32),
    "full": (64, 16, 64),
    "gpu_quick": (64, 16, 128),
    "gpu": (256, 16, 128),
}
CHECK_SIGMAS = (0.0, 0.3, 0.7, 1.0)
SHIFT, STEPS, STEP = 3.0, 28, 5  # SD3's scheduler config; the single-step case's step
# The constructor's smallest sigma, read once as a Python float: building the inputs as fake
# tensors (`bench --list`) must not read a tensor's value (test_bench_list_runs_without_data).
SMALLEST_SIGMA = float(ref.shifted_schedule(1000, SHIFT)[1][-1])


def _sigmas(N, size, gen, device):
    if size == "check":
        return torch.tensor(CHECK_SIGMAS, device=device)
    return pk.sample_flow_timesteps(N, shift=SHIFT, generator=gen)[1].to(device)


def _training(dtype, device, size, gen):
    N, C, S = SAMPLES[size]
    return {
        "model_output": randn((N, C, S, S), dtype, device, gen),
        "x0": randn((N, C, S, S), dtype, device, gen),
        "noise": randn((N, C, S, S), dtype, device, gen),
        "sigmas": _sigmas(N, size, gen, device),
    }


def _interpolate(dtype, device, size, gen):
    d = _training(dtype, device, size, gen)
    del d["model_output"]
    return d


def sampling_schedule(device=None) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler(shift=3.0).set_timesteps(28)'s sigmas [29], float32:
    28 levels evenly spaced from the constructor's largest to its smallest sigma, shifted
    once more, and a final 0."""
    s = torch.linspace(1.0, SMALLEST_SIGMA, STEPS, dtype=torch.float64)
    s = SHIFT * s / (1 + (SHIFT - 1) * s)
    return torch.cat([s.float(), torch.zeros(1)]).to(device)


def _step(dtype, device, size, gen):
    N, C, S = SAMPLES[size]
    schedule = sampling_schedule(device)
    d = {
        "model_output": randn((N, C, S, S), dtype, device, gen),
        "sample": randn((N, C, S, S), dtype, device, gen),
    }
    if size == "check":  # a different step per sample, both ends included
        d["sigmas"] = schedule[torch.tensor([0, 9, 18, 27], device=device)]
        d["sigmas_next"] = schedule[torch.tensor([1, 10, 19, 28], device=device)]
    else:
        d["sigmas"], d["sigmas_next"] = schedule[STEP].expand(N), schedule[STEP + 1].expand(N)
    return d


def _loop(dtype, device, size, gen):
    N, C, S = SAMPLES[size]
    return {
        "sample": randn((N, C, S, S), dtype, device, gen),
        "schedule": sampling_schedule(device),
    }


# ----------------------------------------------------------------------------- the script's code
@torch.compiler.disable
def _no_op_model(x):
    """The model, returning its input. torch.compile does not trace it: a real model
    stands between the interpolation and the loss, and between two sampling steps, so
    compile may not fuse the arithmetic across it into fewer passes."""
    return x


def _per_sample(sigmas, like):
    """get_sigmas: the noise levels in the samples' dtype, [N, 1, 1, 1]."""
    return sigmas.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def _sd3_step(model_output, x0, noise, sigmas):
    """train_dreambooth_sd3.py (--weighting_scheme logit_normal): the noisy input, the
    weighting (ones), the float32 MSE per sample, then over the batch."""
    sig = _per_sample(sigmas, x0)
    noisy = (1.0 - sig) * x0 + sig * noise
    model_output = _no_op_model(model_output)  # model(noisy)
    weighting = torch.ones_like(sig)
    target = noise - x0
    err = weighting.float() * (model_output.float() - target.float()) ** 2
    return noisy, torch.mean(err.reshape(x0.shape[0], -1), 1).mean()


def _sd3_step_cosmap_preconditioned(model_output, x0, noise, sigmas):
    """The same with --weighting_scheme cosmap --precondition_outputs."""
    sig = _per_sample(sigmas, x0)
    noisy = (1.0 - sig) * x0 + sig * noise
    pred = _no_op_model(model_output) * (-sig) + noisy
    weighting = 2 / (math.pi * (1 - 2 * sig + 2 * sig**2))
    err = weighting.float() * (pred.float() - x0.float()) ** 2
    return noisy, torch.mean(err.reshape(x0.shape[0], -1), 1).mean()


def _interpolate_eager(x0, noise, sigmas):
    sig = _per_sample(sigmas, x0)
    return (1.0 - sig) * x0 + sig * noise


def _euler_eager(model_output, sample, sigmas, sigmas_next):
    """FlowMatchEulerDiscreteScheduler.step: the sample in float32, dt times the model
    output, cast back to the model output's dtype."""
    dt = (sigmas_next - sigmas).reshape(-1, *([1] * (sample.dim() - 1)))
    return (sample.to(torch.float32) + dt * model_output).to(model_output.dtype)


def _loop_eager(sample, schedule):
    x = sample
    for i in range(STEPS):
        x = (x.to(torch.float32) + (schedule[i + 1] - schedule[i]) * _no_op_model(x)).to(x.dtype)
    return x


# ----------------------------------------------------------------------------- pykernels
def _pk_step(be, model_output, x0, noise, sigmas, **options):
    noisy = pk.flow_interpolate(x0, noise, sigmas, backend=be)
    model_output = _no_op_model(model_output)
    return noisy, pk.flow_matching_loss(model_output, x0, noise, sigmas, backend=be, **options)


def _pk_step_cosmap_preconditioned(be, model_output, x0, noise, sigmas):
    return _pk_step(
        be, model_output, x0, noise, sigmas, weighting_scheme="cosmap", precondition_outputs=True
    )


def _pk_euler(be, model_output, sample, sigmas, sigmas_next):
    return pk.flow_match_euler_step(model_output, sample, sigmas, sigmas_next, backend=be)


def _pk_loop(be, sample, schedule):
    """The drop-in scheduler's loop: sigmas gathered on the device, one fused step each."""
    x = sample
    for i in range(STEPS):
        x = pk.flow_match_euler_step(_no_op_model(x), x, schedule[i], schedule[i + 1], backend=be)
    return x


# ----------------------------------------------------------------------------- diffusers
def _diffusers(kind):
    """A factory of FlowMatchEulerDiscreteScheduler's step at STEP, or its 28-step loop."""

    def factory(device):
        try:
            from diffusers import FlowMatchEulerDiscreteScheduler
        except ImportError:
            return None
        sched = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
        sched.set_timesteps(STEPS, device=device)

        def one_step(model_output, sample, sigmas, sigmas_next):
            sched._step_index = STEP  # where a sampling loop stands at its sixth step
            return sched.step(model_output, sched.timesteps[STEP], sample).prev_sample

        def loop(sample, schedule):
            sched.set_timesteps(STEPS, device=device)  # once per generation, as a pipeline
            x = sample
            for t in sched.timesteps:
                x = sched.step(_no_op_model(x), t, x).prev_sample
            return x

        return {"step": one_step, "loop": loop}[kind]

    return factory


def _bytes(passes, key):
    """`passes` reads and writes of one [N, C, S, S] tensor."""
    return lambda d: passes * tensor_bytes(d[key])


CASES = [
    # interpolation 3 passes, loss forward 3, backward 4 (model_output's gradient)
    Case(
        "flow_matching_loss",
        _training,
        _pk_step,
        grads=("model_output",),
        eager=_sd3_step,
        bytes=_bytes(10, "x0"),
        fullgraph=False,
    ),  # the model breaks the graph
    Case(
        "flow_matching_loss[cosmap, preconditioned]",
        _training,
        _pk_step_cosmap_preconditioned,
        grads=("model_output",),
        eager=_sd3_step_cosmap_preconditioned,
        bytes=_bytes(10, "x0"),
        fullgraph=False,
    ),
    Case(
        "flow_interpolate",
        _interpolate,
        lambda be, x0, noise, sigmas: pk.flow_interpolate(x0, noise, sigmas, backend=be),
        eager=_interpolate_eager,
        bytes=_bytes(3, "x0"),
    ),
    Case(
        "flow_match_euler_step",
        _step,
        _pk_euler,
        eager=_euler_eager,
        peers={"diffusers": _diffusers("step")},
        bytes=_bytes(3, "sample"),
    ),
    Case(
        "flow_match_euler_step[28-step loop]",
        _loop,
        _pk_loop,
        eager=_loop_eager,
        peers={"diffusers": _diffusers("loop")},
        bytes=_bytes(3 * STEPS, "sample"),
        fullgraph=False,
    ),  # a graph per step: the model breaks the graph
]

BF16 = torch.bfloat16
_LOSS_TARGETS = (speedup("eager", 2.0), speedup("compile", 1.0), roofline(0.7))
_GPU_TARGETS = (roofline(0.8),)
BENCH = [
    Point("flow_matching_loss"),
    Point("flow_match_euler_step[28-step loop]"),
    Point("flow_matching_loss", "full", "full", targets=_LOSS_TARGETS),
    Point("flow_matching_loss", "full", "full", BF16, targets=_LOSS_TARGETS),
    Point("flow_matching_loss[cosmap, preconditioned]", "full", "full"),
    Point("flow_interpolate", "full", "full"),
    Point("flow_match_euler_step", "full", "full", targets=(speedup("diffusers", 2.0),)),
    Point("flow_match_euler_step", "full", "full", BF16, targets=(speedup("diffusers", 2.0),)),
    Point(
        "flow_match_euler_step[28-step loop]", "full", "full", targets=(speedup("diffusers", 3.0),)
    ),
    Point(
        "flow_match_euler_step[28-step loop]",
        "full",
        "full",
        BF16,
        targets=(speedup("diffusers", 3.0),),
    ),
    Point("flow_matching_loss", "quick", "gpu_quick", BF16, "cuda"),
    Point("flow_matching_loss", "full", "gpu", BF16, "cuda", _GPU_TARGETS),
    Point("flow_match_euler_step", "full", "gpu", BF16, "cuda", _GPU_TARGETS),
    Point("flow_match_euler_step[28-step loop]", "full", "gpu", BF16, "cuda"),
]
