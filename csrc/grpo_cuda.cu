// CUDA kernels of the fused GRPO loss (see grpo.h for the four steps). No torch headers:
// compiles standalone with `nvcc -c -arch=sm_80 grpo_cuda.cu` (sm_60+ for double atomicAdd).
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

__device__ __forceinline__ void atomic_max_nonneg(double* addr, double v) {
  // Non-negative doubles (and NaN, whose bits are larger than inf's) order like their bits.
  atomicMax(reinterpret_cast<unsigned long long*>(addr),
            static_cast<unsigned long long>(__double_as_longlong(v)));
}

template <typename M, typename Acc>
__device__ __forceinline__ Acc mask_value(M v) {
  return static_cast<Acc>(v);
}
template <>
__device__ __forceinline__ float mask_value<uint8_t, float>(uint8_t v) {
  return v != 0 ? 1.0f : 0.0f;
}
template <>
__device__ __forceinline__ double mask_value<uint8_t, double>(uint8_t v) {
  return v != 0 ? 1.0 : 0.0;
}

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

__global__ void prepare_kernel(GrpoArgs a) {
  __shared__ double smem[32];
  __shared__ double sh_tokens, sh_seqs;
  __shared__ long long sh_groups;
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
  double bad = 0.0, tokens = 0.0, seqs = 0.0;
  long long groups = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t g = a.gid[i];
    atomicAdd(&w.g_cnt[g], 1.0);
    atomicAdd(&w.g_sum[g], a.rewards[i]);
    bad += is_finite(a.rewards[i]) ? 0.0 : 1.0;
    groups = g + 1 > groups ? g + 1 : groups;
    tokens += w.row_len[i];
    seqs += w.row_len[i] > 0.0 ? 1.0 : 0.0;
  }
  atomicMax(reinterpret_cast<unsigned long long*>(&sh_groups),
            static_cast<unsigned long long>(groups));
  bad = block_sum(bad, smem);
  tokens = block_sum(tokens, smem);
  seqs = block_sum(seqs, smem);
  if (threadIdx.x == 0) {
    sh_tokens = tokens;
    sh_seqs = seqs;
    a.out[kOutBadRewards] = bad;
  }
  __syncthreads();  // group sums complete and visible to the block
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t g = a.gid[i];
    const double dev = fabs(a.rewards[i] - w.g_sum[g] / w.g_cnt[g]);
    atomicAdd(&w.g_sq[g], dev * dev);
    atomic_max_nonneg(&w.g_maxdev[g], dev);
  }
  __syncthreads();
  double adv_abs = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t g = a.gid[i];
    const double adv = advantage(a, a.rewards[i], w.g_cnt[g], w.g_sum[g], w.g_sq[g], w.g_maxdev[g]);
    a.adv[i] = adv;
    adv_abs += fabs(adv);
    w.row_scale[i] = row_scale(a, w.row_len[i], sh_tokens, sh_seqs);
  }
  const long long ng = sh_groups;
  double flat = 0.0;
  for (long long g = threadIdx.x; g < ng; g += blockDim.x)
    flat += group_is_flat(w.g_cnt[g], w.g_sum[g] / w.g_cnt[g], w.g_maxdev[g], a.zero_var_tol)
                ? 1.0
                : 0.0;
  adv_abs = block_sum(adv_abs, smem);
  flat = block_sum(flat, smem);
  if (threadIdx.x == 0) {
    w.misc[0] = sh_tokens;
    w.misc[1] = sh_seqs;
    w.misc[2] = static_cast<double>(ng);
    a.out[kOutAdvAbs] = n > 0 ? adv_abs / static_cast<double>(n) : 0.0;
    a.out[kOutZeroGroup] = ng > 0 ? flat / static_cast<double>(ng) : 0.0;
    a.out[kOutTokens] = sh_tokens;
    a.out[kOutSeqs] = sh_seqs;
  }
}

