// Fused GRPO-family loss: kernel declarations over raw pointers (no torch types).
//
// One op computes, from rewards [N], dense group ids [N], logp/old_logp/(ref_logp) [N,T], a
// mask [N,T] and optional detached per-token weights [N,T] (rollout correction: they multiply
// the surrogate term, not the KL term): group mean/std -> per-sequence advantage (never
// materialized as [N,T]) -> ratio, clip low/high, optional dual clip, optional weight,
// optional KL -> aggregated loss, the per-token gradient d loss / d logp, and the stats. The math is documented in srpo/algo/grpo.py (the oracle);
// grpo_math.h holds every formula, shared by the CPU and CUDA kernels.
//
// Work is split in four steps so the gradient can be written with its final scale in one pass
// (the aggregation normalizers need global counts first):
//   1. row lengths        sum_t mask[i,t]                              O(N*T), mask only
//   2. prepare            group stats, advantages, row scales          O(N)
//                         (adv_given: the caller's advantages; denom: the caller's normalizer)
//   3. fused rows         loss/grad/stat partials per row (or block)   O(N*T), the hot pass
//   4. finalize           loss + stats from the partials               O(N)
#pragma once

#include <cstddef>
#include <cstdint>

// Host+device inline functions: __host__ __device__ when compiled by nvcc.
#if defined(__CUDACC__)
#define SRPO_HD __host__ __device__ __forceinline__
#else
#define SRPO_HD inline __attribute__((always_inline))
#endif

namespace srpo {

// Bump when the op schema or the semantics change: srpo.ops refuses a stale prebuilt module
// (srpo/ops/_loader.py ABI_VERSION).
constexpr int64_t kGrpoAbiVersion = 7;

enum GrpoDType : int32_t { kF32 = 0, kF64 = 1, kBF16 = 2 };
enum GrpoKL : int32_t { kKLNone = 0, kK1 = 1, kK2 = 2, kK3 = 3 };  // kKLNone: no ref_logp
enum GrpoAgg : int32_t { kTokenMean = 0, kSeqMeanTokenMean = 1, kSeqMeanTokenSumNorm = 2 };

// Layout of the float64 result vector `out`.
enum GrpoOut : int32_t {
  kOutLoss = 0,
  kOutClipLow,
  kOutClipHigh,
  kOutDual,
  kOutApproxKL,
  kOutKL,
  kOutAdvAbs,
  kOutZeroGroup,
  kOutTokens,
  kOutSeqs,
  kOutBadRewards,  // non-finite rewards
  kOutBadLogp,     // non-finite logp at mask != 0
  kOutBadOld,      // non-finite old_logp at mask != 0
  kOutBadRef,      // non-finite ref_logp at mask != 0
  kOutBadWeight,   // non-finite token_weight at mask != 0
  kNumOut
};

// Sums of the fused pass: the per-token accumulators (grpo_math.h TokenSums) and the partial
// rows they are written to, one row of kNumPart doubles per partial (CPU: per row; CUDA: per
// block). In a partial row, kPartLoss is already multiplied by the row scale.
enum GrpoPart : int32_t {
  kPartLoss = 0,
  kPartClipLow,
  kPartClipHigh,
  kPartDual,
  kPartApproxKL,
  kPartKL,
  kPartBadLogp,
  kPartBadOld,
  kPartBadRef,
  kPartBadWeight,
  kNumPart
};

struct GrpoArgs {
  int64_t n = 0;  // rows (sequences)
  int64_t t = 0;  // tokens per row (padded)
  int32_t dtype = kF32;  // of logp, old_logp, ref_logp and grad
  int32_t kl = kKLNone;
  int32_t agg = kTokenMean;
  bool mask_is_bool = true;  // else float weights in the accumulation type (float or double)
  bool std_normalize = true;
  bool need_grad = true;
  bool has_dual_clip = false;
  bool has_weight = false;  // token_weight given: the surrogate term is multiplied by it
  double clip_low = 0.2;
  double clip_high = 0.2;
  double dual_clip = 0.0;  // c > 1; used only when has_dual_clip
  double kl_coef = 0.0;
  double norm_constant = 0.0;  // seq-mean-token-sum-norm divisor (already resolved: None -> T)
  double eps = 1e-6;
  double zero_var_tol = 1e-6;
  // Micro-batches free of groups (srpo/policy/microbatch.py): the advantages come from one
  // pass over the whole mini-batch, and the loss's normalizer counts the whole mini-batch (every
  // micro-batch, every rank), so the micro-batch losses simply add up to the big batch's.
  bool adv_given = false;  // `rewards` holds the advantages themselves; no group statistics
  double denom = 0.0;  // > 0: the normalizer (tokens for token-mean, sequences otherwise)

