// The CPU kernels of the flow-matching family, compiled once per CPU capability: included
// by flow_matching.cpp (baseline flags, namespace `generic`) and by flow_matching_avx2.cpp
// (AVX2 + FMA, namespace `avx2`), which define PK_FLOW_NS first. flow_matching.cpp picks
// one at run time (the baseline at::vec is scalar code: 2-4x slower on these streams).
// No include guard around the kernels: each translation unit includes this once.
//
// Tensors are [N, D] (N samples, sigmas [N] in the accumulation type). The work is split
// into fixed chunks of kFlowChunk elements of one sample (at::parallel_for over N x
// chunks); a chunk computes its sample's coefficients once, then streams the elements in
// blocks of at::vec vectors of the accumulation type (Block: half types are widened on
// load and rounded once on store). Per-sample sums are summed per chunk in a fixed order
// and the chunks added in order: results do not depend on the thread count. The passes,
// with a = 1 - sigma, b = sigma, dt = sigma_next - sigma and d = m - (eps - x0):
//   axpby       out = p x + q y     (interpolate: p = a, q = b; Euler step: p = 1, q = dt)
//   scale_pair  gx = p g, gy = q g  (interpolate backward: p = a, q = b)
//   scale       gm = dt g           (Euler step backward; the sample's gradient is g)
//   loss_sum    sum_i d_i^2 (and x_t = a x0 + b eps by axpby, when asked)
//   loss_grad   h = k d, k = 2 c(sigma) g_n / D: gm = h, gx0 = h + a gx_t, geps = b gx_t - h
#ifndef PK_FLOW_NS
#error "define PK_FLOW_NS before including cpu/flow_matching_kernels.h"
#endif

#ifndef PK_FLOW_MATCHING_KERNEL_TABLE
#define PK_FLOW_MATCHING_KERNEL_TABLE
namespace pykernels {
namespace cpu {
using FlowTensor = const at::Tensor&;

// The kernels of one build. Tensors are contiguous, outputs allocated by the caller;
// sigmas, sigmas_next, grad (of the loss) and partial are in the accumulation dtype. An
// undefined tensor is an output nobody asked for (or the absent gradient of x_t).
struct FlowKernels {
  void (*interpolate)(FlowTensor x0, FlowTensor noise, FlowTensor sigmas, FlowTensor out);
  void (*interpolate_backward)(FlowTensor grad, FlowTensor sigmas, FlowTensor grad_x0,
                               FlowTensor grad_noise);
  // partial [N, C]: c(sigma) sum_i d_i^2 / D over each chunk; noisy: x_t or undefined.
  void (*loss)(FlowTensor m, FlowTensor x0, FlowTensor noise, FlowTensor sigmas,
               flow_matching::LossArgs args, FlowTensor partial, FlowTensor noisy);
  void (*loss_backward)(FlowTensor grad, FlowTensor grad_noisy, FlowTensor m, FlowTensor x0,
                        FlowTensor noise, FlowTensor sigmas, flow_matching::LossArgs args,
                        const std::array<at::Tensor, 3>& out);
  void (*euler_step)(FlowTensor m, FlowTensor sample, FlowTensor sigmas, FlowTensor sigmas_next,
                     FlowTensor out);
  void (*euler_step_backward)(FlowTensor grad, FlowTensor sigmas, FlowTensor sigmas_next,
                              FlowTensor grad_m);
};

constexpr int64_t kFlowChunk = 16384;

// [N, D] samples split into C chunks of kFlowChunk elements each.
struct FlowSamples {
  int64_t N, D, C;
};

inline int64_t flow_chunks(int64_t D) {
  return std::max<int64_t>(1, (D + kFlowChunk - 1) / kFlowChunk);
}
}  // namespace cpu
}  // namespace pykernels
#endif

