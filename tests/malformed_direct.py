"""The direct op calls' building blocks: torch.ops.pykernels.<op> (cpu, cuda) and <op>_triton
(triton) with good arguments in schema order (DIRECT), the rows every direct op gets, and the
tests every direct table runs (direct_tests, bad_op_tests). Rows and argument changes are
those of malformed.py.
"""

from __future__ import annotations

import pytest
import torch

from pykernels.ops import _registry

from .helpers import FUSED_BACKENDS
from .malformed import (
    AS_LIST,
    ON_OTHER,
    Row,
    applies,
    as_dtype,
    build,
    dev_for,
    f,
    ints,
    probs,
    reshaped,
    schedule,
)

# op -> [(argument, good value builder), ...] in schema order (csrc/pykernels.cpp)
DIRECT = {
    "cosine_similarity": lambda d: [("x1", f(d, 3, 5)), ("x2", f(d, 3, 5)), ("eps", 1e-8)],
    "feature_distillation_loss": lambda d: [
        ("student", f(d, 3, 5)),
        ("teacher", f(d, 3, 5)),
        ("kind", "mse"),
        ("eps", 1e-8),
    ],
    "pairwise_cosine_similarity": lambda d: [
        ("a", f(d, 2, 3, 4)),
        ("b", f(d, 2, 5, 4)),
        ("eps", 1e-8),
    ],
    "distillation_loss": lambda d: [
        ("student_logits", f(d, 3, 5)),
        ("teacher_logits", f(d, 3, 5)),
        ("labels", ints(d, [0, 4, -100])),
        ("temperature", 2.0),
        ("soft_weight", 1.0),
        ("hard_weight", 0.5),
        ("beta", 0.0),
        ("ignore_index", -100),
        ("label_smoothing", 0.0),
        ("grad_student_logits", False),
        ("grad_teacher_logits", False),
        ("grad_scale", 1.0),
    ],
    "cross_entropy": lambda d: [
        ("logits", f(d, 3, 5)),
        ("labels", ints(d, [0, 4, -100])),
        ("ignore_index", -100),
        ("label_smoothing", 0.0),
        ("grad_logits", False),
        ("grad_scale", 1.0),
    ],
    "soft_target_cross_entropy": lambda d: [
        ("logits", f(d, 3, 5)),
        ("target_probs", probs(d, 3, 5)),
        ("temperature", 1.0),
        ("grad_logits", False),
        ("grad_target_probs", False),
        ("grad_scale", 1.0),
    ],
    "info_nce_loss": lambda d: [
        ("image_features", f(d, 4, 6)),
        ("text_features", f(d, 4, 6)),
        ("logit_scale", torch.tensor(5.0, device=d.dev)),
        ("labels", ints(d, [1, 0, 3, 2])),
        ("symmetric", True),
        ("normalize", False),
    ],
    "random_masking": lambda d: [("x", f(d, 2, 6, 3)), ("mask_ratio", 0.5), ("noise", f(d, 2, 6))],
    "unshuffle_with_mask_tokens": lambda d: [
        ("x_visible", f(d, 2, 2, 3)),
        ("mask_token", f(d, 3)),
        ("ids_restore", ints(d, [[0, 1, 2, 3], [3, 2, 1, 0]])),
    ],
    "gather_patches": lambda d: [
        ("imgs", f(d, 2, 3, 4, 4)),
        ("ids_keep", ints(d, [[0, 1], [3, 2]])),
        ("patch_size", 2),
    ],
    "masked_patch_loss": lambda d: [
        ("pred", f(d, 2, 4, 12)),
        ("imgs", f(d, 2, 3, 4, 4)),
        ("mask", ints(d, [[0, 1, 1, 0], [1, 1, 0, 0]]).float()),
        ("patch_size", 2),
        ("norm_pix_loss", False),
    ],
    "add_noise": lambda d: [
        ("x0", f(d, 3, 4)),
        ("noise", f(d, 3, 4)),
        ("timesteps", ints(d, [0, 5, 9])),
        ("alphas_cumprod", schedule(d)),
    ],
    "get_velocity": lambda d: [
        ("x0", f(d, 3, 4)),
        ("noise", f(d, 3, 4)),
        ("timesteps", ints(d, [0, 5, 9])),
        ("alphas_cumprod", schedule(d)),
    ],
    "diffusion_loss": lambda d: [
        ("model_output", f(d, 3, 4)),
        ("x0", f(d, 3, 4)),
        ("noise", f(d, 3, 4)),
        ("timesteps", ints(d, [0, 5, 9])),
        ("alphas_cumprod", schedule(d)),
        ("prediction_type", "epsilon"),
        ("reduction", "mean"),
    ],
    "ddpm_step": lambda d: [
        ("model_output", f(d, 3, 4)),
        ("timesteps", ints(d, [1, 5, 9])),
        ("sample", f(d, 3, 4)),
        ("alphas_cumprod", schedule(d)),
        ("prev_timesteps", ints(d, [0, 4, -1])),
        ("noise", f(d, 3, 4)),
        ("threshold", None),
        ("prediction_type", "epsilon"),
        ("clip_sample", True),
        ("clip_sample_range", 1.0),
    ],
    "ddim_step": lambda d: [
        ("model_output", f(d, 3, 4)),
        ("timesteps", ints(d, [1, 5, 9])),
        ("prev_timesteps", ints(d, [0, 4, -1])),
        ("sample", f(d, 3, 4)),
        ("alphas_cumprod", schedule(d)),
        ("eta", 0.5),
        ("noise", f(d, 3, 4)),
        ("threshold", None),
        ("prediction_type", "epsilon"),
        ("clip_sample", False),
        ("clip_sample_range", 1.0),
        ("use_clipped_model_output", False),
        ("final_alpha_cumprod", 1.0),
    ],
}
DIRECT_FLOATS = {
    "cosine_similarity": ["x1", "x2"],
    "feature_distillation_loss": ["student", "teacher"],
    "pairwise_cosine_similarity": ["a", "b"],
    "distillation_loss": ["student_logits", "teacher_logits"],
    "cross_entropy": ["logits"],
    "soft_target_cross_entropy": ["logits", "target_probs"],
    "info_nce_loss": ["image_features", "text_features", "logit_scale"],
    "random_masking": ["x"],
    "unshuffle_with_mask_tokens": ["x_visible", "mask_token"],
    "gather_patches": ["imgs"],
    "masked_patch_loss": ["pred", "imgs"],
    "add_noise": ["x0", "noise"],
    "get_velocity": ["x0", "noise"],
    "diffusion_loss": ["model_output", "x0", "noise"],
    "ddpm_step": ["sample", "model_output", "noise"],
    "ddim_step": ["sample", "model_output", "noise"],
}


