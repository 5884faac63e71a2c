"""nn.Module drop-ins for the functional ops (torch.nn / open_clip names).

Each module stores its settings and calls one functional op with them at every call, so a
setting changed after construction applies; the modules with the same behaviour as the op
derive from _OpModule, the open_clip drop-ins (ClipLoss, SigLipLoss) keep open_clip's
constructor and per-rank logic."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from . import _checks
from . import distributed as _distributed
from .distributed import sigmoid_contrastive as _siglip_distributed
from .ops import contrastive as _contrastive
from .ops import cosine as _cosine
from .ops import diffusion as _diffusion
from .ops import distillation as _distillation
from .ops import flow_matching as _flow_matching
from .ops import fused_linear as _fused_linear
from .ops import mae as _mae
from .ops import sigmoid_contrastive as _sigmoid_contrastive


class _OpModule(nn.Module):
    """A module whose forward calls one functional op with its stored settings: each keyword
    given to __init__ becomes an attribute of that name and goes to the op as that keyword
    (with backend), read at every call, so a setting changed after construction applies.
    extra_repr shows the settings named in _shown (strings quoted)."""

    _shown: tuple[str, ...] = ()

    def __init__(self, backend: str | None, **settings):
        super().__init__()
        self._settings = tuple(settings)
        for name, value in settings.items():
            setattr(self, name, value)
        self.backend = backend

    def _kwargs(self) -> dict:
        return {name: getattr(self, name) for name in (*self._settings, "backend")}

    def extra_repr(self) -> str:
        shown = ((name, getattr(self, name)) for name in self._shown)
        return ", ".join(f"{n}={v!r}" if isinstance(v, str) else f"{n}={v}" for n, v in shown)


# ----------------------------------------------------------------------------- cosine
class CosineSimilarity(_OpModule):
    """Like torch.nn.CosineSimilarity, but dim defaults to -1 (features last)."""

    _shown = ("dim", "eps")

    def __init__(self, dim: int = -1, eps: float = 1e-8, *, backend: str | None = None):
        super().__init__(backend, dim=dim, eps=eps)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return _cosine.cosine_similarity(x1, x2, **self._kwargs())


class PairwiseCosineSimilarity(_OpModule):
    """[..., N, D], [..., M, D] (or None: a with itself) -> [..., N, M]."""

    _shown = ("eps",)

    def __init__(self, eps: float = 1e-8, *, backend: str | None = None):
        super().__init__(backend, eps=eps)

    def forward(self, a: Tensor, b: Tensor | None = None) -> Tensor:
        return _cosine.pairwise_cosine_similarity(a, b, **self._kwargs())


class FeatureDistillationLoss(_OpModule):
    """Feature distillation: kind="mse" is the mean over rows of |student - teacher|^2,
    kind="cosine" is 1 - cos(student, teacher), reduced over rows by reduction."""

    _shown = ("kind", "reduction")

    def __init__(
        self,
        kind: str = "mse",
        reduction: str = "mean",
        eps: float = 1e-8,
        *,
        backend: str | None = None,
    ):
        super().__init__(backend, kind=kind, reduction=reduction, eps=eps)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return _cosine.feature_distillation_loss(student, teacher, **self._kwargs())


# ----------------------------------------------------------------------------- mae
class RandomMasking(_OpModule):
    """MAE's per-sample random masking: x [N, L, D] -> (x_visible, mask, ids_restore)."""

    _shown = ("mask_ratio",)

    def __init__(self, mask_ratio: float = 0.75, *, backend: str | None = None):
        super().__init__(backend, mask_ratio=mask_ratio)

    def forward(self, x: Tensor, noise: Tensor | None = None, generator=None):
        return _mae.random_masking(x, noise=noise, generator=generator, **self._kwargs())


class MaskTokenUnshuffle(_OpModule):
    """The MAE decoder's learned mask token ([1, 1, D], normal(std=0.02) as MAE
    initialises it) and the unshuffle that puts it in every removed slot."""

    def __init__(self, dim: int, *, backend: str | None = None):
        super().__init__(backend)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, x_visible: Tensor, ids_restore: Tensor) -> Tensor:
        return _mae.unshuffle_with_mask_tokens(
            x_visible, self.mask_token, ids_restore, **self._kwargs()
        )

    def extra_repr(self) -> str:
        return f"dim={self.mask_token.shape[-1]}"


