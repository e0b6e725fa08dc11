// CUDA kernels of the fused GRPO loss (see grpo.h for the four steps; every formula is in
// grpo_math.h, shared with the CPU kernels). No torch headers: compiles standalone with
// `nvcc -c -arch=sm_80 grpo_cuda.cu` (sm_60+ for double atomicAdd).
//
//   1. row_len_kernel     one block per row: sum of the mask
//   2. prepare_kernel     ONE block: segmented group stats through global-memory atomics
//                         (count, sum, then squared deviation and max |deviation|), advantages,
//                         row scales. O(N) work; N is thousands of rollouts, so one block is
//                         enough and needs no grid-wide sync.
//   3. fused_kernel       blocks over (row, T-chunk): per-token loss/grad in registers, the grad
//                         written once with its final scale, block partials of the stats
//   4. finalize_kernel    ONE block: reduce the partials, write loss + stats
// fp32/bf16 compute in float (float64 inputs in double). All launches go on `stream`.
#include <cuda_runtime.h>

#include <cstdint>

#include "grpo.h"
#include "grpo_math.h"

namespace srpo {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // tokens per thread per chunk
constexpr int kChunk = kThreads * kItems;
constexpr int kPrepThreads = 1024;

template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Block-wide sum; result valid in thread 0. `smem` holds >= 32 values.
template <typename V>
__device__ V block_sum(V v, V* smem) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[wid] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nw ? smem[threadIdx.x] : V(0);
  if (wid == 0) v = warp_sum(v);
  return v;
}

// Step 2's updates of the group sums: grpo_math.h's passes run block-strided, so the group
// sums are shared between threads. (__host__ __device__ only because the pass templates are;
// there is no host caller.)
struct AtomicUpdate {
  static SRPO_HD void add(double* addr, double v) {
#if defined(__CUDA_ARCH__)
    atomicAdd(addr, v);
#else
    *addr += v;
#endif
  }
  static SRPO_HD void max_nonneg(double* addr, double v) {
#if defined(__CUDA_ARCH__)
    // Non-negative doubles (and NaN, whose bits are larger than inf's) order like their bits.
    atomicMax(reinterpret_cast<unsigned long long*>(addr),
              static_cast<unsigned long long>(__double_as_longlong(v)));
#else
    if (v > *addr || v != v) *addr = v;
#endif
  }
};

template <typename M>
__global__ void row_len_kernel(GrpoArgs a) {
  __shared__ double smem[32];
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  const int64_t i = blockIdx.x;
  const M* mk = static_cast<const M*>(a.mask) + i * a.t;
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < a.t; j += blockDim.x) s += mask_value<M, double>(mk[j]);
  s = block_sum(s, smem);
  if (threadIdx.x == 0) w.row_len[i] = s;
}

// ONE block: grpo_math.h's passes over rows (and groups), block-strided, a barrier between.
__global__ void prepare_kernel(GrpoArgs a) {
  __shared__ double smem[32];
  __shared__ double sh_tokens, sh_seqs;
  __shared__ unsigned long long sh_groups;
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  const int64_t n = a.n;
  if (threadIdx.x == 0) sh_groups = 0;
  for (int64_t g = threadIdx.x; g < n; g += blockDim.x) {
    w.g_cnt[g] = 0.0;
    w.g_sum[g] = 0.0;
    w.g_sq[g] = 0.0;
    w.g_maxdev[g] = 0.0;
  }
  __syncthreads();
  PrepareTotals t;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) prepare_pass1<AtomicUpdate>(a, w, i, t);
  atomicMax(&sh_groups, static_cast<unsigned long long>(t.groups));
  t.bad = block_sum(t.bad, smem);
  t.tokens = block_sum(t.tokens, smem);
  t.seqs = block_sum(t.seqs, smem);
  if (threadIdx.x == 0) {
    sh_tokens = t.tokens;
    sh_seqs = t.seqs;
  }
  __syncthreads();  // group sums complete and visible to the block
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) prepare_pass2<AtomicUpdate>(a, w, i);
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    prepare_pass3(a, w, i, sh_tokens, sh_seqs, t);
  t.groups = static_cast<double>(sh_groups);
  const int64_t groups = static_cast<int64_t>(sh_groups);
  for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) t.flat += group_flat(a, w, g) ? 1.0 : 0.0;
  t.adv_abs = block_sum(t.adv_abs, smem);
  t.flat = block_sum(t.flat, smem);
  if (threadIdx.x == 0) {
    t.tokens = sh_tokens;
    t.seqs = sh_seqs;
    prepare_outputs(a, w, t);
  }
}

