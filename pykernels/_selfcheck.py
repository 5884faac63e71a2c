"""`python -m pykernels check`: every available backend against the reference.

Each ops/<family>.py lists SELFCHECK entries (label, make_inputs(device, dtype),
call(backend, *inputs) -> Tensor). For each entry, backend and dtype, the output and
the gradients of its floating inputs are compared with the reference run on float64
copies of the same inputs, by relative error against the dtype's tolerance.
"""
from __future__ import annotations

import importlib

import torch

from . import backends
from ._precision import TOLERANCE, rel_err
from .ops import FAMILIES

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def entries():
    out = []
    for fam in FAMILIES:
        try:
            mod = importlib.import_module(f"pykernels.ops.{fam}")
        except ImportError:
            continue
        out += [(fam, *e) for e in getattr(mod, "SELFCHECK", [])]
    return out


def _run(call, backend, inputs):
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    out = call(backend, *inputs)
    if not leaves or not out.requires_grad:
        return [out]
    return [out, *torch.autograd.grad(out, leaves, torch.ones_like(out), allow_unused=True)]


def _as64(x):
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().double().requires_grad_(x.requires_grad)
    return x


def run(device: torch.device, verbose: bool = True) -> list[str]:
    failures = []
    names = [b for b in backends.available(device) if b != "reference"]
    if verbose:
        print(f"checking {names} on {device.type} against the float64 reference")
    for fam, label, make_inputs, call in entries():
        for dtype in DTYPES:
            torch.manual_seed(0)
            inputs = make_inputs(device, dtype)
            want = _run(call, "reference", [_as64(x) for x in inputs])
            for be in names:
                got = _run(call, be, inputs)
                err = max(rel_err(g, w) if g is not None else 0.0 for g, w in zip(got, want))
                ok = err <= TOLERANCE[dtype]
                if not ok:
                    failures.append(f"{fam}/{label}/{be}/{dtype}")
                if verbose:
                    print(f"  {'ok  ' if ok else 'FAIL'} {fam:<12} {label:<40} {be:<7} {str(dtype)[6:]:<9} rel err {err:.2e}")
    if verbose:
        print("all backends agree with the reference" if not failures else f"{len(failures)} failure(s)")
    return failures
