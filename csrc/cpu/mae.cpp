// CPU kernels of the MAE family (pykernels/reference/mae.py has the math):
//   random_masking              argsort of the noise per sample, then a gather of the kept rows
//   unshuffle_with_mask_tokens  a gather of visible rows, the mask token elsewhere
//   gather_patches              the kept patches read straight from the image
//   masked_patch_loss           per patch: target patch, its norm, squared error; masked mean
// Row moves are memcpy of whole rows (any dtype). Ids are validated before a kernel runs
// (IndexError out of range, ValueError for a repeated id), so kernels index without checks.
// Every sum runs in a fixed order: results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common/cpu_loops.h"
#include "common/cpu_vec.h"
#include "common/mae_args.h"
#include "common/output_memory.h"

namespace pykernels {
namespace cpu {
namespace {

using namespace pykernels::mae;

// Every id of ids [N, K] (contiguous) in [0, hi) and distinct within its row.
void check_ids_values(const char* op, const char* arg, const at::Tensor& ids, int64_t hi) {
  const int64_t N = ids.size(0), K = ids.size(1);
  const int64_t* p = ids.const_data_ptr<int64_t>();
  std::vector<uint8_t> seen(std::max<int64_t>(hi, 1));
  for (int64_t n = 0; n < N; ++n) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t v = p[n * K + k];
      TORCH_CHECK_INDEX(v >= 0 && v < hi, op, ": argument '", arg, "' has id ", v, " at [", n, ", ",
                        k, "], outside [0, ", hi, ")");
      TORCH_CHECK_VALUE(!seen[v], op, ": argument '", arg, "' repeats id ", v, " in row ", n,
                        "; ids must be distinct");
      seen[v] = 1;
    }
  }
}

// ---------------------------------------------------------------------------- row moves
// out[n, t] = src[n, i] if i = idx[n * idx_stride + t] < S, else fill (zeros when null):
// src [N, S, D], out [N, T, D], contiguous, rows of `row_bytes` bytes.
void gather_rows(const at::Tensor& src, const int64_t* idx, int64_t idx_stride, const void* fill,
                 at::Tensor& out) {
  const int64_t N = out.size(0), T = out.size(1), S = src.size(1);
  const int64_t row_bytes = out.size(2) * out.element_size();
  if (out.numel() == 0) return;
  const char* ps = static_cast<const char*>(src.const_data_ptr());
  char* po = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, N * T, row_grain(out.size(2)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / T, i = idx[n * idx_stride + r % T];
      char* dst = po + r * row_bytes;
      if (i < S)
        std::memcpy(dst, ps + (n * S + i) * row_bytes, row_bytes);
      else if (fill != nullptr)
        std::memcpy(dst, fill, row_bytes);
      else
        std::memset(dst, 0, row_bytes);
    }
  });
}

// ---------------------------------------------------------------------------- random_masking
// Pass 1, per sample: ids_shuffle[n] = the stable argsort of noise[n], NaN last as in
// torch.sort; ids_restore[n, ids_shuffle[n, k]] = k.
template <typename noise_t>
void shuffle_ids(const noise_t* noise, int64_t N, int64_t L, int64_t* ids_shuffle,
                 int64_t* ids_restore) {
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const noise_t* u = noise + n * L;
      int64_t* order = ids_shuffle + n * L;
      std::iota(order, order + L, int64_t(0));
      std::stable_sort(order, order + L, [u](int64_t a, int64_t b) {
        const double x = static_cast<double>(u[a]), y = static_cast<double>(u[b]);
        return x < y || (std::isnan(y) && !std::isnan(x));
      });
      for (int64_t k = 0; k < L; ++k) ids_restore[n * L + order[k]] = k;
    }
  });
}

// Pass 2: mask[n, l] = 1 where the token is removed (ids_restore[n, l] >= K), else 0.
template <typename scalar_t>
void removed_mask(const int64_t* ids_restore, int64_t count, int64_t K, scalar_t* mask) {
  for (int64_t i = 0; i < count; ++i) mask[i] = scalar_t(ids_restore[i] >= K ? 1 : 0);
}