class MaskedPatchLoss(_OpModule):
    """MAE's reconstruction loss over the removed patches: (pred, imgs, mask) -> scalar."""

    _shown = ("patch_size", "norm_pix_loss")

    def __init__(self, patch_size: int, norm_pix_loss: bool = False, *, backend: str | None = None):
        super().__init__(backend, patch_size=patch_size, norm_pix_loss=norm_pix_loss)

    def forward(self, pred: Tensor, imgs: Tensor, mask: Tensor) -> Tensor:
        return _mae.masked_patch_loss(pred, imgs, mask, **self._kwargs())


# ----------------------------------------------------------------------------- diffusion
class DiffusionLoss(_OpModule):
    """The diffusion training loss with its schedule as a buffer (moves with .to()):
    forward(model_output, x0, noise, timesteps) = mean((model_output - target)^2), target
    = noise / x0 / velocity for prediction_type "epsilon" / "sample" / "v_prediction"."""

    _shown = ("prediction_type", "reduction")

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        reduction: str = "mean",
        *,
        backend: str | None = None,
    ):
        super().__init__(backend, prediction_type=prediction_type, reduction=reduction)
        self.register_buffer(
            "alphas_cumprod",
            _diffusion.make_schedule(num_train_timesteps, beta_schedule, beta_start, beta_end),
            persistent=False,
        )

    def forward(self, model_output: Tensor, x0: Tensor, noise: Tensor, timesteps) -> Tensor:
        return _diffusion.diffusion_loss(
            model_output, x0, noise, timesteps, self.alphas_cumprod, **self._kwargs()
        )


# ----------------------------------------------------------------------------- distillation
class DistillationLoss(_OpModule):
    """soft_weight * T^2 * D_beta(p_T || p_S) + hard_weight * CE(student, labels).

    Defaults are the soft (Hinton KL) loss alone; pass labels and hard_weight for the
    hard term. forward(student_logits, teacher_logits, labels=None)."""

    _shown = ("temperature", "soft_weight", "hard_weight", "beta", "reduction")

    def __init__(
        self,
        temperature: float = 1.0,
        *,
        soft_weight: float = 1.0,
        hard_weight: float = 0.0,
        beta: float = 0.0,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "batchmean",
        backend: str | None = None,
    ):
        super().__init__(
            backend,
            temperature=temperature,
            soft_weight=soft_weight,
            hard_weight=hard_weight,
            beta=beta,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        return _distillation.distillation_loss(
            student_logits, teacher_logits, labels=labels, **self._kwargs()
        )


class CrossEntropyLoss(_OpModule):
    """torch.nn.CrossEntropyLoss for [..., V] logits (classes last) and int64 labels."""

    _shown = ("ignore_index", "reduction", "label_smoothing")

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        backend: str | None = None,
    ):
        super().__init__(
            backend, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
        )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return _distillation.cross_entropy(logits, labels, **self._kwargs())


class SoftTargetCrossEntropy(_OpModule):
    """Cross entropy against soft labels: -sum_j q_j log softmax(logits / T)_j per row."""

    _shown = ("temperature", "reduction")

    def __init__(
        self, temperature: float = 1.0, reduction: str = "batchmean", *, backend: str | None = None
    ):
        super().__init__(backend, temperature=temperature, reduction=reduction)

    def forward(self, logits: Tensor, target_probs: Tensor) -> Tensor:
        return _distillation.soft_target_cross_entropy(logits, target_probs, **self._kwargs())


# ----------------------------------------------------------------------------- fused_linear
class FusedLinearCrossEntropyLoss(_OpModule):
    """Cross entropy of a linear head, hidden @ weight.T + bias, without its [rows, V]
    logits (pykernels.fused_linear_cross_entropy). forward(hidden, weight, labels, bias=None,
    num_items_in_batch=None); with return_lse=True it returns (loss, lse)."""

    _shown = ("ignore_index", "reduction", "label_smoothing", "softcap", "z_loss")

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        softcap: float | None = None,
        z_loss: float = 0.0,
        chunk_size: int | None = None,
        return_lse: bool = False,
        backend: str | None = None,
    ):
        super().__init__(
            backend,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            softcap=softcap,
            z_loss=z_loss,
            chunk_size=chunk_size,
            return_lse=return_lse,
        )

    def forward(
        self,
        hidden: Tensor,
        weight: Tensor,
        labels: Tensor,
        bias: Tensor | None = None,
        num_items_in_batch=None,
    ):
        return _fused_linear.fused_linear_cross_entropy(
            hidden,
            weight,
            labels,
            bias=bias,
            num_items_in_batch=num_items_in_batch,
            **self._kwargs(),
        )


