"""Registration helpers shared by every family's ops module.

Each op exists as a C++ op ``pykernels::<name>`` (CPU and CUDA kernels, schema in
csrc/pykernels.cpp) and as a Triton op ``pykernels::<name>_triton`` (defined here with
torch.library.triton_op). Both get autograd through a ``<name>_backward`` op of the
same backend, so the public function only picks which one to call.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from .. import backends


def op(name: str, backend: str):
    """The torch.ops.pykernels op that runs `name` on `backend`: the C++ op for cpu and
    cuda, pykernels::<name>_triton for triton."""
    return getattr(torch.ops.pykernels, name + "_triton" if backend == "triton" else name)


def triton_available() -> bool:
    return backends._TRITON_ERROR is None


def register_cpp(name: str, fake: Callable, backward_fake: Callable | None = None) -> bool:
    """Fake (meta) implementations for the C++ op `name` and its backward op.

    Returns False, registering nothing, when pykernels._C is not loaded."""
    if not backends.extension_loaded():
        return False
    torch.library.register_fake(f"pykernels::{name}")(_one_device(name, fake))
    if backward_fake is not None:
        torch.library.register_fake(f"pykernels::{name}_backward")(
            _one_device(name + "_backward", backward_fake)
        )
    return True


def _one_device(name: str, fake: Callable) -> Callable:
    """`fake` after the C++ kernels' device check: every tensor argument on one device.
    The dispatcher sends a call that mixes meta and CPU tensors to the fake (meta) kernel,
    which would otherwise return a result instead of the C++ kernels' ValueError."""
    names = [a.name for a in getattr(torch.ops.pykernels, name).default._schema.arguments]

    def checked(*args, **kwargs):
        first = None
        for arg, x in [*zip(names, args), *kwargs.items()]:
            if not isinstance(x, torch.Tensor):
                continue
            if first is None:
                first = (arg, x.device)
            elif x.device != first[1]:
                raise ValueError(
                    f"pykernels::{name}: argument '{arg}' must be on the same device as "
                    f"'{first[0]}' ({first[1]}), got {x.device}"
                )
        return fake(*args, **kwargs)

    return checked


def defined(name: str) -> bool:
    """True when torch.ops.pykernels.<name> exists (C++ ops need pykernels._C, Triton ops triton)."""
    return hasattr(torch.ops.pykernels, name)


def register_autograd(name: str, setup_context: Callable, backward: Callable) -> None:
    """One autograd formula for the op `name` on every backend that defines it: the C++
    op pykernels::<name> (cpu and cuda kernels) and the Triton op pykernels::<name>_triton.

    backward(ops, ctx, *grads) gets `ops`, where ops("<name>_backward") is that op on the
    same backend as the forward, so the formula is written once for all backends."""
    for suffix, backend in (("", "cpu"), ("_triton", "triton")):
        if defined(name + suffix):
            # `op` is looked up at call time, so a wrapper of this module's `op` (the test
            # that records every Triton launch, test_triton_gpu_compile) sees the backward.
            ops = functools.partial(lambda b, n: op(n, b), backend)
            torch.library.register_autograd(
                f"pykernels::{name}{suffix}",
                functools.partial(backward, ops),
                setup_context=setup_context,
            )
