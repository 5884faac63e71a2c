"""The backward ops' building blocks: their good arguments in schema order (ARGS), how to
call them (call, args_for), the bad rows every upstream gradient gets (grad_rows), and the
test every backward table runs (backward_tests). The backward ops check their arguments as
the forward ops do (test_malformed_backward.py says why); rows and argument changes are
those of malformed.py.
"""

from __future__ import annotations

import pytest
import torch

from .helpers import FUSED_BACKENDS
from .malformed import (
    ON_OTHER,
    Dev,
    Mut,
    Row,
    as_dtype,
    build,
    dev_for,
    f,
    fill,
    ints,
    reshaped,
    schedule,
)

# --------------------------------------------------------------------------- good arguments
# backward op -> its arguments in schema order (csrc/pykernels.cpp), tiny shapes.
ARGS = {
    "cosine_similarity_backward": lambda d: [
        ("grad", f(d, 3)),
        ("x1", f(d, 3, 5)),
        ("x2", f(d, 3, 5)),
        ("eps", 1e-8),
        ("output_mask", [True, True]),
    ],
    "feature_distillation_loss_backward": lambda d: [
        ("grad", f(d, 3)),
        ("student", f(d, 3, 5)),
        ("teacher", f(d, 3, 5)),
        ("kind", "cosine"),
        ("eps", 1e-8),
        ("output_mask", [True, True]),
    ],
    "pairwise_cosine_similarity_backward": lambda d: [
        ("grad", f(d, 2, 3, 5)),
        ("a", f(d, 2, 3, 4)),
        ("b", f(d, 2, 5, 4)),
        ("eps", 1e-8),
        ("output_mask", [True, True]),
    ],
    "info_nce_loss_backward": lambda d: [
        ("grad", f(d, 2, 4)),
        ("image_features", f(d, 4, 6)),
        ("text_features", f(d, 4, 6)),
        ("logit_scale", torch.tensor(5.0, device=d.dev)),
        ("labels", ints(d, [1, 0, 3, 2])),
        ("row_lse", f(d, 4).double()),
        ("col_lse", f(d, 4).double()),
        ("symmetric", True),
        ("normalize", True),
    ],
    "sigmoid_contrastive_loss_backward": lambda d: [
        ("grad", f(d, 4)),
        ("image_features", f(d, 4, 6)),
        ("text_features", f(d, 5, 6)),
        ("logit_scale", torch.tensor(5.0, device=d.dev)),
        ("logit_bias", torch.tensor(-1.0, device=d.dev)),
        ("image_ids", ints(d, [0, 1, 1, 3])),
        ("text_ids", ints(d, [0, 1, 2, 3, 4])),
        ("normalize", True),
    ],
    "fused_linear_cross_entropy_backward": lambda d: [
        ("grad", f(d, 3)),
        ("hidden", f(d, 3, 4)),
        ("weight", f(d, 5, 4)),
        ("labels", ints(d, [0, 4, -100])),
        ("bias", f(d, 5)),
        ("ignore_index", -100),
        ("label_smoothing", 0.1),
        ("softcap", 3.0),
        ("z_loss", 1e-2),
        ("chunk_size", 2),
        ("grad_mask", [True, True, True]),
    ],
    "fused_linear_distillation_loss_backward": lambda d: [
        ("grad", f(d, 3)),
        ("student_hidden", f(d, 3, 4)),
        ("student_weight", f(d, 5, 4)),
        ("teacher_hidden", f(d, 3, 6)),
        ("teacher_weight", f(d, 5, 6)),
        ("labels", ints(d, [0, 4, -100])),
        ("student_bias", f(d, 5)),
        ("teacher_bias", f(d, 5)),
        ("temperature", 2.0),
        ("soft_weight", 1.0),
        ("hard_weight", 0.5),
        ("beta", 0.0),
        ("ignore_index", -100),
        ("label_smoothing", 0.0),
        ("chunk_size", 2),
        ("grad_mask", [True] * 6),
    ],
    "distillation_scale_grad": lambda d: [("grad", f(d, 3)), ("x", f(d, 3, 5))],
    "distillation_scale_grad_inplace": lambda d: [("grad", f(d, 3)), ("x", f(d, 3, 5))],
    "random_masking_backward": lambda d: [
        ("grad", f(d, 2, 2, 3)),
        ("ids_restore", ints(d, [[0, 1, 2, 3], [3, 2, 1, 0]])),
    ],
    "unshuffle_with_mask_tokens_backward": lambda d: [
        ("grad", f(d, 2, 4, 3)),
        ("ids_restore", ints(d, [[0, 1, 2, 3], [3, 2, 1, 0]])),
        ("num_keep", 2),
    ],
    "gather_patches_backward": lambda d: [
        ("grad", f(d, 2, 2, 12)),
        ("ids_keep", ints(d, [[0, 1], [3, 2]])),
        ("patch_size", 2),
        ("channels", 3),
        ("height", 4),
        ("width", 4),
    ],
    "masked_patch_loss_backward": lambda d: [
        ("grad", f(d)),
        ("pred", f(d, 2, 4, 12)),
        ("imgs", f(d, 2, 3, 4, 4)),
        ("mask", ints(d, [[0, 1, 1, 0], [1, 1, 0, 0]]).float()),
        ("patch_size", 2),
        ("norm_pix_loss", True),
    ],
    "add_noise_backward": lambda d: [
        ("grad", f(d, 3, 4)),
        ("timesteps", ints(d, [0, 5, 9])),
        ("alphas_cumprod", schedule(d)),
    ],
    "get_velocity_backward": lambda d: [
        ("grad", f(d, 3, 4)),
        ("timesteps", ints(d, [0, 5, 9])),
        ("alphas_cumprod", schedule(d)),
    ],
    "diffusion_loss_backward": lambda d: [
        ("grad", f(d)),
        ("model_output", f(d, 3, 4)),
        ("x0", f(d, 3, 4)),
        ("noise", f(d, 3, 4)),
        ("timesteps", ints(d, [0, 5, 9])),
        ("alphas_cumprod", schedule(d)),
        ("prediction_type", "v_prediction"),
        ("reduction", "mean"),
        ("output_mask", [True, True, True]),
    ],
    "ddpm_step_backward": lambda d: [
        ("grad_prev_sample", f(d, 3, 4)),
        ("grad_pred_original_sample", f(d, 3, 4)),
        ("model_output", f(d, 3, 4)),
        ("timesteps", ints(d, [1, 5, 9])),
        ("sample", f(d, 3, 4)),
        ("alphas_cumprod", schedule(d)),
        ("prev_timesteps", ints(d, [0, 4, -1])),
        ("threshold", lambda d: torch.tensor([1.5, 0.5, 1.2], device=d.dev)),
        ("prediction_type", "epsilon"),
        ("clip_sample", False),
        ("clip_sample_range", 1.0),
    ],
    "ddim_step_backward": lambda d: [
        ("grad_prev_sample", f(d, 3, 4)),
        ("grad_pred_original_sample", f(d, 3, 4)),
        ("model_output", f(d, 3, 4)),
        ("timesteps", ints(d, [1, 5, 9])),
        ("prev_timesteps", ints(d, [0, 4, -1])),
        ("sample", f(d, 3, 4)),
        ("alphas_cumprod", schedule(d)),
        ("eta", 0.0),
        ("threshold", lambda d: torch.tensor([1.5, 0.5, 1.2], device=d.dev)),
        ("prediction_type", "epsilon"),
        ("clip_sample", False),
        ("clip_sample_range", 1.0),
        ("use_clipped_model_output", False),
        ("final_alpha_cumprod", 1.0),
    ],
}


