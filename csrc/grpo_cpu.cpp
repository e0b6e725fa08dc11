// CPU kernels of the fused GRPO loss (see grpo.h for the four steps; the math is grpo_math.h).
//
// Rows are independent: grpo_cpu_forward splits row ranges over the caller plus persistent
// helper threads of its own (grpo_cpu_parallel, below; no OpenMP, see grpo.h for why).
// float32/bfloat16 rows run grpo_math.h's token math on SIMD vectors (grpo_cpu_rows.inc: GCC/
// Clang vector extensions, branch-free, polynomial exp), compiled once portably (4 lanes: SSE2
// / NEON) and, on x86-64, once for AVX2+FMA (8 lanes) and once for AVX-512 (16 lanes), picked
// at run time (SRPO_CPU_ISA=base|avx2 caps the choice). float64 rows run the same token math on
// scalars with libm exp.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

// grpo_math.h's templates take SIMD vector types by value but have no target attribute (they
// are shared with the scalar and CUDA code), so GCC warns that their out-of-line ABI would
// differ with AVX. They never exist out of line: fused_rows inlines all of them (flatten).
// (GCC also prints a one-time -Wpsabi note that this pragma cannot silence: the build passes
// -Wno-psabi.)
#pragma GCC diagnostic ignored "-Wpsabi"
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

