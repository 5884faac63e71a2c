// CPU kernels of the distillation family. distillation_loss, cross_entropy and
// soft_target_cross_entropy are one row kernel (DistillationRow); scale_grad is the
// backward of all three.
//
// Files: cpu/distillation.cpp holds the ops (argument checks, label checks, the choice of
// build) and includes this header with the baseline flags (namespace `generic`);
// cpu/distillation_avx2.cpp includes it again inside an AVX2 + FMA region (namespace
// `avx2`; docs/design.md, "CPU builds per instruction set"). The baseline build's at::vec
// is scalar (one std::exp per element, several times slower); the op runs the AVX2 build on
// any CPU that has AVX2, FMA and F16C. No include guard: each file includes this header once.
//
// Each thread takes whole rows, in at::vec vectors of the accumulation dtype (float32;
// float64 for float64 inputs; bfloat16 and float16 are widened on load), in a fixed order
// (deterministic). The passes over one row, in blocks of kBlock elements:
//   row_sums    online softmax statistics: per block, the block's maxima raise the running
//               maxima ms, mt (the sums so far are rescaled), then with ds = (s - ms) / T,
//               dt = (t - mt) / T, e = exp(ds), f = exp(dt): Za = sum e, Zb = sum f and the
//               soft term's sum (RowSums). e, f go to per-thread scratch rows, relative to the
//               block's maxima. This is the one pass that reads the row from memory.
//   jsd_sums    (0 < beta < 1 only) KS = sum p_S log(p_S / m), KT = sum p_T log(p_T / m)
//   row_loss    the row's loss from the sums (scalar)
//   row_grads   d loss / d logits (and d loss / d teacher) from the scratch rows (the row is
//               in L2 cache), written in the forward so that the backward only scales it by
//               the upstream gradient (scale_grad)
// Masked vocabularies: a logit of -inf is a probability of exactly 0, and every term that
// probability weighs is 0 (0 log 0 = 0), never 0 * -inf = nan (zero_where).
#ifndef PK_DISTILLATION_NS
#error "define PK_DISTILLATION_NS before including cpu/distillation_kernels.h"
#endif

namespace pykernels {
namespace cpu {
namespace PK_DISTILLATION_NS {
namespace {

#ifdef CPU_CAPABILITY_AVX2
// at::vec must have been included inside the AVX2 region, not before it.
static_assert(at::vec::Vectorized<float>::size() == 8, "the AVX2 build got baseline at::vec");
#endif

// Which soft term a row computes (a template argument: each gets its own loops).
enum class Soft { kNone, kForwardKL, kReverseKL, kJSD, kTargetProbs };

inline Soft soft_of(const DistillationSettings& st) {
  if (st.soft == SoftTarget::kTargetProbs) return Soft::kTargetProbs;
  if (st.soft == SoftTarget::kNone) return Soft::kNone;
  return st.beta == 0 ? Soft::kForwardKL : st.beta == 1 ? Soft::kReverseKL : Soft::kJSD;
}

// exp(x) for x <= 88, 0 for x < -88 (and -inf). float: about 2 ulp for the cost of at::vec's
// exp_u20, whose 20 ulp in the softmax weights of close distributions came to several times
// PyTorch's own float32 error (test_fuzz_distillation): Cody-Waite reduction x = n ln2 + r,
// exp(r) = 1 + r + r^2 P(r) with Cephes' expf polynomial, times 2^n from the exponent bits
// (n = -127 below -88 gives the bits of 0).
template <typename Vec>
inline Vec vexp(const Vec& x) {
  if constexpr (std::is_same_v<typename Vec::value_type, float>) {
    const Vec y = at::vec::clamp_min(x, Vec(-88.0f));
    const Vec n = (y * Vec(1.44269504088896341f)).round();
    const Vec r_hi = at::vec::fnmadd(n, Vec(0.693359375f), y);  // ln 2 in two parts
    const Vec r = at::vec::fnmadd(n, Vec(-2.12194440e-4f), r_hi);
    Vec poly(1.9875691500e-4f);
    for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f,
                          5.0000001201e-1f}) {
      poly = at::vec::fmadd(poly, r, Vec(c));
    }
    poly = at::vec::fmadd(poly, r * r, r + Vec(1.0f));
    // 2^n: the float bits (n + 127) 2^23, formed exactly in float (|n| <= 127)
    const Vec biased = at::vec::fmadd(n, Vec(8388608.0f), Vec(1065353216.0f));
    return poly * at::vec::cast<float>(at::vec::convert_to_int_of_same_size(biased));
  } else {
    return x.exp();
  }
}

template <typename Vec>
inline typename Vec::value_type vsum(const Vec& v) {
  using T = typename Vec::value_type;
  return at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, v);
}

template <typename Vec>
inline typename Vec::value_type vmax(const Vec& v) {
  using T = typename Vec::value_type;
  return at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v);
}

