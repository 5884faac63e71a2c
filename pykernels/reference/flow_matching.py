"""Reference of the flow-matching family: the readable spec of every op.

Notation: per sample n, sigma = sigmas[n] in [0, 1] (the noise level), x0 the data,
eps the noise, m the model output. Element-wise math is done in float32 (float64 for
float64 inputs); outputs keep the input dtype, losses come back in float32 (float64).

    flow_interpolate      x_t = (1 - sigma) x0 + sigma eps               (rectified flow)
    flow_matching_loss    d   = m - (eps - x0)                          (velocity error)
                          L_n = c(sigma) mean_i d_i^2                   (per sample)
                          loss = mean_n L_n  (reduction "mean"), or L (reduction "none")
    flow_match_euler_step x'  = x + (sigma_next - sigma) m              (cast to m's dtype)

The weight c(sigma) folds the SD3 loss weighting w(sigma) (diffusers'
compute_loss_weighting_for_sd3) and the preconditioning together:

    w: "none" 1,  "sigma_sqrt" 1 / max(sigma, SIGMA_SQRT_MIN)^2,
       "cosmap" 2 / (pi (1 - 2 sigma + 2 sigma^2))
    c = w                    without preconditioning (target eps - x0, prediction m)
    c = w sigma^2            with precondition_outputs: the prediction -sigma m + x_t
                             against the target x0 differs by -sigma d, so its squared
                             error is sigma^2 d^2; for "sigma_sqrt" c = 1 exactly (the
                             limit at sigma = 0, where w sigma^2 is inf * 0 written out).

"sigma_sqrt" without preconditioning clamps sigma to SIGMA_SQRT_MIN = 1e-4 (a weight of
at most 1e8): at sigma = 0 the weight sigma^-2 is infinite. Every sigma a schedule of up
to 10000 training steps produces is at least 1e-4, where the weight is diffusers'.

Timestep sampling (SD3's "Scaling Rectified Flow Transformers" densities, as diffusers'
compute_density_for_timestep_sampling draws them) and the min-SNR weights of DDPM
training (diffusers' compute_snr and train_text_to_image.py) are here too.
"""

from __future__ import annotations

import math

import torch

from .._precision import acc_dtype

WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "cosmap")
TIMESTEP_SCHEMES = ("logit_normal", "mode", "uniform")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SIGMA_SQRT_MIN = 1e-4


def _per_sample(sigmas: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sigmas [N] -> [N, 1, ..., 1] in `dtype`, to broadcast over a sample's elements."""
    return sigmas.to(dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def loss_weight(
    sigmas: torch.Tensor, weighting_scheme: str = "none", precondition_outputs: bool = False
) -> torch.Tensor:
    """c(sigma) per sample (see the module docstring), in sigmas' dtype."""
    if weighting_scheme == "sigma_sqrt":
        if precondition_outputs:
            return torch.ones_like(sigmas)
        s = sigmas.clamp_min(SIGMA_SQRT_MIN)
        return 1 / (s * s)
    if weighting_scheme == "cosmap":
        w = 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas * sigmas))
    else:
        w = torch.ones_like(sigmas)
    return w * (sigmas * sigmas) if precondition_outputs else w


# ----------------------------------------------------------------------------- ops
def flow_interpolate(x0, noise, sigmas):
    acc = acc_dtype(x0.dtype)
    s = _per_sample(sigmas, x0, acc)
    return ((1 - s) * x0.to(acc) + s * noise.to(acc)).to(x0.dtype)


def flow_matching_loss(
    model_output,
    x0,
    noise,
    sigmas,
    weighting_scheme="none",
    precondition_outputs=False,
    reduction="mean",
    return_noisy=False,
):
    """Per-sample (reduction "none") or mean loss in the accumulation dtype; with
    return_noisy, (loss, x_t)."""
    acc = acc_dtype(model_output.dtype)
    d = model_output.to(acc) - (noise.to(acc) - x0.to(acc))
    mse = (d * d).reshape(d.shape[0], math.prod(d.shape[1:])).mean(1)
    per_sample = loss_weight(sigmas.to(acc), weighting_scheme, precondition_outputs) * mse
    loss = per_sample.mean() if reduction == "mean" else per_sample
    return (loss, flow_interpolate(x0, noise, sigmas)) if return_noisy else loss


