"""Contrastive family cases: info_nce_loss against open_clip's ClipLoss composition
(normalize, logit_scale I T^T, the mean of the two cross entropies) and ClipLoss itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import pykernels as pk

from .case import Case, Point, memory, randn, speedup

# (N, D): N images and N texts (N + N // 3 texts in the labelled case)
PAIRS = {
    "tiny": (4, 8),
    "small": (8, 16),
    "check": (96, 64),
    "quick": (1024, 512),
    "full": (8192, 512),
    "gpu_quick": (16384, 1024),
    "gpu": (65536, 1024),
}
LOGIT_SCALE = 100.0  # CLIP's learned temperature saturates at its clamp, exp(4.6052) = 100


def _features(dtype, device, size, gen, labelled=False):
    N, D = PAIRS[size]
    M = N + N // 3 if labelled else N
    d = {
        "image_features": randn((N, D), dtype, device, gen),
        "text_features": randn((M, D), dtype, device, gen),
        "logit_scale": torch.tensor(LOGIT_SCALE, device=device),
    }
    if labelled:
        d["labels"] = torch.randint(0, M, (N,), generator=gen).to(device)
    return d


def _clip_loss(image_features, text_features, logit_scale):
    """open_clip's ClipLoss on one process, with normalised features."""
    i, t = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    logits = logit_scale * i @ t.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _clip_loss_labelled(image_features, text_features, logit_scale, labels):
    """Image i's positive is text labels[i]; text labels[i] is scored over the images."""
    i, t = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    logits = logit_scale * i @ t.T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T[labels], targets)) / 2


def _open_clip(device):
    try:
        from open_clip.loss import ClipLoss
    except ImportError:
        return None
    loss = ClipLoss()
    return lambda image_features, text_features, logit_scale: loss(
        F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1), logit_scale
    )


def _gemms(d):
    (N, D), M = d["image_features"].shape, d["text_features"].shape[0]
    return [(N, D, M), (N, M, D), (M, N, D)]  # logits; grad of I = G T; grad of T = G^T I


# The float64 answer at benchmark sizes: the ClipLoss composition on float64 features. The
# reference's float64 path reduces every logit elementwise (so that equal texts get equal
# logits, for the tests' exact answer), N M D products through memory: 17 s at N = 1024 on
# two cores, 50x the composition, and out of reach at N = 65536.
CASES = [
    Case(
        "info_nce_loss",
        _features,
        lambda be, image_features, text_features, logit_scale: pk.info_nce_loss(
            image_features, text_features, logit_scale, normalize=True, backend=be
        ),
        grads=("image_features", "text_features", "logit_scale"),
        eager=_clip_loss,
        peers={"open_clip": _open_clip},
        gemms=_gemms,
        oracle=_clip_loss,
    ),
    Case(
        "info_nce_loss[labels]",
        lambda *a: _features(*a, labelled=True),
        lambda be, image_features, text_features, logit_scale, labels: pk.info_nce_loss(
            image_features, text_features, logit_scale, labels=labels, normalize=True, backend=be
        ),
        grads=("image_features", "text_features", "logit_scale"),
        eager=_clip_loss_labelled,
        gemms=_gemms,
        oracle=_clip_loss_labelled,
    ),
]

BF16 = torch.bfloat16
BENCH = [
    Point("info_nce_loss"),
    Point(
        "info_nce_loss", "full", "full", targets=(speedup("compile", 0.9), memory("compile", 0.1))
    ),
    Point("info_nce_loss", "quick", "gpu_quick", BF16, "cuda"),
    Point("info_nce_loss", "full", "gpu_quick", BF16, "cuda", (speedup("open_clip", 1.0),)),
    Point("info_nce_loss", "full", "gpu", BF16, "cuda"),
]
