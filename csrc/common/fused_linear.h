// The fused linear + loss ops (fused_linear_cross_entropy, fused_linear_distillation_loss),
// shared by the CPU (cpu/fused_linear.cpp) and CUDA (cuda/fused_linear.cu) ops: argument
// checks, and the chunk loop, written once in ATen calls (at::mm runs the CPU BLAS or
// cuBLAS) around the distillation family's row kernel, which each device passes in.
//
// The loop never forms the [rows, V] logits. Per chunk of rows:
//   logits  L = h W^T + b                      (the teacher's too, for distillation)
//   softcap L = c tanh(L / c)                  (cross entropy only; its derivative 1 - tanh^2
//                                              is applied to the gradient afterwards)
//   rows    the row kernel writes each row's loss and G = d(grad_scale * loss) / dL, on the
//           CPU in place of L (it writes a row's gradient after the row's last read)
//   z-loss  + z lse^2, G += 2 z grad_scale lse softmax(L)
//   weight  G *= row_weight per row (the backward of reduction "none": the upstream
//           gradient of each row)
//   grads   dh = G W, dW += G^T h, db += sum_rows G (dW, db accumulated in fp32)
// Counted rows only: on the CPU the rows of ignore_index are gathered out first, so they
// cost no matmul; on a GPU that gather would need the count on the host (a synchronisation),
// so every row goes through and the kernel gives ignored rows loss 0 and gradient 0.
#pragma once
#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include <torch/library.h>

#include "common/checks.h"
#include "common/distillation_args.h"

namespace pykernels {

// The inputs of one side (student or teacher): hidden [N, H], weight [V, H], bias [V] or
// undefined; the names its errors use.
struct LinearHead {
  at::Tensor hidden, weight, bias;
  const char* hidden_arg = "hidden";
  const char* weight_arg = "weight";
  const char* bias_arg = "bias";
};

// hidden [..., H] float, weight [V, H] with V >= 1 and the same H, dtype and device, bias [V].
inline void check_head(const char* op, const LinearHead& h, at::DeviceType dev) {
  check_float(op, h.hidden_arg, h.hidden);
  check_device_type(op, h.hidden_arg, h.hidden, dev);
  check_min_dim(op, h.hidden_arg, h.hidden, 1);
  check_float(op, h.weight_arg, h.weight);
  check_same_device(op, h.weight_arg, h.weight, h.hidden_arg, h.hidden);
  check_same_dtype(op, h.weight_arg, h.weight, h.hidden_arg, h.hidden);
  check_dim(op, h.weight_arg, h.weight, 2);
  TORCH_CHECK_VALUE(h.weight.size(0) >= 1, op, ": argument '", h.weight_arg,
                    "' must have at least one row (the vocabulary V), got shape ",
                    h.weight.sizes());
  TORCH_CHECK_VALUE(h.weight.size(1) == h.hidden.size(-1), op, ": argument '", h.weight_arg,
                    "' must have shape [V, ", h.hidden.size(-1), "] (the last dim of '",
                    h.hidden_arg, "'), got ", h.weight.sizes());
  if (!h.bias.defined()) return;
  check_float(op, h.bias_arg, h.bias);
  check_same_device(op, h.bias_arg, h.bias, h.hidden_arg, h.hidden);
  check_same_dtype(op, h.bias_arg, h.bias, h.hidden_arg, h.hidden);
  TORCH_CHECK_VALUE(h.bias.dim() == 1 && h.bias.size(0) == h.weight.size(0), op, ": argument '",
                    h.bias_arg, "' must have shape [", h.weight.size(0), "], got ", h.bias.sizes());
}

// labels [...] int64 of hidden [..., H].
inline void check_head_labels(const char* op, const at::Tensor& labels, const LinearHead& h) {
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, op, ": argument 'labels' must be int64, got ",
                   labels.scalar_type());
  check_same_device(op, "labels", labels, h.hidden_arg, h.hidden);
  const auto rows = h.hidden.sizes().slice(0, h.hidden.dim() - 1);
  TORCH_CHECK_VALUE(labels.sizes() == rows, op, ": argument 'labels' must have shape ", rows,
                    " (the hidden states' shape without the last dim), got ", labels.sizes());
}

