"""Peak-memory measurement shared by the tests and the benchmarks."""
from __future__ import annotations

import torch


def peak_cpu_bytes(fn) -> int:
    """Peak bytes held by CPU tensors allocated while fn() runs, from the profiler's
    allocation and free events (tensors alive before the call do not count)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
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
