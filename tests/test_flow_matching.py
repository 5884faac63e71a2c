"""Flow-matching family: flow_interpolate, flow_matching_loss, flow_match_euler_step,
sample_flow_timesteps, compute_snr / min_snr_weights, and the diffusers drop-in
FusedFlowMatchEulerDiscreteScheduler."""

import math

import pytest
import torch

import pykernels as pk
from pykernels._precision import acc_dtype
from pykernels.ops import flow_matching as fm_ops
from pykernels.reference import flow_matching as ref

from .helpers import (
    ALL_BACKENDS,
    COMPILE_BACKENDS,
    as64,
    assert_close,
    assert_compiles_fullgraph,
    backend_device,
    dtypes_for,
    opcheck_test,
    poisoned,
    randn,
    rel_err,
    vjp,
)

SHAPE = (5, 2, 3, 4)  # N = 5 samples of 24 elements
SIGMAS = [0.0, 0.003, 0.5, 0.97, 1.0]  # both ends, a shifted schedule's smallest sigma
SCHEMES = ref.WEIGHTING_SCHEMES


def _sig(values=SIGMAS, device="cpu"):
    return torch.tensor(values, dtype=torch.float32, device=device)


def _leaves(dtype, device, n=3, seed=0):
    return [
        randn(*SHAPE, dtype=dtype, device=device, seed=seed + i, requires_grad=True)
        for i in range(n)
    ]


def _check_against_reference(backend, dtype, run, leaves, what):
    """Outputs and gradients of `backend` against the reference on float64 copies."""
    with poisoned():
        outs = run(backend, *leaves)
        outs = (outs,) if isinstance(outs, torch.Tensor) else outs
        got = vjp(outs, leaves)
    r = as64(*leaves)
    want_outs = run("reference", *r)
    want_outs = (want_outs,) if isinstance(want_outs, torch.Tensor) else want_outs
    want = vjp(want_outs, r)
    for k, (o, w) in enumerate(zip(outs, want_outs)):
        assert o.dtype == (acc_dtype(dtype) if o.dim() < 2 else dtype), (
            f"{what} output {k} dtype {o.dtype}"
        )
        assert_close(o, w, dtype, what=f"{what} output {k}")
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == dtype, f"{what} grad {k} dtype {g.dtype}"
        assert_close(g, w, dtype, what=f"{what} grad {k}")


# --------------------------------------------------------------------------- reference vs closed forms


def test_reference_closed_form_float64():
    m, x0, z = (randn(len(SIGMAS), 3, dtype=torch.float64, seed=i) for i in range(3))
    s = _sig().double()
    xt = ref.flow_interpolate(x0, z, s)
    step = ref.flow_match_euler_step(m, x0, s, s * 0.5)
    for n, sn in enumerate(s.tolist()):
        for j in range(3):
            assert xt[n, j].item() == pytest.approx(
                (1 - sn) * x0[n, j].item() + sn * z[n, j].item(), rel=1e-14
            )
            assert step[n, j].item() == pytest.approx(
                x0[n, j].item() - 0.5 * sn * m[n, j].item(), rel=1e-14
            )
    for scheme in SCHEMES:
        for pre in (False, True):
            got = ref.flow_matching_loss(m, x0, z, s, scheme, pre, "none")
            for n, sn in enumerate(s.tolist()):
                w = {
                    "none": 1.0,
                    "sigma_sqrt": max(sn, 1e-4) ** -2,
                    "cosmap": 2 / (math.pi * (1 - 2 * sn + 2 * sn * sn)),
                }[scheme]
                velocity_err = ((m[n] - (z[n] - x0[n])) ** 2).mean().item()
                # preconditioned: the prediction -sigma m + x_t against the target x0
                pre_err = ((-sn * m[n] + (1 - sn) * x0[n] + sn * z[n] - x0[n]) ** 2).mean().item()
                if not pre:
                    want = w * velocity_err
                elif scheme == "sigma_sqrt":  # sigma^-2 sigma^2 = 1 exactly, also at sigma = 0
                    want = velocity_err
                    if sn > 0:
                        assert want == pytest.approx(sn**-2 * pre_err, rel=1e-9)
                else:
                    want = w * pre_err
                assert got[n].item() == pytest.approx(want, rel=1e-12, abs=1e-15), (scheme, pre, n)