// What one call of the loop computes, beside the row kernel's settings.
struct FusedLinearSettings {
  DistillationSettings rows;
  double softcap = 0.0, z_loss = 0.0;
  int64_t chunk_size = 0;       // 0: chosen from rows, V and the device (auto_chunk)
  bool compact = false;         // gather out ignored rows first (CPU)
  bool in_place = false;        // the row kernel may write G over L (CPU)
  bool want_lse = false;        // the per-row logsumexp
  std::array<bool, 6> grads{};  // student hidden, weight, bias; teacher hidden, weight, bias
};

// The row kernel of a device: loss rows and gradients into c's buffers.
using RowKernel = void (*)(const DistillationSettings&, const DistillationTensors&);

// Rows per chunk when chunk_size is 0: as many as fit `budget` bytes per [chunk, V] buffer
// (64 MiB on the CPU, which keeps the BLAS efficient and the chunk in the last-level
// cache's reach; 1 GiB on a GPU), at least 1 and at most the rows. triton_kernels/
// fused_linear.py (auto_chunk) takes the same budgets.
inline int64_t auto_chunk(int64_t rows, int64_t V, int64_t elem_size, bool on_cpu) {
  const int64_t budget = on_cpu ? (int64_t(64) << 20) : (int64_t(1) << 30);
  return std::max<int64_t>(1, std::min(rows, budget / std::max<int64_t>(1, V * elem_size)));
}

// The outputs of the loop: per-row loss and logsumexp, and the gradients the mask asks for
// (empty tensors otherwise), each side's in its inputs' dtype.
struct FusedLinearOutputs {
  at::Tensor loss, lse;
  std::array<at::Tensor, 6> grads;
};

