"""Diffusion family benchmark: python benchmarks/bench_diffusion.py [--quick] [--device cuda].

Bars (issue 6): on CPU, in one run, ddim_step at [16, 4, 64, 64] fp32 >= 3x the eager
reference and add_noise >= 2x. On an H200: at [64, 4, 128, 128] each step at >= 80% of
the copy bandwidth measured in the same run, and a 50-step DDIM loop captured in a CUDA
graph >= 3x faster than diffusers' DDIMScheduler loop on the same model outputs (printed
after the table when a GPU is used).

Byte counts are the minimum traffic: every input read once, every output written once.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pykernels as pk  # noqa: E402
from harness import Case, main, _timer  # noqa: E402

try:
    import diffusers
except ImportError:  # the peer is optional
    diffusers = None


def _tensors(shape, dtype, device, n, grad=False):
    g = torch.Generator(device="cpu").manual_seed(0)
    return tuple(torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_(grad) for _ in range(n))


def cases(device: torch.device, quick: bool):
    gpu = device.type == "cuda"
    shape = (64, 4, 128, 128) if gpu and not quick else (16, 4, 64, 64)
    N, numel = shape[0], torch.Size(shape).numel()
    tab = pk.make_schedule().to(device)
    t = torch.linspace(999, 0, N, device=device).long()           # mixed timesteps, incl. 0 and the last
    prev = t - 20
    t_one, prev_one = torch.full_like(t, 501), torch.full_like(t, 481)  # diffusers takes one timestep per batch
    out = []
    for dtype in ((torch.float32, torch.bfloat16) if gpu else (torch.float32,)):
        s = torch.finfo(dtype).bits // 8
        tag = f"{list(shape)} {str(dtype).replace('torch.', '')}"
        ddim = diffusers.DDIMScheduler(clip_sample=False) if diffusers else None
        if ddim is not None:
            ddim.set_timesteps(50)
        ddpm = diffusers.DDPMScheduler(clip_sample=False) if diffusers else None
        out.append(Case(
            name=f"add_noise {tag}",
            make_inputs=lambda dtype=dtype: _tensors(shape, dtype, device, 2),
            fn=lambda be: (lambda x, z: pk.add_noise(x, z, t, tab, backend=be)),
            bytes_fwd=3 * numel * s, modes=("fwd",),
            peers={"diffusers": lambda x, z: ddpm.add_noise(x, z, t)} if ddpm else {},
            bars={"eager": 2.0} if not gpu else {},
        ))
        out.append(Case(
            name=f"ddim_step eta=0 {tag}",
            make_inputs=lambda dtype=dtype: _tensors(shape, dtype, device, 2),
            fn=lambda be: (lambda m, x: pk.ddim_step(m, t_one, prev_one, x, tab, backend=be)[0]),
            bytes_fwd=4 * numel * s, modes=("fwd",),
            peers={"diffusers": lambda m, x: ddim.step(m, 501, x).prev_sample} if ddim else {},
            bars={"eager": 3.0} if not gpu else {},
        ))
        out.append(Case(
            name=f"ddpm_step {tag}",
            make_inputs=lambda dtype=dtype: _tensors(shape, dtype, device, 3),
            fn=lambda be: (lambda m, x, z: pk.ddpm_step(m, t, x, tab, noise=z, clip_sample=False, backend=be)[0]),
            bytes_fwd=5 * numel * s, modes=("fwd",),
        ))
        out.append(Case(
            name=f"ddim_step eta=1 clip, fwd+bwd {tag}",
            make_inputs=lambda dtype=dtype: _tensors(shape, dtype, device, 2, grad=True) + _tensors(shape, dtype, device, 1),
            fn=lambda be: (lambda m, x, z: pk.ddim_step(m, t, prev, x, tab, eta=1.0, noise=z, clip_sample=True,
                                                        backend=be)[0]),
            bytes_fwd=5 * numel * s, bytes_bwd=5 * numel * s, modes=("fwd", "fwd+bwd"),
        ))
        out.append(Case(
            name=f"diffusion_loss v_prediction {tag}",
            make_inputs=lambda dtype=dtype: _tensors(shape, dtype, device, 1, grad=True) + _tensors(shape, dtype, device, 2),
            fn=lambda be: (lambda m, x, z: pk.diffusion_loss(m, x, z, t, tab, prediction_type="v_prediction",
                                                             backend=be)),
            bytes_fwd=3 * numel * s, bytes_bwd=4 * numel * s, modes=("fwd", "fwd+bwd"),
        ))
    return out


def graph_loop(device: torch.device, quick: bool) -> None:
    """50 DDIM steps on fixed model outputs: pykernels captured in a CUDA graph against
    diffusers' DDIMScheduler.step loop (eager)."""
    if device.type != "cuda" or diffusers is None:
        return
    shape = (16, 4, 64, 64) if quick else (64, 4, 128, 128)
    m, x0 = _tensors(shape, torch.float32, device, 2)
    sch = diffusers.DDIMScheduler()
    sch.set_timesteps(50, device=device)
    tab = pk.make_schedule().to(device)
    N = shape[0]
    steps = [(torch.full((N,), int(t), device=device), torch.full((N,), int(t) - 20, device=device))
             for t in sch.timesteps]

    def ours():
        x = static_x
        for t, p in steps:
            x, _ = pk.ddim_step(m, t, p, x, tab)
        return x

    static_x = x0.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ours()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ours()

    def theirs():
        x = x0
        for t in sch.timesteps:
            x = sch.step(m, t, x).prev_sample
        return x

    graph.replay()
    err = ((static_out - theirs()).norm() / theirs().norm()).item()
    timer = _timer(device)
    t_graph, t_eager_ours, t_diffusers = timer(graph.replay), timer(ours), timer(theirs)
    print(f"\n50-step DDIM loop {list(shape)} fp32: CUDA graph {t_graph:.3f} ms, pykernels eager {t_eager_ours:.3f} ms, "
          f"diffusers {t_diffusers:.3f} ms -> graph {t_diffusers / t_graph:.2f}x diffusers (bar 3x) "
          f"[{'MET' if t_diffusers / t_graph >= 3 else 'MISS'}]; rel err vs diffusers {err:.2e}")


if __name__ == "__main__":
    main("diffusion", cases)
    dev = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else ("cuda" if torch.cuda.is_available() else "cpu")
    graph_loop(torch.device(dev), "--quick" in sys.argv)