class FusedLinearDistillationLoss(_OpModule):
    """pykernels.distillation_loss of two linear heads' logits without forming them
    (pykernels.fused_linear_distillation_loss). forward(student_hidden, student_weight,
    teacher_hidden, teacher_weight, labels=None, student_bias=None, teacher_bias=None,
    num_items_in_batch=None)."""

    _shown = ("temperature", "beta", "soft_weight", "hard_weight", "reduction")

    def __init__(
        self,
        temperature: float = 1.0,
        *,
        beta: float = 0.0,
        soft_weight: float = 1.0,
        hard_weight: float = 0.0,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "batchmean",
        chunk_size: int | None = None,
        backend: str | None = None,
    ):
        super().__init__(
            backend,
            temperature=temperature,
            beta=beta,
            soft_weight=soft_weight,
            hard_weight=hard_weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
            chunk_size=chunk_size,
        )

    def forward(
        self,
        student_hidden: Tensor,
        student_weight: Tensor,
        teacher_hidden: Tensor,
        teacher_weight: Tensor,
        labels: Tensor | None = None,
        student_bias: Tensor | None = None,
        teacher_bias: Tensor | None = None,
        num_items_in_batch=None,
    ) -> Tensor:
        return _fused_linear.fused_linear_distillation_loss(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            labels=labels,
            student_bias=student_bias,
            teacher_bias=teacher_bias,
            num_items_in_batch=num_items_in_batch,
            **self._kwargs(),
        )


