// Every op's schema, in one place. The kernels live in cpu/<family>.cpp and
// cuda/<family>.cu, which register implementations with TORCH_LIBRARY_IMPL; fake
// (meta) implementations and autograd are registered from Python in
// pykernels/ops/<family>.py. Triton ops are defined there too, with
// torch.library.triton_op, under the same names with a _triton suffix.
//
// Conventions shared by every family:
//   - row-wise ops take [..., D] tensors and reduce over the last dimension; the
//     Python API moves dims and broadcasts before calling them;
//   - a backward op takes the upstream gradient first and returns one gradient per
//     differentiable input, in the forward's argument order;
//   - losses and per-row statistics come back in the accumulation dtype (float32, or
//     float64 for float64 inputs); element-wise outputs keep the input dtype.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "common/cpu_capability.h"

// An empty Python module: importing pykernels._C loads this library, whose static
// initialisers register the ops below with the dispatcher. PyMODINIT_FUNC exports the
// symbol despite -fvisibility=hidden.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace {
bool cuda_built() {
#ifdef PYKERNELS_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

TORCH_LIBRARY(pykernels, m) {
  m.def("_cuda_built() -> bool", &cuda_built);
  // "avx2" or "default": which build of the CPU kernels runs (common/cpu_capability.h).
  m.def("_cpu_capability() -> str", []() -> std::string { return pykernels::cpu::cpu_capability(); });

  // ---------------------------------------------------------------- cosine
  // cos(x1, x2) over the last dim; each norm clamped to eps on its own, as
  // torch.nn.functional.cosine_similarity does. Output: input dtype, shape [...].
  m.def("cosine_similarity(Tensor x1, Tensor x2, float eps) -> Tensor");
  // grad: [...] in the accumulation dtype.
  m.def("cosine_similarity_backward(Tensor grad, Tensor x1, Tensor x2, float eps) -> (Tensor, Tensor)");
  // Per-row distance of feature vectors, accumulation dtype, shape [...]:
  //   kind "mse": ||student - teacher||^2;  kind "cosine": 1 - cos(student, teacher).
  m.def("feature_distance(Tensor student, Tensor teacher, str kind, float eps) -> Tensor");
  m.def("feature_distance_backward(Tensor grad, Tensor student, Tensor teacher, str kind, float eps) -> (Tensor, Tensor)");
  // a [B, N, D], b [B, M, D] -> [B, N, M] cosine similarities, input dtype.
  m.def("pairwise_cosine_similarity(Tensor a, Tensor b, float eps) -> Tensor");
  m.def("pairwise_cosine_similarity_backward(Tensor grad, Tensor a, Tensor b, float eps) -> (Tensor, Tensor)");

  // ---------------------------------------------------------------- distillation
  // Per-row losses of [..., V] logits, float32 (float64 for float64), shape [...], and the
  // gradient of grad_scale * (each row's loss) w.r.t. the inputs whose grad_* flag is true,
  // computed in the same pass over the row (an empty tensor where the flag is false). The
  // autograd backward scales the saved gradients by the upstream per-row gradient over
  // grad_scale (distillation_scale_grad); none is needed where they are equal.
  //   row loss = soft_weight T^2 D_beta(p_T || p_S) + hard_weight CE(student_logits, label),
  //   p = softmax(logits / T); 0 for rows whose label is ignore_index. Labels: int64 [...].
  // A -inf logit is a probability of 0 (a masked vocabulary; docs/distillation.md).
  m.def("distillation_loss(Tensor student_logits, Tensor teacher_logits, Tensor? labels, "
        "float temperature, float soft_weight, float hard_weight, float beta, int ignore_index, "
        "float label_smoothing, bool grad_student_logits, bool grad_teacher_logits, "
        "float grad_scale) -> (Tensor, Tensor, Tensor)");
  // Cross entropy at T = 1 with label smoothing (F.cross_entropy's definition), per row.
  m.def("cross_entropy(Tensor logits, Tensor labels, int ignore_index, float label_smoothing, "
        "bool grad_logits, float grad_scale) -> (Tensor, Tensor)");
  // -sum_j target_probs_j log softmax(logits / T)_j per row.
  m.def("soft_target_cross_entropy(Tensor logits, Tensor target_probs, float temperature, "
        "bool grad_logits, bool grad_target_probs, float grad_scale) -> (Tensor, Tensor, Tensor)");
  // out[..., j] = grad[...] * x[..., j] in x's dtype: the backward of the three ops above.
  m.def("distillation_scale_grad(Tensor grad, Tensor x) -> Tensor");
  // The same, in place on a contiguous x: the backward uses it when the saved gradient is
  // dead afterwards (no retain_graph), so that peak memory is one gradient, not two.
  m.def("distillation_scale_grad_inplace(Tensor grad, Tensor(a!) x) -> ()");

  // ---------------------------------------------------------------- contrastive
  // Fused InfoNCE / CLIP loss, L = logit_scale * I T^T never stored. image_features
  // [N, D], text_features [M, D], logit_scale a one-element tensor, labels int64 [N]
  // (positive pair (i, labels[i])). Returns, in the accumulation dtype:
  //   loss    [K, N]: row 0 image->text CE per pair, row 1 (symmetric, K = 2) text->image;
  //   row_lse [N]:    logsumexp_j L[i, j];   col_lse [M] (symmetric) or [0]: logsumexp_i L[i, j].
  // normalize: features are first divided by max(|x|, 1e-12). Labels out of range:
  // IndexError on CPU; NaN losses on CUDA (no host sync to check them).
  m.def("info_nce_loss(Tensor image_features, Tensor text_features, Tensor logit_scale, Tensor labels, "
        "bool symmetric, bool normalize) -> (Tensor, Tensor, Tensor)");
  // grad [K, N] (of loss); returns grads of image_features, text_features, logit_scale.
  m.def("info_nce_loss_backward(Tensor grad, Tensor image_features, Tensor text_features, Tensor logit_scale, "
        "Tensor labels, Tensor row_lse, Tensor col_lse, bool symmetric, bool normalize) -> (Tensor, Tensor, Tensor)");

  // ---------------------------------------------------------------- mae
  // Tokens x [N, L, D] and ids [N, K] (int64). Out-of-range or repeated ids raise on
  // CPU; on CUDA (no host sync) an out-of-range id yields a NaN output row and a
  // repeated id a NaN gradient row. See docs/mae.md.
  // x [N, L, D] -> x[n, ids_keep[n, k]]: [N, K, D] (random_masking's fused gather).
  m.def("gather_tokens(Tensor x, Tensor ids_keep) -> Tensor");
  // grad [N, K, D] -> [N, L, D]: grad rows put back at ids_keep, zeros elsewhere.
  m.def("gather_tokens_backward(Tensor grad, Tensor ids_keep, SymInt num_tokens) -> Tensor");
  // out[n, l] = x_visible[n, r] if r = ids_restore[n, l] < K else mask_token: [N, L, D].
  m.def("unshuffle_with_mask_tokens(Tensor x_visible, Tensor mask_token, Tensor ids_restore) -> Tensor");
  // -> (grad x_visible [N, K, D], grad mask_token [D]: sum over the masked slots).
  m.def("unshuffle_with_mask_tokens_backward(Tensor grad, Tensor ids_restore, SymInt num_keep) -> (Tensor, Tensor)");
  // imgs [N, C, H, W] -> the patches ids_keep [N, K] as [N, K, p*p*C], (p, q, c) order.
  m.def("gather_patches(Tensor imgs, Tensor ids_keep, int patch_size) -> Tensor");
  // grad [N, K, p*p*C] -> [N, C, H, W] image gradient (zeros outside the kept patches).
  m.def("gather_patches_backward(Tensor grad, Tensor ids_keep, int patch_size, SymInt channels, SymInt height, SymInt width) -> Tensor");
  // Per-patch mean of (pred - target)^2, target patchified from imgs on the fly and
  // (norm_pix_loss) normalised by its mean and unbiased variance + 1e-6: [N, L], accumulation dtype.
  m.def("patch_mse(Tensor pred, Tensor imgs, int patch_size, bool norm_pix_loss) -> Tensor");
  // grad [N, L] (accumulation dtype) -> grad pred [N, L, p*p*C].
  m.def("patch_mse_backward(Tensor grad, Tensor pred, Tensor imgs, int patch_size, bool norm_pix_loss) -> Tensor");

  // ---------------------------------------------------------------- diffusion
  // Tensors are [N, ...]: N samples; timesteps [N] int64/int32 index alphas_cumprod [T]
  // (float32, or float64), coefficients in the accumulation dtype. See
  // pykernels/reference/diffusion.py for the math and common/diffusion_args.h for kinds.
  // out = cx(t) x + cy(t) y; kind 0 add_noise (x0, noise), 1 velocity (x0, noise),
  // 2/3/4 predicted x0 (sample, model_output) for epsilon/sample/v_prediction. Kinds 0-1
  // keep the input dtype, kinds 2-4 return the accumulation dtype.
  m.def("diffusion_mix(Tensor x, Tensor y, Tensor timesteps, Tensor alphas_cumprod, int kind) -> Tensor");
  // grad: out's shape and dtype; returns (grad_x, grad_y) in x's dtype.
  m.def("diffusion_mix_backward(Tensor grad, Tensor x, Tensor timesteps, Tensor alphas_cumprod, int kind) -> (Tensor, Tensor)");
  // (model_output - target)^2, target by prediction 0 epsilon, 1 sample, 2 v_prediction;
  // elementwise: per element, else per-sample sums [N]; accumulation dtype.
  m.def("diffusion_loss(Tensor model_output, Tensor x0, Tensor noise, Tensor timesteps, Tensor alphas_cumprod, int prediction, bool elementwise) -> Tensor");
  m.def("diffusion_loss_backward(Tensor grad, Tensor model_output, Tensor x0, Tensor noise, Tensor timesteps, Tensor alphas_cumprod, int prediction, bool elementwise, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // One DDPM (kind 0, "fixed_small" variance) or DDIM (kind 1) sampler step per sample ->
  // (prev_sample, pred_original_sample), sample dtype. threshold [N] (accumulation dtype):
  // dynamic thresholding with these per-sample limits, else clip_sample clamps x0.
  m.def("diffusion_step(Tensor model_output, Tensor sample, Tensor? noise, Tensor timesteps, Tensor prev_timesteps, Tensor alphas_cumprod, Tensor? threshold, int kind, int prediction, bool clip_sample, float clip_sample_range, float eta, bool use_clipped_model_output, float final_alpha_cumprod) -> (Tensor, Tensor)");
  // -> (grad_model_output, grad_sample, grad_threshold ([N], or [0] without threshold)).
  m.def("diffusion_step_backward(Tensor grad_prev_sample, Tensor grad_pred_original_sample, Tensor model_output, Tensor sample, Tensor timesteps, Tensor prev_timesteps, Tensor alphas_cumprod, Tensor? threshold, int kind, int prediction, bool clip_sample, float clip_sample_range, float eta, bool use_clipped_model_output, float final_alpha_cumprod) -> (Tensor, Tensor, Tensor)");
}