namespace fused_linear_detail {

inline at::Tensor chunk_logits(const LinearHead& h, const at::Tensor& hc) {
  return h.bias.defined() ? at::addmm(h.bias, hc, h.weight.t()) : at::mm(hc, h.weight.t());
}

// The rows of one chunk: positions idx in the counted rows when ignored rows are gathered
// out, else the slice [begin, begin + m).
struct ChunkRows {
  at::Tensor idx;
  int64_t begin = 0, m = 0;
  at::Tensor of(const at::Tensor& x) const {
    return idx.defined() ? x.index_select(0, idx) : x.narrow(0, begin, m);
  }
  void put(at::Tensor& dst, const at::Tensor& src) const {
    if (idx.defined()) {
      dst.index_copy_(0, idx, src);
    } else {
      dst.narrow(0, begin, m).copy_(src);
    }
  }
};

// The gradients of one side from its chunk gradient G [m, V]: dh into the chunk's rows of
// grads[0], dW and db accumulated (fp32).
inline void add_head_grads(const LinearHead& h, const at::Tensor& hc, const at::Tensor& G,
                           const ChunkRows& r, at::Tensor* grads, const bool* want) {
  if (want[0]) r.put(grads[0], at::mm(G, h.weight));
  if (want[1]) {
    if (grads[1].scalar_type() == G.scalar_type()) {
      grads[1].addmm_(G.t(), hc);
    } else {
      grads[1].add_(at::mm(G.t(), hc));
    }
  }
  if (want[2]) grads[2].add_(G.sum({0}, false, grads[2].scalar_type()));
}

// Zeroed outputs: loss and lse [N] in the accumulation dtype, each wanted gradient at its
// input's shape (hidden's in its dtype; weight's and bias's in fp32 while they accumulate,
// cast back by grads_to_input_dtype).
inline FusedLinearOutputs zero_outputs(const FusedLinearSettings& st, const LinearHead* heads[2],
                                       int64_t N, const at::TensorOptions& acc_opts) {
  FusedLinearOutputs out;
  out.loss = at::zeros({N}, acc_opts);
  out.lse = st.want_lse ? at::zeros({N}, acc_opts) : at::empty({0}, acc_opts);
  for (int k = 0; k < 6; ++k) {
    out.grads[k] = at::empty({0}, heads[0]->hidden.options());
    if (!st.grads[k]) continue;
    const LinearHead& h = *heads[k / 3];
    const at::Tensor& like = k % 3 == 0 ? h.hidden : k % 3 == 1 ? h.weight : h.bias;
    const auto dtype = k % 3 == 0 ? like.scalar_type() : at::toOpMathType(like.scalar_type());
    out.grads[k] = at::zeros(like.sizes(), like.options().dtype(dtype));
  }
  return out;
}

inline void grads_to_input_dtype(const FusedLinearSettings& st, const LinearHead* heads[2],
                                 FusedLinearOutputs& out) {
  for (int k = 0; k < 6; ++k) {
    if (st.grads[k] && k % 3 != 0) {
      const LinearHead& h = *heads[k / 3];
      out.grads[k] = out.grads[k].to((k % 3 == 1 ? h.weight : h.bias).scalar_type());
    }
  }
}

// lse = logsumexp(L) per row in the accumulation dtype; 0 for ignored rows that were not
// gathered out (they get no logsumexp and no z-loss).
inline at::Tensor chunk_lse(const at::Tensor& L, at::ScalarType acc, const ChunkRows& r,
                            const at::Tensor& labels, int64_t ignore_index) {
  auto lse = at::logsumexp(L.to(acc), {1});
  if (!r.idx.defined() && labels.defined()) lse.masked_fill_(r.of(labels) == ignore_index, 0);
  return lse;
}

// The loss terms and gradient factors applied after the row kernel: the z-loss
// (+ z lse^2, G += 2 z grad_scale lse softmax(L)), the softcap's derivative 1 - tanh^2 and
// the per-row weights of reduction "none"'s backward.
inline void finish_chunk(const FusedLinearSettings& st, const DistillationSettings& rs,
                         const ChunkRows& r, const at::Tensor& row_weight, const at::Tensor& lse,
                         const at::Tensor& probs, const at::Tensor& tanh_c,
                         DistillationTensors& c) {
  at::Tensor &G = c.grad_logits, &Gt = c.grad_teacher;
  if (st.z_loss != 0) {
    c.loss.add_(lse * lse * st.z_loss);
    if (rs.grad_logits) G.add_((lse * (2.0 * st.z_loss * rs.grad_scale)).unsqueeze(1) * probs);
  }
  if (tanh_c.defined() && rs.grad_logits) G.mul_(1 - tanh_c * tanh_c);
  if (row_weight.defined()) {
    const auto w = r.of(row_weight).unsqueeze(1);
    if (rs.grad_logits) G.mul_(w);
    if (rs.grad_teacher) Gt.mul_(w);
  }
}

}  // namespace fused_linear_detail