# ----------------------------------------------------------------------------- contrastive
class ClipLoss(nn.Module):
    """Drop-in for open_clip's ClipLoss (same constructor, forward and numbers in every
    mode), computed with the fused pykernels.info_nce_loss.

    world_size > 1 gathers the features from every rank of the default process group
    (``rank``/``world_size`` as open_clip takes them). local_loss=False: every rank
    computes the global loss, the gathered features being constants except its own
    slot. local_loss=True: each rank scores its n images against all texts and its n
    texts against all images, with the positives at rank * n + arange(n), each
    direction averaged over its n rows. gather_with_grad=True: the gathered features
    carry gradients back to their owners, summed over ranks (torch.distributed.nn.all_gather).
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        *,
        backend: str | None = None,
    ):
        super().__init__()
        self.local_loss, self.gather_with_grad, self.cache_labels = (
            local_loss,
            gather_with_grad,
            cache_labels,
        )
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.prev_num_logits = 0  # open_clip's label cache
        self.labels: dict = {}

    def get_ground_truth(self, device, num_logits: int) -> Tensor:
        """The positives' column indices for this rank's rows (cached per device when cache_labels)."""
        if self.prev_num_logits == num_logits and device in self.labels:
            return self.labels[device]
        labels = torch.arange(num_logits, device=device, dtype=torch.long)
        if self.world_size > 1 and self.local_loss:
            labels = labels + num_logits * self.rank
        if self.cache_labels:
            self.labels[device], self.prev_num_logits = labels, num_logits
        return labels

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
        output_dict: bool = False,
    ):
        loss_fn = functools.partial(
            _contrastive.info_nce_loss, logit_bias=logit_bias, backend=self.backend
        )
        if self.world_size > 1:
            all_image, all_text = _distributed.gather_features(
                image_features,
                text_features,
                self.local_loss,
                self.gather_with_grad,
                self.rank,
                self.world_size,
            )
            if self.local_loss:
                labels = self.get_ground_truth(image_features.device, image_features.shape[0])
                loss = (
                    loss_fn(image_features, all_text, logit_scale, labels=labels, symmetric=False)
                    + loss_fn(text_features, all_image, logit_scale, labels=labels, symmetric=False)
                ) / 2
            else:
                loss = loss_fn(all_image, all_text, logit_scale)
        else:
            loss = loss_fn(image_features, text_features, logit_scale)
        return {"contrastive_loss": loss} if output_dict else loss

    def extra_repr(self) -> str:
        return (
            f"local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}, "
            f"rank={self.rank}, world_size={self.world_size}"
        )


class InfoNCELoss(_OpModule):
    """The global-batch InfoNCE loss for data-parallel training: each rank passes its
    local [n, D] image and text features; the loss and every gradient (features,
    logit_scale, logit_bias) equal what one process computes on the whole batch.
    mode="gather" all-gathers the features; mode="ring" passes blocks between ring
    neighbours so no rank holds the whole batch. See pykernels.distributed."""

    _shown = ("mode", "symmetric", "normalize", "reduction")

    def __init__(
        self,
        process_group=None,
        mode: str = "gather",
        *,
        symmetric: bool = True,
        normalize: bool = False,
        reduction: str = "mean",
        check_sizes: bool = True,
        chunk_size: int = 1024,
        backend: str | None = None,
    ):
        _checks.choice("pykernels.nn.InfoNCELoss", "mode", mode, _distributed.MODES)
        _checks.choice("pykernels.nn.InfoNCELoss", "reduction", reduction, _distributed.REDUCTIONS)
        super().__init__(
            backend,
            process_group=process_group,
            mode=mode,
            symmetric=symmetric,
            normalize=normalize,
            reduction=reduction,
            check_sizes=check_sizes,
            chunk_size=chunk_size,
        )

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
    ) -> Tensor:
        return _distributed.info_nce_loss(
            image_features, text_features, logit_scale, logit_bias=logit_bias, **self._kwargs()
        )


# ----------------------------------------------------------------------------- sigmoid_contrastive
class SigLipLoss(nn.Module):
    """Drop-in for open_clip's SigLipLoss (same constructor, forward and numbers per rank),
    computed with the fused pykernels.sigmoid_contrastive_loss: never an [n, n] logit or
    label matrix. world_size > 1: rank r's images against every rank's texts of the
    default process group, positives on its own diagonal block, divided by its n;
    dist_impl "bidir" / "shift" run the ring mode of
    pykernels.distributed.sigmoid_contrastive_loss, "gather" / "reduce" the gather mode
    (the same values and gradients). cache_labels is accepted for compatibility: there are
    no label matrices to cache."""

    DIST_IMPLS = ("bidir", "shift", "reduce", "gather")

    def __init__(
        self,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_impl: str | None = None,
        *,
        backend: str | None = None,
    ):
        super().__init__()
        self.dist_impl = dist_impl or "bidir"
        _checks.choice("pykernels.nn.SigLipLoss", "dist_impl", self.dist_impl, self.DIST_IMPLS)
        self.cache_labels, self.rank, self.world_size = cache_labels, rank, world_size
        self.backend = backend

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
        output_dict: bool = False,
    ):
        bias = 0.0 if logit_bias is None else logit_bias
        if self.world_size > 1:
            mode = "ring" if self.dist_impl in ("bidir", "shift") else "gather"
            loss = _siglip_distributed.sigmoid_contrastive_loss(
                image_features, text_features, logit_scale, bias, mode=mode, backend=self.backend
            )
        else:
            loss = _sigmoid_contrastive.sigmoid_contrastive_loss(
                image_features, text_features, logit_scale, bias, backend=self.backend
            )
        return {"contrastive_loss": loss} if output_dict else loss

    def extra_repr(self) -> str:
        return f"rank={self.rank}, world_size={self.world_size}, dist_impl={self.dist_impl!r}"


# ----------------------------------------------------------------------------- flow_matching
class FlowMatchingLoss(_OpModule):
    """The SD3 / Flux rectified-flow training loss (pykernels.flow_matching_loss):
    forward(model_output, x0, noise, sigmas) = the mean over the batch of
    c(sigma) mean((model_output - (noise - x0))^2) per sample, with c from the SD3 loss
    weighting ("none", "sigma_sqrt", "cosmap") and precondition_outputs."""

    _shown = ("weighting_scheme", "precondition_outputs", "reduction")

    def __init__(
        self,
        weighting_scheme: str = "none",
        precondition_outputs: bool = False,
        reduction: str = "mean",
        *,
        backend: str | None = None,
    ):
        super().__init__(
            backend,
            weighting_scheme=weighting_scheme,
            precondition_outputs=precondition_outputs,
            reduction=reduction,
        )

    def forward(self, model_output: Tensor, x0: Tensor, noise: Tensor, sigmas) -> Tensor:
        return _flow_matching.flow_matching_loss(model_output, x0, noise, sigmas, **self._kwargs())