// v where p != 0, else 0: a term weighted by a probability of exactly 0 is 0 (0 log 0 = 0),
// whatever its log-ratio (-inf, or nan for two -inf logits).
template <typename Vec>
inline Vec zero_where(const Vec& p, const Vec& v) {
  return Vec::blendv(v, Vec(0), p == Vec(0));
}

// The per-call constants of a row, in the accumulation dtype.
template <typename acc>
struct RowParams {
  int64_t V = 0, ignore_index = -100;
  acc inv_t = 1, c = 0, c_t = 0;     // 1 / T, soft_weight T, soft_weight T^2
  acc hw = 0, ls = 0, ls_v = 0;      // hard_weight, label_smoothing, label_smoothing / V
  acc beta = 0, omb = 0;             // beta and 1 - beta (from the float64 setting)
  acc log_b = 0, log_1b = 0;         // log beta, log(1 - beta)
  bool mirror = false;               // beta > 1/2 (jsd_ratios)
  acc grad_scale = 1;                // the gradients written are those of grad_scale * loss
  bool hard = false, hard1 = false;  // the hard term; with its own softmax (T != 1)
  bool smooth = false;               // the hard term's label smoothing
};

template <typename acc>
RowParams<acc> row_params(const DistillationSettings& st, int64_t V) {
  RowParams<acc> p;
  p.V = V;
  p.ignore_index = st.ignore_index;
  p.inv_t = acc(1.0 / st.temperature);
  p.c = acc(st.soft_weight * st.temperature);
  p.c_t = acc(st.soft_weight * st.temperature * st.temperature);
  p.hw = acc(st.hard_weight);
  p.ls = acc(st.label_smoothing);
  p.ls_v = acc(st.label_smoothing / double(V));
  p.beta = acc(st.beta);
  p.omb = acc(1.0 - st.beta);
  const bool jsd = st.beta > 0 && st.beta < 1;
  p.log_b = jsd ? acc(std::log(st.beta)) : acc(0);
  p.log_1b = jsd ? acc(std::log1p(-st.beta)) : acc(0);
  p.mirror = st.beta > 0.5;
  p.grad_scale = acc(st.grad_scale);
  p.hard = st.hard;
  p.hard1 = st.hard && st.temperature != 1.0;
  p.smooth = st.hard && st.label_smoothing != 0;
  return p;
}

// Vector sums over a row, two-level: each block of a row is summed on its own and then added
// to the total, so a row of 262144 elements rounds like one of kBlock.
template <typename Vec, size_t N>
struct BlockSums {
  std::array<Vec, N> block, total;
  BlockSums() {
    block.fill(Vec(0));
    total.fill(Vec(0));
  }
  Vec& operator[](size_t k) { return block[k]; }
  void flush() {
    for (size_t k = 0; k < N; ++k) {
      total[k] += block[k];
      block[k] = Vec(0);
    }
  }
  typename Vec::value_type sum(size_t k) const { return vsum(total[k]); }
};

// The sums of one row, relative to its maxima ms, mt (ds, dt, e, f as in the header).
template <typename acc>
struct RowSums {
  acc ms = 0, mt = 0;
  acc za = 1, zb = 1, lza = 0, lzb = 0;  // sum e, sum f and their logs
  acc lzba = 0;  // log(Zb / Za): one rounding of the ratio, not the difference of two logs
  acc w = 0;     // kForwardKL: sum f (dt - ds); kReverseKL: sum e (ds - dt); kTargetProbs: sum q ds
  acc q = 0;     // kTargetProbs: sum q
  acc z1 = 1, lz1 = 0;  // the hard term's softmax at T = 1: sum exp(s - ms) and its log
  acc ssum = 0;         // label smoothing: sum s
  acc ks = 0, kt = 0;   // kJSD: KL(p_S || m), KL(p_T || m)
};

// (new - old) / T for a maximum that grows from old to new: 0 when it did not change (also
// -inf to -inf), +inf from -inf (the sums so far are 0, or +inf terms that stay +inf).
template <typename acc>
inline acc shift(acc old_m, acc new_m, acc inv_t) {
  return new_m == old_m ? acc(0) : (new_m - old_m) * inv_t;
}

// A running maximum to subtract: 0 while it is -inf (every logit so far is -inf, and
// x - 0 = -inf gives exp = 0 where x - m would be nan).
template <typename acc>
inline acc finite_or_zero(acc m) {
  return m == -std::numeric_limits<acc>::infinity() ? acc(0) : m;
}

// The larger of a running maximum and a block's, nan once either is nan.
template <typename acc>
inline acc grow(acc m, acc block_max) {
  return (block_max > m || std::isnan(block_max)) ? block_max : m;
}

