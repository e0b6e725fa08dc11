// Every formula of the fused GRPO loss, written once for all kernels (header-only, no torch).
//
// The per-token math (grpo_token) and its mask-weighted accumulation (token_step) are
// templates over a "lanes" policy L, so one source serves
//   ScalarLanes<double>   the CPU float64 rows (libm exp; what gradcheck sees)
//   ScalarLanes<float|double>  the CUDA kernel (one token per thread; expf on the device)
//   VecLanes              the CPU float32/bf16 rows: one token per SIMD lane, 4/8/16 lanes
//                         (grpo_cpu_rows.inc, compiled once per ISA)
// A policy provides the value type V, the predicate type B (bool for scalars, an int32 lane
// mask for vectors), sel / lt / gt / ge / splat / exp / not_finite. Everything else is plain
// arithmetic and bit operators, which scalars and GCC/Clang vector types share. The code is
// branch-free (selects, not ifs), so CUDA warps do not diverge and SIMD lanes stay in step.
// Masked-out positions are replaced by 0 *before* any arithmetic, so NaN/inf stored under
// mask == 0 can never reach the loss or the gradient. Optional per-token weights (rollout
// correction, `TW`) multiply the surrogate term; rows without them instantiate the code with
// TW = false, which neither loads nor multiplies anything extra.
//
// The group statistics (step 2 of grpo.h) and the finalize step (4) are here too, as one
// function per pass; the CPU runs a pass as a plain loop, the CUDA kernel as a block-strided
// loop with atomic updates.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "grpo.h"

