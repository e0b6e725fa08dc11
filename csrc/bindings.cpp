// torch.library registration of the fused GRPO loss: schema + CPU (and CUDA) implementations.
//
// The op returns the loss, the stats vector, the gradient d loss / d logp (computed in the same
// pass, so backward is a scale) and the per-sequence advantages [N] (O(N), for logging/tests).
// Autograd and the fake (meta) kernel are registered from Python (srpo/ops/_autograd.py).
#include <Python.h>
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <tuple>
#include <vector>

#include "grpo.h"

#if defined(SRPO_WITH_CUDA)
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace srpo {
namespace {

using at::Tensor;

// Any integer ids -> dense ids in [0, G), sync-free on every device (sort + cumsum).
Tensor dense_group_ids(const Tensor& ids) {
  Tensor ids64 = ids.to(at::kLong).contiguous();
  const int64_t n = ids64.numel();
  if (n == 0) return ids64;
  if (ids64.device().is_cpu()) {
    // Plain sort on the caller's thread: the ATen version below is ~5 small ops, and
    // index_put_ opens an OpenMP region whose wake-up costs milliseconds on a busy machine.
    const int64_t* src = ids64.const_data_ptr<int64_t>();
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [src](int64_t x, int64_t y) { return src[x] < src[y]; });
    Tensor dense = at::empty_like(ids64);
    int64_t* dst = dense.mutable_data_ptr<int64_t>();
    int64_t g = -1;
    for (int64_t k = 0; k < n; ++k) {
      if (k == 0 || src[order[k]] != src[order[k - 1]]) ++g;
      dst[order[k]] = g;
    }
    return dense;
  }
  auto sorted = ids64.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const Tensor& keys = std::get<0>(sorted);
  const Tensor& perm = std::get<1>(sorted);
  Tensor is_new = at::ones({n}, ids64.options());
  if (n > 1) is_new.slice(0, 1).copy_(keys.slice(0, 1).ne(keys.slice(0, 0, n - 1)));
  Tensor dense_sorted = is_new.cumsum(0).sub_(1);
  Tensor dense = at::empty_like(ids64);
  dense.index_put_({perm}, dense_sorted);
  return dense;
}

void check_2d(const Tensor& x, const Tensor& like, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.sizes() == like.sizes(), "srpo::grpo_fwd: ", name,
                    " must have the shape of logp ", like.sizes(), ", got ", x.sizes());
  TORCH_CHECK_VALUE(x.device() == like.device(), "srpo::grpo_fwd: ", name,
                    " must be on the device of logp (", like.device(), "), got ", x.device());
}