// Each gradient row sums to 0 (the loss does not change when every logit of the row moves by
// the same amount), so the element at the row's maximum can be minus the sum of the others.
// Forms p_j (a_j - sum_k p_k a_k) (a reverse KL's student, a KL's teacher) cancel at an
// element that holds almost all the probability: a difference of two numbers ~8 leaving
// ~1e-7 (test_confident_rows_gradient_meets_the_precision_contract). RestOfRow sums the
// other elements' gradients and writes minus that sum at the maximum where it is unique,
// holds more than half of the probability (dominant), the others do not cancel among
// themselves (their sum is at least 1/4 of their magnitudes) and the sum is finite.
template <typename Vec>
struct RestOfRowT {
  using acc = typename Vec::value_type;
  static constexpr int kW = Vec::size();
  Vec rest = Vec(0), magnitude = Vec(0);
  int64_t n_max = 0, at = 0;

  // g: the gradient of the n lanes at i; is_max: the lanes at the row's maximum.
  void add(const Vec& g, const Vec& is_max, int64_t i, int64_t n) {
    const int lanes = n == kW ? (1 << kW) - 1 : (1 << n) - 1;
    const int bits = ~is_max.zero_mask() & lanes;
    if (bits != 0) {
      if (n_max == 0) at = i + __builtin_ctz(bits);
      n_max += __builtin_popcount(bits);
    }
    const Vec other = Vec::set(Vec(0), Vec::blendv(g, Vec(0), is_max), n);
    rest += other;
    magnitude += other.abs();
  }
  // Writes minus the others' sum at the maximum, into out (scalar_t) or else buf (acc).
  template <typename scalar_t>
  void write(bool dominant, scalar_t* out, acc* buf) const {
    const acc sum = vsum(rest), mag = vsum(magnitude);
    if (n_max != 1 || !dominant || !std::isfinite(sum) || 4 * std::abs(sum) < mag) return;
    if (out != nullptr) {
      out[at] = scalar_t(-sum);
    } else {
      buf[at] = -sum;
    }
  }
};

// Per-thread scratch of DistillationRow: e, f and the hard term's exp(s - ms) for a row (V
// each), and the maxima each block's e, f were taken against.
template <typename acc>
struct Scratch {
  std::vector<acc> data;
  acc *es, *et, *e1, *bms, *bmt;
  Scratch(int64_t V, int64_t blocks) : data(3 * V + 2 * blocks) {
    es = data.data();
    et = es + V;
    e1 = et + V;
    bms = e1 + V;
    bmt = bms + blocks;
  }
};

// Maps the pages of a new output row in one call (Linux 5.14+; a hint, never an error),
// just before the row is written, so its freshly zeroed pages are still in cache: otherwise
// each 4 KB page of a new [rows, V] gradient costs a page fault at its first write, which
// for a [4096, 32000] float32 gradient took about as long as the kernel.
inline void map_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
  const uintptr_t page = 4096, a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t begin = (a + page - 1) & ~(page - 1), end = (a + bytes) & ~(page - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
#endif
}

// One row of the family's kernel. s: the logits; t: teacher logits, target probabilities or
// nothing (kSoft).
template <typename scalar_t, Soft kSoft>
struct DistillationRow {
  using acc = acc_t<scalar_t>;
  using IO = VecIO<scalar_t>;
  using Vec = typename IO::Vec;
  using RestOfRow = RestOfRowT<Vec>;
  static constexpr int64_t W = IO::kWidth;
  static constexpr int64_t kBlock = 1024;  // elements per block: 4 KB of float32 per input
  static constexpr bool kTeacherLogits =
      kSoft == Soft::kForwardKL || kSoft == Soft::kReverseKL || kSoft == Soft::kJSD;
  static constexpr acc kNegInf = -std::numeric_limits<acc>::infinity();
  static constexpr bool kHalf = !std::is_same_v<scalar_t, acc>;  // bfloat16, float16
  static constexpr int64_t kLine = 64 / sizeof(scalar_t);        // elements per cache line

  const RowParams<acc>& p;
  const Scratch<acc>& sc;

  static int64_t blocks(int64_t V) { return (V + kBlock - 1) / kBlock; }
  // f(k, begin, end) for each block k of the row.
  template <typename F>
  void for_each_block(F&& f) const {
    for (int64_t k = 0, b = 0; b < p.V; ++k, b += kBlock) f(k, b, std::min(p.V, b + kBlock));
  }
  // f(i, n) for each vector of [begin, end): n = W, then a tail of n < W elements.
  template <typename F>
  static void for_each_vector(int64_t begin, int64_t end, F&& f) {
    int64_t i = begin;
    for (; i + W <= end; i += W) f(i, W);
    if (i < end) f(i, end - i);
  }
  // n elements from x, the rest of the vector `fill`.
  static Vec load(const scalar_t* x, int64_t n, acc fill) {
    return n == W ? IO::load(x) : Vec::set(Vec(fill), IO::load(x, n), n);
  }
  static Vec load_acc(const acc* x, int64_t n) { return n == W ? Vec::loadu(x) : Vec::loadu(x, n); }

  // The largest of x[begin, end) (-inf when all are -inf, nan when one is nan).
  static acc block_max(const scalar_t* x, int64_t begin, int64_t end) {
    Vec m(kNegInf);
    for_each_vector(begin, end, [&](int64_t i, int64_t n) {
      m = at::vec::maximum(m, load(x + i, n, kNegInf));
    });
    return vmax(m);
  }

