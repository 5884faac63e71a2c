"""Malformed input to the distillation family (distillation_loss, cross_entropy,
soft_target_cross_entropy, the gradient scaler, the fused-linear losses' backward ops): the
public functions, the direct op calls and the backward ops. The rows every op gets are in
test_malformed.py and test_malformed_direct.py.
"""

from __future__ import annotations

import math

import torch

import pykernels as pk

from .malformed import (
    AS_LIST,
    INF,
    NAN,
    ON_OTHER,
    PUBLIC,
    Mut,
    Row,
    as_dtype,
    bad_call_tests,
    fill,
    ints,
    public_tests,
    reshaped,
)
from .malformed_backward import (
    SCALE_OPS,
    backward_tests,
    grad_rows,
    grad_shape,
)
from .malformed_direct import bad_op_tests, direct_tests

# ------------------------------------------------------------- public functions (malformed.py)


def _public_rows() -> list[Row]:
    rows = []
    logits_of = {
        "distillation_loss": "student_logits",
        "cross_entropy": "logits",
        "soft_target_cross_entropy": "logits",
    }
    for op, lg in logits_of.items():
        rows += [
            Row(
                op,
                "no classes",
                {n: reshaped(3, 0) for n in PUBLIC[op][3]}
                | (
                    {"labels": lambda d: ints(d, [-100, -100, -100])}
                    if op != "soft_target_cross_entropy"
                    else {}
                ),
                ValueError,
                rf"argument '{lg}' must have at least one class",
            ),
            Row(
                op,
                f"{lg} 0-dim",
                {n: Mut(lambda x, d: x[0, 0]) for n in PUBLIC[op][3]},
                ValueError,
                rf"argument '{lg}' must have at least 1 dimension",
            ),
        ]
    for op in ("distillation_loss", "soft_target_cross_entropy"):
        rows += [
            Row(
                op,
                "temperature 0",
                {"temperature": 0.0},
                ValueError,
                r"argument 'temperature' must be > 0",
            ),
            Row(
                op,
                "temperature negative",
                {"temperature": -2.0},
                ValueError,
                r"argument 'temperature' must be > 0",
            ),
            Row(
                op,
                "temperature nan",
                {"temperature": NAN},
                ValueError,
                r"argument 'temperature' must be > 0",
            ),
            Row(
                op,
                "temperature inf",
                {"temperature": INF},
                ValueError,
                r"argument 'temperature' must be finite",
            ),
            Row(
                op,
                "temperature a tensor",
                {"temperature": lambda d: torch.tensor(2.0)},
                TypeError,
                r"argument 'temperature' must be a number",
            ),
        ]
    for op in ("distillation_loss", "cross_entropy"):
        rows += [
            Row(
                op,
                "labels float",
                {"labels": as_dtype(torch.float32)},
                TypeError,
                r"argument 'labels' must be int64",
            ),
            Row(
                op,
                "labels int32",
                {"labels": as_dtype(torch.int32)},
                TypeError,
                r"argument 'labels' must be int64",
            ),
            Row(
                op,
                "labels on another device",
                {"labels": ON_OTHER},
                ValueError,
                r"argument 'labels' must be on the same device",
            ),
            Row(
                op,
                "labels shape",
                {"labels": Mut(lambda x, d: x[:2])},
                ValueError,
                r"argument 'labels' must have shape \(3,\)",
            ),
            Row(
                op,
                "labels >= V",
                {"labels": fill(5, 1)},
                IndexError,
                r"argument 'labels' must be in \[0, 5\) or ignore_index",
                cpu_tensors_only=True,
            ),
            Row(
                op,
                "labels negative, not ignore_index",
                {"labels": fill(-1, 1)},
                IndexError,
                r"argument 'labels' must be in \[0, 5\) or ignore_index",
                cpu_tensors_only=True,
            ),
            Row(
                op,
                "label_smoothing 1.5",
                {"label_smoothing": 1.5},
                ValueError,
                r"argument 'label_smoothing' must be in \[0, 1\]",
            ),
            Row(
                op,
                "label_smoothing nan",
                {"label_smoothing": NAN},
                ValueError,
                r"argument 'label_smoothing' must be finite",
            ),
            Row(
                op,
                "ignore_index a float",
                {"ignore_index": -100.0},
                TypeError,
                r"argument 'ignore_index' must be an int",
            ),
        ]
    rows += [
        Row(
            "distillation_loss",
            "labels not a tensor",
            {"labels": AS_LIST},
            TypeError,
            r"argument 'labels' must be a torch.Tensor",
        ),
        Row(
            "distillation_loss",
            "hard_weight without labels",
            {"labels": None},
            ValueError,
            r"argument 'labels' is required when hard_weight != 0",
        ),
        Row(
            "distillation_loss",
            "beta 1.5",
            {"beta": 1.5},
            ValueError,
            r"argument 'beta' must be in \[0, 1\]",
        ),
        Row(
            "distillation_loss",
            "beta negative",
            {"beta": -0.5},
            ValueError,
            r"argument 'beta' must be in \[0, 1\]",
        ),
        Row(
            "distillation_loss",
            "soft_weight inf",
            {"soft_weight": INF},
            ValueError,
            r"argument 'soft_weight' must be finite",
        ),
        Row(
            "distillation_loss",
            "hard_weight nan",
            {"hard_weight": NAN},
            ValueError,
            r"argument 'hard_weight' must be finite",
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
            "bad reduction",
            {"reduction": "mean"},
            ValueError,
            r"argument 'reduction' must be one of",
        ),
        Row(
            "cross_entropy",
            "labels not a tensor",
            {"labels": AS_LIST},
            TypeError,
            r"argument 'labels' must be a torch.Tensor",
        ),
        Row(
            "cross_entropy",
            "bad reduction",
            {"reduction": "batchmean"},
            ValueError,
            r"argument 'reduction' must be one of",
        ),
        Row(
            "soft_target_cross_entropy",
            "target shape",
            {"target_probs": reshaped(3, 4)},
            ValueError,
            r"argument 'target_probs' must have the same shape",
        ),
        Row(
            "soft_target_cross_entropy",
            "bad reduction",
            {"reduction": "mean"},
            ValueError,
            r"argument 'reduction' must be one of",
        ),
    ]
    return rows


