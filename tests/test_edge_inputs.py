"""Inputs that are not errors: meta tensors without a backend, an empty batch (the empty
or, for a mean, NaN result PyTorch's equivalent gives) and NaN in data tensors (it
propagates, as in PyTorch; checking would read device memory).
"""

from __future__ import annotations

import pytest
import torch

import pykernels as pk
from pykernels import backends

from .helpers import ALL_BACKENDS
from .malformed import NAN, Dev, dev_for, f, ints, schedule


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
    T = schedule(d)
    t0 = ints(d, [], torch.int64)
    return [
        ("cosine_similarity", lambda be: pk.cosine_similarity(e(0, 5), e(0, 5), backend=be), (0,)),
        (
            "cosine_similarity D=0",
            lambda be: pk.cosine_similarity(e(3, 0), e(3, 0), backend=be),
            (3,),
        ),
        (
            "pairwise_cosine_similarity",
            lambda be: pk.pairwise_cosine_similarity(e(2, 0, 4), e(2, 5, 4), backend=be),
            (2, 0, 5),
        ),
        (
            "pairwise_cosine_similarity B=0",
            lambda be: pk.pairwise_cosine_similarity(e(0, 3, 4), e(0, 5, 4), backend=be),
            (0, 3, 5),
        ),
        (
            "feature_distillation_loss none",
            lambda be: pk.feature_distillation_loss(e(0, 5), e(0, 5), reduction="none", backend=be),
            (0,),
        ),
        (
            "feature_distillation_loss mean",
            lambda be: pk.feature_distillation_loss(e(0, 5), e(0, 5), backend=be),
            (),
        ),
        (
            "info_nce_loss mean",
            lambda be: pk.info_nce_loss(
                e(0, 6), e(0, 6), torch.tensor(5.0, device=d.dev), backend=be
            ),
            (),
        ),
        (
            "info_nce_loss sum",
            lambda be: pk.info_nce_loss(
                e(0, 6), e(0, 6), torch.tensor(5.0, device=d.dev), reduction="sum", backend=be
            ),
            (),
        ),
        (
            "random_masking",
            lambda be: pk.random_masking(e(0, 6, 3), 0.5, noise=e(0, 6), backend=be)[0],
            (0, 3, 3),
        ),
        (
            "gather_patches",
            lambda be: pk.gather_patches(e(0, 3, 4, 4), ints(d, []).reshape(0, 2), 2, backend=be),
            (0, 2, 12),
        ),
        (
            "unshuffle_with_mask_tokens",
            lambda be: pk.unshuffle_with_mask_tokens(
                e(0, 2, 3), e(3), ints(d, []).reshape(0, 4), backend=be
            ),
            (0, 4, 3),
        ),
        (
            "masked_patch_loss",
            lambda be: pk.masked_patch_loss(e(0, 4, 12), e(0, 3, 4, 4), e(0, 4), 2, backend=be),
            (),
        ),
        ("add_noise", lambda be: pk.add_noise(e(0, 4), e(0, 4), t0, T, backend=be), (0, 4)),
        ("get_velocity", lambda be: pk.get_velocity(e(0, 4), e(0, 4), t0, T, backend=be), (0, 4)),
        (
            "diffusion_loss mean",
            lambda be: pk.diffusion_loss(e(0, 4), e(0, 4), e(0, 4), t0, T, backend=be),
            (),
        ),
        (
            "diffusion_loss none",
            lambda be: pk.diffusion_loss(
                e(0, 4), e(0, 4), e(0, 4), t0, T, reduction="none", backend=be
            ),
            (0, 4),
        ),
        (
            "ddpm_step",
            lambda be: pk.ddpm_step(e(0, 4), t0, e(0, 4), T, noise=e(0, 4), backend=be)[0],
            (0, 4),
        ),
        ("ddim_step", lambda be: pk.ddim_step(e(0, 4), t0, t0, e(0, 4), T, backend=be)[0], (0, 4)),
        (
            "distillation_loss batchmean",
            lambda be: pk.distillation_loss(e(0, 5), e(0, 5), backend=be),
            (),
        ),
        (
            "distillation_loss none",
            lambda be: pk.distillation_loss(e(0, 5), e(0, 5), reduction="none", backend=be),
            (0,),
        ),
        ("cross_entropy mean", lambda be: pk.cross_entropy(e(0, 5), ints(d, []), backend=be), ()),
        (
            "cross_entropy sum",
            lambda be: pk.cross_entropy(e(0, 5), ints(d, []), reduction="sum", backend=be),
            (),
        ),
        (
            "soft_target_cross_entropy",
            lambda be: pk.soft_target_cross_entropy(e(0, 5), e(0, 5), backend=be),
            (),
        ),
    ]


# What PyTorch's equivalent gives for a reduction over nothing: mean -> nan, sum -> 0.
_EMPTY_SCALARS = {
    "feature_distillation_loss mean": NAN,
    "info_nce_loss mean": NAN,
    "info_nce_loss sum": 0.0,
    "masked_patch_loss": NAN,
    "diffusion_loss mean": NAN,
    "distillation_loss batchmean": NAN,
    "cross_entropy mean": NAN,
    "cross_entropy sum": 0.0,
    "soft_target_cross_entropy": NAN,
}


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch_gives_pytorchs_empty_result(backend):
    """Decision: an empty batch is not an error. Element-wise ops return the empty
    result; a mean over nothing is NaN and a sum 0 (torch.mean / F.cross_entropy)."""
    for name, call, shape in _empty_cases(dev_for(backend)):
        out = call(backend)
        assert tuple(out.shape) == shape, name
        if name in _EMPTY_SCALARS:
            want = _EMPTY_SCALARS[name]
            assert out.isnan().item() if want != want else out.item() == want, (name, out)
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
    table = schedule(d).clone()
    table[5] = NAN
    out = pk.add_noise(f(d, 3, 4), f(d, 3, 4), ints(d, [0, 5, 9]), table, backend=backend)
    assert out[1].isnan().all() and not out[[0, 2]].isnan().any()
    loss = pk.info_nce_loss(
        f(d, 4, 6), f(d, 4, 6), torch.tensor(NAN, device=d.dev), backend=backend
    )
    assert loss.isnan()
    logits = f(d, 3, 5)
    logits[1, 2] = NAN
    rows = pk.cross_entropy(logits, ints(d, [0, 4, 1]), reduction="none", backend=backend)
    assert rows[1].isnan() and not rows[[0, 2]].isnan().any()
