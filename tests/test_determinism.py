"""Determinism: every public op, run twice on the same inputs, gives bitwise the same
outputs and gradients on each backend (random ops: the same generator seed). The cpu
backend runs at sizes where its kernels split the work over several threads and chunks;
the Triton interpreter at tiny sizes."""

import pytest
import torch

from .helpers import ALL_BACKENDS, backend_device, randn
from .op_cases import CASES, NO_BACKEND

SIZE = {"cpu": "big", "cuda": "big", "reference": "small", "triton": "tiny"}


@pytest.fixture
def threads():
    """At least 4 intra-op threads (more than this machine's cores), so at::parallel_for
    splits the work the way it does on a many-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(before, 4))
    yield torch.get_num_threads()
    torch.set_num_threads(before)


def _params():
    out = []
    for case in CASES:
        for p in ALL_BACKENDS:
            if case.name in NO_BACKEND and p.id != "reference":
                continue  # no backend argument: one run covers it
            out.append(pytest.param(case, p.values[0], id=f"{case.name}-{p.id}", marks=p.marks))
    return out


def _run(case, backend, device, size):
    inputs = case.inputs(device=device, size=size, seed=0)
    if case.random:
        inputs["generator"] = torch.Generator(device).manual_seed(1234)
    be = None if case.name in NO_BACKEND else backend
    outs = case(be, inputs)
    leaves = [inputs[k] for k in case.grads]
    floating = [o for o in outs if o.is_floating_point() and o.requires_grad]
    grads = ()
    if leaves and floating:
        ws = [
            randn(*o.shape, dtype=o.dtype, device=o.device, seed=50 + k)
            for k, o in enumerate(floating)
        ]
        grads = torch.autograd.grad(floating, leaves, ws, allow_unused=True)
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("case,backend", _params())
def test_bitwise_repeatable(case, backend, threads):
    device = backend_device(backend)
    size = SIZE[backend]
    outs1, grads1 = _run(case, backend, device, size)
    outs2, grads2 = _run(case, backend, device, size)
    assert len(outs1) == len(outs2)
    for k, (a, b) in enumerate(zip(outs1, outs2)):
        assert torch.equal(a, b), f"{case.name} on {backend}: output {k} differs between two runs"
        assert not (a.is_floating_point() and a.isnan().any()), f"{case.name} output {k} has NaN"
    if case.grads:
        assert grads1, f"{case.name}: no gradient computed"
    for name, a, b in zip(case.grads, grads1, grads2):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), (
                f"{case.name} on {backend}: gradient of '{name}' differs between two runs"
            )


@pytest.mark.parametrize("case", [c for c in CASES if c.random], ids=lambda c: c.name)
def test_random_ops_follow_the_generator(case):
    """The same seed gives the same draw (above); a different seed a different one, so
    the generator really is what the op samples from."""
    a = case.inputs(size="small")
    b = case.inputs(size="small")
    a["generator"] = torch.Generator().manual_seed(1)
    b["generator"] = torch.Generator().manual_seed(2)
    be = "reference"
    assert not torch.equal(case(be, a)[0], case(be, b)[0])
