"""Training parity: each reference model in pykernels.models trains from one seed with the
plain-PyTorch ops (ops="reference") and with the fused ops (ops="fused", the default
backend: the C++ CPU kernels here), in float32 on CPU; the per-step losses and the final
evaluation numbers must agree.

Tolerance, and why. Both runs draw the same data and noise, so they differ only by the
rounding of each op. An op's float32 result may differ from the exact value by up to the
float32 tolerance of pykernels/_precision.py (about 1e-5 relative), and training carries
that error forward. We measured how far it carries by wrapping every reference op so that each output element is
multiplied by (1 + rel * u), u uniform in [-1, 1] (``Perturbed`` below): with rel = 1e-5
the largest relative step-loss deviation over a whole run was 1.1e-5 (distillation),
1.0e-5 (CLIP), 2.7e-5 (MAE) and 2.1e-5 (diffusion); it scales linearly with rel (these
small models at these learning rates are not chaotic over a few hundred steps). So
RTOL = 1e-4 admits every op at that tolerance with a 3.5x margin for growth, while
an op that is off by 1e-3 relative (a wrong eps, a dropped term, half precision
somewhere) moves the curve by 1e-3 and fails: ``test_parity_catches_a_1e-3_error``
checks that the comparison really fails then. Accuracies may differ by one test example
(a prediction whose two best scores are within round-off of each other can flip); a real
defect flips many.
"""

from __future__ import annotations

import pytest
import torch

from pykernels.models import clip, diffusion, distillation, get_ops, mae, reference_ops

RTOL = 1e-4  # per-step loss and continuous evaluation numbers, relative (see the docstring)
ATOL = 1e-6  # only matters for values near zero
ACCURACY_ATOL = 0.005  # one example in the smallest evaluation set (~365 tokens)
SAMPLE_ATOL = 1e-3  # diffusion samples, in [-1, 1] pixel units
ACCURACIES = ("accuracy", "top1", "agreement")

MODELS = {"distillation": distillation, "clip": clip, "mae": mae, "diffusion": diffusion}


class Perturbed:
    """Reference ops whose every floating output element is multiplied by (1 + rel * u),
    u ~ U[-1, 1] from a generator of its own (the data and noise draws do not change)."""

    name = "perturbed"

    def __init__(self, rel: float, seed: int = 1):
        self.rel, self.g = rel, torch.Generator().manual_seed(seed)

    def __getattr__(self, name: str):
        fn = getattr(reference_ops, name)

        def perturbed(*args, **kwargs):
            out = fn(*args, **kwargs)
            outs = tuple(self._perturb(o) for o in (out if isinstance(out, tuple) else (out,)))
            return outs if isinstance(out, tuple) else outs[0]

        return perturbed

    def _perturb(self, y):
        if not (isinstance(y, torch.Tensor) and y.is_floating_point()):
            return y
        return y * (1 + self.rel * (2 * torch.rand(y.shape, generator=self.g) - 1))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are far too small to gain from intra-op threads, and on a shared CI
    machine OpenMP's barriers then cost up to 30x (measured: CLIP 0.9 s -> 28 s of CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_RUNS: dict = {}


def trained(model: str, ops, device: str = "cpu"):
    key = (model, ops if isinstance(ops, str) else (ops.name, ops.rel), device)
    if key not in _RUNS:
        _RUNS[key] = MODELS[model].train(ops, device=device)
    return _RUNS[key]


def assert_parity(fused, ref) -> None:
    assert len(fused.losses) == len(ref.losses) >= 200
    torch.testing.assert_close(
        torch.tensor(fused.losses),
        torch.tensor(ref.losses),
        rtol=RTOL,
        atol=ATOL,
        msg=lambda m: f"per-step training losses differ:\n{m}",
    )
    assert fused.evals.keys() == ref.evals.keys()
    for name, value in ref.evals.items():
        if any(word in name for word in ACCURACIES):
            assert abs(fused.evals[name] - value) <= ACCURACY_ATOL, (name, fused.evals[name], value)
        else:
            assert fused.evals[name] == pytest.approx(value, rel=RTOL, abs=ATOL), name


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(
                not torch.cuda.is_available(),
                reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)",
            ),
        ],
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", list(MODELS))
def test_training_parity(model, device):
    """On CUDA the fused ops are the `cuda` backend; fp32 matmuls follow torch's TF32 flag
    (off by default), so the same float32 tolerance applies."""
    ref, fused = trained(model, "reference", device), trained(model, "fused", device)
    phases = (
        distillation.phases(distillation.SIZES["test"])
        if model == "distillation"
        else {"": slice(None)}
    )
    for phase in phases.values():  # each phase learns, so parity is not between two flat lines
        losses = ref.losses[phase]
        assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    assert_parity(fused, ref)
    if model == "diffusion":
        for sampler in ("ddim", "ddpm"):
            torch.testing.assert_close(
                fused.extras[sampler], ref.extras[sampler], rtol=0, atol=SAMPLE_ATOL
            )


@pytest.mark.parametrize("model", ["clip", "diffusion"])
def test_parity_catches_a_1e_3_error(model):
    """The negative control: ops that are right to 1e-3 only must fail the comparison."""
    with pytest.raises(AssertionError):
        assert_parity(trained(model, Perturbed(1e-3)), trained(model, "reference"))


@pytest.mark.parametrize("model", ["clip", "diffusion"])
def test_parity_admits_op_level_round_off(model):
    """The calibration: ops at the float32 tolerance (1e-5 relative) must pass."""
    assert_parity(trained(model, Perturbed(1e-5)), trained(model, "reference"))


def test_siglip_training_parity():
    """CLIP trained with SigLIP's sigmoid loss: the fused op against open_clip's dense
    composition (examples/train_clip.py --loss siglip), the same tolerances."""
    ref = clip.train("reference", loss="siglip")
    fused = clip.train("fused", loss="siglip")
    losses = ref.losses
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    assert_parity(fused, ref)


def test_runs_are_reproducible():
    a, b = clip.train("reference", steps=20), clip.train("reference", steps=20)
    assert a.losses == b.losses and a.evals == b.evals


def test_get_ops():
    import pykernels

    assert get_ops("reference") is reference_ops
    assert get_ops("fused").pairwise_cosine_similarity is pykernels.pairwise_cosine_similarity
    x = torch.randn(4, 8)
    torch.testing.assert_close(
        get_ops("fused:reference").pairwise_cosine_similarity(x, x),
        pykernels.pairwise_cosine_similarity(x, x, backend="reference"),
    )
    with pytest.raises(ValueError, match="ops must be"):
        get_ops("fast")
