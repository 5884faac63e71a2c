"""Reference of the distillation family (the readable spec).

Rows are all leading dims of [..., V] logits; V (the vocabulary / classes) is the last dim.
With p = softmax(logits / T) for the student (p_S) and the teacher (p_T):

    soft(row)  = T^2 * D_beta(p_T || p_S)
                 beta = 0:     KL(p_T || p_S)   (Hinton; F.kl_div(log_softmax(s / T),
                                                    log_softmax(t / T), log_target=True))
                 beta = 1:     KL(p_S || p_T)       (reverse KL)
                 0 < beta < 1: beta KL(p_T || m) + (1 - beta) KL(p_S || m),
                               m = beta p_T + (1 - beta) p_S
                               (generalised Jensen-Shannon; log m through logaddexp, never log 0)
    hard(row)  = (1 - ls) * (-log q_y) + ls * mean_j(-log q_j),  q = softmax(student logits), T = 1
                 (F.cross_entropy's label smoothing)
    loss(row)  = soft_weight * soft + hard_weight * hard;  0 for rows whose label is ignore_index
    reduction  "batchmean": sum over counted rows / number of counted rows (nan when none is
               counted, like F.cross_entropy's "mean" over an all-ignored batch); "sum"; "none".

    soft_target_cross_entropy(row) = -sum_j q_j log softmax(logits / T)_j   (given probabilities
               q; no T^2)

Masked vocabularies: a logit of -inf is a probability of exactly 0, and every term that
probability weighs is 0 (0 log 0 = 0), in the loss and in the gradients. So a masked
teacher class adds nothing to KL(p_T || p_S) or to the JSD; a masked student class where
the teacher has mass makes KL(p_T || p_S) +inf (and a masked teacher class where the student
has mass makes KL(p_S || p_T) +inf). A counted row whose logits are all -inf has no
distribution: check_masked_rows raises for CPU tensors; elsewhere the row is nan.

Everything is computed in float32 (float64 for float64 inputs) and returned in that dtype.
precise=True (the default) takes exact forms for float64 inputs, so that float64 results
are the tests' exact answer; precise=False is the plain composition in every dtype
(torch.log_softmax, logaddexp): the baseline of the precision contract
(pykernels/_precision.py).
"""

from __future__ import annotations

import math

import torch

from .._precision import acc_dtype


def _log_softmax(x: torch.Tensor, temperature: float, precise: bool = True) -> torch.Tensor:
    """log softmax(x / T) computed as log softmax((x - rowmax) / T): the same value, but
    logits of 1e4 at T = 0.05 do not lose their low bits to the rounding of x / T.

    float64 with precise=True: the log-sum-exp is the argmax's logit plus log1p(sum of the
    other terms), where torch's log of a sum near 1 is 1e-16 off in absolute terms, more
    than a whole KL of 1e-19 between two confident rows. The argmax's own entry is the
    constant 0, so its gradient reaches it through the other terms alone (as z_top - z_top
    it would take the -1 of a target and +1 - 1e-24 of the broadcast back, which rounds to
    0 where the answer is -1e-24)."""
    x = x.to(acc_dtype(x.dtype))
    z = (x - x.amax(-1, keepdim=True).detach()) / temperature
    if not precise or x.dtype != torch.float64 or z.shape[-1] == 0:
        return torch.log_softmax(z, dim=-1)
    top = z.argmax(-1, keepdim=True)
    z = (z - z.gather(-1, top)).scatter(-1, top, 0.0)  # 0 at the argmax, no path of its own
    return z - torch.log1p(z.exp().scatter(-1, top, 0.0).sum(-1, keepdim=True))


def _weighted_sum(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """sum_j p_j r_j with 0 for p_j = 0 whatever r_j is (0 log 0 = 0: a masked term, whose
    log-ratio is -inf or nan, adds nothing to the value or to the gradient)."""
    return (p * torch.where(p == 0, 0.0, r)).sum(-1)


def divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 0.0,
    precise: bool = True,
) -> torch.Tensor:
    """T^2 * D_beta(p_T || p_S) per row."""
    ls = _log_softmax(student_logits, temperature, precise)
    lt = _log_softmax(teacher_logits, temperature, precise)
    if beta == 0:
        d = _weighted_sum(lt.exp(), lt - ls)
    elif beta == 1:
        d = _weighted_sum(ls.exp(), ls - lt)
    else:
        ls_m, lt_m = _jsd_log_ratios(ls, lt, beta, precise)
        d = beta * _weighted_sum(lt.exp(), lt_m) + (1 - beta) * _weighted_sum(ls.exp(), ls_m)
    return temperature * temperature * d


def _jsd_log_ratios(ls: torch.Tensor, lt: torch.Tensor, beta: float, precise: bool):
    """(log p_S - log m, log p_T - log m), m = beta p_T + (1 - beta) p_S, through
    log m = logaddexp(log beta + log p_T, log(1 - beta) + log p_S). Where one side is masked
    (log p = -inf) the other side's ratio is exactly -log(1 - beta) (teacher masked) or
    -log beta (student masked); the masked side's ratio is weighted by 0."""
    lb, l1b = math.log(beta), math.log1p(-beta)
    s_masked, t_masked = torch.isneginf(ls), torch.isneginf(lt)
    either = s_masked | t_masked
    ls, lt = ls.masked_fill(either, 0.0), lt.masked_fill(either, 0.0)  # no inf - inf anywhere
    if precise and ls.dtype == torch.float64:
        ls_m, lt_m = _jsd_log_ratios_float64(ls, lt, beta, lb, l1b)
    else:
        lm = torch.logaddexp(lt + lb, ls + l1b)
        ls_m, lt_m = ls - lm, lt - lm
    return torch.where(t_masked, -l1b, ls_m), torch.where(s_masked, -lb, lt_m)


