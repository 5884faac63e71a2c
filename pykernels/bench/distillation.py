"""Distillation family cases: distillation_loss (KL, KL + cross entropy, JSD + cross
entropy), cross_entropy and soft_target_cross_entropy, against the F.kl_div /
F.cross_entropy compositions and liger-kernel's losses (GPU only: they are Triton kernels)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import pykernels as pk

from .case import Case, Point, randn, roofline, speedup, tensor_bytes

# (rows, vocabulary)
VOCAB = {
    "tiny": (4, 10),
    "small": (8, 40),
    "check": (64, 1000),
    "quick": (256, 32000),
    "full": (4096, 32000),
    "gpu_quick": (4096, 131072),
    "gpu": (16384, 131072),
}
T = 2.0  # the KD cases' temperature
JSD_T, BETA, SMOOTHING = 4.0, 0.5, 0.1


def _logits(dtype, device, size, gen, ignored=False):
    R, V = VOCAB[size]
    labels = torch.randint(0, V, (R,), generator=gen)
    if ignored:
        labels[1::8] = -100
    return {
        "student": randn((R, V), dtype, device, gen, 2.0),
        "teacher": randn((R, V), dtype, device, gen, 2.0),
        "labels": labels.to(device),
    }


def _ce(dtype, device, size, gen):
    d = _logits(dtype, device, size, gen, ignored=True)
    return {"logits": d["student"], "labels": d["labels"]}


def _soft(dtype, device, size, gen):
    R, V = VOCAB[size]
    q = torch.softmax(torch.randn(R, V, generator=gen, dtype=torch.float64), -1)
    return {
        "logits": randn((R, V), dtype, device, gen, 2.0),
        "target_probs": q.to(dtype=dtype, device=device),
    }


def _rows_bytes(*names, grads=1):
    """Read each named [R, V] input once and write `grads` gradients of that size."""

    def count(d):
        return tensor_bytes(*(d[n] for n in names)) + grads * tensor_bytes(d[names[0]])

    return count


# ----------------------------------------------------------------------------- eager
def _kd(student, teacher, temperature=T):
    """Hinton's KD term, as written in most training code."""
    ls = F.log_softmax(student / temperature, -1)
    lt = F.log_softmax(teacher / temperature, -1)
    kl = F.kl_div(ls, lt, log_target=True, reduction="batchmean")
    return kl * temperature * temperature


def _jsd(student, teacher, temperature, beta):
    """beta KL(p_T || m) + (1 - beta) KL(p_S || m), m = beta p_T + (1 - beta) p_S, times T^2."""
    ls, lt = F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1)
    lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
    kl = beta * F.kl_div(lm, lt, log_target=True, reduction="batchmean") + (1 - beta) * F.kl_div(
        lm, ls, log_target=True, reduction="batchmean"
    )
    return kl * temperature * temperature


def _eager_kd(student, teacher, labels):
    return _kd(student, teacher)


def _eager_kd_ce(student, teacher, labels):
    return 0.5 * _kd(student, teacher) + 0.5 * F.cross_entropy(student, labels)


def _eager_jsd_ce(student, teacher, labels):
    hard = F.cross_entropy(student, labels, label_smoothing=SMOOTHING)
    return _jsd(student, teacher, JSD_T, BETA) + 0.5 * hard


# ----------------------------------------------------------------------------- pykernels
def _pk_kd(be, student, teacher, labels):
    return pk.distillation_loss(student, teacher, temperature=T, backend=be)


def _pk_kd_ce(be, student, teacher, labels):
    return pk.distillation_loss(
        student, teacher, temperature=T, labels=labels, soft_weight=0.5, hard_weight=0.5, backend=be
    )


def _pk_jsd_ce(be, student, teacher, labels):
    return pk.distillation_loss(
        student,
        teacher,
        temperature=JSD_T,
        labels=labels,
        beta=BETA,
        hard_weight=0.5,
        label_smoothing=SMOOTHING,
        backend=be,
    )


def _pk_ce(be, logits, labels):
    return pk.cross_entropy(logits, labels, backend=be)


def _pk_soft(be, logits, target_probs):
    return pk.soft_target_cross_entropy(logits, target_probs, temperature=T, backend=be)


