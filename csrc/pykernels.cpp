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
  m.def("_cpu_capability() -> str",
        []() -> std::string { return pykernels::cpu::cpu_capability(); });

  // ---------------------------------------------------------------- cosine
  // cos(x1, x2) over the last dim; each norm clamped to eps on its own, as
  // torch.nn.functional.cosine_similarity does. Output: input dtype, shape [...].
  m.def("cosine_similarity(Tensor x1, Tensor x2, float eps) -> Tensor");
  // Backward ops of this family: grad (any float dtype) is the forward output's gradient;
  // they return the gradient of each input, an empty tensor where output_mask is false.
  m.def(
      "cosine_similarity_backward(Tensor grad, Tensor x1, Tensor x2, float eps, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
  // The per-row feature distillation loss, accumulation dtype, shape [...] (the Python
  // function reduces it): kind "mse": |student - teacher|^2; "cosine": 1 - cos.
  m.def("feature_distillation_loss(Tensor student, Tensor teacher, str kind, float eps) -> Tensor");
  m.def(
      "feature_distillation_loss_backward(Tensor grad, Tensor student, Tensor teacher, str kind, "
      "float eps, bool[2] output_mask) -> (Tensor, Tensor)");
  // a [B, N, D], b [B, M, D] -> [B, N, M] cosine similarities, input dtype.
  m.def("pairwise_cosine_similarity(Tensor a, Tensor b, float eps) -> Tensor");
  m.def(
      "pairwise_cosine_similarity_backward(Tensor grad, Tensor a, Tensor b, float eps, "
      "bool[2] output_mask) -> (Tensor, Tensor)");

  // ---------------------------------------------------------------- distillation
  // Per-row losses of [..., V] logits, float32 (float64 for float64), shape [...], and the
  // gradient of grad_scale * (each row's loss) w.r.t. the inputs whose grad_* flag is true,
  // computed in the same pass over the row (an empty tensor where the flag is false). The
  // autograd backward scales the saved gradients by the upstream per-row gradient over
  // grad_scale (distillation_scale_grad); none is needed where they are equal.
  //   row loss = soft_weight T^2 D_beta(p_T || p_S) + hard_weight CE(student_logits, label),
  //   p = softmax(logits / T); 0 for rows whose label is ignore_index. Labels: int64 [...].
  // A -inf logit is a probability of 0 (a masked vocabulary; docs/distillation.md).
  m.def(
      "distillation_loss(Tensor student_logits, Tensor teacher_logits, Tensor? labels, "
      "float temperature, float soft_weight, float hard_weight, float beta, int ignore_index, "
      "float label_smoothing, bool grad_student_logits, bool grad_teacher_logits, "
      "float grad_scale) -> (Tensor, Tensor, Tensor)");
  // Cross entropy at T = 1 with label smoothing (F.cross_entropy's definition), per row.
  m.def(
      "cross_entropy(Tensor logits, Tensor labels, int ignore_index, float label_smoothing, "
      "bool grad_logits, float grad_scale) -> (Tensor, Tensor)");
  // -sum_j target_probs_j log softmax(logits / T)_j per row.
  m.def(
      "soft_target_cross_entropy(Tensor logits, Tensor target_probs, float temperature, "
      "bool grad_logits, bool grad_target_probs, float grad_scale) -> (Tensor, Tensor, Tensor)");
  // out[..., j] = grad[...] * x[..., j] in x's dtype: the backward of the three ops above.
  m.def("distillation_scale_grad(Tensor grad, Tensor x) -> Tensor");
  // The same, in place on a contiguous x: the backward uses it when the saved gradient is
  // dead afterwards (no retain_graph), so that peak memory is one gradient, not two.
  m.def("distillation_scale_grad_inplace(Tensor grad, Tensor(a!) x) -> ()");

  // ---------------------------------------------------------------- fused_linear
  // A linear head and its loss without the [rows, V] logits: hidden [..., H], weight [V, H],
  // bias [V], logits = hidden weight^T + bias formed a chunk of rows at a time
  // (common/fused_linear.h). The row loss is the distillation family's (cross entropy with
  // label smoothing; for distillation_loss the soft term of the student's logits against
  // the teacher's), in the accumulation dtype. reduce: the loss is grad_scale * (sum of the
  // rows), a 0-dim tensor, and the gradients of that loss w.r.t. the inputs that
  // grad_mask selects are computed in the same pass (empty tensors elsewhere); else the loss
  // is per row [...] and no gradient is formed (the *_backward op recomputes the logits with
  // each row's upstream gradient). chunk_size 0: automatic. Labels out of range: IndexError
  // on CPU, nan rows on CUDA (no host sync to check them).
  //   cross entropy: softcap > 0 caps the logits at softcap tanh(logits / softcap) first;
  //   z_loss adds z_loss lse^2 per row. Returns (loss, lse [...] (0 for ignored rows; [0]
  //   unless return_lse), grads of hidden, weight, bias).
  m.def(
      "fused_linear_cross_entropy(Tensor hidden, Tensor weight, Tensor labels, Tensor? bias, "
      "int ignore_index, float label_smoothing, float softcap, float z_loss, int chunk_size, "
      "bool reduce, float grad_scale, bool return_lse, bool[3] grad_mask) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "fused_linear_cross_entropy_backward(Tensor grad, Tensor hidden, Tensor weight, "
      "Tensor labels, Tensor? bias, int ignore_index, float label_smoothing, float softcap, "
      "float z_loss, int chunk_size, bool[3] grad_mask) -> (Tensor, Tensor, Tensor)");
  // distillation: the teacher's head may be wider (H_t != H_s), V the same. Returns (loss,
  // grads of student hidden, weight, bias, teacher hidden, weight, bias).
  m.def(
      "fused_linear_distillation_loss(Tensor student_hidden, Tensor student_weight, "
      "Tensor teacher_hidden, Tensor teacher_weight, Tensor? labels, Tensor? student_bias, "
      "Tensor? teacher_bias, float temperature, float soft_weight, float hard_weight, "
      "float beta, int ignore_index, float label_smoothing, int chunk_size, bool reduce, "
      "float grad_scale, bool[6] grad_mask) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "fused_linear_distillation_loss_backward(Tensor grad, Tensor student_hidden, "
      "Tensor student_weight, Tensor teacher_hidden, Tensor teacher_weight, Tensor? labels, "
      "Tensor? student_bias, Tensor? teacher_bias, float temperature, float soft_weight, "
      "float hard_weight, float beta, int ignore_index, float label_smoothing, "
      "int chunk_size, bool[6] grad_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // ---------------------------------------------------------------- contrastive
  // Fused InfoNCE / CLIP loss, L = logit_scale * I T^T never stored. image_features
  // [N, D], text_features [M, D], logit_scale a one-element tensor, labels int64 [N]
  // (positive pair (i, labels[i])). Returns, in the accumulation dtype (the lse in float64):
  //   loss    [K, N]: row 0 image->text CE per pair, row 1 (symmetric, K = 2) text->image;
  //   row_lse [N]:    logsumexp_j L[i, j];   col_lse [M] (symmetric) or [0]: logsumexp_i L[i, j].
  // normalize: features are first divided by max(|x|, 1e-12). Labels out of range:
  // IndexError on CPU; NaN losses on CUDA (no host sync to check them).
  m.def(
      "info_nce_loss(Tensor image_features, Tensor text_features, Tensor logit_scale, "
      "Tensor labels, bool symmetric, bool normalize) -> (Tensor, Tensor, Tensor)");
  // grad [K, N] (of loss); returns grads of image_features, text_features, logit_scale.
  m.def(
      "info_nce_loss_backward(Tensor grad, Tensor image_features, Tensor text_features, "
      "Tensor logit_scale, Tensor labels, Tensor row_lse, Tensor col_lse, bool symmetric, "
      "bool normalize) -> (Tensor, Tensor, Tensor)");

  // ---------------------------------------------------------------- sigmoid_contrastive
  // SigLIP's sigmoid loss, L = logit_scale * I T^T + logit_bias never stored.
  // image_features [N, D], text_features [M, D], logit_scale and logit_bias one-element
  // tensors, image_ids int64 [N], text_ids int64 [M]: (i, j) is a positive pair where
  // image_ids[i] == text_ids[j]. Returns the row losses sum_j softplus(-z_ij L_ij) [N] in the
  // accumulation dtype. normalize: features are first divided by max(|x|, 1e-12).
  m.def(
      "sigmoid_contrastive_loss(Tensor image_features, Tensor text_features, "
      "Tensor logit_scale, Tensor logit_bias, Tensor image_ids, Tensor text_ids, "
      "bool normalize) -> Tensor");
  // grad [N] (of the row losses); returns grads of image_features, text_features,
  // logit_scale, logit_bias.
  m.def(
      "sigmoid_contrastive_loss_backward(Tensor grad, Tensor image_features, "
      "Tensor text_features, Tensor logit_scale, Tensor logit_bias, Tensor image_ids, "
      "Tensor text_ids, bool normalize) -> (Tensor, Tensor, Tensor, Tensor)");

  // ---------------------------------------------------------------- mae
  // pykernels/reference/mae.py has the math. Ids are int64; out-of-range or repeated ids
  // raise on CPU; on CUDA (no host sync) an out-of-range id yields a NaN output row and a
  // repeated id a NaN gradient row (docs/mae.md).
  // x [N, L, D], noise [N, L] -> (x_visible [N, K, D]: the K = int(L (1 - mask_ratio)) tokens
  // of smallest noise in ascending order (stable, NaN last), mask [N, L] in x's dtype
  // (1 = removed), ids_restore [N, L]).
  m.def("random_masking(Tensor x, float mask_ratio, Tensor noise) -> (Tensor, Tensor, Tensor)");
  // grad [N, K, D] of x_visible -> grad x [N, L, D] (zeros at the removed tokens).
  m.def("random_masking_backward(Tensor grad, Tensor ids_restore) -> Tensor");
  // out[n, l] = x_visible[n, r] if r = ids_restore[n, l] < K else mask_token: [N, L, D].
  m.def(
      "unshuffle_with_mask_tokens(Tensor x_visible, Tensor mask_token, "
      "Tensor ids_restore) -> Tensor");
  // -> (grad x_visible [N, K, D], grad mask_token [D]: sum over the masked slots).
  m.def(
      "unshuffle_with_mask_tokens_backward(Tensor grad, Tensor ids_restore, "
      "SymInt num_keep) -> (Tensor, Tensor)");
  // imgs [N, C, H, W] -> the patches ids_keep [N, K] as [N, K, p*p*C], (p, q, c) order.
  m.def("gather_patches(Tensor imgs, Tensor ids_keep, int patch_size) -> Tensor");
  // grad [N, K, p*p*C] -> [N, C, H, W] image gradient (zeros outside the kept patches).
  m.def(
      "gather_patches_backward(Tensor grad, Tensor ids_keep, int patch_size, SymInt channels, "
      "SymInt height, SymInt width) -> Tensor");
  // sum(per_patch * mask) / sum(mask), per_patch = mean over p*p*C of (pred - target)^2, the
  // target patchified from imgs on the fly (norm_pix_loss: normalised by its mean and
  // unbiased variance + 1e-6); mask [N, L] of any float dtype. A scalar, accumulation dtype.
  m.def(
      "masked_patch_loss(Tensor pred, Tensor imgs, Tensor mask, int patch_size, "
      "bool norm_pix_loss) -> Tensor");
  // grad: the loss's (a scalar) -> (grad pred, grad mask in mask's dtype).
  m.def(
      "masked_patch_loss_backward(Tensor grad, Tensor pred, Tensor imgs, Tensor mask, "
      "int patch_size, bool norm_pix_loss) -> (Tensor, Tensor)");

  // ---------------------------------------------------------------- diffusion
  // Tensors are [N, ...]: N samples; timesteps [N] int64/int32 index alphas_cumprod [T]
  // (float32, or float64), coefficients in the accumulation dtype.
  // pykernels/reference/diffusion.py has the math, common/diffusion_args.h the coefficients.
  // sqrt(a) x0 + sqrt(1 - a) noise, x0's dtype.
  m.def("add_noise(Tensor x0, Tensor noise, Tensor timesteps, Tensor alphas_cumprod) -> Tensor");
  // grad (any float dtype) -> (grad x0, grad noise) in grad's dtype.
  m.def(
      "add_noise_backward(Tensor grad, Tensor timesteps, Tensor alphas_cumprod) "
      "-> (Tensor, Tensor)");
  // sqrt(a) noise - sqrt(1 - a) x0, x0's dtype.
  m.def("get_velocity(Tensor x0, Tensor noise, Tensor timesteps, Tensor alphas_cumprod) -> Tensor");
  m.def(
      "get_velocity_backward(Tensor grad, Tensor timesteps, Tensor alphas_cumprod) "
      "-> (Tensor, Tensor)");
  // (model_output - target)^2, target noise / x0 / velocity by prediction_type; reduction
  // "mean" or "sum" (a scalar) or "none" (per element); accumulation dtype.
  m.def(
      "diffusion_loss(Tensor model_output, Tensor x0, Tensor noise, Tensor timesteps, "
      "Tensor alphas_cumprod, str prediction_type, str reduction) -> Tensor");
  // grad: the loss's shape -> the gradients output_mask asks for (an empty tensor elsewhere).
  m.def(
      "diffusion_loss_backward(Tensor grad, Tensor model_output, Tensor x0, Tensor noise, "
      "Tensor timesteps, Tensor alphas_cumprod, str prediction_type, str reduction, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // One DDPM ("fixed_small" variance) or DDIM sampler step per sample -> (prev_sample,
  // pred_original_sample), sample's dtype. threshold [N] (accumulation dtype): dynamic
  // thresholding with these per-sample limits; without it clip_sample clamps x0.
  m.def(
      "ddpm_step(Tensor model_output, Tensor timesteps, Tensor sample, Tensor alphas_cumprod, "
      "Tensor prev_timesteps, Tensor? noise, Tensor? threshold, str prediction_type, "
      "bool clip_sample, float clip_sample_range) -> (Tensor, Tensor)");
  // -> (grad model_output, grad sample, grad threshold ([N], or [0] without threshold)).
  m.def(
      "ddpm_step_backward(Tensor grad_prev_sample, Tensor grad_pred_original_sample, "
      "Tensor model_output, Tensor timesteps, Tensor sample, Tensor alphas_cumprod, "
      "Tensor prev_timesteps, Tensor? threshold, str prediction_type, bool clip_sample, "
      "float clip_sample_range) -> (Tensor, Tensor, Tensor)");
  m.def(
      "ddim_step(Tensor model_output, Tensor timesteps, Tensor prev_timesteps, Tensor sample, "
      "Tensor alphas_cumprod, float eta, Tensor? noise, Tensor? threshold, "
      "str prediction_type, bool clip_sample, float clip_sample_range, "
      "bool use_clipped_model_output, float final_alpha_cumprod) -> (Tensor, Tensor)");
  m.def(
      "ddim_step_backward(Tensor grad_prev_sample, Tensor grad_pred_original_sample, "
      "Tensor model_output, Tensor timesteps, Tensor prev_timesteps, Tensor sample, "
      "Tensor alphas_cumprod, float eta, Tensor? threshold, str prediction_type, "
      "bool clip_sample, float clip_sample_range, bool use_clipped_model_output, "
      "float final_alpha_cumprod) -> (Tensor, Tensor, Tensor)");

  // ---------------------------------------------------------------- flow_matching
  // Tensors are [N, ...]: N samples, one noise level per sample in sigmas [N] (any float
  // dtype, used in the accumulation dtype; values in [0, 1], checked on CPU). See
  // pykernels/reference/flow_matching.py for the math.
  // x_t = (1 - sigma) x0 + sigma noise, x0's dtype.
  m.def("flow_interpolate(Tensor x0, Tensor noise, Tensor sigmas) -> Tensor");
  // grad: x_t's shape and dtype -> (grad_x0, grad_noise).
  m.def("flow_interpolate_backward(Tensor grad, Tensor sigmas) -> (Tensor, Tensor)");
  // (per-sample losses c(sigma) mean_i (model_output - (noise - x0))^2 [N] in the
  // accumulation dtype, x_t when return_noisy else an empty tensor); weighting_scheme
  // "none" | "sigma_sqrt" | "cosmap" and precondition_outputs give c(sigma).
  m.def(
      "flow_matching_loss(Tensor model_output, Tensor x0, Tensor noise, Tensor sigmas, "
      "str weighting_scheme, bool precondition_outputs, bool return_noisy) -> (Tensor, Tensor)");
  // grad [N], grad_noisy (x_t's gradient, if x_t was returned) -> gradients of
  // model_output, x0, noise (an empty tensor where output_mask is false).
  m.def(
      "flow_matching_loss_backward(Tensor grad, Tensor? grad_noisy, Tensor model_output, "
      "Tensor x0, Tensor noise, Tensor sigmas, str weighting_scheme, bool precondition_outputs, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // sample + (sigmas_next - sigmas) model_output, computed in the accumulation dtype.
  m.def(
      "flow_match_euler_step(Tensor model_output, Tensor sample, Tensor sigmas, "
      "Tensor sigmas_next) -> Tensor");
  // grad -> grad_model_output = (sigmas_next - sigmas) grad (the sample's gradient is grad).
  m.def("flow_match_euler_step_backward(Tensor grad, Tensor sigmas, Tensor sigmas_next) -> Tensor");
}