def test_sigma_sqrt_at_zero_is_the_documented_clamp():
    """sigma_sqrt weights 1 / max(sigma, 1e-4)^2: finite (1e8) at sigma = 0, diffusers'
    sigma^-2 above the clamp; with preconditioning the weight is exactly 1 at every sigma."""
    s = torch.tensor([0.0, 1e-5, 1e-4, 0.5], dtype=torch.float64)
    w = ref.loss_weight(s, "sigma_sqrt")
    assert w.tolist() == pytest.approx([1e8, 1e8, 1e8, 4.0], rel=1e-12)
    assert ref.loss_weight(s, "sigma_sqrt", True).tolist() == [1.0] * 4


# --------------------------------------------------------------------------- backends vs the float64 reference


def _dtype_params(dtypes=None):
    out = []
    for p in ALL_BACKENDS:
        for dt in dtypes or dtypes_for(p.id):
            out.append(pytest.param(p.values[0], dt, id=f"{p.id}-{str(dt)[6:]}", marks=p.marks))
    return out


@pytest.mark.parametrize("backend,dtype", _dtype_params())
def test_flow_interpolate(backend, dtype):
    dev = backend_device(backend)
    s = _sig(device=dev)
    _check_against_reference(
        backend,
        dtype,
        lambda be, x0, z: pk.flow_interpolate(x0, z, s, backend=be),
        _leaves(dtype, dev, 2),
        f"flow_interpolate {backend}",
    )


@pytest.mark.parametrize("backend,dtype", _dtype_params())
def test_flow_match_euler_step(backend, dtype):
    dev = backend_device(backend)
    s, s_next = _sig(device=dev), _sig([0.9, 0.0, 0.3, 0.9, 0.5], dev)
    _check_against_reference(
        backend,
        dtype,
        lambda be, m, x: pk.flow_match_euler_step(m, x, s, s_next, backend=be),
        _leaves(dtype, dev, 2),
        f"flow_match_euler_step {backend}",
    )


@pytest.mark.parametrize("precondition", [False, True], ids=["plain", "precondition"])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("backend,dtype", _dtype_params())
def test_flow_matching_loss(backend, dtype, scheme, precondition):
    dev = backend_device(backend)
    s = _sig(device=dev)
    if dtype == torch.float16 and scheme == "sigma_sqrt" and not precondition:
        s = _sig(
            [0.25, 0.3, 0.5, 0.97, 1.0], dev
        )  # 1 / sigma^2 at sigma ~ 0: gradients beyond float16's range
    for reduction in ("mean", "none"):

        def run(be, m, x0, z):
            return pk.flow_matching_loss(
                m,
                x0,
                z,
                s,
                weighting_scheme=scheme,
                precondition_outputs=precondition,
                reduction=reduction,
                return_noisy=True,
                backend=be,
            )

        _check_against_reference(
            backend, dtype, run, _leaves(dtype, dev), f"loss {scheme} {reduction} {backend}"
        )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("which", ["model_output", "x0", "noise"])
