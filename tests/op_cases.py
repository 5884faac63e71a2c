"""One call of every public op, for the cross-cutting contract tests (NaN/Inf,
determinism, torch.compile with dynamic shapes, autocast, huge tensors on a GPU).

A case builds its tensors for a dtype, device and size, and runs the public function
with a backend. Sizes: "tiny" (the Triton interpreter), "small", "big" (several
threads / chunks in the CPU kernels) and "other" (a second shape for torch.compile).
"""

from __future__ import annotations

import torch

import pykernels as pk
from pykernels.bench.case import Case, permutations, randn

TABLE = pk.make_schedule(1000)

# rows / features per size: (R, D) for row ops, (N, C, H, W, p) for images, (N, C, S) for samples
ROWS = {"tiny": (4, 16), "small": (8, 32), "other": (6, 24), "big": (2048, 512)}
VOCAB = {"tiny": (4, 10), "small": (8, 40), "other": (6, 30), "big": (512, 4000)}
IMAGES = {
    "tiny": (2, 3, 8, 8, 4),
    "small": (2, 3, 16, 16, 4),
    "other": (3, 2, 16, 24, 4),
    "big": (8, 3, 64, 64, 8),
}
SAMPLES = {"tiny": (3, 2, 4), "small": (4, 2, 8), "other": (5, 3, 6), "big": (4, 4, 96)}


def _pair(dtype, device, size, gen):
    R, D = ROWS[size]
    return {"x1": randn((R, D), dtype, device, gen), "x2": randn((R, D), dtype, device, gen)}


def _pairwise(dtype, device, size, gen):
    R, D = ROWS[size]
    return {"a": randn((R, D), dtype, device, gen), "b": randn((R + 2, D), dtype, device, gen)}


def _features(dtype, device, size, gen):
    R, D = ROWS[size]
    return {
        "student": randn((R, D), dtype, device, gen),
        "teacher": randn((R, D), dtype, device, gen),
    }


def _clip(dtype, device, size, gen):
    R, D = ROWS[size]
    return {
        "image_features": randn((R, D), dtype, device, gen),
        "text_features": randn((R, D), dtype, device, gen),
        "logit_scale": torch.tensor(5.0, device=device),
    }


def _siglip(dtype, device, size, gen):
    return {**_clip(dtype, device, size, gen), "logit_bias": torch.tensor(-2.0, device=device)}


