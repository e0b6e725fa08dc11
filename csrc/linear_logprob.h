// Fused linear log-prob: logp[i] = log_softmax(hidden[i] @ weight.T / temperature)[targets[i]]
// and the entropy of that distribution, without ever materializing the [N, V] logits.
//
// The chunk loop (csrc/linear_logprob_bindings.cpp) walks vocabulary chunks (outer) and token
// chunks (inner); for each [n, vc] block it computes the raw logits with ATen's mm (the BLAS /
// cuBLAS GEMM) and hands them to the per-device block kernels declared here:
//
//   forward   llp_*_fwd_block: an online log-sum-exp per token. State per token (all [N]):
//               m  running max of x = logit / temperature
//               s  sum exp(x - m)
//               a  sum exp(x - m) * (x - m)      (entropy only; shifted by m so that
//                                                 H = log s - a / s loses no digits to
//                                                 cancellation when the distribution is peaked)
//               xt x at the target (written by the chunk that holds it)
//             after the last chunk: logp = (xt - m) - log s, entropy = log s - a / s; saved
//             for backward: m and log s apart (not lse = m + log s: rounding m + log s to
//             the compute type loses log s, which is tiny when the distribution is peaked,
//             and with it every confident token's 1 - p; (x - m) is exact near the max).
//   backward  llp_*_bwd_block: the logits block is recomputed and turned in place into
//               d logp[i] / d logit[i, v] * g[i] = g[i] * (1[v == target] - p[i, v]) / T
//             which the driver multiplies into grad_hidden (+= G @ W_c) and grad_weight
//             (W_c rows: += G^T @ h).
//
// Rows are contiguous blocks of `ld` elements (the block's column count). `v0` is the block's
// first vocabulary index (targets are global indices). Scalar type: float (float32/bfloat16
// inputs, upcast per chunk) or double (float64, for gradcheck). The O(N) start and end of
// the online state (m = -inf, s = a = 0, xt = NaN so that a target outside [0, V) shows as NaN
// on the GPU; the CPU raises) are ATen ops in the driver.
#pragma once

#include <cstdint>

namespace srpo {

// Online-softmax state of a run of tokens (pointers at the block's first token). Always
// double, whatever the block type: it is O(N), and a token's state absorbs one rounding per
// vocabulary chunk (thousands with small chunks), which float32 would let add up.
struct LlpState {
  double* m;
  double* s;
  double* a;  // nullptr without entropy
  double* xt;
};

// ---- CPU (csrc/linear_logprob_cpu.cpp; rows split over ATen's intra-op threads) ----
template <typename S>
void llp_cpu_fwd_block(const S* logits, int64_t rows, int64_t cols, int64_t v0,
                       const int64_t* targets, S inv_temp, LlpState st);
template <typename S>
void llp_cpu_bwd_block(S* logits_to_grad, int64_t rows, int64_t cols, int64_t v0,
                       const int64_t* targets, const S* mx, const S* log_s, const S* g,
                       S inv_temp);

// ---- CUDA (csrc/linear_logprob_cuda.cu; no torch headers, compiles standalone with nvcc).
// `stream` is a cudaStream_t; the return value a cudaError_t (0: launched). ----
template <typename S>
int llp_cuda_fwd_block(const S* logits, int64_t rows, int64_t cols, int64_t v0,
                       const int64_t* targets, S inv_temp, LlpState st, void* stream);
template <typename S>
int llp_cuda_bwd_block(S* logits_to_grad, int64_t rows, int64_t cols, int64_t v0,
                       const int64_t* targets, const S* mx, const S* log_s, const S* g,
                       S inv_temp, void* stream);

}  // namespace srpo