def _jsd_log_ratios_float64(ls, lt, beta, lb, l1b):
    """_jsd_log_ratios in float64, the tests' exact answer: where |log p_T - log p_S| < 1
    the smaller ratio is taken from x = log p_T - log p_S directly,
    log(m / p_S) = log1p(beta expm1(x)) (its mirror image for beta > 1/2), and elsewhere each
    ratio is a difference of exact terms: the loss of close distributions, or of beta near
    0 or 1, is a small remainder of those ratios, and log p - logaddexp(...) leaves 1e-16 of
    them (3e-4 of the loss at beta = 1 - 1e-9)."""
    x = lt - ls
    d = x + (lb - l1b)  # log of the mixture terms' ratio: log m = (the larger) + log1p(exp(-|d|))
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
        raise IndexError(
            f"{fn}: argument 'labels' must be in [0, {num_classes}) or ignore_index "
            f"({ignore_index}), got {value}"
        )


def check_masked_rows(
    x: torch.Tensor, labels: torch.Tensor | None, ignore_index: int, fn: str, name: str
) -> None:
    """ValueError for a counted row (no labels, or a label other than ignore_index) whose
    logits are all -inf: it has no probability distribution. Only for CPU tensors; on a
    GPU such a row comes out nan (checking would synchronise)."""
    if x.device.type != "cpu" or x.numel() == 0:
        return
    masked = torch.isneginf(x).all(-1)
    if labels is not None:
        masked &= labels != ignore_index
    if bool(masked.any()):
        row = int(masked.reshape(-1).nonzero()[0])
        raise ValueError(
            f"{fn}: argument '{name}' has a row whose logits are all -inf (row {row} "
            "of the flattened rows): it has no probability distribution; give such "
            "rows the label ignore_index"
        )


def _counted_only(x: torch.Tensor, labels: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """x with the rows of ignored labels set to 0: they drop out, and an ignored row of all
    -inf logits (a fully masked padding row) gives no nan in the value or the gradient."""
    return x if labels is None else torch.where((labels != ignore_index).unsqueeze(-1), x, 0.0)


def hard_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    precise: bool = True,
) -> torch.Tensor:
    """Per-row cross entropy at T = 1 (0 for ignored rows). A label out of range on a CUDA
    tensor gives a nan row instead of a device-side assert."""
    logp = _log_softmax(_counted_only(logits, labels, ignore_index), 1.0, precise)
    V = logp.shape[-1]
    counted = labels != ignore_index
    bad = counted & ((labels < 0) | (labels >= V))
    y = torch.where(counted & ~bad, labels, 0)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    # Without smoothing the mean over classes is not formed at all (as in F.cross_entropy):
    # a -inf logit of another class leaves the loss finite instead of 0 * inf = nan.
    if label_smoothing != 0:
        ce = (1 - label_smoothing) * nll + label_smoothing * (-logp.mean(-1))
    else:
        ce = nll
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


def distillation_rows(
    student_logits,
    teacher_logits,
    temperature=1.0,
    labels=None,
    soft_weight=1.0,
    hard_weight=0.0,
    beta=0.0,
    ignore_index=-100,
    label_smoothing=0.0,
    precise=True,
) -> torch.Tensor:
    s = _counted_only(student_logits, labels, ignore_index)
    t = _counted_only(teacher_logits, labels, ignore_index)
    rows = soft_weight * divergence(s, t, temperature, beta, precise)
    if labels is not None:
        if hard_weight != 0:
            ce = hard_cross_entropy(student_logits, labels, ignore_index, label_smoothing, precise)
            rows = rows + hard_weight * ce
        rows = torch.where(labels != ignore_index, rows, torch.zeros_like(rows))
    return rows


def distillation_loss(
    student_logits,
    teacher_logits,
    temperature=1.0,
    labels=None,
    soft_weight=1.0,
    hard_weight=0.0,
    beta=0.0,
    ignore_index=-100,
    label_smoothing=0.0,
    reduction="batchmean",
    precise=True,
) -> torch.Tensor:
    rows = distillation_rows(
        student_logits,
        teacher_logits,
        temperature,
        labels,
        soft_weight,
        hard_weight,
        beta,
        ignore_index,
        label_smoothing,
        precise,
    )
    return reduce(rows, reduction, counted_rows(labels, ignore_index, rows.dtype))


def cross_entropy(
    logits, labels, ignore_index=-100, label_smoothing=0.0, reduction="mean", precise=True
) -> torch.Tensor:
    rows = hard_cross_entropy(logits, labels, ignore_index, label_smoothing, precise)
    return reduce(rows, reduction, counted_rows(labels, ignore_index, rows.dtype))


def soft_target_rows(logits, target_probs, temperature=1.0, precise=True) -> torch.Tensor:
    """-sum_j q_j log softmax(logits / T)_j; a class with q = 0 and a -inf logit is no term
    at all (no value, no gradient)."""
    logq = _log_softmax(logits, temperature, precise)
    q = target_probs.to(logq.dtype)
    absent = (q == 0) & torch.isneginf(logq)
    return -(q * torch.where(absent, 0.0, logq)).sum(-1)


def soft_target_cross_entropy(
    logits, target_probs, temperature=1.0, reduction="batchmean", precise=True
) -> torch.Tensor:
    return reduce(soft_target_rows(logits, target_probs, temperature, precise), reduction)