  const double* rewards = nullptr;  // [n] float64
  const int64_t* gid = nullptr;  // [n] dense group index in [0, n)
  const void* logp = nullptr;  // [n, t] contiguous
  const void* old_logp = nullptr;
  const void* ref_logp = nullptr;  // may be null (kl == kKLNone)
  const void* mask = nullptr;  // [n, t] bool (1 byte) or acc-type weights
  const void* token_weight = nullptr;  // [n, t] acc-type, or null (!has_weight)
  void* grad = nullptr;  // [n, t] d loss / d logp, dtype of logp (unused if !need_grad)
  double* adv = nullptr;  // [n] per-sequence advantage (output)
  double* out = nullptr;  // [kNumOut] loss + stats (output)
  double* ws = nullptr;  // workspace, grpo_workspace_doubles() doubles
};

// Workspace offsets (in doubles). `parts` = number of partial rows of the fused pass.
struct GrpoWorkspace {
  double* row_scale;  // [n]
  double* row_len;  // [n]
  double* g_cnt;  // [n]
  double* g_sum;  // [n]
  double* g_sq;  // [n]
  double* g_maxdev;  // [n] (bit pattern of a non-negative double; CUDA uses atomicMax on it)
  double* misc;  // [8]: kMiscTokens, kMiscSeqs, kMiscGroups
  double* part;  // [parts, kNumPart]
};
enum GrpoMisc : int32_t { kMiscTokens = 0, kMiscSeqs = 1, kMiscGroups = 2 };

SRPO_HD int64_t grpo_workspace_doubles(int64_t n, int64_t parts) {
  return 6 * n + 8 + parts * kNumPart;
}

SRPO_HD GrpoWorkspace grpo_workspace(double* ws, int64_t n) {
  GrpoWorkspace w;
  w.row_scale = ws;
  w.row_len = ws + n;
  w.g_cnt = ws + 2 * n;
  w.g_sum = ws + 3 * n;
  w.g_sq = ws + 4 * n;
  w.g_maxdev = ws + 5 * n;
  w.misc = ws + 6 * n;
  w.part = ws + 6 * n + 8;
  return w;
}

// ---- CPU (csrc/grpo_cpu.cpp) ----
int64_t grpo_cpu_parts(int64_t n, int64_t t);
// All four steps, the O(N*T) ones over the caller + up to `threads - 1` helper threads
// (grpo_cpu_parallel). Synchronous.
void grpo_cpu_forward(const GrpoArgs& a, int threads);

// Runs fn(ctx, begin, end) over [0, n) in blocks of `grain` rows, on the calling thread plus up
// to `threads - 1` persistent helper threads. Blocks are claimed from an atomic counter and the
// caller waits only for blocks a helper has actually claimed: a helper that is slow to wake (a
// shared, oversubscribed machine) costs nothing, the caller simply does the remaining blocks.
// (A fork-join team, e.g. at::parallel_for on OpenMP, waits at its barrier for every thread to
// be scheduled, which costs milliseconds per region when other processes hold the cores.)
// Serial when threads <= 1, n <= grain, or the pool is busy (nested or concurrent calls).
using GrpoRangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void grpo_cpu_parallel(int64_t n, int64_t grain, int threads, GrpoRangeFn fn, void* ctx);

// ---- CUDA (csrc/grpo_cuda.cu). `stream` is a cudaStream_t; all launches are async. ----
int64_t grpo_cuda_parts(int64_t n, int64_t t);
// Returns 0 on success, else a cudaError_t code (bindings turn it into an exception).
int grpo_cuda_forward(const GrpoArgs& a, void* stream);

}  // namespace srpo
