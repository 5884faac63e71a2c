"""Huge tensors: more than 2^31 elements through the element-wise and gather ops, so any
int32 offset in a kernel overflows. Values at the far end (past element 2^31) are
checked against closed forms computed on slices; no full-size float64 reference (it
would not fit in memory).

The inputs repeat a random pattern of a prime period, so a read from a wrapped or
truncated offset gives a different value. bf16 tensors: 2 bytes an element, 4 GiB per
tensor; each test keeps at most three of them alive (<= 12 GiB) and frees them before it
returns. On CPU only the `cpu` backend runs here (the Triton interpreter would take hours
over 2^31 elements); benchmarks/gpu_check.sh runs this file on a GPU, where the cuda and
triton backends join.
"""

import gc
import math

import pytest
import torch

import pykernels as pk
from pykernels.reference import mae as mae_ref

pytestmark = pytest.mark.slow

BIG = 2**31
PERIOD = 65521  # prime: 2^31 and 2^32 are not multiples of it
DTYPE = torch.bfloat16
BACKENDS = ["cpu"] + (["cuda", "triton"] if torch.cuda.is_available() else [])
TABLE = pk.make_schedule(1000)


def _device(backend):
    return torch.device("cuda" if backend in ("cuda", "triton") else "cpu")


def _need_gib(gib, device):
    """Skip when the machine lacks the memory (a real absence, not a failure)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info()[0] / 2**30
    else:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        free = int(info["MemAvailable"].split()[0]) / 2**20
    if free < gib + 1:
        pytest.skip(f"needs {gib} GiB free memory, {free:.1f} GiB available")


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _pattern(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(PERIOD, generator=g).to(DTYPE).to(device)


def _periodic(shape, device, seed=0):
    """A tensor of `shape` whose flat element i is pattern[i % PERIOD]."""
    pat = _pattern(device, seed)
    total = math.prod(shape)
    x = torch.empty(total, dtype=DTYPE, device=device)
    m = total // PERIOD
    x[: m * PERIOD].view(m, PERIOD).copy_(pat.expand(m, PERIOD))
    x[m * PERIOD :].copy_(pat[: total - m * PERIOD])
    return x.view(shape), pat


def _windows(total):
    """Flat index ranges to check: around 2^31, and the last elements."""
    return [(BIG - 2048, min(BIG + 2048, total)), (total - 4096, total)]


def _at(pat, a, b):
    """The periodic input's values at flat indices [a, b), float64 on CPU."""
    return pat.cpu().double()[torch.arange(a, b) % PERIOD]


def _close(got, want, what):
    torch.testing.assert_close(
        got.detach().cpu().double(), want, rtol=1e-2, atol=1e-5, msg=lambda m: f"{what}: {m}"
    )


