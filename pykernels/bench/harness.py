"""Measure one benchmark Point: every provider's error against the float64 reference, its
forward(+backward) time in one interleaved run with the roofline's copy / matmul, and its
peak extra memory.

Providers: each built pykernels backend (Triton only on a GPU: on CPU it runs in the
interpreter), "eager" (the case's idiomatic composition), "compile" (torch.compile of it,
default mode, fullgraph where it compiles, static shapes, warmed up before timing) and
each installed peer. Times are medians of interleaved rounds: every provider runs once
per round, so a load change on a shared machine hits them all alike.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time

import torch

from .. import backends
from .._precision import rel_err, tolerance
from .._profiling import peak_bytes
from .case import Case, Point, as_float64, as_tuple

ROUNDS = 5
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclasses.dataclass
class Row:
    """One provider's figures in one Point."""

    family: str
    case: str
    shape: str
    dtype: str
    provider: str
    ms: float = float("nan")  # median forward(+backward) time
    roofline: float = float("nan")  # time of the copy / matmuls the op needs / ms
    peak_mb: float = float("nan")  # peak memory allocated during one call
    max_err: float = float("nan")  # max rel_err of outputs and gradients vs float64
    x_eager: float = float("nan")
    x_compile: float = float("nan")
    pykernels: bool = False  # a pykernels backend (held to the tolerance)
    within_tolerance: bool | None = None
    note: str = ""


def pykernels_backends(device: torch.device) -> list[str]:
    """The built backends benchmarked on `device` (not the reference; Triton only on a GPU)."""
    skip = {"reference"} | ({"triton"} if device.type == "cpu" else set())
    return [b for b in backends.available(device) if b not in skip]


def providers(case: Case, device: torch.device, skip=()) -> dict:
    """provider name -> callable(**inputs); peers that are not installed or do not run
    on this device are left out, and so is every name in `skip` but eager (the baseline)."""
    out = {be: functools.partial(case.run, be) for be in pykernels_backends(device)}
    out["eager"] = case.eager
    if "compile" not in skip:
        out["compile"] = torch.compile(case.eager, fullgraph=case.fullgraph, dynamic=False)
    for name, factory in case.peers.items():
        fn = factory(device) if name not in skip else None
        if fn is not None:
            out[name] = fn
    return {k: v for k, v in out.items() if k == "eager" or k not in skip}


