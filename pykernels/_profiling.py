"""Peak-memory measurement shared by the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import sys

import torch


@contextlib.contextmanager
def _c_stderr_silenced():
    """File descriptor 2 points at /dev/null inside the block.

    Kineto, the profiler's C++ backend, writes `USDT ... profiler_start/profiler_stop` on
    every start and stop and, on a machine without a GPU, `gpuGetDeviceCount failed` to
    the C stderr; they say nothing about the code measured. Only the profiler's start and
    stop run in here, never the measured function, whose own errors stay visible
    (tests/test_bench.py::test_peak_cpu_bytes_is_quiet pins it)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_PRIMED = False


def _prime_unknown_block_warning(profile, activities) -> None:
    """Frees, silenced, a block allocated before a profile started. PyTorch's CPU allocator
    warns once per process ("Memory block of unknown size was allocated before the
    profiling started") the first time that happens, and a measured function that frees an
    older tensor would print it; after this it never does."""
    global _PRIMED
    if _PRIMED:
        return
    block = torch.empty(1024)
    with _c_stderr_silenced():
        with profile(activities=activities, profile_memory=True):
            del block
    _PRIMED = True


def peak_cpu_bytes(fn) -> int:
    """Peak bytes held by CPU tensors allocated while fn() runs, from the profiler's
    allocation and free events (tensors alive before the call do not count)."""
    from torch.profiler import ProfilerActivity, profile

    _prime_unknown_block_warning(profile, [ProfilerActivity.CPU])
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _c_stderr_silenced():
        prof.__enter__()
    try:
        fn()
    finally:
        with _c_stderr_silenced():
            prof.__exit__(None, None, None)
    # Raw allocation (+bytes) and free (-bytes) records, in time order; the grouped
    # FunctionEvents would fold them into the ops that made them.
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for ev in sorted(records, key=lambda e: e.start_ns()):
        live += ev.nbytes()
        peak = max(peak, live)
    return peak


def peak_cuda_bytes(fn, device=None) -> int:
    """Peak CUDA bytes allocated by fn() beyond what was allocated before it."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def peak_bytes(fn, device: torch.device) -> int:
    return peak_cuda_bytes(fn, device) if device.type == "cuda" else peak_cpu_bytes(fn)
