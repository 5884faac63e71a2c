"""Cosine family benchmark: python -m pykernels bench cosine [--quick] [--device cuda].

Bars (issue 2): on CPU, cosine_similarity fwd+bwd at [8192, 1024] fp32 >= 2x eager and
>= 1x compile; pairwise at N = M = 4096, D = 512 fp32 within 1.2x of F.normalize + mm.
On an H200: row-wise at >= 80% of copy bandwidth; pairwise bf16 at N = M = 16384,
D = 1024 at >= 70% of the bf16 matmul rate.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pykernels as pk  # noqa: E402
from harness import Case, main  # noqa: E402


def _pair(shape, dtype, device):
    return tuple(torch.randn(*shape, dtype=dtype, device=device, requires_grad=True) for _ in range(2))


def cases(device: torch.device, quick: bool):
    gpu = device.type == "cuda"
    out = []
    R, D = (65536, 4096) if gpu and not quick else (8192, 1024)
    for dtype in ((torch.float32, torch.bfloat16) if gpu else (torch.float32,)):
        s = torch.finfo(dtype).bits // 8
        tag = str(dtype).replace("torch.", "")
        out.append(Case(
            name=f"cosine_similarity [{R},{D}] {tag}",
            make_inputs=lambda dtype=dtype: _pair((R, D), dtype, device),
            fn=lambda be: (lambda a, b: pk.cosine_similarity(a, b, backend=be)),
            bytes_fwd=2 * R * D * s + R * s, bytes_bwd=4 * R * D * s + R * s,
            bars={"eager": 2.0, "compile": 1.0} if not gpu else {},
        ))
        out.append(Case(
            name=f"feature_distillation_loss mse [{R},{D}] {tag}",
            make_inputs=lambda dtype=dtype: _pair((R, D), dtype, device),
            fn=lambda be: (lambda a, b: pk.feature_distillation_loss(a, b, backend=be)),
            bytes_fwd=2 * R * D * s, bytes_bwd=4 * R * D * s,
        ))
    if gpu:
        N, D, dtypes = (16384, 1024, (torch.bfloat16,)) if not quick else (8192, 1024, (torch.bfloat16,))
    else:
        N, D, dtypes = (4096, 512, (torch.float32,)) if not quick else (2048, 512, (torch.float32,))
    for dtype in dtypes:
        s = torch.finfo(dtype).bits // 8
        tag = str(dtype).replace("torch.", "")
        out.append(Case(
            name=f"pairwise_cosine_similarity N=M={N} D={D} {tag}",
            make_inputs=lambda dtype=dtype: _pair((N, D), dtype, device),
            fn=lambda be: (lambda a, b: pk.pairwise_cosine_similarity(a, b, backend=be)),
            bytes_fwd=2 * N * D * s + N * N * s, bytes_bwd=N * N * s + 4 * N * D * s,
            flops_fwd=2 * N * N * D, flops_bwd=4 * N * N * D,
            peers={"normalize+mm": lambda a, b: F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T},
            bars={"normalize+mm": 1 / 1.2} if not gpu else {},
        ))
    return out


if __name__ == "__main__":
    main("cosine", cases)
