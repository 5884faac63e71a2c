"""MAE family benchmark: python benchmarks/bench_mae.py [--quick] [--device cuda].

Bars (issue 5): the pipeline gather_patches + unshuffle_with_mask_tokens (D = 512) +
masked_patch_loss, forward + backward, at N = 64, 3x224x224 images, p = 16,
mask_ratio 0.75: on CPU >= 2x the eager reference. On an H200 at N = 256: >= 80% of
the copy bandwidth measured in the same run and >= 3x eager.

The pipeline's three outputs meet in one scalar through `_Inject`: forward returns the
loss; backward hands the gathered patches and the unshuffled tokens fixed upstream
gradients (what the encoder and the decoder would send), so no provider pays for any
extra reduction. The loss uses norm_pix_loss=True, MAE's pre-training recipe.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pykernels as pk  # noqa: E402
from harness import Case, main  # noqa: E402

# The harness times "bwd" by replaying one graph's backward (retain_graph=True), which
# torch.compile's donated buffers forbid; donation only saves memory, not time.
torch._functorch.config.donated_buffer = False


class _Inject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss, vis, full, g_vis, g_full):
        ctx.save_for_backward(g_vis, g_full)
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        g_vis, g_full = ctx.saved_tensors
        return grad, g_vis, g_full, None, None


def _ids(N, L, K, device):
    noise = torch.rand(N, L, device=device)
    shuffle = torch.argsort(noise, dim=1)
    return shuffle[:, :K].contiguous(), torch.argsort(shuffle, dim=1)


def _pipeline_inputs(N, C, S, p, D, dtype, device):
    L = (S // p) ** 2
    K = int(L * (1 - 0.75))
    P = p * p * C
    keep, restore = _ids(N, L, K, device)
    mk = lambda *shape, grad=True: torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)  # noqa: E731
    return (mk(N, C, S, S), mk(N, K, D), mk(D), mk(N, L, P), keep, restore, (restore >= K).to(dtype),
            mk(N, K, P, grad=False), mk(N, L, D, grad=False))


def _pipeline(p):
    def fn(be):
        def run(imgs, x_visible, mask_token, pred, keep, restore, mask, g_vis, g_full):
            vis = pk.gather_patches(imgs, keep, p, backend=be)
            full = pk.unshuffle_with_mask_tokens(x_visible, mask_token, restore, backend=be)
            loss = pk.masked_patch_loss(pred, imgs.detach(), mask, p, norm_pix_loss=True, backend=be)
            return _Inject.apply(loss, vis, full, g_vis, g_full)
        return run
    return fn


def cases(device: torch.device, quick: bool):
    gpu = device.type == "cuda"
    C, S, p, D = 3, 224, 16, 512
    L, P = (S // p) ** 2, p * p * C
    K = int(L * 0.25)
    if gpu:
        N = 64 if quick else 256
        dtypes = (torch.float32, torch.bfloat16)
    else:
        N = 8 if quick else 64
        dtypes = (torch.float32,)
    out = []
    for dtype in dtypes:
        s = torch.finfo(dtype).bits // 8
        tag = str(dtype).replace("torch.", "")
        img, vis, xv, full, pred = N * C * S * S, N * K * P, N * K * D, N * L * D, N * L * P
        # minimum traffic: gather reads the kept pixels and writes them; unshuffle reads
        # K rows and writes L; the loss reads pred and the image. Backward: the image
        # gradient is written whole, the visible / token grads and grad pred once each.
        bytes_fwd = s * (2 * vis + xv + full + pred + img)
        bytes_bwd = s * (vis + img + full + xv + 2 * pred + img)
        out.append(Case(
            name=f"pipeline N={N} {S}x{S} p={p} D={D} {tag}",
            make_inputs=lambda dtype=dtype: _pipeline_inputs(N, C, S, p, D, dtype, device),
            fn=_pipeline(p), bytes_fwd=bytes_fwd, bytes_bwd=bytes_bwd,
            bars={"eager": 3.0} if gpu else {"eager": 2.0},
        ))
        out.append(Case(
            name=f"gather_patches N={N} K={K} {tag}",
            make_inputs=lambda dtype=dtype: (torch.randn(N, C, S, S, device=device, dtype=dtype, requires_grad=True),
                                             _ids(N, L, K, device)[0]),
            fn=lambda be: (lambda imgs, keep: pk.gather_patches(imgs, keep, p, backend=be)),
            bytes_fwd=2 * s * vis, bytes_bwd=s * (vis + img),
        ))
        out.append(Case(
            name=f"unshuffle_with_mask_tokens N={N} L={L} D={D} {tag}",
            make_inputs=lambda dtype=dtype: (torch.randn(N, K, D, device=device, dtype=dtype, requires_grad=True),
                                             torch.randn(D, device=device, dtype=dtype, requires_grad=True),
                                             _ids(N, L, K, device)[1]),
            fn=lambda be: (lambda x, t, r: pk.unshuffle_with_mask_tokens(x, t, r, backend=be)),
            bytes_fwd=s * (xv + full), bytes_bwd=s * (full + xv),
        ))
        for norm in (False, True):
            out.append(Case(
                name=f"masked_patch_loss norm_pix={norm} N={N} {tag}",
                make_inputs=lambda dtype=dtype: (torch.randn(N, L, P, device=device, dtype=dtype, requires_grad=True),
                                                 torch.randn(N, C, S, S, device=device, dtype=dtype),
                                                 (_ids(N, L, K, device)[1] >= K).to(dtype)),
                fn=lambda be, norm=norm: (lambda pr, im, m: pk.masked_patch_loss(pr, im, m, p, norm_pix_loss=norm,
                                                                                  backend=be)),
                bytes_fwd=s * (pred + img), bytes_bwd=s * (2 * pred + img),
            ))
        out.append(Case(
            name=f"random_masking N={N} L={L} D=768 {tag}",
            make_inputs=lambda dtype=dtype: (torch.randn(N, L, 768, device=device, dtype=dtype, requires_grad=True),
                                             torch.rand(N, L, device=device)),
            fn=lambda be: (lambda x, noise: pk.random_masking(x, 0.75, noise=noise, backend=be)[0]),
            bytes_fwd=2 * s * N * K * 768, bytes_bwd=s * (N * K * 768 + N * L * 768),
        ))
    return out


def copy_bars(rows, device):
    """On a GPU: the pipeline at >= 80% of the copy bandwidth measured in the run."""
    if device.type != "cuda":
        return []
    from pykernels import backends
    default = backends.resolve(None, device, "bench")
    lines = []
    for r in rows:
        if r["case"].startswith("pipeline") and r["provider"] == default and "fwd+bwd_%copy" in r:
            got = r["fwd+bwd_%copy"]
            lines.append(f"{'MET ' if got >= 80 else 'MISS'} {r['case']}: {default} at {got:.0f}% of copy bandwidth (bar 80%)")
    return lines


if __name__ == "__main__":
    dev_arg = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--device=")), None)
    if dev_arg is None and "--device" in sys.argv:
        dev_arg = sys.argv[sys.argv.index("--device") + 1]
    rows = main("mae", cases)
    lines = copy_bars(rows, torch.device(dev_arg or ("cuda" if torch.cuda.is_available() else "cpu")))
    if lines:
        print("\n" + "\n".join(lines))