def direct_generic_rows(op: str) -> list[Row]:
    rows = []
    for k, name in enumerate(DIRECT_FLOATS[op]):
        dtype_msg = rf"argument '{name}' must (be float32|have the same dtype)"
        rows += [
            Row(op, f"{name} int64", {name: as_dtype(torch.int64)}, TypeError, dtype_msg),
            Row(op, f"{name} bool", {name: as_dtype(torch.bool)}, TypeError, dtype_msg),
        ]
        if k == 0:
            rows += [
                Row(
                    op, f"{name} complex64", {name: as_dtype(torch.complex64)}, TypeError, dtype_msg
                ),
                # PyTorch's schema parser: RuntimeError naming the argument, for every op
                Row(
                    op,
                    f"{name} not a tensor",
                    {name: AS_LIST},
                    RuntimeError,
                    rf"Expected a value of type 'Tensor' for argument '{name}'",
                ),
            ]
        else:
            rows.append(
                Row(
                    op,
                    f"{name} on another device",
                    {name: ON_OTHER},
                    ValueError,
                    # the C++ kernels check the device type first ("must be a cuda tensor");
                    # the fake kernel names the schema's first tensor as the reference
                    rf"argument '{name}' must be (on the same device|a \w+ tensor)"
                    rf"|on the same device as '{name}'",
                )
            )
            if name != "logit_scale":  # any float dtype
                rows.append(
                    Row(
                        op,
                        f"{name} float64 vs float32",
                        {name: as_dtype(torch.float64)},
                        TypeError,
                        rf"argument '{name}' must have the same dtype",
                    )
                )
    return rows


def any_float_rows(op: str, name: str, shape: tuple) -> list[Row]:
    """A float argument of any float dtype, of `shape`: integer, wrong shape, another device."""
    return [
        Row(
            op,
            f"{name} int64",
            {name: as_dtype(torch.int64)},
            TypeError,
            rf"argument '{name}' must be float32",
        ),
        Row(
            op,
            f"{name} shape",
            {name: reshaped(shape[0], shape[1] - 1)},
            ValueError,
            rf"argument '{name}' must have shape \[{shape[0]}, {shape[1]}\]",
        ),
        Row(
            op,
            f"{name} on another device",
            {name: ON_OTHER},
            ValueError,
            rf"argument '{name}' must be on the same device|on the same device as '{name}'",
        ),
    ]


def call_direct(row: Row, backend: str):
    d = dev_for(backend)
    named = DIRECT[row.op](d)
    kw = build(row.changes, dict(named), d)
    op = getattr(torch.ops.pykernels, row.op + ("_triton" if backend == "triton" else ""))
    return op(*[kw[name] for name, _ in named])


# --------------------------------------------------------------------------- the tests
def direct_tests(rows: list[Row]):
    """test_direct_op: each row raises its exception, with its message, from the op of each
    fused backend called directly."""

    @pytest.mark.parametrize(
        "row, backend",
        [
            pytest.param(row, p.values[0], id=f"{row.id}-{p.values[0]}", marks=p.marks)
            for row in rows
            for p in FUSED_BACKENDS
            if applies(row, p.values[0])
        ],
    )
    def test_direct_op(row, backend):
        with pytest.raises(row.exc, match=row.match):
            call_direct(row, backend)

    return test_direct_op


def bad_op_tests(family: str, calls: list, triton: bool = False):
    """test_bad_input_torch_ops over a family's direct calls the rows do not reach (backward
    ops, the gradient scaler, value ranges): [(call(op), exception, message pattern)], where
    op(name) is the op `name` on the backend under test. The cpu ops always; the Triton ops
    where `triton` (the other families' Triton ops get the generic rows)."""

    @pytest.mark.parametrize(
        "family, case, backend",
        [
            pytest.param(family, k, p.values[0], id=f"{family}-{k}-{p.values[0]}", marks=p.marks)
            for k in range(len(calls))
            for p in FUSED_BACKENDS
            if p.values[0] == "cpu" or (p.values[0] == "triton" and triton)
        ],
    )
    def test_bad_input_torch_ops(family, case, backend):
        """The checks hold when torch.ops.pykernels.* is called directly (TORCH_CHECK, and the
        Triton ops' own checks). Values (' has ... outside') are read back by the CPU ops only."""
        call, exc, text = calls[case]
        if "' has " in text and backend != "cpu":
            pytest.skip("values are checked by the public functions and the CPU ops")
        with pytest.raises(exc, match=text):
            call(lambda name: _registry.op(name, backend))

    return test_bad_input_torch_ops