# ----------------------------------------------------------------------------- liger
def _liger(device):
    """liger_kernel.transformers on a GPU, else None (its losses are Triton GPU kernels)."""
    if device.type != "cuda":
        return None
    try:
        import liger_kernel.transformers as lk
    except ImportError:
        return None
    return lk


def _liger_kd(device, hard):
    lk = _liger(device)
    if lk is None:
        return None
    kl, ce = lk.LigerKLDIVLoss(reduction="batchmean", log_target=True), lk.LigerCrossEntropyLoss()

    def run(student, teacher, labels):
        soft = kl(F.log_softmax(student / T, -1), F.log_softmax(teacher / T, -1)) * T * T
        return 0.5 * soft + 0.5 * ce(student, labels) if hard else soft

    return run


def _liger_jsd(device):
    lk = _liger(device)
    if lk is None:
        return None
    jsd, ce = lk.LigerJSD(beta=BETA), lk.LigerCrossEntropyLoss(label_smoothing=SMOOTHING)

    def run(student, teacher, labels):
        ls, lt = F.log_softmax(student / JSD_T, -1), F.log_softmax(teacher / JSD_T, -1)
        return jsd(ls, lt) * JSD_T * JSD_T + 0.5 * ce(student, labels)

    return run


def _liger_ce(device):
    lk = _liger(device)
    if lk is None:
        return None
    ce = lk.LigerCrossEntropyLoss()
    return lambda logits, labels: ce(logits, labels)


CASES = [
    Case(
        "distillation_loss",
        _logits,
        _pk_kd,
        grads=("student",),
        eager=_eager_kd,
        peers={"liger": lambda device: _liger_kd(device, hard=False)},
        bytes=_rows_bytes("student", "teacher"),
    ),
    Case(
        "distillation_loss[kd+ce]",
        _logits,
        _pk_kd_ce,
        grads=("student",),
        eager=_eager_kd_ce,
        peers={"liger": lambda device: _liger_kd(device, hard=True)},
        bytes=_rows_bytes("student", "teacher"),
    ),
    Case(
        "distillation_loss[jsd+ce]",
        _logits,
        _pk_jsd_ce,
        grads=("student",),
        eager=_eager_jsd_ce,
        peers={"liger": _liger_jsd},
        bytes=_rows_bytes("student", "teacher"),
    ),
    Case(
        "cross_entropy",
        _ce,
        _pk_ce,
        grads=("logits",),
        eager=lambda logits, labels: F.cross_entropy(logits, labels),
        peers={"liger": _liger_ce},
        bytes=_rows_bytes("logits"),
    ),
    Case(
        "soft_target_cross_entropy",
        _soft,
        _pk_soft,
        grads=("logits", "target_probs"),
        eager=lambda logits, target_probs: F.cross_entropy(logits / T, target_probs),
        bytes=_rows_bytes("logits", "target_probs", grads=2),
    ),
]

BF16 = torch.bfloat16
_LIGER = (speedup("liger", 1.0),)
BENCH = [
    Point("distillation_loss"),
    Point("cross_entropy"),
    Point(
        "distillation_loss",
        "full",
        "full",
        targets=(speedup("compile", 1.5), speedup("eager", 6.0)),
    ),
    Point("distillation_loss", "full", "full", BF16, targets=(speedup("compile", 1.5),)),
    Point("distillation_loss[kd+ce]", "full", "full"),
    Point("cross_entropy", "full", "full", targets=(speedup("compile", 1.5),)),
    Point("distillation_loss", "quick", "gpu_quick", BF16, "cuda"),
    Point("cross_entropy", "quick", "gpu_quick", BF16, "cuda"),
    Point(
        "distillation_loss",
        "full",
        "gpu",
        BF16,
        "cuda",
        (speedup("compile", 1.3), roofline(0.8)) + _LIGER,
    ),
    Point("distillation_loss[kd+ce]", "full", "gpu", BF16, "cuda", _LIGER),
    Point("distillation_loss[jsd+ce]", "full", "gpu", BF16, "cuda", _LIGER),
    Point("cross_entropy", "full", "gpu", BF16, "cuda", _LIGER),
]
