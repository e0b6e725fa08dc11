// Per-token GRPO math shared by the CPU and CUDA kernels (header-only, no torch types).
//
// Used as is by the CUDA kernel and the CPU float64 path; the CPU float32/bf16 path
// (grpo_cpu_rows.inc) is an explicitly vectorized transcription of grpo_token and fast_exp.
// Written branch-free (selects, not ifs) so CUDA warps do not diverge. Masked-out positions are replaced by 0 *before* any arithmetic,
// so NaN/inf stored under mask == 0 can never reach the loss or the gradient.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "grpo.h"

#if defined(__CUDACC__)
#define SRPO_HD __host__ __device__ __forceinline__
#else
#define SRPO_HD inline __attribute__((always_inline))
#endif

namespace srpo {

// bfloat16 as raw bits: no dependency on torch or cuda_bf16.h, identical on host and device.
struct bf16 {
  uint16_t x;
};

SRPO_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

SRPO_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

SRPO_HD float load_acc(float v) { return v; }
SRPO_HD double load_acc(double v) { return v; }
SRPO_HD float load_acc(bf16 v) { return bits_to_float(static_cast<uint32_t>(v.x) << 16); }

SRPO_HD void store_from(float* p, float v) { *p = v; }
SRPO_HD void store_from(double* p, double v) { *p = v; }
SRPO_HD void store_from(bf16* p, float v) {
  // Round to nearest even; NaN stays a (quiet) NaN.
  const uint32_t u = float_to_bits(v);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  p->x = static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);
}

SRPO_HD bool is_finite(float v) { return (float_to_bits(v) & 0x7f800000u) != 0x7f800000u; }
SRPO_HD bool is_finite(double v) { return v - v == 0.0; }  // NaN and inf give NaN

// exp for float: Cephes-style range reduction + degree-6 polynomial (<= 2 ulp on the range
// that matters), written with plain arithmetic so GCC vectorizes it (no libm call in the loop).
SRPO_HD float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);  // full-precision expf on the GPU
#else
  const float hi = 88.7228f, lo = -87.3365f;
  const float xc = x > hi ? hi : (x < lo ? lo : x);
  // Round-to-nearest via the 1.5*2^23 trick (needs no SSE4.1 and survives -O3 without fast-math).
  const float n = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n split in two factors so n = 128 (x near hi) does not overflow the exponent field.
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni >> 1;
  const float s1 = bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = bits_to_float(static_cast<uint32_t>(ni - n1 + 127) << 23);
  const float e = p * s1 * s2;
  return x > hi ? INFINITY : (x < lo ? 0.0f : e);
#endif
}
SRPO_HD double fast_exp(double x) { return exp(x); }

template <typename Acc>
struct TokenParams {
  Acc neg_a;  // -A_i
  Acc lo, hi;  // 1 - clip_low, 1 + clip_high
  Acc dual_bound;  // -A_i * c (dual clip; +inf when off or A_i >= 0)
  Acc kl_coef;
  bool a_pos, a_neg;
};

template <typename Acc>
struct TokenResult {
  Acc loss;  // per-token loss (0 at masked positions)
  Acc grad;  // d loss_token / d logp (unscaled by the aggregation weight)
  Acc approx_kl;  // 0.5 * (logp - old_logp)^2
  Acc kl;  // KL estimator vs ref (0 when KL == kKLNone)
  bool clip_low, clip_high, dual;
};

// x, xo, xr: logp, old_logp, ref_logp already zeroed where the mask is 0.
template <int KL, typename Acc>
SRPO_HD TokenResult<Acc> grpo_token(const TokenParams<Acc>& p, Acc x, Acc xo, Acc xr) {
  TokenResult<Acc> o;
  const Acc d = x - xo;
  const Acc r = fast_exp(d);  // ratio pi / pi_old
  const Acc rc = r < p.lo ? p.lo : (r > p.hi ? p.hi : r);
  const Acc pg1 = p.neg_a * r;
  const Acc pg2 = p.neg_a * rc;
  const bool unclipped = pg1 >= pg2;  // max picks pg1 (ties: same value, same gradient)
  Acc pg = unclipped ? pg1 : pg2;
  Acc g = unclipped ? pg1 : Acc(0);  // d(-A r)/d logp = -A r
  const bool dual = p.a_neg && pg > p.dual_bound;  // dual clip caps the loss at -A c
  pg = dual ? p.dual_bound : pg;
  g = dual ? Acc(0) : g;
  o.clip_high = p.a_pos && r > p.hi;
  o.clip_low = p.a_neg && r < p.lo;
  o.dual = dual;
  o.approx_kl = Acc(0.5) * d * d;
  Acc kl = Acc(0), dkl = Acc(0);
  if (KL != kKLNone) {
    const Acc dr = xr - x;  // log(pi_ref / pi)
    if (KL == kK1) {
      kl = -dr;
      dkl = Acc(1);
    } else if (KL == kK2) {
      kl = Acc(0.5) * dr * dr;
      dkl = -dr;
    } else {
      const Acc e = fast_exp(dr);
      kl = e - dr - Acc(1);
      dkl = Acc(1) - e;
    }
  }
  o.kl = kl;
  o.loss = pg + p.kl_coef * kl;
  o.grad = g + p.kl_coef * dkl;
  return o;
}

template <typename Acc>
SRPO_HD TokenParams<Acc> make_token_params(const GrpoArgs& a, double adv) {
  TokenParams<Acc> p;
  p.neg_a = static_cast<Acc>(-adv);
  p.lo = static_cast<Acc>(1.0 - a.clip_low);
  p.hi = static_cast<Acc>(1.0 + a.clip_high);
  p.a_pos = adv > 0.0;
  p.a_neg = adv < 0.0;
  p.dual_bound = (a.dual_clip > 0.0 && adv < 0.0) ? static_cast<Acc>(-adv * a.dual_clip)
                                                  : static_cast<Acc>(INFINITY);
  p.kl_coef = static_cast<Acc>(a.kl_coef);
  return p;
}

// Advantage of one row from its group's stats (shared so CPU and CUDA decide zero variance
// identically). Zero-variance rule: max_i |r_i - mean| <= tol * max(1, |mean|) -> A = 0.
SRPO_HD bool group_is_flat(double cnt, double mean, double maxdev, double tol) {
  const double am = mean < 0 ? -mean : mean;
  return cnt < 2.0 || maxdev <= tol * (am > 1.0 ? am : 1.0);
}

SRPO_HD double advantage(const GrpoArgs& a, double r, double cnt, double sum, double sq,
                         double maxdev) {
  const double mean = sum / cnt;
  if (group_is_flat(cnt, mean, maxdev, a.zero_var_tol)) return 0.0;
  const double centered = r - mean;
  if (!a.std_normalize) return centered;
  const double std = sqrt(sq / (cnt - 1.0));  // unbiased (Bessel), like torch.std
  return centered / (std + a.eps);
}

SRPO_HD double row_scale(const GrpoArgs& a, double len, double tokens, double seqs) {
  if (len <= 0.0) return 0.0;
  if (a.agg == kTokenMean) return 1.0 / tokens;
  if (a.agg == kSeqMeanTokenMean) return 1.0 / (len * seqs);
  const double c = a.norm_constant > 0.0 ? a.norm_constant : static_cast<double>(a.t);
  return 1.0 / (c * seqs);
}

}  // namespace srpo
