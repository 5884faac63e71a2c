"""CLIP on synthetic paired data.

Each of K concepts has a prototype image; a sample is that prototype blended with another
concept's and with noise. Its caption is "a photo of <concept> <filler> <filler>" as token
ids. An image tower (MLP on pixels) and a text tower (bag of token embeddings, MLP) map
both to a shared space; a learnable logit scale (stored as a log, as CLIP does) sharpens
the InfoNCE loss over the batch. Evaluation is zero-shot classification: the caption
"a photo of <concept>" of every concept is embedded, each test image is assigned the
concept whose caption is most cosine-similar, and the top-1 accuracy is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._common import Run, optimizer_step, start_run, train_loop

TEMPLATE = (0, 1, 2)  # "a photo of"
BLANK = 3  # fills the caption of a class prompt
FIRST_CONCEPT = 4


@dataclass(frozen=True)
class Config:
    concepts: int = 16
    fillers: int = 32
    image_size: int = 8
    channels: int = 3
    width: int = 64
    embed_dim: int = 32
    batch: int = 64
    steps: int = 300
    lr: float = 2e-3
    test_images: int = 512
    distractor: float = 0.6  # weight of the other concept blended into each image
    pixel_noise: float = 0.8
    loss: str = "info_nce"  # or "siglip": the sigmoid loss with a learnable bias


SIZES = {
    "test": Config(),
    "example": Config(
        concepts=32,
        image_size=16,
        width=256,
        embed_dim=64,
        batch=256,
        steps=300,
        distractor=0.9,
        pixel_noise=2.0,
    ),
}


class CLIP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        pixels = cfg.channels * cfg.image_size**2
        vocab = FIRST_CONCEPT + cfg.concepts + cfg.fillers
        self.image_tower = nn.Sequential(
            nn.Flatten(),
            nn.Linear(pixels, cfg.width),
            nn.GELU(),
            nn.Linear(cfg.width, cfg.embed_dim),
        )
        self.token_embedding = nn.Embedding(vocab, cfg.width)
        self.text_tower = nn.Sequential(nn.GELU(), nn.Linear(cfg.width, cfg.embed_dim))
        if cfg.loss == "siglip":  # SigLIP's initial scale 10 and bias -10
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        else:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: Tensor) -> Tensor:
        return self.image_tower(images)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.text_tower(self.token_embedding(tokens).mean(1))

    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=100.0)  # CLIP caps the scale at 100


class PairedData:
    """Images and captions drawn from one generator, so both runs see the same batches."""

    def __init__(self, cfg: Config, g: torch.Generator, device):
        self.cfg, self.g, self.device = cfg, g, device
        shape = (cfg.concepts, cfg.channels, cfg.image_size, cfg.image_size)
        self.prototypes = torch.randn(shape, generator=g, device=device)

    def images(self, concepts: Tensor) -> Tensor:
        cfg, g = self.cfg, self.g
        other = torch.randint(0, cfg.concepts, concepts.shape, generator=g, device=self.device)
        noise = torch.randn(self.prototypes[concepts].shape, generator=g, device=self.device)
        return (
            self.prototypes[concepts]
            + cfg.distractor * self.prototypes[other]
            + cfg.pixel_noise * noise
        )

    def captions(self, concepts: Tensor) -> Tensor:
        cfg = self.cfg
        fill = (
            FIRST_CONCEPT
            + cfg.concepts
            + torch.randint(
                0, cfg.fillers, (len(concepts), 2), generator=self.g, device=self.device
            )
        )
        template = torch.tensor(TEMPLATE, device=self.device).expand(len(concepts), -1)
        return torch.cat([template, (FIRST_CONCEPT + concepts)[:, None], fill], dim=1)

    def prompts(self) -> Tensor:
        """ "a photo of <concept>" for every concept, padded with BLANK to the caption length."""
        concepts = torch.arange(self.cfg.concepts, device=self.device)
        template = torch.tensor(TEMPLATE, device=self.device).expand(len(concepts), -1)
        blank = torch.full((len(concepts), 2), BLANK, device=self.device)
        return torch.cat([template, (FIRST_CONCEPT + concepts)[:, None], blank], dim=1)

    def batch(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        concepts = torch.randint(0, self.cfg.concepts, (n,), generator=self.g, device=self.device)
        return self.images(concepts), self.captions(concepts), concepts


@torch.no_grad()
def zero_shot_accuracy(
    ops, model: CLIP, images: Tensor, concepts: Tensor, prompts: Tensor
) -> float:
    similarity = ops.pairwise_cosine_similarity(
        model.encode_image(images), model.encode_text(prompts)
    )
    return (similarity.argmax(-1) == concepts).float().mean().item()


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
    data = PairedData(cfg, g, device)
    test_images, _, test_concepts = data.batch(cfg.test_images)
    model = CLIP(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    run.evals["zero_shot_top1_before"] = zero_shot_accuracy(
        ops, model, test_images, test_concepts, data.prompts()
    )

    def step(i):
        images, captions, _ = data.batch(cfg.batch)
        image_features, text_features = model.encode_image(images), model.encode_text(captions)
        if cfg.loss == "siglip":
            loss = ops.sigmoid_contrastive_loss(
                image_features, text_features, model.scale(), model.logit_bias, normalize=True
            )
        else:
            loss = ops.info_nce_loss(image_features, text_features, model.scale(), normalize=True)
        return optimizer_step(opt, loss)

    train_loop(run, step, cfg.steps, device, "CLIP", progress)
    run.evals["zero_shot_top1"] = zero_shot_accuracy(
        ops, model, test_images, test_concepts, data.prompts()
    )
    run.evals["logit_scale"] = model.scale().item()
    return run