def weights(outputs, dtype: torch.dtype) -> list:
    """A fixed upstream gradient per output: 1 for a scalar, else normal values rounded to
    the inputs' dtype, so that every provider and the float64 reference get the same ones."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for o in outputs:
        if o.dim() == 0:
            out.append(torch.ones((), dtype=torch.float64, device=o.device))
        else:
            w = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype)
            out.append(w.to(device=o.device, dtype=torch.float64))
    return out


def step(fn, inputs: dict, grads: tuple, ws: list):
    """A zero-argument forward (+ backward with the upstream gradients ws) returning the
    outputs followed by the gradients of the `grads` inputs."""
    leaves = [inputs[k] for k in grads]

    def run():
        outs = as_tuple(fn(**inputs))
        if not leaves:
            return outs
        diff = [(o, w) for o, w in zip(outs, ws) if o.requires_grad]
        gs = torch.autograd.grad(
            [o for o, _ in diff], leaves, [w.to(o.dtype) for o, w in diff], allow_unused=True
        )
        return outs + tuple(gs)

    return run


def max_error(got, want) -> float:
    """The largest rel_err over outputs and gradients; inf for a missing gradient."""
    if len(got) != len(want):
        return float("inf")
    errs = [float("inf") if g is None else rel_err(g, w) for g, w in zip(got, want)]
    return max(errs, default=0.0)


def _sync(device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def interleaved_ms(fns: dict, device: torch.device, budget_s: float, rounds: int = ROUNDS) -> dict:
    """Median milliseconds per call of each zero-argument fn, timed in `rounds` rounds in
    which every fn runs a block of calls (about budget_s / (rounds * len(fns)) seconds,
    at least one call), the order rotating from round to round."""
    sync = _sync(device)
    names = list(fns)
    block = budget_s / (rounds * max(1, len(names)))
    reps = {}
    for n in names:
        sync()
        t0 = time.perf_counter()
        fns[n]()
        sync()
        reps[n] = max(1, int(block / max(time.perf_counter() - t0, 1e-6)))
    samples = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            t0 = time.perf_counter()
            for _ in range(reps[n]):
                fns[n]()
            sync()
            samples[n].append((time.perf_counter() - t0) / reps[n] * 1e3)
    return {n: statistics.median(v) for n, v in samples.items()}


def roofline_fn(case: Case, inputs: dict, dtype: torch.dtype, device: torch.device):
    """A zero-argument call doing what bounds the op: copy_ of as many bytes as the op
    must move (memory-bound), or torch.mm at the op's matmul shapes (matmul-bound).
    None when the case states neither."""
    if case.bytes is not None:
        n = max(1, int(case.bytes(inputs)) // 8)  # float32 elements: n read + n written
        src = torch.rand(n, device=device)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    if case.gemms is not None:
        mm_dtype = dtype if dtype != torch.float64 else torch.float32

        def operands(m, k, n):
            a = torch.randn(m, k, device=device, dtype=mm_dtype)
            b = torch.randn(k, n, device=device, dtype=mm_dtype)
            return a, b, torch.empty(m, n, device=device, dtype=mm_dtype)

        mats = [operands(*shape) for shape in case.gemms(inputs)]
        return lambda: [torch.mm(a, b, out=c) for a, b, c in mats]
    return None


def describe(inputs: dict, dtype: torch.dtype, forward_only: bool) -> tuple[str, str]:
    """(shape of the first tensor input, dtype name [+ " fwd" for inference ops])."""
    first = next(
        v for v in inputs.values() if isinstance(v, torch.Tensor) and v.is_floating_point()
    )
    name = DTYPE_NAMES.get(dtype, str(dtype))
    return "[" + ", ".join(map(str, first.shape)) + "]", name + (" fwd" if forward_only else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:160]


def _checked(name, fn, case, inputs, ws, want):
    """(step, max error, None) for a provider that runs, else (None, nan, why). A compile
    that fails with fullgraph=True is retried with graph breaks allowed."""
    run = step(fn, inputs, case.grads, ws)
    try:
        got = run()
        return run, (max_error(got, want) if want is not None else float("nan")), None
    except Exception as exc:  # a peer that does not run here, a graph break, ...
        if name == "compile" and case.fullgraph:
            loose = torch.compile(case.eager, dynamic=False)
            run = step(loose, inputs, case.grads, ws)
            try:
                got = run()
                err = max_error(got, want) if want is not None else float("nan")
                return run, err, "compiled with graph breaks"
            except Exception as exc2:
                return None, float("nan"), _first_line(exc2)
        return None, float("nan"), _first_line(exc)


def _reference(case: Case, inputs: dict, ws: list):
    """The float64 reference's (or the case's oracle's) outputs and gradients, None when
    they do not fit in memory."""
    exact = case.oracle or functools.partial(case.run, "reference")
    try:
        return step(exact, as_float64(inputs), case.grads, ws)()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def measure(
    family: str,
    case: Case,
    point: Point,
    device: torch.device,
    budget_s: float,
    progress=None,
    skip=(),
) -> list[Row]:
    """Every provider's Row for one Point (x_eager / x_compile filled in), but those in skip."""
    torch._dynamo.reset()  # static shapes per Point: no recompilation limit across Points
    inputs = case.inputs(point.dtype, device, point.size)
    shape, dtype_name = describe(inputs, point.dtype, not case.grads)
    with torch.no_grad():  # the output shapes, from the default backend
        ws = weights(case(([*pykernels_backends(device), "reference"])[0], inputs), point.dtype)
    want = _reference(case, inputs, ws)
    rows, runs = [], {}
    for name, fn in providers(case, device, skip).items():
        if progress is not None:
            progress(0, f"{case.name}: {name}")
        row = Row(family, case.name, shape, dtype_name, name, pykernels=name in backends.NAMES)
        run, row.max_err, note = _checked(name, fn, case, inputs, ws, want)
        row.note = note or ("" if want is not None else "no float64 reference: out of memory")
        if run is not None:
            run()  # a second warm-up (compiled code, caches)
            row.peak_mb = peak_bytes(run, device) / 2**20
            runs[name] = run
        rows.append(row)
        if progress is not None:
            progress(1)
    bound = roofline_fn(case, inputs, point.dtype, device)
    if progress is not None:
        progress(0, f"{case.name}: timing")
    times = interleaved_ms({**runs, **({"(roofline)": bound} if bound else {})}, device, budget_s)
    if progress is not None:
        progress(1)
    _fill(rows, times)
    return rows


def _fill(rows: list[Row], times: dict) -> None:
    """Times, speedups against eager and compile, roofline fractions and tolerances."""
    by_name = {r.provider: r for r in rows}
    for r in rows:
        r.ms = times.get(r.provider, float("nan"))
        if "(roofline)" in times:
            r.roofline = times["(roofline)"] / r.ms
    for r in rows:
        r.x_eager = by_name["eager"].ms / r.ms
        r.x_compile = by_name["compile"].ms / r.ms if "compile" in by_name else float("nan")
        if r.pykernels and not math.isnan(r.max_err):
            dtype = next(d for d, n in DTYPE_NAMES.items() if n == r.dtype.split()[0])
            r.within_tolerance = r.max_err <= tolerance(dtype, by_name["eager"].max_err)
