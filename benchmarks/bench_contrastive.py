"""Contrastive family benchmark: python benchmarks/bench_contrastive.py [--quick] [--device cuda].

Speed table (harness): info_nce_loss forward, backward and forward+backward against the
eager reference (which builds the [N, M] logits), torch.compile of it, each backend and
open_clip's ClipLoss when installed. Then a sweep of peak memory against N (= M) for
the fused backend and the reference, drawn as contrastive_memory_<device>.png.

Bars (issue 4): on CPU, N = M = 8192, D = 512 fp32 forward+backward at least as fast as
eager with peak memory at most a tenth of eager's. On an H200: N = M = 65536, D = 1024
bf16 with peak memory beyond inputs and gradients under 1 GiB and forward+backward at
>= 50% of the bf16 matmul rate (8 N M D FLOPs); at N = 16384 at least as fast as
open_clip's ClipLoss.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pykernels as pk  # noqa: E402
from pykernels import backends  # noqa: E402
from pykernels._profiling import peak_bytes  # noqa: E402
from harness import RESULTS, Case, main  # noqa: E402

# The harness's "bwd" mode reuses one graph (retain_graph=True), which compiled graphs
# only allow without donated buffers (main's harness sets this too).
torch._functorch.config.donated_buffer = False


def _inputs(N, M, D, dtype, device):
    def make():
        i = torch.nn.functional.normalize(torch.randn(N, D, device=device), dim=-1).to(dtype).requires_grad_()
        t = torch.nn.functional.normalize(torch.randn(M, D, device=device), dim=-1).to(dtype).requires_grad_()
        s = torch.tensor(100.0, device=device, requires_grad=True)
        return i, t, s
    return make


def _open_clip_peer():
    try:
        from open_clip.loss import ClipLoss
    except ImportError:
        return {}
    loss = ClipLoss()
    return {"open_clip": lambda i, t, s: loss(i, t, s)}


def cases(device: torch.device, quick: bool):
    gpu = device.type == "cuda"
    out = []
    if gpu:
        shapes = [(16384, 1024, torch.bfloat16)] + ([] if quick else [(65536, 1024, torch.bfloat16)])
    else:
        shapes = [(2048, 512, torch.float32)] if quick else [(8192, 512, torch.float32)]
    for N, D, dtype in shapes:
        tag = str(dtype).replace("torch.", "")
        s = torch.finfo(dtype).bits // 8
        big = N > 16384
        out.append(Case(
            name=f"info_nce_loss N=M={N} D={D} {tag}",
            make_inputs=_inputs(N, N, D, dtype, device),
            fn=lambda be: (lambda i, t, sc: pk.info_nce_loss(i, t, sc, backend=be)),
            bytes_fwd=2 * N * D * s, bytes_bwd=4 * N * D * s,
            flops_fwd=2 * N * N * D, flops_bwd=6 * N * N * D,   # 8 N M D in all: the backward recomputes
            peers={} if big else (_open_clip_peer() if gpu else {}),
            bars=({"eager": 1.0} if not gpu else ({"open_clip": 1.0} if not big else {})),
        ))
    return out


def memory_sweep(device: torch.device, quick: bool, out_dir: str) -> list[dict]:
    """Peak memory of forward+backward against N = M for the fused backend and eager."""
    fused = backends.resolve(None, device, "bench")
    D = 1024 if device.type == "cuda" else 256
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    top = (16384 if quick else 65536) if device.type == "cuda" else (2048 if quick else 8192)
    Ns = [n for n in (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536) if n <= top]
    rows = []
    for N in Ns:
        i, t, s = _inputs(N, N, D, dtype, device)()
        base = 2 * 2 * N * D * i.element_size()  # the features' gradients are outputs
        for prov, be in ((fused, fused), ("eager", "reference")):
            if be == "reference" and device.type == "cuda" and N > 32768:
                continue  # N^2 logits would not fit
            def run():
                loss = pk.info_nce_loss(i, t, s, backend=be)
                torch.autograd.grad(loss, [i, t, s])
            peak = peak_bytes(run, device)
            rows.append({"N": N, "provider": prov, "peak_MB": peak / 2 ** 20,
                         "beyond_grads_MB": (peak - base) / 2 ** 20, "N*M*4_MB": N * N * 4 / 2 ** 20})
    print("\n### peak memory of forward+backward vs N (= M), D = %d, %s\n" % (D, str(dtype).replace("torch.", "")))
    print("| N | provider | peak MB | beyond feature grads MB | N*M*4 MB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['N']} | {r['provider']} | {r['peak_MB']:.1f} | {r['beyond_grads_MB']:.1f} | {r['N*M*4_MB']:.0f} |")
    _plot(rows, os.path.join(out_dir, f"contrastive_memory_{device.type}{'_quick' if quick else ''}.png"), D, dtype)
    return rows


def _plot(rows, path, D, dtype):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no memory plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for prov in dict.fromkeys(r["provider"] for r in rows):
        pts = [(r["N"], r["peak_MB"]) for r in rows if r["provider"] == prov]
        ax.plot(*zip(*pts), marker="o", label=prov)
    Ns = sorted({r["N"] for r in rows})
    ax.plot(Ns, [n * n * 4 / 2 ** 20 for n in Ns], ls=":", color="gray", label="N*M*4 bytes (one fp32 logit matrix)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N = M")
    ax.set_ylabel("peak memory of forward+backward (MiB)")
    ax.set_title(f"info_nce_loss memory, D={D} {str(dtype).replace('torch.', '')}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--memory-only", action="store_true", help="only the memory sweep")
    args, rest = ap.parse_known_args()
    if not args.memory_only:
        main("contrastive", cases, [a for a in sys.argv[1:] if a != "--memory-only"])
    os.makedirs(args.out, exist_ok=True)
    memory_sweep(torch.device(args.device), args.quick, args.out)
