"""Malformed input to the public functions: every kind of bad argument a public op can get,
with the exact exception type and a message that names the argument, on every backend
(backend=...). The rows and their building blocks are in malformed.py; the direct op calls
are in test_malformed_direct.py.

Decisions: NaN/Inf in data tensors (features, logits, samples, the alphas_cumprod table,
logit_scale) are not checked (that would read device memory) and propagate; NaN/Inf Python
scalars are rejected where the op has no meaning for them (test_edge_inputs.py).
"""

from __future__ import annotations

import math

import pytest
import torch

import pykernels as pk

from .helpers import ALL_BACKENDS, FUSED_BACKENDS
from .malformed import (
    AS_LIST,
    INF,
    NAN,
    ON_META,
    ON_OTHER,
    PAIRS,
    PUBLIC,
    TIMESTEP_OPS,
    Mut,
    Row,
    applies,
    as_dtype,
    call_public,
    dev_for,
    f,
    fill,
    generic_rows,
    ints,
    on_other_device,
    reshaped,
    row_params,
    timestep_rows,
)


def _generic_rows() -> list[Row]:
    rows = []
    for op in PUBLIC:
        rows += generic_rows(op)
        if PUBLIC[op][2] and PUBLIC[op][3]:
            rows.append(on_other_device(op))
    return rows


def _cosine_rows() -> list[Row]:
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


def _contrastive_rows() -> list[Row]:
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


