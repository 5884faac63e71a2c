"""Malformed input to the C++ and Triton ops called directly: torch.ops.pykernels.<op> (cpu,
cuda) and <op>_triton (triton) check their own inputs too, with the exception types of
test_malformed.py. The good arguments in schema order are malformed.DIRECT.
"""

from __future__ import annotations

import math

import pytest
import torch

from pykernels.ops import _registry

from .helpers import FUSED_BACKENDS
from .malformed import (
    DIRECT,
    INF,
    NAN,
    ON_OTHER,
    Mut,
    Row,
    any_float_rows,
    applies,
    as_dtype,
    call_direct,
    direct_generic_rows,
    f,
    fill,
    reshaped,
    table_rows,
)


def _direct_cosine_rows() -> list[Row]:
    rows = []
    eps_ops = ("cosine_similarity", "feature_distillation_loss", "pairwise_cosine_similarity")
    for op in eps_ops:
        rows += [
            Row(op, "eps 0", {"eps": 0.0}, ValueError, r"argument 'eps' must be > 0"),
            Row(op, "eps nan", {"eps": NAN}, ValueError, r"argument 'eps' must be > 0"),
            Row(
                op,
                "eps a string",
                {"eps": "x"},
                RuntimeError,
                r"Expected a value of type 'float' for argument 'eps'",
            ),
        ]
    for op, (n1, n2) in (
        ("cosine_similarity", ("x1", "x2")),
        ("feature_distillation_loss", ("student", "teacher")),
    ):
        rows += [
            Row(
                op,
                "shape mismatch",
                {n2: reshaped(3, 4)},
                ValueError,
                rf"argument '{n2}' must have the same shape",
            ),
            Row(
                op,
                f"{n1} 0-dim",
                {n1: Mut(lambda x, d: x[0, 0]), n2: Mut(lambda x, d: x[0, 0])},
                ValueError,
                rf"argument '{n1}' must have at least 1 dimension",
            ),
        ]
    rows += [
        Row(
            "feature_distillation_loss",
            "bad kind",
            {"kind": "l1"},
            ValueError,
            r"argument 'kind' must be",
        ),
        Row(
            "pairwise_cosine_similarity",
            "a 2-D",
            {"a": reshaped(3, 4)},
            ValueError,
            r"argument 'a' must have 3 dimension",
        ),
        Row(
            "pairwise_cosine_similarity",
            "b 4-D",
            {"b": reshaped(1, 2, 5, 4)},
            ValueError,
            r"argument 'b' must have 3 dimension",
        ),
        Row(
            "pairwise_cosine_similarity",
            "B mismatch",
            {"b": reshaped(3, 5, 4)},
            ValueError,
            r"arguments 'a' \[B, N, D\] and 'b' \[B, M, D\] must agree",
        ),
        Row(
            "pairwise_cosine_similarity",
            "D mismatch",
            {"b": reshaped(2, 5, 3)},
            ValueError,
            r"arguments 'a' (\[B, N, D\] )?and 'b' .*(must agree|same feature size)",
        ),
    ]
    return rows