namespace pykernels {
namespace cpu {
namespace PK_FLOW_NS {
namespace {

using flow_matching::loss_weight;
using flow_matching::LossArgs;

#ifdef CPU_CAPABILITY_AVX2
// at::vec must have been included inside the AVX2 region, not before it.
static_assert(at::vec::Vectorized<float>::size() == 8, "the AVX2 build got baseline at::vec");
#endif

inline FlowSamples samples_of(FlowTensor x) {
  const int64_t N = x.size(0), D = N == 0 ? 0 : x.numel() / N;
  return {N, D, flow_chunks(D)};
}

// f(n, c, begin, end) for chunk c = [begin, end) of sample n, every chunk of every sample.
// A task gets at least ~32K elements (ATen's grain): small tensors run on the calling
// thread, where waking the pool would cost more than the work (and, on a loaded machine,
// waits for a descheduled thread).
template <typename F>
inline void for_each_chunk(const FlowSamples& s, F&& f) {
  const int64_t per_chunk = std::max<int64_t>(1, std::min(s.D, kFlowChunk));
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / per_chunk);
  at::parallel_for(0, s.N * s.C, grain, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const int64_t n = i / s.C, c = i % s.C;
      f(n, c, c * kFlowChunk, std::min(s.D, (c + 1) * kFlowChunk));
    }
  });
}

// The elements one step of a pass moves: one Vectorized<scalar_t>, as kVecs vectors of
// the accumulation type (16 half / bfloat16 values are two float vectors, converted in
// registers both ways; float and double are one vector). Converting a single float
// vector to half precision would go through memory element by element: 5x slower.
template <typename scalar_t>
struct Block {
  using acc = acc_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, acc>;
  static constexpr int kVecs = kReduced ? 2 : 1;
  static constexpr int64_t kSize = kVecs * Vec::size();
  std::array<Vec, kVecs> v;

  // len <= kSize elements from p; the rest of the block is 0.
  static Block load(const scalar_t* p, int64_t len) {
    if (len < kSize) {
      scalar_t buf[kSize] = {};
      std::copy(p, p + len, buf);
      return load(buf, kSize);
    }
    if constexpr (kReduced) {
      const auto raw = at::vec::Vectorized<scalar_t>::loadu(p);
      const auto [lo, hi] = at::vec::convert_to_float<scalar_t>(raw);
      return {{lo, hi}};
    } else {
      return {{Vec::loadu(p)}};
    }
  }
  void store(scalar_t* p, int64_t len) const {
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p, len);
    } else {
      v[0].store(p, len);
    }
  }
  static Block fill(acc x) {
    Block b;
    b.v.fill(Vec(x));
    return b;
  }
};

// out.v[k] = f(in.v[k]...) for each vector of the blocks.
template <typename scalar_t, typename F, typename... In>
inline Block<scalar_t> map(F&& f, const In&... in) {
  Block<scalar_t> out;
  for (int k = 0; k < Block<scalar_t>::kVecs; ++k) out.v[k] = f(in.v[k]...);
  return out;
}

// f(i, len) for the blocks [i, i + len) of [0, size): len = kSize but for the last.
template <typename scalar_t, typename F>
inline void for_each_block(int64_t size, F&& f) {
  constexpr int64_t W = Block<scalar_t>::kSize;
  int64_t i = 0;
  for (; i + W <= size; i += W) f(i, W);
  if (i < size) f(i, size - i);
}

// ------------------------------------------------------------------------------ passes
// out = p x + q y
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline void axpby(const scalar_t* x, const scalar_t* y, acc p, acc q, scalar_t* out, int64_t size) {
  using B = Block<scalar_t>;
  const typename B::Vec vp(p), vq(q);
  const auto f = [&](const auto& a, const auto& b) { return vp * a + vq * b; };
  for_each_block<scalar_t>(size, [&](int64_t i, int64_t len) {
    map<scalar_t>(f, B::load(x + i, len), B::load(y + i, len)).store(out + i, len);
  });
}

// gx = p g, gy = q g
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline void scale_pair(const scalar_t* g, acc p, acc q, scalar_t* gx, scalar_t* gy, int64_t size) {
  using B = Block<scalar_t>;
  const typename B::Vec vp(p), vq(q);
  for_each_block<scalar_t>(size, [&](int64_t i, int64_t len) {
    const B vg = B::load(g + i, len);
    map<scalar_t>([&](const auto& a) { return vp * a; }, vg).store(gx + i, len);
    map<scalar_t>([&](const auto& a) { return vq * a; }, vg).store(gy + i, len);
  });
}

// out = p g
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline void scale(const scalar_t* g, acc p, scalar_t* out, int64_t size) {
  using B = Block<scalar_t>;
  const typename B::Vec vp(p);
  for_each_block<scalar_t>(size, [&](int64_t i, int64_t len) {
    map<scalar_t>([&](const auto& a) { return vp * a; }, B::load(g + i, len)).store(out + i, len);
  });
}

// d = m - (eps - x0) of the block at i
template <typename scalar_t>
inline Block<scalar_t> velocity_error(const scalar_t* m, const scalar_t* x0, const scalar_t* eps,
                                      int64_t i, int64_t len) {
  using B = Block<scalar_t>;
  const auto f = [](const auto& mm, const auto& x, const auto& e) { return mm - (e - x); };
  return map<scalar_t>(f, B::load(m + i, len), B::load(x0 + i, len), B::load(eps + i, len));
}