// Pass 3 (gather_rows): x_visible[n, k] = x[n, ids_shuffle[n, k]], k < K.
std::tuple<at::Tensor, at::Tensor, at::Tensor> random_masking_cpu(const at::Tensor& x_,
                                                                  double mask_ratio,
                                                                  const at::Tensor& noise_) {
  check_random_masking("pykernels::random_masking", x_, noise_, mask_ratio, at::kCPU);
  const auto x = x_.contiguous(), noise = noise_.contiguous();
  const int64_t N = x.size(0), L = x.size(1), K = num_keep(L, mask_ratio);
  auto ids_shuffle = at::empty({N, L}, noise.options().dtype(at::kLong));
  auto ids_restore = at::empty({N, L}, ids_shuffle.options());
  auto mask = at::empty({N, L}, x.options());
  auto x_visible = empty_output({N, K, x.size(2)}, x.options());
  PK_DISPATCH_FLOATING(noise.scalar_type(), "random_masking_cpu", [&] {
    shuffle_ids(noise.const_data_ptr<scalar_t>(), N, L, ids_shuffle.data_ptr<int64_t>(),
                ids_restore.data_ptr<int64_t>());
  });
  PK_DISPATCH_FLOATING(x.scalar_type(), "random_masking_cpu", [&] {
    removed_mask(ids_restore.const_data_ptr<int64_t>(), N * L, K, mask.data_ptr<scalar_t>());
  });
  gather_rows(x, ids_shuffle.const_data_ptr<int64_t>(), L, nullptr, x_visible);
  return {x_visible, mask, ids_restore};
}

// grad_x[n, l] = grad[n, ids_restore[n, l]] for the kept tokens (< K), 0 for removed ones.
at::Tensor random_masking_backward_cpu(const at::Tensor& grad_, const at::Tensor& ids_restore_) {
  const char* op = "pykernels::random_masking_backward";
  check_random_masking_backward(op, grad_, ids_restore_, at::kCPU);
  const auto grad = grad_.contiguous(), ids = ids_restore_.contiguous();
  check_ids_values(op, "ids_restore", ids, ids.size(1));
  auto out = empty_output({grad.size(0), ids.size(1), grad.size(2)}, grad.options());
  gather_rows(grad, ids.const_data_ptr<int64_t>(), ids.size(1), nullptr, out);
  return out;
}

// ---------------------------------------------------------------------------- unshuffle
// out[n, l] = x_visible[n, r] if r = ids_restore[n, l] < K, else mask_token.
at::Tensor unshuffle_with_mask_tokens_cpu(const at::Tensor& x_visible_,
                                          const at::Tensor& mask_token_,
                                          const at::Tensor& ids_restore_) {
  const char* op = "pykernels::unshuffle_with_mask_tokens";
  check_unshuffle(op, x_visible_, mask_token_, ids_restore_, at::kCPU);
  const auto xv = x_visible_.contiguous(), token = mask_token_.contiguous();
  const auto ids = ids_restore_.contiguous();
  check_ids_values(op, "ids_restore", ids, ids.size(1));
  auto out = empty_output({xv.size(0), ids.size(1), xv.size(2)}, xv.options());
  gather_rows(xv, ids.const_data_ptr<int64_t>(), ids.size(1), token.const_data_ptr(), out);
  return out;
}

// Pass 2 of the backward: grad_mask_token[d] = sum over (n, l) with ids_restore[n, l] >= K of
// grad[n, l, d]: per-sample partial sums over l in order, then a sum over n in order.
template <typename scalar_t>
void mask_token_grad(const scalar_t* grad, const int64_t* ids, int64_t N, int64_t L, int64_t D,
                     int64_t K, scalar_t* out) {
  using acc = acc_t<scalar_t>;
  std::vector<acc> partial(N * D, acc(0));
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      acc* dst = partial.data() + n * D;
      for (int64_t l = 0; l < L; ++l) {
        if (ids[n * L + l] < K) continue;
        const scalar_t* src = grad + (n * L + l) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] += static_cast<acc>(src[d]);
      }
    }
  });
  at::parallel_for(0, D, 256, [&](int64_t begin, int64_t end) {
    for (int64_t d = begin; d < end; ++d) {
      acc s = 0;
      for (int64_t n = 0; n < N; ++n) s += partial[n * D + d];
      out[d] = static_cast<scalar_t>(s);
    }
  });
}