def _direct_distillation_rows() -> list[Row]:
    rows = [
        Row(
            "distillation_loss",
            "temperature 0",
            {"temperature": 0.0},
            ValueError,
            r"argument 'temperature' must be > 0",
        ),
        Row(
            "distillation_loss",
            "temperature inf",
            {"temperature": INF},
            ValueError,
            r"argument 'temperature' must be finite",
        ),
        Row(
            "distillation_loss",
            "beta 2",
            {"beta": 2.0},
            ValueError,
            r"argument 'beta' must be in \[0, 1\]",
        ),
        Row(
            "distillation_loss",
            "label_smoothing -0.1",
            {"label_smoothing": -0.1},
            ValueError,
            r"argument 'label_smoothing' must be in \[0, 1\]",
        ),
        Row(
            "distillation_loss",
            "soft_weight nan",
            {"soft_weight": NAN},
            ValueError,
            r"argument 'soft_weight' must be finite",
        ),
        Row(
            "distillation_loss",
            "hard_weight without labels",
            {"labels": None},
            ValueError,
            r"'hard_weight'.*labels",
        ),
        Row(
            "distillation_loss",
            "teacher shape",
            {"teacher_logits": reshaped(3, 4)},
            ValueError,
            r"argument 'teacher_logits' must have the same shape",
        ),
        Row(
            "distillation_loss",
            "labels int32",
            {"labels": as_dtype(torch.int32)},
            TypeError,
            r"argument 'labels' must be int64",
        ),
        Row(
            "distillation_loss",
            "labels shape",
            {"labels": Mut(lambda x, d: x[:2])},
            ValueError,
            r"argument 'labels' must have shape",
        ),
        Row(
            "distillation_loss",
            "labels on another device",
            {"labels": ON_OTHER},
            ValueError,
            r"argument 'labels' must be on the same device",
        ),
        Row(
            "distillation_loss",
            "no classes",
            {"student_logits": reshaped(3, 0), "teacher_logits": reshaped(3, 0)},
            ValueError,
            r"argument 'student_logits' must have at least one class",
        ),
        Row(
            "cross_entropy",
            "label_smoothing 2",
            {"label_smoothing": 2.0},
            ValueError,
            r"argument 'label_smoothing' must be in \[0, 1\]",
        ),
        Row(
            "cross_entropy",
            "grad_scale nan",
            {"grad_scale": NAN},
            ValueError,
            r"argument 'grad_scale' must be finite",
        ),
        Row(
            "cross_entropy",
            "labels float",
            {"labels": as_dtype(torch.float32)},
            TypeError,
            r"argument 'labels' must be int64",
        ),
        Row(
            "cross_entropy",
            "labels shape",
            {"labels": Mut(lambda x, d: x[None])},
            ValueError,
            r"argument 'labels' must have shape",
        ),
        Row(
            "cross_entropy",
            "labels >= V",
            {"labels": fill(5, 1)},
            IndexError,
            r"argument 'labels' must be in \[0, 5\) or ignore_index",
            backends=("cpu",),
        ),
        Row(
            "soft_target_cross_entropy",
            "temperature negative",
            {"temperature": -1.0},
            ValueError,
            r"argument 'temperature' must be > 0",
        ),
        Row(
            "soft_target_cross_entropy",
            "temperature nan",
            {"temperature": NAN},
            ValueError,
            r"argument 'temperature' must be > 0",
        ),
        Row(
            "soft_target_cross_entropy",
            "target shape",
            {"target_probs": reshaped(3, 4)},
            ValueError,
            r"argument 'target_probs' must have the same shape",
        ),
    ]
    return rows


def _direct_contrastive_rows() -> list[Row]:
    rows = [
        Row(
            "info_nce_loss",
            "labels int32",
            {"labels": as_dtype(torch.int32)},
            TypeError,
            r"argument 'labels' must be int64",
        ),
        Row(
            "info_nce_loss",
            "labels float",
            {"labels": as_dtype(torch.float32)},
            TypeError,
            r"argument 'labels' must be (int64|an integer tensor)",
        ),
        Row(
            "info_nce_loss",
            "labels shape",
            {"labels": Mut(lambda x, d: x[:3])},
            ValueError,
            r"argument 'labels' must have shape \[N\] = \[4\]",
        ),
        Row(
            "info_nce_loss",
            "labels on another device",
            {"labels": ON_OTHER},
            ValueError,
            r"argument 'labels' must be on the same device",
        ),
        Row(
            "info_nce_loss",
            "labels >= M",
            {"labels": fill(4, 0)},
            IndexError,
            r"argument 'labels' must hold indices",
            backends=("cpu",),
        ),
        Row(
            "info_nce_loss",
            "logit_scale shape [2]",
            {"logit_scale": reshaped(2)},
            ValueError,
            r"argument 'logit_scale' must be a scalar tensor",
        ),
        Row(
            "info_nce_loss",
            "image_features 3-D",
            {"image_features": reshaped(1, 4, 6)},
            ValueError,
            r"argument 'image_features' must (have 2 dimension|have shape \[rows, D\])",
        ),
        Row(
            "info_nce_loss",
            "D mismatch",
            {"text_features": reshaped(4, 5)},
            ValueError,
            r"arguments 'image_features' \[N, D\] and 'text_features' \[M, D\] must have the same feature size",
        ),
    ]
    return rows