template <typename T, typename M, int KL, bool G>
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
  const TokenParams<Acc> p = make_token_params<Acc>(a, a.adv[i]);
  const Acc s = static_cast<Acc>(w.row_scale[i]);
  Acc acc[kNumPart];
#pragma unroll
  for (int k = 0; k < kNumPart; ++k) acc[k] = Acc(0);
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int64_t j = j0 + it * kThreads + threadIdx.x;  // coalesced across the block
    if (j < a.t) {
      const Acc m = mask_value<M, Acc>(mk[j]);
      const bool on = m != Acc(0);
      const Acc x0 = load_acc(lp[j]);
      const Acc o0 = load_acc(op[j]);
      const Acc r0 = KL != kKLNone ? load_acc(rp[j]) : Acc(0);
      acc[kPartBadLogp] += (on && !is_finite(x0)) ? Acc(1) : Acc(0);
      acc[kPartBadOld] += (on && !is_finite(o0)) ? Acc(1) : Acc(0);
      acc[kPartBadRef] += (KL != kKLNone && on && !is_finite(r0)) ? Acc(1) : Acc(0);
      const TokenResult<Acc> res =
          grpo_token<KL, Acc>(p, on ? x0 : Acc(0), on ? o0 : Acc(0), on ? r0 : Acc(0));
      acc[kPartLoss] += m * res.loss;
      acc[kPartClipLow] += res.clip_low ? m : Acc(0);
      acc[kPartClipHigh] += res.clip_high ? m : Acc(0);
      acc[kPartDual] += res.dual ? m : Acc(0);
      acc[kPartApproxKL] += m * res.approx_kl;
      acc[kPartKL] += m * res.kl;
      if (G) store_from(gr + j, m * s * res.grad);
    }
  }
  double* part = w.part + block * kNumPart;
#pragma unroll
  for (int k = 0; k < kNumPart; ++k) {
    const Acc v = block_sum(acc[k], smem);
    if (threadIdx.x == 0)
      part[k] = k == kPartLoss ? w.row_scale[i] * static_cast<double>(v) : static_cast<double>(v);
  }
}

__global__ void finalize_kernel(GrpoArgs a, int64_t parts) {
  __shared__ double smem[32];
  const GrpoWorkspace w = grpo_workspace(a.ws, a.n);
  double tot[kNumPart];
  for (int k = 0; k < kNumPart; ++k) tot[k] = 0.0;
  for (int64_t b = threadIdx.x; b < parts; b += blockDim.x)
    for (int k = 0; k < kNumPart; ++k) tot[k] += w.part[b * kNumPart + k];
  for (int k = 0; k < kNumPart; ++k) tot[k] = block_sum(tot[k], smem);
  if (threadIdx.x == 0) {
    const double tokens = w.misc[0];
    const double inv = tokens > 0.0 ? 1.0 / tokens : 0.0;
    a.out[kOutLoss] = tot[kPartLoss];
    a.out[kOutClipLow] = tot[kPartClipLow] * inv;
    a.out[kOutClipHigh] = tot[kPartClipHigh] * inv;
    a.out[kOutDual] = tot[kPartDual] * inv;
    a.out[kOutApproxKL] = tot[kPartApproxKL] * inv;
    a.out[kOutKL] = tot[kPartKL] * inv;
    a.out[kOutBadLogp] = tot[kPartBadLogp];
    a.out[kOutBadOld] = tot[kPartBadOld];
    a.out[kOutBadRef] = tot[kPartBadRef];
  }
}

int64_t chunks_per_row(int64_t t) { return (t + kChunk - 1) / kChunk; }

template <typename T, typename M, int KL>
void launch_fused_kl(const GrpoArgs& a, int64_t chunks, cudaStream_t st) {
  const unsigned blocks = static_cast<unsigned>(a.n * chunks);
  if (a.need_grad)
    fused_kernel<T, M, KL, true><<<blocks, kThreads, 0, st>>>(a, chunks);
  else
    fused_kernel<T, M, KL, false><<<blocks, kThreads, 0, st>>>(a, chunks);
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
