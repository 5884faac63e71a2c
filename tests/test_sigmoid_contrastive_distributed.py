"""The sigmoid contrastive loss on torch.distributed: pykernels.distributed.sigmoid_contrastive_loss
(ring and gather modes) and pykernels.nn.SigLipLoss against open_clip's SigLipLoss.

Real process groups: gloo on CPU, 2 and 3 processes, one launch per world size that runs
every check and records its outcome per rank (as tests/test_contrastive_distributed.py).
The truth is rank r's loss written out in float64 on the global tensors: its images
against every text, positives on its own diagonal block, divided by its n; the texts'
gradients are those of the sum of every rank's loss (open_clip's exchanges carry the
texts' gradients back to their owners).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pykernels import distributed as pkd
from pykernels.nn import SigLipLoss

from ._distributed import init_gloo, outcomes_fixture, report, run_checks
from .helpers import TOLERANCE, rel_err

WORLD_SIZES = (2, 3)
DIM = 5


def sizes_for(world, unequal):
    return [2 + r for r in range(world)] if unequal else [3] * world


def global_inputs(seed, sizes, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    N = sum(sizes)
    img = torch.randn(N, DIM, generator=gen, dtype=torch.float64).to(dtype)
    txt = torch.randn(N, DIM, generator=gen, dtype=torch.float64).to(dtype)
    return img, txt, torch.tensor(3.0, dtype=dtype), torch.tensor(-2.0, dtype=dtype)


def rank_losses(img, txt, scale, bias, sizes, normalize=False, reduction="mean"):
    """Every rank's loss, the plain way: explicit logits and logsigmoid in float64."""
    if normalize:
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    out, r0 = [], 0
    for n in sizes:
        logits = scale * img[r0 : r0 + n] @ txt.T + bias
        z = -torch.ones_like(logits)
        z[:, r0 : r0 + n] += 2 * torch.eye(n, dtype=logits.dtype)
        total = -F.logsigmoid(z * logits).sum()
        out.append(total / n if reduction == "mean" else total)
        r0 += n
    return out


def block(x, rank, sizes):
    r0 = sum(sizes[:rank])
    return x[r0 : r0 + sizes[rank]]


def leaves(*xs):
    return [x.detach().clone().requires_grad_() for x in xs]


def check_close(out, ref, dtype, what):
    err = rel_err(out, ref)
    assert err <= TOLERANCE[dtype], (
        f"{what}: relative error {err:.3g} > {TOLERANCE[dtype]:.3g} ({dtype})"
    )


def check_loss(
    rank,
    world,
    *,
    mode,
    dtype=torch.float64,
    unequal=False,
    normalize=False,
    reduction="mean",
    backend=None,
    seed=0,
):
    sizes = sizes_for(world, unequal)
    img, txt, scale, bias = global_inputs(seed, sizes, dtype)
    g = leaves(*(x.double() for x in (img, txt, scale, bias)))
    losses = rank_losses(*g, sizes, normalize=normalize, reduction=reduction)
    want_s, want_b = torch.autograd.grad(losses[rank], g[2:], retain_graph=True)
    sum(losses).backward()
    l_img, l_txt, l_s, l_b = leaves(block(img, rank, sizes), block(txt, rank, sizes), scale, bias)
    out = pkd.sigmoid_contrastive_loss(
        l_img, l_txt, l_s, l_b, mode=mode, normalize=normalize, reduction=reduction, backend=backend
    )
    out.backward()
    check_close(out, losses[rank], dtype, "loss")
    check_close(l_img.grad, block(g[0].grad, rank, sizes), dtype, "image grad")
    check_close(l_txt.grad, block(g[1].grad, rank, sizes), dtype, "text grad")
    check_close(l_s.grad, want_s, dtype, "logit_scale grad")
    check_close(l_b.grad, want_b, dtype, "logit_bias grad")


def check_gather_refuses_unequal(rank, world):
    sizes = sizes_for(world, True)
    img, txt, s, b = global_inputs(1, sizes)
    with pytest.raises(ValueError, match="mode='gather' needs the same n"):
        pkd.sigmoid_contrastive_loss(
            block(img, rank, sizes), block(txt, rank, sizes), s, b, mode="gather"
        )


