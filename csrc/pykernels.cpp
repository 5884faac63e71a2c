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
  // (issue 3: schemas go here)

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
  // (issue 5: schemas go here)

  // ---------------------------------------------------------------- diffusion
  // (issue 6: schemas go here)
}
