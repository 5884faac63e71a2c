"""Diffusion family: make_schedule, add_noise, get_velocity, diffusion_loss, ddpm_step,
ddim_step, and the diffusers drop-in schedulers."""

import math

import pytest
import torch

import pykernels as pk
from pykernels.reference import diffusion as ref

from .helpers import (
    ALL_BACKENDS,
    COMPILE_BACKENDS,
    CPP_BACKENDS,
    FUSED_BACKENDS,
    TRITON_BACKENDS,
    as64,
    assert_close,
    backend_device,
    compile_backend,
    dtypes_for,
    opcheck_ops,
    poisoned,
    randn,
)

T = 1000
TABLE = pk.make_schedule(T)
SHAPE = (5, 2, 3, 4)  # N = 5 samples of 24 elements
TS = [0, 1, 500, 998, 999]  # mixed timesteps in one batch, incl. 0 and the last
PREV = [-20, -1, 480, 978, 979]  # DDIM: prev < 0 uses final_alpha_cumprod


def _t(values, device):
    return torch.tensor(values, dtype=torch.int64, device=device)


def _leaves(dtype, device, n=3, scale=(1.0, 1.0, 1.0), seed=0):
    return [
        randn(*SHAPE, dtype=dtype, device=device, seed=seed + i, scale=scale[i], requires_grad=True)
        for i in range(n)
    ]


def _vjp(outs, inputs, seed=100):
    """Gradients of sum_k <outs_k, w_k> for fixed random w_k."""
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    ws = [
        randn(*o.shape, dtype=o.dtype, device=o.device, seed=seed + k) for k, o in enumerate(outs)
    ]
    gs = torch.autograd.grad(outs, inputs, ws, allow_unused=True)
    return [
        torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)
    ]  # unused input: zero grad


def _check_against_reference(backend, dtype, run_fused, run_ref, leaves, what):
    """Forward outputs and gradients of a backend against the float64 reference, within the
    precision contract: the dtype's tolerance or twice the error of the same formulas run
    in `dtype` (the reference on the same inputs), whichever is larger."""
    with poisoned():
        outs = run_fused(*leaves)
        outs = (outs,) if isinstance(outs, torch.Tensor) else outs
        got = _vjp(outs, leaves)
    runs = []
    for r in (as64(*leaves), [x.detach().clone().requires_grad_(x.requires_grad) for x in leaves]):
        ref_outs = run_ref(*r)
        ref_outs = (ref_outs,) if isinstance(ref_outs, torch.Tensor) else ref_outs
        runs.append((ref_outs, _vjp(ref_outs, r)))
    (want_outs, want), (base_outs, base) = runs
    for k, (o, w, b) in enumerate(zip(outs, want_outs, base_outs)):
        assert_close(o, w, dtype, baseline=b, what=f"{what} output {k}")
    for k, (g, w, b) in enumerate(zip(got, want, base)):
        assert g.dtype == dtype, f"{what} grad {k} dtype {g.dtype}"
        assert_close(g, w, dtype, baseline=b, what=f"{what} grad {k}")
    return outs


# --------------------------------------------------------------------------- reference vs closed forms


