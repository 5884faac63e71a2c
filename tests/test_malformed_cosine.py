"""Malformed input to the cosine family (cosine_similarity, pairwise_cosine_similarity,
feature_distillation_loss): the public functions, the direct op calls and the backward ops.
The rows every op gets are in test_malformed.py and test_malformed_direct.py.
"""

from __future__ import annotations

import torch

import pykernels as pk

from .malformed import (
    NAN,
    PAIRS,
    Mut,
    Row,
    as_dtype,
    bad_call_tests,
    public_tests,
    reshaped,
)
from .malformed_backward import (
    backward_tests,
    grad_rows,
    grad_shape,
)
from .malformed_direct import bad_op_tests, direct_tests

# ------------------------------------------------------------- public functions (malformed.py)


def _public_rows() -> list[Row]:
    rows = []
    for op, (n1, n2) in PAIRS.items():
        rows += [
            Row(
                op,
                f"{n1} 0-dim",
                {n1: Mut(lambda x, d: x[0, 0]), n2: Mut(lambda x, d: x[0, 0])},
                ValueError,
                rf"argument '{n1}' must have at least 1 dimension",
            ),
            Row(op, "eps 0", {"eps": 0.0}, ValueError, r"argument 'eps' must be > 0"),
            Row(op, "eps negative", {"eps": -1e-8}, ValueError, r"argument 'eps' must be > 0"),
            Row(op, "eps nan", {"eps": NAN}, ValueError, r"argument 'eps' must be > 0"),
            Row(op, "eps a string", {"eps": "1e-8"}, TypeError, r"argument 'eps' must be a number"),
        ]
    rows += [
        Row(
            "cosine_similarity",
            "shapes do not broadcast",
            {"x2": reshaped(4, 5)},
            ValueError,
            r"arguments must broadcast together, got 'x1' \(3, 5\), 'x2' \(4, 5\)",
        ),
        Row(
            "cosine_similarity",
            "dim out of range",
            {"dim": 2},
            IndexError,
            r"argument 'dim' must be in \[-2, 1\]",
        ),
        Row(
            "cosine_similarity",
            "dim a float",
            {"dim": 1.0},
            TypeError,
            r"argument 'dim' must be an int",
        ),
        Row(
            "feature_distillation_loss",
            "shape mismatch",
            {"teacher": reshaped(3, 4)},
            ValueError,
            r"argument 'teacher' must have the same shape",
        ),
        Row(
            "feature_distillation_loss",
            "bad kind",
            {"kind": "l1"},
            ValueError,
            r"argument 'kind' must be one of",
        ),
        Row(
            "feature_distillation_loss",
            "bad reduction",
            {"reduction": "batchmean"},
            ValueError,
            r"argument 'reduction' must be one of",
        ),
        Row(
            "pairwise_cosine_similarity",
            "a 1-D",
            {"a": reshaped(4), "b": reshaped(4)},
            ValueError,
            r"argument 'a' must have shape \[\.\.\., rows, D\]",
        ),
        Row(
            "pairwise_cosine_similarity",
            "D mismatch",
            {"b": reshaped(2, 5, 3)},
            ValueError,
            r"arguments 'a' and 'b' must have the same feature size D",
        ),
        Row(
            "pairwise_cosine_similarity",
            "batch does not broadcast",
            {"b": reshaped(3, 5, 4)},
            ValueError,
            r"arguments must broadcast together, got 'a' \(2,\), 'b' \(3,\)",
        ),
        Row(
            "pairwise_cosine_similarity",
            "eps 0",
            {"eps": 0.0},
            ValueError,
            r"argument 'eps' must be > 0",
        ),
        Row(
            "pairwise_cosine_similarity",
            "eps nan",
            {"eps": NAN},
            ValueError,
            r"argument 'eps' must be > 0",
        ),
    ]
    return rows