// sum_i d_i^2 in four interleaved vector sums (one running sum would wait on the FMA
// latency every step), added in a fixed order. The padding of a partial block loads as
// 0, so its d is 0.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline acc loss_sum(const scalar_t* m, const scalar_t* x0, const scalar_t* eps, int64_t size) {
  using B = Block<scalar_t>;
  using V = typename B::Vec;
  constexpr int kPer = 4 / B::kVecs;  // blocks per iteration: four vectors
  V sum[4] = {V(0), V(0), V(0), V(0)};
  int64_t i = 0;
  for (; i + kPer * B::kSize <= size; i += kPer * B::kSize) {
    for (int j = 0; j < kPer; ++j) {
      const B d = velocity_error(m, x0, eps, i + j * B::kSize, B::kSize);
      for (int k = 0; k < B::kVecs; ++k) {
        V& s = sum[j * B::kVecs + k];
        s = at::vec::fmadd(d.v[k], d.v[k], s);
      }
    }
  }
  for_each_block<scalar_t>(size - i, [&](int64_t j, int64_t len) {
    const B d = velocity_error(m + i, x0 + i, eps + i, j, len);
    for (int k = 0; k < B::kVecs; ++k) sum[k] = at::vec::fmadd(d.v[k], d.v[k], sum[k]);
  });
  const V total = (sum[0] + sum[1]) + (sum[2] + sum[3]);
  return at::vec::vec_reduce_all<acc>([](V& u, V& w) { return u + w; }, total);
}

// The gradients of one chunk: null where nobody asked for one; gx_t null when x_t was
// not returned (or its gradient does not reach x0 / noise).
template <typename scalar_t>
struct LossGrads {
  const scalar_t* gx_t;
  scalar_t *gm, *gx0, *geps;
};

// h = k d: gm = h, gx0 = h + a gx_t, geps = b gx_t - h (the null checks are per block).
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline void loss_grad(const scalar_t* m, const scalar_t* x0, const scalar_t* eps, acc k, acc a,
                      acc b, const LossGrads<scalar_t>& g, int64_t size) {
  using B = Block<scalar_t>;
  const typename B::Vec vk(k), va(a), vb(b);
  const auto to_x0 = [&](const auto& h, const auto& t) { return at::vec::fmadd(va, t, h); };
  const auto to_eps = [&](const auto& h, const auto& t) { return at::vec::fmsub(vb, t, h); };
  for_each_block<scalar_t>(size, [&](int64_t i, int64_t len) {
    const B d = velocity_error(m, x0, eps, i, len);
    const B h = map<scalar_t>([&](const auto& e) { return vk * e; }, d);
    if (g.gm != nullptr) h.store(g.gm + i, len);
    const B gxt = g.gx_t != nullptr ? B::load(g.gx_t + i, len) : B::fill(acc(0));
    if (g.gx0 != nullptr) map<scalar_t>(to_x0, h, gxt).store(g.gx0 + i, len);
    if (g.geps != nullptr) map<scalar_t>(to_eps, h, gxt).store(g.geps + i, len);
  });
}

template <typename T>
inline T* ptr_or_null(FlowTensor t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// ------------------------------------------------------------------------------ kernels
void interpolate(FlowTensor x0, FlowTensor noise, FlowTensor sigmas, FlowTensor out) {
  const FlowSamples s = samples_of(x0);
  PK_DISPATCH_FLOATING(x0.scalar_type(), "flow_interpolate_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc* ps = sigmas.const_data_ptr<acc>();
    const scalar_t *px = x0.const_data_ptr<scalar_t>(), *pn = noise.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    for_each_chunk(s, [&](int64_t n, int64_t, int64_t b, int64_t e) {
      const int64_t o = n * s.D + b;
      axpby<scalar_t>(px + o, pn + o, acc(1) - ps[n], ps[n], po + o, e - b);
    });
  });
}

void interpolate_backward(FlowTensor grad, FlowTensor sigmas, FlowTensor grad_x0,
                          FlowTensor grad_noise) {
  const FlowSamples s = samples_of(grad);
  PK_DISPATCH_FLOATING(grad.scalar_type(), "flow_interpolate_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc* ps = sigmas.const_data_ptr<acc>();
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t *ox = grad_x0.data_ptr<scalar_t>(), *on = grad_noise.data_ptr<scalar_t>();
    for_each_chunk(s, [&](int64_t n, int64_t, int64_t b, int64_t e) {
      const int64_t o = n * s.D + b;
      scale_pair<scalar_t>(pg + o, acc(1) - ps[n], ps[n], ox + o, on + o, e - b);
    });
  });
}