// Blocks over (row, T-chunk): grpo_math.h's token_step per token (coalesced across the block),
// the grad written once with its final scale, block partials of the sums.
template <typename T, typename M, int KL, bool G, bool TW>
__global__ void __launch_bounds__(kThreads) fused_kernel(GrpoArgs a, int64_t chunks) {
  using Acc = typename AccOf<T>::type;
  __shared__ Acc smem[32];
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  const int64_t block = blockIdx.x;
  const int64_t i = block / chunks;
  const int64_t j0 = (block % chunks) * kChunk;
  const int64_t base = i * a.t;
  const T* lp = static_cast<const T*>(a.logp) + base;
  const T* op = static_cast<const T*>(a.old_logp) + base;
  const T* rp = KL != kKLNone ? static_cast<const T*>(a.ref_logp) + base : lp;
  const M* mk = static_cast<const M*>(a.mask) + base;
  T* gr = G ? static_cast<T*>(a.grad) + base : nullptr;
  const Acc* wp = TW ? static_cast<const Acc*>(a.token_weight) + base : nullptr;
  const auto p = make_token_params<Acc>(a, a.adv[i], w.row_scale[i]);
  TokenSums<ScalarLanes<Acc>> s{};
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int64_t j = j0 + it * kThreads + threadIdx.x;
    if (j < a.t) scalar_token<KL, G, TW>(p, lp, op, rp, mk, wp, gr, j, s);
  }
  double sums[kNumPart];
#pragma unroll
  for (int k = 0; k < kNumPart; ++k) sums[k] = static_cast<double>(block_sum(s.v[k], smem));
  if (threadIdx.x == 0) write_partial(w.part + block * kNumPart, sums, w.row_scale[i]);
}

// ONE block: reduce the partials, then grpo_math.h's finalize.
__global__ void finalize_kernel(GrpoArgs a, int64_t parts) {
  __shared__ double smem[32];
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  double tot[kNumPart];
  for (int k = 0; k < kNumPart; ++k) tot[k] = 0.0;
  for (int64_t b = threadIdx.x; b < parts; b += blockDim.x)
    for (int k = 0; k < kNumPart; ++k) tot[k] += w.part[b * kNumPart + k];
  for (int k = 0; k < kNumPart; ++k) tot[k] = block_sum(tot[k], smem);
  if (threadIdx.x == 0) finalize_outputs(a, w, tot);
}

int64_t chunks_per_row(int64_t t) { return (t + kChunk - 1) / kChunk; }

template <typename T, typename M, int KL, bool TW>
void launch_fused_grad(const GrpoArgs& a, int64_t chunks, cudaStream_t st) {
  const unsigned blocks = static_cast<unsigned>(a.n * chunks);
  if (a.need_grad)
    fused_kernel<T, M, KL, true, TW><<<blocks, kThreads, 0, st>>>(a, chunks);
  else
    fused_kernel<T, M, KL, false, TW><<<blocks, kThreads, 0, st>>>(a, chunks);
}

// Token weights are a separate instantiation (TW), so kernels without them load nothing extra.
template <typename T, typename M, int KL>
void launch_fused_kl(const GrpoArgs& a, int64_t chunks, cudaStream_t st) {
  if (a.has_weight)
    launch_fused_grad<T, M, KL, true>(a, chunks, st);
  else
    launch_fused_grad<T, M, KL, false>(a, chunks, st);
}

template <typename T, typename M>
void launch_fused_mask(const GrpoArgs& a, int64_t chunks, cudaStream_t st) {
  switch (a.kl) {
    case kK1:
      launch_fused_kl<T, M, kK1>(a, chunks, st);
      break;
    case kK2:
      launch_fused_kl<T, M, kK2>(a, chunks, st);
      break;
    case kK3:
      launch_fused_kl<T, M, kK3>(a, chunks, st);
      break;
    default:
      launch_fused_kl<T, M, kKLNone>(a, chunks, st);
  }
}

template <typename T>
void launch_fused(const GrpoArgs& a, int64_t chunks, cudaStream_t st) {
  using Acc = typename AccOf<T>::type;
  if (a.mask_is_bool)
    launch_fused_mask<T, uint8_t>(a, chunks, st);
  else
    launch_fused_mask<T, Acc>(a, chunks, st);
}

}  // namespace

int64_t grpo_cuda_parts(int64_t n, int64_t t) { return n * chunks_per_row(t); }

int grpo_cuda_forward(const GrpoArgs& a, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.n <= 0) return 0;
  const unsigned rows = static_cast<unsigned>(a.n);
  if (a.mask_is_bool)
    row_len_kernel<uint8_t><<<rows, kThreads, 0, st>>>(a);
  else if (a.dtype == kF64)
    row_len_kernel<double><<<rows, kThreads, 0, st>>>(a);
  else
    row_len_kernel<float><<<rows, kThreads, 0, st>>>(a);
  prepare_kernel<<<1, kPrepThreads, 0, st>>>(a);
  const int64_t chunks = chunks_per_row(a.t);
  if (chunks > 0) {
    switch (a.dtype) {
      case kF64:
        launch_fused<double>(a, chunks, st);
        break;
      case kBF16:
        launch_fused<bf16>(a, chunks, st);
        break;
      default:
        launch_fused<float>(a, chunks, st);
    }
  }
  finalize_kernel<<<1, kPrepThreads, 0, st>>>(a, a.n * chunks);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace srpo
