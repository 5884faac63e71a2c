"""Distillation family: the precision contract where PyTorch's own composition loses digits
(close distributions, beta near 0 or 1, far KL, confident rows); the rest is in
test_distillation.py."""

import math

import pytest
import torch

import pykernels as pk
from pykernels.reference import distillation as ref

from ._fuzz import Spec
from .helpers import (
    FUSED_BACKENDS,
    assert_close,
    backend_device,
    grads,
)

# --------------------------------------------------------------------------- the precision contract
# A result is within max(the dtype's tolerance, 2 x the error of PyTorch's composition in
# the same dtype), both against float64 (pykernels/_precision.py). The cases below are where
# that composition loses digits itself; the kernels are held to the same rule there.

# (teacher logit scale, T, beta) against a uniform student (logits of 1e-30)
HARD_CASES = {
    "close-0.25": (0.3, 4.0, 0.25),
    "close-0.5": (0.3, 4.0, 0.5),  # log m - log p_S cancels
    "small-beta": (30.0, 2.0, 1e-6),
    "tiny-beta": (30.0, 2.0, 1.2e-38),  # m is p_S in float32
    "close-beta-near-1": (0.3, 4.0, 1 - 1e-9),
    "beta-near-1": (30.0, 2.0, 1 - 1e-9),  # beta is 1
    "close-kl": (1.0, 10.0, 0.0),
    "close-reverse-kl": (1.0, 10.0, 1.0),  # log Z_T - log Z_S cancels
}


