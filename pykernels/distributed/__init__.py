"""Losses over a data-parallel batch on torch.distributed: every rank gets the loss of the
global batch and exactly its own share of the gradient.

    contrastive.py   info_nce_loss, the InfoNCE / CLIP loss ("gather" and "ring" modes)
    sigmoid_contrastive.py  sigmoid_contrastive_loss, SigLIP's loss per rank as open_clip's
                     SigLipLoss computes it ("ring" and "gather" modes)
    collectives.py   the collectives with autograd and the ring exchange the losses share

A new loss gets its own module here, built on collectives.py, and is exported below.
"""

from .collectives import all_gather_with_grad, gather_features, group_rank_and_size
from .contrastive import MODES, REDUCTIONS, info_nce_loss
from .sigmoid_contrastive import sigmoid_contrastive_loss

__all__ = [
    "info_nce_loss",
    "sigmoid_contrastive_loss",
    "all_gather_with_grad",
    "gather_features",
    "group_rank_and_size",
    "MODES",
    "REDUCTIONS",
]