def test_loss_grads_only_where_required(backend, which):
    """Only the inputs that require grad get one (usually model_output alone), each equal
    to the reference's."""
    dev = backend_device(backend)
    names = ["model_output", "x0", "noise"]
    leaves = [
        randn(*SHAPE, device=dev, seed=i, requires_grad=(n == which)) for i, n in enumerate(names)
    ]
    s = _sig(device=dev)
    loss = pk.flow_matching_loss(*leaves, s, weighting_scheme="cosmap", backend=backend)
    (g,) = torch.autograd.grad(loss, [leaves[names.index(which)]])
    r = as64(*leaves)
    (w,) = torch.autograd.grad(ref.flow_matching_loss(*r, s, "cosmap"), [r[names.index(which)]])
    assert_close(g, w, torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_sigma_shapes_and_scalars(backend):
    """A number, a 0-dim tensor, [N], [N, 1, 1, 1] (diffusers' get_sigmas shape) and
    [1, 1, 1, 1] all mean one noise level per sample."""
    dev = backend_device(backend)
    x0, z = randn(*SHAPE, device=dev, seed=1), randn(*SHAPE, device=dev, seed=2)
    per_sample = _sig(device=dev)
    want = pk.flow_interpolate(x0, z, per_sample, backend="reference")
    assert torch.equal(
        pk.flow_interpolate(x0, z, per_sample.reshape(-1, 1, 1, 1), backend=backend),
        pk.flow_interpolate(x0, z, per_sample, backend=backend),
    )
    assert_close(
        pk.flow_interpolate(x0, z, per_sample.reshape(-1, 1, 1, 1), backend=backend),
        want,
        torch.float32,
    )
    for scalar in (
        0.25,
        torch.tensor(0.25, device=dev),
        torch.full((1, 1, 1, 1), 0.25, device=dev),
    ):
        got = pk.flow_interpolate(x0, z, scalar, backend=backend)
        assert_close(got, 0.75 * x0 + 0.25 * z, torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch_and_empty_samples(backend):
    dev = backend_device(backend)
    e = torch.zeros(0, 3, device=dev, requires_grad=True)
    assert pk.flow_interpolate(e, e, torch.zeros(0, device=dev), backend=backend).shape == (0, 3)
    assert pk.flow_matching_loss(
        e, e, e, torch.zeros(0, device=dev), reduction="none", backend=backend
    ).shape == (0,)
    assert pk.flow_matching_loss(
        e, e, e, torch.zeros(0, device=dev), backend=backend
    ).isnan()  # torch: mean of []
    d0 = torch.zeros(2, 0, device=dev)
    assert pk.flow_matching_loss(d0, d0, d0, 0.5, reduction="none", backend=backend).isnan().all()


@pytest.mark.parametrize("backend", [p for p in ALL_BACKENDS if p.id != "reference"])
def test_non_contiguous_inputs(backend):
    dev = backend_device(backend)
    m, x0, z = (randn(4, 6, 5, device=dev, seed=i).transpose(1, 2) for i in range(3))
    s = _sig([0.1, 0.5, 0.9, 1.0], dev)
    for scheme in SCHEMES:
        got = pk.flow_matching_loss(
            m, x0, z, s, weighting_scheme=scheme, reduction="none", backend=backend
        )
        assert_close(
            got, ref.flow_matching_loss(*as64(m, x0, z), s, scheme, reduction="none"), torch.float32
        )


# --------------------------------------------------------------------------- autograd, opcheck, compile


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    m, x0, z = (
        randn(3, 2, 5, dtype=torch.float64, seed=50 + i, scale=1.3, requires_grad=True)
        for i in range(3)
    )
    s, s_next = torch.tensor([0.1, 0.6, 1.0], dtype=torch.float64), torch.tensor([0.0, 0.4, 0.7])
    assert torch.autograd.gradcheck(
        lambda a, b: pk.flow_interpolate(a, b, s, backend=backend), (x0, z)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: pk.flow_match_euler_step(a, b, s, s_next, backend=backend), (m, x0)
    )
    for scheme in SCHEMES:
        for pre in (False, True):

            def f(a, b, c):
                loss, xt = pk.flow_matching_loss(
                    a,
                    b,
                    c,
                    s,
                    weighting_scheme=scheme,
                    precondition_outputs=pre,
                    reduction="none",
                    return_noisy=True,
                    backend=backend,
                )
                return loss, xt

            assert torch.autograd.gradcheck(f, (m, x0, z)), (scheme, pre)


def _opcheck_cases(dev):
    m, x0, z = (randn(3, 2, 8, device=dev, seed=60 + i) for i in range(3))
    s, s_next = _sig([0.0, 0.5, 1.0], dev), _sig([0.0, 0.2, 0.6], dev)
    g = randn(3, device=dev, seed=64)
    return [
        ("flow_interpolate", (x0.requires_grad_(), z.requires_grad_(), s)),
        ("flow_interpolate_backward", (m.detach(), s)),
        ("flow_matching_loss", (m.requires_grad_(), x0, z, s, "cosmap", True, True)),
        ("flow_matching_loss", (m, x0, z, s, "sigma_sqrt", False, False)),
        (
            "flow_matching_loss_backward",
            (g, None, m.detach(), x0.detach(), z.detach(), s, "none", False, [True, False, False]),
        ),
        (
            "flow_matching_loss_backward",
            (
                g,
                m.detach(),
                m.detach(),
                x0.detach(),
                z.detach(),
                s,
                "cosmap",
                True,
                [True, True, True],
            ),
        ),
        ("flow_match_euler_step", (m, x0, s, s_next)),
        ("flow_match_euler_step_backward", (z.detach(), s, s_next)),
    ]


test_opcheck = opcheck_test(_opcheck_cases)


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_fullgraph(backend):
    dev = backend_device(backend)

    def f(m, x0, z, s):
        xt = pk.flow_interpolate(x0, z, s.reshape(-1, 1, 1, 1), backend=backend)
        loss = pk.flow_matching_loss(
            m, x0, z, s, weighting_scheme="cosmap", precondition_outputs=True, backend=backend
        )
        nxt = pk.flow_match_euler_step(m, xt, s, s * 0.5, backend=backend)
        return loss + nxt.float().square().mean()

    m, x0, z = _leaves(torch.float32, dev)
    s = _sig(device=dev)
    tol = (1e-5, 1e-6)
    assert_compiles_fullgraph(f, f, (m, x0, z, s), [m, x0, z], dev, tol=tol, grad_tol=tol)


# --------------------------------------------------------------------------- timestep sampling


def test_shifted_schedule_and_lookup_formula():
    ts, sig = ref.shifted_schedule(1000, 3.0)
    plain = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000
    torch.testing.assert_close(sig.double(), 3 * plain / (1 + 2 * plain), rtol=1e-6, atol=0)
    torch.testing.assert_close(ts, sig * 1000)
    u = torch.tensor([0.0, 0.5, 0.9999, 1.0])
    t, s = pk.sample_flow_timesteps(4, u=u, shift=3.0)
    assert torch.equal(
        s, sig[torch.tensor([0, 500, 999, 999])]
    )  # u = 1 is clamped to the last entry
    assert t.dtype == s.dtype == torch.float32


@pytest.mark.parametrize("scheme", ref.TIMESTEP_SCHEMES)
def test_sampled_density_follows_the_generator(scheme):
    a = pk.sample_flow_timesteps(
        64, weighting_scheme=scheme, generator=torch.Generator().manual_seed(1)
    )
    b = pk.sample_flow_timesteps(
        64, weighting_scheme=scheme, generator=torch.Generator().manual_seed(1)
    )
    c = pk.sample_flow_timesteps(
        64, weighting_scheme=scheme, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert ((a[1] > 0) & (a[1] <= 1)).all()


# --------------------------------------------------------------------------- min-SNR


def test_min_snr_weights_formula():
    table = pk.make_schedule(1000)
    t = torch.tensor([0, 10, 500, 999])
    a = table.double()[t]
    snr = a / (1 - a)
    torch.testing.assert_close(pk.compute_snr(t, table).double(), snr, rtol=1e-5, atol=0)
    for pred, want in (
        ("epsilon", snr.clamp(max=5) / snr),
        ("v_prediction", snr.clamp(max=5) / (snr + 1)),
        ("sample", snr.clamp(max=5)),
    ):
        torch.testing.assert_close(
            pk.min_snr_weights(t, table, 5.0, pred).double(), want, rtol=1e-5, atol=0
        )
    zero_terminal = torch.tensor([0.5, 0.0])
    assert pk.min_snr_weights(torch.tensor([0, 1]), zero_terminal, 5.0).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_min_snr_matches_diffusers(pred):
    """compute_snr is diffusers' bitwise; the weights are train_text_to_image.py's, and
    multiplied into diffusion_loss's per-sample means they give its min-SNR loss."""
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=pred)
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (8,), generator=g)
    t[:2] = torch.tensor([0, 999])
    snr = compute_snr(sched, t)
    assert torch.equal(pk.compute_snr(t, sched.alphas_cumprod), snr)
    w = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    w = w / snr if pred == "epsilon" else w / (snr + 1)
    assert torch.equal(pk.min_snr_weights(t, sched.alphas_cumprod, 5.0, pred), w)
    m, x0, z = (randn(8, 3, 4, 4, seed=10 + i) for i in range(3))
    target = z if pred == "epsilon" else sched.get_velocity(x0, z, t)
    want = (
        torch.nn.functional.mse_loss(m, target, reduction="none").mean(dim=[1, 2, 3]) * w
    ).mean()
    table = pk.make_schedule(1000)
    per_sample = (
        pk.diffusion_loss(m, x0, z, t, table, prediction_type=pred, reduction="none")
        .flatten(1)
        .mean(1)
    )
    got = (per_sample * pk.min_snr_weights(t, table, 5.0, pred)).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- diffusers: SD3 training step

# train_dreambooth_sd3.py's --weighting_scheme -> (timestep density, loss weighting)
SD3_SCHEMES = {
    "sigma_sqrt": ("uniform", "sigma_sqrt"),
    "logit_normal": ("logit_normal", "none"),
    "mode": ("mode", "none"),
    "cosmap": ("uniform", "cosmap"),
    "none": ("uniform", "none"),
}


def _toy_model(x, t, w):
    """A differentiable stand-in for the transformer: depends on the input, the timestep
    and a parameter."""
    return w * x + torch.sin(t.float() / 300.0).reshape(-1, 1, 1, 1).to(x.dtype)


def _diffusers_sd3_step(sched, x0, noise, w, scheme, precondition, seed):
    """train_dreambooth_sd3.py's training step, its operations in its order."""
    from diffusers.training_utils import (
        compute_density_for_timestep_sampling,
        compute_loss_weighting_for_sd3,
    )

    u = compute_density_for_timestep_sampling(
        weighting_scheme=scheme,
        batch_size=x0.shape[0],
        logit_mean=0.0,
        logit_std=1.0,
        mode_scale=1.29,
        generator=torch.Generator().manual_seed(seed),
    )
    indices = (u * sched.config.num_train_timesteps).long()
    timesteps = sched.timesteps[indices]
    step_indices = [(sched.timesteps == t).nonzero().item() for t in timesteps]
    sigmas = sched.sigmas.to(dtype=x0.dtype)[step_indices].flatten().reshape(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * x0 + sigmas * noise
    pred = _toy_model(noisy, timesteps, w)
    if precondition:
        pred = pred * (-sigmas) + noisy
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=sigmas)
    target = x0 if precondition else noise - x0
    loss = torch.mean(
        (weighting.float() * (pred.float() - target.float()) ** 2).reshape(target.shape[0], -1), 1
    )
    return loss.mean(), timesteps


def _fused_sd3_step(x0, noise, w, scheme, precondition, seed, backend):
    density, weighting = SD3_SCHEMES[scheme]
    t, s = pk.sample_flow_timesteps(
        x0.shape[0],
        weighting_scheme=density,
        shift=3.0,
        generator=torch.Generator().manual_seed(seed),
    )
    noisy = pk.flow_interpolate(x0, noise, s, backend=backend)
    pred = _toy_model(noisy, t, w)
    return pk.flow_matching_loss(
        pred,
        x0,
        noise,
        s,
        weighting_scheme=weighting,
        precondition_outputs=precondition,
        backend=backend,
    ), t


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("precondition", [False, True], ids=["plain", "precondition"])
@pytest.mark.parametrize("scheme", sorted(SD3_SCHEMES))
@pytest.mark.parametrize("backend", [p for p in ALL_BACKENDS if p.id != "cuda"])
def test_sd3_training_step_matches_diffusers(backend, scheme, precondition, dtype):
    """The whole SD3 training step: the same timesteps as diffusers' script for one seed
    (bitwise), and the loss and the parameter's gradient within the precision rule of the
    script's own composition (both against the composition in float64)."""
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    x0, noise = randn(6, 2, 4, 4, dtype=dtype, seed=1), randn(6, 2, 4, 4, dtype=dtype, seed=2)
    results = {}
    for name in ("diffusers", "oracle", "fused"):
        w = torch.tensor(
            0.7, dtype=torch.float64 if name == "oracle" else dtype, requires_grad=True
        )
        if name == "fused":
            loss, t = _fused_sd3_step(x0, noise, w, scheme, precondition, seed=5, backend=backend)
        else:
            xs, zs = (x0.double(), noise.double()) if name == "oracle" else (x0, noise)
            loss, t = _diffusers_sd3_step(sched, xs, zs, w, scheme, precondition, seed=5)
        results[name] = (loss, torch.autograd.grad(loss, w)[0], t)
    assert torch.equal(results["fused"][2], results["diffusers"][2])
    for k, what in ((0, "loss"), (1, "grad")):
        want = results["oracle"][k]
        baseline = rel_err(results["diffusers"][k], want)
        assert_close(
            results["fused"][k],
            want,
            dtype,
            baseline=results["diffusers"][k],
            what=f"{what} (diffusers' error {baseline:.2g})",
        )


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("scheme", ref.TIMESTEP_SCHEMES)
def test_timestep_sampling_matches_diffusers(scheme, shift):
    """Drawn from a seed and given u: bitwise the timesteps and sigmas that
    compute_density_for_timestep_sampling and the scheduler lookup give."""
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    kw = dict(logit_mean=0.3, logit_std=1.2, mode_scale=1.29)
    u = compute_density_for_timestep_sampling(
        scheme, 512, generator=torch.Generator().manual_seed(7), **kw
    )
    idx = (u * 1000).long()
    want_t = sched.timesteps[idx]
    want_s = sched.sigmas[[(sched.timesteps == t).nonzero().item() for t in want_t]]
    got = pk.sample_flow_timesteps(
        512, weighting_scheme=scheme, shift=shift, generator=torch.Generator().manual_seed(7), **kw
    )
    given = pk.sample_flow_timesteps(512, u=u, shift=shift)
    for t, s in (got, given):
        assert torch.equal(t, want_t) and torch.equal(s, want_s)


# --------------------------------------------------------------------------- diffusers: the drop-in scheduler


def _schedulers(kind):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pykernels.integrations.diffusers import FusedFlowMatchEulerDiscreteScheduler

    cfg = (
        dict(shift=3.0)
        if kind != "dynamic"
        else dict(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, time_shift_type="exponential"
        )
    )
    pair = []
    for cls in (FlowMatchEulerDiscreteScheduler, FusedFlowMatchEulerDiscreteScheduler):
        s = cls(num_train_timesteps=1000, **cfg)
        s.set_timesteps(28, mu=0.8 if kind == "dynamic" else None)
        if kind == "begin_index":
            s.set_begin_index(0)
        pair.append(s)
    return pair


def _velocity(x, t):
    return -0.7 * x + torch.sin(t.float() / 250.0) * torch.linspace(
        -1, 1, x.shape[-1], dtype=x.dtype
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["shift3", "dynamic", "begin_index"])
@pytest.mark.parametrize("backend", [p for p in ALL_BACKENDS if p.id != "cuda"])
def test_drop_in_scheduler_matches_diffusers_loop(backend, kind, dtype, monkeypatch):
    """28 steps (shift 3.0; dynamic shifting with set_timesteps(mu=...)): every step equal
    to diffusers' within the precision rule, against the float64 loop."""
    pytest.importorskip("diffusers")
    monkeypatch.setenv("PYKERNELS_BACKEND", backend)
    base, fused = _schedulers(kind)
    torch.testing.assert_close(fused.sigmas, base.sigmas, rtol=0, atol=0)
    x = x_base = randn(3, 2, 8, dtype=dtype, seed=4)
    x64 = x.double()
    for i, t in enumerate(base.timesteps):
        x_base = base.step(_velocity(x_base, t), t, x_base).prev_sample
        x = fused.step(_velocity(x, t), t, x).prev_sample
        x64 = ref.flow_match_euler_step(
            _velocity(x64, t), x64, base.sigmas[i].double(), base.sigmas[i + 1].double()
        )
        assert x.dtype == dtype and fused.step_index == base.step_index == i + 1
        if dtype == torch.float32:
            torch.testing.assert_close(x, x_base, rtol=1e-5, atol=1e-6)
        assert_close(x, x64, dtype, baseline=x_base, what=f"step {i}")


def test_drop_in_per_sample_timesteps():
    """[batch] timesteps: each sample steps from its own place in the schedule, as
    diffusers' step of that sample alone would."""
    pytest.importorskip("diffusers")
    base, fused = _schedulers("shift3")
    x, m = randn(3, 2, 8, seed=1), randn(3, 2, 8, seed=2)
    at = [0, 11, 27]
    got = fused.step(m, base.timesteps[at], x).prev_sample
    for n, i in enumerate(at):
        one, _ = _schedulers("shift3")
        one.set_begin_index(i)
        want = one.step(m[n : n + 1], base.timesteps[i], x[n : n + 1]).prev_sample
        torch.testing.assert_close(got[n : n + 1], want, rtol=1e-6, atol=1e-7)
    assert fused.step_index is None  # per-sample steps leave the counter alone


def test_drop_in_invalid_steps_give_nan():
    """A timestep not in the schedule, or a step past the end: NaN samples (diffusers
    raises after reading the index back to the host)."""
    pytest.importorskip("diffusers")
    _, fused = _schedulers("shift3")
    x = randn(2, 4, seed=1)
    assert fused.step(x, torch.tensor(1234.5), x).prev_sample.isnan().all()
    _, fused = _schedulers("shift3")
    for t in fused.timesteps:
        assert not fused.step(x, t, x).prev_sample.isnan().any()
    assert fused.step(x, fused.timesteps[-1], x).prev_sample.isnan().all()


def test_drop_in_unsupported_options_raise():
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pykernels.integrations.diffusers import FusedFlowMatchEulerDiscreteScheduler

    with pytest.raises(NotImplementedError, match="stochastic_sampling"):
        FusedFlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    fused = FusedFlowMatchEulerDiscreteScheduler.from_config(
        FlowMatchEulerDiscreteScheduler(shift=3.0).config
    )
    fused.set_timesteps(4)
    x, t = torch.ones(2, 3), fused.timesteps[0]
    with pytest.raises(NotImplementedError, match="per_token_timesteps"):
        fused.step(x, t, x, per_token_timesteps=torch.full((2, 3), 500.0))
    with pytest.raises(ValueError, match="timestep"):
        fused.step(x, 3, x)
    with pytest.raises(ValueError, match="timestep"):
        fused.step(x, fused.timesteps[:3], x)
    fused.set_begin_index(4)  # one past the 4 steps
    with pytest.raises(ValueError, match="begin_index 4 is outside"):
        fused.step(x, t, x)


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """The names of the aten / pykernels ops run below Python."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("begin_index", [False, True])
def test_drop_in_loop_reads_nothing_back_to_the_host(begin_index, monkeypatch):
    """The whole 28-step loop, first step included, runs no op that reads a tensor back to
    the host (.item(), nonzero, data-dependent shapes), so on a GPU it neither syncs nor
    breaks a CUDA graph capture. The CPU-only sigma range check (skipped on CUDA) is
    switched off to see that."""
    pytest.importorskip("diffusers")
    monkeypatch.setattr(fm_ops, "_check_sigma_range", lambda *a: None)
    _, fused = _schedulers("begin_index" if begin_index else "shift3")
    x = randn(2, 8, seed=1)
    with _OpLog() as log:
        for t in fused.timesteps:
            x = fused.step(-x, t, x).prev_sample
    assert "flow_match_euler_step" in log.names
    assert not log.names & {
        "_local_scalar_dense",
        "item",
        "nonzero",
        "is_nonzero",
        "equal",
        "masked_select",
    }, log.names


def test_drop_in_cuda_graph():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    pytest.importorskip("diffusers")
    base, fused = _schedulers("shift3")
    dev = torch.device("cuda")
    fused.set_timesteps(28, device=dev)
    base.set_timesteps(28)
    x = randn(4, 4, 16, 16, device=dev, seed=1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (allocations, kernel loads)
        fused.step(-x, fused.timesteps[0], x)
    torch.cuda.current_stream().wait_stream(stream)
    fused.set_timesteps(28, device=dev)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            y = x
            for t in fused.timesteps:
                y = fused.step(-y, t, y).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph.replay()
    want = x.cpu()
    for t in base.timesteps:
        want = base.step(-want, t, want).prev_sample
    torch.testing.assert_close(y.cpu(), want, rtol=1e-5, atol=1e-6)


X, T = torch.ones(3, 4), torch.tensor([1, 2, 3])
TABLE = pk.make_schedule(10)


def test_module_flow_matching_loss():
    mod = pk.nn.FlowMatchingLoss(weighting_scheme="cosmap", precondition_outputs=True)
    m, x, z = (randn(*SHAPE, seed=i) for i in range(3))
    s = _sig()
    torch.testing.assert_close(mod(m, x, z, s), ref.flow_matching_loss(m, x, z, s, "cosmap", True))
    assert "cosmap" in repr(mod)