void loss(FlowTensor m, FlowTensor x0, FlowTensor noise, FlowTensor sigmas, LossArgs args,
          FlowTensor partial, FlowTensor noisy) {
  const FlowSamples s = samples_of(m);
  PK_DISPATCH_FLOATING(m.scalar_type(), "flow_matching_loss_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc* ps = sigmas.const_data_ptr<acc>();
    acc* pp = partial.data_ptr<acc>();
    const scalar_t *pm = m.const_data_ptr<scalar_t>(), *px = x0.const_data_ptr<scalar_t>(),
                   *pn = noise.const_data_ptr<scalar_t>();
    scalar_t* pxt = ptr_or_null<scalar_t>(noisy);
    for_each_chunk(s, [&](int64_t n, int64_t c, int64_t b, int64_t e) {
      const int64_t o = n * s.D + b;
      // x_t in its own pass over the chunk, which is still in cache (16384 elements)
      if (pxt != nullptr) axpby<scalar_t>(px + o, pn + o, acc(1) - ps[n], ps[n], pxt + o, e - b);
      const acc sum = loss_sum<scalar_t>(pm + o, px + o, pn + o, e - b);
      const acc c_n = loss_weight<acc>(args.weighting, args.precondition, ps[n]);
      pp[n * s.C + c] = c_n * sum / acc(s.D);
    });
  });
}

void loss_backward(FlowTensor grad, FlowTensor grad_noisy, FlowTensor m, FlowTensor x0,
                   FlowTensor noise, FlowTensor sigmas, LossArgs args,
                   const std::array<at::Tensor, 3>& out) {
  const FlowSamples s = samples_of(m);
  PK_DISPATCH_FLOATING(m.scalar_type(), "flow_matching_loss_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc *ps = sigmas.const_data_ptr<acc>(), *pg = grad.const_data_ptr<acc>();
    const scalar_t *pm = m.const_data_ptr<scalar_t>(), *px = x0.const_data_ptr<scalar_t>(),
                   *pn = noise.const_data_ptr<scalar_t>();
    const scalar_t* pgxt = grad_noisy.defined() ? grad_noisy.const_data_ptr<scalar_t>() : nullptr;
    scalar_t *pgm = ptr_or_null<scalar_t>(out[0]), *pgx = ptr_or_null<scalar_t>(out[1]),
             *pge = ptr_or_null<scalar_t>(out[2]);
    const auto at_chunk = [](auto* p, int64_t o) { return p != nullptr ? p + o : nullptr; };
    for_each_chunk(s, [&](int64_t n, int64_t, int64_t b, int64_t e) {
      const int64_t o = n * s.D + b;
      const acc c_n = loss_weight<acc>(args.weighting, args.precondition, ps[n]);
      const acc k = acc(2) * c_n * pg[n] / acc(s.D);
      const LossGrads<scalar_t> g{at_chunk(pgxt, o), at_chunk(pgm, o), at_chunk(pgx, o),
                                  at_chunk(pge, o)};
      loss_grad<scalar_t>(pm + o, px + o, pn + o, k, acc(1) - ps[n], ps[n], g, e - b);
    });
  });
}

void euler_step(FlowTensor m, FlowTensor sample, FlowTensor sigmas, FlowTensor sigmas_next,
                FlowTensor out) {
  const FlowSamples s = samples_of(sample);
  PK_DISPATCH_FLOATING(sample.scalar_type(), "flow_match_euler_step_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc *ps = sigmas.const_data_ptr<acc>(), *pq = sigmas_next.const_data_ptr<acc>();
    const scalar_t *pm = m.const_data_ptr<scalar_t>(), *px = sample.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    for_each_chunk(s, [&](int64_t n, int64_t, int64_t b, int64_t e) {
      const int64_t o = n * s.D + b;
      axpby<scalar_t>(px + o, pm + o, acc(1), pq[n] - ps[n], po + o, e - b);
    });
  });
}

void euler_step_backward(FlowTensor grad, FlowTensor sigmas, FlowTensor sigmas_next,
                         FlowTensor grad_m) {
  const FlowSamples s = samples_of(grad);
  PK_DISPATCH_FLOATING(grad.scalar_type(), "flow_match_euler_step_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc *ps = sigmas.const_data_ptr<acc>(), *pq = sigmas_next.const_data_ptr<acc>();
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* po = grad_m.data_ptr<scalar_t>();
    for_each_chunk(s, [&](int64_t n, int64_t, int64_t b, int64_t e) {
      const int64_t o = n * s.D + b;
      scale<scalar_t>(pg + o, pq[n] - ps[n], po + o, e - b);
    });
  });
}

}  // namespace

const FlowKernels& flow_kernels() {
  static const FlowKernels k{&interpolate,   &interpolate_backward, &loss,
                             &loss_backward, &euler_step,           &euler_step_backward};
  return k;
}

}  // namespace PK_FLOW_NS
}  // namespace cpu
}  // namespace pykernels
