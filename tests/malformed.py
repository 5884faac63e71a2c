"""The malformed-input tables' building blocks: devices, argument changes (Mut), rows, the
public ops with arguments that work (PUBLIC), and the tests every table runs (public_tests,
bad_call_tests). The direct op calls are in malformed_direct.py, the backward ops in
malformed_backward.py.

A row is (op, what is wrong, the argument changes, exception type, message pattern).
Exception types (csrc/common/checks.h, pykernels/_checks.py):
  TypeError   a non-tensor, or a tensor of the wrong dtype, a wrong Python type for a scalar;
  ValueError  a wrong value: shape, rank, device, enum string, scalar out of its range;
  IndexError  an index out of range: dim, labels, ids, timesteps (CPU tensors only: on CUDA
              tensors checking would synchronise; see docs/<family>.md);
  RuntimeError a backend asked to run on tensors of a device it does not run on.
Direct op calls with a non-tensor where the schema has a Tensor fail in PyTorch's own
argument parser: RuntimeError naming the argument, the same for the C++ and Triton ops.

Used by test_malformed.py (the rows every public op gets), test_malformed_<family>.py (each
family's public, direct and backward rows), test_malformed_direct.py and
test_malformed_backward.py (the rows every direct / backward op gets, the good calls),
test_edge_inputs.py (inputs that are not errors) and the families' own malformed tests.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

import pykernels as pk
import pykernels.distributed as pkd

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
ON_META = Mut(
    lambda x, d: x.to("meta")
)  # no backend runs on meta (the reference runs on CPU and CUDA)
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
def sigmas(d, values=(0.0, 0.5, 1.0)):
    """One noise level per sample of the [3, 4] flow-matching samples."""
    return torch.tensor(values, device=d.dev)


def schedule(d, T=10):
    return pk.make_schedule(T).to(d.dev)


def mix_args(d):
    """Good arguments of add_noise and get_velocity (one kernel, two mixes of x0 and noise)."""
    return dict(
        x0=f(d, 3, 4), noise=f(d, 3, 4), timesteps=ints(d, [0, 5, 9]), alphas_cumprod=schedule(d)
    )


# op -> (public function, good keyword arguments, takes backend=, float tensor args)
PUBLIC = {
    "cosine_similarity": (
        pk.cosine_similarity,
        lambda d: dict(x1=f(d, 3, 5), x2=f(d, 3, 5)),
        True,
        ["x1", "x2"],
    ),
    "pairwise_cosine_similarity": (
        pk.pairwise_cosine_similarity,
        lambda d: dict(a=f(d, 2, 3, 4), b=f(d, 2, 5, 4)),
        True,
        ["a", "b"],
    ),
    "feature_distillation_loss": (
        pk.feature_distillation_loss,
        lambda d: dict(student=f(d, 3, 5), teacher=f(d, 3, 5)),
        True,
        ["student", "teacher"],
    ),
    "info_nce_loss": (
        pk.info_nce_loss,
        lambda d: dict(
            image_features=f(d, 4, 6),
            text_features=f(d, 4, 6),
            logit_scale=torch.tensor(5.0, device=d.dev),
            labels=ints(d, [1, 0, 3, 2]),
        ),
        True,
        ["image_features", "text_features", "logit_scale"],
    ),
    "random_masking": (
        pk.random_masking,
        lambda d: dict(x=f(d, 2, 6, 3), mask_ratio=0.5, noise=f(d, 2, 6)),
        True,
        ["x", "noise"],
    ),
    "patchify": (pk.patchify, lambda d: dict(imgs=f(d, 2, 3, 4, 4), patch_size=2), False, ["imgs"]),
    "unpatchify": (
        pk.unpatchify,
        lambda d: dict(patches=f(d, 2, 4, 12), patch_size=2, image_size=4, channels=3),
        False,
        ["patches"],
    ),
    "gather_patches": (
        pk.gather_patches,
        lambda d: dict(imgs=f(d, 2, 3, 4, 4), ids_keep=ints(d, [[0, 1], [3, 2]]), patch_size=2),
        True,
        ["imgs"],
    ),
    "unshuffle_with_mask_tokens": (
        pk.unshuffle_with_mask_tokens,
        lambda d: dict(
            x_visible=f(d, 2, 2, 3),
            mask_token=f(d, 3),
            ids_restore=ints(d, [[0, 1, 2, 3], [3, 2, 1, 0]]),
        ),
        True,
        ["x_visible", "mask_token"],
    ),
    "masked_patch_loss": (
        pk.masked_patch_loss,
        lambda d: dict(
            pred=f(d, 2, 4, 12),
            imgs=f(d, 2, 3, 4, 4),
            mask=ints(d, [[0, 1, 1, 0], [1, 1, 0, 0]]).float(),
            patch_size=2,
        ),
        True,
        ["pred", "imgs", "mask"],
    ),
    "make_schedule": (pk.make_schedule, lambda d: dict(num_train_timesteps=10), False, []),
    "add_noise": (pk.add_noise, mix_args, True, ["x0", "noise"]),
    "get_velocity": (pk.get_velocity, mix_args, True, ["x0", "noise"]),
    "diffusion_loss": (
        pk.diffusion_loss,
        lambda d: dict(
            model_output=f(d, 3, 4),
            x0=f(d, 3, 4),
            noise=f(d, 3, 4),
            timesteps=ints(d, [0, 5, 9]),
            alphas_cumprod=schedule(d),
        ),
        True,
        ["model_output", "x0", "noise"],
    ),
    "ddpm_step": (
        pk.ddpm_step,
        lambda d: dict(
            model_output=f(d, 3, 4),
            timesteps=ints(d, [0, 5, 9]),
            sample=f(d, 3, 4),
            alphas_cumprod=schedule(d),
            noise=f(d, 3, 4),
        ),
        True,
        ["sample", "model_output", "noise"],
    ),
    "ddim_step": (
        pk.ddim_step,
        lambda d: dict(
            model_output=f(d, 3, 4),
            timesteps=ints(d, [1, 5, 9]),
            prev_timesteps=ints(d, [0, 4, -1]),
            sample=f(d, 3, 4),
            alphas_cumprod=schedule(d),
            eta=0.5,
            noise=f(d, 3, 4),
        ),
        True,
        ["sample", "model_output", "noise"],
    ),
    "distillation_loss": (
        pk.distillation_loss,
        lambda d: dict(
            student_logits=f(d, 3, 5),
            teacher_logits=f(d, 3, 5),
            labels=ints(d, [0, 4, -100]),
            hard_weight=0.5,
        ),
        True,
        ["student_logits", "teacher_logits"],
    ),
    "cross_entropy": (
        pk.cross_entropy,
        lambda d: dict(logits=f(d, 3, 5), labels=ints(d, [0, 4, -100])),
        True,
        ["logits"],
    ),
    "soft_target_cross_entropy": (
        pk.soft_target_cross_entropy,
        lambda d: dict(logits=f(d, 3, 5), target_probs=probs(d, 3, 5)),
        True,
        ["logits", "target_probs"],
    ),
    "distributed.info_nce_loss": (
        pkd.info_nce_loss,
        lambda d: dict(
            image_features=f(d, 4, 6),
            text_features=f(d, 4, 6),
            logit_scale=torch.tensor(5.0, device=d.dev),
        ),
        True,
        ["image_features", "text_features", "logit_scale"],
    ),
    # the flow-matching ops' rows are their own (test_malformed_flow_matching.py, FLOW_ARGS)
    "flow_interpolate": (
        pk.flow_interpolate,
        lambda d: dict(x0=f(d, 3, 4), noise=f(d, 3, 4), sigmas=sigmas(d)),
        True,
        [],
    ),
    "flow_matching_loss": (
        pk.flow_matching_loss,
        lambda d: dict(model_output=f(d, 3, 4), x0=f(d, 3, 4), noise=f(d, 3, 4), sigmas=sigmas(d)),
        True,
        [],
    ),
    "flow_match_euler_step": (
        pk.flow_match_euler_step,
        lambda d: dict(
            sample=f(d, 3, 4),
            model_output=f(d, 3, 4),
            sigmas=sigmas(d),
            sigmas_next=sigmas(d, (0.0, 0.2, 0.9)),
        ),
        True,
        [],
    ),
}


class Row(NamedTuple):
    op: str
    what: str
    changes: dict  # argument -> new value, Mut, or a callable of Dev
    exc: type
    match: str
    cpu_tensors_only: bool = False  # a value check that only CPU tensors get (docs/<family>.md)
    backends: tuple = ()  # only these backends (empty: every backend)

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
ANY_FLOAT_DTYPE = {
    ("info_nce_loss", "logit_scale"),
    ("distributed.info_nce_loss", "logit_scale"),
    ("unshuffle_with_mask_tokens", "mask_token"),
    ("random_masking", "noise"),
    ("masked_patch_loss", "mask"),
}


def generic_rows(op: str) -> list[Row]:
    """The bad inputs every float tensor argument gets: integer, bool, complex, not a
    tensor, on another device (after the first argument, which sets the device)."""
    rows = []
    for k, name in enumerate(PUBLIC[op][3]):
        dtype_msg = rf"argument '{name}' must (be float32|have the same dtype)"
        rows += [
            Row(op, f"{name} int64", {name: as_dtype(torch.int64)}, TypeError, dtype_msg),
            Row(op, f"{name} bool", {name: as_dtype(torch.bool)}, TypeError, dtype_msg),
            Row(
                op,
                f"{name} not a tensor",
                {name: AS_LIST},
                TypeError,
                rf"argument '{name}' must be a torch.Tensor",
            ),
        ]
        if k == 0:
            rows.append(
                Row(
                    op, f"{name} complex64", {name: as_dtype(torch.complex64)}, TypeError, dtype_msg
                )
            )
        else:
            rows.append(
                Row(
                    op,
                    f"{name} on another device",
                    {name: ON_OTHER},
                    ValueError,
                    rf"argument '{name}' must be on the same device",
                )
            )
            if (op, name) not in ANY_FLOAT_DTYPE:
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


def on_other_device(op: str) -> Row:
    """Every tensor on a device the backend does not run on: meta."""
    return Row(
        op,
        "all tensors on a device the backend does not run on",
        {"*": ON_META},
        RuntimeError,
        r"backend '\w+' cannot run on \w+ tensors",
    )


PAIRS = {"cosine_similarity": ("x1", "x2"), "feature_distillation_loss": ("student", "teacher")}
TIMESTEP_OPS = ("add_noise", "get_velocity", "diffusion_loss", "ddpm_step", "ddim_step")


def table_rows(op: str) -> list[Row]:
    """The bad alphas_cumprod tables every diffusion op refuses, public or direct."""
    return [
        Row(
            op,
            "table int64",
            {"alphas_cumprod": as_dtype(torch.int64)},
            TypeError,
            r"'alphas_cumprod' must be float32",
        ),
        Row(
            op,
            "table float16",
            {"alphas_cumprod": as_dtype(torch.float16)},
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
        Row(
            op,
            "table empty",
            {"alphas_cumprod": Mut(lambda x, d: x[:0])},
            ValueError,
            r"'alphas_cumprod' must be a non-empty 1-D table",
        ),
        Row(
            op,
            "table on another device",
            {"alphas_cumprod": ON_OTHER},
            ValueError,
            r"argument 'alphas_cumprod' must be on the same device",
        ),
    ]


def timestep_rows(op: str) -> list[Row]:
    first = PUBLIC[op][3][0]
    rows = table_rows(op) + [
        Row(
            op,
            "table not a tensor",
            {"alphas_cumprod": AS_LIST},
            TypeError,
            r"'alphas_cumprod' must be a torch.Tensor",
        ),
        Row(
            op,
            "timesteps float",
            {"timesteps": as_dtype(torch.float32)},
            TypeError,
            r"argument 'timesteps' must be an int64 or int32 tensor",
        ),
        Row(
            op,
            "timesteps bool",
            {"timesteps": as_dtype(torch.bool)},
            TypeError,
            r"argument 'timesteps' must be an int64 or int32 tensor",
        ),
        Row(
            op,
            "timesteps a Python float",
            {"timesteps": 3.0},
            TypeError,
            r"argument 'timesteps' must be an int",
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
            "timesteps one short",
            {"timesteps": Mut(lambda x, d: x[:2])},
            ValueError,
            r"argument 'timesteps' must have shape \[N\] = \[3\]",
        ),
        Row(
            op,
            "timesteps 2-D",
            {"timesteps": Mut(lambda x, d: x[None])},
            ValueError,
            r"argument 'timesteps' must have shape \[N\]",
        ),
        Row(
            op,
            "timesteps >= T",
            {"timesteps": fill(10, 1)},
            IndexError,
            r"argument 'timesteps' has 10, outside",
            cpu_tensors_only=True,
        ),
        Row(
            op,
            "timesteps negative",
            {"timesteps": fill(-1, 1)},
            IndexError,
            r"argument 'timesteps' has -1, outside",
            cpu_tensors_only=True,
        ),
        Row(
            op,
            "timesteps int >= T",
            {"timesteps": 10},
            IndexError,
            r"argument 'timesteps' is 10, outside",
        ),
        Row(
            op,
            "timesteps int negative",
            {"timesteps": -1},
            IndexError,
            r"argument 'timesteps' is -1, outside",
        ),
        Row(
            op,
            "sample 0-dim",
            {first: Mut(lambda x, d: x[0, 0])},
            ValueError,
            rf"argument '{first}' must have at least 1 dimension",
        ),
    ]
    rows.append(
        Row(
            op,
            "noise other shape",
            {"noise": Mut(lambda x, d: x[:, :2])},
            ValueError,
            r"argument 'noise' must have the same shape",
        )
    )
    return rows


def applies(row: Row, backend: str) -> bool:
    if row.backends and backend not in row.backends:
        return False
    return not (row.cpu_tensors_only and backend_device(backend).type != "cpu")


def row_params(rows, backend_params):
    """(row, backend) params: ops without a backend argument once, every other row on each
    backend it applies to (skipped, with the reason, where the backend is unavailable)."""
    out = []
    for row in rows:
        takes_backend = PUBLIC[row.op][2] if row.op in PUBLIC else True
        for p in backend_params:
            name = p.values[0]
            if not takes_backend and name != "reference":
                continue
            if applies(row, name):
                out.append(
                    pytest.param(
                        row,
                        name,
                        id=f"{row.id}-{name if takes_backend else 'no_backend'}",
                        marks=p.marks,
                    )
                )
    return out


def call_public(row: Row, backend: str):
    fn, good, takes_backend, _ = PUBLIC[row.op]
    d = dev_for(backend)
    kw = build(row.changes, good(d), d)
    kw = {k: v for k, v in kw.items() if not (v is None and k in ("noise", "labels"))}
    if takes_backend:
        kw["backend"] = backend
    return fn(**kw)


# --------------------------------------------------------------------------- the tests
# Every test_malformed*.py binds these to its own table, so each test body is written once:
#   test_public, test_reference_raises_what_the_fused_backends_raise = public_tests(rows)
def public_tests(rows: list[Row]):
    """test_public: each row raises its exception, with its message, on each backend.
    test_reference_raises_what_the_fused_backends_raise: a user switching backend sees the
    same exception type for the same bad input."""

    @pytest.mark.parametrize("row, backend", row_params(rows, ALL_BACKENDS))
    def test_public(row, backend):
        with pytest.raises(row.exc, match=row.match):
            call_public(row, backend)

    @pytest.mark.parametrize("row", [r for r in rows if PUBLIC[r.op][2]], ids=lambda r: r.id)
    def test_reference_raises_what_the_fused_backends_raise(row):
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

    return test_public, test_reference_raises_what_the_fused_backends_raise


def bad_call_tests(family: str, calls: list):
    """test_bad_input_public over a family's public calls the rows do not reach (enum values,
    bounds, shapes particular to one op): [(call(), exception, message pattern)]."""

    @pytest.mark.parametrize(
        "family, case", [pytest.param(family, k, id=f"{family}-{k}") for k in range(len(calls))]
    )
    def test_bad_input_public(family, case):
        call, exc, text = calls[case]
        with pytest.raises(exc, match=text):
            call()

    return test_bad_input_public
