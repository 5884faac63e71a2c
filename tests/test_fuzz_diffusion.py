"""Property-based tests of the diffusion family: make_schedule against diffusers, and
add_noise, get_velocity, diffusion_loss, ddpm_step, ddim_step on every backend against
the float64 reference."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pykernels as pk
from pykernels.reference import diffusion as ref

from ._fuzz import (
    BACKENDS,
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
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
CHUNK = 16384  # the CPU kernels' split of a sample; one more element crosses it


@st.composite
def tables(draw, device):
    """(T, alphas_cumprod) of a drawn schedule and length, float32 or float64, on device."""
    T = draw(st.sampled_from([1, 2, 10, 1000]))
    table = pk.make_schedule(T, draw(st.sampled_from(SCHEDULES)))
    return T, table.to(device, draw(st.sampled_from([torch.float32, torch.float64])))


@st.composite
def sample_shape(draw, backend):
    """[N, ...]: N samples of rank 0-3 each; sizes past the CPU kernels' chunk on CPU."""
    N = draw(rows(backend, 6))
    if not on_triton(backend) and draw(st.integers(0, 9)) == 0:
        return (N, CHUNK + 1)
    inner = tuple(draw(sizes(backend)) for _ in range(draw(st.integers(0, 3))))
    while len(inner) > 1 and torch.Size(inner).numel() > 20000:
        inner = inner[1:]
    return (N,) + inner


@st.composite
def timesteps(draw, N, T, device):
    """Per-sample timesteps, the first and last ones often: an int64 or int32 tensor [N],
    a 0-dim tensor or a Python int (both broadcast to every sample). Returns (argument
    as passed, the int64 [N] tensor it means)."""
    one = st.sampled_from([0, T - 1]) | st.integers(0, T - 1)
    kind = draw(st.sampled_from(["int64", "int32", "0-dim", "int"]))
    if kind in ("0-dim", "int"):
        v = draw(one)
        full = torch.full((N,), v, dtype=torch.int64, device=device)
        return (v if kind == "int" else torch.tensor(v, device=device)), full
    t = torch.tensor([draw(one) for _ in range(N)], device=device)
    return t.to(torch.int32 if kind == "int32" else torch.int64), t


@st.composite
def prev_of(draw, t, T, later=True):
    """Previous timesteps for t [N]: t - k (k = 1, a stride, or past the start: negative
    means the final alpha), or, now and then, a later timestep (k < 0, a step towards
    more noise, as DDIM inversion takes), as an int64 tensor."""
    k = draw(
        st.sampled_from([1, 20, T] + ([-1] if later else []))
        | st.integers(-T if later else 1, T + 1)
    )
    prev = torch.clamp(t - k, max=T - 1)
    # prev == t is no step (the identity): its output is the sample up to a cancellation
    # of the model-output terms, which a relative error cannot judge
    return torch.where(prev == t, t - 1, prev)


def _sample_specs(data, shape, dtype, n):
    hi = 30.0 if dtype == torch.float16 else 1e4  # float16: x0 = x_t / sqrt(a) would overflow
    return [data.draw(specs(shape, dtype, hi=hi, stream=k)) for k in range(n)]


# ----------------------------------------------------------------------------- tests
@given(
    T=st.integers(1, 2000),
    schedule=st.sampled_from(SCHEDULES),
    betas=st.sampled_from([(1e-4, 0.02), (0.00085, 0.012), (1e-5, 0.5)]),
)
def test_make_schedule_matches_diffusers(T, schedule, betas):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_schedule=schedule, beta_start=betas[0], beta_end=betas[1]
    )
    table = pk.make_schedule(T, schedule, *betas)
    assert table.dtype == torch.float32 and table.shape == (T,) and table.device.type == "cpu"
    assert torch.equal(table, sched.alphas_cumprod)
    # in [0, 1), non-increasing (a large beta_end underflows the tail to 0 in float32)
    assert (table >= 0).all() and (table < 1).all() and (table[1:] <= table[:-1]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["add_noise", "get_velocity"])