// Pass 1: grad_x_visible[n, r] = grad[n, l] where ids_restore[n, l] = r < K (a permutation:
// every row written once). Pass 2: mask_token_grad.
std::tuple<at::Tensor, at::Tensor> unshuffle_with_mask_tokens_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& ids_restore_, int64_t num_keep) {
  const char* op = "pykernels::unshuffle_with_mask_tokens_backward";
  check_unshuffle_backward(op, grad_, ids_restore_, num_keep, at::kCPU);
  const auto grad = grad_.contiguous(), ids = ids_restore_.contiguous();
  const int64_t N = grad.size(0), L = grad.size(1), D = grad.size(2), K = num_keep;
  check_ids_values(op, "ids_restore", ids, L);
  auto grad_x_visible = empty_output({N, K, D}, grad.options());
  auto grad_mask_token = at::empty({D}, grad.options());
  if (D == 0) return {grad_x_visible, grad_mask_token};
  const int64_t* pi = ids.const_data_ptr<int64_t>();
  const int64_t row_bytes = D * grad.element_size();
  const char* pg = static_cast<const char*>(grad.const_data_ptr());
  char* px = static_cast<char*>(grad_x_visible.data_ptr());
  at::parallel_for(0, N * L, row_grain(D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      if (pi[r] < K)
        std::memcpy(px + ((r / L) * K + pi[r]) * row_bytes, pg + r * row_bytes, row_bytes);
  });
  PK_DISPATCH_FLOATING(grad.scalar_type(), "unshuffle_with_mask_tokens_backward_cpu", [&] {
    mask_token_grad(grad.const_data_ptr<scalar_t>(), pi, N, L, D, K,
                    grad_mask_token.data_ptr<scalar_t>());
  });
  return {grad_x_visible, grad_mask_token};
}

// ---------------------------------------------------------------------------- patches
// Geometry of patch l of image n in a contiguous [N, C, H, W] image.
struct PatchGeom {
  int64_t C, H, W, p, h, w, L, P;
  PatchGeom(int64_t C_, int64_t H_, int64_t W_, int64_t p_)
      : C(C_), H(H_), W(W_), p(p_), h(H_ / p_), w(W_ / p_), L(h * w), P(p_ * p_ * C_) {}
  // Offset of the first pixel of row pi of channel c of the patch.
  int64_t pixel(int64_t n, int64_t l, int64_t c, int64_t pi) const {
    return ((n * C + c) * H + (l / w) * p + pi) * W + (l % w) * p;
  }
};

// dst[(pi*p + pj)*C + c] = the patch's pixel (pi, pj) of channel c, converted to out_t: the
// patch in patchify's element order. kC: C as a compile-time constant (1 or 3, the common
// cases, whose interleaved stores vectorise), or 0 to read g.C.
template <int kC, typename scalar_t, typename out_t>
PK_CPU_INLINE void load_patch(const scalar_t* img, const PatchGeom& g, int64_t n, int64_t l,
                              out_t* dst) {
  const int64_t C = kC > 0 ? kC : g.C;
  for (int64_t pi = 0; pi < g.p; ++pi) {
    out_t* d = dst + pi * g.p * C;
    const scalar_t* src = img + g.pixel(n, l, 0, pi);
    const int64_t plane = g.H * g.W;
    for (int64_t pj = 0; pj < g.p; ++pj)
      for (int64_t c = 0; c < C; ++c) d[pj * C + c] = static_cast<out_t>(src[c * plane + pj]);
  }
}

at::Tensor gather_patches_cpu(const at::Tensor& imgs_, const at::Tensor& ids_keep_,
                              int64_t patch_size) {
  const char* op = "pykernels::gather_patches";
  check_gather_patches(op, imgs_, ids_keep_, patch_size, at::kCPU);
  const auto imgs = imgs_.contiguous(), ids = ids_keep_.contiguous();
  const PatchGeom g(imgs.size(1), imgs.size(2), imgs.size(3), patch_size);
  const int64_t N = imgs.size(0), K = ids.size(1);
  check_ids_values(op, "ids_keep", ids, g.L);
  auto out = empty_output({N, K, g.P}, imgs.options());
  if (out.numel() == 0) return out;
  const int64_t* pi = ids.const_data_ptr<int64_t>();
  PK_DISPATCH_FLOATING(imgs.scalar_type(), "gather_patches_cpu", [&] {
    const scalar_t* px = imgs.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, N * K, row_grain(g.P), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) load_patch<0>(px, g, r / K, pi[r], po + r * g.P);
    });
  });
  return out;
}