  // Block [begin, end) of the thread's next row into L2 while this row computes: the next
  // row's block maxima then read cache rather than wait for memory.
  static void prefetch_block(const scalar_t* next_s, const scalar_t* next_t, int64_t begin,
                             int64_t end) {
    for (int64_t i = begin; i < end; i += kLine) {
      if (next_s != nullptr) __builtin_prefetch(next_s + i, 0, 2);
      if (next_t != nullptr) __builtin_prefetch(next_t + i, 0, 2);
    }
  }

  // ---- row_sums: per block, raise the maxima (rescale), then add the block's e, f terms.
  // Sums b: 0 Za, 1 Zb, 2 w, 3 Q, 4 Z1 = sum exp(s - ms), 5 sum s.
  void row_sums(const scalar_t* s, const scalar_t* t, RowSums<acc>& r, const scalar_t* next_s,
                const scalar_t* next_t) const {
    BlockSums<Vec, 6> b;
    r.ms = kNegInf;
    r.mt = kTeacherLogits ? kNegInf : acc(0);
    for_each_block([&](int64_t k, int64_t begin, int64_t end) {
      const acc ms = grow(r.ms, block_max(s, begin, end));
      const acc mt = kTeacherLogits ? grow(r.mt, block_max(t, begin, end)) : acc(0);
      if (ms != r.ms || mt != r.mt) rescale(b, r, ms, mt);
      sc.bms[k] = r.ms = ms;
      sc.bmt[k] = r.mt = mt;
      prefetch_block(next_s, next_t, begin, end);
      block_sums(s, t, begin, end, r, b);
      b.flush();
    });
    r.za = b.sum(0);
    r.lza = std::log(r.za);
    if constexpr (kTeacherLogits) {
      r.zb = b.sum(1);
      r.lzb = std::log(r.zb);
      r.lzba = std::log(r.zb / r.za);
    }
    r.w = b.sum(2);
    r.q = b.sum(3);
    r.z1 = p.hard1 ? b.sum(4) : r.za;
    r.lz1 = p.hard1 ? std::log(r.z1) : r.lza;
    r.ssum = b.sum(5);
  }

  // The sums so far, taken against the maxima r.ms, r.mt, re-expressed against ms >= r.ms,
  // mt >= r.mt: sums of exponentials scale by exp(-sh); w also takes the shift of its
  // log-ratio, e.g. sum f (dt - ds) becomes exp(-sh_t) (w + Zb (sh_s - sh_t)). A sum that
  // is 0 stays 0 (no 0 * inf).
  void rescale(BlockSums<Vec, 6>& b, const RowSums<acc>& r, acc ms, acc mt) const {
    const acc sh_s = shift(r.ms, ms, p.inv_t), sh_t = shift(r.mt, mt, p.inv_t);
    const Vec a_s(std::exp(-sh_s)), a_t(std::exp(-sh_t));
    auto& z = b.total;
    if constexpr (kSoft == Soft::kForwardKL) {
      z[2] = zero_where(z[1], a_t * (z[2] + z[1] * Vec(sh_s - sh_t)));
    }
    if constexpr (kSoft == Soft::kReverseKL) {
      z[2] = zero_where(z[0], a_s * (z[2] + z[0] * Vec(sh_t - sh_s)));
    }
    if constexpr (kSoft == Soft::kTargetProbs) z[2] = zero_where(z[3], z[2] - z[3] * Vec(sh_s));
    z[0] = z[0] * a_s;
    z[1] = z[1] * a_t;
    if (p.hard1) z[4] = z[4] * Vec(std::exp(-shift(r.ms, ms, acc(1))));
  }

  // One block's terms, against the maxima r.ms, r.mt, into b's block sums. Tails load as
  // -inf logits (e = f = 0) and 0 targets. The sums are locals, and the hard term's (Z1,
  // sum s) have a loop of their own: a sum updated under a run-time flag stays live through
  // the loop, and with the exponential's constants that no longer fits in 16 registers.
  void block_sums(const scalar_t* s, const scalar_t* t, int64_t begin, int64_t end,
                  const RowSums<acc>& r, BlockSums<Vec, 6>& b) const {
    const Vec vms(finite_or_zero(r.ms)), vmt(finite_or_zero(r.mt)), vinv(p.inv_t);
    Vec za(0), zb(0), w(0), q(0);
    for_each_vector(begin, end, [&](int64_t i, int64_t n) {
      const Vec ds = (load(s + i, n, kNegInf) - vms) * vinv;
      const Vec e = vexp(ds);
      e.store(sc.es + i, n);
      za += e;
      if constexpr (kTeacherLogits) {
        const Vec dt = (load(t + i, n, kNegInf) - vmt) * vinv;
        const Vec f = vexp(dt);
        f.store(sc.et + i, n);
        zb += f;
        if constexpr (kSoft == Soft::kForwardKL) w += zero_where(f, f * (dt - ds));
        if constexpr (kSoft == Soft::kReverseKL) w += zero_where(e, e * (ds - dt));
      }
      if constexpr (kSoft == Soft::kTargetProbs) {
        const Vec qv = load(t + i, n, 0);
        q += qv;
        w += zero_where(qv, qv * ds);
      }
    });
    b[0] = za;
    b[1] = zb;
    b[2] = w;
    b[3] = q;
    if (p.hard1 || p.smooth) hard_block_sums(s, begin, end, r, b);
  }

