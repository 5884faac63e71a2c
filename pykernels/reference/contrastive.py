"""Reference of the contrastive family: the InfoNCE / CLIP loss, written the plain way
(build the [N, M] logit matrix, apply cross entropy).

    logits[i, j] = logit_scale * <I_i, T_j> (+ logit_bias)          I: [N, D], T: [M, D]
    (normalize=True: I_i and T_j are first divided by max(|x|, 1e-12), the cosine family's
     eps rule, as F.normalize does)

Positive pairs: (i, labels[i]) for i in [0, N); labels defaults to arange(N) (then M == N).

    image -> text, per pair i:  l_i2t[i] = -log softmax(logits[i, :])[labels[i]]
                                         = CE(logits, labels) per row
    text -> image, per pair i:  l_t2i[i] = -log softmax(logits[:, labels[i]])[i]
        i.e. text labels[i] classifies over all N images with image i as its target. Each
        text gets one term per image whose label points to it (its positives); texts that
        no label points to only serve as negatives. With labels = arange(N) this is
        CE(logits.T, arange(N)), the usual CLIP text loss.

    symmetric=True:  per-pair loss (l_i2t + l_t2i) / 2; "mean" averages it over the N
                     pairs, "sum" sums it; "none" returns the stacked [2, N] tensor
                     (row 0: l_i2t, row 1: l_t2i), not halved.
    symmetric=False: l_i2t only; "none" returns [N].

The loss is returned in float32 (float64 for float64 features). A logit_bias shifts
every logit by the same amount, which softmax cross entropy cancels: the loss does not
depend on it and its gradient is zero (accepted for open_clip / SigLIP-style callers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._precision import acc_dtype

NORMALIZE_EPS = 1e-12


def _dots(i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """i t^T with every entry reduced over D the same way (elementwise products, summed):
    equal rows of t give equal logits, as the exact answer has them. mm rounds some columns
    otherwise (three equal texts at logits of 1e8 gave log 3 + 1.5e-9 in float64, where the
    fused CPU kernel had log 3: test_fuzz_contrastive). The float64 reference (the tests'
    exact answer) takes this path, chunked over i's rows to keep the temporary near 2^24
    elements; lower precisions keep PyTorch's mm."""
    N, D = i.shape
    M = t.shape[0]
    if N == 0 or M == 0:
        return i.new_zeros((N, M))
    rows = max(1, (1 << 24) // max(1, M * D))
    return torch.cat(
        [(i[r : r + rows, None, :] * t[None, :, :]).sum(-1) for r in range(0, N, rows)]
    )


def normalized(x: torch.Tensor) -> torch.Tensor:
    """x / max(|x|, 1e-12) per row, in the accumulation dtype (F.normalize's rule)."""
    x = x.to(acc_dtype(x.dtype))
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(NORMALIZE_EPS)


def info_nce_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """The [N, M] logit matrix in the accumulation dtype."""
    acc = acc_dtype(image_features.dtype)
    i, t = image_features.to(acc), text_features.to(acc)
    if normalize:
        i, t = normalized(i), normalized(t)
    logits = logit_scale.to(acc).reshape(()) * (_dots(i, t) if acc == torch.float64 else i @ t.T)
    if logit_bias is not None:
        logits = logits + logit_bias.to(acc).reshape(())
    return logits


def info_nce_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    logit_bias: torch.Tensor | None = None,
    symmetric: bool = True,
    normalize: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    N = image_features.shape[0]
    logits = info_nce_logits(image_features, text_features, logit_scale, logit_bias, normalize)
    targets = torch.arange(N, device=logits.device)
    labels = targets if labels is None else labels.long()
    l_i2t = F.cross_entropy(logits, labels, reduction="none")
    if not symmetric:
        return _reduce(l_i2t, reduction)
    # row i: column labels[i] of the logits, scored over the N images, target image i
    # (with the default labels that is logits.T itself)
    per_text = logits.T if labels is targets else logits.T[labels]
    l_t2i = F.cross_entropy(per_text, targets, reduction="none")
    per_dir = torch.stack([l_i2t, l_t2i])
    if reduction == "none":
        return per_dir
    return _reduce(per_dir.sum(0) / 2, reduction)


def _reduce(per_pair: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_pair.mean()
    if reduction == "sum":
        return per_pair.sum()
    return per_pair
