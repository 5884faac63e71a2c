"""Cosine family cases: cosine_similarity, feature_distillation_loss (mse, cosine) and
pairwise_cosine_similarity, against F.cosine_similarity, F.mse_loss and F.normalize + mm."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import pykernels as pk

from .case import Case, Point, randn, roofline, speedup, tensor_bytes

# (rows, features) of the row-wise ops; (N, M, D) of pairwise
ROWS = {
    "tiny": (4, 16),
    "small": (8, 32),
    "check": (64, 300),
    "quick": (16384, 512),
    "full": (65536, 512),
    "gpu_quick": (65536, 1024),
    "gpu": (262144, 4096),
}
PAIRS = {
    "tiny": (4, 6, 16),
    "small": (8, 10, 32),
    "check": (64, 96, 64),
    "quick": (1024, 1024, 512),
    "full": (4096, 4096, 512),
    "gpu_quick": (8192, 8192, 1024),
    "gpu": (16384, 16384, 1024),
}


def _pair(dtype, device, size, gen):
    R, D = ROWS[size]
    return {"x1": randn((R, D), dtype, device, gen), "x2": randn((R, D), dtype, device, gen)}


def _features(dtype, device, size, gen):
    R, D = ROWS[size]
    return {
        "student": randn((R, D), dtype, device, gen),
        "teacher": randn((R, D), dtype, device, gen),
    }


def _pairwise(dtype, device, size, gen):
    N, M, D = PAIRS[size]
    return {"a": randn((N, D), dtype, device, gen), "b": randn((M, D), dtype, device, gen)}


def _cosine_bytes(d):
    # forward: read x1, x2, write the [R] output; backward: read both again and the [R]
    # gradient, write both gradients
    rows = d["x1"][:, 0]
    return 3 * tensor_bytes(d["x1"], d["x2"]) + 2 * tensor_bytes(rows)


def _feature_bytes(d):
    # read student and teacher once, write the student's gradient
    return 2 * tensor_bytes(d["student"]) + tensor_bytes(d["teacher"])


def _pairwise_gemms(d):
    (N, D), M = d["a"].shape, d["b"].shape[0]
    return [(N, D, M), (N, M, D), (M, N, D)]  # a b^T; grad_a = G b; grad_b = G^T a


def _mse(student, teacher):
    """The mean over rows of each row's squared distance."""
    return F.mse_loss(student, teacher, reduction="sum") / student.shape[0]


CASES = [
    Case(
        "cosine_similarity",
        _pair,
        lambda be, x1, x2: pk.cosine_similarity(x1, x2, backend=be),
        grads=("x1", "x2"),
        eager=lambda x1, x2: F.cosine_similarity(x1, x2, dim=-1),
        bytes=_cosine_bytes,
    ),
    Case(
        "feature_distillation_loss[mse]",
        _features,
        lambda be, student, teacher: pk.feature_distillation_loss(student, teacher, backend=be),
        grads=("student",),
        eager=_mse,
        bytes=_feature_bytes,
    ),
    Case(
        "feature_distillation_loss[cosine]",
        _features,
        lambda be, student, teacher: pk.feature_distillation_loss(
            student, teacher, "cosine", backend=be
        ),
        grads=("student",),
        bytes=_feature_bytes,
        eager=lambda student, teacher: 1 - F.cosine_similarity(student, teacher, dim=-1).mean(),
    ),
    Case(
        "pairwise_cosine_similarity",
        _pairwise,
        lambda be, a, b: pk.pairwise_cosine_similarity(a, b, backend=be),
        grads=("a", "b"),
        eager=lambda a, b: F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T,
        gemms=_pairwise_gemms,
    ),
]

BF16 = torch.bfloat16
BENCH = [
    Point("cosine_similarity"),
    Point("cosine_similarity", "full", "full", targets=(speedup("compile", 1.2), roofline(0.7))),
    Point("feature_distillation_loss[mse]", "full", "full", targets=(speedup("compile", 1.2),)),
    Point("feature_distillation_loss[cosine]", "full", "full"),
    Point("pairwise_cosine_similarity", "full", "full", targets=(speedup("eager", 0.95),)),
    Point("cosine_similarity", "quick", "gpu_quick", BF16, "cuda"),
    Point("pairwise_cosine_similarity", "quick", "gpu_quick", BF16, "cuda"),
    Point("cosine_similarity", "full", "gpu", BF16, "cuda", (roofline(0.8),)),
    Point("feature_distillation_loss[mse]", "full", "gpu", BF16, "cuda", (roofline(0.8),)),
    Point("pairwise_cosine_similarity", "full", "gpu", BF16, "cuda", (roofline(0.7),)),
]