def check_vs_open_clip(rank, world, *, dist_impl, dtype=torch.float64):
    try:
        from open_clip.loss import SigLipLoss as OpenClipSigLipLoss
    except ImportError:
        return "skip: open_clip is not installed"
    sizes = sizes_for(world, False)
    img, txt, scale, bias = global_inputs(2, sizes, dtype)
    kw = dict(rank=rank, world_size=world, dist_impl=dist_impl)
    results = []
    for module in (SigLipLoss(**kw), OpenClipSigLipLoss(**kw)):
        l_img, l_txt, l_s, l_b = leaves(
            block(img, rank, sizes), block(txt, rank, sizes), scale, bias
        )
        out = module(l_img, l_txt, l_s, l_b)
        out.backward()
        results.append((out, l_img.grad, l_txt.grad, l_s.grad, l_b.grad))
    for ours, theirs, what in zip(
        *results, ("loss", "image grad", "text grad", "scale grad", "bias grad")
    ):
        check_close(ours.to(theirs.dtype), theirs, dtype, f"{what} {dist_impl}")
    return None


CHECKS = {}
for _mode in ("ring", "gather"):
    CHECKS[f"{_mode}-f64"] = dict(fn=check_loss, mode=_mode)
    CHECKS[f"{_mode}-f64-normalize-sum"] = dict(
        fn=check_loss, mode=_mode, normalize=True, reduction="sum"
    )
    CHECKS[f"{_mode}-f32"] = dict(fn=check_loss, mode=_mode, dtype=torch.float32)
    CHECKS[f"{_mode}-bf16"] = dict(fn=check_loss, mode=_mode, dtype=torch.bfloat16)
    CHECKS[f"{_mode}-reference"] = dict(fn=check_loss, mode=_mode, backend="reference")
CHECKS["ring-unequal-batches"] = dict(fn=check_loss, mode="ring", unequal=True)
CHECKS["ring-unequal-batches-f32-normalize"] = dict(
    fn=check_loss, mode="ring", unequal=True, dtype=torch.float32, normalize=True
)
CHECKS["ring-triton"] = dict(fn=check_loss, mode="ring", dtype=torch.float32, backend="triton")
CHECKS["gather-refuses-unequal-batches"] = dict(fn=check_gather_refuses_unequal)
for _impl in ("bidir", "shift", "reduce", "gather"):
    CHECKS[f"open_clip-{_impl}"] = dict(fn=check_vs_open_clip, dist_impl=_impl)


# ----------------------------------------------------------------------------- the launch
def _worker(rank, world, port, out_dir):
    init_gloo(rank, world, port)
    run_checks(CHECKS, rank, world, out_dir)


outcomes = outcomes_fixture(WORLD_SIZES, _worker, __name__)


@pytest.mark.parametrize("check", list(CHECKS))
def test_distributed(outcomes, check):
    report(outcomes, check)


# ----------------------------------------------------------------------------- single process
def test_without_process_group_is_the_local_loss():
    img, txt, s, b = global_inputs(3, [4])
    out = pkd.sigmoid_contrastive_loss(img, txt, s, b)
    torch.testing.assert_close(out, rank_losses(img, txt, s, b, [4])[0])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(mode="bidir"), ValueError, "'mode'"),
        (dict(reduction="none"), ValueError, "'reduction'"),
        (dict(process_group=object()), RuntimeError, "not initialised"),
    ],
)
def test_bad_input(kwargs, error, match):
    img, txt, s, b = global_inputs(3, [4])
    with pytest.raises(error, match=match):
        pkd.sigmoid_contrastive_loss(img, txt, s, b, **kwargs)


def test_image_and_text_rows_must_agree():
    with pytest.raises(ValueError, match="same number of rows"):
        pkd.sigmoid_contrastive_loss(torch.ones(3, 2), torch.ones(4, 2), 1.0, 0.0)


def test_siglip_loss_rejects_unknown_dist_impl():
    with pytest.raises(ValueError, match="'dist_impl'"):
        SigLipLoss(dist_impl="allgather")
