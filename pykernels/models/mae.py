"""A masked autoencoder (He et al., 2021) on synthetic 32x32 images, patch 4.

Encoder: per sample, a random 75% of the 64 patches are removed. ``random_masking`` draws
the mask from explicit noise and gathers the position embeddings of the kept patches;
``gather_patches`` reads the kept pixel patches straight from the image (the encoder never
embeds a removed patch). A linear patch embedding, a class token and transformer blocks
follow. Decoder: ``unshuffle_with_mask_tokens`` puts the encoded patches back in image
order with a learned mask token in every removed slot; blocks and a linear head predict
the pixels of every patch. Loss: ``masked_patch_loss``, the mean squared error against the
per-patch normalised pixels, over removed patches only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._common import Run, optimizer_step, start_run, train_loop
from ._layers import Block


@dataclass(frozen=True)
class Config:
    image_size: int = 32
    patch: int = 4
    channels: int = 3
    dim: int = 32
    decoder_dim: int = 32
    depth: int = 1
    decoder_depth: int = 1
    heads: int = 2
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    batch: int = 16
    steps: int = 200
    lr: float = 2e-3
    test_images: int = 32


SIZES = {
    "test": Config(),
    "example": Config(
        dim=64,
        decoder_dim=48,
        depth=2,
        decoder_depth=1,
        heads=4,
        batch=32,
        steps=400,
        lr=2e-3,
        norm_pix_loss=False,
    ),
}


class MAE(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.num_patches = (cfg.image_size // cfg.patch) ** 2
        patch_dim = cfg.patch**2 * cfg.channels
        self.patch_embed = nn.Linear(
            patch_dim, cfg.dim
        )  # a stride-p convolution, applied to gathered patches
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, self.num_patches, cfg.dim))
        self.encoder = nn.Sequential(*[Block(cfg.dim, cfg.heads) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.decoder_embed = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, cfg.decoder_dim))
        self.decoder_pos_embed = nn.Parameter(
            0.02 * torch.randn(1, self.num_patches + 1, cfg.decoder_dim)
        )
        self.decoder = nn.Sequential(
            *[Block(cfg.decoder_dim, cfg.heads) for _ in range(cfg.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, patch_dim)

    def encode(self, ops, imgs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        N = imgs.shape[0]
        pos, mask, ids_restore = ops.random_masking(
            self.pos_embed.expand(N, -1, -1), self.cfg.mask_ratio, noise=noise
        )
        ids_keep = inverse_permutation(ids_restore)[:, : pos.shape[1]]
        x = self.patch_embed(ops.gather_patches(imgs, ids_keep, self.cfg.patch)) + pos
        x = torch.cat([self.cls_token.expand(N, -1, -1), x], dim=1)
        return self.norm(self.encoder(x)), mask, ids_restore

    def decode(self, ops, latent: Tensor, ids_restore: Tensor) -> Tensor:
        x = self.decoder_embed(latent)
        patches = ops.unshuffle_with_mask_tokens(x[:, 1:], self.mask_token, ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        return self.decoder_pred(self.decoder_norm(self.decoder(x)))[:, 1:]  # [N, L, p*p*C]

    def forward(self, ops, imgs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        latent, mask, ids_restore = self.encode(ops, imgs, noise)
        pred = self.decode(ops, latent, ids_restore)
        loss = ops.masked_patch_loss(
            pred, imgs, mask, self.cfg.patch, norm_pix_loss=self.cfg.norm_pix_loss
        )
        return loss, pred, mask


def inverse_permutation(ids_restore: Tensor) -> Tensor:
    """ids_shuffle from ids_restore (exact, unlike a second argsort that could break ties)."""
    ids = torch.empty_like(ids_restore)
    order = torch.arange(ids_restore.shape[1], device=ids_restore.device).expand_as(ids_restore)
    return ids.scatter_(1, ids_restore, order)


def make_images(cfg: Config, n: int, g: torch.Generator, device) -> Tensor:
    """Smooth random images: each channel a sum of two random plane waves, in about [-1, 1]."""
    s = torch.linspace(0, 1, cfg.image_size, device=device)
    yy, xx = torch.meshgrid(s, s, indexing="ij")
    k = 2 + 4 * torch.rand(n, cfg.channels, 2, 2, generator=g, device=device)  # frequencies
    phase = 6.3 * torch.rand(n, cfg.channels, 2, 1, 1, generator=g, device=device)
    waves = torch.sin(k[..., 0, None, None] * xx + k[..., 1, None, None] * yy + phase)
    return waves.mean(2)


def unpatchify(patches: Tensor, cfg: Config) -> Tensor:
    """[N, L, p*p*C] -> [N, C, H, W] (MAE's (p, q, c) order), for showing reconstructions."""
    N, p, h = patches.shape[0], cfg.patch, cfg.image_size // cfg.patch
    x = patches.reshape(N, h, h, p, p, cfg.channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(N, cfg.channels, h * p, h * p)


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
    model = MAE(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    test_images = make_images(cfg, cfg.test_images, g, device)
    test_noise = torch.rand(cfg.test_images, model.num_patches, generator=g, device=device)

    def step(i):
        imgs = make_images(cfg, cfg.batch, g, device)
        noise = torch.rand(cfg.batch, model.num_patches, generator=g, device=device)
        loss = model(ops, imgs, noise)[0]
        return optimizer_step(opt, loss)

    train_loop(run, step, cfg.steps, device, "MAE", progress)
    with torch.no_grad():
        loss, pred, mask = model(ops, test_images, test_noise)
    run.evals["eval_masked_loss"] = loss.item()
    run.extras.update(model=model, images=test_images, pred=pred, mask=mask)
    return run
