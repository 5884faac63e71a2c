"""CUDA-graph capture of every op on the cuda and triton backends (gpu_check.sh).

Each op is captured once (forward and backward) on static inputs, the inputs are then
refilled in place and the graph replayed: the outputs and gradients must equal an eager
run on the new values, bitwise. A capture fails if an op synchronises with the host
(.item(), nonzero(), a Python branch on a value). Last, a 50-step DDIM sampling loop with
per-sample timesteps is captured as one graph and compared with the eager loop, and on a
GPU with diffusers installed, the captured loop is timed against diffusers'
DDIMScheduler.step loop on the same model outputs.

    python benchmarks/gpu_graphs.py            # on a GPU
    python benchmarks/gpu_graphs.py --dry-run  # CPU: the same code paths, no capture
Prints one line per case and a final "graphs: N ok, M failed"; exit status 1 on a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback

import torch

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
import pykernels as pk  # noqa: E402
from tests.op_cases import CASES, NO_BACKEND  # noqa: E402


def _weights(outs, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g).to(o) for o in outs]


def _fwd_bwd(case, backend, inputs, ws):
    outs = [o for o in case(backend, inputs)]
    diff = [o for o in outs if o.is_floating_point() and o.requires_grad]
    leaves = [inputs[k] for k in case.grads]
    grads = []
    if diff and leaves:
        grads = list(torch.autograd.grad(diff, leaves, ws[: len(diff)], allow_unused=True))
    return [o.detach() for o in outs] + [g for g in grads if g is not None]


def _refill(inputs, fresh):
    """New values into the static input tensors (in place: the graph reads their memory)."""
    with torch.no_grad():
        for k, v in fresh.items():
            if isinstance(v, torch.Tensor):
                inputs[k].copy_(v)


def _capture(fn, dry_run):
    """fn captured in a CUDA graph (after a warm-up on a side stream); returns (replay, outputs)."""
    if dry_run:
        return fn, fn()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = fn()
    return graph.replay, outs


def check_case(case, backend, device, dry_run):
    inputs = case.inputs(device=device, size="small", seed=0)
    ws = _weights(case(backend, case.inputs(device=device, size="small", seed=0)))
    replay, static_outs = _capture(lambda: _fwd_bwd(case, backend, inputs, ws), dry_run)
    _refill(inputs, case.inputs(device=device, size="small", seed=1, requires_grad=False))
    replay()
    got = static_outs if not dry_run else replay()
    want = _fwd_bwd(case, backend, case.inputs(device=device, size="small", seed=1), ws)
    bad = [k for k, (g, w) in enumerate(zip(got, want)) if not torch.equal(g, w)]
    return f"outputs/grads {bad} differ from eager" if bad else None


def ddim_loop(backend, device, steps=50):
    """50 DDIM steps, each sample on its own timestep schedule, with a toy denoiser."""
    table = pk.make_schedule(1000).to(device)
    N = 4
    offsets = torch.tensor([0, 3, 7, 11], device=device)
    ts = [(999 - 20 * i - offsets).clamp_min(0) for i in range(steps)]
    prevs = [t - 20 for t in ts]
    w = torch.linspace(0.5, 1.5, 4, device=device).view(1, 4, 1, 1)
    x = torch.randn(N, 4, 32, 32, generator=torch.Generator().manual_seed(3)).to(device)

    def loop():
        s = x.clone()
        for t, p in zip(ts, prevs):
            eps = torch.tanh(s * w)
            s, _ = pk.ddim_step(eps, t, p, s, table, backend=backend)
        return [s]

    return loop


def check_ddim(backend, device, dry_run):
    loop = ddim_loop(backend, device)
    replay, static_outs = _capture(loop, dry_run)
    replay()
    got = static_outs if not dry_run else replay()
    want = loop()
    return None if torch.equal(got[0], want[0]) else "50-step DDIM loop differs from eager"


def time_ddim_loop(shape=(64, 4, 128, 128), steps=50):
    """One line: 50 DDIM steps of [64, 4, 128, 128] fp32 on fixed model outputs, pykernels
    captured in a CUDA graph against diffusers' DDIMScheduler.step loop (eager)."""
    try:
        import diffusers
    except ImportError:
        return "ddim loop timing: diffusers is not installed"
    from pykernels.bench.harness import interleaved_ms

    gen = torch.Generator().manual_seed(0)
    m, x0 = (torch.randn(shape, generator=gen).cuda() for _ in range(2))
    sch = diffusers.DDIMScheduler(clip_sample=False)
    sch.set_timesteps(steps, device="cuda")
    table = pk.make_schedule().cuda()
    stride = 1000 // steps
    ts = [
        tuple(torch.full((shape[0],), int(t) - d, device="cuda") for d in (0, stride))
        for t in sch.timesteps
    ]

    def ours():
        x = x0
        for t, p in ts:
            x, _ = pk.ddim_step(m, t, p, x, table)
        return [x]

    def theirs():
        x = x0
        for t in sch.timesteps:
            x = sch.step(m, t, x).prev_sample
        return x

    replay, static = _capture(ours, dry_run=False)
    replay()
    want = theirs()
    err = ((static[0] - want).norm() / want.norm()).item()
    ms = interleaved_ms(
        {"graph": replay, "eager": ours, "diffusers": theirs}, torch.device("cuda"), 4.0
    )
    return (
        f"ddim loop {list(shape)} fp32, {steps} steps: CUDA graph {ms['graph']:.3f} ms, "
        f"pykernels eager {ms['eager']:.3f} ms, diffusers {ms['diffusers']:.3f} ms: graph "
        f"{ms['diffusers'] / ms['graph']:.2f}x diffusers; rel err vs diffusers {err:.1e}"
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--dry-run", action="store_true", help="CPU: run the code paths without capture"
    )
    args = ap.parse_args()
    dry = args.dry_run or not torch.cuda.is_available()
    device = "cpu" if dry else "cuda"
    backends = (
        ["cpu"]
        if dry
        else [b for b in ("cuda", "triton") if pk.backends.why_unavailable(b) is None]
    )
    ok = failed = 0
    for backend in backends:
        jobs = [
            (c.name, lambda c=c: check_case(c, backend, device, dry))
            for c in CASES
            if not c.random and c.name not in NO_BACKEND
        ]
        jobs.append(("ddim 50-step loop", lambda: check_ddim(backend, device, dry)))
        for name, job in jobs:
            try:
                err = job()
            except Exception as e:  # a sync inside capture, an unsupported op...
                err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                traceback.print_exc(file=sys.stderr)
            with contextlib.suppress(Exception):
                torch.cuda.synchronize() if not dry else None
            why = "" if err is None else ": " + err
            print(f"GRAPH {'OK  ' if err is None else 'FAIL'} {backend:7s} {name}{why}")
            ok, failed = ok + (err is None), failed + (err is not None)
    print(f"graphs{' (dry run, no capture)' if dry else ''}: {ok} ok, {failed} failed")
    if not dry:
        try:
            print(time_ddim_loop())
        except Exception as e:  # the timing is a report, not a check
            print(f"ddim loop timing failed: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