// The chunk loop (header comment). student: hidden [N, H]; teacher: undefined hidden for
// cross entropy; labels [N] or undefined; row_weight [N] (acc dtype) or undefined.
inline FusedLinearOutputs fused_linear_loop(const FusedLinearSettings& st, const LinearHead& s,
                                            const LinearHead& t, const at::Tensor& labels,
                                            const at::Tensor& row_weight, RowKernel kernel) {
  using namespace fused_linear_detail;
  const bool kd = t.hidden.defined();
  const int64_t N = s.hidden.size(0), V = s.weight.size(0);
  const auto acc = at::toOpMathType(s.hidden.scalar_type());
  const auto acc_opts = s.hidden.options().dtype(acc);
  const LinearHead* heads[2] = {&s, &t};
  FusedLinearOutputs out = zero_outputs(st, heads, N, acc_opts);
  at::Tensor index;  // the counted rows, when they are gathered
  if (st.compact && labels.defined()) {
    index = (labels != st.rows.ignore_index).nonzero().squeeze(1);
  }
  const int64_t M = index.defined() ? index.size(0) : N;
  DistillationSettings rs = st.rows;
  rs.grad_logits = st.grads[0] || st.grads[1] || st.grads[2];
  rs.grad_teacher = kd && (st.grads[3] || st.grads[4] || st.grads[5]);
  const int64_t chunk = st.chunk_size > 0
                            ? std::min(st.chunk_size, std::max<int64_t>(M, 1))
                            : auto_chunk(M, V, s.hidden.element_size(), s.hidden.is_cpu());
  for (int64_t begin = 0; begin < M; begin += chunk) {
    ChunkRows r;
    r.begin = begin;
    r.m = std::min(chunk, M - begin);
    if (index.defined()) r.idx = index.narrow(0, begin, r.m);
    // 1. logits of both sides, softcapped (cross entropy)
    const at::Tensor hs = r.of(s.hidden), ht = kd ? r.of(t.hidden) : at::Tensor();
    at::Tensor L = chunk_logits(s, hs), tanh_c;
    if (st.softcap > 0) {
      tanh_c = at::tanh(L / st.softcap);
      L = tanh_c * st.softcap;
    }
    at::Tensor lse, probs;
    if (st.want_lse || st.z_loss != 0) lse = chunk_lse(L, acc, r, labels, rs.ignore_index);
    if (st.z_loss != 0 && rs.grad_logits) probs = at::softmax(L.to(acc), 1);
    // 2. the row kernel: loss rows and G = d(grad_scale loss) / dL (over L when in_place)
    DistillationTensors c;
    c.logits = L;
    c.teacher = kd ? chunk_logits(t, ht) : at::Tensor();
    c.labels = labels.defined() ? r.of(labels) : at::Tensor();
    c.loss = at::empty({r.m}, acc_opts);
    c.grad_logits = !rs.grad_logits ? at::empty({0}, L.options())
                    : st.in_place   ? L
                                    : at::empty_like(L);
    c.grad_teacher = !rs.grad_teacher ? at::empty({0}, L.options())
                     : st.in_place    ? c.teacher
                                      : at::empty_like(c.teacher);
    c.V = V;
    c.rows = r.m;
    kernel(rs, c);
    // 3. z-loss, softcap derivative, row weights; then the rows and the matmul gradients
    finish_chunk(st, rs, r, row_weight, lse, probs, tanh_c, c);
    r.put(out.loss, c.loss);
    if (st.want_lse) r.put(out.lse, lse);
    if (rs.grad_logits) add_head_grads(s, hs, c.grad_logits, r, &out.grads[0], &st.grads[0]);
    if (rs.grad_teacher) add_head_grads(t, ht, c.grad_teacher, r, &out.grads[3], &st.grads[3]);
  }
  grads_to_input_dtype(st, heads, out);
  return out;
}

// ---------------------------------------------------------------- the ops
// How a device runs the loop: its type, row kernel, and whether ignored rows are gathered
// out and the gradient written over the logits.
struct FusedLinearDevice {
  at::DeviceType type;
  RowKernel kernel;
  bool compact, in_place;
};

// Per-row values [N] -> the op's loss: the rows reshaped to hidden's leading dims, or, with
// reduce, grad_scale * their sum (a 0-dim tensor).
inline at::Tensor fused_linear_loss(const at::Tensor& rows, const at::Tensor& hidden, bool reduce,
                                    double grad_scale) {
  if (reduce) return rows.sum() * grad_scale;
  return rows.reshape(hidden.sizes().slice(0, hidden.dim() - 1));
}

inline LinearHead flat(LinearHead h) {
  h.hidden = h.hidden.reshape({-1, h.hidden.size(-1)}).contiguous();
  h.weight = h.weight.contiguous();
  return h;
}

