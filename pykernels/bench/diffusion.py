"""Diffusion family cases: add_noise, get_velocity, diffusion_loss, ddpm_step and
ddim_step, against diffusers' DDPMScheduler / DDIMScheduler as diffusers runs them and
the same math written as batched PyTorch (the eager and compile rows).

diffusers' schedulers take one timestep per batch, so the benchmark sizes give every
sample the same timestep; the self-check size mixes them (0 and the last included).
DDPMScheduler.step takes no noise argument: it draws its variance noise from the
generator it is given, so its row includes that draw, and the other rows read the same
noise (drawn from a generator seeded alike) as an input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import pykernels as pk

from .case import Case, Point, randn, roofline, speedup, tensor_bytes

# (N, C, S): samples [N, C, S, S]
SAMPLES = {
    "tiny": (3, 2, 4),
    "small": (4, 2, 8),
    "check": (4, 4, 16),
    "quick": (32, 4, 64),
    "full": (64, 4, 64),
    "gpu_quick": (64, 4, 128),
    "gpu": (256, 4, 128),
}
TIMESTEP, STRIDE = 501, 20  # diffusers' DDIM with 50 of 1000 steps: prev = t - 20
CHECK_TIMESTEPS = (999, 500, 20, 0)
NOISE_SEED = 1234
_TABLE = {}


def _table(device):
    """The linear schedule diffusers' DDPMScheduler() and DDIMScheduler() use."""
    if device not in _TABLE:
        _TABLE[device] = pk.make_schedule().to(device)
    return _TABLE[device]


def _timesteps(N, size, device):
    t = torch.tensor(CHECK_TIMESTEPS) if size == "check" else torch.full((N,), TIMESTEP)
    return t.to(device)


def _noise(shape, dtype, device):
    """randn as diffusers' randn_tensor draws it from a generator seeded with NOISE_SEED."""
    gen = torch.Generator(device).manual_seed(NOISE_SEED)
    return torch.randn(shape, generator=gen, dtype=dtype, device=device)


def _mix(dtype, device, size, gen):
    N, C, S = SAMPLES[size]
    return {
        "x0": randn((N, C, S, S), dtype, device, gen),
        "noise": randn((N, C, S, S), dtype, device, gen),
        "timesteps": _timesteps(N, size, device),
        "alphas_cumprod": _table(device),
    }


def _loss(dtype, device, size, gen):
    d = _mix(dtype, device, size, gen)
    d["model_output"] = randn(d["x0"].shape, dtype, device, gen)
    return d


def _step(dtype, device, size, gen):
    N, C, S = SAMPLES[size]
    t = _timesteps(N, size, device)
    return {
        "model_output": randn((N, C, S, S), dtype, device, gen),
        "sample": randn((N, C, S, S), dtype, device, gen),
        "noise": _noise((N, C, S, S), dtype, device),
        "timesteps": t,
        "prev_timesteps": t - STRIDE,
        "alphas_cumprod": _table(device),
    }


# ----------------------------------------------------------------------------- batched PyTorch
def _alpha(alphas_cumprod, t):
    """alphas_cumprod[t] per sample in the table's float32, 1 where t < 0 (the final step)."""
    return torch.where(t >= 0, alphas_cumprod[t.clamp_min(0)], 1.0)


