"""pykernels: fused training kernels for PyTorch.

Every function takes ``backend=None`` ("cuda", "triton", "cpu", "reference" or "auto";
None reads PYKERNELS_BACKEND, else auto). ``pykernels.backends.available()`` lists
what this installation can run.
"""
from . import backends
from .ops.cosine import cosine_similarity, feature_distillation_loss, pairwise_cosine_similarity
from .ops.contrastive import info_nce_loss

# (distillation, contrastive, mae, diffusion: their public functions are re-exported here)

from . import nn  # noqa: E402  (after the functions it wraps)

__version__ = "0.1.0"

__all__ = [
    "backends",
    "nn",
    # cosine
    "cosine_similarity",
    "pairwise_cosine_similarity",
    "feature_distillation_loss",
    # contrastive
    "info_nce_loss",
]
