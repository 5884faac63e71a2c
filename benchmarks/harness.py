"""The one benchmark harness every benchmarks/bench_<family>.py uses.

A family script describes Cases (inputs, a reference function, FLOP and byte counts);
the harness adds the providers (eager reference, torch.compile of it, each built
backend, outside peers), checks every provider against eager, times forward, backward
and forward+backward, measures peak memory and a same-run ceiling (copy bandwidth,
matmul rate), and writes a markdown table, a CSV and a PNG.

Timing: triton.testing.do_bench (median) on GPU; torch.utils.benchmark
(blocked_autorange, median) on CPU, where only ratios between providers measured in
the same run mean anything.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
from dataclasses import dataclass, field
from typing import Callable

import torch

import pykernels
from pykernels import backends
from pykernels._profiling import peak_bytes

# The "bwd" timing replays one graph's backward (retain_graph=True), which compiled
# graphs only allow without donated buffers.
torch._functorch.config.donated_buffer = False

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclass
class Case:
    """One benchmark point.

    make_inputs() -> tuple of tensors (those requiring grad get gradients);
    run(provider_fn, *inputs) is supplied by `fn`: fn(backend) -> callable(*inputs) -> Tensor,
    where backend is None for the pure-PyTorch reference.
    """
    name: str
    make_inputs: Callable[[], tuple]
    fn: Callable[[str | None], Callable]
    bytes_fwd: float = 0.0          # minimum bytes moved by the forward
    bytes_bwd: float = 0.0          # ... and by the backward
    flops_fwd: float = 0.0
    flops_bwd: float = 0.0
    modes: tuple = ("fwd", "bwd", "fwd+bwd")
    peers: dict = field(default_factory=dict)   # name -> callable(*inputs) (optional libraries)
    bars: dict = field(default_factory=dict)    # e.g. {"eager": 2.0, "compile": 1.0}: wanted speedups of the default backend
    peak_bar_bytes: float | None = None         # most extra memory the default backend may use (fwd+bwd)
    check_tol: float | None = None


def _timer(device: torch.device):
    if device.type == "cuda":
        import triton.testing

        return lambda f: triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median")

    import torch.utils.benchmark as tb

    def cpu_time(f):
        f()  # warm-up (and compile, for torch.compile)
        m = tb.Timer(stmt="f()", globals={"f": f}, num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=1.0)
        return m.median * 1e3
    return cpu_time


def ceilings(device: torch.device, timer) -> dict:
    """Copy bandwidth (GB/s) and matmul rate (TFLOP/s) measured now, on this device."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of float32
    src = torch.empty(n, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    bw = 2 * src.numel() * 4 / (ms * 1e-3) / 1e9
    del src, dst
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    k = 8192 if device.type == "cuda" else 1024
    a = torch.randn(k, k, device=device, dtype=dtype)
    b = torch.randn(k, k, device=device, dtype=dtype)
    ms = timer(lambda: a @ b)
    return {"copy_GBps": bw, "matmul_TFLOPs": 2 * k ** 3 / (ms * 1e-3) / 1e12, "matmul_dtype": str(dtype).replace("torch.", "")}


def providers(case: Case, device: torch.device, include_triton_cpu: bool = False) -> dict:
    """provider name -> callable(*inputs)."""
    out = {"eager": case.fn("reference")}
    ref = case.fn("reference")
    out["compile"] = torch.compile(ref)
    for name in ("cuda", "triton", "cpu"):
        if name in backends.available(device) and not (name == "triton" and device.type == "cpu" and not include_triton_cpu):
            out[name] = case.fn(name)
    out.update(case.peers)
    return out


def _run_mode(f, inputs, mode):
    """A zero-argument callable for one timing mode."""
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    if mode == "fwd":
        return lambda: f(*inputs)
    if mode == "fwd+bwd":
        def fb():
            out = f(*inputs)
            return torch.autograd.grad(out, leaves, torch.ones_like(out))
        return fb
    out = f(*inputs)   # "bwd": the graph of one forward, reused
    grad = torch.ones_like(out)
    return lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True)


def _outputs(f, inputs):
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    out = f(*inputs)
    g = torch.autograd.grad(out, leaves, torch.ones_like(out)) if leaves and out.requires_grad else ()
    return [out.detach()] + [x.detach() for x in g]


def _rel_err(a, b):
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    d = b.norm().item()
    return (a - b).norm().item() / (d if d else 1.0)