def test_make_schedule_closed_form():
    betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
    want = torch.tensor(betas, dtype=torch.float64).neg().add(1).cumprod(0)
    torch.testing.assert_close(TABLE.double(), want, rtol=1e-5, atol=1e-7)
    cos = pk.make_schedule(T, "squaredcos_cap_v2")
    f = lambda x: math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cos[10].item() == pytest.approx(f(11 / T) / f(0), rel=1e-4)
    sl = pk.make_schedule(T, "scaled_linear", 0.00085, 0.012)
    assert sl[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    assert TABLE.dtype == cos.dtype == sl.dtype == torch.float32


def _scalar_step(kind, m, s, z, a, ap, t, pred, clip, eta=0.0, use_clipped=False):
    """One element of a DDPM / DDIM step, written out with math (float64)."""
    sa, sb = math.sqrt(a), math.sqrt(1 - a)
    x0 = {"epsilon": (s - sb * m) / sa, "sample": m, "v_prediction": sa * s - sb * m}[pred]
    eps = {"epsilon": m, "sample": (s - sa * m) / sb, "v_prediction": sa * m + sb * s}[pred]
    if clip:
        x0 = min(max(x0, -1.0), 1.0)
    if kind == "ddpm":
        beta = 1 - a / ap
        mean = math.sqrt(ap) * beta / (1 - a) * x0 + math.sqrt(a / ap) * (1 - ap) / (1 - a) * s
        sd = math.sqrt(max((1 - ap) / (1 - a) * beta, 1e-20)) if t > 0 else 0.0
        return mean + sd * z, x0
    if use_clipped:
        eps = (s - sa * x0) / sb
    sd = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
    return math.sqrt(ap) * x0 + math.sqrt(max(1 - ap - sd * sd, 0.0)) * eps + sd * z, x0


@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
def test_reference_closed_form_float64(pred):
    table = TABLE.double()
    m, s, z = (randn(len(TS), 3, dtype=torch.float64, seed=i, scale=1.5) for i in range(3))
    t, prev = _t(TS, "cpu"), _t(PREV, "cpu")
    a_of = lambda i: table[i].item() if i >= 0 else None  # noqa: E731
    xt = ref.add_noise(m, z, t, table)
    v = ref.get_velocity(m, z, t, table)
    for n, tn in enumerate(TS):
        a = a_of(tn)
        for j in range(3):
            assert xt[n, j].item() == pytest.approx(
                math.sqrt(a) * m[n, j].item() + math.sqrt(1 - a) * z[n, j].item(), rel=1e-12
            )
            assert v[n, j].item() == pytest.approx(
                math.sqrt(a) * z[n, j].item() - math.sqrt(1 - a) * m[n, j].item(),
                rel=1e-12,
                abs=1e-14,
            )
    out = {
        ("ddpm", False): ref.ddpm_step(
            m, t, s, table, noise=z, prediction_type=pred, clip_sample=True
        ),
        ("ddim", False): ref.ddim_step(
            m,
            t,
            prev,
            s,
            table,
            eta=1.0,
            noise=z,
            prediction_type=pred,
            clip_sample=True,
            final_alpha_cumprod=0.99995,
        ),
        ("ddim", True): ref.ddim_step(
            m,
            t,
            prev,
            s,
            table,
            eta=0.5,
            noise=z,
            prediction_type=pred,
            clip_sample=True,
            use_clipped_model_output=True,
            final_alpha_cumprod=0.99995,
        ),
    }
    for (kind, uc), (prev_sample, x0) in out.items():
        for n, tn in enumerate(TS):
            a = a_of(tn)
            ap = (
                (a_of(tn - 1) if tn >= 1 else 1.0)
                if kind == "ddpm"
                else (a_of(PREV[n]) if PREV[n] >= 0 else 0.99995)
            )
            for j in range(3):
                want, want_x0 = _scalar_step(
                    kind,
                    m[n, j].item(),
                    s[n, j].item(),
                    z[n, j].item(),
                    a,
                    ap,
                    tn,
                    pred,
                    True,
                    eta=1.0 if not uc else 0.5,
                    use_clipped=uc,
                )
                assert prev_sample[n, j].item() == pytest.approx(want, rel=1e-9, abs=1e-12), (
                    kind,
                    uc,
                    n,
                    j,
                )
                assert x0[n, j].item() == pytest.approx(want_x0, rel=1e-9, abs=1e-12)


def test_reference_threshold_matches_formula():
    x0 = randn(3, 40, dtype=torch.float64, seed=3, scale=3.0)
    got = ref._clip_or_threshold(x0, False, 1.0, True, 0.9, 2.5)
    for n in range(3):
        srt = sorted(abs(v) for v in x0[n].tolist())
        pos = 0.9 * (len(srt) - 1)
        lo = int(pos)
        q = srt[lo] + (pos - lo) * (srt[lo + 1] - srt[lo])
        q = min(max(q, 1.0), 2.5)
        want = [min(max(v, -q), q) / q for v in x0[n].tolist()]
        torch.testing.assert_close(got[n], torch.tensor(want, dtype=torch.float64))


# --------------------------------------------------------------------------- every backend vs reference


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_add_noise_and_velocity(backend):
    dev = backend_device(backend)
    t = _t(TS, dev)
    for dtype in dtypes_for(backend):
        leaves = _leaves(dtype, dev, n=2)
        for fn, rfn in ((pk.add_noise, ref.add_noise), (pk.get_velocity, ref.get_velocity)):
            _check_against_reference(
                backend,
                dtype,
                lambda x, z: fn(x, z, t, TABLE.to(dev), backend=backend),
                lambda x, z: rfn(x, z, t, TABLE.to(dev)),
                leaves,
                fn.__name__,
            )
            assert fn(*leaves, t, TABLE.to(dev), backend=backend).dtype == dtype


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_fp16_noise_is_added_at_first_timesteps(backend):
    """alpha_bar rounds to 1 in fp16 at t = 0; coefficients in fp32 keep the noise."""
    dev = backend_device(backend)
    x0 = torch.zeros(2, 8, dtype=torch.float16, device=dev)
    z = torch.ones(2, 8, dtype=torch.float16, device=dev)
    out = pk.add_noise(x0, z, _t([0, 1], dev), TABLE.to(dev), backend=backend)
    want = (1 - TABLE[:2]).sqrt()
    torch.testing.assert_close(out.float().cpu(), want[:, None].expand(2, 8), rtol=1e-3, atol=0)
    assert (out != 0).all()
    # what an fp16 table gives: no noise at all at t = 0
    assert (1 - TABLE[:1].half()).item() == 0.0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
def test_diffusion_loss(backend, pred):
    dev = backend_device(backend)
    t = _t(TS, dev)
    for dtype in dtypes_for(backend):
        leaves = _leaves(dtype, dev)
        for reduction in ("mean", "sum", "none"):
            _check_against_reference(
                backend,
                dtype,
                lambda m, x, z: pk.diffusion_loss(
                    m,
                    x,
                    z,
                    t,
                    TABLE.to(dev),
                    prediction_type=pred,
                    reduction=reduction,
                    backend=backend,
                ),
                lambda m, x, z: ref.diffusion_loss(m, x, z, t, TABLE.to(dev), pred, reduction),
                leaves,
                reduction,
            )
            loss = pk.diffusion_loss(
                *leaves,
                t,
                TABLE.to(dev),
                prediction_type=pred,
                reduction=reduction,
                backend=backend,
            )
            assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize(
    "which", [(True, False, False), (False, True, False), (False, True, True), (True, True, True)]
)
def test_diffusion_loss_grads_only_where_required(backend, which):
    """The backward computes just the gradients autograd needs (usually model_output's);
    each one it computes matches the float64 reference, the others are None."""
    dev = backend_device(backend)
    t = _t(TS, dev)
    leaves = [randn(*SHAPE, seed=40 + i, device=dev, requires_grad=r) for i, r in enumerate(which)]
    loss = pk.diffusion_loss(
        *leaves, t, TABLE.to(dev), prediction_type="v_prediction", backend=backend
    )
    want_leaves = as64(*leaves)
    want = ref.diffusion_loss(*want_leaves, t, TABLE.to(dev).double(), "v_prediction", "mean")
    needed = [x for x in leaves if x.requires_grad]
    got = torch.autograd.grad(loss, needed)
    ref_grads = torch.autograd.grad(want, [x for x in want_leaves if x.requires_grad])
    for g, r in zip(got, ref_grads):
        assert_close(g, r, torch.float32, what="gradient")
    loss = pk.diffusion_loss(
        *leaves, t, TABLE.to(dev), prediction_type="v_prediction", backend=backend
    )
    loss.backward()
    assert [x.grad is not None for x in leaves] == list(which)


def test_diffusion_loss_is_mse_of_target():
    m, x, z = (randn(*SHAPE, seed=i) for i in range(3))
    t = _t(TS, "cpu")
    v = pk.get_velocity(x, z, t, TABLE)
    for pred, target in (("epsilon", z), ("sample", x), ("v_prediction", v)):
        torch.testing.assert_close(
            pk.diffusion_loss(m, x, z, t, TABLE, prediction_type=pred),
            torch.nn.functional.mse_loss(m, target),
        )


# clip modes: (clip_sample, thresholding)
CLIPS = {"none": (False, False), "clip": (True, False), "threshold": (False, True)}
# inputs scaled so that clipping and thresholding really bite
SCALES = (1.0, 1.5, 1.0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
@pytest.mark.parametrize("clip", list(CLIPS))
def test_ddpm_step(backend, pred, clip):
    dev = backend_device(backend)
    t = _t(TS, dev)
    cs, th = CLIPS[clip]
    kw = dict(
        prediction_type=pred,
        clip_sample=cs,
        thresholding=th,
        sample_max_value=1.5,
        dynamic_thresholding_ratio=0.9,
    )
    for dtype in dtypes_for(backend):
        m, s, z = _leaves(dtype, dev, scale=SCALES)
        outs = _check_against_reference(
            backend,
            dtype,
            lambda m, s: pk.ddpm_step(m, t, s, TABLE.to(dev), noise=z, backend=backend, **kw),
            lambda m, s: ref.ddpm_step(m, t, s, TABLE.to(dev), noise=z.detach().double(), **kw),
            [m, s],
            f"ddpm {pred} {clip}",
        )
        assert [o.dtype for o in outs] == [
            dtype,
            dtype,
        ]  # element-wise outputs keep the sample dtype


DDIM_CASES = [  # (eta, use_clipped_model_output, clip)
    (0.0, False, "none"),
    (1.0, False, "clip"),
    (1.0, True, "clip"),
    (0.0, True, "threshold"),
    (0.5, False, "threshold"),
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
@pytest.mark.parametrize("case", DDIM_CASES, ids=lambda c: f"eta{c[0]}-uc{int(c[1])}-{c[2]}")
def test_ddim_step(backend, pred, case):
    eta, uc, clip = case
    dev = backend_device(backend)
    t, prev = _t(TS, dev), _t(PREV, dev)
    cs, th = CLIPS[clip]
    kw = dict(
        eta=eta,
        prediction_type=pred,
        clip_sample=cs,
        thresholding=th,
        use_clipped_model_output=uc,
        final_alpha_cumprod=float(TABLE[0]),
        sample_max_value=1.5,
        dynamic_thresholding_ratio=0.9,
    )
    for dtype in dtypes_for(backend):
        m, s, z = _leaves(dtype, dev, scale=SCALES)
        outs = _check_against_reference(
            backend,
            dtype,
            lambda m, s: pk.ddim_step(m, t, prev, s, TABLE.to(dev), noise=z, backend=backend, **kw),
            lambda m, s: ref.ddim_step(
                m, t, prev, s, TABLE.to(dev), noise=z.detach().double(), **kw
            ),
            [m, s],
            f"ddim {pred} {case}",
        )
        assert [o.dtype for o in outs] == [dtype, dtype]


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
@pytest.mark.parametrize("clip_sample", [False, True])
def test_ddim_use_clipped_model_output_near_a_of_one(backend, pred, clip_sample):
    """use_clipped_model_output takes eps = (x - sqrt(a) x0c) / sqrt(1 - a): at a near 1
    that cancels 1/sqrt(1 - a)-fold (1000x at a = 1 - 1e-6), as in the same formulas run
    in float32. Output and gradients within the precision contract (the kernels form the
    model's own eps where the clip left x0 as it was, which avoids the cancellation there)."""
    dev = backend_device(backend)
    table = torch.tensor([1 - 1e-6, 0.9], device=dev)
    g = torch.Generator().manual_seed(8)
    m64, s64 = (torch.randn(3, 40, generator=g, dtype=torch.float64) for _ in range(2))
    w = [torch.randn(3, 40, generator=g, dtype=torch.float64) for _ in range(2)]
    t, prev = (
        torch.zeros(3, dtype=torch.int64, device=dev),
        torch.ones(3, dtype=torch.int64, device=dev),
    )
    kw = dict(
        prediction_type=pred,
        use_clipped_model_output=True,
        clip_sample=clip_sample,
        clip_sample_range=1e3,
    )
    m, s = (x.float().to(dev).requires_grad_() for x in (m64, s64))
    got = pk.ddim_step(m, t, prev, s, table, backend=backend, **kw)
    m32, s32 = (x.detach().clone().requires_grad_() for x in (m, s))
    base = ref.ddim_step(m32, t, prev, s32, table, **kw)
    m64, s64 = m64.requires_grad_(), s64.requires_grad_()
    want = ref.ddim_step(m64, t.cpu(), prev.cpu(), s64, table.cpu(), **kw)
    for name, o, b, r in zip(("prev_sample", "pred_original_sample"), got, base, want):
        assert_close(o, r, torch.float32, baseline=b, what=name)
    w32 = [x.float().to(dev) for x in w]
    for name, gg, gb, gw in zip(
        ("grad model_output", "grad sample"),
        torch.autograd.grad(got, [m, s], w32),
        torch.autograd.grad(base, [m32, s32], w32),
        torch.autograd.grad(want, [m64, s64], w),
    ):
        assert_close(gg, gw, torch.float32, baseline=gb, what=name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_ddpm_no_noise_at_t0_per_sample(backend):
    dev = backend_device(backend)
    m, s = randn(3, 16, device=dev, seed=1), randn(3, 16, device=dev, seed=2)
    z = torch.full((3, 16), float("inf"), device=dev)  # never read where its coefficient is 0
    t = _t([0, 0, 0], dev)
    out, _ = pk.ddpm_step(m, t, s, TABLE.to(dev), noise=z, backend=backend)
    want, _ = ref.ddpm_step(m, t, s, TABLE.to(dev), noise=None)
    torch.testing.assert_close(out, want)
    z = randn(3, 16, device=dev, seed=3)
    t = _t([0, 5, 0], dev)
    out, _ = pk.ddpm_step(m, t, s, TABLE.to(dev), noise=z, backend=backend)
    base, _ = pk.ddpm_step(m, t, s, TABLE.to(dev), noise=torch.zeros_like(z), backend=backend)
    assert (
        torch.equal(out[0], base[0])
        and torch.equal(out[2], base[2])
        and not torch.equal(out[1], base[1])
    )
    # DDIM at eta = 0 ignores noise altogether
    o1, _ = pk.ddim_step(
        m, t + 20, t, s, TABLE.to(dev), noise=torch.full_like(z, float("nan")), backend=backend
    )
    o2, _ = pk.ddim_step(m, t + 20, t, s, TABLE.to(dev), backend=backend)
    assert torch.equal(o1, o2)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_generator_reproducible(backend):
    dev = backend_device(backend)
    m, s = randn(2, 8, device=dev, seed=1), randn(2, 8, device=dev, seed=2)
    t = _t([10, 900], dev)
    a = pk.ddpm_step(
        m, t, s, TABLE.to(dev), generator=torch.Generator(dev).manual_seed(3), backend=backend
    )[0]
    b = pk.ddpm_step(
        m, t, s, TABLE.to(dev), generator=torch.Generator(dev).manual_seed(3), backend=backend
    )[0]
    z = torch.randn(m.shape, generator=torch.Generator(dev).manual_seed(3), device=dev)
    c = pk.ddpm_step(m, t, s, TABLE.to(dev), noise=z, backend=backend)[0]
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_and_int32_timesteps(backend):
    dev = backend_device(backend)
    m = randn(4, 6, 10, device=dev, seed=1).transpose(1, 2)  # [4, 10, 6], strided
    s = randn(4, 10, 12, device=dev, seed=2)[:, :, ::2]
    z = randn(4, 10, 6, device=dev, seed=3)
    t, prev = (
        torch.tensor([3, 999, 0, 400], dtype=torch.int32, device=dev),
        _t([-17, 979, -20, 380], dev),
    )
    tab = TABLE.to(dev)
    torch.testing.assert_close(
        pk.add_noise(m, z, t, tab, backend=backend), ref.add_noise(m, z, t, tab)
    )
    got = pk.ddim_step(m, t, prev, s, tab, eta=1.0, noise=z, backend=backend)
    want = ref.ddim_step(m, t, prev, s, tab, eta=1.0, noise=z)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        pk.diffusion_loss(m, s, z, t, tab, backend=backend),
        ref.diffusion_loss(m, s, z, t, tab),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scalar_timesteps_broadcast(backend):
    dev = backend_device(backend)
    m, s = randn(3, 8, device=dev, seed=1), randn(3, 8, device=dev, seed=2)
    tab = TABLE.to(dev)
    for t, prev in ((700, 680), (torch.tensor(700, device=dev), torch.tensor(680, device=dev))):
        got = pk.ddim_step(m, t, prev, s, tab, backend=backend)
        want = pk.ddim_step(m, _t([700] * 3, dev), _t([680] * 3, dev), s, tab, backend=backend)
        assert torch.equal(got[0], want[0])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch(backend):
    dev = backend_device(backend)
    e = torch.zeros(0, 3, 4, device=dev, requires_grad=True)
    t = torch.zeros(0, dtype=torch.int64, device=dev)
    tab = TABLE.to(dev)
    with poisoned():
        assert pk.add_noise(e, e, t, tab, backend=backend).shape == (0, 3, 4)
        out, x0 = pk.ddim_step(e, t, t, e, tab, backend=backend)
        assert out.shape == x0.shape == (0, 3, 4)
        assert pk.diffusion_loss(e, e, e, t, tab, reduction="sum", backend=backend).item() == 0.0
    (out.sum() + x0.sum()).backward()
    assert e.grad.shape == e.shape


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_deterministic(backend):
    dev = backend_device(backend)
    m, s, z = _leaves(torch.float32, dev, scale=SCALES)
    t, prev = _t(TS, dev), _t(PREV, dev)
    runs = []
    for _ in range(2):
        o = pk.ddim_step(
            m, t, prev, s, TABLE.to(dev), eta=1.0, noise=z, thresholding=True, backend=backend
        )
        loss = pk.diffusion_loss(m, s, z, t, TABLE.to(dev), backend=backend)
        runs.append((*o, loss, *_vjp(list(o) + [loss], [m, s])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_threshold_gradient_in_half_precision_at_high_noise(backend):
    """One-element samples at a = 2.5e-9 (x0 = (s - sqrt(1 - a) m) / sqrt(a), coefficients
    of 2e4) with dynamic thresholding: the sample is its own threshold, x0c = sign(x0), and
    the gradient of x0c is the difference of the clip's path and the threshold's path
    (through the quantile), each 2e4 / |x0|. Rounded to half precision apart at the
    inputs, the difference is lost (a gradient of 2.0 for 1.0, far outside the precision
    contract: the same formulas in float16 are 2.4e-3 off); they cancel in float32 (see
    _threshold_operands). The ddpm_step's gradient here is too small for any
    half-precision run to resolve (the sample's coefficient is 7.5e-5)."""
    dev = backend_device(backend)
    tab = torch.tensor([0.5, 0.25, 2.5e-9], device=dev)
    t, prev = _t([2, 2, 2], dev), _t([1, 1, 0], dev)
    kw = dict(thresholding=True, sample_max_value=10.0, dynamic_thresholding_ratio=0.995)
    for dtype in (torch.float16, torch.bfloat16):
        m = torch.tensor(
            [[1.5e-4], [-1.1e-4], [0.6e-4]], dtype=dtype, device=dev, requires_grad=True
        )
        s = torch.tensor(
            [[-3.6e-5], [0.9e-4], [1.3e-4]], dtype=dtype, device=dev, requires_grad=True
        )
        x0 = (s.double() - (1 - 2.5e-9) ** 0.5 * m.double()) / 2.5e-9**0.5
        assert (x0.abs() > 1).all()  # each sample is its own threshold
        outs = pk.ddim_step(m, t, prev, s, tab, backend=backend, **kw)
        r, b = as64(m, s), [x.detach().clone().requires_grad_() for x in (m, s)]
        want_outs, base_outs = (ref.ddim_step(x[0], t, prev, x[1], tab, **kw) for x in (r, b))
        for o, w, bo in zip(outs, want_outs, base_outs):
            assert_close(o, w, dtype, baseline=bo)
        # the sample's gradient is 0 in exact math: the two gradients are judged jointly
        got, exp, base = (
            torch.cat([g.flatten() for g in _vjp(o, x)])
            for o, x in ((outs, [m, s]), (want_outs, r), (base_outs, b))
        )
        assert_close(got, exp, dtype, baseline=base, what="joint gradient")


def test_cpu_large_sample_uses_several_chunks():
    """Samples longer than one CPU chunk (16384 elements): partial sums still exact."""
    m, x, z = (randn(2, 40000, seed=i) for i in range(3))
    t = _t([3, 700], "cpu")
    loss = pk.diffusion_loss(m, x, z, t, TABLE, reduction="none", backend="cpu")
    assert_close(
        pk.diffusion_loss(m, x, z, t, TABLE, backend="cpu"), loss.double().mean(), torch.float32
    )
    mm, ss = m.clone().requires_grad_(), (x * 3).requires_grad_()
    o = pk.ddpm_step(
        mm, t, ss, TABLE, noise=z, thresholding=True, sample_max_value=2.0, backend="cpu"
    )
    r64 = as64(mm, ss)
    w = ref.ddpm_step(
        *r64[:1], t, r64[1], TABLE, noise=z.double(), thresholding=True, sample_max_value=2.0
    )
    for a, b in zip(o, w):
        assert_close(a, b, torch.float32)
    for a, b in zip(_vjp(o, [mm, ss]), _vjp(w, r64)):
        assert_close(a, b, torch.float32)


# --------------------------------------------------------------------------- autograd, opcheck, compile


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    m, s, z = (
        randn(3, 2, 5, dtype=torch.float64, seed=50 + i, scale=1.3, requires_grad=True)
        for i in range(3)
    )
    t, prev = _t([0, 400, 999], "cpu"), _t([-20, 380, 979], "cpu")
    tab = TABLE.double()
    assert torch.autograd.gradcheck(
        lambda a, b: pk.add_noise(a, b, t, tab, backend=backend), (m, s)
    )
    assert torch.autograd.gradcheck(
        lambda a, b, c: pk.diffusion_loss(
            a, b, c, t, tab, prediction_type="v_prediction", backend=backend
        ),
        (m, s, z),
    )
    zz = z.detach()
    for kw in (
        dict(clip_sample=True),
        dict(thresholding=True, sample_max_value=2.0, dynamic_thresholding_ratio=0.8),
    ):
        assert torch.autograd.gradcheck(
            lambda a, b: pk.ddpm_step(
                a, t, b, tab, noise=zz, prediction_type="v_prediction", backend=backend, **kw
            ),
            (m, s),
        )
        assert torch.autograd.gradcheck(
            lambda a, b: pk.ddim_step(
                a,
                t,
                prev,
                b,
                tab,
                eta=1.0,
                noise=zz,
                use_clipped_model_output=True,
                backend=backend,
                **kw,
            ),
            (m, s),
        )


def _opcheck_cases(dev):
    m, s, z = (randn(3, 2, 8, device=dev, seed=60 + i) for i in range(3))
    t, prev, tab = _t([0, 500, 999], dev), _t([-20, 480, 979], dev), TABLE.to(dev)
    q = torch.tensor([1.0, 1.2, 1.5], device=dev)
    g = torch.tensor(0.7, device=dev)
    return [
        ("add_noise", (m.requires_grad_(), s.requires_grad_(), t, tab)),
        ("get_velocity", (m, s, t, tab)),
        ("add_noise_backward", (z, t, tab)),
        ("get_velocity_backward", (z.double(), t, tab)),
        ("diffusion_loss", (m, s, z, t, tab, "v_prediction", "mean")),
        ("diffusion_loss", (m, s, z, t, tab, "epsilon", "none")),
        (
            "diffusion_loss_backward",
            (g, m.detach(), s.detach(), z, t, tab, "v_prediction", "sum", [True, True, True]),
        ),
        (
            "diffusion_loss_backward",
            (g, m.detach(), s.detach(), z, t, tab, "epsilon", "mean", [True, False, False]),
        ),
        ("ddpm_step", (m, t, s, tab, prev, z, None, "epsilon", True, 1.0)),
        (
            "ddpm_step_backward",
            (z, z, m.detach(), t, s.detach(), tab, prev, None, "sample", True, 1.0),
        ),
        (
            "ddim_step",
            (m, t, prev, s, tab, 1.0, z, q.requires_grad_(), "v_prediction", False, 1.0, True, 1.0),
        ),
        (
            "ddim_step_backward",
            (
                z,
                z,
                m.detach(),
                t,
                prev,
                s.detach(),
                tab,
                0.5,
                q.detach(),
                "sample",
                False,
                1.0,
                False,
                1.0,
            ),
        ),
    ]


@pytest.mark.parametrize("backend", CPP_BACKENDS + TRITON_BACKENDS)
def test_opcheck(backend):
    opcheck_ops(_opcheck_cases(backend_device(backend)), backend)


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_fullgraph(backend):
    dev = backend_device(backend)
    torch._dynamo.reset()
    tab = TABLE.to(dev)

    def f(m, s, z, t, prev):
        a = pk.add_noise(s, z, t, tab, backend=backend)
        loss = pk.diffusion_loss(m, s, z, t, tab, prediction_type="v_prediction", backend=backend)
        p1, x1 = pk.ddim_step(
            m, t, prev, a, tab, eta=1.0, noise=z, thresholding=True, backend=backend
        )
        p2, _ = pk.ddpm_step(m, t, p1, tab, noise=z, backend=backend)
        return loss + p2.float().square().mean() + x1.float().mean()

    cf = torch.compile(f, fullgraph=True, backend=compile_backend(dev))
    m, s, z = _leaves(torch.float32, dev, scale=SCALES)
    t, prev = _t(TS, dev), _t(PREV, dev)
    got, want = cf(m, s, z, t, prev), f(m, s, z, t, prev)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(torch.autograd.grad(got, [m, s, z]), torch.autograd.grad(want, [m, s, z])):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- GPU only: no sync, CUDA graphs


@pytest.mark.parametrize("backend", [p for p in FUSED_BACKENDS if p.id in ("cuda", "triton")])
def test_no_host_sync_and_cuda_graph(backend):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    dev = torch.device("cuda")
    tab = TABLE.to(dev)
    m, s, z = (randn(4, 4, 8, 8, device=dev, seed=i) for i in range(3))
    t, prev = _t([999, 500, 1, 0], dev), _t([979, 480, -19, -20], dev)
    pk.ddim_step(m, t, prev, s, tab, eta=1.0, noise=z, backend=backend)  # compile / warm up
    pk.ddpm_step(m, t, s, tab, noise=z, thresholding=True, backend=backend)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pk.add_noise(s, z, t, tab, backend=backend)
        pk.ddim_step(m, t, prev, s, tab, eta=1.0, noise=z, backend=backend)
        pk.ddpm_step(m, t, s, tab, noise=z, thresholding=True, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    x = s.clone()
    steps = list(range(980, -1, -20))
    ts = [(_t([k] * 4, dev), _t([k - 20] * 4, dev)) for k in steps]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for tt, pp in ts[:2]:
            pk.ddim_step(m, tt, pp, x, tab, backend=backend)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = x
        for tt, pp in ts:
            y, _ = pk.ddim_step(m, tt, pp, y, tab, backend=backend)
    graph.replay()
    want = x
    for tt, pp in ts:
        want, _ = ref.ddim_step(m, tt, pp, want, tab)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", [p for p in FUSED_BACKENDS if p.id in ("cuda", "triton")])
def test_out_of_range_timesteps_clamped_on_gpu(backend):
    """On CUDA tensors timesteps are not read back: out-of-range ones are clamped."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    dev = torch.device("cuda")
    x, z = randn(2, 8, device=dev, seed=1), randn(2, 8, device=dev, seed=2)
    got = pk.add_noise(x, z, _t([-5, 5000], dev), TABLE.to(dev), backend=backend)
    want = pk.add_noise(x, z, _t([0, 999], dev), TABLE.to(dev), backend=backend)
    assert torch.equal(got, want)


# --------------------------------------------------------------------------- diffusers


def test_make_schedule_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for sched, kw in (
        ("linear", {}),
        ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
        ("squaredcos_cap_v2", {}),
    ):
        want = diffusers.DDPMScheduler(beta_schedule=sched, **kw).alphas_cumprod
        assert torch.equal(pk.make_schedule(1000, sched, **kw), want), sched


def _float64_scheduler(sch):
    """The same diffusers scheduler computing in float64: its float32 table and
    final_alpha_cumprod upcast, so its formulas run without fp32 coefficient rounding
    (diffusers' 1 - a/a' loses ~1e-4 relative near t = 0 in float32)."""
    sch.alphas_cumprod = sch.alphas_cumprod.double()
    if hasattr(sch, "final_alpha_cumprod"):
        sch.final_alpha_cumprod = sch.final_alpha_cumprod.double()
    sch.one = torch.tensor(1.0, dtype=torch.float64)
    return sch


def _diffusers_float32_ddpm_step(sch, m, t, s, z):
    """diffusers' DDPMScheduler.step in float32 with the noise z (its own draw replaced):
    the precision contract's baseline."""
    from diffusers.schedulers import scheduling_ddpm

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scheduling_ddpm, "randn_tensor", lambda *args, **kwargs: z)
        out = sch.step(m, t, s)
    return out.prev_sample, out.pred_original_sample


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
def test_ddpm_matches_diffusers(backend, pred):
    diffusers = pytest.importorskip("diffusers")
    from pykernels.integrations.diffusers import FusedDDPMScheduler

    dev = backend_device(backend)
    m, s = randn(2, 3, 4, 4, device=dev, seed=1), randn(2, 3, 4, 4, device=dev, seed=2, scale=2.0)
    for th in (False, True):
        cfg = dict(prediction_type=pred, thresholding=th, sample_max_value=2.0, clip_sample=not th)
        theirs, ours = _float64_scheduler(diffusers.DDPMScheduler(**cfg)), FusedDDPMScheduler(**cfg)
        for t in (999, 500, 1, 0):
            want = theirs.step(
                m.double(), t, s.double(), generator=torch.Generator(dev).manual_seed(7)
            )
            z = torch.randn(
                m.shape,
                generator=torch.Generator(dev).manual_seed(7),
                device=dev,
                dtype=torch.float64,
            )
            got = pk.ddpm_step(
                m, _t([t, t], dev), s, TABLE.to(dev), noise=z.float(), backend=backend, **cfg
            )
            base = _diffusers_float32_ddpm_step(diffusers.DDPMScheduler(**cfg), m, t, s, z.float())
            for g, w, b in zip(got, (want.prev_sample, want.pred_original_sample), base):
                assert_close(g, w, torch.float32, baseline=b, what=f"t={t} th={th}")
            if backend == "reference":
                continue
            # the drop-in runs the same op on diffusers' noise draw
            drop = ours.step(m, t, s, generator=torch.Generator(dev).manual_seed(7))
            z32 = (
                torch.randn(m.shape, generator=torch.Generator(dev).manual_seed(7), device=dev)
                if t > 0
                else None
            )
            same = pk.ddpm_step(
                m, t, s, TABLE.to(dev), noise=z32 if z32 is not None else torch.zeros_like(m), **cfg
            )
            assert torch.equal(drop.prev_sample, same[0]) and torch.equal(
                drop.pred_original_sample, same[1]
            )
    # with an inference schedule the previous timestep is the next entry of timesteps
    theirs = _float64_scheduler(diffusers.DDPMScheduler(prediction_type=pred))
    ours = FusedDDPMScheduler(prediction_type=pred)
    theirs.set_timesteps(10, device=dev)
    ours.set_timesteps(10, device=dev)
    base_sch = diffusers.DDPMScheduler(prediction_type=pred)
    base_sch.set_timesteps(10, device=dev)
    for t in theirs.timesteps[:3]:
        want = theirs.step(
            m.double(), t, s.double(), generator=torch.Generator(dev).manual_seed(1)
        ).prev_sample
        z = torch.randn(
            m.shape, generator=torch.Generator(dev).manual_seed(1), device=dev, dtype=torch.float64
        )
        got = pk.ddpm_step(
            m,
            t,
            s,
            TABLE.to(dev),
            prev_timesteps=t - 100,
            noise=z.float(),
            prediction_type=pred,
            backend=backend,
        )[0]
        base = _diffusers_float32_ddpm_step(base_sch, m, t, s, z.float())[0]
        assert_close(got, want, torch.float32, baseline=base)
        if backend != "reference":
            drop = ours.step(
                m, t, s, generator=torch.Generator(dev).manual_seed(1), return_dict=False
            )[0]
            z32 = torch.randn(m.shape, generator=torch.Generator(dev).manual_seed(1), device=dev)
            same = pk.ddpm_step(
                m, t, s, TABLE.to(dev), prev_timesteps=t - 100, noise=z32, prediction_type=pred
            )[0]
            assert torch.equal(drop, same)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
def test_ddim_matches_diffusers(backend, pred):
    diffusers = pytest.importorskip("diffusers")
    dev = backend_device(backend)
    m, s = randn(2, 3, 4, 4, device=dev, seed=1), randn(2, 3, 4, 4, device=dev, seed=2, scale=2.0)
    z = randn(2, 3, 4, 4, device=dev, seed=3)
    for one in (True, False):
        for clip, th in ((True, False), (False, True), (False, False)):
            sch = diffusers.DDIMScheduler(
                prediction_type=pred,
                clip_sample=clip,
                thresholding=th,
                sample_max_value=2.0,
                set_alpha_to_one=one,
            )
            final = float(sch.final_alpha_cumprod)
            base_sch = diffusers.DDIMScheduler(**sch.config)
            sch = _float64_scheduler(sch)
            for x in (sch, base_sch):
                x.set_timesteps(50)
            for t in (981, 21, 1):  # t = 1: prev < 0 -> final_alpha_cumprod
                for eta, uc in ((0.0, False), (1.0, True), (1.0, False)):
                    want = sch.step(
                        m.double(),
                        t,
                        s.double(),
                        eta=eta,
                        use_clipped_model_output=uc,
                        variance_noise=z.double(),
                    )
                    base = base_sch.step(
                        m, t, s, eta=eta, use_clipped_model_output=uc, variance_noise=z
                    )
                    got = pk.ddim_step(
                        m,
                        _t([t, t], dev),
                        _t([t - 20] * 2, dev),
                        s,
                        TABLE.to(dev),
                        eta=eta,
                        noise=z,
                        prediction_type=pred,
                        clip_sample=clip,
                        thresholding=th,
                        sample_max_value=2.0,
                        use_clipped_model_output=uc,
                        final_alpha_cumprod=final,
                        backend=backend,
                    )
                    for g, w, b in zip(
                        got,
                        (want.prev_sample, want.pred_original_sample),
                        (base.prev_sample, base.pred_original_sample),
                    ):
                        assert_close(
                            g, w, torch.float32, baseline=b, what=f"t={t} eta={eta} uc={uc}"
                        )


def test_drop_in_schedulers_match_diffusers_loop():
    diffusers = pytest.importorskip("diffusers")
    from pykernels.integrations.diffusers import FusedDDIMScheduler, FusedDDPMScheduler

    assert issubclass(FusedDDIMScheduler, diffusers.DDIMScheduler)
    assert issubclass(FusedDDPMScheduler, diffusers.DDPMScheduler)
    model = lambda x, t: 0.3 * x + 0.01 * float(t)  # noqa: E731  (a stand-in denoiser)
    for cls, base, eta in (
        (FusedDDIMScheduler, diffusers.DDIMScheduler, 1.0),
        (FusedDDPMScheduler, diffusers.DDPMScheduler, None),
    ):
        ours, theirs = cls.from_config(base().config), base()
        for sch in (ours, theirs):
            sch.set_timesteps(10)
        x0 = randn(2, 3, 8, 8, seed=5)
        results = []
        for sch in (ours, theirs):
            x, gen = x0.clone(), torch.Generator().manual_seed(0)
            kw = {"eta": eta} if eta is not None else {}
            for t in sch.timesteps:
                x = sch.step(model(x, t), t, x, generator=gen, **kw).prev_sample
            results.append(x)
        assert_close(results[0], results[1].double(), torch.float32, tol=1e-4, what=cls.__name__)
    # add_noise / get_velocity against diffusers' (fp32)
    sch, fused = diffusers.DDPMScheduler(), FusedDDPMScheduler()
    x, z, t = randn(4, 3, 5, 5, seed=1), randn(4, 3, 5, 5, seed=2), torch.tensor([0, 10, 500, 999])
    assert_close(fused.add_noise(x, z, t), sch.add_noise(x, z, t).double(), torch.float32)
    assert_close(fused.get_velocity(x, z, t), sch.get_velocity(x, z, t).double(), torch.float32)
    # variance types the fused op does not cover fall back to diffusers' step
    fl, base = (
        FusedDDPMScheduler(variance_type="fixed_large"),
        diffusers.DDPMScheduler(variance_type="fixed_large"),
    )
    m = randn(2, 3, 5, 5, seed=3)
    a = fl.step(m, 500, x[:2], generator=torch.Generator().manual_seed(0)).prev_sample
    b = base.step(m, 500, x[:2], generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.equal(a, b)


def test_drop_in_ddim_requires_set_timesteps():
    pytest.importorskip("diffusers")
    from pykernels.integrations.diffusers import FusedDDIMScheduler

    with pytest.raises(ValueError, match="set_timesteps"):
        FusedDDIMScheduler().step(torch.ones(1, 2), 10, torch.ones(1, 2))


# --------------------------------------------------------------------------- bad input

X = torch.ones(2, 3)
TT = torch.tensor([1, 2])

BAD = [
    # (call, exception, text that must appear)
    (lambda: pk.add_noise(X, X, torch.tensor([0, 1000]), TABLE), IndexError, "'timesteps'"),
    (lambda: pk.add_noise(X, X, torch.tensor([-1, 3]), TABLE), IndexError, "'timesteps'"),
    (lambda: pk.add_noise(X, X, 1000, TABLE), IndexError, "'timesteps'"),
    (lambda: pk.add_noise(X, X, TT, TABLE, backend="reference"), None, None),
    (lambda: pk.add_noise(X, X, torch.tensor([1.0, 2.0]), TABLE), TypeError, "'timesteps'"),
    (lambda: pk.add_noise(X, X, torch.tensor([1, 2, 3]), TABLE), ValueError, "'timesteps'"),
    (lambda: pk.add_noise(X, X, torch.tensor([[1, 2]]), TABLE), ValueError, "'timesteps'"),
    (lambda: pk.add_noise(X, X, TT, TABLE.half()), TypeError, "'alphas_cumprod'"),
    (lambda: pk.add_noise(X, X, TT, TABLE[None]), ValueError, "'alphas_cumprod'"),
    (lambda: pk.add_noise(X, X, TT, TABLE[:0]), ValueError, "'alphas_cumprod'"),
    (lambda: pk.add_noise(X, X, TT, TABLE[:2]), IndexError, "'timesteps'"),
    (lambda: pk.add_noise(X, X, TT, TABLE.to("meta")), ValueError, "device"),
    (lambda: pk.add_noise(X, torch.ones(2, 4), TT, TABLE), ValueError, "'noise'"),
    (lambda: pk.add_noise(X, X.double(), TT, TABLE), TypeError, "'noise'"),
    (lambda: pk.add_noise(X.long(), X.long(), TT, TABLE), TypeError, "'x0'"),
    (lambda: pk.add_noise(torch.tensor(1.0), torch.tensor(1.0), TT, TABLE), ValueError, "'x0'"),
    (lambda: pk.add_noise(X, X, TT, [1.0]), TypeError, "'alphas_cumprod'"),
    (lambda: pk.get_velocity(X, X, TT, TABLE, backend="nope"), ValueError, "'backend'"),
    (
        lambda: pk.diffusion_loss(X, X, X, TT, TABLE, prediction_type="eps"),
        ValueError,
        "'prediction_type'",
    ),
    (lambda: pk.diffusion_loss(X, X, X, TT, TABLE, reduction="avg"), ValueError, "'reduction'"),
    (lambda: pk.diffusion_loss(X, X, torch.ones(3, 2), TT, TABLE), ValueError, "'noise'"),
    (lambda: pk.ddpm_step(X, TT, X, TABLE, prediction_type="x"), ValueError, "'prediction_type'"),
    (lambda: pk.ddpm_step(X, TT, torch.ones(2, 4), TABLE), ValueError, "'model_output'"),
    (lambda: pk.ddpm_step(X, TT, X, TABLE, noise=torch.ones(2, 4)), ValueError, "'noise'"),
    (
        lambda: pk.ddpm_step(X, TT, X, TABLE, clip_sample_range=0.0),
        ValueError,
        "'clip_sample_range'",
    ),
    (
        lambda: pk.ddpm_step(X, TT, X, TABLE, thresholding=True, dynamic_thresholding_ratio=1.5),
        ValueError,
        "'dynamic_thresholding_ratio'",
    ),
    (
        lambda: pk.ddpm_step(X, TT, X, TABLE, thresholding=True, sample_max_value=0.0),
        ValueError,
        "'sample_max_value'",
    ),
    (
        lambda: pk.ddpm_step(X, TT, X, TABLE, prev_timesteps=torch.tensor([0, 1000])),
        IndexError,
        "'prev_timesteps'",
    ),
    (
        lambda: pk.ddim_step(X, TT, torch.tensor([0, 1000]), X, TABLE),
        IndexError,
        "'prev_timesteps'",
    ),
    (lambda: pk.ddim_step(X, torch.tensor([1000, 0]), TT, X, TABLE), IndexError, "'timesteps'"),
    (lambda: pk.ddim_step(X, TT, TT, X, TABLE, eta=-1.0), ValueError, "'eta'"),
    (
        lambda: pk.ddim_step(X, TT, TT, X, TABLE, final_alpha_cumprod=0.0),
        ValueError,
        "'final_alpha_cumprod'",
    ),
    (lambda: pk.ddim_step(X, TT, TT, X, TABLE, eta="1"), TypeError, "'eta'"),
    (lambda: pk.make_schedule(0), ValueError, "'num_train_timesteps'"),
    (lambda: pk.make_schedule(10, "cosine"), ValueError, "'beta_schedule'"),
    (lambda: pk.make_schedule(10, "linear", 0.1, 1.5), ValueError, "'beta_end'"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
@pytest.mark.parametrize("backend", [p for p in ALL_BACKENDS if p.id != "cuda"])
def test_bad_input_public(case, backend):
    call, exc, text = BAD[case]
    if exc is None:
        call()  # the valid control case
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYKERNELS_BACKEND", backend)
        with pytest.raises(exc, match=text):
            call()


def test_module_diffusion_loss():
    mod = pk.nn.DiffusionLoss(prediction_type="v_prediction")
    m, x, z = (randn(*SHAPE, seed=i) for i in range(3))
    t = _t(TS, "cpu")
    torch.testing.assert_close(
        mod(m, x, z, t), ref.diffusion_loss(m, x, z, t, TABLE, "v_prediction")
    )
    assert torch.equal(mod.alphas_cumprod, TABLE)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_clamp_gradient_at_ties(backend):
    """At x0 exactly on a bound the gradient is torch.clamp's: zero for clip (scalar
    bounds), split half-half with the threshold for dynamic thresholding (tensor bound)."""
    dev = backend_device(backend)
    dtype = torch.float64 if backend in ("cpu", "reference") else torch.float32
    tab = TABLE.to(dev)
    # "sample" prediction: x0 = model_output exactly; ratio 0.5 over 3 elements picks the
    # middle |x0| = 3 exactly, so one element ties with the threshold.
    m = torch.tensor(
        [[1.0, -1.0, 0.5], [2.0, -3.0, 4.0]], dtype=dtype, device=dev, requires_grad=True
    )
    s = torch.zeros_like(m, requires_grad=True)
    t, prev = _t([500, 500], dev), _t([480, 480], dev)
    for kw in (
        dict(clip_sample=True),
        dict(thresholding=True, dynamic_thresholding_ratio=0.5, sample_max_value=5.0),
    ):
        got = pk.ddim_step(m, t, prev, s, tab, prediction_type="sample", backend=backend, **kw)
        want = ref.ddim_step(m, t, prev, s, tab, prediction_type="sample", **kw)
        for g, w in zip(_vjp(got, [m, s]), _vjp(want, [m, s])):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
