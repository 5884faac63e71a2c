"""Benchmarks and the per-op case table: `python -m pykernels bench [FAMILY ...] [--quick]`.

Each family has one module here, pykernels/bench/<family>.py, named as in
pykernels.ops.FAMILIES (that list is the registry). It holds:

  CASES  one Case per public op call (pykernels/bench/case.py): an input builder
         build(dtype, device, size, gen), the pykernels call run(backend, **inputs), the
         inputs that get gradients, the idiomatic PyTorch composition (eager; compile is
         torch.compile of it), the peers (lazy factories, None when not installed or not
         runnable on the device), and the bytes or matmul shapes the op must handle (the
         roofline). `python -m pykernels check` runs every Case at size "check" against
         the float64 reference; the benchmarks run the Points below.
  BENCH  Points: (case, mode "quick" | "full", size, dtype, device type, targets). Quick
         points are what `make bench` prints; full points carry the stated targets, each
         printed MET or MISS with its figure.
  size tables  dicts from a size name ("tiny", "small", "check", "quick", "full",
         "gpu_quick", "gpu") to the dimensions the builders use.

This module and case.py import with torch alone (no matplotlib, tqdm or peer library).

Adding a family's cases:
  1. Create pykernels/bench/<family>.py with a size table, one builder per input layout
     (draw from the given generator: case.randn, case.permutations), and CASES: one Case
     per public op (name it after the op; a variant in brackets, "op[variant]"), with
     `eager` written the way users write it (F.* one-liners, the reference model's code),
     `peers` as factories that import inside and return None when unavailable, and
     `bytes` (memory-bound) or `gemms` (matmul-bound).
  2. Add BENCH Points: at most two quick ones on "cpu" (the quick run's budget is three
     minutes and about sixty lines for every family), the full ones with their targets
     (speedup(provider, x), roofline(fraction), memory(provider, fraction)), and the
     "cuda" ones at sizes that fill the GPU.
  3. The family's name in pykernels.ops.FAMILIES is the registry line: the command line,
     the self-check and the tests find the module from it.
  4. Run `python -m pykernels check -v` (every case at size "check" and its error against
     float64), `python -m pytest tests/test_bench.py`, then
     `python -m pykernels bench <family> --quick`.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def family_module(family: str) -> ModuleType | None:
    """pykernels.bench.<family>, or None when the family has no case table yet."""
    try:
        return importlib.import_module(f"{__name__}.{family}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{family}":
            raise
        return None


def family_cases(family: str) -> list:
    module = family_module(family)
    return list(module.CASES) if module is not None else []


def find_case(family: str, name: str):
    return next(c for c in family_cases(family) if c.name == name)
