// CPU kernels of the MAE family: token gather / unshuffle with mask tokens, patch
// gather straight from the image, and the per-patch reconstruction error with the
// target patchified on the fly. Ids are validated before any kernel runs (IndexError
// out of range, ValueError for a repeated id), so kernels index without checks.
// Every sum runs in a fixed order on one thread: results do not depend on the
// thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/cpu_vec.h"
#include "common/mae_args.h"

namespace pykernels {
namespace cpu {
namespace {

// Every id of ids [N, K] (contiguous) in [0, hi) and distinct within its row.
void check_id_values(const char* op, const char* arg, const at::Tensor& ids, int64_t hi) {
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

// inv[n, ids[n, k]] = k, -1 for ids not listed; ids validated (distinct, in range).
std::vector<int64_t> invert_ids(const at::Tensor& ids, int64_t hi) {
  const int64_t N = ids.size(0), K = ids.size(1);
  const int64_t* p = ids.const_data_ptr<int64_t>();
  std::vector<int64_t> inv(N * hi, -1);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) inv[n * hi + p[n * K + k]] = k;
  return inv;
}

template <typename F>
inline void parallel_rows(int64_t rows, int64_t row_len, F&& f) {
  at::parallel_for(0, rows, row_grain(row_len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

template <typename scalar_t>
inline void copy_row(scalar_t* dst, const scalar_t* src, int64_t D) {
  std::memcpy(dst, src, D * sizeof(scalar_t));
}

template <typename scalar_t>
inline void zero_row(scalar_t* dst, int64_t D) {
  std::fill(dst, dst + D, scalar_t(0));
}

// ---------------------------------------------------------------------------- tokens
at::Tensor gather_tokens_cpu(const at::Tensor& x_, const at::Tensor& ids_) {
  const char* op = "pykernels::gather_tokens";
  check_float_tensor(op, "x", x_, 3, at::kCPU);
  check_ids(op, "ids_keep", ids_, "x", x_);
  const auto x = x_.contiguous(), ids = ids_.contiguous();
  const int64_t N = x.size(0), L = x.size(1), D = x.size(2), K = ids.size(1);
  check_id_values(op, "ids_keep", ids, L);
  auto out = at::empty({N, K, D}, x.options());
  if (out.numel() == 0) return out;
  const int64_t* pi = ids.const_data_ptr<int64_t>();
  PK_DISPATCH_FLOATING(x.scalar_type(), "gather_tokens_cpu", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    parallel_rows(N * K, D, [&](int64_t r) {
      copy_row(po + r * D, px + ((r / K) * L + pi[r]) * D, D);
    });
  });
  return out;
}

at::Tensor gather_tokens_backward_cpu(const at::Tensor& grad_, const at::Tensor& ids_, int64_t L) {
  const char* op = "pykernels::gather_tokens_backward";
  check_float_tensor(op, "grad", grad_, 3, at::kCPU);
  check_ids(op, "ids_keep", ids_, "grad", grad_);
  check_count(op, "num_tokens", L);
  TORCH_CHECK_VALUE(ids_.size(1) == grad_.size(1), op, ": argument 'ids_keep' must have shape [",
                    grad_.size(0), ", ", grad_.size(1), "], got ", ids_.sizes());
  const auto grad = grad_.contiguous(), ids = ids_.contiguous();
  const int64_t N = grad.size(0), K = grad.size(1), D = grad.size(2);
  check_id_values(op, "ids_keep", ids, L);
  auto out = at::empty({N, L, D}, grad.options());
  if (out.numel() == 0) return out;
  const auto inv = invert_ids(ids, L);
  PK_DISPATCH_FLOATING(grad.scalar_type(), "gather_tokens_backward_cpu", [&] {
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    parallel_rows(N * L, D, [&](int64_t r) {
      const int64_t k = inv[r];
      if (k >= 0) copy_row(po + r * D, pg + ((r / L) * K + k) * D, D);
      else zero_row(po + r * D, D);
    });
  });
  return out;
}

at::Tensor unshuffle_with_mask_tokens_cpu(const at::Tensor& xv_, const at::Tensor& mt_,
                                          const at::Tensor& ids_) {
  const char* op = "pykernels::unshuffle_with_mask_tokens";
  check_float_tensor(op, "x_visible", xv_, 3, at::kCPU);
  check_float_tensor(op, "mask_token", mt_, 1, at::kCPU);
  check_same_dtype(op, "mask_token", mt_, "x_visible", xv_);
  check_ids(op, "ids_restore", ids_, "x_visible", xv_);
  const int64_t N = xv_.size(0), K = xv_.size(1), D = xv_.size(2), L = ids_.size(1);
  TORCH_CHECK_VALUE(mt_.size(0) == D, op, ": argument 'mask_token' must have ", D,
                    " elements (the D of 'x_visible'), got ", mt_.size(0));
  TORCH_CHECK_VALUE(K <= L, op, ": argument 'x_visible' has ", K,
                    " tokens, more than the L = ", L, " of 'ids_restore'");
  const auto xv = xv_.contiguous(), mt = mt_.contiguous(), ids = ids_.contiguous();
  check_id_values(op, "ids_restore", ids, L);
  auto out = at::empty({N, L, D}, xv.options());
  if (out.numel() == 0) return out;
  const int64_t* pi = ids.const_data_ptr<int64_t>();
  PK_DISPATCH_FLOATING(xv.scalar_type(), "unshuffle_cpu", [&] {
    const scalar_t *px = xv.const_data_ptr<scalar_t>(), *pm = mt.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    parallel_rows(N * L, D, [&](int64_t r) {
      const int64_t v = pi[r];
      copy_row(po + r * D, v < K ? px + ((r / L) * K + v) * D : pm, D);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> unshuffle_with_mask_tokens_backward_cpu(const at::Tensor& grad_,
                                                                           const at::Tensor& ids_,
                                                                           int64_t K) {
  const char* op = "pykernels::unshuffle_with_mask_tokens_backward";
  check_float_tensor(op, "grad", grad_, 3, at::kCPU);
  check_ids(op, "ids_restore", ids_, "grad", grad_);
  const int64_t N = grad_.size(0), L = grad_.size(1), D = grad_.size(2);
  TORCH_CHECK_VALUE(ids_.size(1) == L, op, ": argument 'ids_restore' must have shape [", N, ", ",
                    L, "], got ", ids_.sizes());
  TORCH_CHECK_VALUE(K >= 0 && K <= L, op, ": argument 'num_keep' must be in [0, ", L, "], got ", K);
  const auto grad = grad_.contiguous(), ids = ids_.contiguous();
  check_id_values(op, "ids_restore", ids, L);
  auto gx = at::empty({N, K, D}, grad.options());
  auto gm = at::empty({D}, grad.options());
  if (D == 0) return {gx, gm};
  const int64_t* pi = ids.const_data_ptr<int64_t>();
  PK_DISPATCH_FLOATING(grad.scalar_type(), "unshuffle_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    using IO = VecIO<scalar_t>;
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t *ox = gx.data_ptr<scalar_t>(), *om = gm.data_ptr<scalar_t>();
    // Visible tokens: ids_restore is a permutation, so every row of gx is written once.
    parallel_rows(N * L, D, [&](int64_t r) {
      const int64_t v = pi[r];
      if (v < K) copy_row(ox + ((r / L) * K + v) * D, pg + r * D, D);
    });
    // Mask token: per-sample partial sums over its slots (in l order), then a sum
    // over samples in n order.
    std::vector<acc> partial(N * D, acc(0));
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        acc* dst = partial.data() + n * D;
        for (int64_t l = 0; l < L; ++l) {
          if (pi[n * L + l] < K) continue;
          const scalar_t* src = pg + (n * L + l) * D;
          int64_t d = 0;
          for (; d + IO::kWidth <= D; d += IO::kWidth)
            (IO::Vec::loadu(dst + d) + IO::load(src + d)).store(dst + d);
          for (; d < D; ++d) dst[d] += static_cast<acc>(src[d]);
        }
      }
    });
    at::parallel_for(0, D, 256, [&](int64_t begin, int64_t end) {
      for (int64_t d = begin; d < end; ++d) {
        acc s = 0;
        for (int64_t n = 0; n < N; ++n) s += partial[n * D + d];
        om[d] = static_cast<scalar_t>(s);
      }
    });
  });
  return {gx, gm};
}

// ---------------------------------------------------------------------------- patches
// Geometry of patch l of image n: the first pixel of its row pi, channel c.
struct PatchGeom {
  int64_t C, H, W, p, w, L, P;
  PatchGeom(int64_t C_, int64_t H_, int64_t W_, int64_t p_)
      : C(C_), H(H_), W(W_), p(p_), w(W_ / p_), L((H_ / p_) * (W_ / p_)), P(p_ * p_ * C_) {}
  int64_t pixel(int64_t n, int64_t l, int64_t c, int64_t pi) const {
    return ((n * C + c) * H + (l / w) * p + pi) * W + (l % w) * p;
  }
};

// dst[(pi*p + pj)*C + c] = the patch's pixels, in the accumulation type.
template <typename scalar_t, typename out_t>
inline void load_patch(const scalar_t* img, const PatchGeom& g, int64_t n, int64_t l, out_t* dst) {
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t pi = 0; pi < g.p; ++pi) {
      const scalar_t* src = img + g.pixel(n, l, c, pi);
      out_t* d = dst + pi * g.p * g.C + c;
      for (int64_t pj = 0; pj < g.p; ++pj) d[pj * g.C] = static_cast<out_t>(src[pj]);
    }
}

at::Tensor gather_patches_cpu(const at::Tensor& imgs_, const at::Tensor& ids_, int64_t p) {
  const char* op = "pykernels::gather_patches";
  check_float_tensor(op, "imgs", imgs_, 4, at::kCPU);
  check_ids(op, "ids_keep", ids_, "imgs", imgs_);
  check_patches(op, p, imgs_.size(2), imgs_.size(3));
  const auto imgs = imgs_.contiguous(), ids = ids_.contiguous();
  const PatchGeom g(imgs.size(1), imgs.size(2), imgs.size(3), p);
  const int64_t N = imgs.size(0), K = ids.size(1);
  check_id_values(op, "ids_keep", ids, g.L);
  auto out = at::empty({N, K, g.P}, imgs.options());
  if (out.numel() == 0) return out;
  const int64_t* pi = ids.const_data_ptr<int64_t>();
  PK_DISPATCH_FLOATING(imgs.scalar_type(), "gather_patches_cpu", [&] {
    const scalar_t* px = imgs.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    parallel_rows(N * K, g.P, [&](int64_t r) { load_patch(px, g, r / K, pi[r], po + r * g.P); });
  });
  return out;
}

at::Tensor gather_patches_backward_cpu(const at::Tensor& grad_, const at::Tensor& ids_, int64_t p,
                                       int64_t C, int64_t H, int64_t W) {
  const char* op = "pykernels::gather_patches_backward";
  check_float_tensor(op, "grad", grad_, 3, at::kCPU);
  check_ids(op, "ids_keep", ids_, "grad", grad_);
  TORCH_CHECK_VALUE(C > 0, op, ": argument 'channels' must be > 0, got ", C);
  check_count(op, "height", H);
  check_count(op, "width", W);
  check_patches(op, p, H, W);
  TORCH_CHECK_VALUE(grad_.size(1) == ids_.size(1) && grad_.size(2) == p * p * C, op,
                    ": argument 'grad' must have shape [", grad_.size(0), ", ", ids_.size(1), ", ",
                    p * p * C, "], got ", grad_.sizes());
  const auto grad = grad_.contiguous(), ids = ids_.contiguous();
  const PatchGeom g(C, H, W, p);
  const int64_t N = grad.size(0), K = ids.size(1);
  check_id_values(op, "ids_keep", ids, g.L);
  auto out = at::empty({N, C, H, W}, grad.options());
  if (out.numel() == 0) return out;
  const auto inv = invert_ids(ids, g.L);
  PK_DISPATCH_FLOATING(grad.scalar_type(), "gather_patches_backward_cpu", [&] {
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    // One task per image row (n, c, y): every pixel is written once, in image order.
    parallel_rows(N * C * H, W, [&](int64_t row) {
      const int64_t y = row % H, c = (row / H) % C, n = row / (H * C);
      const int64_t i = y / p, pi = y % p;
      scalar_t* dst = po + row * W;
      for (int64_t j = 0; j < g.w; ++j, dst += p) {
        const int64_t k = inv[n * g.L + i * g.w + j];
        if (k < 0) {
          zero_row(dst, p);
          continue;
        }
        const scalar_t* src = pg + (n * K + k) * g.P + pi * p * C + c;
        for (int64_t pj = 0; pj < p; ++pj) dst[pj] = src[pj * C];
      }
    });
  });
  return out;
}

// ---------------------------------------------------------------------------- loss
template <typename acc>
inline acc vsum(const at::vec::Vectorized<acc>& v) {
  return at::vec::vec_reduce_all<acc>(
      [](at::vec::Vectorized<acc>& a, at::vec::Vectorized<acc>& b) { return a + b; }, v);
}

// Mean and 1/std of a target patch, or (0, 1) without norm_pix_loss: MAE's
// (t - mean) / sqrt(var + 1e-6) with the unbiased variance. One vectorised pass over
// t - t[0]: the shift keeps the sum of squares from cancelling.
template <typename acc>
inline std::pair<acc, acc> target_norm(const acc* t, int64_t P, bool norm) {
  using V = at::vec::Vectorized<acc>;
  if (!norm || P == 0) return {acc(0), acc(1)};  // P == 0: the loss is 0 / 0 = NaN anyway
  const acc k = t[0];
  V vs(0), vss(0);
  const V vk(k);
  int64_t e = 0;
  for (; e + V::size() <= P; e += V::size()) {
    const V d = V::loadu(t + e) - vk;
    vs = vs + d;
    vss = at::vec::fmadd(d, d, vss);
  }
  acc s = vsum(vs), ss = vsum(vss);
  for (; e < P; ++e) {
    s += t[e] - k;
    ss += (t[e] - k) * (t[e] - k);
  }
  const acc mean_d = s / acc(P);
  const acc var = std::max(ss - s * mean_d, acc(0)) / acc(P - 1);
  return {k + mean_d, acc(1) / std::sqrt(var + acc(1e-6))};
}

// f(r, pred row, raw target row (acc), mean, rstd) for every patch r = n*L + l; the
// normalised target is (t - mean) * rstd.
template <typename scalar_t, typename F>
void for_each_patch_target(const at::Tensor& pred, const at::Tensor& imgs, int64_t p, bool norm, F&& f) {
  using acc = acc_t<scalar_t>;
  const PatchGeom g(imgs.size(1), imgs.size(2), imgs.size(3), p);
  const int64_t rows = imgs.size(0) * g.L;
  const scalar_t *pp = pred.const_data_ptr<scalar_t>(), *px = imgs.const_data_ptr<scalar_t>();
  at::parallel_for(0, rows, row_grain(g.P), [&](int64_t begin, int64_t end) {
    std::vector<acc> t(g.P);
    for (int64_t r = begin; r < end; ++r) {
      load_patch(px, g, r / g.L, r % g.L, t.data());
      const auto [mean, rstd] = target_norm(t.data(), g.P, norm);
      f(r, pp + r * g.P, t.data(), mean, rstd);
    }
  });
}

// sum_e (x[e] - (t[e] - mean) rstd)^2, vectorised.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline acc squared_error(const scalar_t* x, const acc* t, int64_t P, acc mean, acc rstd) {
  using IO = VecIO<scalar_t>;
  using V = typename IO::Vec;
  const V vm(mean), vr(rstd);
  V vs(0);
  int64_t e = 0;
  for (; e + IO::kWidth <= P; e += IO::kWidth) {
    const V d = IO::load(x + e) - (V::loadu(t + e) - vm) * vr;
    vs = at::vec::fmadd(d, d, vs);
  }
  acc s = vsum(vs);
  for (; e < P; ++e) {
    const acc d = static_cast<acc>(x[e]) - (t[e] - mean) * rstd;
    s += d * d;
  }
  return s;
}

// out[e] = k (x[e] - (t[e] - mean) rstd), vectorised.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline void scaled_error(const scalar_t* x, const acc* t, int64_t P, acc mean, acc rstd, acc k, scalar_t* out) {
  using IO = VecIO<scalar_t>;
  using V = typename IO::Vec;
  const V vm(mean), vr(rstd), vk(k);
  int64_t e = 0;
  for (; e + IO::kWidth <= P; e += IO::kWidth)
    IO::store(out + e, vk * (IO::load(x + e) - (V::loadu(t + e) - vm) * vr));
  for (; e < P; ++e) out[e] = static_cast<scalar_t>(k * (static_cast<acc>(x[e]) - (t[e] - mean) * rstd));
}

at::Tensor patch_mse_cpu(const at::Tensor& pred_, const at::Tensor& imgs_, int64_t p, bool norm) {
  const char* op = "pykernels::patch_mse";
  check_pred_imgs(op, pred_, imgs_, p, at::kCPU);
  const auto pred = pred_.contiguous(), imgs = imgs_.contiguous();
  auto out = at::empty({pred.size(0), pred.size(1)}, pred.options().dtype(at::toOpMathType(pred.scalar_type())));
  if (out.numel() == 0) return out;
  PK_DISPATCH_FLOATING(pred.scalar_type(), "patch_mse_cpu", [&] {
    using acc = acc_t<scalar_t>;
    acc* po = out.data_ptr<acc>();
    const int64_t P = pred.size(2);
    for_each_patch_target<scalar_t>(pred, imgs, p, norm, [&](int64_t r, const scalar_t* x, const acc* t, acc mean, acc rstd) {
      po[r] = squared_error(x, t, P, mean, rstd) / acc(P);
    });
  });
  return out;
}

at::Tensor patch_mse_backward_cpu(const at::Tensor& grad_, const at::Tensor& pred_, const at::Tensor& imgs_,
                                  int64_t p, bool norm) {
  const char* op = "pykernels::patch_mse_backward";
  check_pred_imgs(op, pred_, imgs_, p, at::kCPU);
  check_float(op, "grad", grad_);
  check_same_device(op, "grad", grad_, "pred", pred_);
  TORCH_CHECK_VALUE(grad_.dim() == 2 && grad_.size(0) == pred_.size(0) && grad_.size(1) == pred_.size(1), op,
                    ": argument 'grad' must have shape [", pred_.size(0), ", ", pred_.size(1), "], got ",
                    grad_.sizes());
  const auto pred = pred_.contiguous(), imgs = imgs_.contiguous();
  auto out = at::empty_like(pred);
  if (out.numel() == 0) return out;
  PK_DISPATCH_FLOATING(pred.scalar_type(), "patch_mse_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const acc* pg = grad.const_data_ptr<acc>();
    scalar_t* po = out.data_ptr<scalar_t>();
    const int64_t P = pred.size(2);
    for_each_patch_target<scalar_t>(pred, imgs, p, norm, [&](int64_t r, const scalar_t* x, const acc* t, acc mean, acc rstd) {
      // d mean((x - t)^2) / dx = 2 (x - t) / P
      scaled_error(x, t, P, mean, rstd, acc(2) * pg[r] / acc(P), po + r * P);
    });
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("gather_tokens", &gather_tokens_cpu);
  m.impl("gather_tokens_backward", &gather_tokens_backward_cpu);
  m.impl("unshuffle_with_mask_tokens", &unshuffle_with_mask_tokens_cpu);
  m.impl("unshuffle_with_mask_tokens_backward", &unshuffle_with_mask_tokens_backward_cpu);
  m.impl("gather_patches", &gather_patches_cpu);
  m.impl("gather_patches_backward", &gather_patches_backward_cpu);
  m.impl("patch_mse", &patch_mse_cpu);
  m.impl("patch_mse_backward", &patch_mse_backward_cpu);
}