// float64 inputs: grpo_math.h's token math on scalars, libm exp (what gradcheck sees).
template <typename M, int KL, bool G, bool TW>
void fused_rows_f64(const GrpoArgs& a, int64_t row_begin, int64_t row_end) {
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  const int64_t t = a.t;
  for (int64_t i = row_begin; i < row_end; ++i) {
    const double* lp = static_cast<const double*>(a.logp) + i * t;
    const double* op = static_cast<const double*>(a.old_logp) + i * t;
    const double* rp = KL != kKLNone ? static_cast<const double*>(a.ref_logp) + i * t : lp;
    const M* mk = static_cast<const M*>(a.mask) + i * t;
    double* gr = G ? static_cast<double*>(a.grad) + i * t : nullptr;
    const double* wp = TW ? static_cast<const double*>(a.token_weight) + i * t : nullptr;
    const auto p = make_token_params<double>(a, a.adv[i], w.row_scale[i]);
    TokenSums<ScalarLanes<double>> s{};
    for (int64_t j = 0; j < t; ++j) scalar_token<KL, G, TW>(p, lp, op, rp, mk, wp, gr, j, s);
    write_partial(w.part + i * kNumPart, s.v, w.row_scale[i]);
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

template <typename T, typename M, int KL, bool G, bool TW>
RowsFn pick_isa() {
  if constexpr (std::is_same<T, double>::value) {
    return &fused_rows_f64<M, KL, G, TW>;
  } else {
#if defined(SRPO_X86_CLONES)
    const int level = isa_level();
    if (level == 2) return &isa_avx512::fused_rows<T, M, KL, G, TW>;
    if (level == 1) return &isa_avx2::fused_rows<T, M, KL, G, TW>;
#endif
    return &isa_base::fused_rows<T, M, KL, G, TW>;
  }
}

// Token weights are a separate instantiation (TW), so rows without them load nothing extra.
template <typename T, typename M, int KL, bool G>
RowsFn pick_weight(bool tw) {
  return tw ? pick_isa<T, M, KL, G, true>() : pick_isa<T, M, KL, G, false>();
}

template <typename T, typename M, int KL>
RowsFn pick_grad(bool g, bool tw) {
  return g ? pick_weight<T, M, KL, true>(tw) : pick_weight<T, M, KL, false>(tw);
}

template <typename T, typename M>
RowsFn pick_kl(int kl, bool g, bool tw) {
  switch (kl) {
    case kK1:
      return pick_grad<T, M, kK1>(g, tw);
    case kK2:
      return pick_grad<T, M, kK2>(g, tw);
    case kK3:
      return pick_grad<T, M, kK3>(g, tw);
    default:
      return pick_grad<T, M, kKLNone>(g, tw);
  }
}

template <typename T>
RowsFn pick_mask(const GrpoArgs& a) {
  using Acc = typename AccOf<T>::type;
  return a.mask_is_bool ? pick_kl<T, uint8_t>(a.kl, a.need_grad, a.has_weight)
                        : pick_kl<T, Acc>(a.kl, a.need_grad, a.has_weight);
}

RowsFn pick_rows(const GrpoArgs& a) {
  switch (a.dtype) {
    case kF64:
      return pick_mask<double>(a);
    case kBF16:
      return pick_mask<bf16>(a);
    default:
      return pick_mask<float>(a);
  }
}

void row_lengths_f64(const GrpoArgs& a, int64_t b, int64_t e) {  // float64 mask weights
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  for (int64_t i = b; i < e; ++i) {
    const double* mk = static_cast<const double*>(a.mask) + i * a.t;
    double s = 0;
    for (int64_t j = 0; j < a.t; ++j) s += mk[j];
    w.row_len[i] = s;
  }
}

RowsFn pick_row_lengths(const GrpoArgs& a) {
  if (a.dtype == kF64 && !a.mask_is_bool) return &row_lengths_f64;
#if defined(SRPO_X86_CLONES)
  const int level = isa_level();
  if (level == 2) return a.mask_is_bool ? &isa_avx512::row_lengths_bool : &isa_avx512::row_lengths_float;
  if (level == 1) return a.mask_is_bool ? &isa_avx2::row_lengths_bool : &isa_avx2::row_lengths_float;
#endif
  return a.mask_is_bool ? &isa_base::row_lengths_bool : &isa_base::row_lengths_float;
}

// Step 2 runs serially (O(N)): grpo_math.h's passes with plain updates.
struct SerialUpdate {
  static void add(double* p, double v) { *p += v; }
  static void max_nonneg(double* p, double v) {
    if (v > *p || v != v) *p = v;  // NaN sticks (as the CUDA atomicMax on the bits)
  }
};

void prepare(const GrpoArgs& a) {
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  const int64_t n = a.n;
  for (double* p : {w.g_cnt, w.g_sum, w.g_sq, w.g_maxdev}) std::fill(p, p + n, 0.0);
  PrepareTotals tot;
  for (int64_t i = 0; i < n; ++i) prepare_pass1<SerialUpdate>(a, w, i, tot);
  for (int64_t i = 0; i < n; ++i) prepare_pass2<SerialUpdate>(a, w, i);
  for (int64_t i = 0; i < n; ++i) prepare_pass3(a, w, i, tot.tokens, tot.seqs, tot);
  const int64_t groups = static_cast<int64_t>(tot.groups);
  for (int64_t g = 0; g < groups; ++g) tot.flat += group_flat(a, w, g) ? 1.0 : 0.0;
  prepare_outputs(a, w, tot);
}

void finalize(const GrpoArgs& a, int64_t parts) {
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  double tot[kNumPart] = {0};
  for (int64_t i = 0; i < parts; ++i)
    for (int k = 0; k < kNumPart; ++k) tot[k] += w.part[i * kNumPart + k];
  finalize_outputs(a, w, tot);
}

}  // namespace

int64_t grpo_cpu_parts(int64_t n, int64_t /*t*/) { return n; }

void grpo_cpu_forward(const GrpoArgs& a, int threads) {
  if (a.n <= 0) return;
  // Rows in blocks of ~16K tokens: large enough to amortize a claim, small enough to balance.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(a.t, 1));
  struct Job {
    const GrpoArgs* a;
    RowsFn fn;
  };
  const GrpoRangeFn run = [](void* ctx, int64_t b, int64_t e) {
    const Job* job = static_cast<const Job*>(ctx);
    job->fn(*job->a, b, e);
  };
  Job lengths{&a, pick_row_lengths(a)};
  grpo_cpu_parallel(a.n, grain, threads, run, &lengths);
  prepare(a);
  Job rows{&a, pick_rows(a)};
  grpo_cpu_parallel(a.n, grain, threads, run, &rows);
  finalize(a, grpo_cpu_parts(a.n, a.t));
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
