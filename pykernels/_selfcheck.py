"""`python -m pykernels check [-v]`: every built backend against the float64 reference.

The cases are the benchmark case tables (pykernels/bench/<family>.py, CASES) at their
"check" size. For each case, backend and dtype, the outputs and the gradients are
compared with the reference run on float64 copies of the same inputs; a result passes
when its relative error is within tolerance(dtype, error of the idiomatic composition in
that dtype), the precision contract of pykernels/_precision.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from . import backends
from ._precision import tolerance
from .bench import family_cases
from .bench.case import Case, as_float64, as_tuple
from .bench.harness import max_error, step, weights
from .ops import FAMILIES

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SIZE = "check"


@dataclasses.dataclass
class Result:
    family: str
    case: str
    backend: str
    dtype: torch.dtype
    err: float
    tol: float

    @property
    def ok(self) -> bool:
        return self.err <= self.tol


def entries() -> list[tuple[str, Case]]:
    """(family, case) for every case of every family with a case table."""
    return [(fam, case) for fam in FAMILIES for case in family_cases(fam)]


def _baseline_err(case: Case, inputs: dict, ws: list, want) -> float | None:
    """The idiomatic composition's error in the inputs' dtype, None where it cannot run."""
    try:
        err = max_error(step(case.eager, inputs, case.grads, ws)(), want)
    except (RuntimeError, NotImplementedError, TypeError):  # e.g. an op without a fp16 CPU kernel
        return None
    return err if math.isfinite(err) else None  # overflowed: it bounds nothing


def check_case(family: str, case: Case, device: torch.device, names: list[str]) -> list[Result]:
    out = []
    for dtype in DTYPES:
        inputs = case.inputs(dtype, device, SIZE)
        ref_inputs = as_float64(inputs)
        ws = weights(as_tuple(case.run("reference", **ref_inputs)), dtype)
        want = step(functools.partial(case.run, "reference"), ref_inputs, case.grads, ws)()
        base = _baseline_err(case, case.inputs(dtype, device, SIZE), ws, want)
        tol = tolerance(dtype, base)
        for be in names:
            fresh = case.inputs(dtype, device, SIZE)
            got = step(functools.partial(case.run, be), fresh, case.grads, ws)()
            out.append(Result(family, case.name, be, dtype, max_error(got, want), tol))
    return out


def results(device: torch.device) -> list[Result]:
    names = [b for b in backends.available(device) if b != "reference"]
    return [r for fam, case in entries() for r in check_case(fam, case, device, names)]


def _line(r: Result) -> str:
    return (
        f"  {'ok  ' if r.ok else 'FAIL'} {r.family:<12} {r.case:<34} {r.backend:<7} "
        f"{str(r.dtype)[6:]:<9} rel err {r.err:.2e} (tolerance {r.tol:.1e})"
    )


def summary(res: list[Result], device: torch.device) -> str:
    names = sorted({r.backend for r in res}) or ["none"]
    bad = [r for r in res if not r.ok]
    cases = len({(r.family, r.case) for r in res})
    if bad:
        return f"check: {len(bad)} of {len(res)} results FAIL against the float64 reference"
    worst = max((r.err / r.tol for r in res), default=0.0)
    verb = "agrees" if len(names) == 1 else "agree"
    return (
        f"check: {'/'.join(names)} {verb} with float64 on {cases} cases x {len(DTYPES)} "
        f"dtypes, worst error {worst:.2f} of its tolerance (python -m pykernels check -v)"
    )


def run(device: torch.device, verbose: bool = False) -> list[str]:
    """Print one summary line (every result with verbose, the failures otherwise);
    return the failures as "family/case/backend/dtype"."""
    res = results(device)
    for r in res:
        if verbose or not r.ok:
            print(_line(r))
    print(summary(res, device))
    return [f"{r.family}/{r.case}/{r.backend}/{r.dtype}" for r in res if not r.ok]
