"""Reference of the distillation family (the readable spec).

Rows are all leading dims of [..., V] logits; V (the vocabulary / classes) is the last dim.
With p = softmax(logits / T) for the student (p_S) and the teacher (p_T):

    soft(row)  = T^2 * D_beta(p_T || p_S)
                 beta = 0:     KL(p_T || p_S)       (Hinton; F.kl_div(log p_S, log p_T, log_target=True))
                 beta = 1:     KL(p_S || p_T)       (reverse KL)
                 0 < beta < 1: beta KL(p_T || m) + (1 - beta) KL(p_S || m),  m = beta p_T + (1 - beta) p_S
                               (generalised Jensen-Shannon; log m through logaddexp, never log 0)
    hard(row)  = (1 - ls) * (-log q_y) + ls * mean_j(-log q_j),  q = softmax(student logits), T = 1
                 (F.cross_entropy's label smoothing)
    loss(row)  = soft_weight * soft + hard_weight * hard;  0 for rows whose label is ignore_index
    reduction  "batchmean": sum over counted rows / number of counted rows (nan when none is
               counted, like F.cross_entropy's "mean" over an all-ignored batch); "sum"; "none".

    soft_target_cross_entropy(row) = -sum_j q_j log softmax(logits / T)_j   (the seed's L_soft,
               with the given probabilities q; no T^2)

Everything is computed in float32 (float64 for float64 inputs) and returned in that dtype.
"""
from __future__ import annotations

import math

import torch

from .._precision import acc_dtype


