// torch.library registration and chunk driver of the fused linear log-prob (linear_logprob.h).
// A fragment of the library that csrc/bindings.cpp defines, so that file is untouched.
//
//   linear_logprob_fwd  -> (logp [N], entropy [N] or [0], lse [2, N])
//                          (lse: the running max m and log s, apart, saved for backward)
//   linear_logprob_bwd  -> (grad_hidden [N, H] or [0], grad_weight [V, H] or [0])
//   linear_logprob_bwd_into -> grad_hidden [N, H] or [0]; the weight gradient added in place
//                          into its grad_weight argument (a parameter's .grad)
//
// The driver is device-agnostic: ATen mm into one reused [chunk_n, chunk_v] block, then the
// device's block kernel (Kernels::fwd / Kernels::bwd). Extra memory: the block, the float32
// copy of one weight chunk (bfloat16 inputs only), O(N) state, and in backward a float32
// [N, H] grad_hidden accumulator and one [chunk_v, H] grad_weight chunk.
// Autograd and the fake kernel are registered from Python (srpo/ops/linear_logprob.py).
#include <torch/library.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "linear_logprob.h"

#if defined(SRPO_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace srpo {
namespace {

using at::Tensor;

// Defaults: a 32 MB float32 block at 2048 x 4096; whole-batch token chunks keep the GEMMs
// large (K = H is fixed, so M and N are what the BLAS can block over).
constexpr int64_t kDefaultChunkN = 2048;
constexpr int64_t kDefaultChunkV = 4096;

struct Chunks {
  int64_t n, v;
};

Chunks pick_chunks(int64_t n, int64_t v, int64_t chunk_n, int64_t chunk_v) {
  TORCH_CHECK_VALUE(chunk_n >= 0 && chunk_v >= 0,
                    "srpo::linear_logprob: chunk sizes must be >= 0 (0: default)");
  return {std::max<int64_t>(1, std::min(n, chunk_n > 0 ? chunk_n : kDefaultChunkN)),
          std::max<int64_t>(1, std::min(v, chunk_v > 0 ? chunk_v : kDefaultChunkV))};
}

at::ScalarType compute_type(const Tensor& hidden) {
  return hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_inputs(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                  double temperature) {
  TORCH_CHECK_VALUE(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
                    "srpo::linear_logprob: hidden must be [N, H] and weight [V, H], got ",
                    hidden.sizes(), " and ", weight.sizes());
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == hidden.size(0),
                    "srpo::linear_logprob: targets must be [N] with N = ", hidden.size(0),
                    ", got ", targets.sizes());
  TORCH_CHECK_VALUE(weight.size(0) > 0, "srpo::linear_logprob: empty vocabulary (V = 0)");
  for (const Tensor* t : {&hidden, &weight}) {
    const auto dt = t->scalar_type();
    TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16,
                      "srpo::linear_logprob: hidden/weight must be float32, float64 or "
                      "bfloat16, got ", dt);
  }
  TORCH_CHECK_VALUE((hidden.scalar_type() == at::kDouble) == (weight.scalar_type() == at::kDouble),
                    "srpo::linear_logprob: float64 needs both hidden and weight in float64");
  TORCH_CHECK_VALUE(at::isIntegralType(targets.scalar_type(), /*includeBool=*/false),
                    "srpo::linear_logprob: targets must be an integer tensor");
  TORCH_CHECK_VALUE(hidden.device() == weight.device() && hidden.device() == targets.device(),
                    "srpo::linear_logprob: hidden, weight and targets must share a device");
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0.0,
                    "srpo::linear_logprob: temperature must be finite and > 0, got ",
                    temperature);
}

