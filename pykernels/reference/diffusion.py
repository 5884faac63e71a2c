"""Reference of the diffusion family: the readable spec of every op.

Notation: a = alphas_cumprod[t] (the cumulative product of alphas, "alpha bar"),
a' = alphas_cumprod[t'] for the previous timestep t' (t' < 0 -> final_alpha_cumprod for
DDIM, 1 for DDPM). Coefficients are computed in float32 (float64 for float64 samples)
from the table; outputs keep the sample's dtype.

    add_noise      x_t = sqrt(a) x0 + sqrt(1 - a) eps
    get_velocity   v   = sqrt(a) eps - sqrt(1 - a) x0
    predicted x0   "epsilon":      x0 = (x_t - sqrt(1 - a) m) / sqrt(a)
                   "sample":       x0 = m
                   "v_prediction": x0 = sqrt(a) x_t - sqrt(1 - a) m
    clip           x0 <- clamp(x0, -r, r)
    threshold      s = clamp(quantile(|x0|, ratio) per sample, 1, sample_max_value);
                   x0 <- clamp(x0, -s, s) / s            (Imagen's dynamic thresholding)
    DDPM step      mu = sqrt(a') (1 - a/a') / (1 - a) x0 + sqrt(a/a') (1 - a') / (1 - a) x_t
                   x_{t'} = mu + [t > 0] sqrt(max((1 - a') / (1 - a) (1 - a/a'), 1e-20)) z
    DDIM step      var = (1 - a') / (1 - a) (1 - a/a'),  sd = eta sqrt(var)
                   eps from the (unclipped) prediction, or from the clipped x0 when
                   use_clipped_model_output: eps = (x_t - sqrt(a) x0) / sqrt(1 - a)
                   x_{t'} = sqrt(a') x0 + sqrt(max(1 - a' - sd^2, 0)) eps + sd z
    loss           mean((m - target)^2), target = eps | x0 | v

These are diffusers' DDPMScheduler.step ("fixed_small" variance) and DDIMScheduler.step,
with every coefficient per sample. Timesteps: on CPU tensors an out-of-range timestep
raises IndexError (the public functions check); on CUDA tensors nothing is read back to
the host, so timesteps are clamped into [0, T - 1] (prev timesteps below 0 mean "final").
"""

from __future__ import annotations

import math

import torch

from .._precision import acc_dtype

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


# ----------------------------------------------------------------------------- schedule
def make_schedule(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> torch.Tensor:
    """alphas_cumprod (float32, CPU) of a beta schedule, as diffusers builds it."""
    T = num_train_timesteps
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":  # latent diffusion: linear in sqrt(beta)
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":  # GLIDE / improved DDPM cosine, beta <= 0.999

        def alpha_bar(x):
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
            dtype=torch.float32,
        )
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


# ----------------------------------------------------------------------------- coefficients
def _per_sample(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, ..., 1] to broadcast over a sample's elements."""
    return c.reshape(c.shape + (1,) * (like.dim() - 1))


def _alpha(
    table: torch.Tensor, t: torch.Tensor, dtype: torch.dtype, final: float | None = None
) -> torch.Tensor:
    """table[t] in `dtype`; t clamped to [0, T - 1]; t < 0 -> `final` when given."""
    T = table.shape[0]
    a = table.to(dtype)[t.long().clamp(0, T - 1)]
    if final is not None:
        a = torch.where(t < 0, torch.as_tensor(final, dtype=dtype, device=a.device), a)
    return a


def _x0_coefs(a: torch.Tensor, prediction_type: str):
    """(ks, km) with x0 = ks x_t + km m."""
    sa, sb = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        return 1 / sa, -sb / sa
    if prediction_type == "sample":
        return torch.zeros_like(a), torch.ones_like(a)
    return sa, -sb


def _clip_or_threshold(
    x0: torch.Tensor,
    clip_sample: bool,
    clip_range: float,
    thresholding: bool,
    ratio: float,
    max_value: float,
) -> torch.Tensor:
    if thresholding:
        N = x0.shape[0]
        s = torch.quantile(x0.abs().reshape(N, -1), ratio, dim=1).clamp(1, max_value)
        s = _per_sample(s, x0)
        return torch.clamp(x0, -s, s) / s
    if clip_sample:
        return x0.clamp(-clip_range, clip_range)
    return x0


# ----------------------------------------------------------------------------- ops
def add_noise(x0, noise, timesteps, alphas_cumprod):
    acc = acc_dtype(x0.dtype)
    a = _per_sample(_alpha(alphas_cumprod, timesteps, acc), x0)
    return (a.sqrt() * x0.to(acc) + (1 - a).sqrt() * noise.to(acc)).to(x0.dtype)


def get_velocity(x0, noise, timesteps, alphas_cumprod):
    acc = acc_dtype(x0.dtype)
    a = _per_sample(_alpha(alphas_cumprod, timesteps, acc), x0)
    return (a.sqrt() * noise.to(acc) - (1 - a).sqrt() * x0.to(acc)).to(x0.dtype)


