"""Fused linear + loss cases: fused_linear_cross_entropy and fused_linear_distillation_loss
(forward KL at T = 2 plus hard labels) of an LM head, against the unfused compositions
(eager, torch.compile, and the matmul with pykernels' own loss: `unfused`), liger-kernel's
chunked losses and cut-cross-entropy. The roofline is the matmul floor: torch.mm at the op's
matmul shapes (3 for cross entropy, 4 for distillation with a frozen teacher)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import pykernels as pk

from .case import Case, Point, memory, randn, roofline, speedup
from .distillation import _kd

# (tokens, H, V); the teacher has the student's width
SHAPES = {
    "tiny": (8, 16, 40),
    "small": (16, 32, 100),
    "check": (64, 64, 1000),
    "quick": (512, 256, 32000),
    "full": (4096, 1024, 32000),
    "gpu_quick": (4096, 4096, 128256),
    "gpu": (16384, 4096, 128256),
}
T = 2.0
SOFT, HARD = 0.5, 0.5


def _head(dtype, device, size, gen, teacher=False):
    N, H, V = SHAPES[size]
    d = {
        "hidden": randn((N, H), dtype, device, gen),
        "weight": randn((V, H), dtype, device, gen, H**-0.5),
        "labels": torch.randint(0, V, (N,), generator=gen).to(device),
    }
    if teacher:
        d["teacher_hidden"] = randn((N, H), dtype, device, gen)
        d["teacher_weight"] = randn((V, H), dtype, device, gen, H**-0.5)
    return d


def _kd_inputs(dtype, device, size, gen):
    return _head(dtype, device, size, gen, teacher=True)


def _gemms(d):
    """logits h W^T; grad of h = G W; grad of W = G^T h (and the teacher's logits)."""
    (N, H), V = d["hidden"].shape, d["weight"].shape[0]
    g = [(N, H, V), (N, V, H), (V, N, H)]
    return g + ([(N, d["teacher_hidden"].shape[1], V)] if "teacher_hidden" in d else [])


# ----------------------------------------------------------------------------- pykernels
def _pk_ce(be, hidden, weight, labels):
    return pk.fused_linear_cross_entropy(hidden, weight, labels, backend=be)


def _pk_kd(be, hidden, weight, labels, teacher_hidden, teacher_weight):
    return pk.fused_linear_distillation_loss(
        hidden,
        weight,
        teacher_hidden,
        teacher_weight,
        labels=labels,
        temperature=T,
        soft_weight=SOFT,
        hard_weight=HARD,
        backend=be,
    )


# ----------------------------------------------------------------------------- unfused
def _eager_ce(hidden, weight, labels):
    return F.cross_entropy(hidden @ weight.T, labels)


def _eager_kd(hidden, weight, labels, teacher_hidden, teacher_weight):
    s, t = hidden @ weight.T, teacher_hidden @ teacher_weight.T
    return SOFT * _kd(s, t, T) + HARD * F.cross_entropy(s, labels)


def _unfused_ce(device):
    """The matmul, pykernels' fused loss on the logits, and autograd's matmul gradients."""
    return lambda hidden, weight, labels: pk.cross_entropy(hidden @ weight.T, labels)


def _unfused_kd(device):
    def run(hidden, weight, labels, teacher_hidden, teacher_weight):
        return pk.distillation_loss(
            hidden @ weight.T,
            teacher_hidden @ teacher_weight.T,
            labels=labels,
            temperature=T,
            soft_weight=SOFT,
            hard_weight=HARD,
        )

    return run


# ----------------------------------------------------------------------------- peers
def _liger_ce(device):
    """LigerFusedLinearCrossEntropyLoss: a Triton GPU kernel (None elsewhere)."""
    if device.type != "cuda":
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    loss = LigerFusedLinearCrossEntropyLoss()
    return lambda hidden, weight, labels: loss(weight, hidden, labels)


def _liger_kd(device):
    """liger-kernel's chunked LigerFusedLinearJSDLoss at beta = 0 (forward KL); its soft term
    has no T^2, which its soft weight carries here."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except ImportError:
        return None
    loss = LigerFusedLinearJSDLoss(
        weight_hard_loss=HARD, weight_soft_loss=SOFT * T * T, beta=0.0, temperature=T
    )
    return lambda hidden, weight, labels, teacher_hidden, teacher_weight: loss(
        hidden, weight, teacher_hidden, teacher_weight, labels
    )


def _cce(device):
    """cut-cross-entropy's linear_cross_entropy, impl="torch_compile" (runs on a CPU too)."""
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        return None
    return lambda hidden, weight, labels: linear_cross_entropy(
        hidden, weight, labels, impl="torch_compile"
    )


CASES = [
    Case(
        "fused_linear_cross_entropy",
        _head,
        _pk_ce,
        grads=("hidden", "weight"),
        eager=_eager_ce,
        peers={"unfused": _unfused_ce, "liger": _liger_ce, "cce": _cce},
        gemms=_gemms,
    ),
    Case(
        "fused_linear_distillation_loss[kd+ce]",
        _kd_inputs,
        _pk_kd,
        grads=("hidden", "weight"),
        eager=_eager_kd,
        peers={"unfused": _unfused_kd, "liger": _liger_kd},
        gemms=_gemms,
    ),
]

BF16 = torch.bfloat16
_CPU_TARGETS = (speedup("unfused", 1.0), roofline(0.85), memory("eager", 0.25))
_GPU_TARGETS = (speedup("liger", 1.0),)
BENCH = [
    Point("fused_linear_cross_entropy"),
    Point("fused_linear_distillation_loss[kd+ce]"),
    Point(
        "fused_linear_cross_entropy", "full", "full", targets=_CPU_TARGETS + (speedup("cce", 1.0),)
    ),
    Point(
        "fused_linear_distillation_loss[kd+ce]",
        "full",
        "full",
        targets=_CPU_TARGETS + (speedup("liger", 1.0),),
    ),
    Point("fused_linear_cross_entropy", "quick", "gpu_quick", BF16, "cuda"),
    Point(
        "fused_linear_cross_entropy",
        "full",
        "gpu",
        BF16,
        "cuda",
        _GPU_TARGETS + (speedup("cce", 1.0),),
    ),
    Point("fused_linear_distillation_loss[kd+ce]", "full", "gpu", BF16, "cuda", _GPU_TARGETS),
]
