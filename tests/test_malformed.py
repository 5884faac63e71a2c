"""Malformed input, op by op (issue 8): every kind of bad argument a public op can get,
with the exact exception type and a message that names the argument.

The table is a list of rows (op, what is wrong, how to build the call, exception type,
message pattern). Each row runs on every backend through the public function
(backend=...), and the rows of the direct table through torch.ops.pykernels.<op> (cpu,
cuda) and <op>_triton (triton) — the ops check their own inputs too.

Exception types (csrc/common/checks.h, pykernels/_checks.py):
  TypeError   a non-tensor, or a tensor of the wrong dtype, a wrong Python type for a scalar;
  ValueError  a wrong value: shape, rank, device, enum string, scalar out of its range;
  IndexError  an index out of range: dim, labels, ids, timesteps (CPU tensors only: on CUDA
              tensors checking would synchronise; see docs/<family>.md);
  RuntimeError a backend asked to run on tensors of a device it does not run on.
Direct op calls with a non-tensor where the schema has a Tensor fail in PyTorch's own
argument parser: RuntimeError naming the argument, the same for the C++ and Triton ops.

Decisions tested here: NaN/Inf in data tensors (features, logits, samples, the
alphas_cumprod table, logit_scale) are not checked (that would read device memory) and
propagate; NaN/Inf Python scalars are rejected where the op has no meaning for them.
An empty batch gives the empty (or, for a mean, NaN) result PyTorch's equivalent gives.
"""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

import pykernels as pk
import pykernels.distributed as pkd
from pykernels import backends

from .helpers import ALL_BACKENDS, FUSED_BACKENDS, backend_device

NAN, INF = float("nan"), float("inf")


# --------------------------------------------------------------------------- building blocks
class Dev(NamedTuple):
    """Where a row's tensors live, and a second device for the mixed-device rows (CPU
    beside CUDA, meta beside CPU)."""
    dev: torch.device
    other: torch.device


def dev_for(backend: str) -> Dev:
    dev = backend_device(backend)
    return Dev(dev, torch.device("cpu" if dev.type == "cuda" else "meta"))


def f(d: Dev, *shape, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))).to(d.dev, dtype)


def ints(d: Dev, values, dtype=torch.int64):
    return torch.tensor(values, dtype=dtype, device=d.dev)


def probs(d: Dev, *shape):
    return torch.softmax(f(d, *shape), -1)


class Mut:
    """A change of one argument computed from its good value: Mut(lambda x, d: ...)."""
    def __init__(self, fn):
        self.fn = fn


def as_dtype(dtype):
    return Mut(lambda x, d: x.to(dtype))


ON_OTHER = Mut(lambda x, d: x.to(d.other))
ON_META = Mut(lambda x, d: x.to("meta"))  # no backend runs on meta (the reference runs on CPU and CUDA)
AS_LIST = Mut(lambda x, d: x.tolist())


def fill(value, index=0):
    """The tensor with one element set (an out-of-range id, label or timestep)."""
    def put(x, d):
        x = x.clone()
        x.view(-1)[index] = value
        return x
    return Mut(put)


