"""Build pykernels._C: the C++ CPU kernels always, the CUDA kernels when they can be built.

Knobs (environment variables):
  PYKERNELS_CUDA=auto|0|1   auto: build CUDA when torch has CUDA and a usable toolkit is
                            found (CUDA_HOME, else the real home of the nvcc on PATH, else
                            /usr/local/cuda), else the CPU kernels only, saying why;
                            1: build CUDA or fail at once with the reason; 0: never build CUDA.
  TORCH_CUDA_ARCH_LIST      CUDA architectures (default "8.0;9.0": A100 and H100/H200).
  MAX_JOBS                  parallel compile jobs for ninja.
  PYKERNELS_DEBUG=1         -O0 -g, for debugging the kernels.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _toolkit_problem(home):
    """None when `home` is a CUDA toolkit we can compile and link with, else what it lacks."""
    if not home or not os.path.isdir(home):
        return f"{home!r} is not a folder"
    if not os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
        return f"{home}/bin/nvcc is missing"
    if not os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
        return f"{home}/include/cuda_runtime.h is missing"
    libs = [
        os.path.join(home, d, "libcudart.so")
        for d in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
    ]
    if not any(os.path.exists(p) for p in libs):
        return f"no libcudart.so under {home}/lib64 or {home}/lib"
    return None


def _nvcc_home():
    """The toolkit of the `nvcc` on PATH, resolved through symlinks and wrapper scripts.

    A wrapper (`exec /opt/cuda-13.0/bin/nvcc "$@"`) sits outside its toolkit, so its own
    folder says nothing; nvcc's dry run prints the folder it really runs from (`_HERE_`)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return []
    found = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=30,
        )
        here = re.search(r"^#\$ _HERE_=(.*)$", out.stdout + out.stderr, re.M)
        if here:
            found.insert(0, os.path.dirname(os.path.realpath(here.group(1).strip())))
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def find_cuda_toolkit():
    """(toolkit folder, None) or (None, why none is usable): CUDA_HOME / CUDA_PATH if set,
    else the real toolkit of the nvcc on PATH, else /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            problem = _toolkit_problem(os.environ[var])
            return (
                (None, f"{var}={os.environ[var]}: {problem}")
                if problem
                else (os.environ[var], None)
            )
    tried = []
    for home in _nvcc_home() + ["/usr/local/cuda"]:
        problem = _toolkit_problem(home)
        if problem is None:
            return home, None
        tried.append(problem)
    return None, "no CUDA toolkit found (" + ("; ".join(tried) or "no nvcc on PATH") + ")"


def _cuda_wanted():
    """Whether to build the CUDA kernels; points torch's extension builder at the toolkit."""
    mode = os.environ.get("PYKERNELS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"PYKERNELS_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    import torch

    home, reason = find_cuda_toolkit()
    if torch.version.cuda is None:
        reason = "this torch build has no CUDA (torch.version.cuda is None)"
    if reason is None:
        from torch.utils import cpp_extension

        # torch read CUDA_HOME when cpp_extension was imported: set both for the build.
        os.environ["CUDA_HOME"] = cpp_extension.CUDA_HOME = home
        return True
    if mode == "1":
        sys.exit(f"PYKERNELS_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    print(
        f"pykernels: building the CPU kernels only: {reason}. To build the CUDA kernels, "
        "install a CUDA toolkit and set CUDA_HOME to it (PYKERNELS_CUDA=1 makes this an error).",
        file=sys.stderr,
    )
    return False


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

    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # The C++ standard is left to torch.utils.cpp_extension (C++17 or C++20, per torch).
    # Portable flags only: no -march=native, so a wheel built here runs on any x86-64
    # or aarch64. Vectorisation comes from at::vec; parallelism from at::parallel_for,
    # whose OpenMP pragmas need -fopenmp at compile time. libgomp is not linked
    # explicitly: its symbols resolve to the copy libtorch_cpu already loaded.
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += [
        "-fopenmp",
        "-fvisibility=hidden",
        "-Wall",
        "-Wno-unused-function",
        "-Wno-unknown-pragmas",
        "-Wno-psabi",
    ]
    include_dirs = [os.path.join(ROOT, "csrc")]
    # Archives linked into _C.so keep their symbols private. Some toolchains link a static
    # libstdc++; its stream and locale symbols, half bound to the copy torch loaded, crash
    # the formatting of numbers into error messages (benchmarks/gpu_check.sh's smoke step
    # and tests/test_malformed.py on cuda catch it).
    link = ["-Wl,--exclude-libs,ALL"] if sys.platform.startswith("linux") else []
    if not with_cuda:
        _write_build_info(None)
        return CppExtension(
            "pykernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
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
    return CUDAExtension(
        "pykernels._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx + ["-DPYKERNELS_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=link,
    )


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    # triton_kernels/ lives at the repository root but installs as pykernels.triton_kernels:
    # the top-level name triton_kernels belongs to PyPI's and Triton's own packages. In a
    # source checkout the symlink pykernels/triton_kernels -> ../triton_kernels gives the
    # same import path without an install (and to each git worktree its own kernels).
    packages=[
        "pykernels",
        "pykernels.ops",
        "pykernels.reference",
        "pykernels.models",
        "pykernels.integrations",
        "pykernels.triton_kernels",
        "pykernels.bench",
        "pykernels.distributed",
    ],
    package_dir={"pykernels.triton_kernels": "triton_kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": _build_ext()},
)