namespace srpo {

// ---------------------------------------------------------------- element types and loads

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

// Accumulation type: float for float32/bfloat16 inputs, double for float64.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// float32 bits -> bfloat16 bits: round to nearest even, or a quiet NaN for NaN inputs
// (integer arithmetic: shared by uint32 scalars and vectors). The NaN test and the select stay
// with the caller: a comparison in a shared template is slow for AVX-512 (see ScalarLanes).
template <typename U>
SRPO_HD U bf16_round_bits(U u) {
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
template <typename U>
SRPO_HD U bf16_quiet_nan_bits(U u) {
  return (u >> 16) | 0x40u;
}
constexpr uint32_t kF32AbsBits = 0x7fffffffu;  // |x| > kF32InfBits (as bits): x is a NaN
constexpr uint32_t kF32InfBits = 0x7f800000u;

SRPO_HD float load_acc(float v) { return v; }
SRPO_HD double load_acc(double v) { return v; }
SRPO_HD float load_acc(bf16 v) { return bits_to_float(static_cast<uint32_t>(v.x) << 16); }

SRPO_HD void store_from(float* p, float v) { *p = v; }
SRPO_HD void store_from(double* p, double v) { *p = v; }
SRPO_HD void store_from(bf16* p, float v) {
  const uint32_t u = float_to_bits(v);
  const bool nan = (u & kF32AbsBits) > kF32InfBits;
  p->x = static_cast<uint16_t>(nan ? bf16_quiet_nan_bits(u) : bf16_round_bits(u));
}

// Mask element -> weight: bool masks (1 byte) give 0/1, float masks their value.
template <typename M>
struct IsBoolMask {
  static constexpr bool value = false;
};
template <>
struct IsBoolMask<uint8_t> {
  static constexpr bool value = true;
};

template <typename M, typename Acc>
SRPO_HD Acc mask_value(M v) {
  if constexpr (IsBoolMask<M>::value) {
    return v != 0 ? Acc(1) : Acc(0);
  } else {
    return static_cast<Acc>(v);
  }
}

SRPO_HD bool is_finite(float v) { return (float_to_bits(v) & kF32InfBits) != kF32InfBits; }
SRPO_HD bool is_finite(double v) { return v - v == 0.0; }  // NaN and inf give NaN

// ---------------------------------------------------------------- exp

// exp for float: Cephes-style range reduction + degree-6 polynomial, <= ~1.5 ulp on
// [kExpLo, kExpHi] (measured over every 7th float bit pattern against double exp), plain
// arithmetic (no libm call in the CPU loop). exp_poly is the lane-independent part: it returns
// p and n with exp(xc) = p * 2^n for a clamped xc. The clamp and the 2^n scaling depend on the
// lane type (bit tricks on scalars/vectors; vscalefps on AVX-512), so they live with the caller.
constexpr float kExpHi = 88.7228f;
constexpr float kExpLo = -87.3365f;

template <typename V>
SRPO_HD V exp_poly(V xc, V& n) {
  // Round-to-nearest via the 1.5*2^23 trick (needs no SSE4.1 and survives -O3 without fast-math).
  n = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const V r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

SRPO_HD float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);  // full-precision expf on the GPU (it is memory-bound, not ALU-bound)
#else
  const float xc = x > kExpHi ? kExpHi : (x < kExpLo ? kExpLo : x);
  float n;
  const float p = exp_poly(xc, n);
  // 2^n split in two factors so n = 128 (x near kExpHi) does not overflow the exponent field.
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni >> 1;
  const float s1 = bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = bits_to_float(static_cast<uint32_t>(ni - n1 + 127) << 23);
  const float e = p * s1 * s2;
  return x > kExpHi ? INFINITY : (x < kExpLo ? 0.0f : e);
#endif
}
SRPO_HD double fast_exp(double x) { return exp(x); }

// ---------------------------------------------------------------- lanes

// Comparisons go through the policy too (lt/gt/ge), not through operators in the shared
// templates: the templates have no target attribute, and GCC 12 expanded a 16-lane comparison
// written there lane by lane (16 scalar compares in the AVX-512 kernel's disassembly, even
// after inlining). Written inside VecLanes, which has the copy's target, it is one vcmpps.
template <typename Acc>
struct ScalarLanes {
  using V = Acc;
  using B = bool;
  static SRPO_HD V sel(B c, V a, V b) { return c ? a : b; }
  static SRPO_HD B lt(V a, V b) { return a < b; }
  static SRPO_HD B gt(V a, V b) { return a > b; }
  static SRPO_HD B ge(V a, V b) { return a >= b; }
  static SRPO_HD V splat(double v) { return static_cast<V>(v); }
  static SRPO_HD V exp(V x) { return fast_exp(x); }
  static SRPO_HD B not_finite(V x) { return !is_finite(x); }
};

// ---------------------------------------------------------------- per-token math

// Which token loop a row runs. The sign of A_i is fixed per row, so the branch of the max the
// clip can take is known: for A > 0 (and A == 0) -A*clamp(rho) only wins where
// rho > 1 + clip_high, for A < 0 only where rho < 1 - clip_low, and x -> -A*x is monotone, so
//   pg1 >= pg2  <=>  pg1 >= pg2c   and  pg2 = pg2c  wherever the max picks it,
// bit for bit the kGeneric result for every finite rho. The SIMD rows use the fast kinds
// (kPos/kNeg/kZero: no clamp, no flags the sign rules out). rho is NaN only for non-finite
// inputs at mask != 0; those make the row's approx_kl (kl) sum non-finite, and the SIMD row is
// then recomputed with kGeneric, which also counts the non-finite inputs. The scalar paths
// (CPU float64, CUDA) always run kGeneric.
enum RowKind : int { kGeneric = 0, kPos = 1, kNeg = 2, kZero = 3 };

SRPO_HD int row_kind(double adv) {
  return adv > 0.0 ? kPos : (adv < 0.0 ? kNeg : (adv == 0.0 ? kZero : kGeneric));
}

// Per-row constants of the token math (broadcast to all lanes for VecLanes).
template <typename L>
struct TokenParams {
  using V = typename L::V;
  using B = typename L::B;
  V neg_a;  // -A_i
  V lo, hi;  // 1 - clip_low, 1 + clip_high
  V pg2c;  // -A_i * (A_i < 0 ? lo : hi): the clipped term wherever the max picks it (RowKind)
  V dual_bound;  // -A_i * c (dual clip; +inf when off or A_i >= 0)
  V kl_coef;
  V scale;  // row scale: the aggregation weight of each of the row's tokens
  B a_pos, a_neg;
};

template <typename Acc>
SRPO_HD TokenParams<ScalarLanes<Acc>> make_token_params(const GrpoArgs& a, double adv,
                                                        double scale) {
  TokenParams<ScalarLanes<Acc>> p;
  p.neg_a = static_cast<Acc>(-adv);
  p.lo = static_cast<Acc>(1.0 - a.clip_low);
  p.hi = static_cast<Acc>(1.0 + a.clip_high);
  p.a_pos = adv > 0.0;
  p.a_neg = adv < 0.0;
  p.pg2c = p.neg_a * (p.a_neg ? p.lo : p.hi);
  p.dual_bound = (a.has_dual_clip && adv < 0.0) ? static_cast<Acc>(-adv * a.dual_clip)
                                                : static_cast<Acc>(INFINITY);
  p.kl_coef = static_cast<Acc>(a.kl_coef);
  p.scale = static_cast<Acc>(scale);
  return p;
}

template <typename L>
struct TokenResult {
  typename L::V loss;  // per-token loss
  typename L::V grad;  // d loss_token / d logp (without the aggregation weight)
  typename L::V approx_kl;  // 0.5 * (logp - old_logp)^2
  typename L::V kl;  // KL estimator vs ref (0 when KL == kKLNone)
  typename L::B clip_low, clip_high, dual;
};

// x, xo, xr: logp, old_logp, ref_logp already zeroed where the mask is 0. TW: the token has
// a rollout-correction weight w (0 where the mask is 0) that multiplies the surrogate term and
// its gradient (not the KL term); without TW, w is unused and never loaded.
template <int KL, int S, bool TW, typename L>
SRPO_HD TokenResult<L> grpo_token(const TokenParams<L>& p, typename L::V x, typename L::V xo,
                                  typename L::V xr, typename L::V w) {
  using V = typename L::V;
  using B = typename L::B;
  TokenResult<L> o;
  const V d = x - xo;
  const V r = L::exp(d);  // ratio pi / pi_old
  const V pg1 = p.neg_a * r;
  V pg2;
  if constexpr (S == kGeneric) {
    pg2 = p.neg_a * L::sel(L::lt(r, p.lo), p.lo, L::sel(L::gt(r, p.hi), p.hi, r));
  } else {
    pg2 = p.pg2c;
  }
  const B unclipped = L::ge(pg1, pg2);  // max picks pg1 (ties: same value, same gradient)
  V pg = L::sel(unclipped, pg1, pg2);
  V g = L::sel(unclipped, pg1, V{});  // d(-A r)/d logp = -A r; the clamp has no gradient
  o.dual = B{};
  if constexpr (S == kGeneric || S == kNeg) {  // dual clip caps the loss at -A c (A < 0)
    B dual = L::gt(pg, p.dual_bound);  // dual_bound is +inf when the dual clip is off
    if constexpr (S == kGeneric) dual = p.a_neg & dual;
    pg = L::sel(dual, p.dual_bound, pg);
    g = L::sel(dual, V{}, g);
    o.dual = dual;
  }
  if constexpr (TW) {  // rollout correction: w * pg, w * d pg / d logp (w is detached)
    // w == 1 selects the unweighted values (the same numbers: 1 * x == x), so the product is
    // never fused with the KL term below into an FMA the unweighted path does not make: an
    // all-ones weight is bit for bit no weight. NaN w fails the test and propagates.
    const B one = L::ge(w, L::splat(1.0)) & L::ge(L::splat(1.0), w);
    pg = L::sel(one, pg, w * pg);
    g = L::sel(one, g, w * g);
  }
  o.clip_low = B{};
  o.clip_high = B{};
  if constexpr (S == kGeneric) {
    o.clip_high = p.a_pos & L::gt(r, p.hi);
    o.clip_low = p.a_neg & L::lt(r, p.lo);
  } else if constexpr (S == kPos) {
    o.clip_high = L::gt(r, p.hi);
  } else if constexpr (S == kNeg) {
    o.clip_low = L::lt(r, p.lo);
  }
  o.approx_kl = L::splat(0.5) * d * d;
  o.kl = V{};
  o.loss = pg;
  o.grad = g;
  if constexpr (KL != kKLNone) {
    const V dr = xr - x;  // log(pi_ref / pi)
    V kl, dkl;
    if constexpr (KL == kK1) {
      kl = -dr;
      dkl = L::splat(1.0);
    } else if constexpr (KL == kK2) {
      kl = L::splat(0.5) * dr * dr;
      dkl = -dr;
    } else {
      const V e = L::exp(dr);
      kl = e - dr - L::splat(1.0);
      dkl = L::splat(1.0) - e;
    }
    o.kl = kl;
    o.loss = pg + p.kl_coef * kl;
    o.grad = g + p.kl_coef * dkl;
  }
  return o;
}

// ---------------------------------------------------------------- per-token accumulation

// Sums of one row (or block), indexed by GrpoPart. kPartLoss is not yet scaled.
template <typename L>
struct TokenSums {
  typename L::V v[kNumPart];
};

// Mask-weighted updates. m is the mask weight, on = (m != 0). For bool masks m is 0/1, so a
// select gives exactly the sum acc + m * v without the multiply.
template <bool kBoolMask, typename L>
SRPO_HD typename L::V add_weighted(typename L::V acc, typename L::V m, typename L::B on,
                                   typename L::V v) {
  if constexpr (kBoolMask) {
    return L::sel(on, acc + v, acc);
  } else {
    return acc + m * v;
  }
}
// Same, for terms that are exactly 0 at masked positions (their inputs are zeroed there).
template <bool kBoolMask, typename L>
SRPO_HD typename L::V add_weighted_zero_off(typename L::V acc, typename L::V m, typename L::V v) {
  if constexpr (kBoolMask) {
    return acc + v;
  } else {
    return acc + m * v;
  }
}
// acc + (cond ? m : 0); cond is false at masked positions (rho = 1 there and dual_clip > 1).
template <bool kBoolMask, typename L>
SRPO_HD typename L::V add_count(typename L::V acc, typename L::V m, typename L::B cond) {
  if constexpr (kBoolMask) {
    return L::sel(cond, acc + L::splat(1.0), acc);
  } else {
    return L::sel(cond, acc + m, acc);
  }
}
// m * scale * g: the gradient with its aggregation weight, exactly 0 at masked positions.
template <bool kBoolMask, typename L>
SRPO_HD typename L::V weighted_grad(typename L::V scale, typename L::V m, typename L::B on,
                                    typename L::V g) {
  if constexpr (kBoolMask) {
    return L::sel(on, scale * g, typename L::V{});
  } else {
    return m * scale * g;
  }
}

// Which sums token_step<KL, S, TW> can change (the others stay 0).
SRPO_HD constexpr bool token_sum_used(int KL, int S, int k, bool TW = false) {
  return k == kPartClipLow || k == kPartDual     ? S == kGeneric || S == kNeg
         : k == kPartClipHigh                    ? S == kGeneric || S == kPos
         : k == kPartKL                          ? KL != kKLNone
         : k == kPartBadLogp || k == kPartBadOld ? S == kGeneric
         : k == kPartBadRef                      ? S == kGeneric && KL != kKLNone
         : k == kPartBadWeight                   ? S == kGeneric && TW
                                                 : true;  // loss, approx_kl
}

// One token (one token per lane for VecLanes): x0/o0/r0/w0 as loaded (anything, NaN/inf
// included, where the mask is 0; w0 only with TW), m its mask weight, on = (m != 0). Adds to
// the row sums and returns d loss / d logp for the token, aggregation weight included.
template <int KL, int S, bool kBoolMask, bool TW, typename L>
SRPO_HD typename L::V token_step(const TokenParams<L>& p, typename L::V m, typename L::B on,
                                 typename L::V x0, typename L::V o0, typename L::V r0,
                                 typename L::V w0, TokenSums<L>& s) {
  using V = typename L::V;
  // Non-finite inputs at mask != 0 (counts, unweighted).
  if constexpr (token_sum_used(KL, S, kPartBadLogp))
    s.v[kPartBadLogp] = add_count<true, L>(s.v[kPartBadLogp], m, on & L::not_finite(x0));
  if constexpr (token_sum_used(KL, S, kPartBadOld))
    s.v[kPartBadOld] = add_count<true, L>(s.v[kPartBadOld], m, on & L::not_finite(o0));
  if constexpr (token_sum_used(KL, S, kPartBadRef))
    s.v[kPartBadRef] = add_count<true, L>(s.v[kPartBadRef], m, on & L::not_finite(r0));
  if constexpr (token_sum_used(KL, S, kPartBadWeight, TW))
    s.v[kPartBadWeight] = add_count<true, L>(s.v[kPartBadWeight], m, on & L::not_finite(w0));
  const V x = L::sel(on, x0, V{});
  const V xo = L::sel(on, o0, V{});
  const V xr = KL != kKLNone ? L::sel(on, r0, V{}) : V{};
  const V w = TW ? L::sel(on, w0, V{}) : V{};
  const TokenResult<L> res = grpo_token<KL, S, TW, L>(p, x, xo, xr, w);
  s.v[kPartLoss] = add_weighted<kBoolMask, L>(s.v[kPartLoss], m, on, res.loss);
  if constexpr (token_sum_used(KL, S, kPartClipLow))
    s.v[kPartClipLow] = add_count<kBoolMask, L>(s.v[kPartClipLow], m, res.clip_low);
  if constexpr (token_sum_used(KL, S, kPartClipHigh))
    s.v[kPartClipHigh] = add_count<kBoolMask, L>(s.v[kPartClipHigh], m, res.clip_high);
  if constexpr (token_sum_used(KL, S, kPartDual))
    s.v[kPartDual] = add_count<kBoolMask, L>(s.v[kPartDual], m, res.dual);
  s.v[kPartApproxKL] = add_weighted_zero_off<kBoolMask, L>(s.v[kPartApproxKL], m, res.approx_kl);
  if constexpr (token_sum_used(KL, S, kPartKL))
    s.v[kPartKL] = add_weighted_zero_off<kBoolMask, L>(s.v[kPartKL], m, res.kl);
  return weighted_grad<kBoolMask, L>(p.scale, m, on, res.grad);
}

// token_step on element j of a row in memory, for the scalar paths (CPU float64, CUDA).
// wp: the row's token weights (accumulation type), read only with TW.
template <int KL, bool G, bool TW, typename T, typename M>
SRPO_HD void scalar_token(const TokenParams<ScalarLanes<typename AccOf<T>::type>>& p,
                          const T* lp, const T* op, const T* rp, const M* mk,
                          const typename AccOf<T>::type* wp, T* gr, int64_t j,
                          TokenSums<ScalarLanes<typename AccOf<T>::type>>& s) {
  using Acc = typename AccOf<T>::type;
  const Acc m = mask_value<M, Acc>(mk[j]);
  const Acc r0 = KL != kKLNone ? load_acc(rp[j]) : Acc(0);
  Acc w0 = Acc(0);
  if constexpr (TW) w0 = wp[j];
  const Acc g = token_step<KL, kGeneric, IsBoolMask<M>::value, TW, ScalarLanes<Acc>>(
      p, m, m != Acc(0), load_acc(lp[j]), load_acc(op[j]), r0, w0, s);
  if constexpr (G) store_from(gr + j, g);
}

// The partial row of one row (CPU) or block (CUDA) from its sums.
SRPO_HD void write_partial(double* part, const double sums[kNumPart], double row_scale) {
  for (int k = 0; k < kNumPart; ++k) part[k] = sums[k];
  part[kPartLoss] = row_scale * sums[kPartLoss];
}

// ---------------------------------------------------------------- step 2: group statistics

// Advantage of one row from its group's stats. Zero-variance rule:
// a single member, or max_i |r_i - mean| <= tol * max(1, |mean|) -> the group is flat, A = 0.
SRPO_HD bool group_is_flat(double cnt, double mean, double maxdev, double tol) {
  const double am = mean < 0 ? -mean : mean;
  return cnt < 2.0 || maxdev <= tol * (am > 1.0 ? am : 1.0);
}

SRPO_HD bool group_flat(const GrpoArgs& a, const GrpoWorkspace& w, int64_t g) {
  return group_is_flat(w.g_cnt[g], w.g_sum[g] / w.g_cnt[g], w.g_maxdev[g], a.zero_var_tol);
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

// Aggregation weight of each token of a row with `len` mask sum.
SRPO_HD double row_scale(const GrpoArgs& a, double len, double tokens, double seqs) {
  if (len <= 0.0) return 0.0;
  if (a.agg == kTokenMean) return 1.0 / tokens;
  if (a.agg == kSeqMeanTokenMean) return 1.0 / (len * seqs);
  return 1.0 / (a.norm_constant * seqs);
}

// Totals of step 2 (each a sum over rows or groups, except groups: a max).
struct PrepareTotals {
  double bad = 0.0;  // non-finite rewards
  double tokens = 0.0;  // sum of the mask
  double seqs = 0.0;  // rows with mask sum > 0
  double groups = 0.0;  // number of (dense) groups: max id + 1
  double adv_abs = 0.0;  // sum of |A_i|
  double flat = 0.0;  // flat groups
};

// Pass 1, row i: its group's count and sum (Upd: plain or atomic add), and the row totals.
template <typename Upd>
SRPO_HD void prepare_pass1(const GrpoArgs& a, const GrpoWorkspace& w, int64_t i,
                           PrepareTotals& t) {
  const int64_t g = a.gid[i];
  Upd::add(&w.g_cnt[g], 1.0);
  Upd::add(&w.g_sum[g], a.rewards[i]);
  t.bad += is_finite(a.rewards[i]) ? 0.0 : 1.0;
  t.groups = static_cast<double>(g + 1) > t.groups ? static_cast<double>(g + 1) : t.groups;
  t.tokens += w.row_len[i];
  t.seqs += w.row_len[i] > 0.0 ? 1.0 : 0.0;
}

// Pass 2, row i (after all of pass 1): squared deviation and max |deviation| from the group
// mean (two-pass variance: stable for large |mean|). Upd::max_nonneg keeps NaN.
template <typename Upd>
SRPO_HD void prepare_pass2(const GrpoArgs& a, const GrpoWorkspace& w, int64_t i) {
  const int64_t g = a.gid[i];
  const double dev = fabs(a.rewards[i] - w.g_sum[g] / w.g_cnt[g]);
  Upd::add(&w.g_sq[g], dev * dev);
  Upd::max_nonneg(&w.g_maxdev[g], dev);
}

// Pass 3, row i (after pass 2; `tokens`, `seqs` complete): advantage and row scale.
SRPO_HD void prepare_pass3(const GrpoArgs& a, const GrpoWorkspace& w, int64_t i, double tokens,
                           double seqs, PrepareTotals& t) {
  const int64_t g = a.gid[i];
  const double adv = a.adv_given ? a.rewards[i]
                                 : advantage(a, a.rewards[i], w.g_cnt[g], w.g_sum[g], w.g_sq[g],
                                             w.g_maxdev[g]);
  a.adv[i] = adv;
  t.adv_abs += fabs(adv);
  const bool given = a.denom > 0.0;  // the mini-batch's normalizer, not this call's
  w.row_scale[i] = row_scale(a, w.row_len[i], given ? a.denom : tokens, given ? a.denom : seqs);
}

// After all passes, with the totals reduced: step 2's outputs and what steps 3-4 need.
SRPO_HD void prepare_outputs(const GrpoArgs& a, const GrpoWorkspace& w, const PrepareTotals& t) {
  w.misc[kMiscTokens] = t.tokens;
  w.misc[kMiscSeqs] = t.seqs;
  w.misc[kMiscGroups] = t.groups;
  a.out[kOutAdvAbs] = a.n > 0 ? t.adv_abs / static_cast<double>(a.n) : 0.0;
  // given advantages carry no groups: the caller reports the advantage pass's share
  a.out[kOutZeroGroup] = (t.groups > 0.0 && !a.adv_given) ? t.flat / t.groups : 0.0;
  a.out[kOutTokens] = t.tokens;
  a.out[kOutSeqs] = t.seqs;
  a.out[kOutBadRewards] = t.bad;
}

// ---------------------------------------------------------------- step 4: finalize

// Loss and stats from the totals of all partial rows.
SRPO_HD void finalize_outputs(const GrpoArgs& a, const GrpoWorkspace& w,
                              const double tot[kNumPart]) {
  const double tokens = w.misc[kMiscTokens];
  const double inv = tokens > 0.0 ? 1.0 / tokens : 0.0;  // stats are token (mask) means
  a.out[kOutLoss] = tot[kPartLoss];
  a.out[kOutClipLow] = tot[kPartClipLow] * inv;
  a.out[kOutClipHigh] = tot[kPartClipHigh] * inv;
  a.out[kOutDual] = tot[kPartDual] * inv;
  a.out[kOutApproxKL] = tot[kPartApproxKL] * inv;
  a.out[kOutKL] = tot[kPartKL] * inv;
  a.out[kOutBadLogp] = tot[kPartBadLogp];
  a.out[kOutBadOld] = tot[kPartBadOld];
  a.out[kOutBadRef] = tot[kPartBadRef];
  a.out[kOutBadWeight] = tot[kPartBadWeight];
}

}  // namespace srpo
