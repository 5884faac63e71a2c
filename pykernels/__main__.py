"""pykernels command line.

  python -m pykernels info                 versions, built backends, CUDA archs
  python -m pykernels check                every available backend against the reference
  python -m pykernels bench [FAMILY ...] [--quick] [--device cpu|cuda]
                                           check, then the benchmark tables (all families by default)
"""
from __future__ import annotations

import os
import runpy
import sys

from pykernels.ops import FAMILIES
BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def info() -> None:
    import torch

    import pykernels
    from pykernels import backends

    print(f"pykernels {pykernels.__version__}")
    print(f"python    {sys.version.split()[0]}")
    print(f"torch     {torch.__version__} (CUDA {torch.version.cuda}, GPU: "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'})")
    try:
        import triton
        print(f"triton    {triton.__version__} (interpreter {'on' if backends.triton_interpreted() else 'off'})")
    except ImportError:
        print("triton    not installed")
    archs = "-"
    if backends.cuda_built():
        try:
            from pykernels import _build_info
            archs = _build_info.CUDA_ARCHS
        except ImportError:
            archs = "unknown"
    print(f"CUDA kernels compiled: {backends.cuda_built()} (architectures: {archs})")
    if backends.extension_loaded():
        print(f"CPU kernels: {torch.ops.pykernels._cpu_capability()} build "
              "(PYKERNELS_CPU_CAPABILITY=default forces the baseline one)")
    for name in backends.NAMES:
        why = backends.why_unavailable(name)
        print(f"  {name:<10} {'available' if why is None else 'unavailable: ' + why}")


def check() -> int:
    """Every available backend against the reference on small inputs of each family."""
    import torch

    from pykernels import _selfcheck

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    failures = _selfcheck.run(device)
    return 1 if failures else 0


def bench(args: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pykernels bench")
    # (no choices=: argparse rejects an empty list against choices on some Pythons)
    ap.add_argument("families", nargs="*", help=f"any of {', '.join(FAMILIES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    ap.add_argument("--device", choices=("cpu", "cuda"))
    ap.add_argument("--out", help="folder for CSV and PNG (default benchmarks/results)")
    ns = ap.parse_args(args)
    unknown = [f for f in ns.families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    if not os.path.isdir(BENCH_DIR):
        print(f"benchmarks/ not found next to the package ({BENCH_DIR}); run from a source checkout", file=sys.stderr)
        return 2
    status = check()
    if status:
        print("backend check failed: not benchmarking", file=sys.stderr)
        return status
    passthrough = (["--quick"] if ns.quick else []) + (["--device", ns.device] if ns.device else []) \
        + (["--out", ns.out] if ns.out else [])
    for fam in ns.families or FAMILIES:
        path = os.path.join(BENCH_DIR, f"bench_{fam}.py")
        if not os.path.exists(path):
            print(f"(no benchmark for {fam} yet)")
            continue
        sys.argv = [path] + passthrough
        runpy.run_path(path, run_name="__main__")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "info":
        info()
        return 0
    if cmd == "check":
        return check()
    if cmd == "bench":
        return bench(rest)
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
