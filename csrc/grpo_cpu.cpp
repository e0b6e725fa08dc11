// CPU kernels of the fused GRPO loss (see grpo.h for the four steps).
//
// Rows are independent, so the callers (bindings.cpp) split row ranges over ATen's thread pool
// (OpenMP in stock torch builds, so no second OpenMP runtime). Inside a row the token loop is a
// `#pragma omp simd` reduction over branch-free math (grpo_math.h) that GCC/Clang vectorize.
// On x86-64 the hot loop is also compiled for AVX2+FMA and AVX-512 and picked at run time, so a
// portable build still runs at full width.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "grpo.h"
#include "grpo_math.h"

namespace srpo {
namespace {

template <typename M, typename Acc>
SRPO_HD Acc mask_value(M v) {
  return static_cast<Acc>(v);
}
template <>
SRPO_HD float mask_value<uint8_t, float>(uint8_t v) {
  return v != 0 ? 1.0f : 0.0f;
}
template <>
SRPO_HD double mask_value<uint8_t, double>(uint8_t v) {
  return v != 0 ? 1.0 : 0.0;
}

#define SRPO_ROWS_NAME fused_rows_base
#define SRPO_ROWS_TARGET
#include "grpo_cpu_rows.inc"
#undef SRPO_ROWS_NAME
#undef SRPO_ROWS_TARGET

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SRPO_X86_CLONES 1
#define SRPO_ROWS_NAME fused_rows_avx2
#define SRPO_ROWS_TARGET __attribute__((target("avx2,fma")))
#include "grpo_cpu_rows.inc"
#undef SRPO_ROWS_NAME
#undef SRPO_ROWS_TARGET
#define SRPO_ROWS_NAME fused_rows_avx512
#define SRPO_ROWS_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#include "grpo_cpu_rows.inc"
#undef SRPO_ROWS_NAME
#undef SRPO_ROWS_TARGET
#endif

using RowsFn = void (*)(const GrpoArgs&, int64_t, int64_t);

int isa_level() {
#if defined(SRPO_X86_CLONES)
  static const int level = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
  }();
  return level;
#else
  return 0;
#endif
}

template <typename T, typename M, int KL, bool G>
RowsFn pick_isa() {
#if defined(SRPO_X86_CLONES)
  const int level = isa_level();
  if (level == 2) return &fused_rows_avx512<T, M, KL, G>;
  if (level == 1) return &fused_rows_avx2<T, M, KL, G>;
#endif
  return &fused_rows_base<T, M, KL, G>;
}

template <typename T, typename M>
RowsFn pick_kl(int kl, bool g) {
  switch (kl) {
    case kK1:
      return g ? pick_isa<T, M, kK1, true>() : pick_isa<T, M, kK1, false>();
    case kK2:
      return g ? pick_isa<T, M, kK2, true>() : pick_isa<T, M, kK2, false>();
    case kK3:
      return g ? pick_isa<T, M, kK3, true>() : pick_isa<T, M, kK3, false>();
    default:
      return g ? pick_isa<T, M, kKLNone, true>() : pick_isa<T, M, kKLNone, false>();
  }
}

template <typename T>
RowsFn pick_mask(const GrpoArgs& a) {
  using Acc = typename AccOf<T>::type;
  return a.mask_is_bool ? pick_kl<T, uint8_t>(a.kl, a.need_grad)
                        : pick_kl<T, Acc>(a.kl, a.need_grad);
}

template <typename M, typename Acc>
void row_lengths_impl(const GrpoArgs& a, int64_t b, int64_t e) {
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  for (int64_t i = b; i < e; ++i) {
    const M* mk = static_cast<const M*>(a.mask) + i * a.t;
    Acc s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < a.t; ++j) s += mask_value<M, Acc>(mk[j]);
    w.row_len[i] = static_cast<double>(s);
  }
}

}  // namespace

int64_t grpo_cpu_parts(int64_t n, int64_t /*t*/) { return n; }

