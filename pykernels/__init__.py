"""pykernels: fused training kernels for PyTorch.

Every function takes ``backend=None`` ("cuda", "triton", "cpu", "reference" or "auto";
None reads PYKERNELS_BACKEND, else auto). ``pykernels.backends.available()`` lists
what this installation can run.
"""

from . import (
    backends,
    nn,  # noqa: E402, I001  (the modules wrap the functions above)
)
from .ops.contrastive import info_nce_loss
from .ops.cosine import cosine_similarity, feature_distillation_loss, pairwise_cosine_similarity
from .ops.diffusion import (
    add_noise,
    ddim_step,
    ddpm_step,
    diffusion_loss,
    get_velocity,
    make_schedule,
)
from .ops.distillation import cross_entropy, distillation_loss, soft_target_cross_entropy
from .ops.flow_matching import (
    compute_snr,
    flow_interpolate,
    flow_match_euler_step,
    flow_matching_loss,
    min_snr_weights,
    sample_flow_timesteps,
)
from .ops.fused_linear import fused_linear_cross_entropy, fused_linear_distillation_loss
from .ops.mae import (
    gather_patches,
    masked_patch_loss,
    patchify,
    random_masking,
    unpatchify,
    unshuffle_with_mask_tokens,
)
from .ops.sigmoid_contrastive import sigmoid_contrastive_loss

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
    # sigmoid_contrastive
    "sigmoid_contrastive_loss",
    # mae
    "random_masking",
    "patchify",
    "unpatchify",
    "gather_patches",
    "unshuffle_with_mask_tokens",
    "masked_patch_loss",
    # diffusion
    "make_schedule",
    "add_noise",
    "get_velocity",
    "diffusion_loss",
    "ddpm_step",
    "ddim_step",
    # distillation
    "distillation_loss",
    "cross_entropy",
    "soft_target_cross_entropy",
    # fused_linear
    "fused_linear_cross_entropy",
    "fused_linear_distillation_loss",
    # flow_matching
    "flow_interpolate",
    "flow_matching_loss",
    "sample_flow_timesteps",
    "flow_match_euler_step",
    "compute_snr",
    "min_snr_weights",
]