inline FusedLinearSettings cross_entropy_loop_settings(
    const FusedLinearDevice& dev, const char* op, const LinearHead& s, const at::Tensor& labels,
    int64_t ignore_index, double label_smoothing, double softcap, double z_loss, int64_t chunk_size,
    double grad_scale, std::array<bool, 3> grad_mask) {
  check_head(op, s, dev.type);
  check_head_labels(op, labels, s);
  check_unit_interval(op, "label_smoothing", label_smoothing);
  check_finite(op, "softcap", softcap);
  TORCH_CHECK_VALUE(softcap >= 0, op, ": argument 'softcap' must be >= 0 (0: none), got ", softcap);
  check_finite(op, "z_loss", z_loss);
  TORCH_CHECK_VALUE(chunk_size >= 0, op,
                    ": argument 'chunk_size' must be >= 0 (0: automatic), got ", chunk_size);
  FusedLinearSettings st;
  st.rows.op = op;
  st.rows.logits_arg = "hidden";
  st.rows.hard_weight = 1.0;
  st.rows.label_smoothing = label_smoothing;
  st.rows.ignore_index = ignore_index;
  st.rows.hard = true;
  check_grad_scale(st.rows, grad_scale);
  st.softcap = softcap;
  st.z_loss = z_loss;
  st.chunk_size = chunk_size;
  st.compact = dev.compact;
  st.in_place = dev.in_place;
  for (size_t k = 0; k < 3; ++k) st.grads[k] = grad_mask[k];
  st.grads[2] = st.grads[2] && s.bias.defined();
  return st;
}

inline void check_label_range(const FusedLinearDevice& dev, const FusedLinearSettings& st,
                              const at::Tensor& labels, int64_t V) {
  if (dev.type == at::kCPU) cpu::check_label_values(st.rows, labels, V);
}

// fused_linear_cross_entropy: (loss, lse [...], grad hidden, grad weight, grad bias).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fused_linear_cross_entropy_op(const FusedLinearDevice& dev, const at::Tensor& hidden,
                              const at::Tensor& weight, const at::Tensor& labels,
                              const c10::optional<at::Tensor>& bias, int64_t ignore_index,
                              double label_smoothing, double softcap, double z_loss,
                              int64_t chunk_size, bool reduce, double grad_scale, bool return_lse,
                              std::array<bool, 3> grad_mask) {
  const char* op = "pykernels::fused_linear_cross_entropy";
  const LinearHead s{hidden, weight, bias.has_value() ? *bias : at::Tensor()};
  FusedLinearSettings st =
      cross_entropy_loop_settings(dev, op, s, labels, ignore_index, label_smoothing, softcap,
                                  z_loss, chunk_size, grad_scale, grad_mask);
  const at::Tensor y = labels.reshape({-1}).contiguous();
  check_label_range(dev, st, y, weight.size(0));
  st.want_lse = return_lse;
  if (!reduce) st.grads = {};
  auto o = fused_linear_loop(st, flat(s), LinearHead{}, y, at::Tensor(), dev.kernel);
  const auto lse = return_lse ? o.lse.reshape(labels.sizes()) : o.lse;
  return {fused_linear_loss(o.loss, hidden, reduce, grad_scale), lse,
          st.grads[0] ? o.grads[0].reshape(hidden.sizes()) : o.grads[0], o.grads[1], o.grads[2]};
}

