"""A small denoising diffusion model (DDPM, epsilon prediction) on synthetic images.

The images are one-channel pictures of a bright rectangle or disc on a dark background,
in [-1, 1]. Training draws a timestep and Gaussian noise per image, noises the image with
``add_noise`` and regresses the noise with ``diffusion_loss``. Sampling starts from pure
noise and runs either ``ddim_step`` (eta = 0, a strided subset of the timesteps) or
``ddpm_step`` (every timestep, with fresh noise). All randomness comes from one generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._common import Run, optimizer_step, start_run, train_loop


@dataclass(frozen=True)
class Config:
    image_size: int = 8
    hidden: int = 128
    timesteps: int = 100
    beta_start: float = 1e-3  # 100 steps from 1e-3 to 0.2: alphas_cumprod ends near 5e-5, as 1000 diffusers steps do
    beta_end: float = 0.2
    batch: int = 64
    steps: int = 300
    lr: float = 2e-3
    grad_clip: float = 0.0  # max gradient norm; 0 = no clipping
    samples: int = 16
    ddim_steps: int = 10


SIZES = {
    "test": Config(),
    "example": Config(hidden=256, batch=128, steps=1500, lr=1e-3, grad_clip=1.0, samples=36),
}


class Denoiser(nn.Module):
    """An MLP on the flattened image with a sinusoidal timestep embedding added to its first layer."""

    def __init__(self, cfg: Config, time_features: int = 32):
        super().__init__()
        pixels = cfg.image_size**2
        self.timesteps, self.time_features = cfg.timesteps, time_features
        self.inp = nn.Linear(pixels, cfg.hidden)
        self.time = nn.Sequential(
            nn.Linear(time_features, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden)
        )
        self.body = nn.Sequential(
            nn.GELU(),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, pixels),
        )

    def embed_time(self, t: Tensor) -> Tensor:
        freqs = torch.exp(
            -math.log(1000.0)
            * torch.arange(self.time_features // 2, device=t.device)
            / (self.time_features // 2)
        )
        angles = t.float()[:, None] * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.inp(x.flatten(1)) + self.time(self.embed_time(t))
        return self.body(h).view_as(x)


def make_images(cfg: Config, n: int, g: torch.Generator, device) -> Tensor:
    """[n, 1, S, S] in {-1, 1}: a rectangle (half the images) or a disc, random place and size."""
    S = cfg.image_size
    c = torch.arange(S, device=device) + 0.5
    yy, xx = c[:, None], c[None, :]
    centre = S * (0.3 + 0.4 * torch.rand(n, 2, 1, 1, generator=g, device=device))
    size = S * (0.15 + 0.2 * torch.rand(n, 2, 1, 1, generator=g, device=device))
    dy, dx = (yy - centre[:, 0]) / size[:, 0], (xx - centre[:, 1]) / size[:, 1]
    rect = (dy.abs() <= 1) & (dx.abs() <= 1)
    disc = dy**2 + dx**2 <= 1
    is_rect = torch.rand(n, 1, 1, generator=g, device=device) < 0.5
    return torch.where(is_rect, rect, disc).float().mul(2).sub(1).unsqueeze(1)


@torch.no_grad()
def sample_ddim(ops, model: Denoiser, cfg: Config, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """diffusers' "trailing" spacing: t = T-1, T-1-r, ..., r-1 with r = T // k, so sampling
    starts at the last timestep; the last step goes to t = -1, which reads
    final_alpha_cumprod = 1. The predicted x0 is clipped to [-1, 1], the data's range."""
    x, n = noise, noise.shape[0]
    stride = cfg.timesteps // cfg.ddim_steps
    for t in range(cfg.timesteps - 1, -1, -stride):
        t_now = torch.full((n,), t, device=x.device)
        x, _ = ops.ddim_step(
            model(x, t_now), t_now, t_now - stride, x, alphas_cumprod, clip_sample=True
        )
    return x


@torch.no_grad()
def sample_ddpm(
    ops, model: Denoiser, cfg: Config, noise: Tensor, alphas_cumprod: Tensor, g: torch.Generator
) -> Tensor:
    x, n = noise, noise.shape[0]
    for t in range(cfg.timesteps - 1, -1, -1):
        t_now = torch.full((n,), t, device=x.device)
        step_noise = torch.randn(x.shape, generator=g, device=x.device)
        x, _ = ops.ddpm_step(model(x, t_now), t_now, x, alphas_cumprod, noise=step_noise)
    return x


def train(
    ops="reference",
    *,
    size: str = "test",
    seed: int = 0,
    device="cpu",
    progress: bool = False,
    **overrides,
) -> Run:
    cfg, run, ops, g = start_run(SIZES, size, overrides, ops, seed, device)
    alphas_cumprod = ops.make_schedule(
        cfg.timesteps, "linear", beta_start=cfg.beta_start, beta_end=cfg.beta_end
    ).to(device)
    model = Denoiser(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)

    def batch(n):
        x0 = make_images(cfg, n, g, device)
        t = torch.randint(0, cfg.timesteps, (n,), generator=g, device=device)
        return x0, torch.randn(x0.shape, generator=g, device=device), t

    def loss_of(x0, noise, t):
        x_t = ops.add_noise(x0, noise, t, alphas_cumprod)
        return ops.diffusion_loss(model(x_t, t), x0, noise, t, alphas_cumprod)

    def step(i):
        loss = loss_of(*batch(cfg.batch))
        return optimizer_step(
            opt, loss, (model.parameters(), cfg.grad_clip) if cfg.grad_clip else None
        )

    train_loop(run, step, cfg.steps, device, "diffusion", progress)
    with torch.no_grad():
        run.evals["eval_loss"] = loss_of(*batch(512)).item()
    shape = (cfg.samples, 1, cfg.image_size, cfg.image_size)
    ddim = sample_ddim(
        ops, model, cfg, torch.randn(shape, generator=g, device=device), alphas_cumprod
    )
    ddpm = sample_ddpm(
        ops, model, cfg, torch.randn(shape, generator=g, device=device), alphas_cumprod, g
    )
    for name, x in (("ddim", ddim), ("ddpm", ddpm)):
        run.evals[f"{name}_sample_mean"] = x.mean().item()
        run.evals[f"{name}_sample_std"] = x.std().item()
    run.extras.update(model=model, ddim=ddim, ddpm=ddpm)
    return run