  // The hard term's block sums: Z1 = sum exp(s - ms) (T != 1; exp(s - ms) to scratch) and
  // sum s (label smoothing).
  void hard_block_sums(const scalar_t* s, int64_t begin, int64_t end, const RowSums<acc>& r,
                       BlockSums<Vec, 6>& b) const {
    const Vec vms(finite_or_zero(r.ms));
    Vec z1(0), ss(0);
    for_each_vector(begin, end, [&](int64_t i, int64_t n) {
      const Vec x = load(s + i, n, kNegInf);
      if (p.hard1) {
        const Vec g = vexp(x - vms);
        g.store(sc.e1 + i, n);
        z1 += g;
      }
      if (p.smooth) ss += Vec::set(Vec(0), x, n);
    });
    b[4] = z1;
    b[5] = ss;
  }

  // Per block k: the factors that take its scratch e, f (e1) to probabilities,
  // exp((block maximum - row maximum) / T) / Z.
  struct BlockScale {
    Vec ps, pt, p1;
  };
  BlockScale block_scale(int64_t k, const RowSums<acc>& r) const {
    return {Vec(std::exp(-shift(sc.bms[k], r.ms, p.inv_t)) / r.za),
            Vec(std::exp(-shift(sc.bmt[k], r.mt, p.inv_t)) / r.zb),
            Vec(std::exp(-shift(sc.bms[k], r.ms, acc(1))) / r.z1)};
  }

  // (log p_S - log m, log p_T - log m), m = beta p_T + (1 - beta) p_S, from
  // x = log p_T - log p_S. Close distributions (|x| < 1), where log m - log p cancels:
  // log(m / p_S) = log1p(beta expm1(x)), or for beta > 1/2 its mirror image
  // log(m / p_T) = log1p((1 - beta) expm1(-x)) with 1 - beta from the float64 setting.
  // Elsewhere logaddexp: log m is the larger of log(beta p_T), log((1 - beta) p_S) plus
  // log1p(exp(-|d|)), d = x + log(beta / (1 - beta)), each ratio a difference of exact
  // terms (test_hard_cases_meet_the_precision_contract). A masked side has x = +-inf and
  // a ratio of -inf (dropped by zero_where); the other side's is -log beta or -log(1 - beta).
  std::pair<Vec, Vec> jsd_ratios(const Vec& x) const {
    const Vec zero(0), d = x + Vec(p.log_b - p.log_1b);
    const Vec e = (zero - d.abs()).exp().log1p(), up = d >= zero;
    const Vec ls_far = Vec::blendv(Vec(-p.log_1b), zero - x - Vec(p.log_b), up) - e;
    const Vec lt_far = Vec::blendv(x - Vec(p.log_1b), Vec(-p.log_b), up) - e;
    const Vec near = x.abs() < Vec(1), xn = Vec::blendv(zero, x, near);
    Vec ls_near, lt_near;
    if (p.mirror) {
      const Vec v = (Vec(p.omb) * (zero - xn).expm1()).log1p();
      ls_near = zero - v - xn;
      lt_near = zero - v;
    } else {
      const Vec u = (Vec(p.beta) * xn.expm1()).log1p();
      ls_near = zero - u;
      lt_near = xn - u;
    }
    return {Vec::blendv(ls_far, ls_near, near), Vec::blendv(lt_far, lt_near, near)};
  }

  // ---- jsd_sums: KS = sum p_S (log p_S - log m), KT = sum p_T (log p_T - log m)
  void jsd_sums(const scalar_t* s, const scalar_t* t, RowSums<acc>& r) const {
    const Vec vms(r.ms), vmt(r.mt), vinv(p.inv_t), lzba(r.lzba);
    BlockSums<Vec, 2> b;
    for_each_block([&](int64_t k, int64_t begin, int64_t end) {
      const BlockScale bs = block_scale(k, r);
      for_each_vector(begin, end, [&](int64_t i, int64_t n) {
        const Vec ds = (load(s + i, n, kNegInf) - vms) * vinv;
        const Vec dt = (load(t + i, n, kNegInf) - vmt) * vinv;
        const auto [ls_m, lt_m] = jsd_ratios((dt - ds) - lzba);
        const Vec ps = load_acc(sc.es + i, n) * bs.ps, pt = load_acc(sc.et + i, n) * bs.pt;
        b[0] += zero_where(ps, ps * ls_m);
        b[1] += zero_where(pt, pt * lt_m);
      });
      b.flush();
    });
    r.ks = b.sum(0);
    r.kt = b.sum(1);
  }

