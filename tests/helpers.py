"""Shared test helpers: backend parametrisation, devices, error metrics, poisoning,
and peak-memory measurement. Every tests/test_<family>.py builds on these."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch

import pykernels
from pykernels import backends
from pykernels._precision import TOLERANCE, rel_err  # noqa: F401  (re-exported for the tests)
from pykernels._profiling import peak_cpu_bytes  # noqa: F401  (re-exported for the tests)

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def backend_device(name: str) -> torch.device:
    """Where `name` runs in this test session: CUDA when it needs it or when present."""
    if name == "cuda" or (name in ("triton", "reference") and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def backend_params(*names: str):
    """pytest params for backends, skipped (with the reason) where unavailable."""
    names = names or backends.NAMES
    params = []
    for name in names:
        reason = backends.why_unavailable(name)
        if (
            reason is None
            and backend_device(name).type not in backends.available(backend_device(name))
            and name != "reference"
        ):
            reason = f"{name} does not run on {backend_device(name)}"
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


ALL_BACKENDS = backend_params()
CPP_BACKENDS = backend_params("cpu", "cuda")
FUSED_BACKENDS = backend_params("cuda", "triton", "cpu")


def dtypes_for(name: str):
    """Dtypes a backend is tested in: the three training dtypes, plus float64 where the
    backend is used for gradcheck."""
    return FLOAT_DTYPES + ((torch.float64,) if name in ("cpu", "reference") else ())


def assert_close(out, ref64, dtype, *, baseline=None, tol=None, what="output"):
    """out within the dtype's tolerance of the float64 reference, or within twice the
    error of `baseline` (PyTorch's own same-precision result) when that is larger."""
    limit = TOLERANCE[dtype] if tol is None else tol
    if baseline is not None:
        limit = max(limit, 2 * rel_err(baseline, ref64))
    err = rel_err(out, ref64)
    assert err <= limit, f"{what}: relative error {err:.3g} > {limit:.3g} ({dtype})"


@contextlib.contextmanager
def poisoned():
    """New tensors from torch.empty (ours included) start as NaN, so an element a kernel
    forgets to write shows up (PyTorch fills uninitialised memory in deterministic mode)."""
    prev, prev_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def randn(*shape, dtype=torch.float32, device="cpu", scale=1.0, requires_grad=False, seed=None):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(
        dtype=dtype, device=device
    )
    return x.requires_grad_(requires_grad)


def grads(out: torch.Tensor, inputs, seed: int = 0):
    """Gradients of <out, w> for a fixed random w (a full vector-Jacobian product)."""
    w = randn(*out.shape, dtype=out.dtype, device=out.device, seed=seed)
    return torch.autograd.grad(out, inputs, w, allow_unused=True)


def vjp(outs, inputs, seed: int = 100):
    """Gradients of sum_k <outs_k, w_k> for fixed random w_k (zeros for unused inputs)."""
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    ws = [
        randn(*o.shape, dtype=o.dtype, device=o.device, seed=seed + k) for k, o in enumerate(outs)
    ]
    gs = torch.autograd.grad(outs, inputs, ws, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


def labels(shape, V, device="cpu", seed=0, ignored=(0,)):
    """Class labels in [0, V) of `shape`, with the flat positions `ignored` set to -100."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, shape, generator=gen)
    flat = y.view(-1)
    for i in ignored:
        flat[i] = -100
    return y.to(device)


def as64(*xs):
    """float64 leaf copies (for the reference that every backend is measured against)."""
    return [x.detach().double().requires_grad_(x.requires_grad) for x in xs]


__all__ = ["pykernels"]


TRITON_BACKENDS = [p for p in FUSED_BACKENDS if p.id == "triton"]
# Backends whose public ops are traced with torch.compile(fullgraph=True): Triton only on a
# GPU (on CPU, Inductor cannot compile Triton kernels for the interpreter).
COMPILE_BACKENDS = [p for p in ALL_BACKENDS if p.id in ("cpu", "reference", "cuda")] + [
    p for p in TRITON_BACKENDS if torch.cuda.is_available()
]


def compile_backend(device: torch.device) -> str:
    """torch.compile backend for a device: Inductor on GPU, aot_eager on CPU (traces
    the same graphs with fakes, without codegen for the interpreter's Triton kernels)."""
    return "inductor" if device.type == "cuda" else "aot_eager"


def assert_compiles_fullgraph(
    f, want, args, grad_of, device, *, tol=(1e-5, 1e-5), grad_tol=(1e-4, 1e-5)
) -> None:
    """torch.compile(f, fullgraph=True) on `device` traces without a graph break and gives
    want(*args)'s value, and its gradients with respect to grad_of, within (rtol, atol)."""
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend=compile_backend(device))(*args)
    expected = want(*args)
    torch.testing.assert_close(got, expected, rtol=tol[0], atol=tol[1])
    for g, w in zip(torch.autograd.grad(got, grad_of), torch.autograd.grad(expected, grad_of)):
        torch.testing.assert_close(g, w, rtol=grad_tol[0], atol=grad_tol[1])


def opcheck_ops(cases, backend: str) -> None:
    """torch.library.opcheck on every (op name, args) case, for the C++ ops (cpu/cuda) or
    their `_triton` twins. Under the Triton interpreter only the schema and autograd
    registration checks run: the fake-tensor and AOT-dispatch checks would run the
    interpreter on fake tensors (it reads their data); they run on a GPU."""
    dev = backend_device(backend)
    utils = None
    if backend == "triton" and dev.type != "cuda":
        utils = ("test_schema", "test_autograd_registration")
    for name, args in cases:
        args = tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in args)
        op = getattr(torch.ops.pykernels, name + ("_triton" if backend == "triton" else ""))
        torch.library.opcheck(op, args, test_utils=utils or torch.library._OPCHECK_DEFAULT_UTILS)


def opcheck_test(cases, device: torch.device | None = None):
    """A family's test_opcheck: opcheck_ops on cases(device) for the C++ ops (cpu, cuda) and
    their Triton twins; device None: the backend's device. Bind it as
    test_opcheck = opcheck_test(_opcheck_cases)."""

    @pytest.mark.parametrize("backend", CPP_BACKENDS + TRITON_BACKENDS)
    def test_opcheck(backend):
        opcheck_ops(cases(backend_device(backend) if device is None else device), backend)

    return test_opcheck


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args) -> subprocess.CompletedProcess:
    """`python -m pykernels <args>` as a user runs it, from the repository root and without
    the Triton interpreter the test session turns on (conftest.py): under it the commands
    would check every case on Triton too, which is slow and not what the CLI tests are about."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-m", "pykernels", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
