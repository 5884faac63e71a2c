"""Property-based tests of the MAE family against the float64 reference (every backend):
random_masking, gather_patches, unshuffle_with_mask_tokens, masked_patch_loss; and of
patchify / unpatchify (no backend) against an independent unfold formulation."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pykernels as pk
from pykernels.reference import mae as ref

from ._fuzz import (
    BACKENDS,
    TOLERANCE,
    backend_device,
    compare,
    describe,
    dtypes,
    on_triton,
    rows,
    seeds,
    sizes,
    specs,
)

# ----------------------------------------------------------------------------- strategies
RATIOS = st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9, 0.999]) | st.floats(0.0, 1.0, exclude_max=True)


@st.composite
def image_shape(draw, backend):
    """(N, C, H, W, p): H and W multiples of p, the grid h x w small."""
    tiny = on_triton(backend)
    p = draw(st.sampled_from((1, 2, 3, 4) if tiny else (1, 2, 3, 4, 5, 8, 16)))
    C = draw(st.sampled_from((1, 2, 3) if tiny else (1, 2, 3, 4, 7)))
    h, w = draw(st.integers(1, 3 if tiny else 5)), draw(st.integers(1, 3 if tiny else 5))
    return draw(rows(backend, 3)), C, h * p, w * p, p


@st.composite
def permutations(draw, N, L):
    """[N, L] int64: an independent random permutation of [0, L) per row."""
    g = torch.Generator().manual_seed(draw(seeds()))
    return torch.argsort(torch.rand(N, L, generator=g), dim=1)


@st.composite
def noise_for(draw, N, L):
    """MAE's masking noise [N, L]: uniform, or with ties (few distinct values) so that the
    stable order of equal noise decides; float32 or float64."""
    g = torch.Generator().manual_seed(draw(seeds()))
    u = torch.rand(N, L, generator=g, dtype=torch.float64)
    if draw(st.booleans()):
        u = torch.floor(u * draw(st.sampled_from([1, 2, 3])))  # 1: every noise value equal
    return u.to(draw(st.sampled_from([torch.float32, torch.float64])))


def unfold_patchify(imgs, p):
    """patchify written independently of the reference's einsum: unfold H and W into p
    tiles, then (patch row, patch col, pixel row, pixel col, channel)."""
    N, C = imgs.shape[:2]
    x = imgs.unfold(2, p, p).unfold(3, p, p)  # [N, C, h, w, p, p]
    return x.permute(0, 2, 3, 4, 5, 1).reshape(N, -1, p * p * C)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_random_masking(backend, data):
    dtype, dev = data.draw(dtypes(backend)), backend_device(backend)
    N, L, D = data.draw(rows(backend, 5)), data.draw(sizes(backend)), data.draw(sizes(backend))
    x, ratio = data.draw(specs((N, L, D), dtype)), data.draw(RATIOS)
    use_generator = data.draw(st.booleans())
    if use_generator:  # the op draws torch.rand(N, L, generator=g): the reference gets the same
        seed = data.draw(seeds())
        noise = torch.rand(N, L, generator=torch.Generator(dev).manual_seed(seed), device=dev)
    else:
        noise = data.draw(noise_for(N, L)).to(dev)
    describe(
        backend=backend,
        x=x,
        mask_ratio=ratio,
        noise=noise.tolist(),
        generator_seed=seed if use_generator else None,
    )

    def fused(u):
        kw = (
            dict(generator=torch.Generator(dev).manual_seed(seed))
            if use_generator
            else dict(noise=noise)
        )
        return pk.random_masking(x.view(u), ratio, backend=backend, **kw)

    compare(
        fused,
        lambda u: ref.random_masking(x.view(u), ratio, noise),
        [x.leaf(dev)],
        dtype,
        exact=(0, 1),
        what="random_masking",
        backend=backend,
    )


@given(data=st.data())
def test_patchify_unpatchify(data):
    N, C, H, W, p = data.draw(image_shape("cpu"))
    dtype = data.draw(dtypes("cpu"))
    spec = data.draw(specs((N, C, H, W), dtype))
    describe(imgs=spec, patch_size=p)
    leaf = spec.leaf(
        "cpu", requires_grad=False
    ).requires_grad_()  # even expanded half: compared bit for bit
    imgs = spec.view(leaf)
    patches = pk.patchify(imgs, p)
    assert torch.equal(patches, unfold_patchify(imgs.detach(), p)) and patches.dtype == dtype
    back = pk.unpatchify(patches, p, (H, W) if H != W or data.draw(st.booleans()) else H, C)
    assert torch.equal(back, imgs)
    # patchify and unpatchify are permutations: the gradient is the upstream one moved back
    w = torch.randn(
        patches.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    ).to(dtype)
    (g,) = torch.autograd.grad(pk.unpatchify(patches * w, p, (H, W), C).sum(), leaf)
    (want,) = torch.autograd.grad((unfold_patchify(spec.view(leaf), p) * w).sum(), leaf)
    assert torch.equal(g, want)
    assert torch.equal(pk.patchify(pk.unpatchify(w, p, (H, W), C), p), w)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_gather_patches(backend, data):
    dtype, dev = data.draw(dtypes(backend)), backend_device(backend)
    N, C, H, W, p = data.draw(image_shape(backend))
    L = (H // p) * (W // p)
    K = data.draw(st.integers(0, L))
    imgs = data.draw(specs((N, C, H, W), dtype))
    perm = data.draw(permutations(N, L))
    ids_layout = data.draw(st.sampled_from(["contiguous", "transposed"]))
    ids = perm[:, :K].to(dev)
    if ids_layout == "transposed":  # column-major ids
        ids = ids.t().contiguous().t()
    describe(backend=backend, imgs=imgs, patch_size=p, ids_keep=ids.tolist(), ids_layout=ids_layout)
    compare(
        lambda u: pk.gather_patches(imgs.view(u), ids, p, backend=backend),
        lambda u: ref.gather_patches(imgs.view(u), ids, p),
        [imgs.leaf(dev)],
        dtype,
        exact=(0,),
        what="gather_patches",
        backend=backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_unshuffle_with_mask_tokens(backend, data):
    dtype, dev = data.draw(dtypes(backend)), backend_device(backend)
    N, L, D = data.draw(rows(backend, 5)), data.draw(sizes(backend)), data.draw(sizes(backend))
    K = data.draw(st.integers(0, L))
    x = data.draw(specs((N, K, D), dtype))
    token_dtype = data.draw(st.sampled_from([dtype, torch.float32]))
    token_shape = data.draw(st.sampled_from([(D,), (1, 1, D)]))
    tok = data.draw(specs(token_shape, token_dtype, layouts=("contiguous", "sliced"), stream=1))
    ids = data.draw(permutations(N, L)).to(dev)
    describe(backend=backend, x_visible=x, mask_token=tok, ids_restore=ids.tolist())
    compare(
        lambda u, m: pk.unshuffle_with_mask_tokens(x.view(u), tok.view(m), ids, backend=backend),
        lambda u, m: ref.unshuffle_with_mask_tokens(x.view(u), tok.view(m), ids),
        [x.leaf(dev), tok.leaf(dev, data.draw(st.booleans()))],
        dtype,
        exact=(0,),
        what="unshuffle",
        backend=backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_masked_patch_loss(backend, data):
    dtype, dev = data.draw(dtypes(backend)), backend_device(backend)
    N, C, H, W, p = data.draw(image_shape(backend))
    L, P = (H // p) * (W // p), p * p * C
    hi = 30.0 if dtype == torch.float16 else 1e4  # float16 squares of 1e4 overflow
    pred, imgs = (
        data.draw(specs((N, L, P), dtype, hi=hi)),
        data.draw(specs((N, C, H, W), dtype, hi=hi, stream=1)),
    )
    kind = data.draw(st.sampled_from(["binary", "weights", "zeros", "ones"]))
    g = torch.Generator().manual_seed(data.draw(seeds()))
    mask = {
        "binary": (torch.rand(N, L, generator=g) < 0.75).double(),
        "weights": torch.rand(N, L, generator=g),
        "zeros": torch.zeros(N, L),
        "ones": torch.ones(N, L),
    }[kind]
    mask = mask.to(dev, data.draw(st.sampled_from([dtype, torch.float32]))).requires_grad_(
        data.draw(st.booleans())
    )
    norm = data.draw(st.booleans())
    describe(
        backend=backend, pred=pred, imgs=imgs, patch_size=p, mask=mask.tolist(), norm_pix_loss=norm
    )
    target = imgs.view(imgs.leaf(dev, False))  # data: no gradient
    compare(
        lambda u, m: pk.masked_patch_loss(
            pred.view(u), target, m, p, norm_pix_loss=norm, backend=backend
        ),
        lambda u, m: ref.masked_patch_loss(pred.view(u), target.to(u.dtype), m, p, norm),
        [pred.leaf(dev), mask],
        dtype,
        what="masked_patch_loss",
        backend=backend,
        grad_tol=[None]
        + (
            [mask_grad_tolerance(pred.view(pred.leaf("cpu")), target.cpu(), mask, p, norm, dtype)]
            if mask.requires_grad
            else []
        ),
    )


def mask_grad_tolerance(pred, target, mask, p, norm, dtype):
    """The mask's gradient (l_k - loss) / sum(mask) is a difference of patch losses l_k
    that are each rounded in the accumulation dtype: known to ~eps (|l_k| + |loss|) /
    sum(mask) per element, whatever the formulation (PyTorch's included). Patch losses
    nearly equal make that a large relative error (norm_pix_loss losses of 0.7494 and
    0.7510: a gradient 1.7e-4 off where PyTorch's is 2.5e-5 off).
    The tolerance: the dtype's, or 16 such roundings, capped at 1 (NaN, Inf, a wrong
    shape still fail)."""
    l64 = ref.patch_loss(pred.detach().double(), target.double(), p, norm)
    m64 = mask.detach().double().cpu()
    total = m64.sum()
    loss = (l64 * m64).sum() / total
    grad = (l64 - loss) / total
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    bound = (16 * eps * (l64.abs() + loss.abs()) / total.abs()).norm().item()
    size = grad.norm().item()
    if not math.isfinite(bound) or size == 0:
        return None if not math.isfinite(bound) else 1.0
    return max(TOLERANCE[dtype], min(1.0, bound / size))