def reshaped(*shape):
    return Mut(lambda x, d: torch.zeros(shape, dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------- the ops and their good arguments
def _sched(d, T=10):
    return pk.make_schedule(T).to(d.dev)


# op -> (public function, good keyword arguments, takes backend=, float tensor args)
PUBLIC = {
    "cosine_similarity": (pk.cosine_similarity, lambda d: dict(x1=f(d, 3, 5), x2=f(d, 3, 5)), True, ["x1", "x2"]),
    "pairwise_cosine_similarity": (pk.pairwise_cosine_similarity,
                                   lambda d: dict(a=f(d, 2, 3, 4), b=f(d, 2, 5, 4)), True, ["a", "b"]),
    "feature_distillation_loss": (pk.feature_distillation_loss,
                                  lambda d: dict(student=f(d, 3, 5), teacher=f(d, 3, 5)), True,
                                  ["student", "teacher"]),
    "info_nce_loss": (pk.info_nce_loss,
                      lambda d: dict(image_features=f(d, 4, 6), text_features=f(d, 4, 6),
                                     logit_scale=torch.tensor(5.0, device=d.dev), labels=ints(d, [1, 0, 3, 2])),
                      True, ["image_features", "text_features", "logit_scale"]),
    "random_masking": (pk.random_masking, lambda d: dict(x=f(d, 2, 6, 3), mask_ratio=0.5, noise=f(d, 2, 6)),
                       True, ["x", "noise"]),
    "patchify": (pk.patchify, lambda d: dict(imgs=f(d, 2, 3, 4, 4), patch_size=2), False, ["imgs"]),
    "unpatchify": (pk.unpatchify, lambda d: dict(patches=f(d, 2, 4, 12), patch_size=2, image_size=4, channels=3),
                   False, ["patches"]),
    "gather_patches": (pk.gather_patches,
                       lambda d: dict(imgs=f(d, 2, 3, 4, 4), ids_keep=ints(d, [[0, 1], [3, 2]]), patch_size=2),
                       True, ["imgs"]),
    "unshuffle_with_mask_tokens": (pk.unshuffle_with_mask_tokens,
                                   lambda d: dict(x_visible=f(d, 2, 2, 3), mask_token=f(d, 3),
                                                  ids_restore=ints(d, [[0, 1, 2, 3], [3, 2, 1, 0]])),
                                   True, ["x_visible", "mask_token"]),
    "masked_patch_loss": (pk.masked_patch_loss,
                          lambda d: dict(pred=f(d, 2, 4, 12), imgs=f(d, 2, 3, 4, 4),
                                         mask=ints(d, [[0, 1, 1, 0], [1, 1, 0, 0]]).float(), patch_size=2),
                          True, ["pred", "imgs", "mask"]),
    "make_schedule": (pk.make_schedule, lambda d: dict(num_train_timesteps=10), False, []),
    "add_noise": (pk.add_noise, lambda d: dict(x0=f(d, 3, 4), noise=f(d, 3, 4), timesteps=ints(d, [0, 5, 9]),
                                               alphas_cumprod=_sched(d)), True, ["x0", "noise"]),
    "get_velocity": (pk.get_velocity, lambda d: dict(x0=f(d, 3, 4), noise=f(d, 3, 4), timesteps=ints(d, [0, 5, 9]),
                                                     alphas_cumprod=_sched(d)), True, ["x0", "noise"]),
    "diffusion_loss": (pk.diffusion_loss,
                       lambda d: dict(model_output=f(d, 3, 4), x0=f(d, 3, 4), noise=f(d, 3, 4),
                                      timesteps=ints(d, [0, 5, 9]), alphas_cumprod=_sched(d)),
                       True, ["model_output", "x0", "noise"]),
    "ddpm_step": (pk.ddpm_step, lambda d: dict(model_output=f(d, 3, 4), timesteps=ints(d, [0, 5, 9]),
                                               sample=f(d, 3, 4), alphas_cumprod=_sched(d), noise=f(d, 3, 4)),
                  True, ["sample", "model_output", "noise"]),
    "ddim_step": (pk.ddim_step, lambda d: dict(model_output=f(d, 3, 4), timesteps=ints(d, [1, 5, 9]),
                                               prev_timesteps=ints(d, [0, 4, -1]), sample=f(d, 3, 4),
                                               alphas_cumprod=_sched(d), eta=0.5, noise=f(d, 3, 4)),
                  True, ["sample", "model_output", "noise"]),
    "distillation_loss": (pk.distillation_loss,
                          lambda d: dict(student_logits=f(d, 3, 5), teacher_logits=f(d, 3, 5),
                                         labels=ints(d, [0, 4, -100]), hard_weight=0.5),
                          True, ["student_logits", "teacher_logits"]),
    "cross_entropy": (pk.cross_entropy, lambda d: dict(logits=f(d, 3, 5), labels=ints(d, [0, 4, -100])),
                      True, ["logits"]),
    "soft_target_cross_entropy": (pk.soft_target_cross_entropy,
                                  lambda d: dict(logits=f(d, 3, 5), target_probs=probs(d, 3, 5)),
                                  True, ["logits", "target_probs"]),
    "distributed.info_nce_loss": (pkd.info_nce_loss,
                                  lambda d: dict(image_features=f(d, 4, 6), text_features=f(d, 4, 6),
                                                 logit_scale=torch.tensor(5.0, device=d.dev)),
                                  True, ["image_features", "text_features", "logit_scale"]),
}


class Row(NamedTuple):
    op: str
    what: str
    changes: dict          # argument -> new value, Mut, or a callable of Dev
    exc: type
    match: str
    cpu_tensors_only: bool = False   # a value check that only CPU tensors get (docs/<family>.md)
    backends: tuple = ()             # only these backends (empty: every backend)

    @property
    def id(self):
        return f"{self.op}-{self.what}".replace(" ", "_")


def build(changes: dict, good: dict, d: Dev) -> dict:
    kw = dict(good)
    if changes.get("*") is ON_META:  # every tensor argument
        kw = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    for name, new in changes.items():
        if name == "*":
            continue
        if isinstance(new, Mut):
            new = new.fn(kw[name], d)
        elif callable(new) and not isinstance(new, (torch.Tensor, type)):
            new = new(d)
        kw[name] = new
    return kw


# Float arguments of any float dtype (documented): the scale, the cast mask token, the noise.
ANY_FLOAT_DTYPE = {("info_nce_loss", "logit_scale"), ("distributed.info_nce_loss", "logit_scale"),
                   ("unshuffle_with_mask_tokens", "mask_token"), ("random_masking", "noise"),
                   ("masked_patch_loss", "mask")}


def generic_rows(op: str) -> list[Row]:
    """The bad inputs every float tensor argument gets: integer, bool, complex, not a
    tensor, on another device (after the first argument, which sets the device)."""
    rows = []
    for k, name in enumerate(PUBLIC[op][3]):
        dtype_msg = rf"argument '{name}' must (be float32|have the same dtype)"
        rows += [
            Row(op, f"{name} int64", {name: as_dtype(torch.int64)}, TypeError, dtype_msg),
            Row(op, f"{name} bool", {name: as_dtype(torch.bool)}, TypeError, dtype_msg),
            Row(op, f"{name} not a tensor", {name: AS_LIST}, TypeError, rf"argument '{name}' must be a torch.Tensor"),
        ]
        if k == 0:
            rows.append(Row(op, f"{name} complex64", {name: as_dtype(torch.complex64)}, TypeError, dtype_msg))
        else:
            rows.append(Row(op, f"{name} on another device", {name: ON_OTHER}, ValueError,
                            rf"argument '{name}' must be on the same device"))
            if (op, name) not in ANY_FLOAT_DTYPE:
                rows.append(Row(op, f"{name} float64 vs float32", {name: as_dtype(torch.float64)}, TypeError,
                                rf"argument '{name}' must have the same dtype"))
    return rows


def on_other_device(op: str) -> Row:
    """Every tensor on a device the backend does not run on: meta."""
    return Row(op, "all tensors on a device the backend does not run on",
               {"*": ON_META}, RuntimeError, r"backend '\w+' cannot run on \w+ tensors")


_pairs = {"cosine_similarity": ("x1", "x2"), "feature_distillation_loss": ("student", "teacher")}
_TIMESTEP_OPS = ("add_noise", "get_velocity", "diffusion_loss", "ddpm_step", "ddim_step")


def _diffusion_rows(op: str) -> list[Row]:
    first = PUBLIC[op][3][0]
    rows = [
        Row(op, "table int64", {"alphas_cumprod": as_dtype(torch.int64)}, TypeError, r"'alphas_cumprod' must be float32"),
        Row(op, "table float16", {"alphas_cumprod": as_dtype(torch.float16)}, TypeError,
            r"'alphas_cumprod' must be float32"),
        Row(op, "table 2-D", {"alphas_cumprod": Mut(lambda x, d: x[None])}, ValueError,
            r"'alphas_cumprod' must be a non-empty 1-D table"),
        Row(op, "table empty", {"alphas_cumprod": Mut(lambda x, d: x[:0])}, ValueError,
            r"'alphas_cumprod' must be a non-empty 1-D table"),
        Row(op, "table not a tensor", {"alphas_cumprod": AS_LIST}, TypeError, r"'alphas_cumprod' must be a torch.Tensor"),
        Row(op, "table on another device", {"alphas_cumprod": ON_OTHER}, ValueError,
            r"argument 'alphas_cumprod' must be on the same device"),
        Row(op, "timesteps float", {"timesteps": as_dtype(torch.float32)}, TypeError,
            r"argument 'timesteps' must be an int64 or int32 tensor"),
        Row(op, "timesteps bool", {"timesteps": as_dtype(torch.bool)}, TypeError,
            r"argument 'timesteps' must be an int64 or int32 tensor"),
        Row(op, "timesteps a Python float", {"timesteps": 3.0}, TypeError, r"argument 'timesteps' must be an int"),
        Row(op, "timesteps on another device", {"timesteps": ON_OTHER}, ValueError,
            r"argument 'timesteps' must be on the same device"),
        Row(op, "timesteps one short", {"timesteps": Mut(lambda x, d: x[:2])}, ValueError,
            r"argument 'timesteps' must have shape \[N\] = \[3\]"),
        Row(op, "timesteps 2-D", {"timesteps": Mut(lambda x, d: x[None])}, ValueError,
            r"argument 'timesteps' must have shape \[N\]"),
        Row(op, "timesteps >= T", {"timesteps": fill(10, 1)}, IndexError, r"argument 'timesteps' has 10, outside",
            cpu_tensors_only=True),
        Row(op, "timesteps negative", {"timesteps": fill(-1, 1)}, IndexError, r"argument 'timesteps' has -1, outside",
            cpu_tensors_only=True),
        Row(op, "timesteps int >= T", {"timesteps": 10}, IndexError, r"argument 'timesteps' is 10, outside"),
        Row(op, "timesteps int negative", {"timesteps": -1}, IndexError, r"argument 'timesteps' is -1, outside"),
        Row(op, "sample 0-dim", {first: Mut(lambda x, d: x[0, 0])}, ValueError,
            rf"argument '{first}' must have at least 1 dimension"),
    ]
    rows.append(Row(op, "noise other shape", {"noise": Mut(lambda x, d: x[:, :2])}, ValueError,
                    r"argument 'noise' must have the same shape"))
    return rows


def _rows() -> list[Row]:
    rows = []
    for op in PUBLIC:
        rows += generic_rows(op)
        if PUBLIC[op][2] and PUBLIC[op][3]:
            rows.append(on_other_device(op))
    # ---------------------------------------------------------------- cosine
    for op, (n1, n2) in _pairs.items():
        rows += [
            Row(op, f"{n1} 0-dim", {n1: Mut(lambda x, d: x[0, 0]), n2: Mut(lambda x, d: x[0, 0])}, ValueError,
                rf"argument '{n1}' must have at least 1 dimension"),
            Row(op, "eps 0", {"eps": 0.0}, ValueError, r"argument 'eps' must be > 0"),
            Row(op, "eps negative", {"eps": -1e-8}, ValueError, r"argument 'eps' must be > 0"),
            Row(op, "eps nan", {"eps": NAN}, ValueError, r"argument 'eps' must be > 0"),
            Row(op, "eps a string", {"eps": "1e-8"}, TypeError, r"argument 'eps' must be a number"),
        ]
    rows += [
        Row("cosine_similarity", "shapes do not broadcast", {"x2": reshaped(4, 5)}, ValueError,
            r"arguments must broadcast together, got 'x1' \(3, 5\), 'x2' \(4, 5\)"),
        Row("cosine_similarity", "dim out of range", {"dim": 2}, IndexError, r"argument 'dim' must be in \[-2, 1\]"),
        Row("cosine_similarity", "dim a float", {"dim": 1.0}, TypeError, r"argument 'dim' must be an int"),
        Row("feature_distillation_loss", "shape mismatch", {"teacher": reshaped(3, 4)}, ValueError,
            r"argument 'teacher' must have the same shape"),
        Row("feature_distillation_loss", "bad kind", {"kind": "l1"}, ValueError, r"argument 'kind' must be one of"),
        Row("feature_distillation_loss", "bad reduction", {"reduction": "batchmean"}, ValueError,
            r"argument 'reduction' must be one of"),
        Row("pairwise_cosine_similarity", "a 1-D", {"a": reshaped(4), "b": reshaped(4)}, ValueError,
            r"argument 'a' must have shape \[\.\.\., rows, D\]"),
        Row("pairwise_cosine_similarity", "D mismatch", {"b": reshaped(2, 5, 3)}, ValueError,
            r"arguments 'a' and 'b' must have the same feature size D"),
        Row("pairwise_cosine_similarity", "batch does not broadcast", {"b": reshaped(3, 5, 4)}, ValueError,
            r"arguments must broadcast together, got 'a' \(2,\), 'b' \(3,\)"),
        Row("pairwise_cosine_similarity", "eps 0", {"eps": 0.0}, ValueError, r"argument 'eps' must be > 0"),
        Row("pairwise_cosine_similarity", "eps nan", {"eps": NAN}, ValueError,
            r"argument 'eps' must be > 0"),
    ]
    # ---------------------------------------------------------------- contrastive
    for op in ("info_nce_loss", "distributed.info_nce_loss"):
        rows += [
            Row(op, "image_features 1-D", {"image_features": reshaped(6)}, ValueError,
                r"argument 'image_features' must (have shape|be) \[(rows|n), D\]"),
            Row(op, "text_features 3-D", {"text_features": reshaped(1, 4, 6)}, ValueError,
                r"argument 'text_features' must (have shape|be) \[(rows|n), D\]"),
            Row(op, "logit_scale shape [2]", {"logit_scale": reshaped(2)}, ValueError,
                r"argument 'logit_scale' must be a scalar tensor"),
            Row(op, "logit_scale a Python float", {"logit_scale": 5.0}, TypeError,
                r"argument 'logit_scale' must be a torch.Tensor"),
            Row(op, "logit_bias shape [1, 2]", {"logit_bias": lambda d: f(d, 1, 2)}, ValueError,
                r"argument 'logit_bias' must be a scalar tensor"),
            Row(op, "logit_bias int", {"logit_bias": lambda d: ints(d, 1)}, TypeError,
                r"argument 'logit_bias' must be float32"),
            Row(op, "bad reduction", {"reduction": "batchmean"}, ValueError, r"argument 'reduction' must be one of"),
        ]
    rows += [
        Row("info_nce_loss", "D mismatch", {"text_features": reshaped(4, 5)}, ValueError,
            r"arguments 'image_features' \[N, D\] and 'text_features' \[M, D\] must have the same feature size"),
        Row("info_nce_loss", "N != M without labels", {"text_features": reshaped(5, 6), "labels": None}, ValueError,
            r"without 'labels', image_features and text_features must have the same number of rows"),
        Row("info_nce_loss", "labels float", {"labels": as_dtype(torch.float32)}, TypeError,
            r"argument 'labels' must be an integer tensor"),
        Row("info_nce_loss", "labels bool", {"labels": as_dtype(torch.bool)}, TypeError,
            r"argument 'labels' must be an integer tensor"),
        Row("info_nce_loss", "labels not a tensor", {"labels": AS_LIST}, TypeError,
            r"argument 'labels' must be a torch.Tensor"),
        Row("info_nce_loss", "labels on another device", {"labels": ON_OTHER}, ValueError,
            r"argument 'labels' must be on the same device"),
        Row("info_nce_loss", "labels shape [N, 1]", {"labels": Mut(lambda x, d: x[:, None])}, ValueError,
            r"argument 'labels' must have shape \[N\] = \[4\]"),
        Row("info_nce_loss", "labels >= M", {"labels": fill(4, 2)}, IndexError,
            r"argument 'labels' must hold row indices of text_features in \[0, 4\), got 4", cpu_tensors_only=True),
        Row("info_nce_loss", "labels negative", {"labels": fill(-1, 2)}, IndexError,
            r"argument 'labels' must hold row indices of text_features in \[0, 4\), got -1", cpu_tensors_only=True),
        Row("info_nce_loss", "symmetric not a bool", {"symmetric": 1}, TypeError, r"argument 'symmetric' must be a bool"),
        Row("info_nce_loss", "normalize not a bool", {"normalize": "yes"}, TypeError,
            r"argument 'normalize' must be a bool"),
        Row("info_nce_loss", "logit_bias on another device", {"logit_bias": lambda d: torch.zeros((), device=d.other)},
            ValueError, r"argument 'logit_bias' must be on the same device"),
        Row("distributed.info_nce_loss", "image and text shapes differ", {"text_features": reshaped(5, 6)},
            ValueError, r"arguments 'image_features' and 'text_features' must have the same shape"),
        Row("distributed.info_nce_loss", "bad mode", {"mode": "all_reduce"}, ValueError,
            r"argument 'mode' must be one of"),
        Row("distributed.info_nce_loss", "reduction none", {"reduction": "none"}, ValueError,
            r"argument 'reduction' must be one of"),
        Row("distributed.info_nce_loss", "chunk_size 0", {"chunk_size": 0}, ValueError,
            r"argument 'chunk_size' must be > 0"),
        Row("distributed.info_nce_loss", "chunk_size a float", {"chunk_size": 2.5}, TypeError,
            r"argument 'chunk_size' must be an int"),
        Row("distributed.info_nce_loss", "process_group without torch.distributed", {"process_group": object()},
            RuntimeError, r"a process_group was given but torch.distributed is not initialised"),
    ]
    # ---------------------------------------------------------------- mae
    rows += [
        Row("random_masking", "x 2-D", {"x": reshaped(2, 6), "noise": None}, ValueError,
            r"argument 'x' must have shape \[N, L, D\]"),
        Row("random_masking", "mask_ratio 1", {"mask_ratio": 1.0}, ValueError, r"argument 'mask_ratio' must be in \[0, 1\)"),
        Row("random_masking", "mask_ratio negative", {"mask_ratio": -0.1}, ValueError,
            r"argument 'mask_ratio' must be in \[0, 1\)"),
        Row("random_masking", "mask_ratio nan", {"mask_ratio": NAN}, ValueError,
            r"argument 'mask_ratio' must be in \[0, 1\)"),
        Row("random_masking", "mask_ratio a string", {"mask_ratio": "0.5"}, TypeError,
            r"argument 'mask_ratio' must be a number"),
        Row("random_masking", "mask_ratio a bool", {"mask_ratio": False}, TypeError,
            r"argument 'mask_ratio' must be a number"),
        Row("random_masking", "noise shape", {"noise": reshaped(2, 5)}, ValueError,
            r"argument 'noise' must have shape \[2, 6\]"),
        Row("random_masking", "noise and generator", {"generator": lambda d: torch.Generator(d.dev)}, ValueError,
            r"pass 'noise' or 'generator', not both"),
        Row("patchify", "imgs 3-D", {"imgs": reshaped(3, 4, 4)}, ValueError, r"argument 'imgs' must have shape \[N, C, H, W\]"),
        Row("patchify", "patch_size does not divide", {"patch_size": 3}, ValueError,
            r"multiples of 'patch_size' \(3\)"),
        Row("patchify", "patch_size 0", {"patch_size": 0}, ValueError, r"argument 'patch_size' must be > 0"),
        Row("patchify", "patch_size a float", {"patch_size": 2.0}, TypeError, r"argument 'patch_size' must be an int"),
        Row("unpatchify", "patches 2-D", {"patches": reshaped(4, 12)}, ValueError,
            r"argument 'patches' must have shape \[N, L, p\*p\*C\]"),
        Row("unpatchify", "patches do not fit", {"patches": reshaped(2, 4, 11)}, ValueError,
            r"argument 'patches' must have shape \[N, 4, 12\]"),
        Row("unpatchify", "image_size 0", {"image_size": 0}, ValueError, r"argument 'image_size' must be a positive int"),
        Row("unpatchify", "image_size not a multiple", {"image_size": (4, 5)}, ValueError,
            r"argument 'image_size' must be multiples of 'patch_size'"),
        Row("unpatchify", "channels 0", {"channels": 0}, ValueError, r"argument 'channels' must be a positive int"),
        Row("unpatchify", "patch_size negative", {"patch_size": -2}, ValueError, r"argument 'patch_size' must be > 0"),
        Row("gather_patches", "ids_keep int32", {"ids_keep": as_dtype(torch.int32)}, TypeError,
            r"argument 'ids_keep' must be an int64 tensor"),
        Row("gather_patches", "ids_keep float", {"ids_keep": as_dtype(torch.float32)}, TypeError,
            r"argument 'ids_keep' must be an int64 tensor"),
        Row("gather_patches", "ids_keep not a tensor", {"ids_keep": AS_LIST}, TypeError,
            r"argument 'ids_keep' must be a torch.Tensor"),
        Row("gather_patches", "ids_keep on another device", {"ids_keep": ON_OTHER}, ValueError,
            r"argument 'ids_keep' must be on the same device"),
        Row("gather_patches", "ids_keep 1-D", {"ids_keep": Mut(lambda x, d: x[0])}, ValueError,
            r"argument 'ids_keep' must have shape \[2, K\]"),
        Row("gather_patches", "ids_keep wrong batch", {"ids_keep": Mut(lambda x, d: x[:1])}, ValueError,
            r"argument 'ids_keep' must have shape \[2, K\]"),
        Row("gather_patches", "imgs 3-D", {"imgs": reshaped(3, 4, 4)}, ValueError,
            r"argument 'imgs' must have shape \[N, C, H, W\]"),
        Row("gather_patches", "patch_size does not divide", {"patch_size": 3}, ValueError,
            r"multiples of 'patch_size' \(3\)"),
        # bad id values: an error for CPU tensors; CUDA ones poison instead (docs/mae.md)
        Row("gather_patches", "ids_keep >= L", {"ids_keep": fill(4, 1)}, IndexError,
            r"argument 'ids_keep' has id 4( at \[\d, \d\])?, outside \[0, 4\)", cpu_tensors_only=True),
        Row("gather_patches", "ids_keep negative", {"ids_keep": fill(-1, 1)}, IndexError,
            r"argument 'ids_keep' has id -1( at \[\d, \d\])?, outside \[0, 4\)", cpu_tensors_only=True),
        Row("gather_patches", "ids_keep repeated", {"ids_keep": fill(0, 1)}, ValueError,
            r"argument 'ids_keep' (repeats id|has a duplicate id)", cpu_tensors_only=True),
        Row("unshuffle_with_mask_tokens", "x_visible 2-D", {"x_visible": reshaped(2, 3)}, ValueError,
            r"argument 'x_visible' must have shape \[N, K, D\]"),
        Row("unshuffle_with_mask_tokens", "mask_token size", {"mask_token": reshaped(4)}, ValueError,
            r"argument 'mask_token' must have 3 elements"),
        Row("unshuffle_with_mask_tokens", "ids_restore shorter than K", {"ids_restore": Mut(lambda x, d: x[:, :1])},
            ValueError, r"argument 'ids_restore' \[N, L\] must have L >= K = 2"),
        Row("unshuffle_with_mask_tokens", "ids_restore int32", {"ids_restore": as_dtype(torch.int32)}, TypeError,
            r"argument 'ids_restore' must be an int64 tensor"),
        Row("unshuffle_with_mask_tokens", "ids_restore on another device", {"ids_restore": ON_OTHER}, ValueError,
            r"argument 'ids_restore' must be on the same device"),
        Row("unshuffle_with_mask_tokens", "ids_restore >= L", {"ids_restore": fill(4, 1)}, IndexError,
            r"argument 'ids_restore' has id 4( at \[\d, \d\])?, outside \[0, 4\)", cpu_tensors_only=True),
        Row("unshuffle_with_mask_tokens", "ids_restore repeated", {"ids_restore": fill(0, 1)}, ValueError,
            r"argument 'ids_restore' (repeats id|has a duplicate id)", cpu_tensors_only=True),
        Row("masked_patch_loss", "pred shape", {"pred": reshaped(2, 4, 11)}, ValueError,
            r"argument 'pred' must have shape \[2, 4, 12\]"),
        Row("masked_patch_loss", "pred 2-D", {"pred": reshaped(2, 48)}, ValueError,
            r"argument 'pred' must have shape \[N, L, p\*p\*C\]"),
        Row("masked_patch_loss", "mask shape", {"mask": reshaped(2, 5)}, ValueError,
            r"argument 'mask' must have shape \[2, 4\]"),
        Row("masked_patch_loss", "patch_size does not divide", {"patch_size": 3}, ValueError,
            r"multiples of 'patch_size' \(3\)"),
        Row("masked_patch_loss", "norm_pix_loss not a bool", {"norm_pix_loss": 1}, TypeError,
            r"argument 'norm_pix_loss' must be a bool"),
    ]
    # ---------------------------------------------------------------- diffusion
    rows += [
        Row("make_schedule", "num_train_timesteps 0", {"num_train_timesteps": 0}, ValueError,
            r"argument 'num_train_timesteps' must be > 0"),
        Row("make_schedule", "num_train_timesteps a float", {"num_train_timesteps": 10.0}, TypeError,
            r"argument 'num_train_timesteps' must be an int"),
        Row("make_schedule", "bad beta_schedule", {"beta_schedule": "cosine"}, ValueError,
            r"argument 'beta_schedule' must be one of"),
        Row("make_schedule", "beta_start negative", {"beta_start": -1e-4}, ValueError, r"argument 'beta_start' must be > 0"),
        Row("make_schedule", "beta_start nan", {"beta_start": NAN}, ValueError, r"argument 'beta_start' must be > 0"),
        Row("make_schedule", "beta_end 1", {"beta_end": 1.0}, ValueError, r"argument 'beta_end' must be < 1"),
        Row("make_schedule", "beta_start 1.5", {"beta_start": 1.5}, ValueError, r"argument 'beta_start' must be < 1"),
        Row("make_schedule", "beta_start inf", {"beta_start": INF}, ValueError, r"argument 'beta_start' must be < 1"),
        Row("make_schedule", "beta_end nan", {"beta_end": NAN}, ValueError, r"argument 'beta_end' must be"),
    ]
    for op in _TIMESTEP_OPS:
        rows += _diffusion_rows(op)
    for op in ("diffusion_loss", "ddpm_step", "ddim_step"):
        rows.append(Row(op, "bad prediction_type", {"prediction_type": "x0"}, ValueError,
                        r"argument 'prediction_type' must be one of"))
    for op in ("ddpm_step", "ddim_step"):
        rows += [
            Row(op, "clip_sample_range 0", {"clip_sample_range": 0.0}, ValueError,
                r"argument 'clip_sample_range' must be > 0"),
            Row(op, "clip_sample_range nan", {"clip_sample_range": NAN}, ValueError,
                r"argument 'clip_sample_range' must be > 0"),
            Row(op, "dynamic_thresholding_ratio 1.5", {"thresholding": True, "dynamic_thresholding_ratio": 1.5},
                ValueError, r"argument 'dynamic_thresholding_ratio' must be in \[0, 1\]"),
            Row(op, "sample_max_value 0", {"thresholding": True, "sample_max_value": 0.0}, ValueError,
                r"argument 'sample_max_value' must be > 0"),
            Row(op, "noise shape", {"noise": reshaped(3, 5)}, ValueError, r"argument 'noise' must have the same shape"),
        ]
    rows += [
        Row("diffusion_loss", "bad reduction", {"reduction": "batchmean"}, ValueError, r"argument 'reduction' must be one of"),
        Row("ddpm_step", "prev_timesteps >= T", {"prev_timesteps": lambda d: ints(d, [0, 10, 3])}, IndexError,
            r"argument 'prev_timesteps' has 10, outside \[-inf, 9\]", cpu_tensors_only=True),
        Row("ddim_step", "prev_timesteps >= T", {"prev_timesteps": fill(10, 0)}, IndexError,
            r"argument 'prev_timesteps' has 10, outside \[-inf, 9\]", cpu_tensors_only=True),
        Row("ddim_step", "prev_timesteps float", {"prev_timesteps": as_dtype(torch.float32)}, TypeError,
            r"argument 'prev_timesteps' must be an int64 or int32 tensor"),
        Row("ddim_step", "eta negative", {"eta": -0.5}, ValueError, r"argument 'eta' must be >= 0"),
        Row("ddim_step", "eta nan", {"eta": NAN}, ValueError, r"argument 'eta' must be >= 0"),
        Row("ddim_step", "eta a string", {"eta": "0"}, TypeError, r"argument 'eta' must be a number"),
        Row("ddim_step", "final_alpha_cumprod 0", {"final_alpha_cumprod": 0.0}, ValueError,
            r"argument 'final_alpha_cumprod' must be in \(0, 1\]"),
        Row("ddim_step", "final_alpha_cumprod 2", {"final_alpha_cumprod": 2.0}, ValueError,
            r"argument 'final_alpha_cumprod' must be in \(0, 1\]"),
    ]
    # ---------------------------------------------------------------- distillation
    logits_of = {"distillation_loss": "student_logits", "cross_entropy": "logits", "soft_target_cross_entropy": "logits"}
    for op, lg in logits_of.items():
        rows += [
            Row(op, "no classes", {n: reshaped(3, 0) for n in PUBLIC[op][3]} | (
                {"labels": lambda d: ints(d, [-100, -100, -100])} if op != "soft_target_cross_entropy" else {}),
                ValueError, rf"argument '{lg}' must have at least one class"),
            Row(op, f"{lg} 0-dim", {n: Mut(lambda x, d: x[0, 0]) for n in PUBLIC[op][3]}, ValueError,
                rf"argument '{lg}' must have at least 1 dimension"),
        ]
    for op in ("distillation_loss", "soft_target_cross_entropy"):
        rows += [
            Row(op, "temperature 0", {"temperature": 0.0}, ValueError, r"argument 'temperature' must be > 0"),
            Row(op, "temperature negative", {"temperature": -2.0}, ValueError, r"argument 'temperature' must be > 0"),
            Row(op, "temperature nan", {"temperature": NAN}, ValueError, r"argument 'temperature' must be > 0"),
            Row(op, "temperature inf", {"temperature": INF}, ValueError, r"argument 'temperature' must be finite"),
            Row(op, "temperature a tensor", {"temperature": lambda d: torch.tensor(2.0)}, TypeError,
                r"argument 'temperature' must be a number"),
        ]
    for op in ("distillation_loss", "cross_entropy"):
        rows += [
            Row(op, "labels float", {"labels": as_dtype(torch.float32)}, TypeError, r"argument 'labels' must be int64"),
            Row(op, "labels int32", {"labels": as_dtype(torch.int32)}, TypeError, r"argument 'labels' must be int64"),
            Row(op, "labels on another device", {"labels": ON_OTHER}, ValueError,
                r"argument 'labels' must be on the same device"),
            Row(op, "labels shape", {"labels": Mut(lambda x, d: x[:2])}, ValueError,
                r"argument 'labels' must have shape \(3,\)"),
            Row(op, "labels >= V", {"labels": fill(5, 1)}, IndexError,
                r"argument 'labels' must be in \[0, 5\) or ignore_index", cpu_tensors_only=True),
            Row(op, "labels negative, not ignore_index", {"labels": fill(-1, 1)}, IndexError,
                r"argument 'labels' must be in \[0, 5\) or ignore_index", cpu_tensors_only=True),
            Row(op, "label_smoothing 1.5", {"label_smoothing": 1.5}, ValueError,
                r"argument 'label_smoothing' must be in \[0, 1\]"),
            Row(op, "label_smoothing nan", {"label_smoothing": NAN}, ValueError,
                r"argument 'label_smoothing' must be finite"),
            Row(op, "ignore_index a float", {"ignore_index": -100.0}, TypeError, r"argument 'ignore_index' must be an int"),
        ]
    rows += [
        Row("distillation_loss", "labels not a tensor", {"labels": AS_LIST}, TypeError,
            r"argument 'labels' must be a torch.Tensor"),
        Row("distillation_loss", "hard_weight without labels", {"labels": None}, ValueError,
            r"argument 'labels' is required when hard_weight != 0"),
        Row("distillation_loss", "beta 1.5", {"beta": 1.5}, ValueError, r"argument 'beta' must be in \[0, 1\]"),
        Row("distillation_loss", "beta negative", {"beta": -0.5}, ValueError, r"argument 'beta' must be in \[0, 1\]"),
        Row("distillation_loss", "soft_weight inf", {"soft_weight": INF}, ValueError,
            r"argument 'soft_weight' must be finite"),
        Row("distillation_loss", "hard_weight nan", {"hard_weight": NAN}, ValueError,
            r"argument 'hard_weight' must be finite"),
        Row("distillation_loss", "teacher shape", {"teacher_logits": reshaped(3, 4)}, ValueError,
            r"argument 'teacher_logits' must have the same shape"),
        Row("distillation_loss", "bad reduction", {"reduction": "mean"}, ValueError, r"argument 'reduction' must be one of"),
        Row("cross_entropy", "labels not a tensor", {"labels": AS_LIST}, TypeError,
            r"argument 'labels' must be a torch.Tensor"),
        Row("cross_entropy", "bad reduction", {"reduction": "batchmean"}, ValueError,
            r"argument 'reduction' must be one of"),
        Row("soft_target_cross_entropy", "target shape", {"target_probs": reshaped(3, 4)}, ValueError,
            r"argument 'target_probs' must have the same shape"),
        Row("soft_target_cross_entropy", "bad reduction", {"reduction": "mean"}, ValueError,
            r"argument 'reduction' must be one of"),
    ]
    return rows


ROWS = _rows()


def _applies(row: Row, backend: str) -> bool:
    if row.backends and backend not in row.backends:
        return False
    return not (row.cpu_tensors_only and backend_device(backend).type != "cpu")


def _params(rows, backend_params):
    """(row, backend) params: ops without a backend argument once, every other row on each
    backend it applies to (skipped, with the reason, where the backend is unavailable)."""
    out = []
    for row in rows:
        takes_backend = PUBLIC[row.op][2] if row.op in PUBLIC else True
        for p in backend_params:
            name = p.values[0]
            if not takes_backend and name != "reference":
                continue
            if _applies(row, name):
                out.append(pytest.param(row, name, id=f"{row.id}-{name if takes_backend else 'no_backend'}",
                                        marks=p.marks))
    return out


def call_public(row: Row, backend: str):
    fn, good, takes_backend, _ = PUBLIC[row.op]
    d = dev_for(backend)
    kw = build(row.changes, good(d), d)
    kw = {k: v for k, v in kw.items() if not (v is None and k in ("noise", "labels"))}
    if takes_backend:
        kw["backend"] = backend
    return fn(**kw)


@pytest.mark.parametrize("row, backend", _params(ROWS, ALL_BACKENDS))
def test_public(row, backend):
    with pytest.raises(row.exc, match=row.match):
        call_public(row, backend)


def test_the_good_arguments_run():
    """Every row changes one thing of arguments that work: without the change, no error."""
    for fn, good, takes_backend, _ in PUBLIC.values():
        for backend in ("cpu", "reference") if takes_backend else (None,):
            d = dev_for(backend or "cpu")
            fn(**good(d), **({"backend": backend} if backend else {}))


def _comparable_rows():
    return [r for r in ROWS if PUBLIC[r.op][2]]


@pytest.mark.parametrize("row", _comparable_rows(), ids=lambda r: r.id)
def test_reference_raises_what_the_fused_backends_raise(row):
    """A user switching backend sees the same exception type for the same bad input."""
    seen = {}
    for name in ["reference"] + [p.values[0] for p in FUSED_BACKENDS if not p.marks]:
        if not _applies(row, name):
            continue
        try:
            call_public(row, name)
            seen[name] = None
        except Exception as exc:  # noqa: BLE001  (the type is what is compared)
            seen[name] = type(exc)
    if len(seen) < 2:
        pytest.skip(f"only {list(seen)} can run here")
    assert set(seen.values()) == {row.exc}, seen


# --------------------------------------------------------------------------- direct op calls
# op -> [(argument, good value builder), ...] in schema order (csrc/pykernels.cpp)
DIRECT = {
    "cosine_similarity": lambda d: [("x1", f(d, 3, 5)), ("x2", f(d, 3, 5)), ("eps", 1e-8)],
    "feature_distillation_loss": lambda d: [("student", f(d, 3, 5)), ("teacher", f(d, 3, 5)), ("kind", "mse"),
                                            ("eps", 1e-8)],
    "pairwise_cosine_similarity": lambda d: [("a", f(d, 2, 3, 4)), ("b", f(d, 2, 5, 4)), ("eps", 1e-8)],
    "distillation_loss": lambda d: [("student_logits", f(d, 3, 5)), ("teacher_logits", f(d, 3, 5)),
                                    ("labels", ints(d, [0, 4, -100])), ("temperature", 2.0), ("soft_weight", 1.0),
                                    ("hard_weight", 0.5), ("beta", 0.0), ("ignore_index", -100),
                                    ("label_smoothing", 0.0), ("grad_student_logits", False),
                                    ("grad_teacher_logits", False), ("grad_scale", 1.0)],
    "cross_entropy": lambda d: [("logits", f(d, 3, 5)), ("labels", ints(d, [0, 4, -100])), ("ignore_index", -100),
                                ("label_smoothing", 0.0), ("grad_logits", False), ("grad_scale", 1.0)],
    "soft_target_cross_entropy": lambda d: [("logits", f(d, 3, 5)), ("target_probs", probs(d, 3, 5)),
                                            ("temperature", 1.0), ("grad_logits", False), ("grad_target_probs", False),
                                            ("grad_scale", 1.0)],
    "info_nce_loss": lambda d: [("image_features", f(d, 4, 6)), ("text_features", f(d, 4, 6)),
                                ("logit_scale", torch.tensor(5.0, device=d.dev)), ("labels", ints(d, [1, 0, 3, 2])),
                                ("symmetric", True), ("normalize", False)],
    "random_masking": lambda d: [("x", f(d, 2, 6, 3)), ("mask_ratio", 0.5), ("noise", f(d, 2, 6))],
    "unshuffle_with_mask_tokens": lambda d: [("x_visible", f(d, 2, 2, 3)), ("mask_token", f(d, 3)),
                                             ("ids_restore", ints(d, [[0, 1, 2, 3], [3, 2, 1, 0]]))],
    "gather_patches": lambda d: [("imgs", f(d, 2, 3, 4, 4)), ("ids_keep", ints(d, [[0, 1], [3, 2]])), ("patch_size", 2)],
    "masked_patch_loss": lambda d: [("pred", f(d, 2, 4, 12)), ("imgs", f(d, 2, 3, 4, 4)),
                                    ("mask", ints(d, [[0, 1, 1, 0], [1, 1, 0, 0]]).float()), ("patch_size", 2),
                                    ("norm_pix_loss", False)],
    "add_noise": lambda d: [("x0", f(d, 3, 4)), ("noise", f(d, 3, 4)), ("timesteps", ints(d, [0, 5, 9])),
                            ("alphas_cumprod", _sched(d))],
    "get_velocity": lambda d: [("x0", f(d, 3, 4)), ("noise", f(d, 3, 4)), ("timesteps", ints(d, [0, 5, 9])),
                               ("alphas_cumprod", _sched(d))],
    "diffusion_loss": lambda d: [("model_output", f(d, 3, 4)), ("x0", f(d, 3, 4)), ("noise", f(d, 3, 4)),
                                 ("timesteps", ints(d, [0, 5, 9])), ("alphas_cumprod", _sched(d)),
                                 ("prediction_type", "epsilon"), ("reduction", "mean")],
    "ddpm_step": lambda d: [("model_output", f(d, 3, 4)), ("timesteps", ints(d, [1, 5, 9])), ("sample", f(d, 3, 4)),
                            ("alphas_cumprod", _sched(d)), ("prev_timesteps", ints(d, [0, 4, -1])),
                            ("noise", f(d, 3, 4)), ("threshold", None), ("prediction_type", "epsilon"),
                            ("clip_sample", True), ("clip_sample_range", 1.0)],
    "ddim_step": lambda d: [("model_output", f(d, 3, 4)), ("timesteps", ints(d, [1, 5, 9])),
                            ("prev_timesteps", ints(d, [0, 4, -1])), ("sample", f(d, 3, 4)),
                            ("alphas_cumprod", _sched(d)), ("eta", 0.5), ("noise", f(d, 3, 4)), ("threshold", None),
                            ("prediction_type", "epsilon"), ("clip_sample", False), ("clip_sample_range", 1.0),
                            ("use_clipped_model_output", False), ("final_alpha_cumprod", 1.0)],
}
DIRECT_FLOATS = {
    "cosine_similarity": ["x1", "x2"], "feature_distillation_loss": ["student", "teacher"],
    "pairwise_cosine_similarity": ["a", "b"],
    "distillation_loss": ["student_logits", "teacher_logits"], "cross_entropy": ["logits"],
    "soft_target_cross_entropy": ["logits", "target_probs"],
    "info_nce_loss": ["image_features", "text_features", "logit_scale"], "random_masking": ["x"],
    "unshuffle_with_mask_tokens": ["x_visible", "mask_token"], "gather_patches": ["imgs"],
    "masked_patch_loss": ["pred", "imgs"], "add_noise": ["x0", "noise"], "get_velocity": ["x0", "noise"],
    "diffusion_loss": ["model_output", "x0", "noise"], "ddpm_step": ["sample", "model_output", "noise"],
    "ddim_step": ["sample", "model_output", "noise"],
}


def direct_generic_rows(op: str) -> list[Row]:
    rows = []
    for k, name in enumerate(DIRECT_FLOATS[op]):
        dtype_msg = rf"argument '{name}' must (be float32|have the same dtype)"
        rows += [Row(op, f"{name} int64", {name: as_dtype(torch.int64)}, TypeError, dtype_msg),
                 Row(op, f"{name} bool", {name: as_dtype(torch.bool)}, TypeError, dtype_msg)]
        if k == 0:
            rows += [Row(op, f"{name} complex64", {name: as_dtype(torch.complex64)}, TypeError, dtype_msg),
                     # PyTorch's schema parser: RuntimeError naming the argument, for every op
                     Row(op, f"{name} not a tensor", {name: AS_LIST}, RuntimeError,
                         rf"Expected a value of type 'Tensor' for argument '{name}'")]
        else:
            rows.append(Row(op, f"{name} on another device", {name: ON_OTHER}, ValueError,
                            # the C++ kernels check the device type first ("must be a cuda tensor");
                            # the fake kernel names the schema's first tensor as the reference
                            rf"argument '{name}' must be (on the same device|a \w+ tensor)"
                            rf"|on the same device as '{name}'"))
            if name != "logit_scale":  # any float dtype
                rows.append(Row(op, f"{name} float64 vs float32", {name: as_dtype(torch.float64)}, TypeError,
                                rf"argument '{name}' must have the same dtype"))
    return rows


def _any_float_rows(op: str, name: str, shape: tuple) -> list[Row]:
    """A float argument of any float dtype, of `shape`: integer, wrong shape, another device."""
    return [Row(op, f"{name} int64", {name: as_dtype(torch.int64)}, TypeError, rf"argument '{name}' must be float32"),
            Row(op, f"{name} shape", {name: reshaped(shape[0], shape[1] - 1)}, ValueError,
                rf"argument '{name}' must have shape \[{shape[0]}, {shape[1]}\]"),
            Row(op, f"{name} on another device", {name: ON_OTHER}, ValueError,
                rf"argument '{name}' must be on the same device|on the same device as '{name}'")]


def _direct_rows() -> list[Row]:
    rows = []
    for op in DIRECT:
        rows += direct_generic_rows(op)
    eps_ops = ("cosine_similarity", "feature_distillation_loss", "pairwise_cosine_similarity")
    for op in eps_ops:
        rows += [Row(op, "eps 0", {"eps": 0.0}, ValueError, r"argument 'eps' must be > 0"),
                 Row(op, "eps nan", {"eps": NAN}, ValueError, r"argument 'eps' must be > 0"),
                 Row(op, "eps a string", {"eps": "x"}, RuntimeError, r"Expected a value of type 'float' for argument 'eps'")]
    for op, (n1, n2) in (("cosine_similarity", ("x1", "x2")), ("feature_distillation_loss", ("student", "teacher"))):
        rows += [Row(op, "shape mismatch", {n2: reshaped(3, 4)}, ValueError, rf"argument '{n2}' must have the same shape"),
                 Row(op, f"{n1} 0-dim", {n1: Mut(lambda x, d: x[0, 0]), n2: Mut(lambda x, d: x[0, 0])}, ValueError,
                     rf"argument '{n1}' must have at least 1 dimension")]
    rows += [
        Row("feature_distillation_loss", "bad kind", {"kind": "l1"}, ValueError, r"argument 'kind' must be"),
        Row("pairwise_cosine_similarity", "a 2-D", {"a": reshaped(3, 4)}, ValueError, r"argument 'a' must have 3 dimension"),
        Row("pairwise_cosine_similarity", "b 4-D", {"b": reshaped(1, 2, 5, 4)}, ValueError,
            r"argument 'b' must have 3 dimension"),
        Row("pairwise_cosine_similarity", "B mismatch", {"b": reshaped(3, 5, 4)}, ValueError,
            r"arguments 'a' \[B, N, D\] and 'b' \[B, M, D\] must agree"),
        Row("pairwise_cosine_similarity", "D mismatch", {"b": reshaped(2, 5, 3)}, ValueError,
            r"arguments 'a' (\[B, N, D\] )?and 'b' .*(must agree|same feature size)"),
        # ---------------------------------------------------------------- distillation
        Row("distillation_loss", "temperature 0", {"temperature": 0.0}, ValueError, r"argument 'temperature' must be > 0"),
        Row("distillation_loss", "temperature inf", {"temperature": INF}, ValueError,
            r"argument 'temperature' must be finite"),
        Row("distillation_loss", "beta 2", {"beta": 2.0}, ValueError, r"argument 'beta' must be in \[0, 1\]"),
        Row("distillation_loss", "label_smoothing -0.1", {"label_smoothing": -0.1}, ValueError,
            r"argument 'label_smoothing' must be in \[0, 1\]"),
        Row("distillation_loss", "soft_weight nan", {"soft_weight": NAN}, ValueError, r"argument 'soft_weight' must be finite"),
        Row("distillation_loss", "hard_weight without labels", {"labels": None}, ValueError, r"'hard_weight'.*labels"),
        Row("distillation_loss", "teacher shape", {"teacher_logits": reshaped(3, 4)}, ValueError,
            r"argument 'teacher_logits' must have the same shape"),
        Row("distillation_loss", "labels int32", {"labels": as_dtype(torch.int32)}, TypeError, r"argument 'labels' must be int64"),
        Row("distillation_loss", "labels shape", {"labels": Mut(lambda x, d: x[:2])}, ValueError,
            r"argument 'labels' must have shape"),
        Row("distillation_loss", "labels on another device", {"labels": ON_OTHER}, ValueError,
            r"argument 'labels' must be on the same device"),
        Row("distillation_loss", "no classes", {"student_logits": reshaped(3, 0), "teacher_logits": reshaped(3, 0)},
            ValueError, r"argument 'student_logits' must have at least one class"),
        Row("cross_entropy", "label_smoothing 2", {"label_smoothing": 2.0}, ValueError,
            r"argument 'label_smoothing' must be in \[0, 1\]"),
        Row("cross_entropy", "grad_scale nan", {"grad_scale": NAN}, ValueError, r"argument 'grad_scale' must be finite"),
        Row("cross_entropy", "labels float", {"labels": as_dtype(torch.float32)}, TypeError, r"argument 'labels' must be int64"),
        Row("cross_entropy", "labels shape", {"labels": Mut(lambda x, d: x[None])}, ValueError,
            r"argument 'labels' must have shape"),
        Row("cross_entropy", "labels >= V", {"labels": fill(5, 1)}, IndexError,
            r"argument 'labels' must be in \[0, 5\) or ignore_index", backends=("cpu",)),
        Row("soft_target_cross_entropy", "temperature negative", {"temperature": -1.0}, ValueError,
            r"argument 'temperature' must be > 0"),
        Row("soft_target_cross_entropy", "temperature nan", {"temperature": NAN}, ValueError,
            r"argument 'temperature' must be > 0"),
        Row("soft_target_cross_entropy", "target shape", {"target_probs": reshaped(3, 4)}, ValueError,
            r"argument 'target_probs' must have the same shape"),
        # ---------------------------------------------------------------- contrastive
        Row("info_nce_loss", "labels int32", {"labels": as_dtype(torch.int32)}, TypeError, r"argument 'labels' must be int64"),
        Row("info_nce_loss", "labels float", {"labels": as_dtype(torch.float32)}, TypeError,
            r"argument 'labels' must be (int64|an integer tensor)"),
        Row("info_nce_loss", "labels shape", {"labels": Mut(lambda x, d: x[:3])}, ValueError,
            r"argument 'labels' must have shape \[N\] = \[4\]"),
        Row("info_nce_loss", "labels on another device", {"labels": ON_OTHER}, ValueError,
            r"argument 'labels' must be on the same device"),
        Row("info_nce_loss", "labels >= M", {"labels": fill(4, 0)}, IndexError, r"argument 'labels' must hold indices",
            backends=("cpu",)),
        Row("info_nce_loss", "logit_scale shape [2]", {"logit_scale": reshaped(2)}, ValueError,
            r"argument 'logit_scale' must be a scalar tensor"),
        Row("info_nce_loss", "image_features 3-D", {"image_features": reshaped(1, 4, 6)}, ValueError,
            r"argument 'image_features' must (have 2 dimension|have shape \[rows, D\])"),
        Row("info_nce_loss", "D mismatch", {"text_features": reshaped(4, 5)}, ValueError,
            r"arguments 'image_features' \[N, D\] and 'text_features' \[M, D\] must have the same feature size"),
        # ---------------------------------------------------------------- mae
        Row("random_masking", "x 2-D", {"x": reshaped(2, 6)}, ValueError, r"argument 'x' must have (3 dimension|shape)"),
        Row("random_masking", "mask_ratio 1", {"mask_ratio": 1.0}, ValueError,
            r"argument 'mask_ratio' must be in \[0, 1\)"),
        Row("random_masking", "mask_ratio nan", {"mask_ratio": NAN}, ValueError,
            r"argument 'mask_ratio' must be in \[0, 1\)"),
        Row("unshuffle_with_mask_tokens", "mask_token size", {"mask_token": reshaped(4)}, ValueError,
            r"argument 'mask_token' must have 3 elements"),
        Row("unshuffle_with_mask_tokens", "mask_token 2-D", {"mask_token": reshaped(1, 3)}, ValueError,
            r"argument 'mask_token' must have (1 dimension|shape)"),
        Row("unshuffle_with_mask_tokens", "mask_token float64", {"mask_token": as_dtype(torch.float64)}, TypeError,
            r"argument 'mask_token' must have the same dtype"),
        Row("unshuffle_with_mask_tokens", "K > L", {"ids_restore": Mut(lambda x, d: x[:, :1])}, ValueError,
            r"argument 'x_visible' has 2 tokens, more than the L = 1 of 'ids_restore'"),
        Row("unshuffle_with_mask_tokens", "ids_restore >= L", {"ids_restore": fill(4, 1)}, IndexError,
            r"argument 'ids_restore' has id 4", backends=("cpu",)),
        Row("unshuffle_with_mask_tokens", "ids_restore repeated", {"ids_restore": fill(0, 1)}, ValueError,
            r"argument 'ids_restore' repeats id 0", backends=("cpu",)),
        Row("gather_patches", "patch_size 0", {"patch_size": 0}, ValueError, r"argument 'patch_size' must be > 0"),
        Row("gather_patches", "patch_size does not divide", {"patch_size": 3}, ValueError,
            r"multiples of 'patch_size' \(3\)"),
        Row("gather_patches", "imgs 3-D", {"imgs": reshaped(3, 4, 4)}, ValueError,
            r"argument 'imgs' must have (4 dimension|shape)"),
        Row("gather_patches", "ids_keep >= L", {"ids_keep": fill(4, 1)}, IndexError, r"argument 'ids_keep' has id 4",
            backends=("cpu",)),
        Row("gather_patches", "ids_keep repeated", {"ids_keep": fill(0, 1)}, ValueError,
            r"argument 'ids_keep' repeats id 0", backends=("cpu",)),
        Row("masked_patch_loss", "pred shape", {"pred": reshaped(2, 4, 11)}, ValueError,
            r"argument 'pred' must have shape \[2, 4, 12\]"),
        Row("masked_patch_loss", "pred 2-D", {"pred": reshaped(2, 48)}, ValueError,
            r"argument 'pred' must have (3 dimension|shape)"),
        Row("masked_patch_loss", "patch_size 0", {"patch_size": 0}, ValueError, r"argument 'patch_size' must be > 0"),
        # ---------------------------------------------------------------- diffusion
        Row("add_noise", "noise shape", {"noise": reshaped(3, 5)}, ValueError, r"argument 'noise' must have the same shape"),
        Row("get_velocity", "x0 0-dim", {"x0": reshaped(), "noise": reshaped()}, ValueError,
            r"argument 'x0' must have at least 1 dimension"),
        Row("diffusion_loss", "prediction_type eps", {"prediction_type": "eps"}, ValueError,
            r"argument 'prediction_type' must be one of"),
        Row("diffusion_loss", "reduction batchmean", {"reduction": "batchmean"}, ValueError,
            r"argument 'reduction' must be one of"),
        Row("diffusion_loss", "noise shape", {"noise": reshaped(3, 5)}, ValueError,
            r"argument 'noise' must have the same shape"),
        Row("ddim_step", "eta negative", {"eta": -1.0}, ValueError, r"argument 'eta' must be >= 0"),
        Row("ddim_step", "eta nan", {"eta": NAN}, ValueError, r"argument 'eta' must be >= 0"),
        Row("ddim_step", "final_alpha_cumprod 0", {"final_alpha_cumprod": 0.0}, ValueError,
            r"argument 'final_alpha_cumprod' must be in \(0, 1\]"),
    ]
    # noise: any float dtype (its order is all that counts); mask: any float dtype (the op
    # converts it)
    rows += _any_float_rows("random_masking", "noise", (2, 6)) + _any_float_rows("masked_patch_loss", "mask", (2, 4))
    for op in ("ddpm_step", "ddim_step"):
        rows += [
            Row(op, "prediction_type x", {"prediction_type": "x"}, ValueError,
                r"argument 'prediction_type' must be one of"),
            Row(op, "clip_sample_range 0", {"clip_sample_range": 0.0}, ValueError,
                r"argument 'clip_sample_range' must be > 0"),
            Row(op, "noise shape", {"noise": reshaped(3, 5)}, ValueError, r"argument 'noise' must have the same shape"),
            Row(op, "prev_timesteps float", {"prev_timesteps": as_dtype(torch.float32)}, TypeError,
                r"argument 'prev_timesteps' must be an int64 or int32 tensor"),
            Row(op, "prev_timesteps >= T", {"prev_timesteps": fill(10, 0)}, IndexError,
                r"argument 'prev_timesteps' has 10", backends=("cpu",)),
            Row(op, "threshold float16", {"threshold": lambda d: f(d, 3, dtype=torch.float16)}, TypeError,
                r"argument 'threshold' must be in the accumulation dtype"),
            Row(op, "threshold shape", {"threshold": lambda d: f(d, 2)}, ValueError,
                r"argument 'threshold' must have shape \[N\] = \[3\]"),
            Row(op, "threshold on another device", {"threshold": lambda d: torch.ones(3, device=d.other)},
                ValueError, r"argument 'threshold' must be on the same device|on the same device as 'threshold'"),
        ]
    for op in ("add_noise", "get_velocity", "diffusion_loss", "ddpm_step", "ddim_step"):
        rows += [
            Row(op, "table int64", {"alphas_cumprod": as_dtype(torch.int64)}, TypeError, r"'alphas_cumprod' must be float32"),
            Row(op, "table float16", {"alphas_cumprod": as_dtype(torch.float16)}, TypeError,
                r"'alphas_cumprod' must be float32"),
            Row(op, "table 2-D", {"alphas_cumprod": Mut(lambda x, d: x[None])}, ValueError,
                r"'alphas_cumprod' must be a non-empty 1-D table"),
            Row(op, "table empty", {"alphas_cumprod": Mut(lambda x, d: x[:0])}, ValueError,
                r"'alphas_cumprod' must be a non-empty 1-D table"),
            Row(op, "table on another device", {"alphas_cumprod": ON_OTHER}, ValueError,
                r"argument 'alphas_cumprod' must be on the same device"),
            Row(op, "timesteps float", {"timesteps": as_dtype(torch.float32)}, TypeError,
                r"argument 'timesteps' must be an int64 or int32 tensor"),
            Row(op, "timesteps one short", {"timesteps": Mut(lambda x, d: x[:2])}, ValueError,
                r"argument 'timesteps' must have shape \[N\] = \[3\]"),
            Row(op, "timesteps 0-dim", {"timesteps": Mut(lambda x, d: x[0])}, ValueError,
                r"argument 'timesteps' must have shape \[N\] = \[3\]"),
            Row(op, "timesteps on another device", {"timesteps": ON_OTHER}, ValueError,
                r"argument 'timesteps' must be on the same device"),
            Row(op, "timesteps >= T", {"timesteps": fill(10, 1)}, IndexError, r"argument 'timesteps' has 10",
                backends=("cpu",)),
            Row(op, "timesteps negative", {"timesteps": fill(-3, 1)}, IndexError, r"argument 'timesteps' has -3",
                backends=("cpu",)),
        ]
    return rows


DIRECT_ROWS = _direct_rows()


def _direct_params():
    return [pytest.param(row, p.values[0], id=f"{row.id}-{p.values[0]}", marks=p.marks)
            for row in DIRECT_ROWS for p in FUSED_BACKENDS if _applies(row, p.values[0])]


def call_direct(row: Row, backend: str):
    d = dev_for(backend)
    named = DIRECT[row.op](d)
    kw = build(row.changes, dict(named), d)
    op = getattr(torch.ops.pykernels, row.op + ("_triton" if backend == "triton" else ""))
    return op(*[kw[name] for name, _ in named])


@pytest.mark.parametrize("row, backend", _direct_params())
def test_direct_op(row, backend):
    with pytest.raises(row.exc, match=row.match):
        call_direct(row, backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_direct_good_arguments_run(backend):
    for op in DIRECT:
        row = Row(op, "good", {}, None, "")
        call_direct(row, backend)


# --------------------------------------------------------------------------- not errors
def test_meta_tensors_get_shapes_from_the_cpp_ops():
    """Meta tensors are not a malformed input for backend=None: the C++ ops' fake kernels
    give the output's shape, as PyTorch's own ops do. An explicit backend refuses them
    (test_public's 'all tensors on a device the backend does not run on' rows)."""
    if not backends.extension_loaded():
        pytest.skip("pykernels._C is not built")
    x = torch.empty(3, 5, device="meta")
    for out in (pk.cosine_similarity(x, x), torch.ops.pykernels.cosine_similarity(x, x, 1e-8)):
        assert out.device.type == "meta" and out.shape == (3,)


def _empty_cases(d: Dev):
    """(op, call, expected shape): an empty batch on every op, as PyTorch's equivalent."""
    e = lambda *s: torch.zeros(s, device=d.dev)  # noqa: E731
    T = _sched(d)
    t0 = ints(d, [], torch.int64)
    return [
        ("cosine_similarity", lambda be: pk.cosine_similarity(e(0, 5), e(0, 5), backend=be), (0,)),
        ("cosine_similarity D=0", lambda be: pk.cosine_similarity(e(3, 0), e(3, 0), backend=be), (3,)),
        ("pairwise_cosine_similarity", lambda be: pk.pairwise_cosine_similarity(e(2, 0, 4), e(2, 5, 4), backend=be),
         (2, 0, 5)),
        ("pairwise_cosine_similarity B=0", lambda be: pk.pairwise_cosine_similarity(e(0, 3, 4), e(0, 5, 4), backend=be),
         (0, 3, 5)),
        ("feature_distillation_loss none", lambda be: pk.feature_distillation_loss(e(0, 5), e(0, 5), reduction="none",
                                                                                  backend=be), (0,)),
        ("feature_distillation_loss mean", lambda be: pk.feature_distillation_loss(e(0, 5), e(0, 5), backend=be), ()),
        ("info_nce_loss mean", lambda be: pk.info_nce_loss(e(0, 6), e(0, 6), torch.tensor(5.0, device=d.dev),
                                                           backend=be), ()),
        ("info_nce_loss sum", lambda be: pk.info_nce_loss(e(0, 6), e(0, 6), torch.tensor(5.0, device=d.dev),
                                                          reduction="sum", backend=be), ()),
        ("random_masking", lambda be: pk.random_masking(e(0, 6, 3), 0.5, noise=e(0, 6), backend=be)[0], (0, 3, 3)),
        ("gather_patches", lambda be: pk.gather_patches(e(0, 3, 4, 4), ints(d, []).reshape(0, 2), 2, backend=be),
         (0, 2, 12)),
        ("unshuffle_with_mask_tokens", lambda be: pk.unshuffle_with_mask_tokens(
            e(0, 2, 3), e(3), ints(d, []).reshape(0, 4), backend=be), (0, 4, 3)),
        ("masked_patch_loss", lambda be: pk.masked_patch_loss(e(0, 4, 12), e(0, 3, 4, 4), e(0, 4), 2, backend=be), ()),
        ("add_noise", lambda be: pk.add_noise(e(0, 4), e(0, 4), t0, T, backend=be), (0, 4)),
        ("get_velocity", lambda be: pk.get_velocity(e(0, 4), e(0, 4), t0, T, backend=be), (0, 4)),
        ("diffusion_loss mean", lambda be: pk.diffusion_loss(e(0, 4), e(0, 4), e(0, 4), t0, T, backend=be), ()),
        ("diffusion_loss none", lambda be: pk.diffusion_loss(e(0, 4), e(0, 4), e(0, 4), t0, T, reduction="none",
                                                             backend=be), (0, 4)),
        ("ddpm_step", lambda be: pk.ddpm_step(e(0, 4), t0, e(0, 4), T, noise=e(0, 4), backend=be)[0], (0, 4)),
        ("ddim_step", lambda be: pk.ddim_step(e(0, 4), t0, t0, e(0, 4), T, backend=be)[0], (0, 4)),
        ("distillation_loss batchmean", lambda be: pk.distillation_loss(e(0, 5), e(0, 5), backend=be), ()),
        ("distillation_loss none", lambda be: pk.distillation_loss(e(0, 5), e(0, 5), reduction="none", backend=be), (0,)),
        ("cross_entropy mean", lambda be: pk.cross_entropy(e(0, 5), ints(d, []), backend=be), ()),
        ("cross_entropy sum", lambda be: pk.cross_entropy(e(0, 5), ints(d, []), reduction="sum", backend=be), ()),
        ("soft_target_cross_entropy", lambda be: pk.soft_target_cross_entropy(e(0, 5), e(0, 5), backend=be), ()),
    ]


# What PyTorch's equivalent gives for a reduction over nothing: mean -> nan, sum -> 0.
_EMPTY_SCALARS = {"feature_distillation_loss mean": NAN, "info_nce_loss mean": NAN, "info_nce_loss sum": 0.0,
                  "masked_patch_loss": NAN, "diffusion_loss mean": NAN, "distillation_loss batchmean": NAN,
                  "cross_entropy mean": NAN, "cross_entropy sum": 0.0, "soft_target_cross_entropy": NAN}


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch_gives_pytorchs_empty_result(backend):
    """Decision: an empty batch is not an error. Element-wise ops return the empty
    result; a mean over nothing is NaN and a sum 0 (torch.mean / F.cross_entropy)."""
    for name, call, shape in _empty_cases(dev_for(backend)):
        out = call(backend)
        assert tuple(out.shape) == shape, name
        if name in _EMPTY_SCALARS:
            want = _EMPTY_SCALARS[name]
            assert (out.isnan().item() if want != want else out.item() == want), (name, out)
        elif name == "cosine_similarity D=0":  # torch: 0 / max(0, eps)^2 = 0
            assert torch.equal(out, torch.zeros(3, device=out.device)), name


def test_empty_batch_matches_torch():
    """The empty-batch decision is PyTorch's: its equivalents give the same."""
    import torch.nn.functional as F
    e = torch.zeros
    assert F.cosine_similarity(e(0, 5), e(0, 5), dim=-1).shape == (0,)
    assert torch.equal(F.cosine_similarity(e(3, 0), e(3, 0), dim=-1), e(3))
    assert F.cross_entropy(e(0, 5), e(0, dtype=torch.long)).isnan()
    assert F.cross_entropy(e(0, 5), e(0, dtype=torch.long), reduction="sum").item() == 0
    assert e(0, 4).mean().isnan()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_nan_in_data_tensors_propagates(backend):
    """Decision: NaN in a data tensor is not checked (that would read device memory): it
    reaches the output, as in PyTorch. Here: a NaN entry of alphas_cumprod, a NaN
    logit_scale, a NaN logit."""
    d = dev_for(backend)
    table = _sched(d).clone()
    table[5] = NAN
    out = pk.add_noise(f(d, 3, 4), f(d, 3, 4), ints(d, [0, 5, 9]), table, backend=backend)
    assert out[1].isnan().all() and not out[[0, 2]].isnan().any()
    loss = pk.info_nce_loss(f(d, 4, 6), f(d, 4, 6), torch.tensor(NAN, device=d.dev), backend=backend)
    assert loss.isnan()
    logits = f(d, 3, 5)
    logits[1, 2] = NAN
    rows = pk.cross_entropy(logits, ints(d, [0, 4, 1]), reduction="none", backend=backend)
    assert rows[1].isnan() and not rows[[0, 2]].isnan().any()


@pytest.mark.parametrize("op", [op for op, spec in PUBLIC.items() if spec[2]])
def test_bad_backend_name(op):
    fn, good, _, _ = PUBLIC[op]
    with pytest.raises(ValueError, match=r"argument 'backend' must be one of"):
        fn(**good(dev_for("reference")), backend="gpu")
