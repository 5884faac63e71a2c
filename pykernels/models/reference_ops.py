"""The ops of the reference models written the way training code writes them today, in
plain PyTorch: F.kl_div / F.cross_entropy for distillation, open_clip's logit matrix for
InfoNCE, the MAE authors' argsort-and-gather, diffusers' scheduler formulas.

Each function has the name and (a subset of) the keyword arguments of the public
pykernels function it stands for, so a model calls ``ops.<name>(...)`` the same way in
both modes. This module does not import pykernels' own references on purpose: the
parity runs then also check that the fused ops mean what the usual PyTorch code means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------- distillation


def cross_entropy(logits: Tensor, labels: Tensor, *, ignore_index: int = -100) -> Tensor:
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=ignore_index)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    soft_weight: float = 1.0,
    hard_weight: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    """soft_weight * T^2 KL(p_T || p_S) + hard_weight * CE(student, labels), averaged over the
    rows whose label is not ignore_index (Hinton et al.; "batchmean")."""
    T = temperature
    s, t = student_logits.flatten(0, -2), teacher_logits.flatten(0, -2)
    kl = F.kl_div(
        F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="none"
    ).sum(-1) * (T * T)
    if labels is None:
        return soft_weight * kl.mean()
    labels = labels.flatten()
    counted = labels != ignore_index
    ce = F.cross_entropy(s, labels, ignore_index=ignore_index, reduction="none")
    per_row = torch.where(counted, soft_weight * kl + hard_weight * ce, 0.0)
    return per_row.sum() / counted.sum()


# ----------------------------------------------------------------------------- cosine


def feature_distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """L_feature = 1/N sum_i |f_i^T - f_i^S|^2 (mean over rows of the squared distance)."""
    return (student - teacher).pow(2).sum(-1).mean()


def pairwise_cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    return F.normalize(a, dim=-1, eps=1e-8) @ F.normalize(b, dim=-1, eps=1e-8).transpose(-1, -2)


# ----------------------------------------------------------------------------- contrastive


def info_nce_loss(
    image_features: Tensor, text_features: Tensor, logit_scale: Tensor, *, normalize: bool = False
) -> Tensor:
    """CLIP's symmetric loss as open_clip computes it: the full [N, N] logit matrix and two
    cross entropies with the diagonal as positives."""
    if normalize:
        image_features = F.normalize(image_features, dim=-1, eps=1e-8)
        text_features = F.normalize(text_features, dim=-1, eps=1e-8)
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def sigmoid_contrastive_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    *,
    normalize: bool = False,
) -> Tensor:
    """SigLIP's loss as open_clip's SigLipLoss computes it: the full [N, N] logit matrix, a
    dense +-1 label matrix, -logsigmoid summed and divided by N."""
    if normalize:
        image_features = F.normalize(image_features, dim=-1, eps=1e-8)
        text_features = F.normalize(text_features, dim=-1, eps=1e-8)
    logits = logit_scale * image_features @ text_features.T + logit_bias
    n = logits.shape[0]
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / n


# ----------------------------------------------------------------------------- MAE


def patchify(imgs: Tensor, p: int) -> Tensor:
    """[N, C, H, W] -> [N, L, p*p*C] in MAE's (p, q, c) order."""
    N, C, H, W = imgs.shape
    x = imgs.reshape(N, C, H // p, p, W // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(N, (H // p) * (W // p), p * p * C)


def random_masking(x: Tensor, mask_ratio: float, *, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample shuffle: keep the patches with the smallest noise."""
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = torch.ones(N, L, device=x.device)
    mask[:, :len_keep] = 0
    return x_visible, torch.gather(mask, 1, ids_restore), ids_restore


def gather_patches(imgs: Tensor, ids_keep: Tensor, patch_size: int) -> Tensor:
    patches = patchify(imgs, patch_size)
    return torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


def unshuffle_with_mask_tokens(
    x_visible: Tensor, mask_token: Tensor, ids_restore: Tensor
) -> Tensor:
    N, L_keep, D = x_visible.shape
    L = ids_restore.shape[1]
    x = torch.cat([x_visible, mask_token.reshape(1, 1, D).expand(N, L - L_keep, D)], dim=1)
    return torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))


def masked_patch_loss(
    pred: Tensor, imgs: Tensor, mask: Tensor, patch_size: int, *, norm_pix_loss: bool = False
) -> Tensor:
    target = patchify(imgs, patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    loss = (pred - target).pow(2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


# ----------------------------------------------------------------------------- diffusion


def make_schedule(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Tensor:
    if beta_schedule != "linear":
        # The models' independent reference covers what the models use; the library's
        # pykernels.make_schedule has every schedule.
        raise ValueError(
            f"reference_ops.make_schedule: argument 'beta_schedule' must be \"linear\", "
            f"got {beta_schedule!r} (use pykernels.make_schedule for the others)"
        )
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def _coef(
    table: Tensor, timesteps: Tensor, like: Tensor, *, below_zero: float | None = None
) -> Tensor:
    """table[t] per sample, shaped to broadcast over `like`; t < 0 reads `below_zero`."""
    c = table[timesteps.clamp(min=0)]
    if below_zero is not None:
        c = torch.where(timesteps >= 0, c, below_zero)
    return c.reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(x0: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    a = _coef(alphas_cumprod, timesteps, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def diffusion_loss(
    model_output: Tensor, x0: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor
) -> Tensor:
    """epsilon prediction: the MSE between the predicted and the true noise."""
    return F.mse_loss(model_output, noise)


def ddim_step(
    model_output: Tensor,
    timesteps: Tensor,
    prev_timesteps: Tensor,
    sample: Tensor,
    alphas_cumprod: Tensor,
    *,
    clip_sample: bool = False,
) -> tuple[Tensor, Tensor]:
    """diffusers' DDIMScheduler.step with eta = 0 and epsilon prediction; with clip_sample the
    predicted x0 is clipped to [-1, 1] while the noise direction keeps the model's output."""
    a_t = _coef(alphas_cumprod, timesteps, sample)
    a_prev = _coef(alphas_cumprod, prev_timesteps, sample, below_zero=1.0)
    x0 = (sample - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
    if clip_sample:
        x0 = x0.clamp(-1.0, 1.0)
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * model_output, x0


def ddpm_step(
    model_output: Tensor,
    timesteps: Tensor,
    sample: Tensor,
    alphas_cumprod: Tensor,
    *,
    noise: Tensor,
) -> tuple[Tensor, Tensor]:
    """diffusers' DDPMScheduler.step over the full schedule (t -> t - 1): epsilon prediction,
    variance "fixed_small", x0 clipped to [-1, 1], no noise added at t = 0."""
    a_t = _coef(alphas_cumprod, timesteps, sample)
    a_prev = _coef(alphas_cumprod, timesteps - 1, sample, below_zero=1.0)
    beta_t, beta_prev = 1 - a_t, 1 - a_prev
    alpha_step = a_t / a_prev
    x0 = ((sample - beta_t.sqrt() * model_output) / a_t.sqrt()).clamp(-1.0, 1.0)
    mean = (a_prev.sqrt() * (1 - alpha_step) / beta_t) * x0 + (
        alpha_step.sqrt() * beta_prev / beta_t
    ) * sample
    std = (beta_prev / beta_t * (1 - alpha_step)).clamp(min=1e-20).sqrt()
    std = torch.where(timesteps.reshape(std.shape) > 0, std, 0.0)
    return mean + std * noise, x0
