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

The good arguments and the rows every upstream gradient gets are in malformed_backward.py;
each family's rows in test_malformed_<family>.py.
"""

from __future__ import annotations

import pytest
import torch

from . import (
    test_malformed_contrastive,
    test_malformed_cosine,
    test_malformed_diffusion,
    test_malformed_distillation,
    test_malformed_flow_matching,
    test_malformed_mae,
)
from .helpers import FUSED_BACKENDS
from .malformed import dev_for, f
from .malformed_backward import (
    ARGS,
    GRAD_DTYPE_IS_OUTPUT_DTYPE,
    SCALE_OPS,
    args_for,
    grad_shape,
    op_for,
)

# every family's backward rows
ROWS = [
    row
    for family in (
        test_malformed_cosine,
        test_malformed_contrastive,
        test_malformed_distillation,
        test_malformed_mae,
        test_malformed_diffusion,
        test_malformed_flow_matching,
    )
    for row in family.BACKWARD_ROWS
]


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