# ------------------------------------------------------------------------ element-wise
@pytest.mark.parametrize("backend", BACKENDS)
def test_mix_and_loss_past_2_31(backend):
    """add_noise, get_velocity and diffusion_loss on [2, 2^30 + 4096] (x0 = noise = one
    periodic tensor), so sample 1's elements sit past flat index 2^31."""
    dev = _device(backend)
    _need_gib(8.5, dev)
    N, D = 2, 2**30 + 4096
    x, pat = _periodic((N, D), dev)
    t = torch.tensor([10, 700], device=dev)
    table = TABLE.to(dev)
    a = TABLE.double()[t.cpu()]
    for fn, coef in (
        (pk.add_noise, a.sqrt() + (1 - a).sqrt()),
        (pk.get_velocity, a.sqrt() - (1 - a).sqrt()),
    ):
        out = fn(x, x, t, table, backend=backend)
        assert out.shape == x.shape and out.dtype == DTYPE
        flat = out.view(-1)
        for lo, hi in _windows(N * D):
            n = torch.arange(lo, hi) // D  # the sample of each element
            _close(flat[lo:hi], coef[n] * _at(pat, lo, hi), f"{fn.__name__} [{lo}, {hi})")
        del out, flat
        gc.collect()
    # v-prediction loss with model_output = x0 = noise = x: error c_n * x per element,
    # c_n = 1 - sqrt(a) + sqrt(1 - a); "sum" adds c_n^2 * sum(x^2) over both samples.
    loss = pk.diffusion_loss(
        x, x, x, t, table, prediction_type="v_prediction", reduction="sum", backend=backend
    )
    p2 = pat.cpu().double() ** 2
    full, rest = divmod(D, PERIOD)
    first = full * p2.sum() + p2[:rest].sum()  # sample 0: flat [0, D)
    start1 = D % PERIOD  # sample 1 starts mid-period
    idx = (start1 + torch.arange(PERIOD)) % PERIOD
    second = full * p2[idx].sum() + p2[idx[:rest]].sum()
    c2 = (1 - a.sqrt() + (1 - a).sqrt()) ** 2
    want = c2[0] * first + c2[1] * second
    assert loss.dtype == torch.float32
    assert abs(loss.item() - want.item()) <= 1e-3 * want.item(), (loss.item(), want.item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddim_step_past_2_31(backend):
    """ddim_step (eta 0, epsilon) with model_output = sample = one periodic tensor:
    x0 = x (1 - sqrt(1 - a)) / sqrt(a), prev = sqrt(a') x0 + sqrt(1 - a') x."""
    dev = _device(backend)
    _need_gib(12.5, dev)
    N, D = 2, 2**30 + 4096
    x, pat = _periodic((N, D), dev, seed=1)
    t, prev = torch.tensor([700, 500], device=dev), torch.tensor([680, 480], device=dev)
    prev_sample, x0 = pk.ddim_step(x, t, prev, x, TABLE.to(dev), backend=backend)
    a, ap = TABLE.double()[t.cpu()], TABLE.double()[prev.cpu()]
    c0 = (1 - (1 - a).sqrt()) / a.sqrt()
    cp = ap.sqrt() * c0 + (1 - ap).sqrt()
    for lo, hi in _windows(N * D):
        n = torch.arange(lo, hi) // D
        v = _at(pat, lo, hi)
        _close(x0.view(-1)[lo:hi], c0[n] * v, f"ddim pred_original [{lo}, {hi})")
        _close(prev_sample.view(-1)[lo:hi], cp[n] * v, f"ddim prev_sample [{lo}, {hi})")


# ------------------------------------------------------------------------ gather
def _patch(imgs_cpu_crop, p):
    """The one patch of a [1, C, p, p] crop in MAE's (pi, pj, c) order."""
    return mae_ref.patchify(imgs_cpu_crop, p)[0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_patches_past_2_31(backend):
    """gather_patches forward and backward, and patchify, on images [2, 1, 32768, 32784]
    (2^31 + 2^20 elements): patches in the last rows of image 1 lie past 2^31."""
    dev = _device(backend)
    _need_gib(8.5, dev)
    N, C, H, W, p = 2, 1, 32768, 32784, 16
    imgs, _ = _periodic((N, C, H, W), dev, seed=2)
    h, w = H // p, W // p
    L = h * w
    ids = torch.tensor([[0, L - 1, L // 2], [L - 1, L - 2, (h - 1) * w]], device=dev)
    imgs.requires_grad_()
    out = pk.gather_patches(imgs, ids, p, backend=backend)
    assert out.shape == (N, 3, p * p * C)
    for n in range(N):
        for k, l in enumerate(ids[n].tolist()):
            i, j = divmod(l, w)
            crop = imgs.detach()[n : n + 1, :, i * p : (i + 1) * p, j * p : (j + 1) * p].cpu()
            assert torch.equal(out[n, k].detach().cpu(), _patch(crop, p)), (
                f"gather_patches n={n} patch {l}"
            )
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DTYPE).to(dev)
    (grad,) = torch.autograd.grad(out, imgs, g)
    del out
    gc.collect()
    for n in range(N):
        for k, l in enumerate(ids[n].tolist()):
            i, j = divmod(l, w)
            crop = grad[n : n + 1, :, i * p : (i + 1) * p, j * p : (j + 1) * p].cpu()
            assert torch.equal(_patch(crop, p), g[n, k].cpu()), (
                f"gather_patches grad n={n} patch {l}"
            )
    # an unselected patch next to selected ones, at the very end of the tensor, got zero
    assert not grad[1, :, -2 * p : -p, -p:].any()
    del grad
    gc.collect()
    patches = pk.patchify(imgs.detach(), p)
    assert torch.equal(patches[1, -1].cpu(), _patch(imgs.detach()[1:2, :, -p:, -p:].cpu(), p))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unshuffle_and_masking_past_2_31(backend):
    """unshuffle_with_mask_tokens writes [2, 4, 2^28 + 64] (2^31 + 512 elements) from
    x_visible [2, 2, D]; random_masking gathers 2 of 4 tokens from a [2, 4, D] input."""
    dev = _device(backend)
    _need_gib(10.5, dev)
    N, L, K, D = 2, 4, 2, 2**28 + 64
    xv, pat = _periodic((N, K, D), dev, seed=4)
    token = torch.linspace(-1, 1, D, device=dev).to(DTYPE)
    ids_restore = torch.tensor(
        [[2, 0, 3, 1], [3, 2, 1, 0]], device=dev
    )  # row 1: out[1, 3] = xv[1, 0]
    out = pk.unshuffle_with_mask_tokens(xv, token, ids_restore, backend=backend)
    assert out.shape == (N, L, D)
    flat = out.view(-1)
    ids_cpu, token_cpu, pat_cpu = ids_restore.cpu(), token.cpu().double(), pat.cpu().double()
    for lo, hi in _windows(N * L * D):
        i = torch.arange(lo, hi)
        n, l, d = i // (L * D), (i // D) % L, i % D
        r = ids_cpu[n, l]
        from_x = pat_cpu[(n * K * D + r.clamp(max=K - 1) * D + d) % PERIOD]
        want = torch.where(r < K, from_x, token_cpu[d])
        assert torch.equal(flat[lo:hi].cpu().double(), want), f"unshuffle [{lo}, {hi})"
    del out, flat
    gc.collect()
    # random_masking on x = the unshuffled layout's size: keep the 2 tokens of smallest noise
    x, pat = _periodic((N, L, D), dev, seed=5)
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.2], [0.5, 0.6, 0.7, 0.0]], device=dev)
    vis, mask, restore = pk.random_masking(x, 0.5, noise=noise, backend=backend)
    assert vis.shape == (N, K, D)
    for n, keep in ((0, [1, 3]), (1, [3, 0])):
        for k, l in enumerate(keep):
            src = (n * L + l) * D
            for off in (0, D - 2048):
                assert torch.equal(
                    vis[n, k, off : off + 2048].cpu().double(),
                    _at(pat, src + off, src + off + 2048),
                ), f"random_masking n={n} token {l} offset {off}"
