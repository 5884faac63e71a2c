"""Every public op under torch.autocast("cpu", dtype=torch.bfloat16) (docs/guarantees.md):

- the ops are autocast-opaque: they run with autocast off, so nothing is cast down and
  every backend (the reference's matmuls too) gives bitwise what it gives outside
  autocast; losses come back float32, element-wise outputs in the input dtype;
- mixed floating inputs (an autocast bf16 model output against an fp32 target) are
  promoted to the widest dtype, as PyTorch's type promotion does, and the gradients come
  back in each input's own dtype. Outside autocast mixed dtypes stay a TypeError.
  (unshuffle_with_mask_tokens casts mask_token to x_visible's dtype, in autocast or not.)
The same rule holds for torch.autocast("cuda", dtype=torch.float16) (gpu_check.sh runs
this file on a GPU)."""

import pytest
import torch

from .helpers import ALL_BACKENDS, backend_device, randn
from .op_cases import CASES, NO_BACKEND

LOSSES = {
    "feature_distillation_loss[mse]",
    "feature_distillation_loss[cosine]",
    "info_nce_loss",
    "masked_patch_loss",
    "masked_patch_loss[norm_pix]",
    "diffusion_loss",
    "distillation_loss",
    "distillation_loss[jsd]",
    "cross_entropy",
    "soft_target_cross_entropy",
}
# float inputs an op promotes together (the others: tables, masks, sort keys, scales)
PROMOTED = {
    "cosine_similarity": ("x1", "x2"),
    "pairwise_cosine_similarity": ("a", "b"),
    "feature_distillation_loss[mse]": ("student", "teacher"),
    "feature_distillation_loss[cosine]": ("student", "teacher"),
    "info_nce_loss": ("image_features", "text_features"),
    "masked_patch_loss": ("pred", "imgs"),
    "masked_patch_loss[norm_pix]": ("pred", "imgs"),
    "add_noise": ("x0", "noise"),
    "get_velocity": ("x0", "noise"),
    "diffusion_loss": ("model_output", "x0", "noise"),
    "ddpm_step": ("model_output", "sample", "noise"),
    "ddim_step": ("model_output", "sample", "noise"),
    "distillation_loss": ("student", "teacher"),
    "distillation_loss[jsd]": ("student", "teacher"),
    "soft_target_cross_entropy": ("logits", "target_probs"),
}
LOSSES |= {"flow_matching_loss"}
LOSSES |= {"fused_linear_cross_entropy", "fused_linear_distillation_loss"}
PROMOTED |= {
    "fused_linear_cross_entropy": ("hidden", "weight"),
    "fused_linear_distillation_loss": ("hidden", "weight", "teacher_hidden", "teacher_weight"),
}
LOSSES |= {"sigmoid_contrastive_loss"}
PROMOTED.update({"sigmoid_contrastive_loss": ("image_features", "text_features")})
PROMOTED.update(
    {
        "flow_interpolate": ("x0", "noise"),
        "flow_matching_loss": ("model_output", "x0", "noise"),
        "flow_match_euler_step": ("model_output", "sample"),
    }
)
SIZE = {"triton": "tiny"}


def _device_type(backend):
    return backend_device(backend).type


def _params(cases):
    return [
        pytest.param(c, p.values[0], id=f"{c.name}-{p.id}", marks=p.marks)
        for c in cases
        for p in ALL_BACKENDS
        if c.name not in NO_BACKEND or p.id == "reference"
    ]


def _run(case, backend, inputs, autocast):
    be = None if case.name in NO_BACKEND else backend
    dev = _device_type(backend)
    amp_dtype = torch.bfloat16 if dev == "cpu" else torch.float16
    with torch.autocast(dev, dtype=amp_dtype, enabled=autocast):
        outs = case(be, inputs)
    leaves = [inputs[k] for k in case.grads]
    floating = [o for o in outs if o.is_floating_point() and o.requires_grad]
    grads = []
    if leaves and floating:
        ws = [
            randn(*o.shape, dtype=o.dtype, device=o.device, seed=21 + k)
            for k, o in enumerate(floating)
        ]
        grads = torch.autograd.grad(floating, leaves, ws, allow_unused=True)
    return [o.detach() for o in outs], grads


def _fresh(case, backend, dtype, cast=None):
    inputs = case.inputs(
        dtype=dtype,
        device=backend_device(backend),
        size=SIZE.get(backend, "small"),
        requires_grad=False,
    )
    for k, dt in (cast or {}).items():
        inputs[k] = inputs[k].to(dt)
    for k in case.grads:
        inputs[k] = inputs[k].detach().requires_grad_()
    return inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case,backend", _params([c for c in CASES if not c.random]))
def test_uniform_inputs_unchanged_by_autocast(case, backend, dtype):
    want, want_g = _run(case, backend, _fresh(case, backend, dtype), autocast=False)
    got, got_g = _run(case, backend, _fresh(case, backend, dtype), autocast=True)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and torch.equal(g, w), (
            f"{case.name}: output {k} changed under autocast"
        )
        if case.name in LOSSES:
            assert g.dtype == torch.float32, f"{case.name}: loss in {g.dtype}"
        elif g.is_floating_point() and case.name != "make_schedule":
            assert g.dtype == dtype, (
                f"{case.name}: element-wise output {k} in {g.dtype}, input {dtype}"
            )
    for name, g, w in zip(case.grads, got_g, want_g):
        assert g.dtype == w.dtype and torch.equal(g, w), (
            f"{case.name}: grad of '{name}' changed under autocast"
        )


@pytest.mark.parametrize("case,backend", _params([c for c in CASES if c.name in PROMOTED]))
def test_mixed_inputs_promote_under_autocast(case, backend):
    """The first promoted input in bf16, the others fp32: under autocast the op gives
    what it gives on all-fp32 inputs (bf16 -> fp32 is exact); gradients in each input's
    dtype. Outside autocast: TypeError."""
    low = PROMOTED[case.name][0]
    mixed = _fresh(case, backend, torch.float32, cast={low: torch.bfloat16})
    with pytest.raises(TypeError, match="dtype"):
        _run(
            case,
            backend,
            _fresh(case, backend, torch.float32, cast={low: torch.bfloat16}),
            autocast=False,
        )
    got, got_g = _run(case, backend, mixed, autocast=True)
    wide = _fresh(case, backend, torch.float32, cast={low: torch.bfloat16})
    wide[low] = wide[low].detach().float().requires_grad_(low in case.grads)
    want, want_g = _run(case, backend, wide, autocast=False)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and torch.equal(g, w), (
            f"{case.name}: output {k} is not the fp32 result"
        )
    for name, g, w in zip(case.grads, got_g, want_g):
        assert g.dtype == mixed[name].dtype, f"{case.name}: grad of '{name}' in {g.dtype}"
        assert torch.equal(g, w.to(g.dtype)), (
            f"{case.name}: grad of '{name}' is not the fp32 gradient"
        )