// The image gradient in image order, one task per image row (n, c, y): pixels of a kept
// patch get their element of grad, the others 0; every pixel is written once.
at::Tensor gather_patches_backward_cpu(const at::Tensor& grad_, const at::Tensor& ids_keep_,
                                       int64_t p, int64_t C, int64_t H, int64_t W) {
  const char* op = "pykernels::gather_patches_backward";
  check_gather_patches_backward(op, grad_, ids_keep_, p, C, H, W, at::kCPU);
  const auto grad = grad_.contiguous(), ids = ids_keep_.contiguous();
  const PatchGeom g(C, H, W, p);
  const int64_t N = grad.size(0), K = ids.size(1);
  check_ids_values(op, "ids_keep", ids, g.L);
  auto out = empty_output({N, C, H, W}, grad.options());
  if (out.numel() == 0) return out;
  std::vector<int64_t> inv(N * g.L, -1);  // inv[n, ids_keep[n, k]] = k, -1 where not kept
  const int64_t* pk = ids.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < N * K; ++r) inv[(r / K) * g.L + pk[r]] = r % K;
  PK_DISPATCH_FLOATING(grad.scalar_type(), "gather_patches_backward_cpu", [&] {
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, N * C * H, row_grain(W), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t y = row % H, c = (row / H) % C, n = row / (H * C);
        scalar_t* dst = po + row * W;
        for (int64_t j = 0; j < g.w; ++j, dst += p) {
          const int64_t k = inv[n * g.L + (y / p) * g.w + j];
          if (k < 0) {
            std::fill(dst, dst + p, scalar_t(0));
            continue;
          }
          const scalar_t* src = pg + (n * K + k) * g.P + (y % p) * p * C + c;
          for (int64_t pj = 0; pj < p; ++pj) dst[pj] = src[pj * C];
        }
      }
    });
  });
  return out;
}

// ---------------------------------------------------------------------------- masked_patch_loss
// The target patch's normalisation t -> (t - mean) * rstd.
template <typename acc>
struct TargetNorm {
  acc mean, rstd;
};

// Pass 2 of a patch: with norm_pix_loss, mean = sum(t) / P and rstd = 1 / sqrt(var + 1e-6),
// var = sum((t - mean)^2) / (P - 1) (unbiased, as torch.var), two passes over t in L1;
// without it (0, 1).
template <typename acc>
PK_CPU_INLINE TargetNorm<acc> target_norm(const acc* t, int64_t P, bool norm) {
  if (!norm) return {acc(0), acc(1)};
  const acc mean = lane_sum<acc>(P, [&](int64_t e) { return t[e]; }) / acc(P);
  const acc ss = lane_sum<acc>(P, [&](int64_t e) { return (t[e] - mean) * (t[e] - mean); });
  return {mean, acc(1) / std::sqrt(ss / acc(P - 1) + acc(1e-6))};
}

// Pass 3 of a patch: sum_e (x[e] - (t[e] - mean) rstd)^2; with grad_x, also writes
// grad_x[e] = k (x[e] - (t[e] - mean) rstd).
template <typename scalar_t, typename acc>
PK_CPU_INLINE acc patch_error(const scalar_t* x, const acc* t, int64_t P, TargetNorm<acc> tn, acc k,
                              scalar_t* grad_x) {
  auto diff = [&](int64_t e) { return static_cast<acc>(x[e]) - (t[e] - tn.mean) * tn.rstd; };
  if (grad_x != nullptr)
    for (int64_t e = 0; e < P; ++e) grad_x[e] = static_cast<scalar_t>(k * diff(e));
  return lane_sum<acc>(P, [&](int64_t e) { return diff(e) * diff(e); });
}

