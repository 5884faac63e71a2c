"""MAE family: random_masking, patchify/unpatchify, gather_patches,
unshuffle_with_mask_tokens, masked_patch_loss."""

import pytest
import torch

import pykernels as pk
from pykernels.reference import mae as ref

from .helpers import (
    ALL_BACKENDS,
    COMPILE_BACKENDS,
    FUSED_BACKENDS,
    as64,
    assert_close,
    assert_compiles_fullgraph,
    backend_device,
    dtypes_for,
    grads,
    opcheck_test,
    peak_cpu_bytes,
    poisoned,
    randn,
)

# --------------------------------------------------------------------------- the published algorithm, plainly


def mae_random_masking(x, mask_ratio, noise):
    """MAE's random_masking as released (models_mae.py), transcribed without shortcuts."""
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L])
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


def loop_patchify(imgs, p):
    N, C, H, W = imgs.shape
    h, w = H // p, W // p
    out = torch.empty(N, h * w, p * p * C, dtype=imgs.dtype)
    for n in range(N):
        for i in range(h):
            for j in range(w):
                for pi in range(p):
                    for pj in range(p):
                        for c in range(C):
                            out[n, i * w + j, (pi * p + pj) * C + c] = imgs[
                                n, c, i * p + pi, j * p + pj
                            ]
    return out


def loop_loss(pred, imgs, mask, p, norm):
    target = loop_patchify(imgs, p)
    total, count = 0.0, 0.0
    for n in range(pred.shape[0]):
        for l in range(pred.shape[1]):
            t = target[n, l].tolist()
            if norm:
                mean = sum(t) / len(t)
                var = sum((v - mean) ** 2 for v in t) / (len(t) - 1)
                t = [(v - mean) / (var + 1e-6) ** 0.5 for v in t]
            per = sum((a - b) ** 2 for a, b in zip(pred[n, l].tolist(), t)) / len(t)
            total += per * mask[n, l].item()
            count += mask[n, l].item()
    return total / count


def test_reference_is_published_mae():
    x, noise = (
        randn(3, 20, 5, seed=1),
        torch.rand(3, 20, generator=torch.Generator().manual_seed(2)),
    )
    for ratio in (0.0, 0.75, 0.9):
        got, want = ref.random_masking(x, ratio, noise), mae_random_masking(x, ratio, noise)
        for g, w in zip(got, want):
            assert torch.equal(g, w.to(g.dtype))
    # int(20 * (1 - 0.9)) is int(1.9999999999999996) = 1, as in MAE's code: kept faithfully
    assert ref.random_masking(x, 0.9, noise)[0].shape == (3, 1, 5)


def test_reference_patchify_and_loss_by_loops():
    imgs = randn(2, 3, 4, 6, dtype=torch.float64, seed=3)
    assert torch.equal(ref.patchify(imgs, 2), loop_patchify(imgs, 2))
    pred = randn(2, 6, 12, dtype=torch.float64, seed=4)
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float64)
    for norm in (False, True):
        got = ref.masked_patch_loss(pred, imgs, mask, 2, norm)
        assert got.item() == pytest.approx(loop_loss(pred, imgs, mask, 2, norm), rel=1e-12)


def test_reference_unshuffle_by_loops():
    xv, tok = randn(2, 3, 4, seed=5), randn(4, seed=6)
    ids = torch.stack(
        [torch.randperm(7, generator=torch.Generator().manual_seed(s)) for s in (7, 8)]
    )
    out = ref.unshuffle_with_mask_tokens(xv, tok, ids)
    for n in range(2):
        for l in range(7):
            r = ids[n, l].item()
            assert torch.equal(out[n, l], xv[n, r] if r < 3 else tok)


@pytest.mark.parametrize("C, H, W, p", [(3, 8, 12, 4), (1, 6, 6, 3), (2, 4, 10, 2)])
def test_patchify_roundtrip(C, H, W, p):
    imgs = randn(2, C, H, W, seed=9, requires_grad=True)
    patches = pk.patchify(imgs, p)
    assert torch.equal(patches, loop_patchify(imgs.detach(), p))
    back = pk.unpatchify(patches, p, (H, W), C)
    assert torch.equal(back, imgs)
    back.sum().backward()
    assert torch.equal(imgs.grad, torch.ones_like(imgs))
    if H == W:
        assert torch.equal(pk.unpatchify(patches, p, H, C), imgs)


