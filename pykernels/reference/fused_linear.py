"""Reference of the fused linear + loss family (the readable spec).

hidden [..., H] (rows are all leading dims), weight [V, H], bias [V]:

    logits = hidden @ weight^T + bias                       (in the inputs' dtype)
    fused_linear_cross_entropy:
        softcap > 0:  logits = softcap * tanh(logits / softcap)     (Gemma-2)
        row   = CE(logits, label) + z_loss * lse^2,  lse = logsumexp(logits)   (PaLM's z-loss)
                (0 for rows whose label is ignore_index)
    fused_linear_distillation_loss:
        row   = distillation_rows(student logits, teacher logits, ...)   (reference/distillation)
    reduction "mean" / "batchmean": sum over rows / divisor, where the divisor is
        num_items_in_batch when given, else the counted rows (rows whose label is not
        ignore_index; every row when there are no labels); "sum"; "none" (per row).

The per-row logsumexp that return_lse gives is that of the (capped) logits, in the
accumulation dtype, 0 for ignored rows (the fused backends never form their logits), and
carries no gradient (a statistic, as in Liger-Kernel and cut-cross-entropy).
The loss terms are the distillation family's reference (float64-careful for float64 inputs).
"""

from __future__ import annotations

import torch

from .._precision import acc_dtype
from . import distillation as dist


def linear_logits(hidden, weight, bias=None, softcap=None) -> torch.Tensor:
    """[rows, V] logits of hidden [..., H] (flattened rows), in the inputs' dtype."""
    logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.T
    if bias is not None:
        logits = logits + bias
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def _divisor(reduction: str, labels, ignore_index: int, rows: int, num_items_in_batch, dtype):
    if reduction not in ("mean", "batchmean"):
        return None
    if num_items_in_batch is not None:
        return torch.as_tensor(num_items_in_batch).to(dtype)
    if labels is None:
        return torch.tensor(float(rows), dtype=dtype)
    return dist.counted_rows(labels, ignore_index, dtype)


def cross_entropy_rows(
    hidden,
    weight,
    labels,
    bias=None,
    ignore_index=-100,
    label_smoothing=0.0,
    softcap=None,
    z_loss=0.0,
):
    """(per-row loss, per-row logsumexp), both [rows] in the accumulation dtype."""
    logits = linear_logits(hidden, weight, bias, softcap)
    y = labels.reshape(-1)
    counted = y != ignore_index
    rows = dist.hard_cross_entropy(logits, y, ignore_index, label_smoothing)
    wide = logits.to(acc_dtype(logits.dtype))
    lse = torch.where(counted, torch.logsumexp(torch.where(counted[:, None], wide, 0.0), -1), 0.0)
    if z_loss:
        rows = rows + z_loss * lse * lse
    return rows, lse


def fused_linear_cross_entropy(
    hidden,
    weight,
    labels,
    bias=None,
    ignore_index=-100,
    label_smoothing=0.0,
    softcap=None,
    z_loss=0.0,
    reduction="mean",
    num_items_in_batch=None,
    return_lse=False,
):
    rows, lse = cross_entropy_rows(
        hidden, weight, labels, bias, ignore_index, label_smoothing, softcap, z_loss
    )
    divisor = _divisor(
        reduction, labels, ignore_index, rows.numel(), num_items_in_batch, rows.dtype
    )
    loss = dist.reduce(rows, reduction, divisor)
    if reduction == "none":
        loss = loss.reshape(labels.shape)
    return (loss, lse.reshape(labels.shape).detach()) if return_lse else loss


def fused_linear_distillation_loss(
    student_hidden,
    student_weight,
    teacher_hidden,
    teacher_weight,
    labels=None,
    student_bias=None,
    teacher_bias=None,
    temperature=1.0,
    beta=0.0,
    soft_weight=1.0,
    hard_weight=0.0,
    ignore_index=-100,
    label_smoothing=0.0,
    reduction="batchmean",
    num_items_in_batch=None,
):
    s = linear_logits(student_hidden, student_weight, student_bias)
    t = linear_logits(teacher_hidden, teacher_weight, teacher_bias)
    y = labels.reshape(-1) if labels is not None else None
    rows = dist.distillation_rows(
        s, t, temperature, y, soft_weight, hard_weight, beta, ignore_index, label_smoothing
    )
    divisor = _divisor(reduction, y, ignore_index, rows.numel(), num_items_in_batch, rows.dtype)
    loss = dist.reduce(rows, reduction, divisor)
    return loss.reshape(student_hidden.shape[:-1]) if reduction == "none" else loss