def _direct_mae_rows() -> list[Row]:
    rows = [
        Row(
            "random_masking",
            "x 2-D",
            {"x": reshaped(2, 6)},
            ValueError,
            r"argument 'x' must have (3 dimension|shape)",
        ),
        Row(
            "random_masking",
            "mask_ratio 1",
            {"mask_ratio": 1.0},
            ValueError,
            r"argument 'mask_ratio' must be in \[0, 1\)",
        ),
        Row(
            "random_masking",
            "mask_ratio nan",
            {"mask_ratio": NAN},
            ValueError,
            r"argument 'mask_ratio' must be in \[0, 1\)",
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "mask_token size",
            {"mask_token": reshaped(4)},
            ValueError,
            r"argument 'mask_token' must have 3 elements",
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "mask_token 2-D",
            {"mask_token": reshaped(1, 3)},
            ValueError,
            r"argument 'mask_token' must have (1 dimension|shape)",
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "mask_token float64",
            {"mask_token": as_dtype(torch.float64)},
            TypeError,
            r"argument 'mask_token' must have the same dtype",
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "K > L",
            {"ids_restore": Mut(lambda x, d: x[:, :1])},
            ValueError,
            r"argument 'x_visible' has 2 tokens, more than the L = 1 of 'ids_restore'",
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "ids_restore >= L",
            {"ids_restore": fill(4, 1)},
            IndexError,
            r"argument 'ids_restore' has id 4",
            backends=("cpu",),
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "ids_restore repeated",
            {"ids_restore": fill(0, 1)},
            ValueError,
            r"argument 'ids_restore' repeats id 0",
            backends=("cpu",),
        ),
        Row(
            "gather_patches",
            "patch_size 0",
            {"patch_size": 0},
            ValueError,
            r"argument 'patch_size' must be > 0",
        ),
        Row(
            "gather_patches",
            "patch_size does not divide",
            {"patch_size": 3},
            ValueError,
            r"multiples of 'patch_size' \(3\)",
        ),
        Row(
            "gather_patches",
            "imgs 3-D",
            {"imgs": reshaped(3, 4, 4)},
            ValueError,
            r"argument 'imgs' must have (4 dimension|shape)",
        ),
        Row(
            "gather_patches",
            "ids_keep >= L",
            {"ids_keep": fill(4, 1)},
            IndexError,
            r"argument 'ids_keep' has id 4",
            backends=("cpu",),
        ),
        Row(
            "gather_patches",
            "ids_keep repeated",
            {"ids_keep": fill(0, 1)},
            ValueError,
            r"argument 'ids_keep' repeats id 0",
            backends=("cpu",),
        ),
        Row(
            "masked_patch_loss",
            "pred shape",
            {"pred": reshaped(2, 4, 11)},
            ValueError,
            r"argument 'pred' must have shape \[2, 4, 12\]",
        ),
        Row(
            "masked_patch_loss",
            "pred 2-D",
            {"pred": reshaped(2, 48)},
            ValueError,
            r"argument 'pred' must have (3 dimension|shape)",
        ),
        Row(
            "masked_patch_loss",
            "patch_size 0",
            {"patch_size": 0},
            ValueError,
            r"argument 'patch_size' must be > 0",
        ),
    ]
    return rows