// The CPU can afford the host check (the GPU path shows a bad target as NaN instead).
void check_targets_cpu(const Tensor& targets, int64_t v) {
  if (targets.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(targets);
  TORCH_CHECK_INDEX(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < v,
                    "srpo::linear_logprob: targets must be in [0, ", v, ")");
}

// The [rows, cols] view of the start of a flat block buffer (contiguous for any shape).
Tensor block_view(const Tensor& flat, int64_t rows, int64_t cols) {
  return flat.narrow(0, 0, rows * cols).view({rows, cols});
}

struct CpuKernels {
  static constexpr bool kHostTargetCheck = true;
  static int guard(const Tensor&) { return 0; }
  template <typename S>
  static void fwd(const Tensor& blk, int64_t v0, const int64_t* tg, S inv_t, LlpState st) {
    llp_cpu_fwd_block<S>(blk.const_data_ptr<S>(), blk.size(0), blk.size(1), v0, tg, inv_t, st);
  }
  template <typename S>
  static void bwd(Tensor& blk, int64_t v0, const int64_t* tg, const S* mx, const S* log_s,
                  const S* g, S inv_t) {
    llp_cpu_bwd_block<S>(blk.mutable_data_ptr<S>(), blk.size(0), blk.size(1), v0, tg, mx, log_s,
                         g, inv_t);
  }
};

#if defined(SRPO_WITH_CUDA)
struct CudaKernels {
  static constexpr bool kHostTargetCheck = false;
  static c10::cuda::CUDAGuard guard(const Tensor& t) { return c10::cuda::CUDAGuard(t.device()); }
  static void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
  template <typename S>
  static void fwd(const Tensor& blk, int64_t v0, const int64_t* tg, S inv_t, LlpState st) {
    const int err = llp_cuda_fwd_block<S>(blk.const_data_ptr<S>(), blk.size(0), blk.size(1), v0,
                                          tg, inv_t, st, stream());
    TORCH_CHECK(err == 0, "srpo::linear_logprob_fwd: CUDA launch failed with cudaError ", err);
  }
  template <typename S>
  static void bwd(Tensor& blk, int64_t v0, const int64_t* tg, const S* mx, const S* log_s,
                  const S* g, S inv_t) {
    const int err = llp_cuda_bwd_block<S>(blk.mutable_data_ptr<S>(), blk.size(0), blk.size(1),
                                          v0, tg, mx, log_s, g, inv_t, stream());
    TORCH_CHECK(err == 0, "srpo::linear_logprob_bwd: CUDA launch failed with cudaError ", err);
  }
};
#endif

// ---- forward ----

template <typename Kernels, typename S>
void fwd_chunks(const Tensor& h, const Tensor& weight, const Tensor& tg, S inv_t, Chunks c,
                LlpState st, const Tensor& flat) {
  const int64_t n = h.size(0), v = weight.size(0);
  const auto ct = h.scalar_type();
  for (int64_t v0 = 0; v0 < v; v0 += c.v) {
    const int64_t vc = std::min(c.v, v - v0);
    const Tensor wc = weight.narrow(0, v0, vc).to(ct);  // a view unless bfloat16
    for (int64_t n0 = 0; n0 < n; n0 += c.n) {
      const int64_t nc = std::min(c.n, n - n0);
      Tensor blk = block_view(flat, nc, vc);
      at::mm_out(blk, h.narrow(0, n0, nc), wc.t());
      LlpState sub{st.m + n0, st.s + n0, st.a ? st.a + n0 : nullptr, st.xt + n0};
      Kernels::template fwd<S>(blk, v0, tg.const_data_ptr<int64_t>() + n0, inv_t, sub);
    }
  }
}

template <typename Kernels>
std::tuple<Tensor, Tensor, Tensor> linear_logprob_fwd(const Tensor& hidden, const Tensor& weight,
                                                      const Tensor& targets, double temperature,
                                                      bool with_entropy, int64_t chunk_n,
                                                      int64_t chunk_v) {
  check_inputs(hidden, weight, targets, temperature);
  // Launches go to hidden's device (CUDA); a no-op on the CPU.
  [[maybe_unused]] const auto device_guard = Kernels::guard(hidden);
  const int64_t n = hidden.size(0), v = weight.size(0);
  const auto ct = compute_type(hidden);
  const auto opts = hidden.options().dtype(ct);
  const Tensor tg = targets.to(at::kLong).contiguous();
  if (Kernels::kHostTargetCheck) check_targets_cpu(tg, v);
  const auto f64 = hidden.options().dtype(at::kDouble);  // the state (linear_logprob.h)
  Tensor m = at::full({n}, -std::numeric_limits<double>::infinity(), f64);
  Tensor s = at::zeros({n}, f64);
  Tensor a = with_entropy ? at::zeros({n}, f64) : at::empty({0}, f64);
  Tensor xt = at::full({n}, std::numeric_limits<double>::quiet_NaN(), f64);
  if (n > 0) {
    const Chunks c = pick_chunks(n, v, chunk_n, chunk_v);
    const Tensor h = hidden.to(ct).contiguous();
    const Tensor flat = at::empty({c.n * c.v}, opts);
    const LlpState st{m.mutable_data_ptr<double>(), s.mutable_data_ptr<double>(),
                      with_entropy ? a.mutable_data_ptr<double>() : nullptr,
                      xt.mutable_data_ptr<double>()};
    AT_DISPATCH_FLOATING_TYPES(ct, "linear_logprob_fwd", [&] {
      fwd_chunks<Kernels, scalar_t>(h, weight, tg, static_cast<scalar_t>(1.0 / temperature), c,
                                    st, flat);
    });
  }
  // O(N) epilogue: logp = (x_target - m) - log s, H = log s - a / s; m and log s are saved
  // apart (linear_logprob.h says why).
  const Tensor log_s = s.log();
  Tensor logp = ((xt - m) - log_s).to(ct);
  Tensor entropy = with_entropy ? (log_s - a / s).to(ct) : at::empty({0}, opts);
  Tensor lse = at::stack({m, log_s}).to(ct);
  return {logp, entropy, lse};
}

// ---- backward ----

template <typename Kernels, typename S>
void bwd_chunks(const Tensor& h, const Tensor& weight, const Tensor& tg, const Tensor& lse,
                const Tensor& g, S inv_t, Chunks c, const Tensor& flat, Tensor& gh, Tensor& gw,
                bool accumulate) {
  const int64_t n = h.size(0), v = weight.size(0);
  const auto ct = h.scalar_type();
  const bool gw_direct = gw.defined() && gw.scalar_type() == ct;  // else via a float32 chunk
  for (int64_t v0 = 0; v0 < v; v0 += c.v) {
    const int64_t vc = std::min(c.v, v - v0);
    const Tensor wc = weight.narrow(0, v0, vc).to(ct);
    Tensor gwc;
    if (gw.defined())
      gwc = gw_direct ? gw.narrow(0, v0, vc) : at::empty({vc, h.size(1)}, h.options());
    for (int64_t n0 = 0; n0 < n; n0 += c.n) {
      const int64_t nc = std::min(c.n, n - n0);
      const Tensor hc = h.narrow(0, n0, nc);
      Tensor blk = block_view(flat, nc, vc);
      at::mm_out(blk, hc, wc.t());  // the logits again (nothing [N, V] was saved)
      Kernels::template bwd<S>(blk, v0, tg.const_data_ptr<int64_t>() + n0,
                               lse.const_data_ptr<S>() + n0, lse.const_data_ptr<S>() + n + n0,
                               g.const_data_ptr<S>() + n0, inv_t);
      if (gh.defined()) gh.narrow(0, n0, nc).addmm_(blk, wc);
      if (!gw.defined()) continue;
      if (n0 == 0 && !(accumulate && gw_direct))
        at::mm_out(gwc, blk.t(), hc);
      else
        gwc.addmm_(blk.t(), hc);
    }
    if (!gw.defined() || gw_direct) continue;
    if (accumulate)
      gw.narrow(0, v0, vc).add_(gwc);
    else
      gw.narrow(0, v0, vc).copy_(gwc);
  }
}

void check_bwd_inputs(const char* op, const Tensor& grad_logp, const Tensor& hidden,
                      const Tensor& weight, const Tensor& targets, const Tensor& lse,
                      double temperature) {
  check_inputs(hidden, weight, targets, temperature);
  const int64_t n = hidden.size(0);
  TORCH_CHECK_VALUE(grad_logp.dim() == 1 && grad_logp.size(0) == n && lse.dim() == 2 &&
                        lse.size(0) == 2 && lse.size(1) == n,
                    op, ": grad_logp must be [N] and lse [2, N]");
}

// The casts and the chunk loop of both backward entry points; `gh` (compute type, zeroed) and
// `gw` are whichever the caller wants (undefined: not computed).
template <typename Kernels>
void bwd_all_chunks(const Tensor& grad_logp, const Tensor& hidden, const Tensor& weight,
                    const Tensor& targets, const Tensor& lse, double temperature, int64_t chunk_n,
                    int64_t chunk_v, Tensor& gh, Tensor& gw, bool accumulate) {
  const int64_t n = hidden.size(0);
  if (n == 0 || !(gh.defined() || gw.defined())) return;
  const auto ct = compute_type(hidden);
  const Chunks c = pick_chunks(n, weight.size(0), chunk_n, chunk_v);
  const Tensor h = hidden.to(ct).contiguous();
  const Tensor tg = targets.to(at::kLong).contiguous();
  const Tensor l = lse.to(ct).contiguous();
  const Tensor g = grad_logp.to(ct).contiguous();
  const Tensor flat = at::empty({c.n * c.v}, hidden.options().dtype(ct));
  AT_DISPATCH_FLOATING_TYPES(ct, "linear_logprob_bwd", [&] {
    bwd_chunks<Kernels, scalar_t>(h, weight, tg, l, g, static_cast<scalar_t>(1.0 / temperature),
                                  c, flat, gh, gw, accumulate);
  });
}

template <typename Kernels>
std::tuple<Tensor, Tensor> linear_logprob_bwd(const Tensor& grad_logp, const Tensor& hidden,
                                              const Tensor& weight, const Tensor& targets,
                                              const Tensor& lse, double temperature,
                                              bool need_hidden, bool need_weight,
                                              int64_t chunk_n, int64_t chunk_v) {
  check_bwd_inputs("srpo::linear_logprob_bwd", grad_logp, hidden, weight, targets, lse,
                   temperature);
  [[maybe_unused]] const auto device_guard = Kernels::guard(hidden);
  const int64_t n = hidden.size(0), v = weight.size(0), hd = hidden.size(1);
  const auto opts = hidden.options().dtype(compute_type(hidden));
  // grad_hidden accumulates over vocabulary chunks: in the compute type, cast at the end.
  Tensor gh = need_hidden ? at::zeros({n, hd}, opts) : Tensor();
  // Every weight chunk is written by its first token chunk (mm_out), so no zero fill unless
  // there are no tokens.
  Tensor gw;
  if (need_weight)
    gw = n > 0 ? at::empty({v, hd}, weight.options()) : at::zeros({v, hd}, weight.options());
  bwd_all_chunks<Kernels>(grad_logp, hidden, weight, targets, lse, temperature, chunk_n, chunk_v,
                          gh, gw, /*accumulate=*/false);
  Tensor grad_hidden = need_hidden ? gh.to(hidden.scalar_type()) : at::empty({0}, opts);
  Tensor grad_weight = need_weight ? gw : at::empty({0}, opts);
  return {grad_hidden, grad_weight};
}

// The same backward with the weight gradient added into `grad_weight` (a parameter's .grad)
// inside the GEMMs instead of returned: no [V, H] temporary, and for a tied LM head nothing
// [V, H] held by autograd from the head's backward (the first) to the embedding's (the last).
// Megatron's gradient-accumulation fusion, for the one weight whose gradient is vocabulary-sized.
template <typename Kernels>
Tensor linear_logprob_bwd_into(const Tensor& grad_logp, const Tensor& hidden, const Tensor& weight,
                               const Tensor& targets, const Tensor& lse, Tensor grad_weight,
                               double temperature, bool need_hidden, int64_t chunk_n,
                               int64_t chunk_v) {
  check_bwd_inputs("srpo::linear_logprob_bwd_into", grad_logp, hidden, weight, targets, lse,
                   temperature);
  TORCH_CHECK_VALUE(grad_weight.sizes() == weight.sizes() &&
                        grad_weight.scalar_type() == weight.scalar_type() &&
                        grad_weight.device() == weight.device() && grad_weight.is_contiguous(),
                    "srpo::linear_logprob_bwd_into: grad_weight must be a contiguous tensor of "
                    "the weight's shape, dtype and device, got ",
                    grad_weight.sizes(), " ", grad_weight.scalar_type());
  [[maybe_unused]] const auto device_guard = Kernels::guard(hidden);
  const auto opts = hidden.options().dtype(compute_type(hidden));
  Tensor gh = need_hidden ? at::zeros({hidden.size(0), hidden.size(1)}, opts) : Tensor();
  bwd_all_chunks<Kernels>(grad_logp, hidden, weight, targets, lse, temperature, chunk_n, chunk_v,
                          gh, grad_weight, /*accumulate=*/true);
  return need_hidden ? gh.to(hidden.scalar_type()) : at::empty({0}, opts);
}

}  // namespace
}  // namespace srpo