def _bad_public_calls() -> list:
    return [
        # (call, exception, text that must appear)
        (
            lambda: pk.cosine_similarity(torch.ones(3, dtype=torch.int64), torch.ones(3)),
            TypeError,
            "'x1'",
        ),
        (
            lambda: pk.cosine_similarity(torch.ones(3), torch.ones(3, dtype=torch.float64)),
            TypeError,
            "'x2'",
        ),
        (lambda: pk.cosine_similarity(torch.tensor(1.0), torch.tensor(2.0)), ValueError, "'x1'"),
        (lambda: pk.cosine_similarity(torch.ones(2, 3), torch.ones(2, 4)), ValueError, "broadcast"),
        (
            lambda: pk.cosine_similarity(torch.ones(2, 3), torch.ones(2, 3), eps=0.0),
            ValueError,
            "'eps'",
        ),
        (
            lambda: pk.cosine_similarity(torch.ones(2, 3), torch.ones(2, 3), eps=-1.0),
            ValueError,
            "'eps'",
        ),
        (
            lambda: pk.cosine_similarity(torch.ones(2, 3), torch.ones(2, 3), dim=2),
            IndexError,
            "'dim'",
        ),
        (
            lambda: pk.cosine_similarity(torch.ones(2, 3), torch.ones(2, 3, device="meta")),
            ValueError,
            "device",
        ),
        (lambda: pk.cosine_similarity(torch.ones(2, 3), [1.0, 2.0]), TypeError, "'x2'"),
        (
            lambda: pk.cosine_similarity(torch.ones(2, 3), torch.ones(2, 3), backend="nope"),
            ValueError,
            "'backend'",
        ),
        (
            lambda: pk.pairwise_cosine_similarity(torch.ones(4, 3), torch.ones(5, 4)),
            ValueError,
            "feature size",
        ),
        (lambda: pk.pairwise_cosine_similarity(torch.ones(3), torch.ones(3)), ValueError, "'a'"),
        (
            lambda: pk.pairwise_cosine_similarity(torch.ones(2, 4, 3), torch.ones(3, 5, 3)),
            ValueError,
            "broadcast",
        ),
        (
            lambda: pk.pairwise_cosine_similarity(torch.ones(4, 3), torch.ones(5, 3), eps=0),
            ValueError,
            "'eps'",
        ),
        (
            lambda: pk.feature_distillation_loss(torch.ones(4, 3), torch.ones(4, 5)),
            ValueError,
            "'teacher'",
        ),
        (
            lambda: pk.feature_distillation_loss(torch.ones(4, 3), torch.ones(4, 3), kind="l1"),
            ValueError,
            "'kind'",
        ),
        (
            lambda: pk.feature_distillation_loss(
                torch.ones(4, 3), torch.ones(4, 3), reduction="avg"
            ),
            ValueError,
            "'reduction'",
        ),
    ]


test_public, test_reference_raises_what_the_fused_backends_raise = public_tests(_public_rows())


test_bad_input_public = bad_call_tests("cosine", _bad_public_calls())


# ------------------------------------------------------------- direct op calls (malformed_direct.py)


def _direct_rows() -> list[Row]:
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


test_direct_op = direct_tests(_direct_rows())


def _bad_op_calls() -> list:
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


test_bad_input_torch_ops = bad_op_tests("cosine", _bad_op_calls())


# ------------------------------------------------------------- backward ops (malformed_backward.py)


def _backward_rows() -> list[Row]:
    rows = []
    op = "cosine_similarity_backward"
    rows += grad_rows(op, (3,)) + [
        Row(
            op,
            "x1 int64",
            {"x1": as_dtype(torch.int64)},
            TypeError,
            r"argument 'x1' must be float32",
        ),
        Row(
            op,
            "x2 float64",
            {"x2": as_dtype(torch.float64)},
            TypeError,
            r"argument 'x2' must have the same dtype",
        ),
        Row(
            op,
            "x2 other shape",
            {"x2": reshaped(3, 4)},
            ValueError,
            r"argument 'x2' must have the same shape",
        ),
        Row(op, "eps 0", {"eps": 0.0}, ValueError, r"argument 'eps' must be > 0"),
    ]
    op = "feature_distillation_loss_backward"
    rows += grad_rows(op, (3,)) + [
        Row(
            op,
            "teacher int64",
            {"teacher": as_dtype(torch.int64)},
            TypeError,
            r"argument 'teacher' must (be float32|have the same dtype)",
        ),
        Row(
            op,
            "teacher other shape",
            {"teacher": reshaped(2, 5)},
            ValueError,
            r"argument 'teacher' must have the same shape",
        ),
        Row(op, "bad kind", {"kind": "l1"}, ValueError, r"argument 'kind' must be"),
        Row(op, "eps nan", {"eps": float("nan")}, ValueError, r"argument 'eps' must be > 0"),
    ]
    op = "pairwise_cosine_similarity_backward"
    rows += grad_rows(op, (2, 3, 5)) + [
        # one batch where there are two: it would broadcast in the matmuls (a wrong result)
        Row(op, "grad batch 1", {"grad": reshaped(1, 3, 5)}, ValueError, grad_shape(2, 3, 5)),
        Row(op, "grad 2-D", {"grad": reshaped(3, 5)}, ValueError, grad_shape(2, 3, 5)),
        Row(
            op,
            "grad N and M swapped",
            {"grad": reshaped(2, 5, 3)},
            ValueError,
            r"argument 'grad' must have shape",
        ),
        Row(op, "a 2-D", {"a": reshaped(3, 4)}, ValueError, r"argument 'a' must have 3 dimension"),
        Row(
            op,
            "b int64",
            {"b": as_dtype(torch.int64)},
            TypeError,
            r"argument 'b' must (be float32|have the same dtype)",
        ),
        Row(
            op,
            "D mismatch",
            {"b": reshaped(2, 5, 3)},
            ValueError,
            r"arguments 'a' (\[B, N, D\] )?and 'b'",
        ),
        Row(op, "eps -1", {"eps": -1.0}, ValueError, r"argument 'eps' must be > 0"),
    ]
    return rows


BACKWARD_ROWS = _backward_rows()
test_bad_backward_call = backward_tests(BACKWARD_ROWS)
