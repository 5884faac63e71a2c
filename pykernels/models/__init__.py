"""Tiny pure-PyTorch reference models used for training parity and as examples.

Each model module has ``train(ops="reference" | "fused", *, size="test" | "example", seed=0,
device="cpu", progress=False) -> Run``. The ``ops`` switch changes nothing but which
implementation of the ops the model calls: ``"reference"`` is plain PyTorch
(:mod:`pykernels.models.reference_ops`), ``"fused"`` the public ``pykernels.*`` functions.

- :mod:`~pykernels.models.distillation`: teacher -> student classifier (soft + hard targets,
  feature term) and a causal LM student distilled over an 8192-token vocabulary;
- :mod:`~pykernels.models.clip`: image and text towers, learnable logit scale, InfoNCE,
  zero-shot top-1;
- :mod:`~pykernels.models.mae`: masked autoencoder, patch 4 on 32x32;
- :mod:`~pykernels.models.diffusion`: a denoiser trained with add_noise + diffusion_loss,
  sampled with DDIM and DDPM steps.
"""

from . import clip, diffusion, distillation, mae, reference_ops
from ._common import Run
from .ops import FusedOps, get_ops

__all__ = [
    "Run",
    "FusedOps",
    "get_ops",
    "reference_ops",
    "clip",
    "diffusion",
    "distillation",
    "mae",
]
