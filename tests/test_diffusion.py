"""Diffusion family: make_schedule, add_noise, get_velocity, diffusion_loss, ddpm_step,
ddim_step. The samplers' steps and the diffusers drop-in schedulers are in
test_diffusion_samplers.py."""

import math

import pytest
import torch

import pykernels as pk
from pykernels.reference import diffusion as ref

from ._diffusion import (
    PREV,
    SCALES,
    SHAPE,
    TABLE,
    TS,
    T,
    check_against_reference,
    long_tensor,
    make_leaves,
)
from .helpers import (
    ALL_BACKENDS,
    COMPILE_BACKENDS,
    FUSED_BACKENDS,
    as64,
    assert_close,
    assert_compiles_fullgraph,
    backend_device,
    dtypes_for,
    opcheck_test,
    poisoned,
    randn,
    vjp,
)

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
    t, prev = long_tensor(TS, "cpu"), long_tensor(PREV, "cpu")
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
    t = long_tensor(TS, dev)
    for dtype in dtypes_for(backend):
        leaves = make_leaves(dtype, dev, n=2)
        for fn, rfn in ((pk.add_noise, ref.add_noise), (pk.get_velocity, ref.get_velocity)):
            check_against_reference(
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
    out = pk.add_noise(x0, z, long_tensor([0, 1], dev), TABLE.to(dev), backend=backend)
    want = (1 - TABLE[:2]).sqrt()
    torch.testing.assert_close(out.float().cpu(), want[:, None].expand(2, 8), rtol=1e-3, atol=0)
    assert (out != 0).all()
    # what an fp16 table gives: no noise at all at t = 0
    assert (1 - TABLE[:1].half()).item() == 0.0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
def test_diffusion_loss(backend, pred):
    dev = backend_device(backend)
    t = long_tensor(TS, dev)
    for dtype in dtypes_for(backend):
        leaves = make_leaves(dtype, dev)
        for reduction in ("mean", "sum", "none"):
            check_against_reference(
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
    t = long_tensor(TS, dev)
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
    t = long_tensor(TS, "cpu")
    v = pk.get_velocity(x, z, t, TABLE)
    for pred, target in (("epsilon", z), ("sample", x), ("v_prediction", v)):
        torch.testing.assert_close(
            pk.diffusion_loss(m, x, z, t, TABLE, prediction_type=pred),
            torch.nn.functional.mse_loss(m, target),
        )


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_and_int32_timesteps(backend):
    dev = backend_device(backend)
    m = randn(4, 6, 10, device=dev, seed=1).transpose(1, 2)  # [4, 10, 6], strided
    s = randn(4, 10, 12, device=dev, seed=2)[:, :, ::2]
    z = randn(4, 10, 6, device=dev, seed=3)
    t, prev = (
        torch.tensor([3, 999, 0, 400], dtype=torch.int32, device=dev),
        long_tensor([-17, 979, -20, 380], dev),
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
        want = pk.ddim_step(
            m, long_tensor([700] * 3, dev), long_tensor([680] * 3, dev), s, tab, backend=backend
        )
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
    m, s, z = make_leaves(torch.float32, dev, scale=SCALES)
    t, prev = long_tensor(TS, dev), long_tensor(PREV, dev)
    runs = []
    for _ in range(2):
        o = pk.ddim_step(
            m, t, prev, s, TABLE.to(dev), eta=1.0, noise=z, thresholding=True, backend=backend
        )
        loss = pk.diffusion_loss(m, s, z, t, TABLE.to(dev), backend=backend)
        runs.append((*o, loss, *vjp(list(o) + [loss], [m, s])))
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
    t, prev = long_tensor([2, 2, 2], dev), long_tensor([1, 1, 0], dev)
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
            torch.cat([g.flatten() for g in vjp(o, x)])
            for o, x in ((outs, [m, s]), (want_outs, r), (base_outs, b))
        )
        assert_close(got, exp, dtype, baseline=base, what="joint gradient")


def test_cpu_large_sample_uses_several_chunks():
    """Samples longer than one CPU chunk (16384 elements): partial sums still exact."""
    m, x, z = (randn(2, 40000, seed=i) for i in range(3))
    t = long_tensor([3, 700], "cpu")
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
    for a, b in zip(vjp(o, [mm, ss]), vjp(w, r64)):
        assert_close(a, b, torch.float32)


# --------------------------------------------------------------------------- autograd, opcheck, compile


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    m, s, z = (
        randn(3, 2, 5, dtype=torch.float64, seed=50 + i, scale=1.3, requires_grad=True)
        for i in range(3)
    )
    t, prev = long_tensor([0, 400, 999], "cpu"), long_tensor([-20, 380, 979], "cpu")
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
    t, prev, tab = long_tensor([0, 500, 999], dev), long_tensor([-20, 480, 979], dev), TABLE.to(dev)
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


test_opcheck = opcheck_test(_opcheck_cases)


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_fullgraph(backend):
    dev = backend_device(backend)
    tab = TABLE.to(dev)

    def f(m, s, z, t, prev):
        a = pk.add_noise(s, z, t, tab, backend=backend)
        loss = pk.diffusion_loss(m, s, z, t, tab, prediction_type="v_prediction", backend=backend)
        p1, x1 = pk.ddim_step(
            m, t, prev, a, tab, eta=1.0, noise=z, thresholding=True, backend=backend
        )
        p2, _ = pk.ddpm_step(m, t, p1, tab, noise=z, backend=backend)
        return loss + p2.float().square().mean() + x1.float().mean()

    m, s, z = make_leaves(torch.float32, dev, scale=SCALES)
    t, prev = long_tensor(TS, dev), long_tensor(PREV, dev)
    assert_compiles_fullgraph(
        f, f, (m, s, z, t, prev), [m, s, z], dev, tol=(1e-5, 1e-6), grad_tol=(1e-4, 1e-6)
    )


# --------------------------------------------------------------------------- GPU only: no sync, CUDA graphs


@pytest.mark.parametrize("backend", [p for p in FUSED_BACKENDS if p.id in ("cuda", "triton")])
def test_no_host_sync_and_cuda_graph(backend):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    dev = torch.device("cuda")
    tab = TABLE.to(dev)
    m, s, z = (randn(4, 4, 8, 8, device=dev, seed=i) for i in range(3))
    t, prev = long_tensor([999, 500, 1, 0], dev), long_tensor([979, 480, -19, -20], dev)
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
    ts = [(long_tensor([k] * 4, dev), long_tensor([k - 20] * 4, dev)) for k in steps]
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
    got = pk.add_noise(x, z, long_tensor([-5, 5000], dev), TABLE.to(dev), backend=backend)
    want = pk.add_noise(x, z, long_tensor([0, 999], dev), TABLE.to(dev), backend=backend)
    assert torch.equal(got, want)


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
    t = long_tensor(TS, "cpu")
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
    t, prev = long_tensor([500, 500], dev), long_tensor([480, 480], dev)
    for kw in (
        dict(clip_sample=True),
        dict(thresholding=True, dynamic_thresholding_ratio=0.5, sample_max_value=5.0),
    ):
        got = pk.ddim_step(m, t, prev, s, tab, prediction_type="sample", backend=backend, **kw)
        want = ref.ddim_step(m, t, prev, s, tab, prediction_type="sample", **kw)
        for g, w in zip(vjp(got, [m, s]), vjp(want, [m, s])):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