  // ---- row_loss: soft_weight T^2 D + soft-target CE + hard_weight CE, with
  // KL(p_T || p_S) = w / Zb - log(Zb / Za), KL(p_S || p_T) = w / Za + log(Zb / Za),
  // JSD = beta KT + (1 - beta) KS; soft-target CE = Q log Za - sum q ds;
  // CE = (1 - ls) (log Z1 - (s_y - ms)) + ls (log Z1 + ms - sum s / V).
  static acc kl(const RowSums<acc>& r) {
    return kSoft == Soft::kForwardKL ? r.w / r.zb - r.lzba : r.w / r.za + r.lzba;
  }
  acc row_loss(const RowSums<acc>& r, const scalar_t* s, int64_t y) const {
    acc loss = 0;
    if constexpr (kSoft == Soft::kForwardKL) loss = p.c_t * kl(r);
    if constexpr (kSoft == Soft::kReverseKL) loss = p.c_t * kl(r);
    if constexpr (kSoft == Soft::kJSD) loss = p.c_t * (p.beta * r.kt + p.omb * r.ks);
    if constexpr (kSoft == Soft::kTargetProbs) loss = r.q * r.lza - r.w;
    if (p.hard) {
      const acc nll = r.lz1 - (static_cast<acc>(s[y]) - r.ms);
      // without smoothing the mean over classes is not formed: a -inf logit would make it
      // inf, and 0 * inf = nan (F.cross_entropy's value; test_masked_vocabulary_*)
      const acc smooth = p.smooth ? p.ls * (r.lz1 + r.ms - r.ssum / acc(p.V)) : acc(0);
      loss += p.hw * ((1 - p.ls) * nll + smooth);
    }
    return loss;
  }

  // ---- row_grads: d loss / d s into gs, d loss / d t into gt (when given):
  //   kForwardKL   c (p_S - p_T);                      teacher c p_T (log p_T - log p_S - KL)
  //   kReverseKL   c p_S (log p_S - log p_T - KL);     teacher c (p_T - p_S)
  //   kJSD         c (1 - beta) p_S (log(p_S/m) - KS); teacher c beta p_T (log(p_T/m) - KT)
  //   kTargetProbs (Q p_S - q) / T;                    target  log Za - ds = -log p_S
  //   hard term    + hard_weight (p1 - ls / V - (1 - ls) [j == y]),  p1 = softmax(s)
  // with c = soft_weight T; probability-0 terms are 0 (zero_where). The forms p (a - mean a)
  // go through RestOfRow. Half types: each vector goes over its e (f) in the scratch row,
  // which at::vec::convert then rounds in one vectorised pass (IO::store would convert
  // lane by lane).
  void row_grads(const scalar_t* s, const scalar_t* t, int64_t y, const RowSums<acc>& r,
                 scalar_t* gs, scalar_t* gt) const {
    constexpr bool kRestS = kSoft == Soft::kReverseKL || kSoft == Soft::kJSD;
    constexpr bool kRestT = kSoft == Soft::kForwardKL || kSoft == Soft::kJSD;
    const Vec vms(r.ms), vmt(r.mt);
    RestOfRow rest_s, rest_t;
    for_each_block([&](int64_t k, int64_t begin, int64_t end) {
      const BlockScale bs = block_scale(k, r);
      for_each_vector(begin, end, [&](int64_t i, int64_t n) {
        const Vec ps = load_acc(sc.es + i, n) * bs.ps;
        Vec g(0), h(0);
        if constexpr (kTeacherLogits) {
          const Vec pt = load_acc(sc.et + i, n) * bs.pt;
          soft_grads(s + i, t + i, n, ps, pt, r, g, h, gt != nullptr);
        }
        if constexpr (kSoft == Soft::kTargetProbs) target_probs_grads(s + i, t + i, n, ps, r, g, h);
        if (p.hard) g = hard_grad(g, i, n, y, ps, bs.p1);
        g = g * Vec(p.grad_scale);
        h = h * Vec(p.grad_scale);
        if constexpr (kRestS) rest_s.add(g, load(s + i, n, kNegInf) == vms, i, n);
        if constexpr (kRestT) {
          if (gt != nullptr) rest_t.add(h, load(t + i, n, kNegInf) == vmt, i, n);
        }
        store_grads(g, h, i, n, gs, gt);
      });
    });
    // the maximum's probability is 1 / Za (1 / Zb), or 1 / Z1 for the hard term's softmax
    if (gs != nullptr) rest_s.write(r.za < 2 || (p.hard1 && r.z1 < 2), kHalf ? nullptr : gs, sc.es);
    if (gt != nullptr) rest_t.write(r.zb < 2, kHalf ? nullptr : gt, sc.et);
    if constexpr (kHalf) {
      if (gs != nullptr) at::vec::convert(sc.es, gs, p.V);
      if (gt != nullptr) at::vec::convert(sc.et, gt, p.V);
    }
  }