def flow_match_euler_step(model_output, sample, sigmas, sigmas_next):
    acc = acc_dtype(sample.dtype)
    dt = _per_sample(sigmas_next, sample, acc) - _per_sample(sigmas, sample, acc)
    return (sample.to(acc) + dt * model_output.to(acc)).to(model_output.dtype)


# ----------------------------------------------------------------------------- timesteps
def shifted_schedule(num_train_timesteps: int = 1000, shift: float = 1.0, device=None):
    """(timesteps, sigmas) [T] float32, from sigma = 1 down to 1 / T, shifted:
    sigma <- shift sigma / (1 + (shift - 1) sigma); timesteps = sigma T. The same float32
    operations, in the same order, as FlowMatchEulerDiscreteScheduler's constructor, so
    the values are bitwise its timesteps and sigmas."""
    T = num_train_timesteps
    sigmas = torch.arange(T, 0, -1, dtype=torch.float32, device=device) / T
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas * T, sigmas


def timestep_density(
    weighting_scheme: str,
    batch_size: int,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    device=None,
    generator=None,
) -> torch.Tensor:
    """u [batch_size] in [0, 1] drawn from the scheme's density, with the same draws from
    `generator` as diffusers' compute_density_for_timestep_sampling:
    logit_normal sigmoid(N(logit_mean, logit_std)); mode 1 - u - s (cos^2(pi u / 2) - 1 + u)
    for uniform u; uniform u."""
    device = "cpu" if device is None else device
    if weighting_scheme == "logit_normal":
        u = torch.normal(
            mean=logit_mean, std=logit_std, size=(batch_size,), device=device, generator=generator
        )
        return torch.sigmoid(u)
    u = torch.rand(size=(batch_size,), device=device, generator=generator)
    if weighting_scheme == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def timesteps_for_density(u: torch.Tensor, timesteps: torch.Tensor, sigmas: torch.Tensor):
    """(timesteps, sigmas) of density samples u: index floor(u T) of the schedule
    (shifted_schedule's tables, T entries), as diffusers' training scripts look them up.
    u = 1 (the "mode" density at a uniform draw of 0) would index one past the table: it
    is clamped to the last entry."""
    T = timesteps.shape[0]
    idx = (u * T).long().clamp(0, T - 1)
    return timesteps[idx], sigmas[idx]


# ----------------------------------------------------------------------------- min-SNR
def compute_snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR(t) = a_t / (1 - a_t) per timestep, float32, with diffusers' compute_snr's
    operations: (sqrt(a) / sqrt(1 - a))^2."""
    sa = (alphas_cumprod**0.5).to(device=timesteps.device)[timesteps].float()
    sb = ((1.0 - alphas_cumprod) ** 0.5).to(device=timesteps.device)[timesteps].float()
    return (sa / sb) ** 2


def min_snr_weights(
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    gamma: float,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Min-SNR-gamma weights of per-sample mean losses: min(SNR, gamma) / SNR for
    "epsilon", min(SNR, gamma) / (SNR + 1) for "v_prediction", min(SNR, gamma) for
    "sample" (diffusers' train_text_to_image.py). At SNR = 0 (a zero-terminal-SNR
    schedule's last step) the epsilon weight is its limit 1, where 0 / 0 would be NaN."""
    snr = compute_snr(timesteps, alphas_cumprod)
    w = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return torch.where(snr == 0, torch.ones_like(w), w / snr)
    if prediction_type == "v_prediction":
        return w / (snr + 1)
    return w
