"""The diffusion tests' shared pieces (test_diffusion.py, test_diffusion_samplers.py): the
schedule, the batch of mixed timesteps, leaf tensors, and the check of a backend against the
float64 reference within the precision contract."""

import torch

import pykernels as pk

from .helpers import as64, assert_close, poisoned, randn, vjp

T = 1000
TABLE = pk.make_schedule(T)
SHAPE = (5, 2, 3, 4)  # N = 5 samples of 24 elements
TS = [0, 1, 500, 998, 999]  # mixed timesteps in one batch, incl. 0 and the last
PREV = [-20, -1, 480, 978, 979]  # DDIM: prev < 0 uses final_alpha_cumprod
# inputs scaled so that clipping and thresholding really bite
SCALES = (1.0, 1.5, 1.0)


def long_tensor(values, device):
    return torch.tensor(values, dtype=torch.int64, device=device)


def make_leaves(dtype, device, n=3, scale=(1.0, 1.0, 1.0), seed=0):
    return [
        randn(*SHAPE, dtype=dtype, device=device, seed=seed + i, scale=scale[i], requires_grad=True)
        for i in range(n)
    ]


def check_against_reference(backend, dtype, run_fused, run_ref, leaves, what):
    """Forward outputs and gradients of a backend against the float64 reference, within the
    precision contract: the dtype's tolerance or twice the error of the same formulas run
    in `dtype` (the reference on the same inputs), whichever is larger."""
    with poisoned():
        outs = run_fused(*leaves)
        outs = (outs,) if isinstance(outs, torch.Tensor) else outs
        got = vjp(outs, leaves)
    runs = []
    for r in (as64(*leaves), [x.detach().clone().requires_grad_(x.requires_grad) for x in leaves]):
        ref_outs = run_ref(*r)
        ref_outs = (ref_outs,) if isinstance(ref_outs, torch.Tensor) else ref_outs
        runs.append((ref_outs, vjp(ref_outs, r)))
    (want_outs, want), (base_outs, base) = runs
    for k, (o, w, b) in enumerate(zip(outs, want_outs, base_outs)):
        assert_close(o, w, dtype, baseline=b, what=f"{what} output {k}")
    for k, (g, w, b) in enumerate(zip(got, want, base)):
        assert g.dtype == dtype, f"{what} grad {k} dtype {g.dtype}"
        assert_close(g, w, dtype, baseline=b, what=f"{what} grad {k}")
    return outs