def _direct_diffusion_rows() -> list[Row]:
    rows = [
        Row(
            "add_noise",
            "noise shape",
            {"noise": reshaped(3, 5)},
            ValueError,
            r"argument 'noise' must have the same shape",
        ),
        Row(
            "get_velocity",
            "x0 0-dim",
            {"x0": reshaped(), "noise": reshaped()},
            ValueError,
            r"argument 'x0' must have at least 1 dimension",
        ),
        Row(
            "diffusion_loss",
            "prediction_type eps",
            {"prediction_type": "eps"},
            ValueError,
            r"argument 'prediction_type' must be one of",
        ),
        Row(
            "diffusion_loss",
            "reduction batchmean",
            {"reduction": "batchmean"},
            ValueError,
            r"argument 'reduction' must be one of",
        ),
        Row(
            "diffusion_loss",
            "noise shape",
            {"noise": reshaped(3, 5)},
            ValueError,
            r"argument 'noise' must have the same shape",
        ),
        Row("ddim_step", "eta negative", {"eta": -1.0}, ValueError, r"argument 'eta' must be >= 0"),
        Row("ddim_step", "eta nan", {"eta": NAN}, ValueError, r"argument 'eta' must be >= 0"),
        Row(
            "ddim_step",
            "final_alpha_cumprod 0",
            {"final_alpha_cumprod": 0.0},
            ValueError,
            r"argument 'final_alpha_cumprod' must be in \(0, 1\]",
        ),
    ]
    # noise: any float dtype (its order is all that counts); mask: any float dtype (the op
    # converts it)
    rows += any_float_rows("random_masking", "noise", (2, 6)) + any_float_rows(
        "masked_patch_loss", "mask", (2, 4)
    )
    for op in ("ddpm_step", "ddim_step"):
        rows += [
            Row(
                op,
                "prediction_type x",
                {"prediction_type": "x"},
                ValueError,
                r"argument 'prediction_type' must be one of",
            ),
            Row(
                op,
                "clip_sample_range 0",
                {"clip_sample_range": 0.0},
                ValueError,
                r"argument 'clip_sample_range' must be > 0",
            ),
            Row(
                op,
                "noise shape",
                {"noise": reshaped(3, 5)},
                ValueError,
                r"argument 'noise' must have the same shape",
            ),
            Row(
                op,
                "prev_timesteps float",
                {"prev_timesteps": as_dtype(torch.float32)},
                TypeError,
                r"argument 'prev_timesteps' must be an int64 or int32 tensor",
            ),
            Row(
                op,
                "prev_timesteps >= T",
                {"prev_timesteps": fill(10, 0)},
                IndexError,
                r"argument 'prev_timesteps' has 10",
                backends=("cpu",),
            ),
            Row(
                op,
                "threshold float16",
                {"threshold": lambda d: f(d, 3, dtype=torch.float16)},
                TypeError,
                r"argument 'threshold' must be in the accumulation dtype",
            ),
            Row(
                op,
                "threshold shape",
                {"threshold": lambda d: f(d, 2)},
                ValueError,
                r"argument 'threshold' must have shape \[N\] = \[3\]",
            ),
            Row(
                op,
                "threshold on another device",
                {"threshold": lambda d: torch.ones(3, device=d.other)},
                ValueError,
                r"argument 'threshold' must be on the same device|on the same device as 'threshold'",
            ),
        ]
    for op in ("add_noise", "get_velocity", "diffusion_loss", "ddpm_step", "ddim_step"):
        rows += table_rows(op) + [
            Row(
                op,
                "timesteps float",
                {"timesteps": as_dtype(torch.float32)},
                TypeError,
                r"argument 'timesteps' must be an int64 or int32 tensor",
            ),
            Row(
                op,
                "timesteps one short",
                {"timesteps": Mut(lambda x, d: x[:2])},
                ValueError,
                r"argument 'timesteps' must have shape \[N\] = \[3\]",
            ),
            Row(
                op,
                "timesteps 0-dim",
                {"timesteps": Mut(lambda x, d: x[0])},
                ValueError,
                r"argument 'timesteps' must have shape \[N\] = \[3\]",
            ),
            Row(
                op,
                "timesteps on another device",
                {"timesteps": ON_OTHER},
                ValueError,
                r"argument 'timesteps' must be on the same device",
            ),
            Row(
                op,
                "timesteps >= T",
                {"timesteps": fill(10, 1)},
                IndexError,
                r"argument 'timesteps' has 10",
                backends=("cpu",),
            ),
            Row(
                op,
                "timesteps negative",
                {"timesteps": fill(-3, 1)},
                IndexError,
                r"argument 'timesteps' has -3",
                backends=("cpu",),
            ),
        ]
    return rows


