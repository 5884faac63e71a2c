"""Accumulation dtypes and the precision contract, shared by the ops, the tests, the
self-check and the benchmarks.

Every op reads and writes its inputs' dtype and accumulates in `acc_dtype` (float32, or
float64 for float64 inputs). A backend's result is correct when its relative error
against the float64 reference, ``rel_err(out, ref)``, is within
``tolerance(dtype, baseline)``: the dtype's tolerance, or twice the error of the
idiomatic PyTorch composition in the same dtype when that is larger (flash-attention's
rule). Extra precision beyond that is never bought with speed.
"""

from __future__ import annotations

import torch

# ||out - ref|| / ||ref|| a result in this dtype may have against the float64 reference.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an op accumulates in for inputs of `dtype`: float64 stays, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tolerance(dtype: torch.dtype, baseline_err: float | None = None) -> float:
    """max(the dtype's tolerance, 2 x the idiomatic same-dtype composition's error)."""
    tol = TOLERANCE[dtype]
    return tol if baseline_err is None else max(tol, 2.0 * baseline_err)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 over the elements where ref is finite; inf when
    out is not finite where ref is (or the other way round). ||out - ref|| when ref is 0."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.shape != ref.shape:
        raise AssertionError(f"shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    finite = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(out), finite):
        return float("inf")
    # Infinities must agree exactly (same sign), as NaNs must agree in place.
    if not torch.equal(out[~finite & ~ref.isnan()], ref[~finite & ~ref.isnan()]):
        return float("inf")
    out, ref = out[finite], ref[finite]
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff if denom == 0 else diff / denom
