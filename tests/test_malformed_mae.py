"""Malformed input to the MAE family (random_masking, patchify, unpatchify, gather_patches,
unshuffle_with_mask_tokens, masked_patch_loss): the public functions, the direct op calls and
the backward ops. The rows every op gets are in test_malformed.py and test_malformed_direct.py.
"""

from __future__ import annotations

import torch

import pykernels as pk

from .malformed import (
    AS_LIST,
    NAN,
    ON_OTHER,
    Mut,
    Row,
    as_dtype,
    bad_call_tests,
    fill,
    public_tests,
    reshaped,
)
from .malformed_backward import (
    backward_tests,
    grad_rows,
    grad_shape,
)
from .malformed_direct import direct_tests

# ------------------------------------------------------------- public functions (malformed.py)


def _public_rows() -> list[Row]:
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


def _bad_public_calls() -> list:
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


test_public, test_reference_raises_what_the_fused_backends_raise = public_tests(_public_rows())


test_bad_input_public = bad_call_tests("mae", _bad_public_calls())


# ------------------------------------------------------------- direct op calls (malformed_direct.py)


def _direct_rows() -> list[Row]:
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


test_direct_op = direct_tests(_direct_rows())


# ------------------------------------------------------------- backward ops (malformed_backward.py)


def _backward_rows() -> list[Row]:
    rows = []
    op = "random_masking_backward"
    rows += grad_rows(op, (2, 2, 3), short=False, rank_msg=r"must have (3 dimension|shape)") + [
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
    rows += grad_rows(op, (2, 4, 3), short=False, rank_msg=r"must have (3 dimension|shape)") + [
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
    rows += grad_rows(op, (2, 2, 12), rank_msg=r"must have (3 dimension|shape)") + [
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


BACKWARD_ROWS = _backward_rows()
test_bad_backward_call = backward_tests(BACKWARD_ROWS)
