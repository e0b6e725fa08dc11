// CPU block kernels of the fused linear log-prob (math and state: linear_logprob.h). The GEMMs
// are ATen's (MKL/OpenBLAS) in the driver; these loops are the per-block reductions, one row
// per token, rows split over ATen's intra-op threads.
//
// float rows: an AVX2+FMA copy of the row loops (8 lanes, GCC vector types, grpo_math.h's
// polynomial exp_poly), picked at run time, else portable loops with kLanes independent
// accumulators (scalar fast_exp). The exp is ~2 of the ~5 seconds of non-GEMM work at
// N = 2048, V = 49K on 2 cores, so it is worth the copy. double rows (gradcheck) use libm.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "grpo_math.h"
#include "linear_logprob.h"

namespace srpo {
namespace {

constexpr int kLanes = 8;
// Rows per parallel task: a task is >= 16 rows x a vocabulary chunk (>= 64K elements), so the
// per-task overhead of at::parallel_for is negligible.
constexpr int64_t kRowGrain = 16;

// exp of d <= 0 (the argument is always x - max): float uses the polynomial; double libm.
inline float exp_nonpos(float d) { return fast_exp(d); }
inline double exp_nonpos(double d) { return std::exp(d); }


#if defined(__x86_64__)
// ---- AVX2 + FMA float rows (target attribute; chosen at run time by has_avx2) ----
#define SRPO_LLP_AVX2 __attribute__((target("avx2,fma")))
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

SRPO_LLP_AVX2 inline v8f splat8(float x) { return v8f{x, x, x, x, x, x, x, x}; }

SRPO_LLP_AVX2 inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// exp(d) for d <= 0 (arguments are x - max): exp_poly on the clamped value times 2^n, n in
// [-126, 0] so one exponent-field factor suffices; below kExpLo the result is 0.
SRPO_LLP_AVX2 inline v8f exp8_nonpos(v8f d) {
  const v8f lo = splat8(kExpLo);
  const v8f xc = d < lo ? lo : d;
  v8f n;
  const v8f p = exp_poly(xc, n);
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8f scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return d < lo ? splat8(0.0f) : p * scale;
}

SRPO_LLP_AVX2 float hsum8(v8f v) {
  float lanes[8];
  std::memcpy(lanes, &v, sizeof(lanes));
  float out = 0.0f;
  for (float x : lanes) out += x;
  return out;
}

SRPO_LLP_AVX2 float row_max_avx2(const float* row, int64_t cols) {
  v8f mx = splat8(-std::numeric_limits<float>::infinity());
  int64_t v = 0;
  for (; v + 8 <= cols; v += 8) {
    const v8f x = load8(row + v);
    mx = mx < x ? x : mx;
  }
  float lanes[8];
  std::memcpy(lanes, &mx, sizeof(lanes));
  float out = *std::max_element(lanes, lanes + 8);
  for (; v < cols; ++v) out = std::max(out, row[v]);
  return out;
}

template <bool kEntropy>
SRPO_LLP_AVX2 void row_sums_avx2(const float* row, int64_t cols, float inv_temp, float m,
                                 float& s_out, float& a_out) {
  v8f s = splat8(0.0f), a = splat8(0.0f);
  const v8f it = splat8(inv_temp), mm = splat8(m);
  int64_t v = 0;
  for (; v + 8 <= cols; v += 8) {
    const v8f d = load8(row + v) * it - mm;
    const v8f e = exp8_nonpos(d);
    s += e;
    if constexpr (kEntropy) a += e * d;
  }
  s_out = hsum8(s);
  a_out = hsum8(a);
  for (; v < cols; ++v) {  // tail: the scalar formula
    const float d = row[v] * inv_temp - m;
    const float e = fast_exp(d);
    s_out += e;
    if constexpr (kEntropy) a_out += e * d;
  }
}

SRPO_LLP_AVX2 void bwd_row_avx2(float* row, int64_t cols, float mx, float log_s, float scale,
                                float inv_temp) {
  const v8f it = splat8(inv_temp), m = splat8(mx), ls = splat8(log_s), sc = splat8(scale);
  int64_t v = 0;
  for (; v + 8 <= cols; v += 8) {
    const v8f p = exp8_nonpos((load8(row + v) * it - m) - ls);
    const v8f out = sc * p;
    std::memcpy(row + v, &out, sizeof(out));
  }
  for (; v < cols; ++v) row[v] = scale * fast_exp((row[v] * inv_temp - mx) - log_s);
}

bool has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#else
constexpr bool has_avx2() { return false; }
#endif

template <typename S>
S row_max(const S* row, int64_t cols) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<S, float>)
    if (has_avx2()) return row_max_avx2(row, cols);
#endif
  S lane[kLanes];
  std::fill(lane, lane + kLanes, -std::numeric_limits<S>::infinity());
  int64_t v = 0;
  for (; v + kLanes <= cols; v += kLanes)
    for (int k = 0; k < kLanes; ++k) lane[k] = std::max(lane[k], row[v + k]);
  for (; v < cols; ++v) lane[0] = std::max(lane[0], row[v]);
  return *std::max_element(lane, lane + kLanes);
}