DIRECT_ROWS = (
    [row for op in DIRECT for row in direct_generic_rows(op)]
    + _direct_cosine_rows()
    + _direct_distillation_rows()
    + _direct_contrastive_rows()
    + _direct_mae_rows()
    + _direct_diffusion_rows()
)


def _direct_params():
    return [
        pytest.param(row, p.values[0], id=f"{row.id}-{p.values[0]}", marks=p.marks)
        for row in DIRECT_ROWS
        for p in FUSED_BACKENDS
        if applies(row, p.values[0])
    ]


@pytest.mark.parametrize("row, backend", _direct_params())
def test_direct_op(row, backend):
    with pytest.raises(row.exc, match=row.match):
        call_direct(row, backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_direct_good_arguments_run(backend):
    for op in DIRECT:
        row = Row(op, "good", {}, None, "")
        call_direct(row, backend)


# ------------------------------------------------------------- bad direct calls per family
# Direct calls the generic rows above do not reach (backward ops, the gradient scaler, value
# ranges): family -> [(call(op), exception, message)], where op(name) is the op `name` on the
# backend under test (pykernels.ops._registry.op).
def _cosine_ops_bad() -> list:
    return [
        (
            lambda o: o("cosine_similarity")(
                torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3, dtype=torch.int32), 1e-8
            ),
            TypeError,
            "'x1'",
        ),
        (
            lambda o: o("cosine_similarity")(torch.ones(2, 3), torch.ones(2, 4), 1e-8),
            ValueError,
            "'x2'",
        ),
        (
            lambda o: o("cosine_similarity")(
                torch.ones(2, 3), torch.ones(2, 3, dtype=torch.float64), 1e-8
            ),
            TypeError,
            "'x2'",
        ),
        (
            lambda o: o("cosine_similarity")(torch.ones(2, 3), torch.ones(2, 3), 0.0),
            ValueError,
            "'eps'",
        ),
        (
            lambda o: o("cosine_similarity")(torch.tensor(1.0), torch.tensor(1.0), 1e-8),
            ValueError,
            "'x1'",
        ),
        (
            lambda o: o("cosine_similarity_backward")(
                torch.ones(3), torch.ones(2, 3), torch.ones(2, 3), 1e-8, [True, True]
            ),
            ValueError,
            "'grad'",
        ),
        (
            lambda o: o("feature_distillation_loss")(
                torch.ones(2, 3), torch.ones(2, 3), "l1", 1e-8
            ),
            ValueError,
            "'kind'",
        ),
        (
            lambda o: o("pairwise_cosine_similarity")(
                torch.ones(1, 2, 3), torch.ones(1, 2, 4), 1e-8
            ),
            ValueError,
            "'a'",
        ),
        (
            lambda o: o("pairwise_cosine_similarity")(torch.ones(2, 3), torch.ones(2, 3), 1e-8),
            ValueError,
            "'a'",
        ),
    ]


