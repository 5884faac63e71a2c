"""Malformed input to the contrastive family (info_nce_loss, distributed.info_nce_loss, and the
sigmoid loss's backward op): the public functions, the direct op calls and the backward ops.
The rows every op gets are in test_malformed.py and test_malformed_direct.py.
"""

from __future__ import annotations

import torch

import pykernels as pk

from .malformed import (
    AS_LIST,
    ON_OTHER,
    Mut,
    Row,
    as_dtype,
    bad_call_tests,
    f,
    fill,
    ints,
    public_tests,
    reshaped,
)
from .malformed_backward import (
    backward_tests,
    grad_rows,
    grad_shape,
    shape,
)
from .malformed_direct import bad_op_tests, direct_tests

# ------------------------------------------------------------- public functions (malformed.py)


def _public_rows() -> list[Row]:
    rows = []
    for op in ("info_nce_loss", "distributed.info_nce_loss"):
        rows += [
            Row(
                op,
                "image_features 1-D",
                {"image_features": reshaped(6)},
                ValueError,
                r"argument 'image_features' must (have shape|be) \[(rows|n), D\]",
            ),
            Row(
                op,
                "text_features 3-D",
                {"text_features": reshaped(1, 4, 6)},
                ValueError,
                r"argument 'text_features' must (have shape|be) \[(rows|n), D\]",
            ),
            Row(
                op,
                "logit_scale shape [2]",
                {"logit_scale": reshaped(2)},
                ValueError,
                r"argument 'logit_scale' must be a scalar tensor",
            ),
            Row(
                op,
                "logit_scale a Python float",
                {"logit_scale": 5.0},
                TypeError,
                r"argument 'logit_scale' must be a torch.Tensor",
            ),
            Row(
                op,
                "logit_bias shape [1, 2]",
                {"logit_bias": lambda d: f(d, 1, 2)},
                ValueError,
                r"argument 'logit_bias' must be a scalar tensor",
            ),
            Row(
                op,
                "logit_bias int",
                {"logit_bias": lambda d: ints(d, 1)},
                TypeError,
                r"argument 'logit_bias' must be float32",
            ),
            Row(
                op,
                "bad reduction",
                {"reduction": "batchmean"},
                ValueError,
                r"argument 'reduction' must be one of",
            ),
        ]
    rows += [
        Row(
            "info_nce_loss",
            "D mismatch",
            {"text_features": reshaped(4, 5)},
            ValueError,
            r"arguments 'image_features' \[N, D\] and 'text_features' \[M, D\] must have the same feature size",
        ),
        Row(
            "info_nce_loss",
            "N != M without labels",
            {"text_features": reshaped(5, 6), "labels": None},
            ValueError,
            r"without 'labels', image_features and text_features must have the same number of rows",
        ),
        Row(
            "info_nce_loss",
            "labels float",
            {"labels": as_dtype(torch.float32)},
            TypeError,
            r"argument 'labels' must be an integer tensor",
        ),
        Row(
            "info_nce_loss",
            "labels bool",
            {"labels": as_dtype(torch.bool)},
            TypeError,
            r"argument 'labels' must be an integer tensor",
        ),
        Row(
            "info_nce_loss",
            "labels not a tensor",
            {"labels": AS_LIST},
            TypeError,
            r"argument 'labels' must be a torch.Tensor",
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
            "labels shape [N, 1]",
            {"labels": Mut(lambda x, d: x[:, None])},
            ValueError,
            r"argument 'labels' must have shape \[N\] = \[4\]",
        ),
        Row(
            "info_nce_loss",
            "labels >= M",
            {"labels": fill(4, 2)},
            IndexError,
            r"argument 'labels' must hold row indices of text_features in \[0, 4\), got 4",
            cpu_tensors_only=True,
        ),
        Row(
            "info_nce_loss",
            "labels negative",
            {"labels": fill(-1, 2)},
            IndexError,
            r"argument 'labels' must hold row indices of text_features in \[0, 4\), got -1",
            cpu_tensors_only=True,
        ),
        Row(
            "info_nce_loss",
            "symmetric not a bool",
            {"symmetric": 1},
            TypeError,
            r"argument 'symmetric' must be a bool",
        ),
        Row(
            "info_nce_loss",
            "normalize not a bool",
            {"normalize": "yes"},
            TypeError,
            r"argument 'normalize' must be a bool",
        ),
        Row(
            "info_nce_loss",
            "logit_bias on another device",
            {"logit_bias": lambda d: torch.zeros((), device=d.other)},
            ValueError,
            r"argument 'logit_bias' must be on the same device",
        ),
        Row(
            "distributed.info_nce_loss",
            "image and text shapes differ",
            {"text_features": reshaped(5, 6)},
            ValueError,
            r"arguments 'image_features' and 'text_features' must have the same shape",
        ),
        Row(
            "distributed.info_nce_loss",
            "bad mode",
            {"mode": "all_reduce"},
            ValueError,
            r"argument 'mode' must be one of",
        ),
        Row(
            "distributed.info_nce_loss",
            "reduction none",
            {"reduction": "none"},
            ValueError,
            r"argument 'reduction' must be one of",
        ),
        Row(
            "distributed.info_nce_loss",
            "chunk_size 0",
            {"chunk_size": 0},
            ValueError,
            r"argument 'chunk_size' must be > 0",
        ),
        Row(
            "distributed.info_nce_loss",
            "chunk_size a float",
            {"chunk_size": 2.5},
            TypeError,
            r"argument 'chunk_size' must be an int",
        ),
        Row(
            "distributed.info_nce_loss",
            "process_group without torch.distributed",
            {"process_group": object()},
            RuntimeError,
            r"a process_group was given but torch.distributed is not initialised",
        ),
    ]
    return rows


