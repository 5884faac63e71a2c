"""MAE family cases: random_masking, gather_patches, unshuffle_with_mask_tokens,
masked_patch_loss and one MAE step without the transformer (masking, unshuffle, loss),
against the Hugging Face ViTMAE code (argsort of noise + gather, patchify by reshape /
permute, cat + gather with mask tokens, the norm_pix loss) and transformers' own
random_masking and patchify."""

from __future__ import annotations

import types

import torch

import pykernels as pk

from .case import Case, Point, permutations, randn, roofline, speedup, tensor_bytes

MASK_RATIO = 0.75
# (N images, C, S: an S x S image, p: the patch size, D: the token width)
IMAGES = {
    "tiny": (2, 3, 8, 4, 16),
    "small": (2, 3, 16, 4, 32),
    "check": (4, 3, 32, 8, 64),
    "quick": (8, 3, 224, 16, 768),
    "full": (64, 3, 224, 16, 768),
    "gpu_quick": (64, 3, 224, 16, 768),
    "gpu": (256, 3, 224, 16, 768),
}


def _dims(size):
    """(N, C, S, p, D, L tokens, K kept tokens, P = p p C values per patch)."""
    N, C, S, p, D = IMAGES[size]
    L = (S // p) ** 2
    return N, C, S, p, D, L, int(L * (1 - MASK_RATIO)), p * p * C


def _tokens(dtype, device, size, gen):
    N, C, S, p, D, L, K, P = _dims(size)
    return {
        "x": randn((N, L, D), dtype, device, gen),
        "noise": torch.rand(N, L, generator=gen).to(device),
    }


def _gather(dtype, device, size, gen):
    N, C, S, p, D, L, K, P = _dims(size)
    return {
        "imgs": randn((N, C, S, S), dtype, device, gen),
        "ids_keep": permutations(N, L, device, gen)[:, :K],
        "patch_size": p,
    }


def _unshuffle(dtype, device, size, gen):
    N, C, S, p, D, L, K, P = _dims(size)
    return {
        "x_visible": randn((N, K, D), dtype, device, gen),
        "mask_token": randn((D,), dtype, device, gen),
        "ids_restore": permutations(N, L, device, gen),
    }


def _loss(dtype, device, size, gen):
    N, C, S, p, D, L, K, P = _dims(size)
    mask = (permutations(N, L, device, gen) >= K).to(dtype)
    return {
        "pred": randn((N, L, P), dtype, device, gen),
        "imgs": randn((N, C, S, S), dtype, device, gen),
        "mask": mask,
        "patch_size": p,
    }


def _step(dtype, device, size, gen):
    d = _tokens(dtype, device, size, gen)
    N, C, S, p, D, L, K, P = _dims(size)
    d.update(
        mask_token=randn((D,), dtype, device, gen),
        pred=randn((N, L, P), dtype, device, gen),
        imgs=randn((N, C, S, S), dtype, device, gen),
        grad_tokens=randn((N, L, D), dtype, device, gen),
        patch_size=p,
    )
    return d


# ----------------------------------------------------------------------------- HF-style code
def hf_random_masking(x, noise):
    """ViTMAEEmbeddings.random_masking: keep the tokens of smallest noise."""
    N, L, D = x.shape
    K = int(L * (1 - MASK_RATIO))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x_visible = torch.gather(x, 1, ids_shuffle[:, :K].unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones(N, L, device=x.device)
    mask[:, :K] = 0
    return x_visible, torch.gather(mask, 1, ids_restore), ids_restore


def hf_patchify(imgs, patch_size):
    N, C, H, W = imgs.shape
    h, w = H // patch_size, W // patch_size
    x = imgs.reshape(N, C, h, patch_size, w, patch_size).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(N, h * w, patch_size * patch_size * C)


def hf_unshuffle(x_visible, mask_token, ids_restore):
    """The ViTMAE decoder: append mask tokens, then gather by ids_restore."""
    N, K, D = x_visible.shape
    tokens = mask_token.reshape(1, 1, D).repeat(N, ids_restore.shape[1] - K, 1)
    full = torch.cat([x_visible, tokens], dim=1)
    return torch.gather(full, 1, ids_restore.unsqueeze(-1).repeat(1, 1, D))


def hf_loss(pred, target, mask):
    """ViTMAEForPreTraining's loss with norm_pix_loss, on patchified targets."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


class _Upstream(torch.autograd.Function):
    """Returns the loss; in backward, hands the decoder's input tokens a fixed gradient (what
    a decoder would send back), so one scalar drives the whole step without an extra
    reduction that every provider would pay for."""

    @staticmethod
    def forward(ctx, loss, tokens, grad_tokens):
        ctx.save_for_backward(grad_tokens)
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        (grad_tokens,) = ctx.saved_tensors
        return grad, grad_tokens, None


def _pk_step(be, x, noise, mask_token, pred, imgs, grad_tokens, patch_size):
    x_visible, mask, ids_restore = pk.random_masking(x, MASK_RATIO, noise=noise, backend=be)
    tokens = pk.unshuffle_with_mask_tokens(x_visible, mask_token, ids_restore, backend=be)
    loss = pk.masked_patch_loss(pred, imgs, mask, patch_size, norm_pix_loss=True, backend=be)
    return _Upstream.apply(loss, tokens, grad_tokens)


def _step_with(masking, patchify):
    def step(x, noise, mask_token, pred, imgs, grad_tokens, patch_size):
        x_visible, mask, ids_restore = masking(x, noise)
        tokens = hf_unshuffle(x_visible, mask_token, ids_restore)
        loss = hf_loss(pred, patchify(imgs, patch_size), mask.to(pred.dtype))
        return _Upstream.apply(loss, tokens, grad_tokens)

    return step


def _transformers(device):
    """(random_masking, patchify) of transformers' ViTMAE, or None."""
    try:
        from transformers.models.vit_mae import modeling_vit_mae as hf
    except ImportError:
        return None

    def masking(x, noise):
        owner = types.SimpleNamespace(config=types.SimpleNamespace(mask_ratio=MASK_RATIO))
        return hf.ViTMAEEmbeddings.random_masking(owner, x, noise)

    def patchify(imgs, patch_size):
        config = types.SimpleNamespace(patch_size=patch_size, num_channels=imgs.shape[1])
        return hf.ViTMAEForPreTraining.patchify(types.SimpleNamespace(config=config), imgs)

    return masking, patchify


def _peer_step(device):
    fns = _transformers(device)
    return None if fns is None else _step_with(*fns)


def _peer_masking(device):
    fns = _transformers(device)
    return None if fns is None else fns[0]


def _hf_gather(imgs, ids_keep, patch_size):
    patches = hf_patchify(imgs, patch_size)
    return torch.gather(patches, 1, ids_keep.unsqueeze(-1).repeat(1, 1, patches.shape[2]))


def _hf_masked_loss(pred, imgs, mask, patch_size):
    return hf_loss(pred, hf_patchify(imgs, patch_size), mask)


def _pk_masking(be, x, noise):
    return pk.random_masking(x, MASK_RATIO, noise=noise, backend=be)


def _pk_gather(be, imgs, ids_keep, patch_size):
    return pk.gather_patches(imgs, ids_keep, patch_size, backend=be)


def _pk_unshuffle(be, x_visible, mask_token, ids_restore):
    return pk.unshuffle_with_mask_tokens(x_visible, mask_token, ids_restore, backend=be)


def _pk_loss(be, pred, imgs, mask, patch_size):
    return pk.masked_patch_loss(pred, imgs, mask, patch_size, norm_pix_loss=True, backend=be)


# ----------------------------------------------------------------------------- bytes
def _masking_bytes(d):
    # gather K of L token rows (read, write); backward: read K rows, write all L
    kept, x = tensor_bytes(d["x"]) * (1 - MASK_RATIO), tensor_bytes(d["x"])
    return 3 * kept + x


def _gather_bytes(d):
    # gather the kept pixels (read, write); backward: read them, write the whole image
    imgs = tensor_bytes(d["imgs"])
    kept = imgs * d["ids_keep"].shape[1] / (d["imgs"].shape[2] // d["patch_size"]) ** 2
    return 3 * kept + imgs


def _unshuffle_bytes(d):
    # read K rows, write L; backward: read L, write K
    full = tensor_bytes(d["x_visible"]) * d["ids_restore"].shape[1] / d["x_visible"].shape[1]
    return 2 * (tensor_bytes(d["x_visible"]) + full)


def _loss_bytes(d):
    return 2 * tensor_bytes(d["pred"]) + tensor_bytes(d["imgs"])  # read both, write pred's grad


def _step_bytes(d):
    kept, x = tensor_bytes(d["x"]) * (1 - MASK_RATIO), tensor_bytes(d["x"])
    return _masking_bytes(d) + 2 * (kept + x) + _loss_bytes(d)


CASES = [
    Case(
        "random_masking",
        _tokens,
        _pk_masking,
        grads=("x",),
        eager=hf_random_masking,
        peers={"transformers": _peer_masking},
        bytes=_masking_bytes,
    ),
    Case(
        "gather_patches",
        _gather,
        _pk_gather,
        grads=("imgs",),
        eager=_hf_gather,
        bytes=_gather_bytes,
    ),
    Case(
        "unshuffle_with_mask_tokens",
        _unshuffle,
        _pk_unshuffle,
        grads=("x_visible", "mask_token"),
        eager=hf_unshuffle,
        bytes=_unshuffle_bytes,
    ),
    Case(
        "masked_patch_loss[norm_pix]",
        _loss,
        _pk_loss,
        grads=("pred",),
        eager=_hf_masked_loss,
        bytes=_loss_bytes,
    ),
    Case(
        "mae_step",
        _step,
        _pk_step,
        grads=("x", "mask_token", "pred"),
        eager=_step_with(hf_random_masking, hf_patchify),
        peers={"transformers": _peer_step},
        bytes=_step_bytes,
    ),
]

BF16 = torch.bfloat16
BENCH = [
    Point("mae_step"),
    Point("mae_step", "full", "full", targets=(speedup("compile", 2.0),)),
    Point("random_masking", "full", "full"),
    Point("gather_patches", "full", "full"),
    Point("unshuffle_with_mask_tokens", "full", "full"),
    Point("masked_patch_loss[norm_pix]", "full", "full"),
    Point("mae_step", "quick", "gpu_quick", BF16, "cuda"),
    Point("mae_step", "full", "gpu", torch.float32, "cuda", (speedup("eager", 3.0), roofline(0.8))),
    Point("mae_step", "full", "gpu", BF16, "cuda"),
]