std::tuple<Tensor, Tensor, Tensor, Tensor> grpo_fwd(
    const Tensor& rewards, const Tensor& group_ids, const Tensor& logp, const Tensor& old_logp,
    const Tensor& mask, const c10::optional<Tensor>& ref_logp, double clip_low, double clip_high,
    double dual_clip, double kl_coef, int64_t kl_estimator, int64_t aggregation,
    double norm_constant, bool std_normalize, double eps, double zero_var_tol, bool need_grad) {
  TORCH_CHECK_VALUE(logp.dim() == 2, "srpo::grpo_fwd: logp must be [N, T], got ", logp.sizes());
  const int64_t n = logp.size(0), t = logp.size(1);
  const auto dt = logp.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16,
                    "srpo::grpo_fwd: logp must be float32, float64 or bfloat16, got ", dt);
  check_2d(old_logp, logp, "old_logp");
  check_2d(mask, logp, "mask");
  TORCH_CHECK_VALUE(old_logp.scalar_type() == dt, "srpo::grpo_fwd: old_logp dtype ",
                    old_logp.scalar_type(), " != logp dtype ", dt);
  const bool has_ref = ref_logp.has_value() && ref_logp->defined();
  if (has_ref) {
    check_2d(*ref_logp, logp, "ref_logp");
    TORCH_CHECK_VALUE(ref_logp->scalar_type() == dt, "srpo::grpo_fwd: ref_logp dtype ",
                      ref_logp->scalar_type(), " != logp dtype ", dt);
  }
  TORCH_CHECK_VALUE(rewards.dim() == 1 && rewards.size(0) == n,
                    "srpo::grpo_fwd: rewards must be [N] with N = logp.shape[0] = ", n);
  TORCH_CHECK_VALUE(group_ids.dim() == 1 && group_ids.size(0) == n,
                    "srpo::grpo_fwd: group_ids must be [N] with N = logp.shape[0] = ", n);
  TORCH_CHECK_VALUE(rewards.device() == logp.device() && group_ids.device() == logp.device(),
                    "srpo::grpo_fwd: rewards and group_ids must be on the device of logp");
  TORCH_CHECK_VALUE(at::isFloatingType(rewards.scalar_type()),
                    "srpo::grpo_fwd: rewards must be floating point");
  TORCH_CHECK_VALUE(at::isIntegralType(group_ids.scalar_type(), /*includeBool=*/false),
                    "srpo::grpo_fwd: group_ids must be an integer tensor");
  TORCH_CHECK_VALUE(kl_estimator >= kK1 && kl_estimator <= kK3, "bad kl_estimator");
  TORCH_CHECK_VALUE(aggregation >= kTokenMean && aggregation <= kSeqMeanTokenSumNorm,
                    "bad aggregation");

  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  const auto f64 = logp.options().dtype(at::kDouble);
  Tensor lp = logp.contiguous();
  Tensor olp = old_logp.contiguous();
  Tensor rlp = has_ref ? ref_logp->contiguous() : Tensor();
  const bool mask_is_bool = mask.scalar_type() == at::kBool;
  Tensor mk = mask_is_bool ? mask.contiguous() : mask.to(acc).contiguous();
  Tensor r64 = rewards.to(at::kDouble).contiguous();
  Tensor gid = dense_group_ids(group_ids);

  Tensor out = at::zeros({kNumOut}, f64);
  Tensor adv = at::zeros({n}, f64);
  Tensor grad = need_grad ? at::empty({n, t}, logp.options()) : at::empty({0}, logp.options());

  if (n > 0) {
    const bool cuda = logp.is_cuda();
#if defined(SRPO_WITH_CUDA)
    const int64_t parts = cuda ? grpo_cuda_parts(n, t) : grpo_cpu_parts(n, t);
#else
    TORCH_CHECK(!cuda, "srpo::grpo_fwd: this build has no CUDA kernels");
    const int64_t parts = grpo_cpu_parts(n, t);
#endif
    Tensor ws = at::empty({grpo_workspace_doubles(n, parts)}, f64);
    GrpoArgs a;
    a.n = n;
    a.t = t;
    a.dtype = dt == at::kDouble ? kF64 : (dt == at::kBFloat16 ? kBF16 : kF32);
    a.kl = has_ref ? static_cast<int32_t>(kl_estimator) : kKLNone;
    a.agg = static_cast<int32_t>(aggregation);
    a.mask_is_bool = mask_is_bool;
    a.std_normalize = std_normalize;
    a.need_grad = need_grad;
    a.clip_low = clip_low;
    a.clip_high = clip_high;
    a.dual_clip = dual_clip;
    a.kl_coef = kl_coef;
    a.norm_constant = norm_constant;
    a.eps = eps;
    a.zero_var_tol = zero_var_tol;
    a.rewards = r64.data_ptr<double>();
    a.gid = gid.data_ptr<int64_t>();
    a.logp = lp.data_ptr();
    a.old_logp = olp.data_ptr();
    a.ref_logp = has_ref ? rlp.data_ptr() : nullptr;
    a.mask = mk.data_ptr();
    a.grad = need_grad ? grad.data_ptr() : nullptr;
    a.adv = adv.data_ptr<double>();
    a.out = out.data_ptr<double>();
    a.ws = ws.data_ptr<double>();
    if (cuda) {
#if defined(SRPO_WITH_CUDA)
      const c10::cuda::CUDAGuard guard(logp.device());
      const int err = grpo_cuda_forward(a, c10::cuda::getCurrentCUDAStream().stream());
      TORCH_CHECK(err == 0, "srpo::grpo_fwd: CUDA launch failed with cudaError ", err);
#endif
    } else {
      // Rows in blocks of ~16K tokens over the caller + (threads - 1) helpers that are only
      // waited for once they hold a block (grpo.h: grpo_cpu_parallel).
      const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(t, 1));
      const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();
      grpo_cpu_parallel(
          n, grain, threads,
          [](void* p, int64_t b, int64_t e) { grpo_cpu_row_lengths(*static_cast<GrpoArgs*>(p), b, e); },
          &a);
      grpo_cpu_prepare(a);
      grpo_cpu_parallel(
          n, grain, threads,
          [](void* p, int64_t b, int64_t e) { grpo_cpu_rows(*static_cast<GrpoArgs*>(p), b, e); }, &a);
      grpo_cpu_finalize(a);
    }
  }
  Tensor out_acc = out.to(acc);
  return {out_acc.select(0, kOutLoss).clone(), out_acc.slice(0, 1).clone(), grad, adv};
}

int64_t abi_version() { return kGrpoAbiVersion; }

bool has_cuda_kernels() {
#if defined(SRPO_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace srpo

// The JIT fallback compiles with -DSRPO_OP_NAMESPACE=srpo_jit so it can coexist with a stale
// prebuilt srpo._C in the same process (a namespace can be defined only once).
#ifndef SRPO_OP_NAMESPACE
#define SRPO_OP_NAMESPACE srpo
#endif
#define SRPO_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define SRPO_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)

SRPO_LIBRARY(SRPO_OP_NAMESPACE, m) {
  m.def(
      "grpo_fwd(Tensor rewards, Tensor group_ids, Tensor logp, Tensor old_logp, Tensor mask, "
      "Tensor? ref_logp, float clip_low, float clip_high, float dual_clip, float kl_coef, "
      "int kl_estimator, int aggregation, float norm_constant, bool std_normalize, float eps, "
      "float zero_var_tol, bool need_grad) -> (Tensor loss, Tensor stats, Tensor grad, "
      "Tensor adv)");
  m.def("abi_version() -> int", &srpo::abi_version);
  m.def("has_cuda_kernels() -> bool", &srpo::has_cuda_kernels);
}

SRPO_LIBRARY_IMPL(SRPO_OP_NAMESPACE, CPU, m) { m.impl("grpo_fwd", &srpo::grpo_fwd); }

#if defined(SRPO_WITH_CUDA)
SRPO_LIBRARY_IMPL(SRPO_OP_NAMESPACE, CUDA, m) { m.impl("grpo_fwd", &srpo::grpo_fwd); }
#endif

// Importable as `srpo._C` (the ops register at load time; the module itself is empty).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
