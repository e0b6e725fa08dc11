// CPU kernels of the fused GRPO loss (see grpo.h for the four steps).
//
// Rows are independent, so the callers (bindings.cpp) split row ranges over ATen's thread pool
// (OpenMP in stock torch builds, so no second OpenMP runtime). float32/bfloat16 rows run the
// explicitly vectorized kernel of grpo_cpu_rows.inc (GCC/Clang vector extensions, branch-free,
// polynomial exp), compiled once portably (4 lanes: SSE2 / NEON) and, on x86-64, once for
// AVX2+FMA (8 lanes) and once for AVX-512 (16 lanes), picked at run time (SRPO_CPU_ISA=base|avx2
// caps the choice). float64 rows use the scalar grpo_math.h path with libm exp.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "grpo.h"
#include "grpo_math.h"

// SRPO_CPU_GENERIC (a compile-time define) builds only the portable vector-extension code, as
// on non-x86 targets: for checking that path on an x86 machine.
#if !defined(SRPO_CPU_GENERIC) && (defined(__x86_64__) || defined(__SSE2__))
#define SRPO_X86 1
// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized (_mm512_undefined_* in the widening
// intrinsics): a false positive inside the system header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

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

// float64 inputs: the scalar grpo_math.h path with libm exp (exact; what gradcheck sees).
template <typename M, int KL, bool G>
void fused_rows_f64(const GrpoArgs& a, int64_t row_begin, int64_t row_end) {
  using Acc = double;
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  const int64_t t = a.t;
  for (int64_t i = row_begin; i < row_end; ++i) {
    const double* __restrict lp = static_cast<const double*>(a.logp) + i * t;
    const double* __restrict op = static_cast<const double*>(a.old_logp) + i * t;
    const double* __restrict rp = KL != kKLNone ? static_cast<const double*>(a.ref_logp) + i * t : lp;
    const M* __restrict mk = static_cast<const M*>(a.mask) + i * t;
    double* __restrict gr = G ? static_cast<double*>(a.grad) + i * t : nullptr;
    const TokenParams<Acc> p = make_token_params<Acc>(a, a.adv[i]);
    const Acc s = w.row_scale[i];
    Acc sl = 0, scl = 0, sch = 0, sd = 0, sak = 0, skl = 0, bl = 0, bo = 0, br = 0;
    for (int64_t j = 0; j < t; ++j) {
      const Acc m = mask_value<M, Acc>(mk[j]);
      const bool on = m != Acc(0);
      const Acc x0 = lp[j], o0 = op[j];
      const Acc r0 = KL != kKLNone ? rp[j] : Acc(0);
      bl += (on & !is_finite(x0)) ? Acc(1) : Acc(0);
      bo += (on & !is_finite(o0)) ? Acc(1) : Acc(0);
      if (KL != kKLNone) br += (on & !is_finite(r0)) ? Acc(1) : Acc(0);
      const TokenResult<Acc> res =
          grpo_token<KL, Acc>(p, on ? x0 : Acc(0), on ? o0 : Acc(0), on ? r0 : Acc(0));
      sl += m * res.loss;
      scl += res.clip_low ? m : Acc(0);
      sch += res.clip_high ? m : Acc(0);
      sd += res.dual ? m : Acc(0);
      sak += m * res.approx_kl;
      skl += m * res.kl;
      if (G) gr[j] = m * s * res.grad;
    }
    double* part = w.part + i * kNumPart;
    part[kPartLoss] = w.row_scale[i] * sl;
    part[kPartClipLow] = scl;
    part[kPartClipHigh] = sch;
    part[kPartDual] = sd;
    part[kPartApproxKL] = sak;
    part[kPartKL] = skl;
    part[kPartBadLogp] = bl;
    part[kPartBadOld] = bo;
    part[kPartBadRef] = br;
  }
}

// float32/bfloat16 inputs: explicit vectors, one copy per ISA (grpo_cpu_rows.inc).
#define SRPO_ISA isa_base
#define SRPO_ROWS_TARGET
#define SRPO_VW 4
#include "grpo_cpu_rows.inc"
#undef SRPO_ISA
#undef SRPO_ROWS_TARGET
#undef SRPO_VW

#if defined(SRPO_X86) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SRPO_X86_CLONES 1
#define SRPO_ISA isa_avx2
#define SRPO_ROWS_TARGET __attribute__((target("avx2,fma")))
#define SRPO_VW 8
#include "grpo_cpu_rows.inc"
#undef SRPO_ISA
#undef SRPO_ROWS_TARGET
#undef SRPO_VW
#define SRPO_ISA isa_avx512
#define SRPO_ROWS_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define SRPO_VW 16
#include "grpo_cpu_rows.inc"
#undef SRPO_ISA
#undef SRPO_ROWS_TARGET
#undef SRPO_VW
#endif

using RowsFn = void (*)(const GrpoArgs&, int64_t, int64_t);