def run_case(case: Case, device: torch.device, timer, ceil: dict, include_triton_cpu=False) -> list[dict]:
    rows = []
    inputs = case.make_inputs()
    provs = providers(case, device, include_triton_cpu)
    want = _outputs(provs["eager"], inputs)
    for pname, f in provs.items():
        got = _outputs(f, inputs)
        err = max(_rel_err(g, w) for g, w in zip(got, want))
        peak = peak_bytes(lambda: _outputs(f, inputs), device)
        row = {"case": case.name, "provider": pname, "max_rel_err_vs_eager": err, "peak_MB": peak / 2 ** 20}
        for mode in case.modes:
            ms = timer(_run_mode(f, inputs, mode))
            row[f"{mode}_ms"] = ms
            nbytes = {"fwd": case.bytes_fwd, "bwd": case.bytes_bwd, "fwd+bwd": case.bytes_fwd + case.bytes_bwd}[mode]
            flops = {"fwd": case.flops_fwd, "bwd": case.flops_bwd, "fwd+bwd": case.flops_fwd + case.flops_bwd}[mode]
            if nbytes:
                gbps = nbytes / (ms * 1e-3) / 1e9
                row[f"{mode}_GBps"] = gbps
                row[f"{mode}_%copy"] = 100 * gbps / ceil["copy_GBps"]
            if flops:
                tf = flops / (ms * 1e-3) / 1e12
                row[f"{mode}_TFLOPs"] = tf
                row[f"{mode}_%matmul"] = 100 * tf / ceil["matmul_TFLOPs"]
        rows.append(row)
    # speedups against eager and compile, measured in this run
    key = "fwd+bwd_ms" if "fwd+bwd" in case.modes else f"{case.modes[0]}_ms"
    base = {r["provider"]: r[key] for r in rows}
    for r in rows:
        r["x_vs_eager"] = base["eager"] / r[key]
        r["x_vs_compile"] = base["compile"] / r[key]
        for peer in case.peers:
            r[f"x_vs_{peer}"] = base[peer] / r[key]
    return rows


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def markdown(rows: list[dict]) -> str:
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str) -> None:
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict], path: str, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = list(dict.fromkeys(r["case"] for r in rows))
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    width = 0.8 / len(provs)
    for i, p in enumerate(provs):
        ys = [next((r["x_vs_eager"] for r in rows if r["case"] == c and r["provider"] == p), 0) for c in cases]
        ax.bar([j + i * width for j in range(len(cases))], ys, width, label=p)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels(cases, rotation=15, ha="right", fontsize=7)
    ax.set_ylabel("speedup vs eager (fwd+bwd)")
    ax.set_title(title, fontsize=9)
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def check_bars(rows: list[dict], cases: list[Case], device: torch.device) -> list[str]:
    """Lines saying whether the default backend met each case's wanted speedups."""
    lines = []
    default = backends.resolve(None, device, "bench")
    for c in cases:
        for r in rows:
            if r["case"] == c.name and r["provider"] == default:
                for peer, want in c.bars.items():
                    got = r.get(f"x_vs_{peer}")
                    if got is not None:
                        lines.append(f"{'MET ' if got >= want else 'MISS'} {c.name}: {default} {got:.2f}x {peer} (bar {want}x)")
                if c.peak_bar_bytes is not None:
                    got, want = r["peak_MB"], c.peak_bar_bytes / 2 ** 20
                    lines.append(f"{'MET ' if got <= want else 'MISS'} {c.name}: {default} peak {got:.1f} MB (bar {want:.1f} MB)")
    return lines


def header(device: torch.device) -> str:
    props = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return (f"{datetime.date.today()} | {device.type}: {props} | torch {torch.__version__} | "
            f"pykernels {pykernels.__version__} | backends {backends.available(device)}")


def main(family: str, make_cases: Callable[[torch.device, bool], list[Case]], argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=f"pykernels {family} benchmark")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    ap.add_argument("--out", default=RESULTS, help="folder for CSV and PNG")
    ap.add_argument("--triton-cpu", action="store_true", help="also time Triton under the interpreter (slow)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    timer = _timer(device)
    os.makedirs(args.out, exist_ok=True)
    print(f"## {family} benchmark\n\n{header(device)}\n")
    ceil = ceilings(device, timer)
    print(f"ceilings measured in this run: copy {ceil['copy_GBps']:.1f} GB/s, "
          f"{ceil['matmul_dtype']} matmul {ceil['matmul_TFLOPs']:.3g} TFLOP/s\n")
    cases = make_cases(device, args.quick)
    rows = []
    for case in cases:
        rows += run_case(case, device, timer, ceil, args.triton_cpu)
    print(markdown(rows))
    bars = check_bars(rows, cases, device)
    if bars:
        print("\n" + "\n".join(bars))
    bad = [r for r in rows if not r["max_rel_err_vs_eager"] <= 5e-2]
    stem = os.path.join(args.out, f"{family}_{device.type}{'_quick' if args.quick else ''}")
    write_csv(rows, stem + ".csv")
    drew = plot(rows, stem + ".png", f"{family} on {device.type}: {header(device)}")
    print(f"\nwrote {stem}.csv" + (f" and {stem}.png" if drew else ""))
    if bad:
        raise SystemExit(f"{len(bad)} provider(s) disagree with eager: " + ", ".join(f"{r['case']}/{r['provider']}" for r in bad))
    return rows