// The three passes for patches [begin, end): per_patch[r] = mean_e (x - normalised t)^2 and,
// with grad_pred, grad_pred[r] = k[r] (x - normalised t), k[r] = coef * mask[r].
// Pass 1 for a row of patches (n, i): buf[j * P + e] = element e of target patch (i, j) for
// the w patches of the row. Each image row is read once, whole and in order (reading
// patch by patch interleaves 16 p-pixel runs of each of C planes: too many streams for
// the hardware prefetcher, and the loss was memory-latency bound).
template <int kC, typename scalar_t, typename acc>
PK_CPU_INLINE void load_patch_row(const scalar_t* img, const PatchGeom& g, int64_t n, int64_t i,
                                  acc* buf) {
  const int64_t C = kC > 0 ? kC : g.C, plane = g.H * g.W;
  for (int64_t pi = 0; pi < g.p; ++pi) {
    const scalar_t* src = img + (n * C * g.H + i * g.p + pi) * g.W;  // row i*p + pi, channel 0
    for (int64_t j = 0; j < g.w; ++j) {
      acc* d = buf + j * g.P + pi * g.p * C;
      const scalar_t* s = src + j * g.p;
      for (int64_t pj = 0; pj < g.p; ++pj)
        for (int64_t c = 0; c < C; ++c) d[pj * C + c] = static_cast<acc>(s[c * plane + pj]);
    }
  }
}

// The three passes for the patch rows [begin, end) (row = n*h + i, patches r = row*w + j):
// per_patch[r] = mean_e (x - normalised t)^2 and, with grad_pred, grad_pred[r] = k[r] (x -
// normalised t), k[r] = coef * mask[r].
template <int kC, typename scalar_t, typename acc = acc_t<scalar_t>>
void patch_rows(const scalar_t* pred, const scalar_t* img, const PatchGeom& g, bool norm,
                int64_t begin, int64_t end, acc* per_patch, const acc* mask, acc coef,
                scalar_t* grad_pred) {
  std::vector<acc> buf(g.w * g.P);
  run_vectorised([&]() __attribute__((always_inline)) {
    for (int64_t row = begin; row < end; ++row) {
      load_patch_row<kC>(img, g, row / g.h, row % g.h, buf.data());
      for (int64_t r = row * g.w; r < (row + 1) * g.w; ++r) {
        const acc* t = buf.data() + (r - row * g.w) * g.P;
        const TargetNorm<acc> tn = target_norm(t, g.P, norm);
        scalar_t* gr = grad_pred != nullptr ? grad_pred + r * g.P : nullptr;
        const acc k = grad_pred != nullptr ? coef * mask[r] : acc(0);
        per_patch[r] = patch_error(pred + r * g.P, t, g.P, tn, k, gr) / acc(g.P);
      }
    }
  });
}

// patch_rows over every row of patches, in parallel, with C a compile-time constant where
// common.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
void patch_errors(const at::Tensor& pred, const at::Tensor& imgs, int64_t p, bool norm,
                  acc* per_patch, const acc* mask, acc coef, scalar_t* grad_pred) {
  const PatchGeom g(imgs.size(1), imgs.size(2), imgs.size(3), p);
  const scalar_t *x = pred.const_data_ptr<scalar_t>(), *img = imgs.const_data_ptr<scalar_t>();
  at::parallel_for(0, imgs.size(0) * g.h, row_grain(g.w * g.P), [&](int64_t begin, int64_t end) {
    auto rows = [&](auto c) {  // c: C as a compile-time constant (0: not one)
      patch_rows<decltype(c)::value, scalar_t, acc>(x, img, g, norm, begin, end, per_patch, mask,
                                                    coef, grad_pred);
    };
    if (g.C == 3)
      rows(std::integral_constant<int, 3>{});
    else if (g.C == 1)
      rows(std::integral_constant<int, 1>{});
    else
      rows(std::integral_constant<int, 0>{});
  });
}

// (sum_r per_patch[r] mask[r], sum_r mask[r]) in row order, in double: the masked mean's
// numerator and denominator (12544 terms for 64 images of 224^2 at p = 16).
template <typename acc>
std::pair<double, double> masked_sums(const acc* per_patch, const acc* mask, int64_t R) {
  double num = 0, den = 0;
  for (int64_t r = 0; r < R; ++r) {
    num += static_cast<double>(per_patch[r]) * static_cast<double>(mask[r]);
    den += static_cast<double>(mask[r]);
  }
  return {num, den};
}

