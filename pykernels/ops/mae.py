"""MAE family: random masking, patchify / unpatchify, patch gather straight from the
image, decoder unshuffle with mask tokens, masked reconstruction loss.

Public functions validate, pick a backend, and call one op; patchify / unpatchify are a
reshape and a copy, with no op. Each op exists as pykernels::<name> (C++: cpu, cuda) and
pykernels::<name>_triton, with a <name>_backward op; their fakes, autograd and Triton ops
are registered below. The math is in pykernels/reference/mae.py, semantics and edge cases
in docs/mae.md. Below the ops, one row-gather kernel (out[n, t] = src[n, idx[n, t]], or a
fill row) serves random_masking's forward and backward and unshuffle_with_mask_tokens'
forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks as chk
from .. import backends
from .._precision import acc_dtype
from ..reference import mae as ref
from ._registry import op, register_autograd, register_cpp, triton_available


# ----------------------------------------------------------------------------- checks
def _check_ids(fn: str, name: str, ids, ref_name: str, ref_t) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{fn}: argument '{name}' must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype != torch.int64:
        raise TypeError(f"{fn}: argument '{name}' must be an int64 tensor, got {ids.dtype}")
    chk.same_device(fn, (ref_name, ref_t), (name, ids))
    if ids.dim() != 2 or ids.shape[0] != ref_t.shape[0]:
        raise ValueError(
            f"{fn}: argument '{name}' must have shape [{ref_t.shape[0]}, K], got {tuple(ids.shape)}"
        )


def _check_rank(fn: str, name: str, x, rank: int, what) -> None:
    """`what` (the expected shape) may be a callable, called only to build the message:
    formatting symbolic sizes on the good path would specialise them under torch.compile."""
    chk.tensor(fn, name, x)
    if x.dim() != rank:
        what = what() if callable(what) else what
        raise ValueError(f"{fn}: argument '{name}' must have shape {what}, got {tuple(x.shape)}")


def _check_patch_size(fn: str, patch_size) -> None:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise TypeError(
            f"{fn}: argument 'patch_size' must be an int, got {type(patch_size).__name__}"
        )
    if patch_size <= 0:
        raise ValueError(f"{fn}: argument 'patch_size' must be > 0, got {patch_size}")


def _check_divides(fn: str, patch_size: int, H, W) -> None:
    if H % patch_size or W % patch_size:
        raise ValueError(
            f"{fn}: image height and width must be multiples of 'patch_size' "
            f"({patch_size}), got {H} x {W}"
        )


def _check_image(fn: str, imgs, patch_size) -> None:
    _check_rank(fn, "imgs", imgs, 4, "[N, C, H, W]")
    _check_patch_size(fn, patch_size)
    _check_divides(fn, patch_size, *imgs.shape[2:])


def _check_ratio(fn: str, mask_ratio) -> None:
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)):
        raise TypeError(
            f"{fn}: argument 'mask_ratio' must be a number, got {type(mask_ratio).__name__}"
        )
    if not 0 <= mask_ratio < 1:  # also rejects NaN
        raise ValueError(f"{fn}: argument 'mask_ratio' must be in [0, 1), got {mask_ratio}")


def _check_noise(fn: str, noise, x) -> None:
    N, L = x.shape[:2]
    _check_rank(fn, "noise", noise, 2, lambda: f"[{N}, {L}]")
    chk.same_device(fn, ("x", x), ("noise", noise))
    if tuple(noise.shape) != (N, L):
        raise ValueError(
            f"{fn}: argument 'noise' must have shape [{N}, {L}], got {tuple(noise.shape)}"
        )


def _check_unshuffle(fn: str, x_visible, mask_token, ids_restore) -> None:
    """x_visible [N, K, D], mask_token of D elements, ids_restore [N, L], K <= L."""
    _check_rank(fn, "x_visible", x_visible, 3, "[N, K, D]")
    chk.tensor(fn, "mask_token", mask_token)
    chk.same_device(fn, ("x_visible", x_visible), ("mask_token", mask_token))
    D = x_visible.shape[2]
    if mask_token.numel() != D or (mask_token.dim() and mask_token.shape[-1] != D):
        raise ValueError(
            f"{fn}: argument 'mask_token' must have {D} elements (shape [D] or [1, "
            f"1, D]), got shape {tuple(mask_token.shape)}"
        )
    _check_ids(fn, "ids_restore", ids_restore, "x_visible", x_visible)
    if ids_restore.shape[1] < x_visible.shape[1]:
        raise ValueError(
            f"{fn}: argument 'ids_restore' [N, L] must have L >= K = "
            f"{x_visible.shape[1]} (the visible tokens), got "
            f"{tuple(ids_restore.shape)}"
        )


def _check_masked_patch_loss(fn: str, pred, imgs, mask, patch_size) -> None:
    """pred [N, L, p*p*C] of imgs' dtype, imgs [N, C, H, W], mask [N, L] on one device."""
    _check_image(fn, imgs, patch_size)
    _check_rank(fn, "pred", pred, 3, "[N, L, p*p*C]")
    chk.same_dtype(fn, ("pred", pred), ("imgs", imgs))
    chk.same_device(fn, ("pred", pred), ("imgs", imgs))
    N, C, H, W = imgs.shape
    L, P = (H // patch_size) * (W // patch_size), patch_size * patch_size * C
    if tuple(pred.shape) != (N, L, P):
        raise ValueError(
            f"{fn}: argument 'pred' must have shape [{N}, {L}, {P}] for 'imgs' "
            f"{tuple(imgs.shape)} and patch_size {patch_size}, got "
            f"{tuple(pred.shape)}"
        )
    _check_rank(fn, "mask", mask, 2, lambda: f"[{N}, {L}]")
    chk.same_device(fn, ("pred", pred), ("mask", mask))
    if tuple(mask.shape) != (N, L):
        raise ValueError(
            f"{fn}: argument 'mask' must have shape [{N}, {L}], got {tuple(mask.shape)}"
        )


# ----------------------------------------------------------------------------- fakes
def _random_masking_fake(x, mask_ratio, noise):
    N, L, D = x.shape
    return (
        x.new_empty((N, ref.num_keep(L, mask_ratio), D)),
        x.new_empty((N, L)),
        x.new_empty((N, L), dtype=torch.int64),
    )


def _random_masking_backward_fake(grad, ids_restore):
    return grad.new_empty((grad.shape[0], ids_restore.shape[1], grad.shape[2]))


def _unshuffle_fake(x_visible, mask_token, ids_restore):
    return x_visible.new_empty((x_visible.shape[0], ids_restore.shape[1], x_visible.shape[2]))


def _unshuffle_backward_fake(grad, ids_restore, num_keep):
    return grad.new_empty((grad.shape[0], num_keep, grad.shape[2])), grad.new_empty(
        (grad.shape[2],)
    )


def _gather_patches_fake(imgs, ids_keep, patch_size):
    return imgs.new_empty(
        (imgs.shape[0], ids_keep.shape[1], patch_size * patch_size * imgs.shape[1])
    )


def _gather_patches_backward_fake(grad, ids_keep, patch_size, channels, height, width):
    return grad.new_empty((grad.shape[0], channels, height, width))


def _masked_patch_loss_fake(pred, imgs, mask, patch_size, norm_pix_loss):
    return pred.new_empty((), dtype=acc_dtype(pred.dtype))


def _masked_patch_loss_backward_fake(grad, pred, imgs, mask, patch_size, norm_pix_loss):
    return torch.empty_like(pred), torch.empty_like(mask)


for _name, _fakes in {
    "random_masking": (_random_masking_fake, _random_masking_backward_fake),
    "unshuffle_with_mask_tokens": (_unshuffle_fake, _unshuffle_backward_fake),
    "gather_patches": (_gather_patches_fake, _gather_patches_backward_fake),
    "masked_patch_loss": (_masked_patch_loss_fake, _masked_patch_loss_backward_fake),
}.items():
    register_cpp(_name, *_fakes)

# ----------------------------------------------------------------------------- Triton ops
if triton_available():
    from torch.library import triton_op

    from ..triton_kernels import mae as tk

    @triton_op("pykernels::random_masking_triton", mutates_args=())
    def _random_masking_triton(
        x: Tensor, mask_ratio: float, noise: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        fn = "pykernels::random_masking_triton"
        _check_rank(fn, "x", x, 3, "[N, L, D]")
        _check_ratio(fn, mask_ratio)
        _check_noise(fn, noise, x)
        ids_shuffle, ids_restore = ref.shuffle_ids(noise)
        K = ref.num_keep(x.shape[1], mask_ratio)
        mask = (ids_restore >= K).to(x.dtype)
        return tk.gather_rows(x, ids_shuffle[:, :K], None, x.shape[1]), mask, ids_restore

    @triton_op("pykernels::random_masking_backward_triton", mutates_args=())
    def _random_masking_backward_triton(grad: Tensor, ids_restore: Tensor) -> Tensor:
        fn = "pykernels::random_masking_backward_triton"
        _check_rank(fn, "grad", grad, 3, "[N, K, D]")
        _check_ids(fn, "ids_restore", ids_restore, "grad", grad)
        if grad.shape[1] > ids_restore.shape[1]:
            raise ValueError(
                f"{fn}: argument 'grad' has {grad.shape[1]} tokens, more than the "
                f"L = {ids_restore.shape[1]} of 'ids_restore'"
            )
        # The kept tokens' gradient rows back in place, zeros for the removed ones.
        return tk.gather_rows(grad, ids_restore, None, ids_restore.shape[1])

    @triton_op("pykernels::unshuffle_with_mask_tokens_triton", mutates_args=())
    def _unshuffle_triton(x_visible: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
        fn = "pykernels::unshuffle_with_mask_tokens_triton"
        _check_rank(fn, "x_visible", x_visible, 3, "[N, K, D]")
        _check_rank(fn, "mask_token", mask_token, 1, lambda: f"[{x_visible.shape[2]}]")
        chk.same_dtype(fn, ("x_visible", x_visible), ("mask_token", mask_token))
        chk.same_device(fn, ("x_visible", x_visible), ("mask_token", mask_token))
        _check_ids(fn, "ids_restore", ids_restore, "x_visible", x_visible)
        if mask_token.shape[0] != x_visible.shape[2]:  # the kernel reads D elements of it
            raise ValueError(
                f"{fn}: argument 'mask_token' must have {x_visible.shape[2]} "
                f"elements (the D of 'x_visible'), got {mask_token.shape[0]}"
            )
        if x_visible.shape[1] > ids_restore.shape[1]:
            raise ValueError(
                f"{fn}: argument 'x_visible' has {x_visible.shape[1]} tokens, more "
                f"than the L = {ids_restore.shape[1]} of 'ids_restore'"
            )
        return tk.gather_rows(x_visible, ids_restore, mask_token, ids_restore.shape[1])

    @triton_op("pykernels::unshuffle_with_mask_tokens_backward_triton", mutates_args=())
    def _unshuffle_backward_triton(
        grad: Tensor, ids_restore: Tensor, num_keep: int
    ) -> tuple[Tensor, Tensor]:
        fn = "pykernels::unshuffle_with_mask_tokens_backward_triton"
        _check_ids_grad(fn, grad, "[N, L, D]", "ids_restore", ids_restore, 1)
        if not 0 <= num_keep <= grad.shape[1]:
            raise ValueError(
                f"{fn}: argument 'num_keep' must be in [0, {grad.shape[1]}], got {num_keep}"
            )
        inv = tk.invert_ids(ids_restore, num_keep)
        return tk.gather_rows(grad, inv, None, grad.shape[1] + 1), tk.mask_token_grad(
            grad, ids_restore, num_keep
        )

    @triton_op("pykernels::gather_patches_triton", mutates_args=())
    def _gather_patches_triton(imgs: Tensor, ids_keep: Tensor, patch_size: int) -> Tensor:
        fn = "pykernels::gather_patches_triton"
        _check_image(fn, imgs, patch_size)
        _check_ids(fn, "ids_keep", ids_keep, "imgs", imgs)
        return tk.gather_patches(imgs, ids_keep, patch_size)

    @triton_op("pykernels::gather_patches_backward_triton", mutates_args=())
    def _gather_patches_backward_triton(
        grad: Tensor, ids_keep: Tensor, patch_size: int, channels: int, height: int, width: int
    ) -> Tensor:
        fn = "pykernels::gather_patches_backward_triton"
        _check_ids_grad(fn, grad, "[N, K, p*p*C]", "ids_keep", ids_keep)
        if not channels > 0:
            raise ValueError(f"{fn}: argument 'channels' must be > 0, got {channels}")
        _check_count(fn, "height", height)
        _check_count(fn, "width", width)
        _check_patch_size(fn, patch_size)
        _check_divides(fn, patch_size, height, width)
        P = patch_size * patch_size * channels
        # the kernel reads P values per kept patch
        if grad.shape[1] != ids_keep.shape[1] or grad.shape[2] != P:
            raise ValueError(
                f"{fn}: argument 'grad' must have shape [{grad.shape[0]}, "
                f"{ids_keep.shape[1]}, {P}], got {tuple(grad.shape)}"
            )
        inv = tk.invert_ids(ids_keep, (height // patch_size) * (width // patch_size))
        return tk.scatter_patches(grad, inv, patch_size, channels, height, width)

    @triton_op("pykernels::masked_patch_loss_triton", mutates_args=())
    def _masked_patch_loss_triton(
        pred: Tensor, imgs: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool
    ) -> Tensor:
        _check_masked_patch_loss(
            "pykernels::masked_patch_loss_triton", pred, imgs, mask, patch_size
        )
        per_patch = tk.masked_patch_loss_rows(pred, imgs, patch_size, norm_pix_loss)
        m = mask.to(per_patch.dtype)
        return (per_patch * m).sum() / m.sum()

    @triton_op("pykernels::masked_patch_loss_backward_triton", mutates_args=())
    def _masked_patch_loss_backward_triton(
        grad: Tensor, pred: Tensor, imgs: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool
    ) -> tuple[Tensor, Tensor]:
        fn = "pykernels::masked_patch_loss_backward_triton"
        _check_masked_patch_loss(fn, pred, imgs, mask, patch_size)
        chk.grad(fn, grad, (), pred)  # the loss is a scalar
        # w = grad / sum(mask): grad_pred = 2 w mask / P (x - target),
        # grad_mask = w (per_patch - loss)
        m = mask.to(acc_dtype(pred.dtype))
        total = m.sum()
        w = grad.to(m.dtype) / total
        coef = (2.0 / pred.shape[2]) * w * m
        grad_pred, per_patch = tk.masked_patch_loss_rows_backward(
            coef, pred, imgs, patch_size, norm_pix_loss
        )
        loss = (per_patch * m).sum() / total
        return grad_pred, (w * (per_patch - loss)).to(mask.dtype)

    def _check_ids_grad(fn: str, grad, what: str, ids_name: str, ids, ids_cols_dim=None) -> None:
        """The upstream gradient [N, *, D] of a gather / unshuffle and its ids [N, *], as the
        C++ backward ops check them. ids_cols_dim: the dim of grad that ids' second dim
        must match (None: checked by the caller). Id values are not checked here, as in the
        forward Triton ops: the kernels skip ids outside the range (the public functions
        check CPU tensors' ids)."""
        _check_rank(fn, "grad", grad, 3, what)
        _check_ids(fn, ids_name, ids, "grad", grad)
        if ids_cols_dim is not None and ids.shape[1] != grad.shape[ids_cols_dim]:
            raise ValueError(
                f"{fn}: argument '{ids_name}' must have shape [{grad.shape[0]}, "
                f"{grad.shape[ids_cols_dim]}], got {tuple(ids.shape)}"
            )

    def _check_count(fn: str, name: str, value) -> None:
        if not value >= 0:
            raise ValueError(f"{fn}: argument '{name}' must be >= 0, got {value}")


# ----------------------------------------------------------------------------- autograd
def _random_masking_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(output[2])


def _random_masking_backward(ops, ctx, grad, _grad_mask, _grad_ids):
    (ids_restore,) = ctx.saved_tensors
    return ops("random_masking_backward")(grad, ids_restore), None, None


def _unshuffle_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])
    ctx.num_keep = inputs[0].shape[1]


def _unshuffle_backward(ops, ctx, grad):
    (ids_restore,) = ctx.saved_tensors
    grad_x_visible, grad_mask_token = ops("unshuffle_with_mask_tokens_backward")(
        grad, ids_restore, ctx.num_keep
    )
    return grad_x_visible, grad_mask_token, None


def _gather_patches_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.patch_size, ctx.chw = inputs[2], tuple(inputs[0].shape[1:])


def _gather_patches_backward(ops, ctx, grad):
    (ids_keep,) = ctx.saved_tensors
    return ops("gather_patches_backward")(grad, ids_keep, ctx.patch_size, *ctx.chw), None, None


def _masked_patch_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.args = inputs[3:]


def _masked_patch_loss_backward(ops, ctx, grad):
    pred, imgs, mask = ctx.saved_tensors
    grad_pred, grad_mask = ops("masked_patch_loss_backward")(grad, pred, imgs, mask, *ctx.args)
    return grad_pred, None, grad_mask if ctx.needs_input_grad[2] else None, None, None


for _name, _setup, _backward in (
    ("random_masking", _random_masking_setup, _random_masking_backward),
    ("unshuffle_with_mask_tokens", _unshuffle_setup, _unshuffle_backward),
    ("gather_patches", _gather_patches_setup, _gather_patches_backward),
    ("masked_patch_loss", _masked_patch_loss_setup, _masked_patch_loss_backward),
):
    register_autograd(_name, _setup, _backward)


# ----------------------------------------------------------------------------- public API
@chk.autocast_rule("imgs")
def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """[N, C, H, W] -> [N, h*w, p*p*C] in MAE's order: patch l = i*w + j (row-major over
    the h x w grid), element (pi*p + pj)*C + c. A reshape/permute/copy (one memory pass,
    which is all it costs), differentiable, on every device."""
    _check_image("pykernels.patchify", imgs, patch_size)
    return ref.patchify(imgs, patch_size)


@chk.autocast_rule("patches")
def unpatchify(patches: Tensor, patch_size: int, image_size, channels: int = 3) -> Tensor:
    """Inverse of patchify: [N, h*w, p*p*C] -> [N, C, H, W]; image_size is H (square)
    or (H, W)."""
    fn = "pykernels.unpatchify"
    _check_rank(fn, "patches", patches, 3, "[N, L, p*p*C]")
    _check_patch_size(fn, patch_size)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise ValueError(
            f"{fn}: argument 'image_size' must be a positive int or (H, W), got {image_size!r}"
        )
    if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"{fn}: argument 'channels' must be a positive int, got {channels!r}")
    H, W = image_size
    if H % patch_size or W % patch_size:
        raise ValueError(
            f"{fn}: argument 'image_size' must be multiples of 'patch_size' "
            f"({patch_size}), got {H} x {W}"
        )
    want = (H // patch_size * (W // patch_size), patch_size * patch_size * channels)
    if tuple(patches.shape[1:]) != want:
        raise ValueError(
            f"{fn}: argument 'patches' must have shape [N, {want[0]}, {want[1]}] for "
            f"{H} x {W} images, {channels} channel(s), got {tuple(patches.shape)}"
        )
    return ref.unpatchify(patches, patch_size, (H, W), channels)


@chk.autocast_rule("x")
def random_masking(
    x: Tensor,
    mask_ratio: float,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
):
    """MAE's per-sample random masking of tokens x [N, L, D].

    Keeps the L_keep = int(L * (1 - mask_ratio)) tokens with the smallest noise
    (noise [N, L], or torch.rand(N, L, generator=generator) when not given) and returns
    (x_visible [N, L_keep, D], mask [N, L] in x's dtype with 1 = removed,
    ids_restore [N, L] int64). The sort is stable (torch.argsort(stable=True)'s order,
    NaN last); sort and gather are one op. Gradients flow to x."""
    fn = "pykernels.random_masking"
    _check_rank(fn, "x", x, 3, "[N, L, D]")
    _check_ratio(fn, mask_ratio)
    N, L, _ = x.shape
    if noise is not None and generator is not None:
        raise ValueError(f"{fn}: pass 'noise' or 'generator', not both")
    if noise is None:
        noise = torch.rand(N, L, device=x.device, generator=generator)
    else:
        _check_noise(fn, noise, x)
    name = backends.resolve(backend, x.device, fn)
    if name == "reference":
        return ref.random_masking(x, mask_ratio, noise)
    return op("random_masking", name)(x, float(mask_ratio), noise)


@chk.autocast_rule("imgs")
def gather_patches(
    imgs: Tensor, ids_keep: Tensor, patch_size: int, *, backend: str | None = None
) -> Tensor:
    """patchify(imgs)[n, ids_keep[n, k]] for images [N, C, H, W] and ids_keep [N, K]:
    the visible patches [N, K, p*p*C], read straight from the image (the other patches
    are never touched). Gradients flow to imgs."""
    fn = "pykernels.gather_patches"
    _check_image(fn, imgs, patch_size)
    _check_ids(fn, "ids_keep", ids_keep, "imgs", imgs)
    name = backends.resolve(backend, imgs.device, fn)
    if name == "reference":
        return ref.gather_patches(imgs, ids_keep, patch_size)
    if name == "triton":  # CPU tensors raise on every backend (cpu: in C++); CUDA ones poison
        ref.check_ids(
            fn, "ids_keep", ids_keep, (imgs.shape[2] // patch_size) * (imgs.shape[3] // patch_size)
        )
    return op("gather_patches", name)(imgs, ids_keep, patch_size)


@chk.autocast_rule("x_visible")
def unshuffle_with_mask_tokens(
    x_visible: Tensor, mask_token: Tensor, ids_restore: Tensor, *, backend: str | None = None
) -> Tensor:
    """The MAE decoder's cat([x_visible, mask tokens]) + gather by ids_restore in one
    kernel: out[n, l] = x_visible[n, r] if r = ids_restore[n, l] < K else mask_token,
    [N, K, D] -> [N, L, D]. mask_token has D elements (e.g. a [1, 1, D] parameter) and
    is cast to x_visible's dtype. Gradients flow to x_visible and mask_token."""
    fn = "pykernels.unshuffle_with_mask_tokens"
    _check_unshuffle(fn, x_visible, mask_token, ids_restore)
    name = backends.resolve(backend, x_visible.device, fn)
    if name == "reference":
        return ref.unshuffle_with_mask_tokens(x_visible, mask_token, ids_restore)
    if name == "triton":  # as in gather_patches
        ref.check_ids(fn, "ids_restore", ids_restore, ids_restore.shape[1])
    token = mask_token.reshape(x_visible.shape[2]).to(x_visible.dtype)
    return op("unshuffle_with_mask_tokens", name)(x_visible, token, ids_restore)


@chk.autocast_rule("pred", "imgs")
def masked_patch_loss(
    pred: Tensor,
    imgs: Tensor,
    mask: Tensor,
    patch_size: int,
    *,
    norm_pix_loss: bool = False,
    backend: str | None = None,
) -> Tensor:
    """MAE's reconstruction loss: per patch the mean over p*p*C of (pred - target)^2,
    target = patchify(imgs) computed on the fly (with norm_pix_loss: each target patch
    minus its mean over its unbiased std, sqrt(var + 1e-6)); then
    sum(per_patch * mask) / sum(mask), the mean over removed patches. NaN when mask is
    all zero, as MAE's formula gives. pred [N, L, p*p*C], imgs [N, C, H, W] of pred's
    dtype, mask [N, L]. Returns float32 (float64 for float64). Gradient flows to pred
    (and to mask if it requires one); imgs is data and gets none."""
    fn = "pykernels.masked_patch_loss"
    _check_masked_patch_loss(fn, pred, imgs, mask, patch_size)
    if not isinstance(norm_pix_loss, bool):
        raise TypeError(
            f"{fn}: argument 'norm_pix_loss' must be a bool, got {type(norm_pix_loss).__name__}"
        )
    name = backends.resolve(backend, pred.device, fn)
    if name == "reference":
        return ref.masked_patch_loss(pred, imgs, mask, patch_size, norm_pix_loss)
    return op("masked_patch_loss", name)(pred, imgs, mask, patch_size, norm_pix_loss)
