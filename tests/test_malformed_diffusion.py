"""Malformed input to the diffusion family (make_schedule, add_noise, get_velocity,
diffusion_loss, ddpm_step, ddim_step): the public functions, the direct op calls and the
backward ops. The rows every op gets are in test_malformed.py and test_malformed_direct.py.
"""

from __future__ import annotations

import torch

from .malformed import (
    INF,
    NAN,
    ON_OTHER,
    TIMESTEP_OPS,
    Mut,
    Row,
    as_dtype,
    f,
    fill,
    ints,
    public_tests,
    reshaped,
    table_rows,
    timestep_rows,
)
from .malformed_backward import (
    backward_tests,
    backward_timestep_rows,
    grad_rows,
    grad_shape,
)
from .malformed_direct import any_float_rows, direct_tests

# ------------------------------------------------------------- public functions (malformed.py)


def _public_rows() -> list[Row]:
    rows = []
    rows += [
        Row(
            "make_schedule",
            "num_train_timesteps 0",
            {"num_train_timesteps": 0},
            ValueError,
            r"argument 'num_train_timesteps' must be > 0",
        ),
        Row(
            "make_schedule",
            "num_train_timesteps a float",
            {"num_train_timesteps": 10.0},
            TypeError,
            r"argument 'num_train_timesteps' must be an int",
        ),
        Row(
            "make_schedule",
            "bad beta_schedule",
            {"beta_schedule": "cosine"},
            ValueError,
            r"argument 'beta_schedule' must be one of",
        ),
        Row(
            "make_schedule",
            "beta_start negative",
            {"beta_start": -1e-4},
            ValueError,
            r"argument 'beta_start' must be > 0",
        ),
        Row(
            "make_schedule",
            "beta_start nan",
            {"beta_start": NAN},
            ValueError,
            r"argument 'beta_start' must be > 0",
        ),
        Row(
            "make_schedule",
            "beta_end 1",
            {"beta_end": 1.0},
            ValueError,
            r"argument 'beta_end' must be < 1",
        ),
        Row(
            "make_schedule",
            "beta_start 1.5",
            {"beta_start": 1.5},
            ValueError,
            r"argument 'beta_start' must be < 1",
        ),
        Row(
            "make_schedule",
            "beta_start inf",
            {"beta_start": INF},
            ValueError,
            r"argument 'beta_start' must be < 1",
        ),
        Row(
            "make_schedule",
            "beta_end nan",
            {"beta_end": NAN},
            ValueError,
            r"argument 'beta_end' must be",
        ),
    ]
    for op in TIMESTEP_OPS:
        rows += timestep_rows(op)
    for op in ("diffusion_loss", "ddpm_step", "ddim_step"):
        rows.append(
            Row(
                op,
                "bad prediction_type",
                {"prediction_type": "x0"},
                ValueError,
                r"argument 'prediction_type' must be one of",
            )
        )
    for op in ("ddpm_step", "ddim_step"):
        rows += [
            Row(
                op,
                "clip_sample_range 0",
                {"clip_sample_range": 0.0},
                ValueError,
                r"argument 'clip_sample_range' must be > 0",
            ),
            Row(
                op,
                "clip_sample_range nan",
                {"clip_sample_range": NAN},
                ValueError,
                r"argument 'clip_sample_range' must be > 0",
            ),
            Row(
                op,
                "dynamic_thresholding_ratio 1.5",
                {"thresholding": True, "dynamic_thresholding_ratio": 1.5},
                ValueError,
                r"argument 'dynamic_thresholding_ratio' must be in \[0, 1\]",
            ),
            Row(
                op,
                "sample_max_value 0",
                {"thresholding": True, "sample_max_value": 0.0},
                ValueError,
                r"argument 'sample_max_value' must be > 0",
            ),
            Row(
                op,
                "noise shape",
                {"noise": reshaped(3, 5)},
                ValueError,
                r"argument 'noise' must have the same shape",
            ),
        ]
    rows += [
        Row(
            "diffusion_loss",
            "bad reduction",
            {"reduction": "batchmean"},
            ValueError,
            r"argument 'reduction' must be one of",
        ),
        Row(
            "ddpm_step",
            "prev_timesteps >= T",
            {"prev_timesteps": lambda d: ints(d, [0, 10, 3])},
            IndexError,
            r"argument 'prev_timesteps' has 10, outside \[-inf, 9\]",
            cpu_tensors_only=True,
        ),
        Row(
            "ddim_step",
            "prev_timesteps >= T",
            {"prev_timesteps": fill(10, 0)},
            IndexError,
            r"argument 'prev_timesteps' has 10, outside \[-inf, 9\]",
            cpu_tensors_only=True,
        ),
        Row(
            "ddim_step",
            "prev_timesteps float",
            {"prev_timesteps": as_dtype(torch.float32)},
            TypeError,
            r"argument 'prev_timesteps' must be an int64 or int32 tensor",
        ),
        Row("ddim_step", "eta negative", {"eta": -0.5}, ValueError, r"argument 'eta' must be >= 0"),
        Row("ddim_step", "eta nan", {"eta": NAN}, ValueError, r"argument 'eta' must be >= 0"),
        Row(
            "ddim_step", "eta a string", {"eta": "0"}, TypeError, r"argument 'eta' must be a number"
        ),
        Row(
            "ddim_step",
            "final_alpha_cumprod 0",
            {"final_alpha_cumprod": 0.0},
            ValueError,
            r"argument 'final_alpha_cumprod' must be in \(0, 1\]",
        ),
        Row(
            "ddim_step",
            "final_alpha_cumprod 2",
            {"final_alpha_cumprod": 2.0},
            ValueError,
            r"argument 'final_alpha_cumprod' must be in \(0, 1\]",
        ),
    ]
    return rows