void grpo_cpu_row_lengths(const GrpoArgs& a, int64_t b, int64_t e) {
  if (a.mask_is_bool) {
    // float counts are exact up to 2^24 tokens per row; use double beyond that.
    if (a.t < (int64_t(1) << 24))
      row_lengths_impl<uint8_t, float>(a, b, e);
    else
      row_lengths_impl<uint8_t, double>(a, b, e);
  } else if (a.dtype == kF64) {
    row_lengths_impl<double, double>(a, b, e);
  } else {
    row_lengths_impl<float, float>(a, b, e);
  }
}

void grpo_cpu_prepare(const GrpoArgs& a) {
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  const int64_t n = a.n;
  std::fill(w.g_cnt, w.g_cnt + n, 0.0);
  std::fill(w.g_sum, w.g_sum + n, 0.0);
  std::fill(w.g_sq, w.g_sq + n, 0.0);
  std::fill(w.g_maxdev, w.g_maxdev + n, 0.0);
  double bad = 0.0;
  int64_t groups = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t g = a.gid[i];
    w.g_cnt[g] += 1.0;
    w.g_sum[g] += a.rewards[i];
    bad += is_finite(a.rewards[i]) ? 0.0 : 1.0;
    groups = std::max(groups, g + 1);
  }
  for (int64_t i = 0; i < n; ++i) {  // two-pass variance: stable for large |mean|
    const int64_t g = a.gid[i];
    const double dev = std::fabs(a.rewards[i] - w.g_sum[g] / w.g_cnt[g]);
    w.g_sq[g] += dev * dev;
    if (dev > w.g_maxdev[g] || dev != dev) w.g_maxdev[g] = dev;  // NaN sticks
  }
  double adv_abs = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t g = a.gid[i];
    a.adv[i] = advantage(a, a.rewards[i], w.g_cnt[g], w.g_sum[g], w.g_sq[g], w.g_maxdev[g]);
    adv_abs += std::fabs(a.adv[i]);
  }
  double flat = 0.0;
  for (int64_t g = 0; g < groups; ++g)
    flat += group_is_flat(w.g_cnt[g], w.g_sum[g] / w.g_cnt[g], w.g_maxdev[g], a.zero_var_tol);
  double tokens = 0.0, seqs = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    tokens += w.row_len[i];
    seqs += w.row_len[i] > 0.0 ? 1.0 : 0.0;
  }
  for (int64_t i = 0; i < n; ++i) w.row_scale[i] = row_scale(a, w.row_len[i], tokens, seqs);
  w.misc[0] = tokens;
  w.misc[1] = seqs;
  w.misc[2] = static_cast<double>(groups);
  a.out[kOutAdvAbs] = n > 0 ? adv_abs / static_cast<double>(n) : 0.0;
  a.out[kOutZeroGroup] = groups > 0 ? flat / static_cast<double>(groups) : 0.0;
  a.out[kOutTokens] = tokens;
  a.out[kOutSeqs] = seqs;
  a.out[kOutBadRewards] = bad;
}

void grpo_cpu_rows(const GrpoArgs& a, int64_t b, int64_t e) {
  RowsFn fn = nullptr;
  switch (a.dtype) {
    case kF64:
      fn = pick_mask<double>(a);
      break;
    case kBF16:
      fn = pick_mask<bf16>(a);
      break;
    default:
      fn = pick_mask<float>(a);
  }
  fn(a, b, e);
}

void grpo_cpu_finalize(const GrpoArgs& a) {
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  double acc[kNumPart] = {0};
  for (int64_t i = 0; i < a.n; ++i)
    for (int k = 0; k < kNumPart; ++k) acc[k] += w.part[i * kNumPart + k];
  const double tokens = w.misc[0];
  const double inv = tokens > 0.0 ? 1.0 / tokens : 0.0;
  a.out[kOutLoss] = acc[kPartLoss];
  a.out[kOutClipLow] = acc[kPartClipLow] * inv;
  a.out[kOutClipHigh] = acc[kPartClipHigh] * inv;
  a.out[kOutDual] = acc[kPartDual] * inv;
  a.out[kOutApproxKL] = acc[kPartApproxKL] * inv;
  a.out[kOutKL] = acc[kPartKL] * inv;
  a.out[kOutBadLogp] = acc[kPartBadLogp];
  a.out[kOutBadOld] = acc[kPartBadOld];
  a.out[kOutBadRef] = acc[kPartBadRef];
}

}  // namespace srpo
