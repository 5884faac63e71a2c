"""Diffusion samplers: ddpm_step and ddim_step on every backend against the reference (clip
modes, prediction types, eta), and against diffusers (the steps, the drop-in schedulers)."""

import pytest
import torch

import pykernels as pk
from pykernels.reference import diffusion as ref

from ._diffusion import (
    PREV,
    SCALES,
    TABLE,
    TS,
    check_against_reference,
    long_tensor,
    make_leaves,
)
from .helpers import (
    ALL_BACKENDS,
    FUSED_BACKENDS,
    assert_close,
    backend_device,
    dtypes_for,
    randn,
)

# clip modes: (clip_sample, thresholding)
CLIPS = {"none": (False, False), "clip": (True, False), "threshold": (False, True)}


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
@pytest.mark.parametrize("clip", list(CLIPS))
def test_ddpm_step(backend, pred, clip):
    dev = backend_device(backend)
    t = long_tensor(TS, dev)
    cs, th = CLIPS[clip]
    kw = dict(
        prediction_type=pred,
        clip_sample=cs,
        thresholding=th,
        sample_max_value=1.5,
        dynamic_thresholding_ratio=0.9,
    )
    for dtype in dtypes_for(backend):
        m, s, z = make_leaves(dtype, dev, scale=SCALES)
        outs = check_against_reference(
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
    t, prev = long_tensor(TS, dev), long_tensor(PREV, dev)
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
        m, s, z = make_leaves(dtype, dev, scale=SCALES)
        outs = check_against_reference(
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
    t = long_tensor([0, 0, 0], dev)
    out, _ = pk.ddpm_step(m, t, s, TABLE.to(dev), noise=z, backend=backend)
    want, _ = ref.ddpm_step(m, t, s, TABLE.to(dev), noise=None)
    torch.testing.assert_close(out, want)
    z = randn(3, 16, device=dev, seed=3)
    t = long_tensor([0, 5, 0], dev)
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
    t = long_tensor([10, 900], dev)
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


def _sampler_inputs(dev):
    """(model_output, sample) of the scheduler comparisons with diffusers; the sample spans
    about +-2 so that clipping and thresholding both act."""
    return randn(2, 3, 4, 4, device=dev, seed=1), randn(2, 3, 4, 4, device=dev, seed=2, scale=2.0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
def test_ddpm_matches_diffusers(backend, pred):
    diffusers = pytest.importorskip("diffusers")
    from pykernels.integrations.diffusers import FusedDDPMScheduler

    dev = backend_device(backend)
    m, s = _sampler_inputs(dev)
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
                m,
                long_tensor([t, t], dev),
                s,
                TABLE.to(dev),
                noise=z.float(),
                backend=backend,
                **cfg,
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


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pred", ref.PREDICTION_TYPES)
def test_ddpm_inference_schedule_matches_diffusers(backend, pred):
    """With an inference schedule the previous timestep is the next entry of timesteps."""
    diffusers = pytest.importorskip("diffusers")
    from pykernels.integrations.diffusers import FusedDDPMScheduler

    dev = backend_device(backend)
    m, s = _sampler_inputs(dev)
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
    m, s = _sampler_inputs(dev)
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
                        long_tensor([t, t], dev),
                        long_tensor([t - 20] * 2, dev),
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