// loss = sum_r per_patch[r] mask[r] / sum_r mask[r] (NaN when no patch is masked, as MAE's
// formula gives), in the accumulation dtype.
at::Tensor masked_patch_loss_cpu(const at::Tensor& pred_, const at::Tensor& imgs_,
                                 const at::Tensor& mask_, int64_t patch_size, bool norm_pix_loss) {
  check_masked_patch_loss("pykernels::masked_patch_loss", pred_, imgs_, mask_, patch_size,
                          at::kCPU);
  const auto pred = pred_.contiguous(), imgs = imgs_.contiguous();
  const auto accT = at::toOpMathType(pred.scalar_type());
  const auto mask = mask_.to(accT).contiguous();
  auto loss = at::empty({}, pred.options().dtype(accT));
  PK_DISPATCH_FLOATING(pred.scalar_type(), "masked_patch_loss_cpu", [&] {
    using acc = acc_t<scalar_t>;
    std::vector<acc> per_patch(mask.numel());
    patch_errors<scalar_t, acc>(pred, imgs, patch_size, norm_pix_loss, per_patch.data(), nullptr,
                                acc(0), nullptr);
    const auto [num, den] = masked_sums(per_patch.data(), mask.const_data_ptr<acc>(), mask.numel());
    loss.fill_(static_cast<acc>(num / den));
  });
  return loss;
}

// With w = grad / sum(mask):
//   grad_pred[r, e] = 2 w mask[r] / P (x - normalised t)     (the loss of patch r is a mean over P)
//   grad_mask[r]    = w (per_patch[r] - loss)
std::tuple<at::Tensor, at::Tensor> masked_patch_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& pred_, const at::Tensor& imgs_,
    const at::Tensor& mask_, int64_t patch_size, bool norm_pix_loss) {
  const char* op = "pykernels::masked_patch_loss_backward";
  check_masked_patch_loss(op, pred_, imgs_, mask_, patch_size, at::kCPU);
  check_scalar_grad(op, grad, pred_);
  const auto pred = pred_.contiguous(), imgs = imgs_.contiguous();
  const auto accT = at::toOpMathType(pred.scalar_type());
  const auto mask = mask_.to(accT).contiguous();
  auto grad_pred = empty_output_like(pred);
  auto grad_mask = at::empty(mask.sizes(), mask.options());
  const double g = grad.item<double>();
  PK_DISPATCH_FLOATING(pred.scalar_type(), "masked_patch_loss_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc* m = mask.const_data_ptr<acc>();
    const int64_t R = mask.numel(), P = pred.size(2);
    double den = 0;
    for (int64_t r = 0; r < R; ++r) den += static_cast<double>(m[r]);
    const double w = g / den;
    std::vector<acc> per_patch(R);
    patch_errors<scalar_t, acc>(pred, imgs, patch_size, norm_pix_loss, per_patch.data(), m,
                                static_cast<acc>(2 * w / static_cast<double>(P)),
                                grad_pred.data_ptr<scalar_t>());
    const double loss = masked_sums(per_patch.data(), m, R).first / den;
    acc* gm = grad_mask.data_ptr<acc>();
    for (int64_t r = 0; r < R; ++r)
      gm[r] = static_cast<acc>(w * (static_cast<double>(per_patch[r]) - loss));
  });
  return {grad_pred, grad_mask.to(mask_.scalar_type())};
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("random_masking", &random_masking_cpu);
  m.impl("random_masking_backward", &random_masking_backward_cpu);
  m.impl("unshuffle_with_mask_tokens", &unshuffle_with_mask_tokens_cpu);
  m.impl("unshuffle_with_mask_tokens_backward", &unshuffle_with_mask_tokens_backward_cpu);
  m.impl("gather_patches", &gather_patches_cpu);
  m.impl("gather_patches_backward", &gather_patches_backward_cpu);
  m.impl("masked_patch_loss", &masked_patch_loss_cpu);
  m.impl("masked_patch_loss_backward", &masked_patch_loss_backward_cpu);
}
