"""Reference of the cosine family.

cos(x1, x2)      = x1 . x2 / (max(|x1|, eps) * max(|x2|, eps))
                   (each norm clamped on its own, as torch.nn.functional.cosine_similarity)
feature_distillation_loss, per row (reduction="none"; "mean" averages over rows):
  kind "mse"     = |student - teacher|^2, so "mean" is 1/N sum_i |f_i^T - f_i^S|^2
  kind "cosine"  = 1 - cos(student, teacher)
pairwise(a, b)   = [cos(a_i, b_j)]_ij
"""

import torch

from .._precision import acc_dtype


def _clamped_norm(x: torch.Tensor, dim: int, eps: float, keepdim: bool = False) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=dim, keepdim=keepdim).clamp_min(eps)


def cosine_similarity(
    x1: torch.Tensor, x2: torch.Tensor, dim: int = -1, eps: float = 1e-8
) -> torch.Tensor:
    acc = acc_dtype(x1.dtype)
    a, b = torch.broadcast_tensors(x1.to(acc), x2.to(acc))  # norms of the broadcast rows
    cos = (a * b).sum(dim) / (_clamped_norm(a, dim, eps) * _clamped_norm(b, dim, eps))
    return cos.to(x1.dtype)


def reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


def feature_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    kind: str = "mse",
    reduction: str = "mean",
    eps: float = 1e-8,
) -> torch.Tensor:
    """The loss of each row of [..., D] features, in the accumulation dtype, reduced."""
    acc = acc_dtype(student.dtype)
    s, t = student.to(acc), teacher.to(acc)
    if kind == "mse":
        per_row = (s - t).pow(2).sum(-1)
    else:
        per_row = 1 - (s * t).sum(-1) / (_clamped_norm(s, -1, eps) * _clamped_norm(t, -1, eps))
    return reduce(per_row, reduction)


def pairwise_cosine_similarity(
    a: torch.Tensor, b: torch.Tensor | None = None, eps: float = 1e-8
) -> torch.Tensor:
    b = a if b is None else b
    acc = acc_dtype(a.dtype)
    an = a.to(acc) / _clamped_norm(a.to(acc), -1, eps, keepdim=True)
    bn = b.to(acc) / _clamped_norm(b.to(acc), -1, eps, keepdim=True)
    return (an @ bn.transpose(-1, -2)).to(a.dtype)
