"""Forward + backward time and peak memory of the distributed contrastive losses.

    python -m pykernels.bench.distributed [--world 2] [--n 2048] [--dim 256]

Spawns `--world` CPU processes (gloo, one thread each); every rank holds n image and n
text rows. Compares, on rank 0: explicit logits on the gathered batch (open_clip's
default ClipLoss math), pykernels.nn.ClipLoss, and pykernels.nn.InfoNCELoss in gather
and ring modes. Prints a markdown table (median of --repeats runs; peak MiB of the
tensors allocated by one step). On a shared CPU machine read the ratios, not the times.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def _gather_live(x, rank, world):
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    parts[rank] = x
    return torch.cat(parts)


class ExplicitClip(torch.nn.Module):
    """open_clip's default ClipLoss, with the [N, N] logits."""

    def __init__(self, rank, world):
        super().__init__()
        self.rank, self.world = rank, world

    def forward(self, img, txt, scale):
        all_img = _gather_live(img, self.rank, self.world)
        all_txt = _gather_live(txt, self.rank, self.world)
        logits = scale * all_img @ all_txt.T
        labels = torch.arange(logits.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _worker(rank, args, port):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world
    )
    from pykernels._profiling import peak_cpu_bytes
    from pykernels.nn import ClipLoss, InfoNCELoss

    gen = torch.Generator().manual_seed(rank)
    img = torch.randn(args.n, args.dim, generator=gen).requires_grad_()
    txt = torch.randn(args.n, args.dim, generator=gen).requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    losses = {
        "explicit logits on the gathered batch (open_clip's math)": ExplicitClip(rank, args.world),
        "`ClipLoss` (same gathering, fused op)": ClipLoss(rank=rank, world_size=args.world),
        '`InfoNCELoss(mode="gather")`': InfoNCELoss(mode="gather", check_sizes=False),
        '`InfoNCELoss(mode="ring")`': InfoNCELoss(mode="ring", check_sizes=False),
    }
    if rank == 0:
        print("| loss | time (ms) | peak MiB (rank 0) |\n|---|---|---|")
    for name, loss in losses.items():

        def step():
            loss(img, txt, scale).backward()

        step()  # warm-up
        times = []
        for _ in range(args.repeats):
            dist.barrier()
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        peak = peak_cpu_bytes(step)
        if rank == 0:
            ms = 1e3 * statistics.median(times)
            print(f"| {name} | {ms:.0f} | {peak / 2**20:.1f} |", flush=True)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--n", type=int, default=2048, help="rows per rank")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(args, port), nprocs=args.world)


if __name__ == "__main__":
    main()