  void store_grads(const Vec& g, const Vec& h, int64_t i, int64_t n, scalar_t* gs,
                   scalar_t* gt) const {
    if constexpr (kHalf) {
      g.store(sc.es + i, n);
      h.store(sc.et + i, n);
    } else {
      if (gs != nullptr) IO::store(gs + i, g, n);
      if (gt != nullptr) IO::store(gt + i, h, n);
    }
  }

  // The soft term's gradients of one vector (row_grads' table); ps, pt: the probabilities.
  void soft_grads(const scalar_t* s, const scalar_t* t, int64_t n, const Vec& ps, const Vec& pt,
                  const RowSums<acc>& r, Vec& g, Vec& h, bool teacher) const {
    const Vec c(p.c), vinv(p.inv_t);
    // x = log p_T - log p_S
    auto x = [&] {
      const Vec ds = (load(s, n, kNegInf) - Vec(r.ms)) * vinv;
      return ((load(t, n, kNegInf) - Vec(r.mt)) * vinv - ds) - Vec(r.lzba);
    };
    if constexpr (kSoft == Soft::kForwardKL) {
      g = c * (ps - pt);
      if (teacher) h = zero_where(pt, c * pt * (x() - Vec(kl(r))));
    } else if constexpr (kSoft == Soft::kReverseKL) {
      g = zero_where(ps, c * ps * (Vec(0) - x() - Vec(kl(r))));
      if (teacher) h = c * (pt - ps);
    } else {
      const auto [ls_m, lt_m] = jsd_ratios(x());
      g = zero_where(ps, Vec(p.c * p.omb) * ps * (ls_m - Vec(r.ks)));
      if (teacher) h = zero_where(pt, Vec(p.c * p.beta) * pt * (lt_m - Vec(r.kt)));
    }
  }

  // Soft-target CE: g = (Q p_S - q) / T; h = log Za - ds = -log p_S, 0 where q = 0 on a
  // masked logit (no term at all there, not -log 0 = inf).
  void target_probs_grads(const scalar_t* s, const scalar_t* t, int64_t n, const Vec& ps,
                          const RowSums<acc>& r, Vec& g, Vec& h) const {
    const Vec q = load(t, n, 0), vinv(p.inv_t);
    g = (ps * Vec(r.q) - q) * vinv;
    const Vec ds = (load(s, n, kNegInf) - Vec(r.ms)) * vinv;
    h = Vec::blendv(Vec(r.lza) - ds, Vec(0), (q == Vec(0)) & (ds == Vec(kNegInf)));
  }

  // g + hard_weight (p1 - ls / V - (1 - ls) [j == y]) for the vector at i; ps: softmax(s / T),
  // p1_scale: block_scale's factor for the scratch exp(s - ms) when T != 1.
  Vec hard_grad(const Vec& g, int64_t i, int64_t n, int64_t y, const Vec& ps,
                const Vec& p1_scale) const {
    const Vec p1 = p.hard1 ? load_acc(sc.e1 + i, n) * p1_scale : ps;
    Vec out = at::vec::fmadd(Vec(p.hw), p1 - Vec(p.ls_v), g);
    if (y >= i && y < i + n) {
      acc buf[W];
      out.store(buf);
      buf[y - i] -= p.hw * (1 - p.ls);
      out = Vec::loadu(buf);
    }
    return out;
  }

  // The row's loss, and its gradients where gs / gt are given. A row whose maximum is not
  // finite gets nan everywhere; returns false when that maximum is -inf (an all-masked
  // row, which the op reports on CPU tensors).
  bool run(const scalar_t* s, const scalar_t* t, int64_t y, acc& loss, scalar_t* gs, scalar_t* gt,
           const scalar_t* next_s, const scalar_t* next_t) const {
    RowSums<acc> r;
    row_sums(s, t, r, next_s, next_t);
    if (!std::isfinite(r.ms) || !std::isfinite(r.mt)) {
      fill_row(std::numeric_limits<acc>::quiet_NaN(), loss, gs, gt);
      return r.ms != kNegInf && r.mt != kNegInf;
    }
    if constexpr (kSoft == Soft::kJSD) jsd_sums(s, t, r);
    loss = row_loss(r, s, y);
    if (gs != nullptr) map_pages(gs, p.V * sizeof(scalar_t));
    if (gt != nullptr) map_pages(gt, p.V * sizeof(scalar_t));
    if (gs != nullptr || gt != nullptr) row_grads(s, t, y, r, gs, gt);
    return true;
  }

  void fill_row(acc value, acc& loss, scalar_t* gs, scalar_t* gt) const {
    loss = value;
    if (gs != nullptr) std::fill(gs, gs + p.V, scalar_t(value));
    if (gt != nullptr) std::fill(gt, gt + p.V, scalar_t(value));
  }
};

