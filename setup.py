"""Build pykernels._C: the C++ CPU kernels always, the CUDA kernels when they can be built.

Knobs (environment variables):
  PYKERNELS_CUDA=auto|0|1   auto: build CUDA when torch has CUDA and nvcc is found;
                            1: build CUDA or fail loudly; 0: never build CUDA.
  TORCH_CUDA_ARCH_LIST      CUDA architectures (default "8.0;9.0": A100 and H100/H200).
  MAX_JOBS                  parallel compile jobs for ninja.
  PYKERNELS_DEBUG=1         -O0 -g, for debugging the kernels.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_wanted():
    mode = os.environ.get("PYKERNELS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"PYKERNELS_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    import torch
    from torch.utils import cpp_extension

    reasons = []
    if torch.version.cuda is None:
        reasons.append("this torch build has no CUDA (torch.version.cuda is None)")
    cuda_home = cpp_extension.CUDA_HOME
    if cuda_home is None or shutil.which(os.path.join(cuda_home, "bin", "nvcc")) is None:
        reasons.append("nvcc was not found (set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda)")
    if reasons:
        if mode == "1":
            sys.exit("PYKERNELS_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(reasons))
        print("pykernels: building without CUDA: " + "; ".join(reasons), file=sys.stderr)
        return False
    return True


def _nvidia_wheel_includes():
    """include/ folders of the nvidia-* wheels torch depends on, when the toolkit lacks cusparse.h."""
    from torch.utils.cpp_extension import CUDA_HOME

    if os.path.exists(os.path.join(CUDA_HOME, "include", "cusparse.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for root in list(nvidia.__path__):
        found += sorted(glob.glob(os.path.join(root, "*", "include")))
    return [d for d in found if os.path.exists(os.path.join(d, "cusparse.h"))] or found


def _write_build_info(archs):
    """pykernels/_build_info.py: what this build compiled in (read by `python -m pykernels info`)."""
    import torch

    with open(os.path.join(ROOT, "pykernels", "_build_info.py"), "w") as fh:
        fh.write("# Written by setup.py at build time.\n")
        fh.write(f"CUDA_ARCHS = {archs!r}\nTORCH_VERSION = {torch.__version__!r}\n")


def _extension():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = os.environ.get("PYKERNELS_DEBUG", "0") == "1"
    with_cuda = _cuda_wanted()
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # The C++ standard is left to torch.utils.cpp_extension (C++17 or C++20, per torch).
    # Portable flags only: no -march=native, so a wheel built here runs on any x86-64
    # or aarch64. Vectorisation comes from at::vec; parallelism from at::parallel_for,
    # whose OpenMP pragmas need -fopenmp at compile time. libgomp is not linked
    # explicitly: its symbols resolve to the copy libtorch_cpu already loaded.
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-fopenmp", "-fvisibility=hidden", "-Wall", "-Wno-unused-function", "-Wno-unknown-pragmas", "-Wno-psabi"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not with_cuda:
        _write_build_info(None)
        return CppExtension("pykernels._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx})
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    # Torch's CUDA headers include the math libraries' headers (cusparse.h, cublas_v2.h).
    # A bare nvcc toolkit may lack them; torch's pip dependencies ship them. They go
    # on the -isystem path, searched after the toolkit's own -I headers.
    extra_inc = [arg for d in _nvidia_wheel_includes() for arg in ("-isystem", d)]
    cxx += extra_inc
    sources += rel("csrc/cuda/*.cu")
    nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
    nvcc += ["--expt-relaxed-constexpr", "-DPYKERNELS_WITH_CUDA"] + extra_inc
    _write_build_info(os.environ["TORCH_CUDA_ARCH_LIST"])
    return CUDAExtension("pykernels._C", sources, include_dirs=include_dirs,
                         extra_compile_args={"cxx": cxx + ["-DPYKERNELS_WITH_CUDA"], "nvcc": nvcc})


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    # triton_kernels/ lives at the repository root but installs as pykernels.triton_kernels:
    # the top-level name triton_kernels belongs to PyPI's and Triton's own packages. In a
    # source checkout the symlink pykernels/triton_kernels -> ../triton_kernels gives the
    # same import path without an install (and to each git worktree its own kernels).
    packages=["pykernels", "pykernels.ops", "pykernels.reference", "pykernels.models",
              "pykernels.integrations", "pykernels.triton_kernels"],
    package_dir={"pykernels.triton_kernels": "triton_kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": _build_ext()},
)