def _contrastive_ops_bad() -> list:
    Y = torch.tensor([0, 1, 2, 3])
    return [
        (
            lambda o: o("info_nce_loss")(
                torch.ones(4, 3), torch.ones(4, 5), torch.tensor(1.0), Y, True, False
            ),
            ValueError,
            "feature size D",
        ),
        (
            lambda o: o("info_nce_loss")(
                torch.ones(4, 3), torch.ones(4, 3), torch.ones(2), Y, True, False
            ),
            ValueError,
            "'logit_scale'",
        ),
        (
            lambda o: o("info_nce_loss")(
                torch.ones(4, 3), torch.ones(4, 3), torch.tensor(1.0), Y[:3], True, False
            ),
            ValueError,
            "'labels'",
        ),
        (
            lambda o: o("info_nce_loss")(
                torch.ones(4, 3), torch.ones(4, 3), torch.tensor(1.0), Y.int(), True, False
            ),
            TypeError,
            "'labels'",
        ),
        (
            lambda o: o("info_nce_loss")(
                torch.ones(4, 3), torch.ones(4, 3), torch.tensor(1.0), Y + 1, True, False
            ),
            IndexError,
            "'labels'",
        ),
        (
            lambda o: o("info_nce_loss")(
                torch.ones(4, 3, dtype=torch.int64),
                torch.ones(4, 3, dtype=torch.int64),
                torch.tensor(1.0),
                Y,
                True,
                False,
            ),
            TypeError,
            "'image_features'",
        ),
        (
            lambda o: o("info_nce_loss")(
                torch.ones(4), torch.ones(4), torch.tensor(1.0), Y, True, False
            ),
            ValueError,
            "'image_features'",
        ),
        (
            lambda o: o("info_nce_loss_backward")(
                torch.ones(1, 4),
                torch.ones(4, 3),
                torch.ones(4, 3),
                torch.tensor(1.0),
                Y,
                torch.ones(4),
                torch.ones(4),
                True,
                False,
            ),
            ValueError,
            "'grad'",
        ),
        (
            lambda o: o("info_nce_loss_backward")(
                torch.ones(2, 4),
                torch.ones(4, 3),
                torch.ones(4, 3),
                torch.tensor(1.0),
                Y,
                torch.ones(4),
                torch.ones(0),
                True,
                False,
            ),
            ValueError,
            "'col_lse'",
        ),
    ]


def _distillation_ops_bad() -> list:
    S, T = torch.ones(2, 5), torch.ones(2, 5)
    Y = torch.tensor([1, 2])
    F = (False, False, 1.0)  # grad flags and grad_scale
    return [
        (
            lambda o: o("distillation_loss")(
                S, torch.ones(2, 6), None, 1.0, 1.0, 0.0, 0.0, -100, 0.0, *F
            ),
            ValueError,
            "'teacher_logits'",
        ),
        (
            lambda o: o("distillation_loss")(
                S.long(), T.long(), None, 1.0, 1.0, 0.0, 0.0, -100, 0.0, *F
            ),
            TypeError,
            "'student_logits'",
        ),
        (
            lambda o: o("distillation_loss")(S, T, None, 0.0, 1.0, 0.0, 0.0, -100, 0.0, *F),
            ValueError,
            "'temperature'",
        ),
        (
            lambda o: o("distillation_loss")(S, T, None, 1.0, 1.0, 0.0, 2.0, -100, 0.0, *F),
            ValueError,
            "'beta'",
        ),
        (
            lambda o: o("distillation_loss")(S, T, None, 1.0, 1.0, 1.0, 0.0, -100, 0.0, *F),
            ValueError,
            "'hard_weight'",
        ),
        (
            lambda o: o("distillation_loss")(
                S, T, torch.tensor([1, 5]), 1.0, 1.0, 1.0, 0.0, -100, 0.0, *F
            ),
            IndexError,
            "'labels'",
        ),
        (
            lambda o: o("distillation_loss")(
                S, T, None, 1.0, 1.0, 0.0, 0.0, -100, 0.0, False, False, math.inf
            ),
            ValueError,
            "'grad_scale'",
        ),
        (
            lambda o: o("cross_entropy")(S, torch.tensor([1, -3]), -100, 0.0, False, 1.0),
            IndexError,
            "'labels'",
        ),
        (
            lambda o: o("cross_entropy")(S, torch.tensor([1]), -100, 0.0, False, 1.0),
            ValueError,
            "'labels'",
        ),
        (
            lambda o: o("cross_entropy")(
                S, torch.tensor([1, 2], dtype=torch.int32), -100, 0.0, False, 1.0
            ),
            TypeError,
            "'labels'",
        ),
        (
            lambda o: o("cross_entropy")(S, Y, -100, 1.5, False, 1.0),
            ValueError,
            "'label_smoothing'",
        ),
        (
            lambda o: o("soft_target_cross_entropy")(S, torch.ones(2, 4), 1.0, *F),
            ValueError,
            "'target_probs'",
        ),
        (lambda o: o("distillation_scale_grad")(torch.ones(3), S), ValueError, "'grad'"),
        (
            lambda o: o("distillation_scale_grad_inplace")(torch.ones(3), S.clone()),
            ValueError,
            "'grad'",
        ),
        (
            lambda o: o("distillation_scale_grad_inplace")(torch.ones(2), torch.ones(4, 2).t()),
            ValueError,
            "'x' must be contiguous",
        ),
    ]