def _bad_public_calls() -> list:
    S, T = torch.ones(2, 5), torch.ones(2, 5)
    Y = torch.tensor([1, 2])
    return [
        (lambda: pk.distillation_loss(S, torch.ones(2, 6)), ValueError, "'teacher_logits'"),
        (lambda: pk.distillation_loss(S, torch.ones(3, 5)), ValueError, "'teacher_logits'"),
        (lambda: pk.distillation_loss(S, T.double()), TypeError, "'teacher_logits'"),
        (lambda: pk.distillation_loss(S.long(), T.long()), TypeError, "'student_logits'"),
        (lambda: pk.distillation_loss(S, T, temperature=0.0), ValueError, "'temperature'"),
        (lambda: pk.distillation_loss(S, T, temperature=-1.0), ValueError, "'temperature'"),
        (lambda: pk.distillation_loss(S, T, temperature=math.inf), ValueError, "'temperature'"),
        (lambda: pk.distillation_loss(S, T, beta=1.5), ValueError, "'beta'"),
        (
            lambda: pk.distillation_loss(S, T, labels=Y, label_smoothing=-0.1),
            ValueError,
            "'label_smoothing'",
        ),
        (lambda: pk.distillation_loss(S, T, hard_weight=1.0), ValueError, "'labels'"),
        (
            lambda: pk.distillation_loss(S, T, labels=torch.tensor([1, 2, 3])),
            ValueError,
            "'labels'",
        ),
        (
            lambda: pk.distillation_loss(S, T, labels=torch.tensor([1.0, 2.0])),
            TypeError,
            "'labels'",
        ),
        (lambda: pk.distillation_loss(S, T, reduction="mean"), ValueError, "'reduction'"),
        (
            lambda: pk.distillation_loss(torch.ones(2, 0), torch.ones(2, 0)),
            ValueError,
            "'student_logits'",
        ),
        (
            lambda: pk.distillation_loss(torch.tensor(1.0), torch.tensor(1.0)),
            ValueError,
            "'student_logits'",
        ),
        (lambda: pk.distillation_loss(S, T, backend="nope"), ValueError, "'backend'"),
        (
            lambda: pk.cross_entropy(S, torch.tensor([1, 2], dtype=torch.int32)),
            TypeError,
            "'labels'",
        ),
        (lambda: pk.cross_entropy(S, Y, reduction="batchmean"), ValueError, "'reduction'"),
        (lambda: pk.cross_entropy(S.int(), Y), TypeError, "'logits'"),
        (lambda: pk.soft_target_cross_entropy(S, torch.ones(2, 4)), ValueError, "'target_probs'"),
        (lambda: pk.soft_target_cross_entropy(S, T, temperature=0), ValueError, "'temperature'"),
    ]


test_public, test_reference_raises_what_the_fused_backends_raise = public_tests(_public_rows())


test_bad_input_public = bad_call_tests("distillation", _bad_public_calls())


# ------------------------------------------------------------- direct op calls (malformed_direct.py)


def _direct_rows() -> list[Row]:
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


test_direct_op = direct_tests(_direct_rows())


def _bad_op_calls() -> list:
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


test_bad_input_torch_ops = bad_op_tests("distillation", _bad_op_calls())


# ------------------------------------------------------------- backward ops (malformed_backward.py)


def _scale_grad_backward_rows() -> list[Row]:
    rows = []
    for op in SCALE_OPS:
        rows += grad_rows(op, (3,)) + [
            Row(op, "grad a row per element", {"grad": reshaped(3, 5)}, ValueError, grad_shape(3)),
            Row(
                op,
                "x int64",
                {"x": as_dtype(torch.int64)},
                TypeError,
                r"argument 'x' must be float32",
            ),
            Row(
                op,
                "x 0-dim",
                {"x": reshaped(), "grad": reshaped()},
                ValueError,
                r"argument 'x' must have at least 1 dimension",
            ),
        ]
    rows.append(
        Row(
            "distillation_scale_grad_inplace",
            "x not contiguous",
            {"x": Mut(lambda x, d: torch.zeros(5, 3, device=x.device).t())},
            ValueError,
            r"argument 'x' must be contiguous",
        )
    )
    return rows


def _fused_linear_rows() -> list[Row]:
    rows = []
    for op, weight in (
        ("fused_linear_cross_entropy_backward", "weight"),
        ("fused_linear_distillation_loss_backward", "student_weight"),
    ):
        rows += grad_rows(op, (3,)) + [
            Row(op, "weight H mismatch", {weight: reshaped(5, 3)}, ValueError, weight),
            Row(op, "labels int32", {"labels": as_dtype(torch.int32)}, TypeError, "labels"),
        ]
    return rows


def _backward_rows() -> list[Row]:
    return _scale_grad_backward_rows() + _fused_linear_rows()


BACKWARD_ROWS = _backward_rows()
test_bad_backward_call = backward_tests(BACKWARD_ROWS)