def test_argsort_is_stable_on_ties():
    """Tied noise keeps the lower token index first, as torch.argsort(stable=True)."""
    noise = torch.tensor([[0.5, 0.1, 0.5, 0.1, 0.3]])
    x = torch.arange(5.0).reshape(1, 5, 1)
    for be in ("reference", "cpu"):
        xv, mask, ids = pk.random_masking(x, 0.4, noise=noise, backend=be)
        assert xv.flatten().tolist() == [1.0, 3.0, 4.0]
        assert ids.tolist() == [[3, 0, 4, 1, 2]]


# --------------------------------------------------------------------------- every backend vs reference


def _ids(N, L, K, seed, device="cpu"):
    """(ids_keep [N, K], ids_restore [N, L]) of random permutations."""
    noise = torch.rand(N, L, generator=torch.Generator().manual_seed(seed))
    shuffle, restore = ref.shuffle_ids(noise)
    return shuffle[:, :K].to(device), restore.to(device)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("ratio", [0.0, 0.75, 0.9])
def test_random_masking(backend, ratio):
    dev = backend_device(backend)
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(1)).to(dev)
    for dtype in dtypes_for(backend):
        x = randn(3, 16, 24, dtype=dtype, device=dev, seed=2, requires_grad=True)
        with poisoned():
            xv, mask, ids = pk.random_masking(x, ratio, noise=noise, backend=backend)
            (gx,) = grads(xv, [x])
        wv, wmask, wids = mae_random_masking(x.detach().cpu(), ratio, noise.cpu())
        assert xv.dtype == dtype and mask.dtype == dtype and ids.dtype == torch.int64
        assert (
            torch.equal(xv.cpu(), wv)
            and torch.equal(mask.cpu(), wmask.to(dtype))
            and torch.equal(ids.cpu(), wids)
        )
        r = x.detach().clone().requires_grad_()
        (wg,) = grads(ref.random_masking(r, ratio, noise)[0], [r])
        assert torch.equal(gx, wg)  # a gather's gradient is exact: copies and zeros
    if ratio == 0.9:
        assert xv.shape == (3, 1, 24)  # L_keep = int(16 * 0.1) = 1


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("C, H, W, p", [(3, 8, 12, 4), (1, 12, 8, 2)])
def test_gather_patches(backend, C, H, W, p):
    dev = backend_device(backend)
    L = (H // p) * (W // p)
    for K in (1, L // 4, L):
        keep, _ = _ids(2, L, K, seed=K, device=dev)
        for dtype in dtypes_for(backend):
            imgs = randn(2, C, H, W, dtype=dtype, device=dev, seed=3, requires_grad=True)
            with poisoned():
                out = pk.gather_patches(imgs, keep, p, backend=backend)
                (g,) = grads(out, [imgs])
            r = imgs.detach().clone().requires_grad_()
            want = ref.gather_patches(r, keep, p)
            (wg,) = grads(want, [r])
            assert out.dtype == dtype and torch.equal(out, want)
            assert torch.equal(g, wg)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("K", [0, 1, 5, 12])
def test_unshuffle_with_mask_tokens(backend, K):
    dev = backend_device(backend)
    _, restore = _ids(3, 12, K, seed=4, device=dev)
    for dtype in dtypes_for(backend):
        xv = randn(3, K, 40, dtype=dtype, device=dev, seed=5, requires_grad=True)
        tok = randn(1, 1, 40, dtype=dtype, device=dev, seed=6, requires_grad=True)
        with poisoned():
            out = pk.unshuffle_with_mask_tokens(xv, tok, restore, backend=backend)
            gx, gt = grads(out, [xv, tok])
        assert out.dtype == dtype and out.shape == (3, 12, 40)
        r = as64(xv, tok)
        want = ref.unshuffle_with_mask_tokens(r[0], r[1], restore)
        wx, wt = grads(want, r)
        b = [x.detach().clone().requires_grad_() for x in (xv, tok)]
        _, bt = grads(ref.unshuffle_with_mask_tokens(b[0], b[1], restore), b)
        assert torch.equal(out.double(), want)
        assert torch.equal(gx, wx.to(dtype))  # copies of the same weights, rounded once
        assert gt.shape == tok.shape
        assert_close(gt, wt, dtype, baseline=bt, what="grad mask_token")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("C, H, W, p", [(3, 8, 12, 4), (1, 6, 4, 2)])
def test_masked_patch_loss(backend, norm, C, H, W, p):
    dev = backend_device(backend)
    L, P = (H // p) * (W // p), p * p * C
    _, restore = _ids(2, L, L // 4, seed=7)
    mask = (restore >= L // 4).double().to(dev)
    for dtype in dtypes_for(backend):
        pred = randn(2, L, P, dtype=dtype, device=dev, seed=8, requires_grad=True)
        imgs = randn(2, C, H, W, dtype=dtype, device=dev, seed=9, scale=2.0) + 0.5
        with poisoned():
            loss = pk.masked_patch_loss(
                pred, imgs, mask.to(dtype), p, norm_pix_loss=norm, backend=backend
            )
            (g,) = grads(loss, [pred])
        assert (
            loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            and loss.dim() == 0
        )
        r, i64 = as64(pred, imgs)
        want = ref.masked_patch_loss(r, i64, mask, p, norm)
        (wg,) = grads(want, [r])
        b = pred.detach().clone().requires_grad_()
        base = ref.masked_patch_loss(
            b, imgs, mask.to(dtype), p, norm
        )  # the same math in the inputs' dtype
        (bg,) = grads(base, [b])
        assert_close(loss, want, dtype, baseline=base)
        assert_close(g, wg, dtype, baseline=bg, what="grad pred")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_loss_of_no_removed_patch_is_nan(backend):
    """mask.sum() == 0 (mask_ratio 0): NaN, as MAE's sum(loss * mask) / sum(mask) gives."""
    dev = backend_device(backend)
    pred = randn(1, 4, 12, device=dev, seed=1, requires_grad=True)
    loss = pk.masked_patch_loss(
        pred,
        randn(1, 3, 4, 4, device=dev, seed=2),
        torch.zeros(1, 4, device=dev),
        2,
        backend=backend,
    )
    assert torch.isnan(loss)
    loss.backward()
    assert torch.isnan(pred.grad).all()


# --------------------------------------------------------------------------- ids: out of range and duplicates

BAD_IDS = {
    "out of range": [[0, 6], [1, 2]],
    "negative": [[-1, 0], [1, 2]],
    "duplicate": [[3, 3], [1, 2]],
}


@pytest.mark.parametrize(
    "backend", [p for p in ALL_BACKENDS if p.id in ("cpu", "reference", "triton")]
)
@pytest.mark.parametrize("kind", list(BAD_IDS))
def test_bad_ids_raise_on_cpu(backend, kind):
    if backend == "triton" and not pk.backends.triton_interpreted():
        pytest.skip("triton runs on CPU tensors only under the interpreter")
    ids = torch.tensor(BAD_IDS[kind])
    exc = ValueError if kind == "duplicate" else IndexError
    imgs = randn(2, 3, 4, 6, seed=1)
    with pytest.raises(exc, match="ids_keep"):
        pk.gather_patches(imgs, ids, 2, backend=backend)
    restore = torch.tensor([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    restore[0, :2] = ids[0]
    with pytest.raises(exc, match="ids_restore"):
        pk.unshuffle_with_mask_tokens(
            randn(2, 2, 4, seed=2), torch.zeros(4), restore, backend=backend
        )


@pytest.mark.parametrize("backend", [p for p in FUSED_BACKENDS if p.id in ("cuda", "triton")])
def test_bad_ids_poison_on_device_backends(backend):
    """cuda / triton cannot raise without a host sync: an out-of-range id gives a NaN
    output row, a repeated id NaN gradient rows; every other row is still right. On CPU
    tensors the public functions raise on every backend, so there the Triton ops are
    called directly (their kernels behave as on a GPU)."""
    dev = backend_device(backend)
    gather_patches, unshuffle = pk.gather_patches, pk.unshuffle_with_mask_tokens
    if dev.type == "cpu":

        def gather_patches(imgs, ids, p, backend):
            return torch.ops.pykernels.gather_patches_triton(imgs, ids, p)

        def unshuffle(xv, tok, ids, backend):
            return torch.ops.pykernels.unshuffle_with_mask_tokens_triton(xv, tok, ids)

    imgs = randn(2, 3, 4, 6, device=dev, seed=1, requires_grad=True)
    ids = torch.tensor([[0, 6], [-1, 2]], device=dev)
    out = gather_patches(imgs, ids, 2, backend=backend)
    assert torch.isnan(out[0, 1]).all() and torch.isnan(out[1, 0]).all()
    assert torch.equal(out[0, 0], pk.patchify(imgs, 2)[0, 0]) and torch.equal(
        out[1, 1], pk.patchify(imgs, 2)[1, 2]
    )
    dup = torch.tensor([[3, 3], [1, 2]], device=dev)
    out = gather_patches(imgs, dup, 2, backend=backend)
    assert torch.isfinite(out).all()  # the forward of a repeated id is well defined
    (g,) = torch.autograd.grad(out.sum(), [imgs])
    gp = pk.patchify(g, 2)
    assert (
        torch.isnan(gp[0, 3]).all()
        and torch.isfinite(gp[1]).all()
        and (gp[0, [0, 1, 2, 4, 5]] == 0).all()
    )

    xv = randn(2, 2, 8, device=dev, seed=2, requires_grad=True)
    restore = torch.tensor([[0, 1, 2, 3, 4, 9], [1, 1, 2, 3, 4, 5]], device=dev)
    out = unshuffle(xv, torch.zeros(8, device=dev), restore, backend=backend)
    assert (
        torch.isnan(out[0, 5]).all()
        and torch.isfinite(out[0, :5]).all()
        and torch.isfinite(out[1]).all()
    )
    (gx,) = torch.autograd.grad(out[1].sum(), [xv])
    assert torch.isnan(gx[1, 1]).all() and (gx[1, 0] == 0).all() and (gx[0] == 0).all()


# --------------------------------------------------------------------------- randomness, determinism, memory


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_reproducible_from_noise_and_generator(backend):
    dev = backend_device(backend)
    x = randn(4, 32, 8, device=dev, seed=1)

    def run(seed):
        return pk.random_masking(
            x, 0.75, generator=torch.Generator(dev).manual_seed(seed), backend=backend
        )

    a, b, c = run(5), run(5), run(6)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[2], c[2])
    noise = torch.rand(4, 32, generator=torch.Generator(dev).manual_seed(5), device=dev)
    d = pk.random_masking(x, 0.75, noise=noise, backend=backend)
    assert all(torch.equal(u, v) for u, v in zip(a, d))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_deterministic(backend):
    dev = backend_device(backend)
    imgs = randn(3, 3, 8, 8, device=dev, seed=1, requires_grad=True)
    tok = randn(48, device=dev, seed=2, requires_grad=True)
    keep, restore = _ids(3, 16, 4, seed=3, device=dev)
    mask = (restore >= 4).float()
    runs = []
    for _ in range(2):
        vis = pk.gather_patches(imgs, keep, 2, backend=backend)
        full = pk.unshuffle_with_mask_tokens(vis.repeat(1, 1, 4), tok, restore, backend=backend)
        loss = pk.masked_patch_loss(
            full[..., :12] * 3, imgs, mask, 2, norm_pix_loss=True, backend=backend
        )
        runs.append((loss, *torch.autograd.grad(loss, [imgs, tok])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_gather_patches_never_builds_all_patches():
    imgs = randn(8, 3, 64, 64, seed=1)
    keep, _ = _ids(8, 64, 16, seed=2)
    all_patches = imgs.numel() * 4
    peak = peak_cpu_bytes(lambda: pk.gather_patches(imgs, keep, 8, backend="cpu"))
    assert 0 < peak < all_patches / 2, f"peak {peak} bytes"


def test_random_masking_builds_no_index_tensor():
    x, noise = randn(8, 64, 256, seed=1), torch.rand(8, 64)
    out_bytes = 8 * 16 * 256 * 4  # x_visible; an expanded int64 index would be twice that
    peak = peak_cpu_bytes(lambda: pk.random_masking(x, 0.75, noise=noise, backend="cpu"))
    assert 0 < peak < 1.5 * out_bytes, f"peak {peak} bytes"


@pytest.mark.filterwarnings(
    "ignore:var\\(\\). degrees of freedom"
)  # torch's, for the no-channel image
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_and_empty(backend):
    dev = backend_device(backend)
    imgs = randn(2, 8, 12, 3, device=dev, seed=1).permute(0, 3, 1, 2)  # channels-last storage
    keep, restore = _ids(2, 6, 3, seed=2, device=dev)
    keep_t = keep.t().contiguous().t()
    assert torch.equal(
        pk.gather_patches(imgs, keep_t, 4, backend=backend), ref.gather_patches(imgs, keep, 4)
    )
    xv = randn(2, 16, 3, device=dev, seed=3).transpose(1, 2)
    assert torch.equal(
        pk.unshuffle_with_mask_tokens(xv, torch.ones(16, device=dev), restore, backend=backend),
        ref.unshuffle_with_mask_tokens(xv, torch.ones(16, device=dev), restore),
    )
    pred = randn(2, 6, 48, device=dev, seed=4).transpose(0, 1).contiguous().transpose(0, 1)
    mask = (restore >= 3).float()
    torch.testing.assert_close(
        pk.masked_patch_loss(pred, imgs, mask, 4, backend=backend),
        ref.masked_patch_loss(pred, imgs, mask, 4),
    )
    x = randn(0, 8, 4, device=dev, requires_grad=True)
    xv, mask, ids = pk.random_masking(x, 0.5, backend=backend)
    assert xv.shape == (0, 4, 4) and mask.shape == (0, 8) and ids.shape == (0, 8)
    e = pk.gather_patches(
        torch.zeros(0, 3, 4, 4, device=dev),
        torch.zeros(0, 2, dtype=torch.int64, device=dev),
        2,
        backend=backend,
    )
    assert e.shape == (0, 2, 12)
    no_channels = pk.masked_patch_loss(
        torch.zeros(1, 4, 0, device=dev),
        torch.zeros(1, 0, 4, 4, device=dev),
        torch.ones(1, 4, device=dev),
        2,
        norm_pix_loss=True,
        backend=backend,
    )
    assert torch.isnan(no_channels)  # a mean over no pixels, as the reference gives


# --------------------------------------------------------------------------- autograd, opcheck, compile


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    imgs = randn(2, 2, 4, 6, dtype=torch.float64, seed=1, requires_grad=True)
    keep, restore = _ids(2, 6, 2, seed=2)
    assert torch.autograd.gradcheck(
        lambda i: pk.gather_patches(i, keep, 2, backend=backend), (imgs,)
    )
    xv = randn(2, 2, 5, dtype=torch.float64, seed=3, requires_grad=True)
    tok = randn(5, dtype=torch.float64, seed=4, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: pk.unshuffle_with_mask_tokens(a, b, restore, backend=backend), (xv, tok)
    )
    pred = randn(2, 6, 8, dtype=torch.float64, seed=5, requires_grad=True)
    mask = (restore >= 2).double()
    for norm in (False, True):
        assert torch.autograd.gradcheck(
            lambda p: pk.masked_patch_loss(
                p, imgs.detach(), mask, 2, norm_pix_loss=norm, backend=backend
            ),
            (pred,),
        )
    x, noise = randn(2, 6, 3, dtype=torch.float64, seed=6, requires_grad=True), torch.rand(2, 6)
    assert torch.autograd.gradcheck(
        lambda a: pk.random_masking(a, 0.5, noise=noise, backend=backend)[0], (x,)
    )


def _opcheck_cases(dev):
    imgs = randn(2, 3, 4, 6, device=dev, seed=1)
    keep, restore = _ids(2, 6, 2, seed=2, device=dev)
    x = randn(2, 6, 8, device=dev, seed=3)
    pred = randn(2, 6, 12, device=dev, seed=4)
    mask = (restore >= 2).float()
    return [
        ("random_masking", (x.requires_grad_(), 0.75, torch.rand(2, 6, device=dev))),
        ("random_masking_backward", (randn(2, 2, 8, device=dev, seed=5), restore)),
        (
            "unshuffle_with_mask_tokens",
            (
                randn(2, 2, 8, device=dev, seed=6).requires_grad_(),
                randn(8, device=dev, seed=7).requires_grad_(),
                restore,
            ),
        ),
        ("unshuffle_with_mask_tokens_backward", (x.detach(), restore, 2)),
        ("gather_patches", (imgs.clone().requires_grad_(), keep, 2)),
        ("gather_patches_backward", (randn(2, 2, 12, device=dev, seed=8), keep, 2, 3, 4, 6)),
        ("masked_patch_loss", (pred.requires_grad_(), imgs, mask.requires_grad_(), 2, True)),
        ("masked_patch_loss", (pred, imgs, mask.double(), 2, False)),
        (
            "masked_patch_loss_backward",
            (torch.tensor(0.7, device=dev), pred.detach(), imgs, mask.detach(), 2, True),
        ),
    ]


test_opcheck = opcheck_test(_opcheck_cases)


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_fullgraph(backend):
    dev = backend_device(backend)

    def step(imgs, tokens, tok, noise):
        xv, mask, ids = pk.random_masking(tokens, 0.75, noise=noise, backend=backend)
        keep = torch.argsort(noise, dim=1)[:, : xv.shape[1]]
        vis = pk.gather_patches(imgs, keep, 2, backend=backend)
        full = pk.unshuffle_with_mask_tokens(xv + vis, tok, ids, backend=backend)
        return pk.masked_patch_loss(
            full, imgs.detach(), mask, 2, norm_pix_loss=True, backend=backend
        )

    def want(imgs, tokens, tok, noise):
        xv, mask, ids = ref.random_masking(tokens, 0.75, noise)
        keep = torch.argsort(noise, dim=1)[:, : xv.shape[1]]
        full = ref.unshuffle_with_mask_tokens(xv + ref.gather_patches(imgs, keep, 2), tok, ids)
        return ref.masked_patch_loss(full, imgs.detach(), mask, 2, True)

    imgs = randn(2, 3, 4, 8, device=dev, seed=1, requires_grad=True)
    tokens = randn(2, 8, 12, device=dev, seed=2, requires_grad=True)
    tok = randn(12, device=dev, seed=3, requires_grad=True)
    noise = torch.rand(2, 8, generator=torch.Generator().manual_seed(4)).to(dev)
    fp32 = (1.3e-6, 1e-5)  # assert_close's float32 default
    args = (imgs, tokens, tok, noise)
    assert_compiles_fullgraph(step, want, args, [imgs, tokens, tok], dev, tol=fp32, grad_tol=fp32)


# --------------------------------------------------------------------------- modules


def test_modules():
    x, noise = randn(2, 16, 12, seed=1), torch.rand(2, 16)
    xv, mask, ids = pk.nn.RandomMasking(0.75)(x, noise=noise)
    assert all(
        torch.equal(a, b) for a, b in zip((xv, mask, ids), ref.random_masking(x, 0.75, noise))
    )
    unshuffle = pk.nn.MaskTokenUnshuffle(12)
    assert unshuffle.mask_token.shape == (1, 1, 12)
    out = unshuffle(xv, ids)
    assert torch.equal(out, ref.unshuffle_with_mask_tokens(xv, unshuffle.mask_token, ids))
    out.sum().backward()
    assert unshuffle.mask_token.grad is not None
    imgs, pred = randn(2, 3, 8, 8, seed=2), randn(2, 16, 12, seed=3)
    torch.testing.assert_close(
        pk.nn.MaskedPatchLoss(2, norm_pix_loss=True)(pred, imgs, mask),
        ref.masked_patch_loss(pred, imgs, mask, 2, True),
    )


def _train_tiny_mae(backend, steps=15):
    """A linear MAE (embed -> unshuffle with a mask token + decoder position embedding
    -> head) trained with Adam."""
    torch.manual_seed(0)
    p, C, dim = 4, 3, 16
    embed, head = torch.nn.Linear(p * p * C, dim), torch.nn.Linear(dim, p * p * C)
    unshuffle = pk.nn.MaskTokenUnshuffle(dim, backend=backend)
    loss_fn = pk.nn.MaskedPatchLoss(p, backend=backend)
    pos = torch.nn.Parameter(torch.zeros(1, 6, dim))
    params = [*embed.parameters(), *head.parameters(), *unshuffle.parameters(), pos]
    opt = torch.optim.Adam(params, lr=0.05)
    gen = torch.Generator().manual_seed(1)
    pattern = torch.randn(1, C, 8, 12, generator=gen)  # learnable: the mask token can predict it
    losses = []
    for _ in range(steps):
        imgs = pattern + 0.1 * torch.randn(4, C, 8, 12, generator=gen)
        tokens = embed(pk.patchify(imgs, p))
        visible, mask, ids_restore = pk.random_masking(tokens, 0.5, generator=gen, backend=backend)
        loss = loss_fn(head(unshuffle(visible, ids_restore) + pos), imgs, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("backend", [p for p in FUSED_BACKENDS if p.id in ("cpu", "triton")])
def test_training_parity(backend):
    """A few Adam steps with the fused ops follow the reference's loss curve."""
    if backend_device(backend).type != "cpu":
        pytest.skip("CPU parity run")
    want, got = _train_tiny_mae("reference"), _train_tiny_mae(backend)
    assert want[-1] < 0.5 * want[0]  # it learns
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- bad input
