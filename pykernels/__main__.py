"""pykernels command line.

python -m pykernels info                 versions, built backends, CUDA archs
python -m pykernels check [-v]           every built backend against the float64 reference
                                         (one summary line; -v lists every case)
python -m pykernels bench [FAMILY ...] [--quick] [--device cpu|cuda] [--out DIR]
                                         check, then one benchmark table per family
                                         (all families by default; bench --help for more)
"""

from __future__ import annotations

import sys


def info() -> None:
    import torch

    import pykernels
    from pykernels import backends

    print(f"pykernels {pykernels.__version__}")
    print(f"python    {sys.version.split()[0]}")
    print(
        f"torch     {torch.__version__} (CUDA {torch.version.cuda}, GPU: "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'})"
    )
    try:
        import triton

        interpreter = "on" if backends.triton_interpreted() else "off"
        print(f"triton    {triton.__version__} (interpreter {interpreter})")
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
        print(
            f"CPU kernels: {torch.ops.pykernels._cpu_capability()} build "
            "(PYKERNELS_CPU_CAPABILITY=default forces the baseline one)"
        )
    for name in backends.NAMES:
        why = backends.why_unavailable(name)
        print(f"  {name:<10} {'available' if why is None else 'unavailable: ' + why}")


def check(args: list[str]) -> int:
    """Every built backend against the float64 reference on small inputs of each case."""
    import torch

    from pykernels import _selfcheck

    if any(a not in ("-v", "--verbose") for a in args):
        print(f"usage: python -m pykernels check [-v]; got {' '.join(args)}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return 1 if _selfcheck.run(device, verbose=bool(args)) else 0


def bench(args: list[str]) -> int:
    from pykernels.bench.run import main as bench_main

    return bench_main(args)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "info":
        info()
        return 0
    if cmd == "check":
        return check(rest)
    if cmd == "bench":
        return bench(rest)
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