def _tokens(dtype, device, size, gen):
    N, C, H, W, p = IMAGES[size]
    L, D = (H // p) * (W // p), p * p * C
    return {
        "x": randn((N, L, D), dtype, device, gen),
        "noise": torch.rand(N, L, generator=gen).to(device),
    }


def _tokens_gen(dtype, device, size, gen):
    d = _tokens(dtype, device, size, gen)
    del d["noise"]
    d["generator"] = None  # filled per call by the test (a fresh seeded generator)
    return d


def _images(dtype, device, size, gen):
    N, C, H, W, p = IMAGES[size]
    return {"imgs": randn((N, C, H, W), dtype, device, gen), "patch_size": p}


def _patches(dtype, device, size, gen):
    N, C, H, W, p = IMAGES[size]
    return {
        "patches": randn((N, (H // p) * (W // p), p * p * C), dtype, device, gen),
        "patch_size": p,
        "image_size": (H, W),
        "channels": C,
    }


def _gather(dtype, device, size, gen):
    N, C, H, W, p = IMAGES[size]
    L = (H // p) * (W // p)
    return {
        "imgs": randn((N, C, H, W), dtype, device, gen),
        "ids_keep": permutations(N, L, device, gen)[:, : max(1, L // 4)],
        "patch_size": p,
    }


def _unshuffle(dtype, device, size, gen):
    N, C, H, W, p = IMAGES[size]
    L, D = (H // p) * (W // p), p * p * C
    K = max(1, L // 4)
    return {
        "x_visible": randn((N, K, D), dtype, device, gen),
        "mask_token": randn((D,), dtype, device, gen),
        "ids_restore": permutations(N, L, device, gen),
    }


def _mae_loss(dtype, device, size, gen):
    N, C, H, W, p = IMAGES[size]
    L, D = (H // p) * (W // p), p * p * C
    mask = (torch.rand(N, L, generator=gen) < 0.75).to(dtype).to(device)
    mask[:, 0] = 1
    return {
        "pred": randn((N, L, D), dtype, device, gen),
        "imgs": randn((N, C, H, W), dtype, device, gen),
        "mask": mask,
        "patch_size": p,
    }


def _timesteps(N, device, gen, lo=0):
    return torch.randint(max(lo, 0), 1000, (N,), generator=gen).to(device)


def _mix(dtype, device, size, gen):
    N, C, S = SAMPLES[size]
    return {
        "x0": randn((N, C, S, S), dtype, device, gen),
        "noise": randn((N, C, S, S), dtype, device, gen),
        "timesteps": _timesteps(N, device, gen),
        "alphas_cumprod": TABLE.to(device),
    }


def _dloss(dtype, device, size, gen):
    d = _mix(dtype, device, size, gen)
    d["model_output"] = randn(d["x0"].shape, dtype, device, gen)
    return d


def _step(dtype, device, size, gen, with_noise=True):
    N, C, S = SAMPLES[size]
    t = _timesteps(N, device, gen, lo=1)
    d = {
        "model_output": randn((N, C, S, S), dtype, device, gen),
        "sample": randn((N, C, S, S), dtype, device, gen),
        "timesteps": t,
        "prev_timesteps": t - 20,
        "alphas_cumprod": TABLE.to(device),
    }
    if with_noise:
        d["noise"] = randn((N, C, S, S), dtype, device, gen)
    return d


def _step_gen(dtype, device, size, gen):
    d = _step(dtype, device, size, gen, with_noise=False)
    d["generator"] = None
    return d


def _logits(dtype, device, size, gen, with_labels=True):
    R, V = VOCAB[size]
    d = {
        "student": randn((R, V), dtype, device, gen, 3.0),
        "teacher": randn((R, V), dtype, device, gen, 3.0),
    }
    if with_labels:
        labels = torch.randint(0, V, (R,), generator=gen)
        labels[1] = -100
        d["labels"] = labels.to(device)
    return d


def _ce(dtype, device, size, gen):
    d = _logits(dtype, device, size, gen)
    return {"logits": d["student"], "labels": d["labels"]}


def _soft(dtype, device, size, gen):
    R, V = VOCAB[size]
    q = (
        torch.softmax(torch.randn(R, V, generator=gen, dtype=torch.float64), -1)
        .to(dtype)
        .to(device)
    )
    return {"logits": randn((R, V), dtype, device, gen, 3.0), "target_probs": q}


def _schedule(dtype, device, size, gen):
    return {}


CASES = [
    Case(
        "cosine_similarity",
        _pair,
        lambda be, x1, x2: pk.cosine_similarity(x1, x2, backend=be),
        ("x1", "x2"),
    ),
    Case(
        "pairwise_cosine_similarity",
        _pairwise,
        lambda be, a, b: pk.pairwise_cosine_similarity(a, b, backend=be),
        ("a", "b"),
    ),
    Case(
        "feature_distillation_loss[mse]",
        _features,
        lambda be, student, teacher: pk.feature_distillation_loss(student, teacher, backend=be),
        ("student", "teacher"),
    ),
    Case(
        "feature_distillation_loss[cosine]",
        _features,
        lambda be, student, teacher: pk.feature_distillation_loss(
            student, teacher, "cosine", backend=be
        ),
        ("student", "teacher"),
    ),
    Case(
        "info_nce_loss",
        _clip,
        lambda be, image_features, text_features, logit_scale: pk.info_nce_loss(
            image_features, text_features, logit_scale, normalize=True, backend=be
        ),
        ("image_features", "text_features", "logit_scale"),
    ),
    Case(
        "sigmoid_contrastive_loss",
        _siglip,
        lambda be, image_features, text_features, logit_scale, logit_bias: (
            pk.sigmoid_contrastive_loss(
                image_features, text_features, logit_scale, logit_bias, normalize=True, backend=be
            )
        ),
        ("image_features", "text_features", "logit_scale", "logit_bias"),
    ),
    Case(
        "random_masking",
        _tokens,
        lambda be, x, noise: pk.random_masking(x, 0.75, noise=noise, backend=be),
        ("x",),
    ),
    Case(
        "random_masking[generator]",
        _tokens_gen,
        lambda be, x, generator: pk.random_masking(x, 0.75, generator=generator, backend=be),
        ("x",),
        random=True,
    ),
    Case(
        "patchify", _images, lambda be, imgs, patch_size: pk.patchify(imgs, patch_size), ("imgs",)
    ),
    Case(
        "unpatchify",
        _patches,
        lambda be, patches, patch_size, image_size, channels: pk.unpatchify(
            patches, patch_size, image_size, channels
        ),
        ("patches",),
    ),
    Case(
        "gather_patches",
        _gather,
        lambda be, imgs, ids_keep, patch_size: pk.gather_patches(
            imgs, ids_keep, patch_size, backend=be
        ),
        ("imgs",),
    ),
    Case(
        "unshuffle_with_mask_tokens",
        _unshuffle,
        lambda be, x_visible, mask_token, ids_restore: pk.unshuffle_with_mask_tokens(
            x_visible, mask_token, ids_restore, backend=be
        ),
        ("x_visible", "mask_token"),
    ),
    Case(
        "masked_patch_loss",
        _mae_loss,
        lambda be, pred, imgs, mask, patch_size: pk.masked_patch_loss(
            pred, imgs, mask, patch_size, backend=be
        ),
        ("pred",),
    ),
    Case(
        "masked_patch_loss[norm_pix]",
        _mae_loss,
        lambda be, pred, imgs, mask, patch_size: pk.masked_patch_loss(
            pred, imgs, mask, patch_size, norm_pix_loss=True, backend=be
        ),
        ("pred",),
    ),
    Case("make_schedule", _schedule, lambda be: pk.make_schedule(1000, "squaredcos_cap_v2")),
    Case(
        "add_noise",
        _mix,
        lambda be, x0, noise, timesteps, alphas_cumprod: pk.add_noise(
            x0, noise, timesteps, alphas_cumprod, backend=be
        ),
        ("x0", "noise"),
    ),
    Case(
        "get_velocity",
        _mix,
        lambda be, x0, noise, timesteps, alphas_cumprod: pk.get_velocity(
            x0, noise, timesteps, alphas_cumprod, backend=be
        ),
        ("x0", "noise"),
    ),
    Case(
        "diffusion_loss",
        _dloss,
        lambda be, model_output, x0, noise, timesteps, alphas_cumprod: pk.diffusion_loss(
            model_output,
            x0,
            noise,
            timesteps,
            alphas_cumprod,
            prediction_type="v_prediction",
            backend=be,
        ),
        ("model_output", "x0", "noise"),
    ),
    Case(
        "ddpm_step",
        _step,
        lambda be, model_output, sample, timesteps, prev_timesteps, alphas_cumprod, noise: (
            pk.ddpm_step(model_output, timesteps, sample, alphas_cumprod, noise=noise, backend=be)
        ),
        ("model_output", "sample"),
    ),
    Case(
        "ddpm_step[generator]",
        _step_gen,
        lambda be, model_output, sample, timesteps, prev_timesteps, alphas_cumprod, generator: (
            pk.ddpm_step(
                model_output, timesteps, sample, alphas_cumprod, generator=generator, backend=be
            )
        ),
        ("model_output", "sample"),
        random=True,
    ),
    Case(
        "ddim_step",
        _step,
        lambda be, model_output, sample, timesteps, prev_timesteps, alphas_cumprod, noise: (
            pk.ddim_step(
                model_output,
                timesteps,
                prev_timesteps,
                sample,
                alphas_cumprod,
                eta=0.5,
                noise=noise,
                clip_sample=True,
                backend=be,
            )
        ),
        ("model_output", "sample"),
    ),
    Case(
        "ddim_step[generator]",
        _step_gen,
        lambda be, model_output, sample, timesteps, prev_timesteps, alphas_cumprod, generator: (
            pk.ddim_step(
                model_output,
                timesteps,
                prev_timesteps,
                sample,
                alphas_cumprod,
                eta=1.0,
                generator=generator,
                backend=be,
            )
        ),
        ("model_output", "sample"),
        random=True,
    ),
    Case(
        "distillation_loss",
        _logits,
        lambda be, student, teacher, labels: pk.distillation_loss(
            student, teacher, temperature=2.0, labels=labels, hard_weight=0.5, beta=0.0, backend=be
        ),
        ("student", "teacher"),
    ),
    Case(
        "distillation_loss[jsd]",
        lambda *a: _logits(*a, with_labels=False),
        lambda be, student, teacher: pk.distillation_loss(
            student, teacher, temperature=1.0, beta=0.5, backend=be
        ),
        ("student", "teacher"),
    ),
    Case(
        "cross_entropy",
        _ce,
        lambda be, logits, labels: pk.cross_entropy(logits, labels, backend=be),
        ("logits",),
    ),
    Case(
        "soft_target_cross_entropy",
        _soft,
        lambda be, logits, target_probs: pk.soft_target_cross_entropy(
            logits, target_probs, temperature=2.0, backend=be
        ),
        ("logits", "target_probs"),
    ),
]


def _lm_head(dtype, device, size, gen):
    R, V = VOCAB[size]
    H = ROWS[size][1]
    labels = torch.randint(0, V, (R,), generator=gen)
    labels[0] = -100
    return {
        "hidden": randn((R, H), dtype, device, gen),
        "weight": randn((V, H), dtype, device, gen, 0.3),
        "teacher_hidden": randn((R, H + 2), dtype, device, gen),
        "teacher_weight": randn((V, H + 2), dtype, device, gen, 0.3),
        "labels": labels.to(device),
    }


CASES += [
    Case(
        "fused_linear_cross_entropy",
        _lm_head,
        lambda be, hidden, weight, teacher_hidden, teacher_weight, labels: (
            pk.fused_linear_cross_entropy(hidden, weight, labels, chunk_size=3, backend=be)
        ),
        ("hidden", "weight"),
    ),
    Case(
        "fused_linear_distillation_loss",
        _lm_head,
        lambda be, hidden, weight, teacher_hidden, teacher_weight, labels: (
            pk.fused_linear_distillation_loss(
                hidden,
                weight,
                teacher_hidden,
                teacher_weight,
                labels=labels,
                temperature=2.0,
                hard_weight=0.5,
                chunk_size=3,
                backend=be,
            )
        ),
        ("hidden", "weight", "teacher_hidden", "teacher_weight"),
    ),
]

BY_NAME = {c.name: c for c in CASES}
# The ops without a backend argument (pure PyTorch / Python on every device).
NO_BACKEND = {"patchify", "unpatchify", "make_schedule"}


# ----------------------------------------------------------------------------- flow matching
# Noise levels come from integer timesteps t in [0, 1000] as sigma = t / 1000 (both ends
# included), so the NaN / Inf tests poison the samples, not the sigmas: a sigma outside
# [0, 1] is an error (ValueError), not data.
def _flow(dtype, device, size, gen, names=("x0", "noise")):
    N, C, S = SAMPLES[size]
    d = {k: randn((N, C, S, S), dtype, device, gen) for k in names}
    t = torch.randint(0, 1001, (N,), generator=gen)
    t[0], t[-1] = 0, 1000
    d["timesteps"] = t.to(device)
    return d


def _sigmas(timesteps):
    return timesteps.float() / 1000


def _flow_gen(dtype, device, size, gen):
    return {"generator": None}


CASES += [
    Case(
        "flow_interpolate",
        _flow,
        lambda be, x0, noise, timesteps: pk.flow_interpolate(
            x0, noise, _sigmas(timesteps), backend=be
        ),
        ("x0", "noise"),
    ),
    Case(
        "flow_matching_loss",
        lambda *a: _flow(*a, names=("model_output", "x0", "noise")),
        lambda be, model_output, x0, noise, timesteps: pk.flow_matching_loss(
            model_output,
            x0,
            noise,
            _sigmas(timesteps),
            weighting_scheme="cosmap",
            precondition_outputs=True,
            backend=be,
        ),
        ("model_output", "x0", "noise"),
    ),
    Case(
        "flow_match_euler_step",
        lambda *a: _flow(*a, names=("model_output", "sample")),
        lambda be, model_output, sample, timesteps: pk.flow_match_euler_step(
            model_output, sample, _sigmas(timesteps), _sigmas(timesteps) * 0.75, backend=be
        ),
        ("model_output", "sample"),
    ),
    Case(
        "sample_flow_timesteps[generator]",
        _flow_gen,
        lambda be, generator: pk.sample_flow_timesteps(16, shift=3.0, generator=generator),
        random=True,
    ),
]
BY_NAME = {c.name: c for c in CASES}
NO_BACKEND = NO_BACKEND | {"sample_flow_timesteps[generator]"}
