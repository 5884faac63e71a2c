"""Reference of the SigLIP sigmoid contrastive loss, written the plain way (build the
[N, M] logit and sign matrices, apply logsigmoid), as open_clip's SigLipLoss does.

    logits[i, j] = logit_scale * <I_i, T_j> + logit_bias            I: [N, D], T: [M, D]
    (normalize=True: I_i and T_j are first divided by max(|x|, 1e-12), as F.normalize does)
    z[i, j]      = +1 if (i, j) is a positive pair, else -1
    loss row i   = -sum_j log sigmoid(z[i, j] logits[i, j]) = sum_j softplus(-z[i, j] logits[i, j])

Positive pairs: (i, j) with image_ids[i] == text_ids[j]. labels=None: the diagonal
(image_ids = arange(N), text_ids = arange(M), so i == j; N != M allowed); one integer
tensor [N] (needs N == M): image and text i both carry group labels[i], so every pair in
a group is positive (duplicate captions); a pair (image_ids [N], text_ids [M]): as given.

reduction "mean" divides the sum over all pairs by N, as open_clip does (not by N * M);
"sum" sums; "none" returns the [N] row losses. The loss is float32 (float64 for float64
features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .contrastive import info_nce_logits


def pair_ids(labels, N: int, M: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_ids [N], text_ids [M]) int64 for `labels` as the module docstring reads it."""
    if labels is None:
        return (torch.arange(N, device=device), torch.arange(M, device=device))
    if isinstance(labels, torch.Tensor):
        return labels.long(), labels.long()
    image_ids, text_ids = labels
    return image_ids.long(), text_ids.long()


def sigmoid_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale,
    logit_bias,
    *,
    labels=None,
    normalize: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    N, M = image_features.shape[0], text_features.shape[0]
    device = image_features.device
    scale, bias = (torch.as_tensor(v, device=device) for v in (logit_scale, logit_bias))
    logits = info_nce_logits(image_features, text_features, scale, bias, normalize)
    image_ids, text_ids = pair_ids(labels, N, M, device)
    z = (image_ids[:, None] == text_ids[None, :]).to(logits.dtype) * 2 - 1
    rows = -F.logsigmoid(z * logits).sum(1)
    if reduction == "none":
        return rows
    return rows.sum() / (N if reduction == "mean" else 1)