[[maybe_unused]] int isa_level() {
#if defined(SRPO_X86_CLONES)
  static const int level = [] {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (const char* env = std::getenv("SRPO_CPU_ISA")) {  // cap the level (tests, benchmarks)
      const std::string v(env);
      if (v == "base") return 0;
      if (v == "avx2") return avx2 ? 1 : 0;
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return 2;
    return avx2 ? 1 : 0;
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
  if (level == 2) return &isa_avx512::fused_rows<T, M, KL, G>;
  if (level == 1) return &isa_avx2::fused_rows<T, M, KL, G>;
#endif
  return &isa_base::fused_rows<T, M, KL, G>;
}

template <typename M, int KL, bool G>
RowsFn pick_f64() {
  return &fused_rows_f64<M, KL, G>;
}

template <typename T, typename M>
RowsFn pick_kl(int kl, bool g) {
  if constexpr (std::is_same<T, double>::value) {
    switch (kl) {
      case kK1:
        return g ? pick_f64<M, kK1, true>() : pick_f64<M, kK1, false>();
      case kK2:
        return g ? pick_f64<M, kK2, true>() : pick_f64<M, kK2, false>();
      case kK3:
        return g ? pick_f64<M, kK3, true>() : pick_f64<M, kK3, false>();
      default:
        return g ? pick_f64<M, kKLNone, true>() : pick_f64<M, kKLNone, false>();
    }
  } else {
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
    for (int64_t j = 0; j < a.t; ++j) s += mask_value<M, Acc>(mk[j]);
    w.row_len[i] = static_cast<double>(s);
  }
}

}  // namespace

int64_t grpo_cpu_parts(int64_t n, int64_t /*t*/) { return n; }

void grpo_cpu_row_lengths(const GrpoArgs& a, int64_t b, int64_t e) {
  if (a.dtype == kF64 && !a.mask_is_bool) {
    row_lengths_impl<double, double>(a, b, e);
    return;
  }
#if defined(SRPO_X86_CLONES)
  const int level = isa_level();
  if (level == 2) return a.mask_is_bool ? isa_avx512::row_lengths_bool(a, b, e)
                                        : isa_avx512::row_lengths_float(a, b, e);
  if (level == 1) return a.mask_is_bool ? isa_avx2::row_lengths_bool(a, b, e)
                                        : isa_avx2::row_lengths_float(a, b, e);
#endif
  return a.mask_is_bool ? isa_base::row_lengths_bool(a, b, e) : isa_base::row_lengths_float(a, b, e);
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

// ---- grpo_cpu_parallel: claim-based helper pool (see grpo.h) ----
namespace {

class RowPool {
 public:
  explicit RowPool(int helpers) {
#if defined(__unix__) || defined(__APPLE__)
    pid_ = getpid();
#endif
    grow(helpers);
  }

  bool forked() const {
#if defined(__unix__) || defined(__APPLE__)
    return getpid() != pid_;  // threads do not survive fork(): the child needs a new pool
#else
    return false;
#endif
  }

  std::mutex busy;  // one job at a time; a concurrent caller runs serially instead

  void run(int64_t n, int64_t grain, int helpers, GrpoRangeFn fn, void* ctx) {
    grow(helpers);
    {
      std::lock_guard<std::mutex> lk(mu_);
      n_ = n;
      grain_ = grain;
      blocks_ = (n + grain - 1) / grain;
      fn_ = fn;
      ctx_ = ctx;
      want_ = helpers;
      next_.store(0, std::memory_order_relaxed);
      open_ = true;
      ++gen_;
    }
    cv_.notify_all();
    work();
    {
      std::lock_guard<std::mutex> lk(mu_);
      open_ = false;  // helpers not yet awake stay out of this job
    }
    // Wait only for helpers that joined (each holds at most one block, or is about to find none).
    for (int spin = 0; active_.load(std::memory_order_acquire) != 0; ++spin) {
      if (spin < 2000) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  void grow(int helpers) {
    while (static_cast<int>(threads_) < helpers) {
      const int idx = static_cast<int>(threads_++);
      std::thread([this, idx] { loop(idx); }).detach();  // the pool is never destroyed
    }
  }

  void work() {
    for (;;) {
      const int64_t b = next_.fetch_add(1, std::memory_order_relaxed);
      if (b >= blocks_) return;
      const int64_t begin = b * grain_;
      fn_(ctx_, begin, std::min(n_, begin + grain_));
    }
  }

  void loop(int idx) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_ != seen && open_ && idx < want_; });
        seen = gen_;
        active_.fetch_add(1, std::memory_order_relaxed);  // under mu_ while open_: caller waits
      }
      work();
      active_.fetch_sub(1, std::memory_order_release);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  size_t threads_ = 0;
  uint64_t gen_ = 0;
  bool open_ = false;
  int want_ = 0;
  int64_t n_ = 0, grain_ = 1, blocks_ = 0;
  GrpoRangeFn fn_ = nullptr;
  void* ctx_ = nullptr;
  std::atomic<int64_t> next_{0};
  std::atomic<int> active_{0};
#if defined(__unix__) || defined(__APPLE__)
  pid_t pid_ = 0;
#endif
};

std::mutex g_pool_mu;
RowPool* g_pool = nullptr;  // leaked on purpose: detached helpers wait on it until exit

}  // namespace

void grpo_cpu_parallel(int64_t n, int64_t grain, int threads, GrpoRangeFn fn, void* ctx) {
  grain = std::max<int64_t>(grain, 1);
  const int helpers = static_cast<int>(
      std::min<int64_t>(std::max(threads, 1) - 1, (n + grain - 1) / grain - 1));
  if (helpers <= 0) {
    if (n > 0) fn(ctx, 0, n);
    return;
  }
  RowPool* pool = nullptr;
  {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    if (g_pool == nullptr || g_pool->forked()) g_pool = new RowPool(helpers);
    pool = g_pool;
  }
  std::unique_lock<std::mutex> busy(pool->busy, std::try_to_lock);
  if (!busy.owns_lock()) {  // nested or concurrent call
    fn(ctx, 0, n);
    return;
  }
  pool->run(n, grain, helpers, fn, ctx);
}

}  // namespace srpo