def op_for(name: str, backend: str):
    return getattr(torch.ops.pykernels, name + ("_triton" if backend == "triton" else ""))


def args_for(name: str, d: Dev, changes: dict | None = None) -> list:
    named = [
        (k, v(d) if callable(v) and not isinstance(v, (torch.Tensor, type)) else v)
        for k, v in ARGS[name](d)
    ]
    kw = build(changes or {}, dict(named), d)
    return [kw[k] for k, _ in named]


def call(name: str, backend: str, changes: dict | None = None):
    return op_for(name, backend)(*args_for(name, dev_for(backend), changes))


# --------------------------------------------------------------------------- bad arguments
def shape(*dims) -> str:
    """A shape in a message: [2, 3] (C++) or (2, 3) (Python); (3,) for one dim."""
    return r"[\[(]" + ", ".join(map(str, dims)) + r",?[\])]"


def grad_shape(*dims) -> str:
    return r"argument 'grad' must have shape " + shape(*dims)


SCALE_OPS = ("distillation_scale_grad", "distillation_scale_grad_inplace")


def grad_rows(
    op: str,
    shape_: tuple,
    name: str = "grad",
    *,
    short: bool = True,
    rank_msg: str = r"must have (the same )?shape",
) -> list[Row]:
    """Every backward op's upstream gradient: integer, bool, one element short in its
    last dim (short=False: ops where that dim is free), one dim too many, on another device."""
    dtype_msg = rf"argument '{name}' must (be float32|have the same dtype)"
    rows = [
        Row(op, f"{name} int64", {name: as_dtype(torch.int64)}, TypeError, dtype_msg),
        Row(op, f"{name} bool", {name: as_dtype(torch.bool)}, TypeError, dtype_msg),
        Row(
            op,
            f"{name} an extra dim",
            {name: reshaped(*shape_, 1)},
            ValueError,
            rf"argument '{name}' {rank_msg}",
        ),
        # cpu: the fake kernel's device check names the first tensor as the reference;
        # cuda: a kernel that checks the device type first says "must be a cuda tensor"
        Row(
            op,
            f"{name} on another device",
            {name: ON_OTHER},
            ValueError,
            rf"argument '{name}' must be (on the same device|a \w+ tensor)|on the same device as '{name}'",
        ),
    ]
    if short:
        rows.append(
            Row(
                op,
                f"{name} one short",
                {name: reshaped(*shape_[:-1], shape_[-1] - 1)},
                ValueError,
                rf"argument '{name}' must have (the same )?shape",
            )
        )
    return rows


