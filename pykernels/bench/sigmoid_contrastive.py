"""Sigmoid contrastive (SigLIP) cases: sigmoid_contrastive_loss against open_clip's SigLipLoss
math (logits = logit_scale I T^T + logit_bias, labels 2 eye - 1, -logsigmoid(labels logits)
summed and divided by N) and open_clip's SigLipLoss itself. The features are unit rows, as
open_clip's models pass them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import pykernels as pk

from .case import Case, Point, memory, randn, speedup
from .contrastive import _gemms  # the same three matmuls as InfoNCE

# (N, D): N images and N texts
PAIRS = {
    "tiny": (4, 8),
    "small": (8, 16),
    "check": (96, 64),
    "quick": (1024, 512),
    "full": (8192, 512),
    "gpu_quick": (16384, 1024),
    "gpu": (32768, 1024),
}
LOGIT_SCALE, LOGIT_BIAS = 10.0, -10.0  # SigLIP's initial values


def _features(dtype, device, size, gen):
    N, D = PAIRS[size]
    unit = lambda: F.normalize(randn((N, D), torch.float64, "cpu", gen), dim=-1)  # noqa: E731
    return {
        "image_features": unit().to(dtype=dtype, device=device),
        "text_features": unit().to(dtype=dtype, device=device),
        "logit_scale": torch.tensor(LOGIT_SCALE, device=device),
        "logit_bias": torch.tensor(LOGIT_BIAS, device=device),
    }


def _siglip_loss(image_features, text_features, logit_scale, logit_bias):
    """open_clip's SigLipLoss on one process, written out."""
    logits = logit_scale * image_features @ text_features.T + logit_bias
    n = logits.shape[0]
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / n


def _open_clip(device):
    try:
        from open_clip.loss import SigLipLoss
    except ImportError:
        return None
    return SigLipLoss()


CASES = [
    Case(
        "sigmoid_contrastive_loss",
        _features,
        lambda be, image_features, text_features, logit_scale, logit_bias: (
            pk.sigmoid_contrastive_loss(
                image_features, text_features, logit_scale, logit_bias, backend=be
            )
        ),
        grads=("image_features", "text_features", "logit_scale", "logit_bias"),
        eager=_siglip_loss,
        peers={"open_clip": _open_clip},
        gemms=_gemms,
        oracle=_siglip_loss,
    ),
]

BF16 = torch.bfloat16
BENCH = [
    Point("sigmoid_contrastive_loss"),
    Point(
        "sigmoid_contrastive_loss",
        "full",
        "full",
        targets=(speedup("open_clip", 1.5), speedup("compile", 1.0), memory("open_clip", 0.1)),
    ),
    Point("sigmoid_contrastive_loss", "quick", "gpu_quick", BF16, "cuda"),
    Point("sigmoid_contrastive_loss", "full", "gpu", BF16, "cuda", (speedup("open_clip", 1.0),)),
]