// Its backward for reduction "none": grad [...] is each row's upstream gradient.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_cross_entropy_backward_op(
    const FusedLinearDevice& dev, const at::Tensor& grad, const at::Tensor& hidden,
    const at::Tensor& weight, const at::Tensor& labels, const c10::optional<at::Tensor>& bias,
    int64_t ignore_index, double label_smoothing, double softcap, double z_loss, int64_t chunk_size,
    std::array<bool, 3> grad_mask) {
  const char* op = "pykernels::fused_linear_cross_entropy_backward";
  const LinearHead s{hidden, weight, bias.has_value() ? *bias : at::Tensor()};
  FusedLinearSettings st =
      cross_entropy_loop_settings(dev, op, s, labels, ignore_index, label_smoothing, softcap,
                                  z_loss, chunk_size, 1.0, grad_mask);
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, "hidden", hidden);
  TORCH_CHECK_VALUE(grad.sizes() == labels.sizes(), op, ": argument 'grad' must have shape ",
                    labels.sizes(), ", got ", grad.sizes());
  const at::Tensor y = labels.reshape({-1}).contiguous();
  check_label_range(dev, st, y, weight.size(0));
  const auto w = grad.reshape({-1}).to(at::toOpMathType(hidden.scalar_type()));
  auto o = fused_linear_loop(st, flat(s), LinearHead{}, y, w, dev.kernel);
  return {st.grads[0] ? o.grads[0].reshape(hidden.sizes()) : o.grads[0], o.grads[1], o.grads[2]};
}

// ---- fused_linear_distillation_loss
struct DistillationHeads {
  LinearHead s, t;
};

inline DistillationHeads distillation_heads(const at::Tensor& student_hidden,
                                            const at::Tensor& student_weight,
                                            const at::Tensor& teacher_hidden,
                                            const at::Tensor& teacher_weight,
                                            const c10::optional<at::Tensor>& student_bias,
                                            const c10::optional<at::Tensor>& teacher_bias) {
  return {{student_hidden, student_weight, student_bias.value_or(at::Tensor()), "student_hidden",
           "student_weight", "student_bias"},
          {teacher_hidden, teacher_weight, teacher_bias.value_or(at::Tensor()), "teacher_hidden",
           "teacher_weight", "teacher_bias"}};
}

inline FusedLinearSettings distillation_loop_settings(
    const FusedLinearDevice& dev, const char* op, const DistillationHeads& h,
    const at::Tensor& labels, double temperature, double soft_weight, double hard_weight,
    double beta, int64_t ignore_index, double label_smoothing, int64_t chunk_size,
    double grad_scale, std::array<bool, 6> grad_mask) {
  check_head(op, h.s, dev.type);
  check_head(op, h.t, dev.type);
  check_same_device(op, "teacher_hidden", h.t.hidden, "student_hidden", h.s.hidden);
  check_same_dtype(op, "teacher_hidden", h.t.hidden, "student_hidden", h.s.hidden);
  const auto rows = h.s.hidden.sizes().slice(0, h.s.hidden.dim() - 1);
  TORCH_CHECK_VALUE(h.t.hidden.sizes().slice(0, h.t.hidden.dim() - 1) == rows, op,
                    ": argument 'teacher_hidden' must have the leading shape ", rows,
                    " of 'student_hidden', got ", h.t.hidden.sizes());
  TORCH_CHECK_VALUE(h.t.weight.size(0) == h.s.weight.size(0), op,
                    ": argument 'teacher_weight' must have the vocabulary V = ", h.s.weight.size(0),
                    " of 'student_weight' (its first dim), got ", h.t.weight.sizes());
  if (labels.defined()) check_head_labels(op, labels, h.s);
  TORCH_CHECK_VALUE(chunk_size >= 0, op,
                    ": argument 'chunk_size' must be >= 0 (0: automatic), got ", chunk_size);
  check_temperature(op, temperature);
  check_finite(op, "soft_weight", soft_weight);
  check_finite(op, "hard_weight", hard_weight);
  check_unit_interval(op, "beta", beta);
  check_unit_interval(op, "label_smoothing", label_smoothing);
  TORCH_CHECK_VALUE(labels.defined() || hard_weight == 0, op,
                    ": argument 'hard_weight' must be 0 when no labels are given, got ",
                    hard_weight);
  FusedLinearSettings st;
  DistillationSettings& r = st.rows;
  r.op = op;
  r.logits_arg = "student_hidden";
  r.teacher_arg = "teacher_hidden";
  set_distillation_terms(r, temperature, soft_weight, hard_weight, beta, ignore_index,
                         label_smoothing, labels.defined());
  check_grad_scale(r, grad_scale);
  st.chunk_size = chunk_size;
  st.compact = dev.compact;
  st.in_place = dev.in_place;
  const LinearHead* heads[2] = {&h.s, &h.t};
  for (size_t k = 0; k < 6; ++k) {
    st.grads[k] = grad_mask[k] && (k % 3 != 2 || heads[k / 3]->bias.defined());
  }
  return st;
}