def _assert_rows_meet_the_contract(s64, t64, T, beta, backend):
    """The per-row loss of float32 logits (s64, t64 hold float32 values) on `backend`, within
    the float32 contract against float64, with PyTorch's float32 composition as baseline."""
    args = (T, None, 1.0, 0.0, beta, -100, 0.0, "none")
    got = pk.distillation_loss(
        s64.float().to(backend_device(backend)),
        t64.float().to(backend_device(backend)),
        temperature=T,
        beta=beta,
        reduction="none",
        backend=backend,
    )
    assert_close(
        got,
        ref.distillation_loss(s64, t64, *args),
        torch.float32,
        baseline=ref.distillation_loss(s64.float(), t64.float(), *args),
    )


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("case", list(HARD_CASES))
def test_hard_cases_meet_the_precision_contract(backend, case):
    """Close distributions, beta near 0 or 1: the loss within the float32 contract."""
    scale, T, beta = HARD_CASES[case]
    g = torch.Generator().manual_seed(3)
    s64 = (1e-30 * torch.randn(4, 7, generator=g, dtype=torch.float64)).float().double()
    t64 = (scale * torch.randn(4, 7, generator=g, dtype=torch.float64)).float().double()
    _assert_rows_meet_the_contract(s64, t64, T, beta, backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_far_kl_meets_the_precision_contract(backend, beta):
    """A uniform student over 1025 classes against a sharp teacher (Z_T = 2.9, Z_S = 1025)."""
    s64 = Spec((1, 1025), torch.float32, scale=1e-30, seed=0, stream=0).values64().float().double()
    t64 = (
        Spec((1, 1025), torch.float32, scale=30.0, values="wide", seed=0, stream=1)
        .values64()
        .float()
        .double()
    )
    _assert_rows_meet_the_contract(s64, t64, 4.0, beta, backend)


def _grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    return grads(fn(*xs), xs)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_confident_rows_gradient_meets_the_precision_contract(backend, beta):
    """Rows whose maximum holds all but ~1e-7 of the probability: the maximum's gradient is
    a difference of two numbers ~8 that leaves ~1e-7 in every float32 formulation."""
    dev = backend_device(backend)
    s64 = torch.tensor(
        [[25.0, -25.0, -20.0], [0.0, 48.0, -3.0], [-1.0, 2.0, 0.5]], dtype=torch.float64
    )
    t64 = torch.tensor([[1.0, 0.3, -0.5], [50.0, -1.0, 0.6], [0.2, 0.1, 40.0]], dtype=torch.float64)
    want = _grads(
        lambda s, t: ref.distillation_loss(s, t, 3.0, None, 1.0, 0.0, beta, -100, 0.0, "sum"),
        s64,
        t64,
    )
    got = _grads(
        lambda s, t: pk.distillation_loss(
            s, t, temperature=3.0, beta=beta, reduction="sum", backend=backend
        ),
        s64.float().to(dev),
        t64.float().to(dev),
    )
    torch_f32 = _grads(
        lambda s, t: ref.distillation_loss(s, t, 3.0, None, 1.0, 0.0, beta, -100, 0.0, "sum"),
        s64.float(),
        t64.float(),
    )
    for g, w, b, name in zip(got, want, torch_f32, ("student", "teacher")):
        for r in range(3):  # each row on its own: their gradients differ by orders of magnitude
            assert_close(g[r], w[r], torch.float32, baseline=b[r], what=f"grad {name}, row {r}")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_beta_below_float32_range(backend):
    """A beta of 1.2e-76 is 0 as a float32 kernel argument, as a GPU launch passes it (the
    Triton interpreter would type it float64, and its float64 -> bfloat16 stores differ)."""
    dev = backend_device(backend)
    s = torch.tensor(
        [[1.5407e-30, -2.9274e-31]], dtype=torch.bfloat16, device=dev, requires_grad=True
    )
    t = torch.tensor([[-0.36133, 1.0703]], dtype=torch.bfloat16, device=dev)
    y = torch.tensor([0], device=dev)
    loss = pk.distillation_loss(
        s,
        t,
        temperature=0.5,
        labels=y,
        hard_weight=0.5,
        beta=1.2210023632756104e-76,
        reduction="sum",
        backend=backend,
    )
    (g,) = torch.autograd.grad(loss, [s])
    assert_close(g, torch.tensor([[-0.25, 0.25]], dtype=torch.float64), torch.bfloat16)


# Confident float64 rows: a loss of log1p(exp(-40)) = 4.2e-18 is below the rounding of
# log(1 + 4.2e-18), and the label's gradient -(1 - p_y) = -exp(-55) below that of p_y - 1.
_CONFIDENT = torch.tensor([[40.0, 0.0, -3.0], [7.0, 7.0, -50.0]], dtype=torch.float64)
_CONFIDENT_LOSS = torch.tensor(
    [math.log1p(math.exp(-40) + math.exp(-43)), math.log1p(1 + math.exp(-57))], dtype=torch.float64
)


def test_float64_reference_is_exact_on_confident_rows():
    """The reference (the tests' exact answer) keeps those digits in float64: the
    log-sum-exp as the maximum plus log1p of the other terms."""
    y = torch.tensor([0, 1])
    assert_close(ref.cross_entropy(_CONFIDENT, y, reduction="none"), _CONFIDENT_LOSS, torch.float64)
    kd = ref.distillation_loss(_CONFIDENT, _CONFIDENT.flip(0), 1.0, y, 0.0, 1.0, reduction="none")
    assert_close(kd, _CONFIDENT_LOSS, torch.float64)
    xs, q = (
        torch.tensor([[1.5409961, -0.2934289]], dtype=torch.float64),
        torch.tensor([[1.0, 0.0]], dtype=torch.float64),
    )
    assert_close(
        ref.soft_target_cross_entropy(xs, q, 0.05, "none"),
        torch.log1p(torch.exp(-(xs[:, 0] - xs[:, 1]) / 0.05)),
        torch.float64,
    )
    x = torch.tensor([[46.0, -9.0]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(ref.cross_entropy(x, torch.tensor([0]), reduction="sum"), [x])
    tail = math.exp(-55) / (1 + math.exp(-55))
    assert_close(g, torch.tensor([[-tail, tail]], dtype=torch.float64), torch.float64)


def test_float64_confident_rows_meet_the_precision_contract():
    """The cpu kernel on those rows, against PyTorch's float64 composition (no exact forms
    are bought in the kernel: precise=False is that composition)."""
    if "cpu" not in pk.backends.available(torch.device("cpu")):
        pytest.skip("pykernels._C not built")
    y = torch.tensor([0, 1])
    got = pk.cross_entropy(_CONFIDENT, y, reduction="none", backend="cpu")
    assert_close(
        got,
        _CONFIDENT_LOSS,
        torch.float64,
        baseline=ref.cross_entropy(_CONFIDENT, y, reduction="none", precise=False),
    )
    base = ref.distillation_loss(
        _CONFIDENT, _CONFIDENT.flip(0), 1.0, y, 0.0, 1.0, reduction="none", precise=False
    )
    kd = pk.distillation_loss(
        _CONFIDENT,
        _CONFIDENT.flip(0),
        labels=y,
        soft_weight=0.0,
        hard_weight=1.0,
        reduction="none",
        backend="cpu",
    )
    assert_close(kd, _CONFIDENT_LOSS, torch.float64, baseline=base)
    xs, q = (
        torch.tensor([[1.5409961, -0.2934289]], dtype=torch.float64),
        torch.tensor([[1.0, 0.0]], dtype=torch.float64),
    )
    soft = pk.soft_target_cross_entropy(xs, q, temperature=0.05, reduction="none", backend="cpu")
    assert_close(
        soft,
        ref.soft_target_cross_entropy(xs, q, 0.05, "none"),
        torch.float64,
        baseline=ref.soft_target_cross_entropy(xs, q, 0.05, "none", precise=False),
    )
    x = torch.tensor([[46.0, -9.0]], dtype=torch.float64)
    want = _grads(lambda a: ref.cross_entropy(a, torch.tensor([0]), reduction="sum"), x)[0]
    base = _grads(
        lambda a: ref.cross_entropy(a, torch.tensor([0]), reduction="sum", precise=False), x
    )[0]
    got = _grads(
        lambda a: pk.cross_entropy(a, torch.tensor([0]), reduction="sum", backend="cpu"), x
    )[0]
    assert_close(got, want, torch.float64, baseline=base, what="grad")
