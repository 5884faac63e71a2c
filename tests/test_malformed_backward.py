"""Malformed input to the backward ops. Autograd calls them with good
arguments, but torch.ops.pykernels.<name>_backward (C++: cpu, cuda) and
<name>_backward_triton are public ops a user can call directly; so they check their
arguments as the forward ops do, plus the upstream gradient(s): a float tensor (any float
dtype: the kernels convert it; ddpm/ddim_step_backward: the sample's dtype) of the exact
shape, on the inputs' device. Bad input raises the exception type of test_malformed.py
(TypeError dtype, ValueError shape / device / value, IndexError an index out of range)
with a message naming the argument, the same type on every backend.

Index values (ids, timesteps) are range-checked on the cpu backend only: the Triton ops,
like their forward ops and the CUDA kernels, do not read index tensors back to the host
(the kernels skip or clamp an out-of-range index; docs/mae.md, docs/diffusion.md).

Each op also gets one good call, which must run and give what autograd gives through the
forward op of the same backend (so the checks do not refuse what autograd passes), and
the same call with a float64 upstream gradient where any float dtype is accepted. And
the Triton ops' checks trace with symbolic shapes (no data-dependent read), which
test_compile_dynamic.py can only show on a GPU.
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


def _grad_rows(
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


def _timestep_rows(op: str, names=("timesteps",)) -> list[Row]:
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


def _cosine_rows() -> list[Row]:
    rows = []
    op = "cosine_similarity_backward"
    rows += _grad_rows(op, (3,)) + [
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
    rows += _grad_rows(op, (3,)) + [
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
    rows += _grad_rows(op, (2, 3, 5)) + [
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


def _sigmoid_contrastive_rows() -> list[Row]:
    rows = []
    # ---------------------------------------------------------------- sigmoid_contrastive
    op = "sigmoid_contrastive_loss_backward"
    rows += _grad_rows(op, (4,)) + [
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


def _fused_linear_rows() -> list[Row]:
    rows = []
    for op, weight in (
        ("fused_linear_cross_entropy_backward", "weight"),
        ("fused_linear_distillation_loss_backward", "student_weight"),
    ):
        rows += _grad_rows(op, (3,)) + [
            Row(op, "weight H mismatch", {weight: reshaped(5, 3)}, ValueError, weight),
            Row(op, "labels int32", {"labels": as_dtype(torch.int32)}, TypeError, "labels"),
        ]
    return rows


def _contrastive_rows() -> list[Row]:
    rows = []
    op = "info_nce_loss_backward"
    rows += _grad_rows(op, (2, 4)) + [
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


def _distillation_rows() -> list[Row]:
    rows = []
    for op in SCALE_OPS:
        rows += _grad_rows(op, (3,)) + [
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


def _mae_rows() -> list[Row]:
    rows = []
    op = "random_masking_backward"
    rows += _grad_rows(op, (2, 2, 3), short=False, rank_msg=r"must have (3 dimension|shape)") + [
        Row(
            op,
            "grad more tokens than L",
            {"grad": reshaped(2, 5, 3)},
            ValueError,
            r"argument 'grad' has 5 tokens, more than the L = 4",
        ),
        Row(
            op,
            "ids_restore int32",
            {"ids_restore": as_dtype(torch.int32)},
            TypeError,
            r"argument 'ids_restore' must be an int64",
        ),
        Row(
            op,
            "ids_restore wrong batch",
            {"ids_restore": Mut(lambda x, d: x[:1])},
            ValueError,
            r"argument 'ids_restore' must have (2 rows|shape \[2, K\])",
        ),
        Row(
            op,
            "ids_restore 1-D",
            {"ids_restore": Mut(lambda x, d: x[0])},
            ValueError,
            r"argument 'ids_restore' must have",
        ),
        Row(
            op,
            "ids_restore on another device",
            {"ids_restore": ON_OTHER},
            ValueError,
            r"argument 'ids_restore' must be on the same device|on the same device as 'ids_restore'",
        ),
        Row(
            op,
            "ids_restore >= L",
            {"ids_restore": fill(4, 1)},
            IndexError,
            r"argument 'ids_restore' has id 4",
            backends=("cpu",),
        ),
        Row(
            op,
            "ids_restore repeated",
            {"ids_restore": fill(0, 1)},
            ValueError,
            r"argument 'ids_restore' repeats id 0",
            backends=("cpu",),
        ),
    ]
    op = "unshuffle_with_mask_tokens_backward"
    rows += _grad_rows(op, (2, 4, 3), short=False, rank_msg=r"must have (3 dimension|shape)") + [
        Row(
            op,
            "ids_restore int32",
            {"ids_restore": as_dtype(torch.int32)},
            TypeError,
            r"argument 'ids_restore' must be an int64",
        ),
        Row(
            op,
            "ids_restore one short",
            {"ids_restore": Mut(lambda x, d: x[:, :3])},
            ValueError,
            r"argument 'ids_restore' must have shape \[2, 4\]",
        ),
        Row(
            op,
            "ids_restore wrong batch",
            {"ids_restore": Mut(lambda x, d: x[:1])},
            ValueError,
            r"argument 'ids_restore' must have (2 rows|shape \[2, K\])",
        ),
        Row(
            op,
            "num_keep > L",
            {"num_keep": 5},
            ValueError,
            r"argument 'num_keep' must be in \[0, 4\]",
        ),
        Row(
            op,
            "num_keep -1",
            {"num_keep": -1},
            ValueError,
            r"argument 'num_keep' must be in \[0, 4\]",
        ),
        Row(
            op,
            "ids_restore >= L",
            {"ids_restore": fill(4, 1)},
            IndexError,
            r"argument 'ids_restore' has id 4",
            backends=("cpu",),
        ),
    ]
    op = "gather_patches_backward"
    rows += _grad_rows(op, (2, 2, 12), rank_msg=r"must have (3 dimension|shape)") + [
        Row(
            op,
            "grad one patch short",
            {"grad": reshaped(2, 1, 12)},
            ValueError,
            grad_shape(2, 2, 12),
        ),
        Row(
            op, "grad for 2 channels", {"grad": reshaped(2, 2, 8)}, ValueError, grad_shape(2, 2, 12)
        ),
        Row(
            op,
            "ids_keep int32",
            {"ids_keep": as_dtype(torch.int32)},
            TypeError,
            r"argument 'ids_keep' must be an int64",
        ),
        Row(
            op,
            "ids_keep wrong batch",
            {"ids_keep": Mut(lambda x, d: x[:1])},
            ValueError,
            r"argument 'ids_keep' must have (2 rows|shape \[2, K\])",
        ),
        Row(op, "channels 0", {"channels": 0}, ValueError, r"argument 'channels' must be > 0"),
        Row(op, "height -4", {"height": -4}, ValueError, r"argument 'height' must be >= 0"),
        Row(op, "width -2", {"width": -2}, ValueError, r"argument 'width' must be >= 0"),
        Row(
            op, "patch_size 0", {"patch_size": 0}, ValueError, r"argument 'patch_size' must be > 0"
        ),
        Row(
            op,
            "patch_size does not divide",
            {"patch_size": 3},
            ValueError,
            r"multiples of 'patch_size' \(3\)",
        ),
        Row(
            op,
            "ids_keep >= L",
            {"ids_keep": fill(4, 1)},
            IndexError,
            r"argument 'ids_keep' has id 4",
            backends=("cpu",),
        ),
    ]
    op = "masked_patch_loss_backward"
    rows += [
        Row(
            op,
            "grad int64",
            {"grad": as_dtype(torch.int64)},
            TypeError,
            r"argument 'grad' must be float32",
        ),
        Row(op, "grad per patch", {"grad": reshaped(2, 4)}, ValueError, grad_shape()),
        Row(
            op,
            "grad on another device",
            {"grad": ON_OTHER},
            ValueError,
            r"argument 'grad' must be (on the same device|a \w+ tensor)|on the same device as 'grad'",
        ),
        Row(
            op,
            "pred other shape",
            {"pred": reshaped(2, 4, 11)},
            ValueError,
            r"argument 'pred' must have shape \[2, 4, 12\]",
        ),
        Row(
            op,
            "pred int64",
            {"pred": as_dtype(torch.int64)},
            TypeError,
            r"argument 'pred' must be float32",
        ),
        Row(
            op,
            "imgs float64",
            {"imgs": as_dtype(torch.float64)},
            TypeError,
            r"argument 'imgs' must have the same dtype",
        ),
        Row(
            op,
            "imgs 3-D",
            {"imgs": reshaped(3, 4, 4)},
            ValueError,
            r"argument 'imgs' must have (4 dimension|shape)",
        ),
        Row(
            op,
            "mask shape",
            {"mask": reshaped(2, 5)},
            ValueError,
            r"argument 'mask' must have shape \[2, 4\]",
        ),
        Row(
            op, "patch_size 0", {"patch_size": 0}, ValueError, r"argument 'patch_size' must be > 0"
        ),
    ]
    return rows


def _diffusion_rows() -> list[Row]:
    rows = []
    for op in ("add_noise_backward", "get_velocity_backward"):  # grad sets the shape: any [N, ...]
        rows += _timestep_rows(op) + [
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
        + _timestep_rows(op)
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
            rows += _grad_rows(op, (3, 4), name) + [
                Row(
                    op,
                    f"{name} float64",
                    {name: as_dtype(torch.float64)},
                    TypeError,
                    rf"argument '{name}' must have the same dtype",
                ),
            ]
        rows += _timestep_rows(op, ("timesteps", "prev_timesteps")) + [
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


def _rows() -> list[Row]:
    return (
        _cosine_rows()
        + _contrastive_rows()
        + _sigmoid_contrastive_rows()
        + _distillation_rows()
        + _fused_linear_rows()
        + _mae_rows()
        + _diffusion_rows()
    )


ROWS = _rows()


# ---------------------------------------------------------------- flow_matching
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


_op = "flow_matching_loss_backward"
ROWS += (
    _flow_grad_rows("flow_interpolate_backward")
    + _flow_sigma_rows("flow_interpolate_backward")
    + _flow_grad_rows("flow_match_euler_step_backward")
    + _flow_sigma_rows("flow_match_euler_step_backward", ("sigmas", "sigmas_next"))
    + _grad_rows(_op, (3,))
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


def backend_params():
    return [
        pytest.param(row, p.values[0], id=f"{row.id}-{p.values[0]}", marks=p.marks)
        for row in ROWS
        for p in FUSED_BACKENDS
        if not row.backends or p.values[0] in row.backends
    ]


@pytest.mark.parametrize("row, backend", backend_params())
def test_bad_backward_call(row, backend):
    with pytest.raises(row.exc, match=row.match):
        call(row.op, backend, row.changes)


def test_every_backward_op_has_rows():
    """Each backward op has a good call and bad rows for its gradient(s), and the table
    covers every backward op the extension registers."""
    assert {row.op for row in ROWS} == set(ARGS)
    registered = {
        name
        for name in dir(torch.ops.pykernels)
        if (name.endswith("_backward") or name.startswith("distillation_scale_grad"))
        and not name.endswith("_triton")
    }
    if registered:  # empty when pykernels._C is not built
        assert registered == set(ARGS)


# --------------------------------------------------------------------------- good calls
def _needs_grad(*xs):
    return [x.detach().clone().requires_grad_() for x in xs]


def _autograd(name: str, backend: str, a: list):
    """What autograd gives for the good call `a` (the backward op's arguments), through the
    forward op of the same backend."""
    fwd = lambda n: op_for(n, backend)  # noqa: E731
    grad = lambda outs, ins, gs: torch.autograd.grad(outs, ins, gs, retain_graph=True)  # noqa: E731
    if name in (
        "cosine_similarity_backward",
        "feature_distillation_loss_backward",
        "pairwise_cosine_similarity_backward",
    ):
        x1, x2 = _needs_grad(a[1], a[2])
        return grad(fwd(name[: -len("_backward")])(x1, x2, *a[3:-1]), (x1, x2), a[0])
    if name == "info_nce_loss_backward":  # the log-sum-exps the forward saves
        i, t, scale = _needs_grad(a[1], a[2], a[3])
        loss, row_lse, col_lse = fwd("info_nce_loss")(i, t, scale, a[4], a[7], a[8])
        a[5], a[6] = row_lse.detach(), col_lse.detach()
        return grad(loss, (i, t, scale), a[0])
    if name == "sigmoid_contrastive_loss_backward":
        ins = _needs_grad(*a[1:5])
        return grad(fwd("sigmoid_contrastive_loss")(*ins, *a[5:8]), ins, a[0])
    if name == "fused_linear_cross_entropy_backward":  # per-row losses: the backward recomputes
        h, w, b = _needs_grad(a[1], a[2], a[4])
        outs = fwd("fused_linear_cross_entropy")(h, w, a[3], b, *a[5:10], False, 1.0, False, a[10])
        return grad(outs[0], (h, w, b), a[0])
    if name == "fused_linear_distillation_loss_backward":
        sh, sw, th, tw, sb, tb = _needs_grad(*a[1:5], a[6], a[7])
        outs = fwd("fused_linear_distillation_loss")(
            sh, sw, th, tw, a[5], sb, tb, *a[8:15], False, 1.0, a[15]
        )
        return grad(outs[0], (sh, sw, sb, th, tw, tb), a[0])
    if name in SCALE_OPS:  # the saved gradient of cross_entropy's rows, scaled by the upstream one
        (logits,) = _needs_grad(a[1])
        labels = torch.tensor([0, 4, 2], device=logits.device)
        loss, saved = fwd("cross_entropy")(logits, labels, -100, 0.0, True, 1.0)
        a[1].copy_(saved.detach())  # the op scales the saved gradient
        return grad(loss, (logits,), a[0])
    if name == "random_masking_backward":
        (x,) = _needs_grad(f(dev_for(backend), 2, 4, 3))
        noise = torch.tensor(
            [[0.0, 0.1, 0.2, 0.3], [0.3, 0.2, 0.1, 0.0]], device=x.device
        )  # ids_restore = a[1]
        x_visible, _, ids_restore = fwd("random_masking")(x, 0.5, noise)
        assert torch.equal(ids_restore, a[1])
        return grad(x_visible, (x,), a[0])
    if name == "unshuffle_with_mask_tokens_backward":
        xv, token = _needs_grad(f(dev_for(backend), 2, a[2], 3), f(dev_for(backend), 3))
        return grad(fwd("unshuffle_with_mask_tokens")(xv, token, a[1]), (xv, token), a[0])
    if name == "gather_patches_backward":
        (imgs,) = _needs_grad(f(dev_for(backend), 2, *a[3:6]))
        return grad(fwd("gather_patches")(imgs, a[1], a[2]), (imgs,), a[0])
    if name == "masked_patch_loss_backward":
        pred, mask = _needs_grad(a[1], a[3])
        return grad(fwd("masked_patch_loss")(pred, a[2], mask, *a[4:]), (pred, mask), a[0])
    if name in ("add_noise_backward", "get_velocity_backward"):
        x0, noise = _needs_grad(a[0], f(dev_for(backend), *a[0].shape))
        return grad(fwd(name[: -len("_backward")])(x0, noise, *a[1:]), (x0, noise), a[0])
    if name == "diffusion_loss_backward":
        ins = _needs_grad(*a[1:4])
        return grad(fwd("diffusion_loss")(*ins, *a[4:8]), ins, a[0])
    if name in ("ddpm_step_backward", "ddim_step_backward"):
        b = list(a[2:])  # the forward's arguments without the noise
        slot = {"model_output": 0, "sample": 2 if name == "ddpm_step_backward" else 3}
        m, s_, q = _needs_grad(b[0], b[slot["sample"]], b[5 if name == "ddpm_step_backward" else 6])
        b[0], b[slot["sample"]] = m, s_
        b[5 if name == "ddpm_step_backward" else 6] = q
        noise_at = 5 if name == "ddpm_step_backward" else 6
        outs = fwd(name[: -len("_backward")])(*b[:noise_at], None, *b[noise_at:])
        return grad(outs, (m, s_, q), (a[0], a[1]))
    if name == "flow_interpolate_backward":
        x0, noise = _needs_grad(a[0], f(dev_for(backend), *a[0].shape))
        return grad(fwd("flow_interpolate")(x0, noise, a[1]), (x0, noise), a[0])
    if name == "flow_matching_loss_backward":  # the loss and x_t, both with a gradient
        ins = _needs_grad(*a[2:5])
        return grad(fwd("flow_matching_loss")(*ins, *a[5:8], True), ins, (a[0], a[1]))
    if name == "flow_match_euler_step_backward":
        m, sample = _needs_grad(a[0], f(dev_for(backend), *a[0].shape))
        return grad(fwd("flow_match_euler_step")(m, sample, a[1], a[2]), (m,), a[0])
    raise AssertionError(name)


def _direct(name: str, backend: str, a: list):
    out = op_for(name, backend)(*a)
    if name == "distillation_scale_grad_inplace":  # in place: the result is x
        assert out is None
        return (a[1],)
    if name == "diffusion_loss_backward":
        return out
    return out if isinstance(out, tuple) else (out,)


# Ops whose gradients keep the upstream gradient's dtype: they move its values (gathers) or
# scale them (add_noise, get_velocity).
MOVES_GRAD = (
    "random_masking_backward",
    "unshuffle_with_mask_tokens_backward",
    "gather_patches_backward",
    "add_noise_backward",
    "get_velocity_backward",
)


def _good_params():
    return [
        pytest.param(
            name,
            p.values[0],
            g64,
            id=f"{name}-{p.values[0]}{'-grad_float64' if g64 else ''}",
            marks=p.marks,
        )
        for name in ARGS
        for p in FUSED_BACKENDS
        for g64 in ((False,) if name in GRAD_DTYPE_IS_OUTPUT_DTYPE else (False, True))
    ]


@pytest.mark.parametrize("name, backend, grad_float64", _good_params())
def test_good_backward_call_matches_autograd(name, backend, grad_float64):
    """The good call runs and gives autograd's gradients (autograd calls the same op, so
    they agree to the last bit). grad_float64: an upstream gradient in another float dtype
    than the inputs is accepted (the kernels convert it), with the same result up to
    float32 rounding of the gradient."""
    a = args_for(name, dev_for(backend))
    want = _autograd(name, backend, a)
    if grad_float64:
        a[0] = a[0].double()
    got = _direct(name, backend, a)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        # the token / patch backward ops move the gradient's values: they keep its dtype
        assert g.shape == w.shape and g.dtype == (a[0].dtype if name in MOVES_GRAD else w.dtype)
        g = g.to(w.dtype)
        torch.testing.assert_close(
            g, w, rtol=1e-6 if grad_float64 else 0, atol=1e-7 if grad_float64 else 0
        )


def test_scale_grad_checks_do_not_touch_x_when_they_refuse():
    """A refused in-place call leaves x as it was (the checks run before the kernel)."""
    for p in FUSED_BACKENDS:
        if p.marks:
            continue
        backend = p.values[0]
        d = dev_for(backend)
        x = f(d, 3, 5)
        before = x.clone()
        with pytest.raises(ValueError, match=grad_shape(3)):
            op_for("distillation_scale_grad_inplace", backend)(f(d, 2), x)
        assert torch.equal(x, before)


@pytest.mark.parametrize("name", list(ARGS))
def test_triton_backward_checks_trace_with_symbolic_shapes(name):
    """The checks read metadata only: they run on fake tensors with symbolic sizes
    (make_fx, as torch.compile(dynamic=True) traces; test_compile_dynamic.py covers the
    Triton ops on a GPU only). A data-dependent read (.item(), a host copy) would fail the
    trace inside the checks. Under the Triton interpreter (no GPU) the trace gets past the
    checks and stops where the interpreter launches the first kernel: it cannot run one on
    fake tensors."""
    import traceback

    from torch.fx.experimental.proxy_tensor import make_fx

    p = next(p for p in FUSED_BACKENDS if p.values[0] == "triton")
    if p.marks:
        pytest.skip("triton is not available")
    a = args_for(name, dev_for("triton"))
    slots = [i for i, v in enumerate(a) if isinstance(v, torch.Tensor)]

    def run(*tensors):
        b = list(a)
        for i, t in zip(slots, tensors):
            b[i] = t
        return op_for(name, "triton")(*b)

    try:
        make_fx(run, tracing_mode="symbolic")(*[a[i] for i in slots])
    except RuntimeError as exc:
        if "Cannot access data pointer" not in str(exc):
            raise
        ours = [fr for fr in traceback.extract_tb(exc.__traceback__) if "pykernels" in fr.filename]
        assert "triton_kernels" in ours[-1].filename, traceback.format_exc()