def _per_sample(coef, like):
    """[N] coefficients in the samples' dtype, shaped to broadcast over a sample."""
    return coef.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def _add_noise(x0, noise, timesteps, alphas_cumprod):
    """DDPMScheduler.add_noise: the table in the samples' dtype, then the mix."""
    a = _per_sample(_alpha(alphas_cumprod, timesteps), x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _velocity(x0, noise, timesteps, alphas_cumprod):
    a = _per_sample(_alpha(alphas_cumprod, timesteps), x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def _ddpm_step(model_output, sample, noise, timesteps, prev_timesteps, alphas_cumprod):
    """DDPMScheduler.step: epsilon prediction, x0 clipped to [-1, 1], "fixed_small" variance;
    coefficients in float32, as diffusers computes them from its float32 table."""
    t = timesteps
    a, ap = _alpha(alphas_cumprod, t), _alpha(alphas_cumprod, t - 1)
    beta = 1 - a / ap
    sd = ((1 - ap) / (1 - a) * beta).clamp_min(1e-20).sqrt() * (t > 0)
    c = [
        _per_sample(k, sample)
        for k in (
            (1 - a).sqrt(),
            a.sqrt(),
            ap.sqrt() * beta / (1 - a),
            (1 - beta).sqrt() * (1 - ap) / (1 - a),
            sd,
        )
    ]
    x0 = ((sample - c[0] * model_output) / c[1]).clamp(-1, 1)
    return c[2] * x0 + c[3] * sample + c[4] * noise


def _ddim_step(model_output, sample, noise, timesteps, prev_timesteps, alphas_cumprod):
    """DDIMScheduler.step with eta = 0, epsilon prediction, no clipping."""
    a, ap = _alpha(alphas_cumprod, timesteps), _alpha(alphas_cumprod, prev_timesteps)
    sa, sb, sap, sbp = (
        _per_sample(k, sample) for k in (a.sqrt(), (1 - a).sqrt(), ap.sqrt(), (1 - ap).sqrt())
    )
    x0 = (sample - sb * model_output) / sa
    return sap * x0 + sbp * model_output


# ----------------------------------------------------------------------------- pykernels
def _pk_add_noise(be, x0, noise, timesteps, alphas_cumprod):
    return pk.add_noise(x0, noise, timesteps, alphas_cumprod, backend=be)


def _pk_velocity(be, x0, noise, timesteps, alphas_cumprod):
    return pk.get_velocity(x0, noise, timesteps, alphas_cumprod, backend=be)


def _pk_loss(be, model_output, x0, noise, timesteps, alphas_cumprod):
    return pk.diffusion_loss(
        model_output,
        x0,
        noise,
        timesteps,
        alphas_cumprod,
        prediction_type="v_prediction",
        backend=be,
    )


def _v_loss(model_output, x0, noise, timesteps, alphas_cumprod):
    return F.mse_loss(model_output, _velocity(x0, noise, timesteps, alphas_cumprod))


def _pk_ddpm(be, model_output, sample, noise, timesteps, prev_timesteps, alphas_cumprod):
    return pk.ddpm_step(model_output, timesteps, sample, alphas_cumprod, noise=noise, backend=be)[0]


def _pk_ddim(be, model_output, sample, noise, timesteps, prev_timesteps, alphas_cumprod):
    return pk.ddim_step(
        model_output, timesteps, prev_timesteps, sample, alphas_cumprod, backend=be
    )[0]


# ----------------------------------------------------------------------------- diffusers
def _one_timestep(timesteps) -> int:
    t = timesteps.unique()
    if t.numel() != 1:
        raise ValueError("diffusers' schedulers take one timestep per batch")
    return int(t)


def _diffusers(kind):
    """A factory of diffusers' add_noise / get_velocity / DDPM step / DDIM step."""

    def factory(device):
        try:
            import diffusers
        except ImportError:
            return None
        ddpm = diffusers.DDPMScheduler()
        ddim = diffusers.DDIMScheduler(clip_sample=False)
        ddim.set_timesteps(1000 // STRIDE)

        def add_noise(x0, noise, timesteps, alphas_cumprod):
            return ddpm.add_noise(x0, noise, timesteps)

        def velocity(x0, noise, timesteps, alphas_cumprod):
            return ddpm.get_velocity(x0, noise, timesteps)

        def ddpm_step(model_output, sample, noise, timesteps, prev_timesteps, alphas_cumprod):
            gen = torch.Generator(device).manual_seed(NOISE_SEED)
            t = _one_timestep(timesteps)
            return ddpm.step(model_output, t, sample, generator=gen).prev_sample

        def ddim_step(model_output, sample, noise, timesteps, prev_timesteps, alphas_cumprod):
            return ddim.step(model_output, _one_timestep(timesteps), sample).prev_sample

        return {"add_noise": add_noise, "velocity": velocity, "ddpm": ddpm_step, "ddim": ddim_step}[
            kind
        ]

    return factory


def _bytes(reads, writes):
    """Every [N, C, S, S] input read once, every output of that size written once."""
    return lambda d: (reads + writes) * tensor_bytes(d.get("sample", d.get("x0")))


CASES = [
    Case(
        "add_noise",
        _mix,
        _pk_add_noise,
        eager=_add_noise,
        peers={"diffusers": _diffusers("add_noise")},
        bytes=_bytes(2, 1),
    ),
    Case(
        "get_velocity",
        _mix,
        _pk_velocity,
        grads=("x0", "noise"),
        eager=_velocity,
        peers={"diffusers": _diffusers("velocity")},
        bytes=_bytes(3, 3),
    ),  # with the backward
    Case(
        "diffusion_loss[v_prediction]",
        _loss,
        _pk_loss,
        grads=("model_output",),
        eager=_v_loss,
        bytes=_bytes(3, 1),
    ),
    Case(
        "ddpm_step",
        _step,
        _pk_ddpm,
        eager=_ddpm_step,
        peers={"diffusers": _diffusers("ddpm")},
        bytes=_bytes(3, 2),
    ),
    Case(
        "ddim_step",
        _step,
        _pk_ddim,
        eager=_ddim_step,
        peers={"diffusers": _diffusers("ddim")},
        bytes=_bytes(2, 2),
    ),
]

BF16 = torch.bfloat16
_CPU_TARGETS = (speedup("diffusers", 2.0), speedup("compile", 1.0), roofline(0.7))
_GPU_TARGETS = (roofline(0.8),)
BENCH = [
    Point("ddim_step"),
    Point("add_noise", "full", "full", targets=_CPU_TARGETS),
    Point("ddpm_step", "full", "full", targets=_CPU_TARGETS),
    Point("ddim_step", "full", "full", targets=_CPU_TARGETS),
    Point("get_velocity", "full", "full"),
    Point("diffusion_loss[v_prediction]", "full", "full"),
    Point("ddim_step", "quick", "gpu_quick", torch.float32, "cuda"),
    Point("add_noise", "full", "gpu", torch.float32, "cuda", _GPU_TARGETS),
    Point("ddpm_step", "full", "gpu", torch.float32, "cuda", _GPU_TARGETS),
    Point("ddim_step", "full", "gpu", torch.float32, "cuda", _GPU_TARGETS),
    Point("ddim_step", "full", "gpu", BF16, "cuda"),
]
