"""NaN and Inf semantics (docs/guarantees.md has the table).

1. The reference follows PyTorch's own composition of each op (F.cosine_similarity,
   F.cross_entropy, F.kl_div, the element-wise formulas...) when one input holds a NaN,
   +Inf or -Inf: the same elements come out NaN / +Inf / -Inf.
2. Every backend gives the reference's pattern of NaN / +Inf / -Inf and the same finite
   values, for a special value in each floating input of every public op.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import pykernels as pk

from .helpers import ALL_BACKENDS, backend_device
from .op_cases import CASES, NO_BACKEND

SPECIALS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _poison(inputs, name, value):
    """A copy of inputs with one element of inputs[name] set to value: element 1 of the
    first row (the entry sample 0 reads for the schedule table)."""
    out = dict(inputs)
    x = inputs[name].detach().clone()
    if name == "alphas_cumprod":
        x[inputs["timesteps"][0]] = value
    elif x.dim() == 0:
        x.fill_(value)
    else:
        x.view(-1)[1 if x.numel() > 1 else 0] = value
    out[name] = x
    return out


def _floating_inputs(inputs):
    return [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]


def assert_same_specials(got, want, what, rtol=1e-4, atol=1e-5):
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    assert got.shape == want.shape, what
    for kind, f in (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf)):
        g, w = f(got), f(want)
        assert torch.equal(g, w), (
            f"{what}: {kind} at {g.nonzero().flatten().tolist()[:8]}, "
            f"expected at {w.nonzero().flatten().tolist()[:8]}"
        )
    fin = torch.isfinite(want)
    torch.testing.assert_close(
        got[fin], want[fin], rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}"
    )


# --------------------------------------------------------------------- backends vs reference
def _params():
    return [
        pytest.param(c, p.values[0], id=f"{c.name}-{p.id}", marks=p.marks)
        for c in CASES
        if c.name not in NO_BACKEND and not c.random
        for p in ALL_BACKENDS
        if p.id != "reference"
    ]


@pytest.mark.parametrize("case,backend", _params())
def test_backend_matches_reference(case, backend):
    device = backend_device(backend)
    base = case.inputs(device=device, size="tiny", requires_grad=False)
    for name in _floating_inputs(base):
        for label, value in SPECIALS.items():
            inputs = _poison(base, name, value)
            want = case("reference", inputs)
            got = case(backend, inputs)
            for k, (g, w) in enumerate(zip(got, want)):
                assert_same_specials(
                    g, w, f"{case.name} {backend}: {label} in '{name}', output {k}"
                )


# --------------------------------------------------------------------- reference vs PyTorch
def _torch_equivalents():
    """(case name, PyTorch's composition of the op from the case's inputs)."""

    def kd(i):
        s, t, y, T = i["student"], i["teacher"], i["labels"], 2.0
        # KL(p_T || p_S) with log-probability targets (log_target=True), where a -inf teacher
        # logit (a masked class: probability 0) adds 0, as 0 log 0 = 0; F.kl_div alone gives
        # exp(-inf) * (-inf - log p_S) = nan there (docs/distillation.md, masked vocabularies).
        lt = F.log_softmax(t / T, -1)
        kl = F.kl_div(F.log_softmax(s / T, -1), lt, reduction="none", log_target=True)
        kl = torch.where(torch.isneginf(lt), 0.0, kl).sum(-1) * T * T
        ce = F.cross_entropy(s, y, reduction="none")
        rows = torch.where(y != -100, kl + 0.5 * ce, 0.0)
        return rows.sum() / (y != -100).sum()

    def clip(i):
        a = F.normalize(i["image_features"], dim=-1)
        b = F.normalize(i["text_features"], dim=-1)
        logits = i["logit_scale"] * a @ b.T
        y = torch.arange(a.shape[0])
        return (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2

    def mix(sign):
        def f(i):
            a = i["alphas_cumprod"].to(i["x0"].dtype)[i["timesteps"]].view(-1, 1, 1, 1)
            if sign > 0:
                return a.sqrt() * i["x0"] + (1 - a).sqrt() * i["noise"]
            return a.sqrt() * i["noise"] - (1 - a).sqrt() * i["x0"]

        return f

    def dloss(i):
        return F.mse_loss(i["model_output"], mix(-1)(i))

    return {
        "cosine_similarity": lambda i: F.cosine_similarity(i["x1"], i["x2"], dim=-1, eps=1e-8),
        "pairwise_cosine_similarity": lambda i: F.cosine_similarity(
            i["a"][:, None], i["b"][None], dim=-1
        ),
        "feature_distillation_loss[mse]": lambda i: (
            (i["student"] - i["teacher"]).pow(2).sum(-1).mean()
        ),
        "feature_distillation_loss[cosine]": lambda i: (
            1 - F.cosine_similarity(i["student"], i["teacher"])
        ).mean(),
        "info_nce_loss": clip,
        "add_noise": mix(1),
        "get_velocity": mix(-1),
        "diffusion_loss": dloss,
        "distillation_loss": kd,
        "cross_entropy": lambda i: F.cross_entropy(i["logits"], i["labels"]),
        "soft_target_cross_entropy": lambda i: F.cross_entropy(
            i["logits"] / 2.0, i["target_probs"]
        ),
    }


EQUIVALENTS = _torch_equivalents()


@pytest.mark.parametrize("name", sorted(EQUIVALENTS))
def test_reference_follows_pytorch(name):
    case = next(c for c in CASES if c.name == name)
    base = case.inputs(size="tiny", requires_grad=False, dtype=torch.float64)
    f = EQUIVALENTS[name]
    for inp in _floating_inputs(base):
        for label, value in SPECIALS.items():
            inputs = _poison(base, inp, value)
            assert_same_specials(
                case("reference", inputs)[0],
                f(inputs),
                f"{name}: {label} in '{inp}'",
                rtol=1e-9,
                atol=1e-12,
            )


@pytest.mark.parametrize("backend", [p for p in ALL_BACKENDS])
def test_masked_vocabulary_cross_entropy_is_finite(backend):
    """-inf logits in classes that are not the label (a masked vocabulary) leave
    cross_entropy finite, as F.cross_entropy; a -inf at the label gives +inf."""
    device = backend_device(backend)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 10, generator=g)
    x[:, 1] = -math.inf
    y = torch.tensor([0, 3, 5, 9])
    want = F.cross_entropy(x, y, reduction="none")
    got = pk.cross_entropy(x.to(device), y.to(device), reduction="none", backend=backend)
    assert_same_specials(got, want, f"cross_entropy {backend}")
    y[2] = 1
    got = pk.cross_entropy(x.to(device), y.to(device), reduction="none", backend=backend)
    assert_same_specials(
        got, F.cross_entropy(x, y, reduction="none"), f"cross_entropy {backend}, label at -inf"
    )
    assert got[2].item() == math.inf