def _mae_rows() -> list[Row]:
    rows = []
    rows += [
        Row(
            "random_masking",
            "x 2-D",
            {"x": reshaped(2, 6), "noise": None},
            ValueError,
            r"argument 'x' must have shape \[N, L, D\]",
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
            "mask_ratio negative",
            {"mask_ratio": -0.1},
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
            "random_masking",
            "mask_ratio a string",
            {"mask_ratio": "0.5"},
            TypeError,
            r"argument 'mask_ratio' must be a number",
        ),
        Row(
            "random_masking",
            "mask_ratio a bool",
            {"mask_ratio": False},
            TypeError,
            r"argument 'mask_ratio' must be a number",
        ),
        Row(
            "random_masking",
            "noise shape",
            {"noise": reshaped(2, 5)},
            ValueError,
            r"argument 'noise' must have shape \[2, 6\]",
        ),
        Row(
            "random_masking",
            "noise and generator",
            {"generator": lambda d: torch.Generator(d.dev)},
            ValueError,
            r"pass 'noise' or 'generator', not both",
        ),
        Row(
            "patchify",
            "imgs 3-D",
            {"imgs": reshaped(3, 4, 4)},
            ValueError,
            r"argument 'imgs' must have shape \[N, C, H, W\]",
        ),
        Row(
            "patchify",
            "patch_size does not divide",
            {"patch_size": 3},
            ValueError,
            r"multiples of 'patch_size' \(3\)",
        ),
        Row(
            "patchify",
            "patch_size 0",
            {"patch_size": 0},
            ValueError,
            r"argument 'patch_size' must be > 0",
        ),
        Row(
            "patchify",
            "patch_size a float",
            {"patch_size": 2.0},
            TypeError,
            r"argument 'patch_size' must be an int",
        ),
        Row(
            "unpatchify",
            "patches 2-D",
            {"patches": reshaped(4, 12)},
            ValueError,
            r"argument 'patches' must have shape \[N, L, p\*p\*C\]",
        ),
        Row(
            "unpatchify",
            "patches do not fit",
            {"patches": reshaped(2, 4, 11)},
            ValueError,
            r"argument 'patches' must have shape \[N, 4, 12\]",
        ),
        Row(
            "unpatchify",
            "image_size 0",
            {"image_size": 0},
            ValueError,
            r"argument 'image_size' must be a positive int",
        ),
        Row(
            "unpatchify",
            "image_size not a multiple",
            {"image_size": (4, 5)},
            ValueError,
            r"argument 'image_size' must be multiples of 'patch_size'",
        ),
        Row(
            "unpatchify",
            "channels 0",
            {"channels": 0},
            ValueError,
            r"argument 'channels' must be a positive int",
        ),
        Row(
            "unpatchify",
            "patch_size negative",
            {"patch_size": -2},
            ValueError,
            r"argument 'patch_size' must be > 0",
        ),
        Row(
            "gather_patches",
            "ids_keep int32",
            {"ids_keep": as_dtype(torch.int32)},
            TypeError,
            r"argument 'ids_keep' must be an int64 tensor",
        ),
        Row(
            "gather_patches",
            "ids_keep float",
            {"ids_keep": as_dtype(torch.float32)},
            TypeError,
            r"argument 'ids_keep' must be an int64 tensor",
        ),
        Row(
            "gather_patches",
            "ids_keep not a tensor",
            {"ids_keep": AS_LIST},
            TypeError,
            r"argument 'ids_keep' must be a torch.Tensor",
        ),
        Row(
            "gather_patches",
            "ids_keep on another device",
            {"ids_keep": ON_OTHER},
            ValueError,
            r"argument 'ids_keep' must be on the same device",
        ),
        Row(
            "gather_patches",
            "ids_keep 1-D",
            {"ids_keep": Mut(lambda x, d: x[0])},
            ValueError,
            r"argument 'ids_keep' must have shape \[2, K\]",
        ),
        Row(
            "gather_patches",
            "ids_keep wrong batch",
            {"ids_keep": Mut(lambda x, d: x[:1])},
            ValueError,
            r"argument 'ids_keep' must have shape \[2, K\]",
        ),
        Row(
            "gather_patches",
            "imgs 3-D",
            {"imgs": reshaped(3, 4, 4)},
            ValueError,
            r"argument 'imgs' must have shape \[N, C, H, W\]",
        ),
        Row(
            "gather_patches",
            "patch_size does not divide",
            {"patch_size": 3},
            ValueError,
            r"multiples of 'patch_size' \(3\)",
        ),
        # bad id values: an error for CPU tensors; CUDA ones poison instead (docs/mae.md)
        Row(
            "gather_patches",
            "ids_keep >= L",
            {"ids_keep": fill(4, 1)},
            IndexError,
            r"argument 'ids_keep' has id 4( at \[\d, \d\])?, outside \[0, 4\)",
            cpu_tensors_only=True,
        ),
        Row(
            "gather_patches",
            "ids_keep negative",
            {"ids_keep": fill(-1, 1)},
            IndexError,
            r"argument 'ids_keep' has id -1( at \[\d, \d\])?, outside \[0, 4\)",
            cpu_tensors_only=True,
        ),
        Row(
            "gather_patches",
            "ids_keep repeated",
            {"ids_keep": fill(0, 1)},
            ValueError,
            r"argument 'ids_keep' (repeats id|has a duplicate id)",
            cpu_tensors_only=True,
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "x_visible 2-D",
            {"x_visible": reshaped(2, 3)},
            ValueError,
            r"argument 'x_visible' must have shape \[N, K, D\]",
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
            "ids_restore shorter than K",
            {"ids_restore": Mut(lambda x, d: x[:, :1])},
            ValueError,
            r"argument 'ids_restore' \[N, L\] must have L >= K = 2",
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "ids_restore int32",
            {"ids_restore": as_dtype(torch.int32)},
            TypeError,
            r"argument 'ids_restore' must be an int64 tensor",
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "ids_restore on another device",
            {"ids_restore": ON_OTHER},
            ValueError,
            r"argument 'ids_restore' must be on the same device",
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "ids_restore >= L",
            {"ids_restore": fill(4, 1)},
            IndexError,
            r"argument 'ids_restore' has id 4( at \[\d, \d\])?, outside \[0, 4\)",
            cpu_tensors_only=True,
        ),
        Row(
            "unshuffle_with_mask_tokens",
            "ids_restore repeated",
            {"ids_restore": fill(0, 1)},
            ValueError,
            r"argument 'ids_restore' (repeats id|has a duplicate id)",
            cpu_tensors_only=True,
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
            r"argument 'pred' must have shape \[N, L, p\*p\*C\]",
        ),
        Row(
            "masked_patch_loss",
            "mask shape",
            {"mask": reshaped(2, 5)},
            ValueError,
            r"argument 'mask' must have shape \[2, 4\]",
        ),
        Row(
            "masked_patch_loss",
            "patch_size does not divide",
            {"patch_size": 3},
            ValueError,
            r"multiples of 'patch_size' \(3\)",
        ),
        Row(
            "masked_patch_loss",
            "norm_pix_loss not a bool",
            {"norm_pix_loss": 1},
            TypeError,
            r"argument 'norm_pix_loss' must be a bool",
        ),
    ]
    return rows