def _flow_matching_ops_bad() -> list:
    X = torch.ones(3, 4)
    S3 = torch.tensor([0.0, 0.5, 1.0])
    G3 = torch.ones(3)
    return [
        (
            lambda o: o("flow_interpolate")(X, X, S3[:2]),
            ValueError,
            r"'sigmas' must have shape \[N\] = \[3\]",
        ),
        (
            lambda o: o("flow_interpolate")(X, X, S3 + 0.5),
            ValueError,
            r"'sigmas' has 1.5 at index 2, outside \[0, 1\]",
        ),
        (lambda o: o("flow_interpolate")(X, X, S3.long()), TypeError, "'sigmas' must be float32"),
        (
            lambda o: o("flow_interpolate")(X, X.double(), S3),
            TypeError,
            "'noise' must have the same dtype",
        ),
        (
            lambda o: o("flow_interpolate_backward")(X, S3[None]),
            ValueError,
            r"'sigmas' must have shape \[N\]",
        ),
        (
            lambda o: o("flow_matching_loss")(X, X, X, S3, "sqrt", False, False),
            ValueError,
            "'weighting_scheme'",
        ),
        (
            lambda o: o("flow_matching_loss")(X, X, X[:2], S3, "none", False, False),
            ValueError,
            "'noise'",
        ),
        (
            lambda o: o("flow_matching_loss_backward")(
                X, None, X, X, X, S3, "none", False, [True, True, True]
            ),
            ValueError,
            "'grad'",
        ),
        (
            lambda o: o("flow_matching_loss_backward")(
                G3, X[:, :2], X, X, X, S3, "none", False, [True, True, True]
            ),
            ValueError,
            "'grad_noisy'",
        ),
        (
            lambda o: o("flow_match_euler_step")(X, X, S3, S3[:1]),
            ValueError,
            "'sigmas_next' must have shape",
        ),
        (
            lambda o: o("flow_match_euler_step")(X.half(), X, S3, S3),
            TypeError,
            "'model_output' must have the same dtype",
        ),
        (
            lambda o: o("flow_match_euler_step_backward")(X, S3, -S3),
            ValueError,
            "'sigmas_next' has -0.5 at index 1",
        ),
    ]


OPS_BAD = {
    "cosine": _cosine_ops_bad(),
    "contrastive": _contrastive_ops_bad(),
    "distillation": _distillation_ops_bad(),
    "flow_matching": _flow_matching_ops_bad(),
}
# the families whose Triton ops are checked here too (the others: the generic rows above)
OPS_BAD_TRITON = ("flow_matching",)


def _ops_bad_params():
    return [
        pytest.param(fam, case, p.values[0], id=f"{fam}-{case}-{p.values[0]}", marks=p.marks)
        for fam, rows in OPS_BAD.items()
        for case in range(len(rows))
        for p in FUSED_BACKENDS
        if p.values[0] == "cpu" or (p.values[0] == "triton" and fam in OPS_BAD_TRITON)
    ]


@pytest.mark.parametrize("family, case, backend", _ops_bad_params())
def test_bad_input_torch_ops(family, case, backend):
    """The checks hold when torch.ops.pykernels.* is called directly (TORCH_CHECK, and the
    Triton ops' own checks). Values (' has ... outside') are read back by the CPU ops only."""
    call, exc, text = OPS_BAD[family][case]
    if "' has " in text and backend != "cpu":
        pytest.skip("values are checked by the public functions and the CPU ops")
    with pytest.raises(exc, match=text):
        call(lambda name: _registry.op(name, backend))