def _bad_public_calls() -> list:
    def ok(n=4, m=4, d=3):
        return torch.ones(n, d), torch.ones(m, d), torch.tensor(1.0)

    return [
        # (call, exception, text that must appear)
        (
            lambda: pk.info_nce_loss(torch.ones(4, 3), torch.ones(4, 5), torch.tensor(1.0)),
            ValueError,
            "feature size D",
        ),
        (lambda: pk.info_nce_loss(*ok(4, 5)), ValueError, "without 'labels'"),
        (lambda: pk.info_nce_loss(*ok(), torch.ones(2)), TypeError, "positional"),
        (
            lambda: pk.info_nce_loss(*ok()[:2], torch.ones(2)),
            ValueError,
            "'logit_scale' must be a scalar",
        ),
        (
            lambda: pk.info_nce_loss(*ok()[:2], torch.ones(1, 1)),
            ValueError,
            "'logit_scale' must be a scalar",
        ),
        (lambda: pk.info_nce_loss(*ok()[:2], 2.0), TypeError, "'logit_scale'"),
        (lambda: pk.info_nce_loss(*ok(), logit_bias=torch.ones(3)), ValueError, "'logit_bias'"),
        (
            lambda: pk.info_nce_loss(*ok(3, 5), labels=torch.tensor([0, 5, 1])),
            IndexError,
            "'labels'",
        ),
        (
            lambda: pk.info_nce_loss(*ok(3, 5), labels=torch.tensor([0, -1, 1])),
            IndexError,
            "'labels'",
        ),
        (lambda: pk.info_nce_loss(*ok(3, 5), labels=torch.tensor([0, 1])), ValueError, "'labels'"),
        (
            lambda: pk.info_nce_loss(*ok(3, 5), labels=torch.tensor([0.0, 1.0, 2.0])),
            TypeError,
            "'labels'",
        ),
        (
            lambda: pk.info_nce_loss(torch.ones(4), torch.ones(4), torch.tensor(1.0)),
            ValueError,
            "'image_features'",
        ),
        (
            lambda: pk.info_nce_loss(
                torch.ones(4, 3), torch.ones(4, 3, dtype=torch.float64), torch.tensor(1.0)
            ),
            TypeError,
            "'text_features'",
        ),
        (
            lambda: pk.info_nce_loss(
                torch.ones(4, 3, dtype=torch.int32), torch.ones(4, 3), torch.tensor(1.0)
            ),
            TypeError,
            "'image_features'",
        ),
        (
            lambda: pk.info_nce_loss(
                torch.ones(4, 3), torch.ones(4, 3, device="meta"), torch.tensor(1.0)
            ),
            ValueError,
            "device",
        ),
        (lambda: pk.info_nce_loss(*ok(), reduction="avg"), ValueError, "'reduction'"),
        (lambda: pk.info_nce_loss(*ok(), symmetric=1), TypeError, "'symmetric'"),
        (lambda: pk.info_nce_loss(*ok(), backend="nope"), ValueError, "'backend'"),
    ]