def _diffusion_rows() -> list[Row]:
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


def _distillation_rows() -> list[Row]:
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
    return rows


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


def _flow_matching_rows() -> list[Row]:
    return [r for op in FLOW_ARGS for r in _flow_tensor_rows(op)] + _flow_option_rows()


ROWS = (
    _generic_rows()
    + _cosine_rows()
    + _contrastive_rows()
    + _mae_rows()
    + _diffusion_rows()
    + _distillation_rows()
    + _flow_matching_rows()
)


@pytest.mark.parametrize("row, backend", row_params(ROWS, ALL_BACKENDS))
def test_public(row, backend):
    with pytest.raises(row.exc, match=row.match):
        call_public(row, backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_the_good_arguments_run(backend):
    """Every row changes one thing of arguments that work: without the change, no error."""
    d = dev_for(backend)
    for fn, good, takes_backend, _ in PUBLIC.values():
        if takes_backend:
            fn(**good(d), backend=backend)
        elif backend == "reference":
            fn(**good(d))


def _comparable_rows():
    return [r for r in ROWS if PUBLIC[r.op][2]]


@pytest.mark.parametrize("row", _comparable_rows(), ids=lambda r: r.id)
def test_reference_raises_what_the_fused_backends_raise(row):
    """A user switching backend sees the same exception type for the same bad input."""
    seen = {}
    for name in ["reference"] + [p.values[0] for p in FUSED_BACKENDS if not p.marks]:
        if not applies(row, name):
            continue
        try:
            call_public(row, name)
            seen[name] = None
        except Exception as exc:  # noqa: BLE001  (the type is what is compared)
            seen[name] = type(exc)
    if len(seen) < 2:
        pytest.skip(f"only {list(seen)} can run here")
    assert set(seen.values()) == {row.exc}, seen


@pytest.mark.parametrize("op", [op for op, spec in PUBLIC.items() if spec[2]])
def test_bad_backend_name(op):
    fn, good, _, _ = PUBLIC[op]
    with pytest.raises(ValueError, match=r"argument 'backend' must be one of"):
        fn(**good(dev_for("reference")), backend="gpu")


# ------------------------------------------------------------- bad calls per family
# Public calls the rows above do not reach (enum values, bounds, shapes particular to one op):
# family -> [(call(), exception, message)].


def _cosine_bad_calls() -> list:
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


def _contrastive_bad_calls() -> list:
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


def _distillation_bad_calls() -> list:
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


def _mae_bad_calls() -> list:
    i, k = torch.ones(2, 3, 4, 6), torch.zeros(2, 2, dtype=torch.int64)
    return [
        (lambda: pk.random_masking(torch.ones(2, 4), 0.5), ValueError, "'x'"),
        (lambda: pk.random_masking(torch.ones(2, 4, 3, dtype=torch.int32), 0.5), TypeError, "'x'"),
        (lambda: pk.random_masking(torch.ones(2, 4, 3), 1.0), ValueError, "'mask_ratio'"),
        (lambda: pk.random_masking(torch.ones(2, 4, 3), -0.1), ValueError, "'mask_ratio'"),
        (lambda: pk.random_masking(torch.ones(2, 4, 3), float("nan")), ValueError, "'mask_ratio'"),
        (lambda: pk.random_masking(torch.ones(2, 4, 3), "0.5"), TypeError, "'mask_ratio'"),
        (
            lambda: pk.random_masking(torch.ones(2, 4, 3), 0.5, noise=torch.rand(2, 5)),
            ValueError,
            "'noise'",
        ),
        (
            lambda: pk.random_masking(
                torch.ones(2, 4, 3), 0.5, noise=torch.rand(2, 4), generator=torch.Generator()
            ),
            ValueError,
            "not both",
        ),
        (lambda: pk.patchify(torch.ones(2, 3, 5, 4), 2), ValueError, "multiples"),
        (lambda: pk.patchify(torch.ones(3, 4, 4), 2), ValueError, "'imgs'"),
        (lambda: pk.patchify(torch.ones(1, 3, 4, 4), 0), ValueError, "'patch_size'"),
        (lambda: pk.patchify(torch.ones(1, 3, 4, 4), 2.0), TypeError, "'patch_size'"),
        (lambda: pk.unpatchify(torch.ones(1, 4, 12), 2, (4, 6), 3), ValueError, "'patches'"),
        (lambda: pk.unpatchify(torch.ones(1, 4, 12), 2, (5, 4), 3), ValueError, "'image_size'"),
        (lambda: pk.unpatchify(torch.ones(1, 4, 12), 2, 4, 0), ValueError, "'channels'"),
        (lambda: pk.gather_patches(i, k.int(), 2), TypeError, "'ids_keep'"),
        (lambda: pk.gather_patches(i, k[:1], 2), ValueError, "'ids_keep'"),
        (lambda: pk.gather_patches(i, k, 4), ValueError, "multiples"),
        (lambda: pk.gather_patches(i, k, 2, backend="nope"), ValueError, "'backend'"),
        (lambda: pk.gather_patches(i, k.to("meta"), 2), ValueError, "device"),
        (
            lambda: pk.unshuffle_with_mask_tokens(
                torch.ones(2, 2, 4), torch.ones(5), torch.zeros(2, 6, dtype=torch.int64)
            ),
            ValueError,
            "'mask_token'",
        ),
        (
            lambda: pk.unshuffle_with_mask_tokens(
                torch.ones(2, 7, 4), torch.ones(4), torch.zeros(2, 6, dtype=torch.int64)
            ),
            ValueError,
            "'ids_restore'",
        ),
        (
            lambda: pk.unshuffle_with_mask_tokens(
                torch.ones(2, 2, 4), torch.ones(4), torch.zeros(3, 6, dtype=torch.int64)
            ),
            ValueError,
            "'ids_restore'",
        ),
        (
            lambda: pk.masked_patch_loss(
                torch.ones(2, 6, 12), i, torch.ones(2, 6), 2, norm_pix_loss=1
            ),
            TypeError,
            "'norm_pix_loss'",
        ),
        (
            lambda: pk.masked_patch_loss(torch.ones(2, 6, 11), i, torch.ones(2, 6), 2),
            ValueError,
            "'pred'",
        ),
        (
            lambda: pk.masked_patch_loss(torch.ones(2, 6, 12), i, torch.ones(2, 5), 2),
            ValueError,
            "'mask'",
        ),
        (
            lambda: pk.masked_patch_loss(torch.ones(2, 6, 12), i.double(), torch.ones(2, 6), 2),
            TypeError,
            "'imgs'",
        ),
    ]


def _flow_matching_bad_calls() -> list:
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


BAD_CALLS = {
    "cosine": _cosine_bad_calls(),
    "contrastive": _contrastive_bad_calls(),
    "distillation": _distillation_bad_calls(),
    "mae": _mae_bad_calls(),
    "flow_matching": _flow_matching_bad_calls(),
}


@pytest.mark.parametrize(
    "family, case",
    [
        pytest.param(fam, k, id=f"{fam}-{k}")
        for fam, calls in BAD_CALLS.items()
        for k in range(len(calls))
    ],
)
def test_bad_input_public(family, case):
    call, exc, text = BAD_CALLS[family][case]
    with pytest.raises(exc, match=text):
        call()