// Each gradient the mask asks for, reshaped like its input.
inline std::vector<at::Tensor> shaped_grads(const FusedLinearSettings& st,
                                            const FusedLinearOutputs& o,
                                            const DistillationHeads& h) {
  std::vector<at::Tensor> g(o.grads.begin(), o.grads.end());
  if (st.grads[0]) g[0] = g[0].reshape(h.s.hidden.sizes());
  if (st.grads[3]) g[3] = g[3].reshape(h.t.hidden.sizes());
  return g;
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                  at::Tensor>
fused_linear_distillation_loss_op(const FusedLinearDevice& dev, const at::Tensor& student_hidden,
                                  const at::Tensor& student_weight,
                                  const at::Tensor& teacher_hidden,
                                  const at::Tensor& teacher_weight,
                                  const c10::optional<at::Tensor>& labels,
                                  const c10::optional<at::Tensor>& student_bias,
                                  const c10::optional<at::Tensor>& teacher_bias, double temperature,
                                  double soft_weight, double hard_weight, double beta,
                                  int64_t ignore_index, double label_smoothing, int64_t chunk_size,
                                  bool reduce, double grad_scale, std::array<bool, 6> grad_mask) {
  const char* op = "pykernels::fused_linear_distillation_loss";
  const auto h = distillation_heads(student_hidden, student_weight, teacher_hidden, teacher_weight,
                                    student_bias, teacher_bias);
  const at::Tensor y = labels.value_or(at::Tensor());
  FusedLinearSettings st =
      distillation_loop_settings(dev, op, h, y, temperature, soft_weight, hard_weight, beta,
                                 ignore_index, label_smoothing, chunk_size, grad_scale, grad_mask);
  const at::Tensor yf = y.defined() ? y.reshape({-1}).contiguous() : y;
  if (yf.defined()) check_label_range(dev, st, yf, student_weight.size(0));
  if (!reduce) st.grads = {};
  const auto o = fused_linear_loop(st, flat(h.s), flat(h.t), yf, at::Tensor(), dev.kernel);
  const auto g = shaped_grads(st, o, h);
  return {fused_linear_loss(o.loss, student_hidden, reduce, grad_scale),
          g[0],
          g[1],
          g[2],
          g[3],
          g[4],
          g[5]};
}

// Its backward for reduction "none": grad [...] is each row's upstream gradient.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fused_linear_distillation_loss_backward_op(
    const FusedLinearDevice& dev, const at::Tensor& grad, const at::Tensor& student_hidden,
    const at::Tensor& student_weight, const at::Tensor& teacher_hidden,
    const at::Tensor& teacher_weight, const c10::optional<at::Tensor>& labels,
    const c10::optional<at::Tensor>& student_bias, const c10::optional<at::Tensor>& teacher_bias,
    double temperature, double soft_weight, double hard_weight, double beta, int64_t ignore_index,
    double label_smoothing, int64_t chunk_size, std::array<bool, 6> grad_mask) {
  const char* op = "pykernels::fused_linear_distillation_loss_backward";
  const auto h = distillation_heads(student_hidden, student_weight, teacher_hidden, teacher_weight,
                                    student_bias, teacher_bias);
  const at::Tensor y = labels.value_or(at::Tensor());
  FusedLinearSettings st =
      distillation_loop_settings(dev, op, h, y, temperature, soft_weight, hard_weight, beta,
                                 ignore_index, label_smoothing, chunk_size, 1.0, grad_mask);
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, "student_hidden", student_hidden);
  const auto rows = student_hidden.sizes().slice(0, student_hidden.dim() - 1);
  TORCH_CHECK_VALUE(grad.sizes() == rows, op, ": argument 'grad' must have shape ", rows, ", got ",
                    grad.sizes());
  const at::Tensor yf = y.defined() ? y.reshape({-1}).contiguous() : y;
  if (yf.defined()) check_label_range(dev, st, yf, student_weight.size(0));
  const auto w = grad.reshape({-1}).to(at::toOpMathType(student_hidden.scalar_type()));
  const auto o = fused_linear_loop(st, flat(h.s), flat(h.t), yf, w, dev.kernel);
  const auto g = shaped_grads(st, o, h);
  return {g[0], g[1], g[2], g[3], g[4], g[5]};
}

