"""Malformed input to the flow-matching family (flow_interpolate, flow_matching_loss,
flow_match_euler_step, sample_flow_timesteps and the SNR helpers): the public functions, the
direct op calls and the backward ops. The rows every op gets are in test_malformed.py.
"""

from __future__ import annotations

import math

import torch

import pykernels as pk

from .malformed import (
    AS_LIST,
    ON_META,
    ON_OTHER,
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
from .malformed_direct import bad_op_tests

# ------------------------------------------------------------- public functions (malformed.py)


# flow matching: op -> (float tensor arguments, the sigma arguments)
FLOW_ARGS = {
    "flow_interpolate": (["x0", "noise"], ["sigmas"]),
    "flow_matching_loss": (["model_output", "x0", "noise"], ["sigmas"]),
    "flow_match_euler_step": (["sample", "model_output"], ["sigmas", "sigmas_next"]),
}


def _flow_tensor_rows(op: str) -> list[Row]:
    floats, sigma_args = FLOW_ARGS[op]
    first = floats[0]
    rows = [
        Row(
            op,
            "all tensors on a device the backend does not run on",
            {"*": ON_META},
            RuntimeError,
            r"backend '\w+' cannot run on \w+ tensors",
        ),
        Row(
            op,
            f"{first} complex64",
            {first: as_dtype(torch.complex64)},
            TypeError,
            rf"'{first}' must be float32",
        ),
        Row(
            op,
            f"{first} 0-dim",
            {first: Mut(lambda x, d: x[0, 0])},
            ValueError,
            rf"argument '{first}' must have at least 1 dimension",
        ),
    ]
    for name in floats:
        msg = rf"argument '{name}' must (be float32|have the same dtype)"
        rows += [
            Row(op, f"{name} int64", {name: as_dtype(torch.int64)}, TypeError, msg),
            Row(op, f"{name} bool", {name: as_dtype(torch.bool)}, TypeError, msg),
            Row(
                op,
                f"{name} not a tensor",
                {name: AS_LIST},
                TypeError,
                rf"'{name}' must be a torch.Tensor",
            ),
        ]
        if name != first:
            rows += [
                Row(
                    op,
                    f"{name} on another device",
                    {name: ON_OTHER},
                    ValueError,
                    rf"argument '{name}' must be on the same device",
                ),
                Row(
                    op,
                    f"{name} float64 vs float32",
                    {name: as_dtype(torch.float64)},
                    TypeError,
                    rf"argument '{name}' must have the same dtype",
                ),
                Row(
                    op,
                    f"{name} other shape",
                    {name: Mut(lambda x, d: x[:, :2])},
                    ValueError,
                    rf"argument '{name}' must have the same shape",
                ),
            ]
    for s in sigma_args:
        one = rf"argument '{s}' must hold one noise level per sample"
        rows += [
            Row(op, f"{s} int64", {s: as_dtype(torch.int64)}, TypeError, rf"'{s}' must be float32"),
            Row(op, f"{s} a list", {s: AS_LIST}, TypeError, rf"'{s}' must be a torch.Tensor"),
            Row(
                op,
                f"{s} on another device",
                {s: ON_OTHER},
                ValueError,
                rf"'{s}' must be on the same device",
            ),
            Row(op, f"{s} one short", {s: Mut(lambda x, d: x[:2])}, ValueError, one),
            Row(
                op,
                f"{s} per element",
                {s: Mut(lambda x, d: x[:, None].expand(3, 4))},
                ValueError,
                one,
            ),
            Row(
                op,
                f"{s} [1, N] (broadcasts over features, not samples)",
                {s: Mut(lambda x, d: x[None])},
                ValueError,
                one,
            ),
            Row(
                op,
                f"{s} above 1",
                {s: Mut(lambda x, d: x + 0.5)},
                ValueError,
                rf"argument '{s}' has 1\.\d+ at index 2, outside \[0, 1\]",
                cpu_tensors_only=True,
            ),
            Row(
                op,
                f"{s} negative",
                {s: Mut(lambda x, d: x - 0.25)},
                ValueError,
                rf"argument '{s}' has -0.25 at index 0, outside \[0, 1\]",
                cpu_tensors_only=True,
            ),
            Row(
                op,
                f"{s} number above 1",
                {s: 1.5},
                ValueError,
                rf"argument '{s}' must be in \[0, 1\]",
            ),
            Row(
                op,
                f"{s} NaN number",
                {s: math.nan},
                ValueError,
                rf"argument '{s}' must be in \[0, 1\]",
            ),
            Row(
                op,
                f"{s} requires grad",
                {s: Mut(lambda x, d: x.clone().requires_grad_())},
                ValueError,
                rf"argument '{s}' must not require grad",
            ),
        ]
    return rows


def _flow_option_rows() -> list[Row]:
    op = "flow_matching_loss"
    return [
        Row(
            op,
            "weighting_scheme a density",
            {"weighting_scheme": "logit_normal"},
            ValueError,
            r"argument 'weighting_scheme' must be one of \('none', 'sigma_sqrt', 'cosmap'\)",
        ),
        Row(
            op,
            "weighting_scheme unknown",
            {"weighting_scheme": "sqrt"},
            ValueError,
            r"'weighting_scheme'",
        ),
        Row(
            op,
            "reduction sum",
            {"reduction": "sum"},
            ValueError,
            r"argument 'reduction' must be one of",
        ),
        Row(
            op,
            "precondition_outputs a string",
            {"precondition_outputs": "yes"},
            TypeError,
            r"argument 'precondition_outputs' must be a bool",
        ),
        Row(
            op,
            "return_noisy an int",
            {"return_noisy": 1},
            TypeError,
            r"argument 'return_noisy' must be a bool",
        ),
    ]


def _public_rows() -> list[Row]:
    return [r for op in FLOW_ARGS for r in _flow_tensor_rows(op)] + _flow_option_rows()


def _bad_public_calls() -> list:
    X, T = torch.ones(3, 4), torch.tensor([1, 2, 3])
    TABLE = pk.make_schedule(10)
    return [
        (lambda: pk.sample_flow_timesteps(-1), ValueError, "'batch_size' must be >= 0"),
        (lambda: pk.sample_flow_timesteps(2.0), TypeError, "'batch_size' must be an int"),
        (
            lambda: pk.sample_flow_timesteps(4, weighting_scheme="cosmap"),
            ValueError,
            "'weighting_scheme' must be one of",
        ),
        (lambda: pk.sample_flow_timesteps(4, shift=0.0), ValueError, "'shift' must be > 0"),
        (lambda: pk.sample_flow_timesteps(4, logit_std=0.0), ValueError, "'logit_std' must be > 0"),
        (
            lambda: pk.sample_flow_timesteps(4, logit_mean=math.inf),
            ValueError,
            "'logit_mean' must be finite",
        ),
        (
            lambda: pk.sample_flow_timesteps(4, weighting_scheme="mode", mode_scale=3.0),
            ValueError,
            "'mode_scale'",
        ),
        (
            lambda: pk.sample_flow_timesteps(4, num_train_timesteps=0),
            ValueError,
            "'num_train_timesteps' must be >= 1",
        ),
        (
            lambda: pk.sample_flow_timesteps(4, u=torch.rand(3)),
            ValueError,
            r"'u' must have shape \[batch_size\]",
        ),
        (
            lambda: pk.sample_flow_timesteps(2, u=torch.tensor([0.5, 1.5])),
            ValueError,
            "'u' has 1.5 at index 1",
        ),
        (
            lambda: pk.sample_flow_timesteps(2, u=torch.tensor([0, 1])),
            TypeError,
            "'u' must be float32",
        ),
        (
            lambda: pk.compute_snr(T.float(), TABLE),
            TypeError,
            "'timesteps' must be an int64 or int32 tensor",
        ),
        (
            lambda: pk.compute_snr(torch.tensor([0, 10]), TABLE),
            IndexError,
            "'timesteps' has 10, outside",
        ),
        (
            lambda: pk.compute_snr(T, TABLE[None]),
            ValueError,
            "'alphas_cumprod' must be a non-empty 1-D table",
        ),
        (lambda: pk.compute_snr(T, TABLE.long()), TypeError, "'alphas_cumprod' must be float32"),
        (lambda: pk.min_snr_weights(T, TABLE, 0.0), ValueError, "'gamma' must be > 0"),
        (
            lambda: pk.min_snr_weights(T, TABLE, 5.0, "v"),
            ValueError,
            "'prediction_type' must be one of",
        ),
        (lambda: pk.flow_matching_loss(X, X, X, 0.5, backend="nope"), ValueError, "'backend'"),
    ]


test_public, test_reference_raises_what_the_fused_backends_raise = public_tests(_public_rows())


test_bad_input_public = bad_call_tests("flow_matching", _bad_public_calls())


# ------------------------------------------------------------- direct op calls (malformed_direct.py)


def _bad_op_calls() -> list:
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


test_bad_input_torch_ops = bad_op_tests("flow_matching", _bad_op_calls(), triton=True)


# ------------------------------------------------------------- backward ops (malformed_backward.py)


def _flow_sigma_rows(op: str, names=("sigmas",)) -> list[Row]:
    rows = []
    for name in names:
        rows += [
            Row(
                op,
                f"{name} int64",
                {name: as_dtype(torch.int64)},
                TypeError,
                rf"argument '{name}' must be float32",
            ),
            Row(
                op,
                f"{name} one short",
                {name: Mut(lambda x, d: x[:2])},
                ValueError,
                rf"argument '{name}' must have shape \[N\] = \[3\]",
            ),
            Row(
                op,
                f"{name} 2-D",
                {name: Mut(lambda x, d: x[:, None])},
                ValueError,
                rf"argument '{name}' must have shape \[N\]",
            ),
            Row(
                op,
                f"{name} on another device",
                {name: ON_OTHER},
                ValueError,
                rf"argument '{name}' must be on the same device|on the same device as '{name}'",
            ),
            Row(
                op,
                f"{name} above 1",
                {name: Mut(lambda x, d: x + 0.5)},
                ValueError,
                rf"argument '{name}' has 1\.\d+ at index 2, outside \[0, 1\]",
                backends=("cpu",),
            ),
        ]
    return rows


def _flow_grad_rows(op: str) -> list[Row]:
    """The upstream gradient of an element-wise backward op: it sets the samples' shape."""
    return [
        Row(
            op,
            "grad int64",
            {"grad": as_dtype(torch.int64)},
            TypeError,
            r"argument 'grad' must be float32",
        ),
        Row(
            op,
            "grad bool",
            {"grad": as_dtype(torch.bool)},
            TypeError,
            r"argument 'grad' must be float32",
        ),
        Row(
            op,
            "grad 0-dim",
            {"grad": reshaped()},
            ValueError,
            r"argument 'grad' must have at least 1 dimension",
        ),
        Row(
            op,
            "grad other batch",
            {"grad": reshaped(2, 4)},
            ValueError,
            r"argument 'sigmas' must have shape",
        ),
    ]


def _backward_rows() -> list[Row]:
    _op = "flow_matching_loss_backward"
    return (
        _flow_grad_rows("flow_interpolate_backward")
        + _flow_sigma_rows("flow_interpolate_backward")
        + _flow_grad_rows("flow_match_euler_step_backward")
        + _flow_sigma_rows("flow_match_euler_step_backward", ("sigmas", "sigmas_next"))
        + grad_rows(_op, (3,))
        + _flow_sigma_rows(_op)
        + [
            Row(_op, "grad per element", {"grad": reshaped(3, 4)}, ValueError, grad_shape(3)),
            Row(
                _op,
                "grad_noisy float64",
                {"grad_noisy": as_dtype(torch.float64)},
                TypeError,
                r"argument 'grad_noisy' must have the same dtype",
            ),
            Row(
                _op,
                "grad_noisy other shape",
                {"grad_noisy": reshaped(3, 5)},
                ValueError,
                r"argument 'grad_noisy' must have the same shape",
            ),
            Row(
                _op,
                "x0 other shape",
                {"x0": reshaped(3, 5)},
                ValueError,
                r"argument 'x0' must have the same shape",
            ),
            Row(
                _op,
                "noise float64",
                {"noise": as_dtype(torch.float64)},
                TypeError,
                r"argument 'noise' must have the same dtype",
            ),
            Row(
                _op,
                "weighting_scheme a density",
                {"weighting_scheme": "logit_normal"},
                ValueError,
                r"argument 'weighting_scheme' must be one of",
            ),
            Row(
                _op,
                "output_mask of 2",
                {"output_mask": [True, True]},
                RuntimeError,
                r"argument 'output_mask' must have 3 elements|List with 2 elements to a fixed-size array of size 3",
            ),
        ]
    )


BACKWARD_ROWS = _backward_rows()
test_bad_backward_call = backward_tests(BACKWARD_ROWS)