#ifndef SRPO_OP_NAMESPACE
#define SRPO_OP_NAMESPACE srpo
#endif
#define SRPO_LLP_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define SRPO_LLP_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)

SRPO_LLP_FRAGMENT(SRPO_OP_NAMESPACE, m) {
  m.def(
      "linear_logprob_fwd(Tensor hidden, Tensor weight, Tensor targets, float temperature=1.0, "
      "bool with_entropy=False, int chunk_n=0, int chunk_v=0) "
      "-> (Tensor logp, Tensor entropy, Tensor lse)");
  m.def(
      "linear_logprob_bwd(Tensor grad_logp, Tensor hidden, Tensor weight, Tensor targets, "
      "Tensor lse, float temperature=1.0, bool need_hidden=True, bool need_weight=True, "
      "int chunk_n=0, int chunk_v=0) -> (Tensor grad_hidden, Tensor grad_weight)");
  m.def(
      "linear_logprob_bwd_into(Tensor grad_logp, Tensor hidden, Tensor weight, Tensor targets, "
      "Tensor lse, Tensor(a!) grad_weight, float temperature=1.0, bool need_hidden=True, "
      "int chunk_n=0, int chunk_v=0) -> Tensor grad_hidden");
}

SRPO_LLP_IMPL(SRPO_OP_NAMESPACE, CPU, m) {
  m.impl("linear_logprob_fwd", &srpo::linear_logprob_fwd<srpo::CpuKernels>);
  m.impl("linear_logprob_bwd", &srpo::linear_logprob_bwd<srpo::CpuKernels>);
  m.impl("linear_logprob_bwd_into", &srpo::linear_logprob_bwd_into<srpo::CpuKernels>);
}

#if defined(SRPO_WITH_CUDA)
SRPO_LLP_IMPL(SRPO_OP_NAMESPACE, CUDA, m) {
  m.impl("linear_logprob_fwd", &srpo::linear_logprob_fwd<srpo::CudaKernels>);
  m.impl("linear_logprob_bwd", &srpo::linear_logprob_bwd<srpo::CudaKernels>);
  m.impl("linear_logprob_bwd_into", &srpo::linear_logprob_bwd_into<srpo::CudaKernels>);
}
#endif