// ---- the ops as registered for a device D (cpu/fused_linear.cpp, cuda/fused_linear.cu):
// D::device() gives its FusedLinearDevice; the calls run on the inputs' device.
template <typename D>
struct FusedLinearOps {
  using Opt = c10::optional<at::Tensor>;
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_entropy(
      const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels, const Opt& bias,
      int64_t ignore_index, double label_smoothing, double softcap, double z_loss,
      int64_t chunk_size, bool reduce, double grad_scale, bool return_lse,
      std::array<bool, 3> grad_mask) {
    const at::OptionalDeviceGuard guard(at::device_of(hidden));
    return fused_linear_cross_entropy_op(D::device(), hidden, weight, labels, bias, ignore_index,
                                         label_smoothing, softcap, z_loss, chunk_size, reduce,
                                         grad_scale, return_lse, grad_mask);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_backward(
      const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& weight,
      const at::Tensor& labels, const Opt& bias, int64_t ignore_index, double label_smoothing,
      double softcap, double z_loss, int64_t chunk_size, std::array<bool, 3> grad_mask) {
    const at::OptionalDeviceGuard guard(at::device_of(hidden));
    return fused_linear_cross_entropy_backward_op(D::device(), grad, hidden, weight, labels, bias,
                                                  ignore_index, label_smoothing, softcap, z_loss,
                                                  chunk_size, grad_mask);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                    at::Tensor>
  distillation(const at::Tensor& sh, const at::Tensor& sw, const at::Tensor& th,
               const at::Tensor& tw, const Opt& labels, const Opt& sb, const Opt& tb,
               double temperature, double soft_weight, double hard_weight, double beta,
               int64_t ignore_index, double label_smoothing, int64_t chunk_size, bool reduce,
               double grad_scale, std::array<bool, 6> grad_mask) {
    const at::OptionalDeviceGuard guard(at::device_of(sh));
    return fused_linear_distillation_loss_op(
        D::device(), sh, sw, th, tw, labels, sb, tb, temperature, soft_weight, hard_weight, beta,
        ignore_index, label_smoothing, chunk_size, reduce, grad_scale, grad_mask);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
  distillation_backward(const at::Tensor& grad, const at::Tensor& sh, const at::Tensor& sw,
                        const at::Tensor& th, const at::Tensor& tw, const Opt& labels,
                        const Opt& sb, const Opt& tb, double temperature, double soft_weight,
                        double hard_weight, double beta, int64_t ignore_index,
                        double label_smoothing, int64_t chunk_size, std::array<bool, 6> grad_mask) {
    const at::OptionalDeviceGuard guard(at::device_of(sh));
    return fused_linear_distillation_loss_backward_op(
        D::device(), grad, sh, sw, th, tw, labels, sb, tb, temperature, soft_weight, hard_weight,
        beta, ignore_index, label_smoothing, chunk_size, grad_mask);
  }
  static void register_impls(torch::Library& m) {
    m.impl("fused_linear_cross_entropy", &cross_entropy);
    m.impl("fused_linear_cross_entropy_backward", &cross_entropy_backward);
    m.impl("fused_linear_distillation_loss", &distillation);
    m.impl("fused_linear_distillation_loss_backward", &distillation_backward);
  }
};

}  // namespace pykernels
