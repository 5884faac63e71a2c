"""Reference of the MAE family: the masked autoencoder's data path as its authors
released it (and as Hugging Face's ViTMAE implements it), written out plainly.

    patchify           [N, C, H, W] -> [N, h*w, p*p*C], patch l = i*w + j,
                       element (pi*p + pj)*C + c
    random_masking     ids_shuffle = argsort(noise) (ascending, stable: small noise is kept),
                       ids_restore = argsort(ids_shuffle), ids_keep = ids_shuffle[:, :L_keep],
                       L_keep = int(L * (1 - mask_ratio)), mask = 1 on removed tokens
    gather_patches     patchify(imgs) gathered by ids_keep
    unshuffle_with_mask_tokens
                       cat([x_visible, mask_token repeated], 1) gathered by ids_restore
    masked_patch_loss  per patch the mean over p*p*C of (pred - target)^2, target optionally
                       normalised by its mean and unbiased variance (+1e-6); averaged over
                       the removed patches: sum(per_patch * mask) / sum(mask) (NaN when no
                       patch is removed, as MAE's code gives)

Ids are checked eagerly on CPU tensors (IndexError out of range, ValueError for
duplicates); on CUDA tensors torch.gather's own device assertions apply, since a check
here would synchronise the host.
"""

from __future__ import annotations

import torch

from .._precision import acc_dtype


def _eager_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def check_ids(fn: str, name: str, ids: torch.Tensor, hi: int, distinct: bool = True) -> None:
    """Raise if an id of `ids` [N, K] is outside [0, hi) or (distinct) repeats in a row."""
    if not _eager_cpu(ids) or ids.numel() == 0:
        return
    lo_v, hi_v = int(ids.min()), int(ids.max())
    if lo_v < 0 or hi_v >= hi:
        bad = lo_v if lo_v < 0 else hi_v
        raise IndexError(f"{fn}: argument '{name}' has id {bad}, outside [0, {hi})")
    if distinct:
        s = ids.sort(dim=1).values
        if bool((s[:, 1:] == s[:, :-1]).any()):
            raise ValueError(
                f"{fn}: argument '{name}' has a duplicate id in a row; ids must be distinct"
            )


def num_keep(L: int, mask_ratio: float) -> int:
    # torch.sym_int (int() for Python numbers) keeps L symbolic under torch.compile
    # (dynamic=True); int() would specialise it: a recompile for every sequence length.
    return torch.sym_int(L * (1 - mask_ratio))


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    N, C, H, W = imgs.shape
    p = patch_size
    h, w = H // p, W // p
    x = imgs.reshape(N, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(N, h * w, p * p * C)


def unpatchify(patches: torch.Tensor, patch_size: int, image_size, channels: int) -> torch.Tensor:
    N = patches.shape[0]
    p, (H, W), C = patch_size, image_size, channels
    h, w = H // p, W // p
    x = patches.reshape(N, h, w, p, p, C)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(N, C, H, W)


def shuffle_ids(noise: torch.Tensor):
    """(ids_shuffle, ids_restore) from noise [N, L]: the tokens in ascending noise (stable
    order, NaN last) and the inverse permutation. The kept tokens are ids_shuffle[:, :L_keep]."""
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    return ids_shuffle, ids_restore


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    N, L, D = x.shape
    L_keep = num_keep(L, mask_ratio)
    ids_shuffle, ids_restore = shuffle_ids(noise)
    ids_keep = ids_shuffle[:, :L_keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = torch.ones([N, L], device=x.device, dtype=x.dtype)
    mask[:, :L_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_visible, mask, ids_restore


def gather_patches(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    """patchify, then keep the rows ids_keep: the unfused two-step."""
    x = patchify(imgs, patch_size)
    check_ids("reference.gather_patches", "ids_keep", ids_keep, x.shape[1])
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[2]))


def unshuffle_with_mask_tokens(
    x_visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor
) -> torch.Tensor:
    N, K, D = x_visible.shape
    L = ids_restore.shape[1]
    check_ids("reference.unshuffle_with_mask_tokens", "ids_restore", ids_restore, L)
    tokens = mask_token.reshape(1, 1, D).expand(N, L - K, D).to(x_visible.dtype)
    full = torch.cat([x_visible, tokens], dim=1)
    return torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))


def patch_loss(
    pred: torch.Tensor, imgs: torch.Tensor, patch_size: int, norm_pix_loss: bool = False
) -> torch.Tensor:
    """masked_patch_loss's per-patch mean squared error [N, L], in the accumulation dtype."""
    acc = acc_dtype(pred.dtype)
    target = patchify(imgs.to(acc), patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    return ((pred.to(acc) - target) ** 2).mean(dim=-1)


def masked_patch_loss(
    pred: torch.Tensor,
    imgs: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    norm_pix_loss: bool = False,
) -> torch.Tensor:
    loss = patch_loss(pred, imgs, patch_size, norm_pix_loss)
    mask = mask.to(loss.dtype)
    return (loss * mask).sum() / mask.sum()