test_public, test_reference_raises_what_the_fused_backends_raise = public_tests(_public_rows())


# ------------------------------------------------------------- direct op calls (malformed_direct.py)


def _direct_rows() -> list[Row]:
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


test_direct_op = direct_tests(_direct_rows())


# ------------------------------------------------------------- backward ops (malformed_backward.py)


def _backward_rows() -> list[Row]:
    rows = []
    for op in ("add_noise_backward", "get_velocity_backward"):  # grad sets the shape: any [N, ...]
        rows += backward_timestep_rows(op) + [
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
                "grad of 2 samples",
                {"grad": reshaped(2, 4)},
                ValueError,
                r"argument 'timesteps' must have shape \[N\] = \[2\]",
            ),
            Row(
                op,
                "grad on another device",
                {"grad": ON_OTHER},
                ValueError,
                r"argument 'grad' must be (on the same device|a \w+ tensor)|on the same device as 'grad'",
            ),
        ]
    op = "diffusion_loss_backward"
    rows += (
        [
            Row(
                op,
                "grad int64",
                {"grad": as_dtype(torch.int64)},
                TypeError,
                r"argument 'grad' must be float32",
            ),
            Row(
                op,
                "grad on another device",
                {"grad": ON_OTHER},
                ValueError,
                r"argument 'grad' must be (on the same device|a \w+ tensor)|on the same device as 'grad'",
            ),
        ]
        + backward_timestep_rows(op)
        + [
            Row(
                op,
                "grad per element, reduction mean",
                {"grad": reshaped(3, 4)},
                ValueError,
                grad_shape(),
            ),
            Row(
                op,
                "grad a scalar, reduction none",
                {"reduction": "none"},
                ValueError,
                grad_shape(3, 4),
            ),
            Row(
                op,
                "x0 other shape",
                {"x0": reshaped(3, 5)},
                ValueError,
                r"argument 'x0' must have the same shape",
            ),
            Row(
                op,
                "noise float64",
                {"noise": as_dtype(torch.float64)},
                TypeError,
                r"argument 'noise' must have the same dtype",
            ),
            Row(
                op,
                "prediction_type eps",
                {"prediction_type": "eps"},
                ValueError,
                r"argument 'prediction_type' must be one of",
            ),
            Row(
                op,
                "reduction avg",
                {"reduction": "avg"},
                ValueError,
                r"argument 'reduction' must be one of",
            ),
            # the C++ schema's bool[3]: PyTorch's argument parser refuses it (a RuntimeError
            # that does not name the argument); the Triton op raises the same type, naming it
            Row(
                op,
                "output_mask of 2",
                {"output_mask": [True, True]},
                RuntimeError,
                r"argument 'output_mask' must have 3 elements|List with 2 elements to a fixed-size array of size 3",
            ),
        ]
    )
    for op in ("ddpm_step_backward", "ddim_step_backward"):
        for name in ("grad_prev_sample", "grad_pred_original_sample"):
            rows += grad_rows(op, (3, 4), name) + [
                Row(
                    op,
                    f"{name} float64",
                    {name: as_dtype(torch.float64)},
                    TypeError,
                    rf"argument '{name}' must have the same dtype",
                ),
            ]
        rows += backward_timestep_rows(op, ("timesteps", "prev_timesteps")) + [
            Row(
                op,
                "model_output other shape",
                {"model_output": reshaped(3, 5)},
                ValueError,
                r"argument 'model_output' must have the same shape",
            ),
            Row(
                op,
                "sample int64",
                {"sample": as_dtype(torch.int64)},
                TypeError,
                r"argument 'sample' must be float32",
            ),
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
                "threshold float16",
                {"threshold": as_dtype(torch.float16)},
                TypeError,
                r"argument 'threshold' must be in the accumulation dtype",
            ),
            Row(
                op,
                "threshold one short",
                {"threshold": Mut(lambda x, d: x[:2])},
                ValueError,
                r"argument 'threshold' must have shape \[N\] = \[3\]",
            ),
        ]
    op = "ddim_step_backward"
    rows += [
        Row(op, "eta negative", {"eta": -1.0}, ValueError, r"argument 'eta' must be >= 0"),
        Row(
            op,
            "final_alpha_cumprod 2",
            {"final_alpha_cumprod": 2.0},
            ValueError,
            r"argument 'final_alpha_cumprod' must be in \(0, 1\]",
        ),
    ]
    return rows


BACKWARD_ROWS = _backward_rows()
test_bad_backward_call = backward_tests(BACKWARD_ROWS)