def _log_softmax(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(x / T) computed as log softmax((x - rowmax) / T): the same value, but
    logits of 1e4 at T = 0.05 do not lose their low bits to the rounding of x / T.

    In float64, the tests' exact answer, the log-sum-exp is taken as the argmax's logit
    plus log1p(sum of the other terms): torch's log of a sum near 1 is 1e-16 off in
    absolute terms, more than a whole KL of 1e-19 between two confident rows (the long
    fuzz run found -9.3e-21 for 2.6e-19). The argmax's own entry is the constant 0, so
    its gradient reaches the argmax only through the other terms: as z_top - z_top it
    also took the -1 of a target and +1 - 1e-24 of the broadcast back, which rounds to a
    gradient of 0 where the answer is -1e-24 (a confident bf16 row of two logits ~40
    apart, the long fuzz run of 2026-12-02: the CPU kernel had the exact -1.43e-24).
    Other dtypes keep torch.log_softmax, the same-precision baseline the kernels are
    held to."""
    x = x.to(acc_dtype(x.dtype))
    z = (x - x.amax(-1, keepdim=True).detach()) / temperature
    if x.dtype != torch.float64 or z.shape[-1] == 0:
        return torch.log_softmax(z, dim=-1)
    top = z.argmax(-1, keepdim=True)
    z = (z - z.gather(-1, top)).scatter(-1, top, 0.0)   # 0 at the argmax, no path of its own
    return z - torch.log1p(z.exp().scatter(-1, top, 0.0).sum(-1, keepdim=True))


def divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
               beta: float = 0.0) -> torch.Tensor:
    """T^2 * D_beta(p_T || p_S) per row."""
    ls, lt = _log_softmax(student, temperature), _log_softmax(teacher, temperature)
    if beta == 0:
        d = (lt.exp() * (lt - ls)).sum(-1)
    elif beta == 1:
        d = (ls.exp() * (ls - lt)).sum(-1)
    else:
        ls_m, lt_m = _jsd_log_ratios(ls, lt, beta)
        d = beta * (lt.exp() * lt_m).sum(-1) + (1 - beta) * (ls.exp() * ls_m).sum(-1)
    return temperature * temperature * d


def _jsd_log_ratios(ls: torch.Tensor, lt: torch.Tensor, beta: float):
    """(log p_S - log m, log p_T - log m), m = beta p_T + (1 - beta) p_S, through
    log m = logaddexp(log beta + log p_T, log(1 - beta) + log p_S). In float64, the tests'
    exact answer, where |log p_T - log p_S| < 1 the smaller ratio is taken from
    x = log p_T - log p_S directly, log(m / p_S) = log1p(beta expm1(x)) (its mirror image
    for beta > 1/2), and elsewhere each ratio is a difference of exact terms: the loss of
    close distributions, or of beta near 0 or 1, is a small remainder of those ratios,
    and log p - logaddexp(...) leaves 1e-16 of them (3e-4 of the loss at beta = 1 - 1e-9).
    The kernels take the same forms (docs/distillation.md)."""
    lb, l1b = math.log(beta), math.log1p(-beta)
    if ls.dtype != torch.float64:
        lm = torch.logaddexp(lt + lb, ls + l1b)
        return ls - lm, lt - lm
    # float64: logaddexp's algebra with each ratio a difference of exact terms, d = the
    # log of the mixture terms' ratio: log m = (the larger) + log1p(exp(-|d|))
    x = lt - ls
    d = x + (lb - l1b)
    e, up = torch.log1p(torch.exp(-d.abs())), d >= 0
    ls_m = torch.where(up, -x - lb, torch.full_like(x, -l1b)) - e
    lt_m = torch.where(up, torch.full_like(x, -lb), x - l1b) - e
    near = x.abs() < 1
    xn = torch.where(near, x, torch.zeros_like(x))
    if beta <= 0.5:
        s_near = -torch.log1p(beta * torch.expm1(xn))
        t_near = xn + s_near
    else:
        t_near = -torch.log1p((1 - beta) * torch.expm1(-xn))
        s_near = t_near - xn
    return torch.where(near, s_near, ls_m), torch.where(near, t_near, lt_m)


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int, fn: str) -> None:
    """IndexError for a label outside [0, V) other than ignore_index. Only for CPU tensors
    (reading their values is no device synchronisation); see hard_cross_entropy for CUDA."""
    if labels.device.type != "cpu" or labels.numel() == 0:
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise IndexError(f"{fn}: argument 'labels' must be in [0, {num_classes}) or ignore_index "
                         f"({ignore_index}), got {value}")


def hard_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-row cross entropy at T = 1 (0 for ignored rows). A label out of range on a CUDA
    tensor gives a nan row instead of a device-side assert."""
    logp = _log_softmax(logits, 1.0)
    V = logp.shape[-1]
    counted = labels != ignore_index
    bad = counted & ((labels < 0) | (labels >= V))
    y = torch.where(counted & ~bad, labels, 0)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    # Without smoothing the mean over classes is not formed at all (as in F.cross_entropy):
    # a -inf logit of another class leaves the loss finite instead of 0 * inf = nan.
    ce = nll if label_smoothing == 0 else (1 - label_smoothing) * nll + label_smoothing * (-logp.mean(-1))
    ce = torch.where(bad, torch.full_like(ce, math.nan), ce)
    return torch.where(counted, ce, torch.zeros_like(ce))


def reduce(rows: torch.Tensor, reduction: str, count=None) -> torch.Tensor:
    """'none' -> rows; 'sum'; 'batchmean' / 'mean' -> sum / count (count: rows when None)."""
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    return total / (rows.numel() if count is None else count)


def counted_rows(labels: torch.Tensor | None, ignore_index: int, dtype: torch.dtype):
    """Number of rows that count, as a device tensor (no host synchronisation)."""
    return None if labels is None else (labels != ignore_index).sum().to(dtype)


def distillation_rows(student, teacher, temperature=1.0, labels=None, soft_weight=1.0, hard_weight=0.0,
                      beta=0.0, ignore_index=-100, label_smoothing=0.0) -> torch.Tensor:
    rows = soft_weight * divergence(student, teacher, temperature, beta)
    if labels is not None:
        if hard_weight != 0:
            rows = rows + hard_weight * hard_cross_entropy(student, labels, ignore_index, label_smoothing)
        rows = torch.where(labels != ignore_index, rows, torch.zeros_like(rows))
    return rows


def distillation_loss(student, teacher, temperature=1.0, labels=None, soft_weight=1.0, hard_weight=0.0,
                      beta=0.0, ignore_index=-100, label_smoothing=0.0, reduction="batchmean") -> torch.Tensor:
    rows = distillation_rows(student, teacher, temperature, labels, soft_weight, hard_weight, beta,
                             ignore_index, label_smoothing)
    return reduce(rows, reduction, counted_rows(labels, ignore_index, rows.dtype))


def cross_entropy(logits, labels, ignore_index=-100, label_smoothing=0.0, reduction="mean") -> torch.Tensor:
    rows = hard_cross_entropy(logits, labels, ignore_index, label_smoothing)
    return reduce(rows, reduction, counted_rows(labels, ignore_index, rows.dtype))


def soft_target_rows(logits, target_probs, temperature=1.0) -> torch.Tensor:
    logq = _log_softmax(logits, temperature)
    return -(target_probs.to(logq.dtype) * logq).sum(-1)


def soft_target_cross_entropy(logits, target_probs, temperature=1.0, reduction="batchmean") -> torch.Tensor:
    return reduce(soft_target_rows(logits, target_probs, temperature), reduction)