// Sum over the row of e = exp(x - m) (and of e * (x - m) with entropy), x = row * inv_temp.
template <typename S, bool kEntropy>
void row_sums(const S* row, int64_t cols, S inv_temp, S m, S& s_out, S& a_out) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<S, float>)
    if (has_avx2()) return row_sums_avx2<kEntropy>(row, cols, inv_temp, m, s_out, a_out);
#endif
  S s[kLanes] = {}, a[kLanes] = {};
  int64_t v = 0;
  for (; v + kLanes <= cols; v += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const S d = row[v + k] * inv_temp - m;
      const S e = exp_nonpos(d);
      s[k] += e;
      if constexpr (kEntropy) a[k] += e * d;
    }
  }
  for (; v < cols; ++v) {
    const S d = row[v] * inv_temp - m;
    const S e = exp_nonpos(d);
    s[0] += e;
    if constexpr (kEntropy) a[0] += e * d;
  }
  s_out = a_out = S(0);
  for (int k = 0; k < kLanes; ++k) {
    s_out += s[k];
    a_out += a[k];
  }
}

// Merges a block (max bm, sum bs of exp(x - bm), ba of exp(x - bm) * (x - bm)) into the
// running state (m, s, a): both shifted to the new max M, using
//   sum exp(x - M) (x - M) = c * (a + s * (m - M))   with c = exp(m - M).
// s == 0 (no block yet, m = -inf) is special-cased: s * (m - M) would be 0 * -inf = NaN.
template <bool kEntropy>
void merge_state(double& m, double& s, double* a, double bm, double bs, double ba) {
  const double mn = std::max(m, bm);
  const double c_old = s > 0.0 ? std::exp(m - mn) : 0.0;
  const double c_blk = std::exp(bm - mn);
  if constexpr (kEntropy) {
    const double a_old = s > 0.0 ? c_old * (*a + s * (m - mn)) : 0.0;
    *a = a_old + c_blk * (ba + bs * (bm - mn));
  }
  s = c_old * s + c_blk * bs;
  m = mn;
}

// One token's online update with one block row.
// The block's sums are taken around the block's own max (in S), then merged into the
// double state around the running max.
template <typename S, bool kEntropy>
void fwd_row(const S* row, int64_t cols, int64_t v0, int64_t target, S inv_temp, double& m,
             double& s, double* a, double& xt) {
  if (target >= v0 && target < v0 + cols) xt = static_cast<double>(row[target - v0] * inv_temp);
  // inv_temp > 0, so max(row) * inv_temp is the max of x.
  const S bm = row_max(row, cols) * inv_temp;
  if (bm == -std::numeric_limits<S>::infinity()) return;  // every logit of the block is -inf
  S bs, ba;
  row_sums<S, kEntropy>(row, cols, inv_temp, bm, bs, ba);
  merge_state<kEntropy>(m, s, a, static_cast<double>(bm), bs, ba);
}

// d logp / d logit * g, in place: g * (1[v == target] - exp((x - m) - log s)) * inv_temp.
template <typename S>
void bwd_row(S* row, int64_t cols, int64_t v0, int64_t target, S mx, S log_s, S g, S inv_temp) {
  const S scale = -g * inv_temp;
#if defined(__x86_64__)
  if constexpr (std::is_same_v<S, float>)
    if (has_avx2()) {
      bwd_row_avx2(row, cols, mx, log_s, scale, inv_temp);
      if (target >= v0 && target < v0 + cols) row[target - v0] += g * inv_temp;
      return;
    }
#endif
  for (int64_t v = 0; v < cols; ++v)
    row[v] = scale * exp_nonpos((row[v] * inv_temp - mx) - log_s);
  if (target >= v0 && target < v0 + cols) row[target - v0] += g * inv_temp;
}

}  // namespace

template <typename S>
void llp_cpu_fwd_block(const S* logits, int64_t rows, int64_t cols, int64_t v0,
                       const int64_t* targets, S inv_temp, LlpState st) {
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const S* row = logits + i * cols;
      if (st.a != nullptr)
        fwd_row<S, true>(row, cols, v0, targets[i], inv_temp, st.m[i], st.s[i], st.a + i,
                         st.xt[i]);
      else
        fwd_row<S, false>(row, cols, v0, targets[i], inv_temp, st.m[i], st.s[i], nullptr,
                          st.xt[i]);
    }
  });
}

template <typename S>
void llp_cpu_bwd_block(S* logits_to_grad, int64_t rows, int64_t cols, int64_t v0,
                       const int64_t* targets, const S* mx, const S* log_s, const S* g,
                       S inv_temp) {
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      bwd_row(logits_to_grad + i * cols, cols, v0, targets[i], mx[i], log_s[i], g[i], inv_temp);
  });
}

template void llp_cpu_fwd_block<float>(const float*, int64_t, int64_t, int64_t, const int64_t*,
                                       float, LlpState);
template void llp_cpu_fwd_block<double>(const double*, int64_t, int64_t, int64_t,
                                        const int64_t*, double, LlpState);
template void llp_cpu_bwd_block<float>(float*, int64_t, int64_t, int64_t, const int64_t*,
                                       const float*, const float*, const float*, float);
template void llp_cpu_bwd_block<double>(double*, int64_t, int64_t, int64_t, const int64_t*,
                                        const double*, const double*, const double*, double);

}  // namespace srpo