@given(data=st.data())
def test_mix(backend, op, data):
    dtype, dev, shape, T, table, t_arg, t = _case(data, backend)
    x0, z = _sample_specs(data, shape, dtype, 2)
    describe(backend=backend, op=op, x0=x0, noise=z, timesteps=t_arg, table=(T, table.dtype))
    f, r = getattr(pk, op), getattr(ref, op)
    compare(
        lambda a, b: f(x0.view(a), z.view(b), t_arg, table, backend=backend),
        lambda a, b: r(x0.view(a), z.view(b), t, table),
        [x0.leaf(dev), z.leaf(dev)],
        dtype,
        what=op,
        backend=backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_diffusion_loss(backend, data):
    dtype, dev, shape, T, table, t_arg, t = _case(data, backend)
    m, x0, z = _sample_specs(data, shape, dtype, 3)
    pred = data.draw(st.sampled_from(ref.PREDICTION_TYPES))
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
    describe(
        backend=backend,
        model_output=m,
        x0=x0,
        noise=z,
        timesteps=t_arg,
        table=(T, table.dtype),
        prediction_type=pred,
        reduction=reduction,
    )
    compare(
        lambda a, b, c: pk.diffusion_loss(
            m.view(a),
            x0.view(b),
            z.view(c),
            t_arg,
            table,
            prediction_type=pred,
            reduction=reduction,
            backend=backend,
        ),
        lambda a, b, c: ref.diffusion_loss(
            m.view(a), x0.view(b), z.view(c), t, table, pred, reduction
        ),
        [m.leaf(dev), x0.leaf(dev), z.leaf(dev)],
        dtype,
        what="diffusion_loss",
        backend=backend,
    )


@st.composite
def clipping(draw):
    """clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value."""
    return dict(
        clip_sample=draw(st.booleans()),
        clip_sample_range=draw(st.sampled_from([1.0, 0.5, 3.0])),
        thresholding=draw(st.booleans()),
        dynamic_thresholding_ratio=draw(st.sampled_from([0.995, 0.9, 0.5, 1.0, 0.0])),
        sample_max_value=draw(st.sampled_from([1.0, 1.5, 10.0])),
    )


def _case(data, backend):
    """The draws every op test starts with: (dtype, device, sample shape, T, schedule,
    timesteps as passed, timesteps as a tensor)."""
    dtype, dev = data.draw(dtypes(backend)), backend_device(backend)
    shape = data.draw(sample_shape(backend))
    T, table = data.draw(tables(dev))
    t_arg, t = data.draw(timesteps(shape[0], T, dev))
    return dtype, dev, shape, T, table, t_arg, t


def _noise_arg(data, shape, dtype, dev):
    """(keyword for the op, the noise tensor it amounts to): explicit noise, or a seeded
    generator (the op draws randn(sample.shape, generator, dtype=sample.dtype))."""
    if data.draw(st.booleans()):
        z = data.draw(specs(shape, dtype, hi=1.0, stream=7))
        zt = z.view(z.leaf(dev, False))
        return dict(noise=zt), zt, z
    seed = data.draw(seeds())
    zt = torch.randn(
        shape, generator=torch.Generator(dev).manual_seed(seed), dtype=dtype, device=dev
    )
    return dict(generator=torch.Generator(dev).manual_seed(seed)), zt, f"generator seed {seed}"


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_ddpm_step(backend, data):
    dtype, dev, shape, T, table, t_arg, t = _case(data, backend)
    prev = data.draw(st.none() | prev_of(t, T))
    m, s = _sample_specs(data, shape, dtype, 2)
    noise_kw, z, z_note = _noise_arg(data, shape, dtype, dev)
    kw = dict(
        prediction_type=data.draw(st.sampled_from(ref.PREDICTION_TYPES)), **data.draw(clipping())
    )
    describe(
        backend=backend,
        model_output=m,
        sample=s,
        timesteps=t_arg,
        prev_timesteps=prev,
        noise=z_note,
        table=(T, table.dtype),
        **kw,
    )
    # The table is a leaf without gradient: the checker's rounding sensitivity then moves
    # the schedule too (a step's coefficients are differences of alphas, see test_ddim_step).
    compare(
        lambda a, b, tab: pk.ddpm_step(
            m.view(a), t_arg, s.view(b), tab, prev_timesteps=prev, backend=backend, **noise_kw, **kw
        ),
        lambda a, b, tab: ref.ddpm_step(
            m.view(a), t, s.view(b), tab, prev_timesteps=prev, noise=z, **kw
        ),
        [m.leaf(dev), s.leaf(dev), table],
        dtype,
        what="ddpm_step",
        backend=backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_ddim_step(backend, data):
    dtype, dev, shape, T, table, t_arg, t = _case(data, backend)
    # eta > 0 with a' < a (towards more noise) has no real sigma: NaN by design (see
    # test_ddim_towards_noise_with_eta_zero), gradients unspecified; eta = 0 takes any step.
    eta = data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    prev = data.draw(prev_of(t, T, later=eta == 0))
    m, s = _sample_specs(data, shape, dtype, 2)
    noise_kw, z, z_note = _noise_arg(data, shape, dtype, dev)
    kw = dict(
        prediction_type=data.draw(st.sampled_from(ref.PREDICTION_TYPES)),
        eta=eta,
        use_clipped_model_output=data.draw(st.booleans()),
        final_alpha_cumprod=data.draw(
            st.sampled_from([1.0, float(table[0])] + ([0.5] if eta == 0 else []))
        ),
        **data.draw(clipping()),
    )
    describe(
        backend=backend,
        model_output=m,
        sample=s,
        timesteps=t_arg,
        prev_timesteps=prev.tolist(),
        noise=z_note,
        table=(T, table.dtype),
        **kw,
    )
    # The table is a leaf without gradient, so the checker's rounding sensitivity moves the
    # schedule too: with final_alpha_cumprod = alphas_cumprod[t] the model output's
    # coefficient is 0 in exact math and a rounding of the alphas in any float32
    # formulation (a sample of 1e-30 against 1e-3 times that rounding).
    compare(
        lambda a, b, tab: pk.ddim_step(
            m.view(a), t_arg, prev, s.view(b), tab, backend=backend, **noise_kw, **kw
        ),
        lambda a, b, tab: ref.ddim_step(
            m.view(a), t, prev, s.view(b), tab, noise=z if eta > 0 else None, **kw
        ),
        [m.leaf(dev), s.leaf(dev), table],
        dtype,
        what="ddim_step",
        backend=backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
def test_ddim_towards_noise_with_eta_zero(backend, pred):
    """When a' < a (prev_timesteps > timesteps, or final_alpha_cumprod below
    alphas_cumprod[t]) the DDIM variance is negative. eta = 0 needs no sigma:
    x' = sqrt(a') x0 + sqrt(1 - a') eps (DDIM inversion), without a 0 * sqrt(var) (NaN) and
    with the direction term kept. eta > 0 has no real sigma: NaN everywhere."""
    dev = backend_device(backend)
    tab = pk.make_schedule(1000).to(dev)
    m = torch.tensor(
        [[0.3, -0.2], [1.5, 0.1]],
        dtype=torch.float64 if backend in ("cpu", "reference") else torch.float32,
        device=dev,
        requires_grad=True,
    )
    s = torch.tensor([[1.0, 0.5], [-0.7, 2.0]], dtype=m.dtype, device=dev, requires_grad=True)
    t, prev = torch.tensor([5, 200], device=dev), torch.tensor([-1, 600], device=dev)
    out, x0 = pk.ddim_step(
        m, t, prev, s, tab, final_alpha_cumprod=0.5, prediction_type=pred, backend=backend
    )
    a = tab.double()[t].to(m.dtype)[:, None]
    ap = torch.stack([torch.tensor(0.5, dtype=tab.dtype, device=dev), tab[600]]).to(m.dtype)[
        :, None
    ]
    eps = {
        "epsilon": m,
        "sample": (s - a.sqrt() * m) / (1 - a).sqrt(),
        "v_prediction": a.sqrt() * m + (1 - a).sqrt() * s,
    }[pred]
    torch.testing.assert_close(out, ap.sqrt() * x0 + (1 - ap).sqrt() * eps)
    g = torch.autograd.grad(out.sum(), [m, s])
    assert all(torch.isfinite(gi).all() for gi in g)
    noisy, _ = pk.ddim_step(
        m,
        t,
        prev,
        s,
        tab,
        eta=1.0,
        noise=torch.ones_like(s),
        final_alpha_cumprod=0.5,
        prediction_type=pred,
        backend=backend,
    )
    assert torch.isnan(noisy).all()