def backward_timestep_rows(op: str, names=("timesteps",)) -> list[Row]:
    rows = [
        Row(
            op,
            "table int64",
            {"alphas_cumprod": as_dtype(torch.int64)},
            TypeError,
            r"'alphas_cumprod' must be float32",
        ),
        Row(
            op,
            "table 2-D",
            {"alphas_cumprod": Mut(lambda x, d: x[None])},
            ValueError,
            r"'alphas_cumprod' must be a non-empty 1-D table",
        ),
    ]
    for name in names:
        rows += [
            Row(
                op,
                f"{name} float",
                {name: as_dtype(torch.float32)},
                TypeError,
                rf"argument '{name}' must be an int64 or int32 tensor",
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
                f"{name} >= T",
                {name: fill(10, 1)},
                IndexError,
                rf"argument '{name}' has 10",
                backends=("cpu",),
            ),
        ]
    return rows


def _sigmas(*values):
    return lambda d: torch.tensor(values, device=d.dev)


ARGS.update(
    {
        "flow_interpolate_backward": lambda d: [
            ("grad", f(d, 3, 4)),
            ("sigmas", _sigmas(0.0, 0.5, 1.0)),
        ],
        "flow_matching_loss_backward": lambda d: [
            ("grad", f(d, 3)),
            ("grad_noisy", f(d, 3, 4)),
            ("model_output", f(d, 3, 4)),
            ("x0", f(d, 3, 4)),
            ("noise", f(d, 3, 4)),
            ("sigmas", _sigmas(0.0, 0.5, 1.0)),
            ("weighting_scheme", "cosmap"),
            ("precondition_outputs", True),
            ("output_mask", [True, True, True]),
        ],
        "flow_match_euler_step_backward": lambda d: [
            ("grad", f(d, 3, 4)),
            ("sigmas", _sigmas(0.0, 0.5, 1.0)),
            ("sigmas_next", _sigmas(0.0, 0.2, 0.9)),
        ],
    }
)
# The gradients of flow_interpolate_backward and flow_match_euler_step_backward come back
# in grad's dtype (autograd passes the output's, which is the inputs'): no other dtype.
GRAD_DTYPE_IS_OUTPUT_DTYPE = {
    "ddpm_step_backward",
    "ddim_step_backward",
    "flow_interpolate_backward",
    "flow_match_euler_step_backward",
}


# --------------------------------------------------------------------------- the test
def backward_tests(rows: list[Row]):
    """test_bad_backward_call: each row raises its exception, with its message, from the
    backward op of each fused backend it applies to."""

    @pytest.mark.parametrize(
        "row, backend",
        [
            pytest.param(row, p.values[0], id=f"{row.id}-{p.values[0]}", marks=p.marks)
            for row in rows
            for p in FUSED_BACKENDS
            if not row.backends or p.values[0] in row.backends
        ],
    )
    def test_bad_backward_call(row, backend):
        with pytest.raises(row.exc, match=row.match):
            call(row.op, backend, row.changes)

    return test_bad_backward_call
