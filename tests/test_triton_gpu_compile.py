"""Every Triton kernel compiles for a GPU at the configurations its launchers pick there.

Without a GPU the Triton kernels run through the interpreter, which executes their
Python and never compiles them: a construct that only the compiler rejects (a shape or
layout rule, a dtype promotion, an annotated constant) would first fail on a user's GPU.
This test runs every public op on the triton backend (forward and backward, float32,
bfloat16 and float16), records the Triton ops' calls, and replays them in a process
without the interpreter on "meta" tensors, where every kernel launch is compiled through
Triton's front end, LLVM and ptxas for sm_90 (tests/_triton_gpu_compile.py). It proves
compilation, not the results (the interpreter tests do that) or the speed.
"""

import importlib
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

import pykernels as pk
from pykernels.ops import FAMILIES, _registry

from .op_cases import CASES, NO_BACKEND, TABLE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nvidia_toolchain() -> str | None:
    """Why this machine cannot compile Triton for NVIDIA GPUs, or None."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as e:  # triton missing, or built without its NVIDIA backend
        return f"Triton's NVIDIA backend is not importable: {e}"
    return None


pytestmark = [
    pytest.mark.skipif(
        "triton" not in pk.backends.available(), reason="triton backend unavailable"
    ),
    pytest.mark.skipif(_nvidia_toolchain() is not None, reason=str(_nvidia_toolchain())),
]


def _describe(arg):
    if isinstance(arg, torch.Tensor):
        return ("tensor", tuple(arg.shape), tuple(arg.stride()), arg.dtype)
    return arg


def _extra_calls(dtype):
    """Argument combinations the op_cases leave out, each selecting other kernel variants."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, generator=g).to(dtype).requires_grad_()
    t = torch.randn(5, 8, generator=g).to(dtype).requires_grad_()
    labels = torch.tensor([4, 0, 2])
    yield pk.info_nce_loss(
        x, t, torch.tensor(2.0), labels=labels, symmetric=False, backend="triton"
    )
    m, s = (torch.randn(2, 3, 4, generator=g).to(dtype).requires_grad_() for _ in range(2))
    ts, prev = torch.tensor([500, 20]), torch.tensor([400, -1])
    yield pk.ddim_step(
        m, ts, prev, s, TABLE, thresholding=True, use_clipped_model_output=True, backend="triton"
    )[0]
    yield pk.ddpm_step(
        m, ts, s, TABLE, noise=torch.zeros_like(s), prediction_type="sample", backend="triton"
    )[0]
    logits = torch.randn(3, 10, generator=g).to(dtype).requires_grad_()
    teacher = torch.randn(3, 10, generator=g).to(dtype)
    yield pk.distillation_loss(
        logits,
        teacher,
        temperature=2.0,
        beta=1.0,
        labels=torch.tensor([1, -100, 3]),
        hard_weight=0.3,
        label_smoothing=0.1,
        soft_weight=0.0,
        backend="triton",
    )
    # Row weights other than the loss's own scale make the backward launch scale_grad_kernel
    # (a plain sum's gradient is already in the saved rows, and on CPU tensors none is launched).
    rows = pk.cross_entropy(
        logits, torch.tensor([1, -100, 3]), label_smoothing=0.1, reduction="none", backend="triton"
    )
    yield (rows * torch.tensor([1.0, 2.0, 3.0], dtype=rows.dtype)).sum()


def _record(monkeypatch):
    """The Triton ops' calls (op name, described arguments) of every public op."""
    calls, real = [], _registry.op

    def recording(name, backend):
        f = real(name, backend)
        if backend != "triton":
            return f

        def call(*args):
            calls.append((name, tuple(_describe(a) for a in args)))
            return f(*args)

        return call

    for m in [importlib.import_module(f"pykernels.ops.{f}") for f in FAMILIES] + [_registry]:
        monkeypatch.setattr(m, "op", recording)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for case in CASES:
            if case.name in NO_BACKEND:
                continue
            inputs = case.inputs(dtype=dtype, size="tiny")
            if case.random:
                inputs["generator"] = torch.Generator().manual_seed(0)
            outs = [o for o in case("triton", inputs) if o.requires_grad]
            if outs:
                torch.autograd.grad(
                    outs,
                    [inputs[k] for k in case.grads],
                    [torch.ones_like(o) for o in outs],
                    allow_unused=True,
                )
        for out in _extra_calls(dtype):
            out.backward(torch.ones_like(out))
    unique = {}
    for name, args in calls:  # one call per op, dtypes, ranks and scalar arguments
        key = repr(
            (
                name,
                [
                    (a[3], len(a[1])) if isinstance(a, tuple) and a and a[0] == "tensor" else a
                    for a in args
                ],
            )
        )
        unique.setdefault(key, (name, args))
    return list(unique.values())


def _launched_kernels():
    """Names of the @triton.jit functions that launchers launch (by convention *_kernel)."""
    names = set()
    for f in FAMILIES:
        m = importlib.import_module(f"pykernels.triton_kernels.{f}")
        names |= {k for k, v in vars(m).items() if k.endswith("_kernel") and hasattr(v, "fn")}
    return names


def test_every_triton_kernel_compiles_for_sm90(tmp_path, monkeypatch):
    calls = _record(monkeypatch)
    assert calls
    with open(tmp_path / "calls.pkl", "wb") as f:
        pickle.dump(calls, f)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_INTERPRET"] = "0"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests._triton_gpu_compile",
            str(tmp_path / "calls.pkl"),
            str(tmp_path / "report.json"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    with open(tmp_path / "report.json") as f:
        report = json.load(f)
    assert not report["failures"], "\n\n".join(report["failures"])[:8000]
    missing = _launched_kernels() - set(report["kernels"])
    assert not missing, f"kernels no recorded call launched: {sorted(missing)}"
    assert report["compiled"] >= len(report["kernels"])
