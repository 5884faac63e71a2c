"""The per-op case table's types: one Case per public op call, one Point per benchmark
row group, one Target per stated speed or memory goal.

Everything here imports with torch alone (no matplotlib, tqdm or peer library), so the
self-check and the tests can read the family tables.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch


@dataclasses.dataclass
class Case:
    """One call of a public op, with everything needed to check and time it.

    build(dtype, device, size, gen) -> dict of inputs (tensors and plain values); `size`
      names an entry of the family's size table, `gen` is a CPU torch.Generator.
    run(backend, **inputs) -> Tensor or tuple of Tensors: the pykernels call.
    grads: the input names that get gradients (empty: an inference op, timed forward only).
    eager(**inputs) -> the same structure as run: the idiomatic PyTorch composition a user
      would write (torch.compile of it is the "compile" provider).
    peers: provider name -> factory(device) -> callable(**inputs), or None when the peer
      is not installed or does not run on that device. Factories import lazily.
    bytes(inputs) -> the bytes the op must move (read each input, write each output, once
      per pass it needs): the roofline of a memory-bound op, against copy_ of that much.
    gemms(inputs) -> [(m, k, n), ...], the matmuls it must do: the roofline of a
      matmul-bound op, against torch.mm at those shapes.
    fullgraph: whether torch.compile(eager) is asked for one graph.
    oracle(**inputs) -> the exact answer the benchmarks use on float64 inputs instead of
      run("reference", ...), for a reference whose float64 path is too slow at benchmark
      sizes (the self-check, at small sizes, always uses the reference).
    random: the op draws from a torch.Generator passed as input "generator" (the caller
      gives each run a freshly seeded one).
    """

    name: str
    build: Callable
    run: Callable
    grads: tuple = ()
    eager: Callable | None = None
    peers: dict = dataclasses.field(default_factory=dict)
    bytes: Callable | None = None
    gemms: Callable | None = None
    fullgraph: bool = True
    oracle: Callable | None = None
    random: bool = False

    def inputs(
        self, dtype=torch.float32, device="cpu", size="small", seed=0, requires_grad=True
    ) -> dict:
        d = self.build(dtype, torch.device(device), size, torch.Generator().manual_seed(seed))
        if requires_grad:
            for k in self.grads:
                d[k] = d[k].detach().requires_grad_()
        return d

    def __call__(self, backend, inputs) -> tuple:
        return as_tuple(self.run(backend, **inputs))


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal for pykernels' default backend in one Point.

    kind "speedup": time(against) / time(pykernels) >= value (against: a provider name);
    kind "roofline": the roofline fraction >= value;
    kind "memory": peak(pykernels) <= value * peak(against)."""

    kind: str
    value: float
    against: str = ""

    def describe(self) -> str:
        if self.kind == "speedup":
            return f">= {self.value:g}x {self.against}"
        if self.kind == "roofline":
            return f">= {self.value:.0%} roofline"
        return f"peak <= {self.value:g} x {self.against}'s"


def speedup(against: str, value: float) -> Target:
    return Target("speedup", value, against)


def roofline(value: float) -> Target:
    return Target("roofline", value)


def memory(against: str, value: float) -> Target:
    return Target("memory", value, against)


@dataclasses.dataclass(frozen=True)
class Point:
    """One benchmarked (case, size, dtype) on one device type, in quick or full mode."""

    case: str
    mode: str = "quick"  # "quick" (make bench) or "full"
    size: str = "quick"  # a key of the family's size table
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    targets: tuple = ()


def as_tuple(out) -> tuple:
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def randn(shape, dtype, device, gen, scale=1.0) -> torch.Tensor:
    """Normal samples drawn in float64 on the CPU (the same values for every dtype and
    device), then rounded to dtype and moved."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    return x.to(dtype=dtype, device=device)


def permutations(n, length, device, gen) -> torch.Tensor:
    """[n, length] int64: a random permutation of range(length) per row."""
    return torch.argsort(torch.rand(n, length, generator=gen), dim=1).to(device)


def as_float64(inputs: dict) -> dict:
    """The inputs with every floating tensor as a float64 copy (requires_grad kept): what
    the reference runs on to give the exact answer."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.detach().double().requires_grad_(v.requires_grad)
        out[k] = v
    return out


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
