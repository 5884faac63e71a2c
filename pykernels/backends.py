"""Which backends this installation has, and which one a call runs on.

Backends: ``cuda`` (our CUDA C++ kernels, CUDA tensors), ``triton`` (Triton kernels:
CUDA tensors, or CPU tensors under the Triton interpreter), ``cpu`` (our C++ kernels,
CPU tensors) and ``reference`` (pure PyTorch, anywhere).

``backend=None`` on a public function means the ``PYKERNELS_BACKEND`` environment
variable, else ``auto``: CUDA tensors -> ``cuda`` if built, else ``triton``; CPU
tensors -> ``cpu`` if built, else ``reference``.
"""

from __future__ import annotations

import os

import torch

NAMES = ("cuda", "triton", "cpu", "reference")


def _load_extension():
    try:
        from . import _C  # noqa: F401  (registers torch.ops.pykernels.*)
    except ImportError as exc:  # not built: the package still works on `reference`
        return str(exc)
    return None


_C_ERROR = _load_extension()


def _triton_error():
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc})"
    return None


_TRITON_ERROR = _triton_error()


def extension_loaded() -> bool:
    """True when pykernels._C (the C++ ops) is loaded."""
    return _C_ERROR is None


def cuda_built() -> bool:
    """True when the CUDA kernels were compiled into pykernels._C."""
    return extension_loaded() and bool(torch.ops.pykernels._cuda_built())


def triton_interpreted() -> bool:
    """True when Triton runs kernels on CPU tensors through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _device_types(name: str) -> tuple[str, ...]:
    """Device types a backend can run on in this process (empty: unavailable)."""
    if name == "reference":
        return ("cpu", "cuda")
    if name == "cpu":
        return ("cpu",) if extension_loaded() else ()
    if name == "cuda":
        return ("cuda",) if cuda_built() and torch.cuda.is_available() else ()
    if name == "triton":
        if _TRITON_ERROR is not None:
            return ()
        kinds = ("cuda",) if torch.cuda.is_available() else ()
        return kinds + (("cpu",) if triton_interpreted() else ())
    raise ValueError(name)


def why_unavailable(name: str) -> str | None:
    """None when `name` can run here, else the reason it cannot."""
    if _device_types(name):
        return None
    if name == "cpu":
        return f"pykernels._C is not built or failed to load ({_C_ERROR})"
    if name == "cuda":
        if not extension_loaded():
            return f"pykernels._C is not built or failed to load ({_C_ERROR})"
        if not cuda_built():
            return "pykernels._C was built without CUDA (see PYKERNELS_CUDA in setup.py)"
        return "no CUDA device is visible"
    if name == "triton":
        return _TRITON_ERROR or "no CUDA device, and TRITON_INTERPRET=1 is not set for CPU tensors"
    return None


def available(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends that can run here (on `device`'s type, if given)."""
    kind = None if device is None else torch.device(device).type
    return [n for n in NAMES if _device_types(n) and (kind is None or kind in _device_types(n))]


@torch.compiler.assume_constant_result
def _env_backend() -> str:
    # Read once per trace under torch.compile; a constant to the compiled graph.
    return os.environ.get("PYKERNELS_BACKEND", "auto").strip().lower() or "auto"


def resolve(backend: str | None, device: torch.device, fn: str) -> str:
    """The backend a call of `fn` on tensors of `device` runs on; errors name what exists."""
    name = _env_backend() if backend is None else backend
    source = "PYKERNELS_BACKEND" if backend is None else "backend"
    if name == "auto":
        if device.type == "cuda":
            return "cuda" if "cuda" in _device_types("cuda") else "triton"
        return "cpu" if "cpu" in _device_types("cpu") else "reference"
    if name not in NAMES:
        raise ValueError(
            f"{fn}: argument '{source}' must be one of {NAMES + ('auto',)}, got {name!r}"
        )
    if device.type not in _device_types(name):
        reason = why_unavailable(name) or f"it does not run on {device.type} tensors"
        raise RuntimeError(
            f"{fn}: backend {name!r} cannot run on {device.type} tensors here: {reason}. "
            f"Available for {device.type}: {available(device.type)}"
        )
    return name
