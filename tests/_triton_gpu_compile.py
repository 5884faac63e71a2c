"""Compile the Triton kernels for a GPU (sm_90) on a machine without one.

Run as `python -m tests._triton_gpu_compile CALLS OUT` in a process without
TRITON_INTERPRET (the interpreter replaces @triton.jit with functions the compiler
cannot take). CALLS is a pickle of the Triton ops' calls that test_triton_gpu_compile
recorded while the public ops ran under the interpreter: (op name, arguments), each
tensor as (shape, stride, dtype). Each call is replayed through the op's Python body on
"meta" tensors, so the launchers pick the block sizes, warps and stages they pick on a
GPU, and every kernel launch is compiled (Triton's own front end, LLVM and ptxas) for
sm_90 instead of run. OUT gets a JSON report: the specializations compiled and the
failures, with their messages.
"""

import importlib
import json
import pickle
import sys
import traceback

import torch
import triton
from torch._library.custom_ops import OPDEFS
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pykernels.ops import FAMILIES

TARGET = GPUTarget("cuda", 90, 32)  # Hopper (H100 / H200)
TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
}


def _signature(kernel, args, kwargs):
    """(signature, constexprs) of a launch, as Triton's launcher would specialise it."""
    sig, constexprs = {}, {}
    for i, p in enumerate(kernel.params):
        v = args[i] if i < len(args) else kwargs[p.name]
        if p.is_constexpr or v is None:
            sig[p.name], constexprs[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + TYPES[v.dtype]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i32" if -(2**31) <= v < 2**31 else "i64"
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: argument {p.name} of type {type(v).__name__}")
    return sig, constexprs


class Compiler:
    """Stands in for torch.library.wrap_triton: kernel[grid](*args, **kw) compiles."""

    def __init__(self):
        self.done, self.failures = {}, []

    def __call__(self, kernel):
        return _Launch(self, kernel)

    def compile(self, kernel, args, kwargs):
        kwargs = dict(kwargs)
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        sig, constexprs = _signature(kernel, args, kwargs)
        key = json.dumps(
            [kernel.__name__, sig, {k: str(v) for k, v in constexprs.items()}, options],
            sort_keys=True,
        )
        if key in self.done:
            return
        try:
            triton.compile(
                ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                target=TARGET,
                options=options,
            )
            self.done[key] = kernel.__name__
        except Exception as e:  # reported, not raised: one report lists every failure
            self.failures.append(f"{kernel.__name__} {key}: {type(e).__name__}: {e}")
            self.done[key] = kernel.__name__


class _Launch:
    def __init__(self, compiler, kernel):
        self.compiler, self.kernel = compiler, kernel

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.compiler.compile(self.kernel, args, kwargs)


def _meta(arg):
    if isinstance(arg, tuple) and arg and arg[0] == "tensor":
        _, shape, stride, dtype = arg
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    return arg


def main(calls_path, out_path):
    import pykernels  # noqa: F401  (registers the ops)

    compiler = Compiler()
    for family in FAMILIES:
        importlib.import_module(f"pykernels.triton_kernels.{family}").wrap_triton = compiler
    with open(calls_path, "rb") as f:
        calls = pickle.load(f)
    errors = []
    for name, args in calls:
        try:
            OPDEFS[f"pykernels::{name}_triton"]._init_fn(*[_meta(a) for a in args])
        except Exception:
            errors.append(f"{name}: {traceback.format_exc(limit=3)}")
    kernels = sorted(set(compiler.done.values()))
    with open(out_path, "w") as f:
        json.dump(
            {
                "compiled": len(compiler.done),
                "kernels": kernels,
                "failures": compiler.failures + errors,
            },
            f,
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