// Every row of one call (c: the tensors of distillation_tensors). Returns false when a
// counted row of logits or teacher logits is all -inf.
template <typename scalar_t, Soft kSoft>
bool run_rows(const DistillationSettings& st, const DistillationTensors& c) {
  using acc = acc_t<scalar_t>;
  const RowParams<acc> p = row_params<acc>(st, c.V);
  const int64_t V = c.V;
  const scalar_t* ps = c.logits.const_data_ptr<scalar_t>();
  const scalar_t* pt = c.teacher.defined() ? c.teacher.const_data_ptr<scalar_t>() : nullptr;
  const int64_t* pl = c.labels.defined() ? c.labels.const_data_ptr<int64_t>() : nullptr;
  acc* po = c.loss.data_ptr<acc>();
  scalar_t* pgs = st.grad_logits ? c.grad_logits.data_ptr<scalar_t>() : nullptr;
  scalar_t* pgt = st.grad_teacher ? c.grad_teacher.data_ptr<scalar_t>() : nullptr;
  std::atomic<bool> ok{true};
  at::parallel_for(0, c.rows, row_grain(V), [&](int64_t begin, int64_t end) {
    const Scratch<acc> scratch(V, DistillationRow<scalar_t, kSoft>::blocks(V));
    const DistillationRow<scalar_t, kSoft> k{p, scratch};
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* gs = pgs ? pgs + r * V : nullptr;
      scalar_t* gt = pgt ? pgt + r * V : nullptr;
      if (pl && pl[r] == st.ignore_index) {  // drops out of every term
        k.fill_row(acc(0), po[r], gs, gt);
        continue;
      }
      const scalar_t* s = ps + r * V;
      const scalar_t* t = pt ? pt + r * V : nullptr;
      const bool last = r + 1 == end;
      if (!k.run(s, t, p.hard ? pl[r] : 0, po[r], gs, gt, last ? nullptr : s + V,
                 last || !t ? nullptr : t + V)) {
        ok = false;
      }
    }
  });
  return ok;
}

}  // namespace

// The family's kernel over every row of c (outputs allocated by the op). Returns false when
// a counted row of the logits or teacher logits is all -inf (the op then raises).
bool distillation_rows(const DistillationSettings& st, const DistillationTensors& c) {
  if (c.rows == 0) return true;
  bool ok = true;
  PK_DISPATCH_FLOATING(c.logits.scalar_type(), "distillation_rows_cpu", [&] {
    switch (soft_of(st)) {
      case Soft::kNone:
        ok = run_rows<scalar_t, Soft::kNone>(st, c);
        break;
      case Soft::kForwardKL:
        ok = run_rows<scalar_t, Soft::kForwardKL>(st, c);
        break;
      case Soft::kReverseKL:
        ok = run_rows<scalar_t, Soft::kReverseKL>(st, c);
        break;
      case Soft::kJSD:
        ok = run_rows<scalar_t, Soft::kJSD>(st, c);
        break;
      case Soft::kTargetProbs:
        ok = run_rows<scalar_t, Soft::kTargetProbs>(st, c);
        break;
    }
  });
  return ok;
}

// out[..., j] = grad[...] * x[..., j] in x's dtype (products in the accumulation dtype),
// 0 where x is 0: an ignored row's gradient stays 0 even when "batchmean" over zero counted
// rows sends an inf upstream. x and out are contiguous; out may be x itself.
void scale_grad(const at::Tensor& grad_, const at::Tensor& x, const at::Tensor& out) {
  const int64_t V = x.size(-1), rows = V == 0 ? 0 : x.numel() / V;
  if (rows == 0) return;
  PK_DISPATCH_FLOATING(x.scalar_type(), "distillation_scale_grad_cpu", [&] {
    using acc = acc_t<scalar_t>;
    using IO = VecIO<scalar_t>;
    using Vec = typename IO::Vec;
    const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const acc* pg = grad.const_data_ptr<acc>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    constexpr int64_t W = IO::kWidth, kChunk = 1024;
    at::parallel_for(0, rows, row_grain(V), [&](int64_t begin, int64_t end) {
      acc buf[kChunk];  // half types: a chunk in acc, rounded by at::vec::convert
      for (int64_t r = begin; r < end; ++r) {
        const Vec k(pg[r]);
        for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
          const int64_t len = std::min(kChunk, V - c0);
          const scalar_t* xr = px + r * V + c0;
          scalar_t* orow = po + r * V + c0;
          for (int64_t i = 0; i < len; i += W) {
            const int64_t n = std::min(W, len - i);
            const Vec v = n == W ? IO::load(xr + i) : IO::load(xr + i, n);
            const Vec out = zero_where(v, v * k);
            if constexpr (std::is_same_v<scalar_t, acc>) {
              out.store(orow + i, n);
            } else {
              out.store(buf + i, n);
            }
          }
          if constexpr (!std::is_same_v<scalar_t, acc>) at::vec::convert(buf, orow, len);
        }
      }
    });
  });
}

}  // namespace PK_DISTILLATION_NS
}  // namespace cpu
}  // namespace pykernels