test_public, test_reference_raises_what_the_fused_backends_raise = public_tests(_public_rows())


test_bad_input_public = bad_call_tests("contrastive", _bad_public_calls())


# ------------------------------------------------------------- direct op calls (malformed_direct.py)


def _direct_rows() -> list[Row]:
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


test_direct_op = direct_tests(_direct_rows())


def _bad_op_calls() -> list:
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


test_bad_input_torch_ops = bad_op_tests("contrastive", _bad_op_calls())


# ------------------------------------------------------------- backward ops (malformed_backward.py)


def _info_nce_backward_rows() -> list[Row]:
    rows = []
    op = "info_nce_loss_backward"
    rows += grad_rows(op, (2, 4)) + [
        Row(op, "grad one-sided", {"grad": reshaped(1, 4)}, ValueError, grad_shape(2, 4)),
        Row(
            op,
            "row_lse one short",
            {"row_lse": Mut(lambda x, d: x[:3])},
            ValueError,
            r"argument 'row_lse' must have shape " + shape(4),
        ),
        Row(
            op,
            "col_lse 2-D",
            {"col_lse": Mut(lambda x, d: x[None])},
            ValueError,
            r"argument 'col_lse' must have shape " + shape(4),
        ),
        Row(
            op,
            "col_lse given, not symmetric",
            {"symmetric": False, "grad": reshaped(1, 4)},
            ValueError,
            r"argument 'col_lse' must have shape " + shape(0),
        ),
        Row(
            op,
            "row_lse int64",
            {"row_lse": as_dtype(torch.int64)},
            TypeError,
            r"argument 'row_lse' must be float32",
        ),
        Row(
            op,
            "col_lse bool",
            {"col_lse": as_dtype(torch.bool)},
            TypeError,
            r"argument 'col_lse' must be float32",
        ),
        Row(
            op,
            "row_lse on another device",
            {"row_lse": ON_OTHER},
            ValueError,
            r"argument 'row_lse' must be on the same device|on the same device as 'row_lse'",
        ),
        Row(
            op,
            "image_features int64",
            {"image_features": as_dtype(torch.int64)},
            TypeError,
            r"argument 'image_features' must be float32",
        ),
        Row(
            op,
            "D mismatch",
            {"text_features": reshaped(4, 5)},
            ValueError,
            r"arguments 'image_features' \[N, D\] and 'text_features' \[M, D\] must have the same feature size",
        ),
        Row(
            op,
            "logit_scale shape [2]",
            {"logit_scale": reshaped(2)},
            ValueError,
            r"argument 'logit_scale' must be a scalar tensor",
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
            "labels float",
            {"labels": as_dtype(torch.float32)},
            TypeError,
            r"argument 'labels' must be (int64|an integer tensor)",
        ),
        Row(
            op,
            "labels >= M",
            {"labels": fill(4, 0)},
            IndexError,
            r"argument 'labels' must hold",
            backends=("cpu",),
        ),
    ]
    return rows


def _sigmoid_contrastive_rows() -> list[Row]:
    rows = []
    # ---------------------------------------------------------------- sigmoid_contrastive
    op = "sigmoid_contrastive_loss_backward"
    rows += grad_rows(op, (4,)) + [
        Row(
            op,
            "D mismatch",
            {"text_features": reshaped(5, 5)},
            ValueError,
            r"arguments 'image_features' \[N, D\] and 'text_features' \[M, D\] must have the same feature size",
        ),
        Row(
            op,
            "logit_bias shape [2]",
            {"logit_bias": reshaped(2)},
            ValueError,
            r"argument 'logit_bias' must be a scalar tensor",
        ),
        Row(
            op,
            "text_ids int32",
            {"text_ids": as_dtype(torch.int32)},
            TypeError,
            r"argument 'text_ids' must be int64",
        ),
        Row(
            op,
            "image_ids one short",
            {"image_ids": Mut(lambda x, d: x[:3])},
            ValueError,
            r"argument 'image_ids' must have shape " + shape(4),
        ),
    ]
    return rows


def _backward_rows() -> list[Row]:
    return _info_nce_backward_rows() + _sigmoid_contrastive_rows()


BACKWARD_ROWS = _backward_rows()
test_bad_backward_call = backward_tests(BACKWARD_ROWS)