def diffusion_target(x0, noise, timesteps, alphas_cumprod, prediction_type="epsilon"):
    """The training target in the accumulation dtype."""
    acc = acc_dtype(x0.dtype)
    if prediction_type == "epsilon":
        return noise.to(acc)
    if prediction_type == "sample":
        return x0.to(acc)
    a = _per_sample(_alpha(alphas_cumprod, timesteps, acc), x0)
    return a.sqrt() * noise.to(acc) - (1 - a).sqrt() * x0.to(acc)


def diffusion_loss(
    model_output, x0, noise, timesteps, alphas_cumprod, prediction_type="epsilon", reduction="mean"
):
    """Squared error against the target, float32 (float64 for float64 inputs)."""
    acc = acc_dtype(model_output.dtype)
    err = (
        model_output.to(acc)
        - diffusion_target(x0, noise, timesteps, alphas_cumprod, prediction_type)
    ) ** 2
    if reduction == "mean":
        return err.mean()
    if reduction == "sum":
        return err.sum()
    return err


def predicted_x0(model_output, timesteps, sample, alphas_cumprod, prediction_type="epsilon"):
    """The unclipped x0 prediction in the accumulation dtype."""
    acc = acc_dtype(sample.dtype)
    a = _per_sample(_alpha(alphas_cumprod, timesteps, acc), sample)
    ks, km = _x0_coefs(a, prediction_type)
    return ks * sample.to(acc) + km * model_output.to(acc)


def ddpm_step(
    model_output,
    timesteps,
    sample,
    alphas_cumprod,
    *,
    prev_timesteps=None,
    noise=None,
    prediction_type="epsilon",
    clip_sample=True,
    clip_sample_range=1.0,
    thresholding=False,
    dynamic_thresholding_ratio=0.995,
    sample_max_value=1.0,
):
    """(prev_sample, pred_original_sample); noise=None means no noise (zero)."""
    acc = acc_dtype(sample.dtype)
    prev = timesteps - 1 if prev_timesteps is None else prev_timesteps
    a = _per_sample(_alpha(alphas_cumprod, timesteps, acc), sample)
    ap = _per_sample(_alpha(alphas_cumprod, prev, acc, final=1.0), sample)
    x0 = predicted_x0(model_output, timesteps, sample, alphas_cumprod, prediction_type)
    x0 = _clip_or_threshold(
        x0,
        clip_sample,
        clip_sample_range,
        thresholding,
        dynamic_thresholding_ratio,
        sample_max_value,
    )
    beta_t = (ap - a) / ap  # 1 - a/ap, without cancellation when a ~ a'
    mean = (ap.sqrt() * beta_t / (1 - a)) * x0 + ((a / ap).sqrt() * (1 - ap) / (1 - a)) * sample.to(
        acc
    )
    out = mean
    if noise is not None:
        sd = ((1 - ap) / (1 - a) * beta_t).clamp_min(1e-20).sqrt()
        sd = torch.where(_per_sample(timesteps, sample) > 0, sd, torch.zeros_like(sd))
        out = out + torch.where(sd != 0, sd * noise.to(acc), torch.zeros_like(out))
    return out.to(sample.dtype), x0.to(sample.dtype)


def ddim_step(
    model_output,
    timesteps,
    prev_timesteps,
    sample,
    alphas_cumprod,
    *,
    eta=0.0,
    noise=None,
    prediction_type="epsilon",
    clip_sample=False,
    clip_sample_range=1.0,
    thresholding=False,
    dynamic_thresholding_ratio=0.995,
    sample_max_value=1.0,
    use_clipped_model_output=False,
    final_alpha_cumprod=1.0,
):
    """(prev_sample, pred_original_sample); noise=None means no noise (zero)."""
    acc = acc_dtype(sample.dtype)
    a = _per_sample(_alpha(alphas_cumprod, timesteps, acc), sample)
    ap = _per_sample(_alpha(alphas_cumprod, prev_timesteps, acc, final=final_alpha_cumprod), sample)
    s, m = sample.to(acc), model_output.to(acc)
    sa, sb = a.sqrt(), (1 - a).sqrt()
    x0 = predicted_x0(model_output, timesteps, sample, alphas_cumprod, prediction_type)
    if prediction_type == "epsilon":
        eps = m
    elif prediction_type == "sample":
        eps = (s - sa * m) / sb
    else:
        eps = sa * m + sb * s
    x0 = _clip_or_threshold(
        x0,
        clip_sample,
        clip_sample_range,
        thresholding,
        dynamic_thresholding_ratio,
        sample_max_value,
    )
    if use_clipped_model_output:
        eps = (s - sa * x0) / sb
    var = (1 - ap) / (1 - a) * ((ap - a) / ap)
    # var < 0 when a' < a: eta = 0 takes no sqrt of it (0 * NaN would be NaN); eta > 0 is NaN
    sd = eta * var.sqrt() if eta > 0 else torch.zeros_like(var)
    out = ap.sqrt() * x0 + (1 - ap - sd**2).clamp_min(0).sqrt() * eps
    if noise is not None and eta > 0:
        out = out + torch.where(sd != 0, sd * noise.to(acc), torch.zeros_like(out))
    return out.to(sample.dtype), x0.to(sample.dtype)
