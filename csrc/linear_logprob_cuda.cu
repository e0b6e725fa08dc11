// CUDA block kernels of the fused linear log-prob (math and state: linear_logprob.h). The GEMMs
// are cuBLAS's through ATen mm in the driver (linear_logprob_bindings.cpp); these kernels are the
// per-block reductions. No torch headers: compiles standalone with
// `nvcc -c -arch=sm_90 linear_logprob_cuda.cu`.
//
//   fwd_block_kernel  one thread block per token row (grid-strided): block max of the row, then
//                     block sums of exp(x - m) and exp(x - m) * (x - m); thread 0 merges them
//                     into the row's online state.
//   bwd_block_kernel  elementwise over the block: g * (1[v == target] - exp((x - m) - log s)) / T.
// All launches go on the caller's stream.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "linear_logprob.h"

namespace srpo {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxGrid = 65535;

template <typename S>
__device__ __forceinline__ S exp_s(S x);
template <>
__device__ __forceinline__ float exp_s<float>(float x) {
  return expf(x);
}
template <>
__device__ __forceinline__ double exp_s<double>(double x) {
  return exp(x);
}

template <typename S>
__device__ __forceinline__ S neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return -INFINITY;
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return -static_cast<double>(INFINITY);
}

template <typename S>
__device__ __forceinline__ S warp_sum(S v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename S>
__device__ __forceinline__ S warp_max(S v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_down_sync(0xffffffffu, v, off));
  return v;
}

// Block-wide reduction; the result is broadcast to every thread. `smem` holds >= 32 values.
template <typename S, bool kMax>
__device__ S block_reduce(S v, S* smem) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();  // smem may still be read by a previous reduction
  if (lane == 0) smem[wid] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < warps ? smem[threadIdx.x] : (kMax ? neg_inf<S>() : S(0));
  if (wid == 0) {
    v = kMax ? warp_max(v) : warp_sum(v);
    if (lane == 0) smem[0] = v;
  }
  __syncthreads();
  return smem[0];
}

template <typename S>
__global__ void fwd_block_kernel(const S* __restrict__ logits, int64_t rows, int64_t cols,
                                 int64_t v0, const int64_t* __restrict__ targets, S inv_temp,
                                 LlpState st) {
  __shared__ S smem[32];
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {
    const S* row = logits + i * cols;
    S mx = neg_inf<S>();
    for (int64_t v = threadIdx.x; v < cols; v += blockDim.x) mx = fmax(mx, row[v]);
    // inv_temp > 0: the max of x is the max of the logits, scaled. Block sums are around the
    // block's max (in S); thread 0 merges them into the double state (linear_logprob.h).
    const S bm = block_reduce<S, true>(mx, smem) * inv_temp;
    if (bm == neg_inf<S>()) continue;  // every logit of the row is -inf (uniform in the block)
    S s = 0, a = 0;
    for (int64_t v = threadIdx.x; v < cols; v += blockDim.x) {
      const S d = row[v] * inv_temp - bm;
      const S e = exp_s(d);
      s += e;
      a += e * d;
    }
    s = block_reduce<S, false>(s, smem);
    if (st.a != nullptr) a = block_reduce<S, false>(a, smem);
    if (threadIdx.x == 0) {
      const double m_old = st.m[i], s_old = st.s[i], mb = static_cast<double>(bm);
      const double mn = fmax(m_old, mb);
      // s_old == 0: no block yet (m_old = -inf; s_old * (m_old - mn) would be NaN).
      const double c_old = s_old > 0.0 ? exp(m_old - mn) : 0.0;
      const double c_blk = exp(mb - mn);
      if (st.a != nullptr) {
        const double a_old = s_old > 0.0 ? c_old * (st.a[i] + s_old * (m_old - mn)) : 0.0;
        st.a[i] = a_old + c_blk * (static_cast<double>(a) + static_cast<double>(s) * (mb - mn));
      }
      st.s[i] = c_old * s_old + c_blk * static_cast<double>(s);
      st.m[i] = mn;
      const int64_t t = targets[i];
      if (t >= v0 && t < v0 + cols) st.xt[i] = static_cast<double>(row[t - v0] * inv_temp);
    }
  }
}

template <typename S>
__global__ void bwd_block_kernel(S* __restrict__ blk, int64_t rows, int64_t cols, int64_t v0,
                                 const int64_t* __restrict__ targets, const S* __restrict__ mx,
                                 const S* __restrict__ log_s, const S* __restrict__ g,
                                 S inv_temp) {
  const int64_t total = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += stride) {
    const int64_t i = k / cols, v = k - i * cols;
    const S gi = g[i] * inv_temp;
    const S hit = targets[i] == v0 + v ? S(1) : S(0);
    blk[k] = gi * (hit - exp_s((blk[k] * inv_temp - mx[i]) - log_s[i]));
  }
}

int grid_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kMaxGrid ? kMaxGrid : blocks));
}

}  // namespace

template <typename S>
int llp_cuda_fwd_block(const S* logits, int64_t rows, int64_t cols, int64_t v0,
                       const int64_t* targets, S inv_temp, LlpState st, void* stream) {
  if (rows == 0 || cols == 0) return 0;
  fwd_block_kernel<S><<<grid_for(rows, 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, rows, cols, v0, targets, inv_temp, st);
  return static_cast<int>(cudaGetLastError());
}

template <typename S>
int llp_cuda_bwd_block(S* logits_to_grad, int64_t rows, int64_t cols, int64_t v0,
                       const int64_t* targets, const S* mx, const S* log_s, const S* g,
                       S inv_temp, void* stream) {
  if (rows == 0 || cols == 0) return 0;
  bwd_block_kernel<S>
      <<<grid_for(rows * cols, 4 * kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
          logits_to_grad, rows, cols, v0, targets, mx, log_s, g, inv_temp);
  return static_cast<int>(cudaGetLastError());
}

template int llp_cuda_fwd_block<float>(const float*, int64_t, int64_t, int64_t, const int64_t*,
                                       float, LlpState, void*);
template int llp_cuda_fwd_block<double>(const double*, int64_t, int64_t, int64_t,
                                        const int64_t*, double, LlpState, void*);
template int llp_cuda_bwd_block<float>(float*, int64_t, int64_t, int64_t, const int64_t*,
                                       const float*, const float*, const float*, float, void*);
template int llp_cuda_bwd_block<double>(double*, int64_t, int64_t, int64_t, const int64_t*,
                                        const double*, const double*, const double*, double,
                                        void*);

}  // namespace srpo
