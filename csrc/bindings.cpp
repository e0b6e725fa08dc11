// torch.library registration of the fused GRPO loss: the schema, and one implementation per
// dispatch key (CPU; CUDA when built with it) sharing the argument checks, the allocation and
// the packing of the outputs.
//
// token_weight (optional, [N, T] floating, detached): per-token rollout-correction weights that
// multiply the surrogate (policy-gradient) term and its gradient, not the KL term; the
// aggregation denominators are unchanged (srpo/algo/rollout_correction.py).
//
// advantages (optional, [N] floating) and denominator (optional float > 0): the loss
// pass of a micro-batch cut from a larger mini-batch. The advantages of the whole mini-batch come
// from one advantage pass (this op on [N, 0] tensors: its `adv` output), the rows take them
// instead of their groups' statistics, and the aggregation divides by the mini-batch's token
// (token-mean) or sequence count instead of this call's, so the micro-batch losses add up to the
// whole batch's loss and gradient. With advantages, rewards and group_ids are not read.
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
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "grpo.h"

#if defined(SRPO_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace srpo {
namespace {

using at::Tensor;
using Outputs = std::tuple<Tensor, Tensor, Tensor, Tensor>;  // loss, stats, grad, adv

// The loss options of the schema, validated (kl_estimator and aggregation as enums).
struct Options {
  double clip_low, clip_high;
  std::optional<double> dual_clip;
  double kl_coef;
  int32_t kl;  // estimator; only used with ref_logp
  int32_t agg;
  std::optional<double> norm_constant;
  bool std_normalize;
  double eps, zero_var_tol;
  bool need_grad;
  std::optional<double> denominator;  // the mini-batch's normalizer (micro-batches free of groups)
};

// Names as in srpo.algo (KL_ESTIMATORS, AGGREGATIONS), in GrpoKL / GrpoAgg order.
constexpr std::string_view kKLNames[] = {"k1", "k2", "k3"};
constexpr std::string_view kAggNames[] = {"token-mean", "seq-mean-token-mean",
                                          "seq-mean-token-sum-norm"};

template <size_t K>
int32_t parse_name(std::string_view value, const std::string_view (&names)[K], const char* arg) {
  for (size_t k = 0; k < K; ++k)
    if (value == names[k]) return static_cast<int32_t>(k);
  std::string valid;
  for (size_t k = 0; k < K; ++k) valid += (k ? ", " : "") + std::string(names[k]);
  TORCH_CHECK_VALUE(false, "srpo::grpo_fwd: ", arg, " must be one of ", valid, ", got '",
                    std::string(value), "'");
  return 0;
}

// ---- step 1: argument checks ----

void check_like_logp(const Tensor& x, const Tensor& logp, const char* name, bool same_dtype) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.sizes() == logp.sizes(), "srpo::grpo_fwd: ", name,
                    " must have the shape of logp ", logp.sizes(), ", got ", x.sizes());
  TORCH_CHECK_VALUE(x.device() == logp.device(), "srpo::grpo_fwd: ", name,
                    " must be on the device of logp (", logp.device(), "), got ", x.device());
  TORCH_CHECK_VALUE(!same_dtype || x.scalar_type() == logp.scalar_type(), "srpo::grpo_fwd: ",
                    name, " dtype ", x.scalar_type(), " != logp dtype ", logp.scalar_type());
}

void check_tensors(const Tensor& rewards, const Tensor& group_ids, const Tensor& logp,
                   const Tensor& old_logp, const Tensor& mask,
                   const std::optional<Tensor>& ref_logp,
                   const std::optional<Tensor>& token_weight) {
  TORCH_CHECK_VALUE(logp.dim() == 2, "srpo::grpo_fwd: logp must be [N, T], got ", logp.sizes());
  const auto dt = logp.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16,
                    "srpo::grpo_fwd: logp must be float32, float64 or bfloat16, got ", dt);
  check_like_logp(old_logp, logp, "old_logp", /*same_dtype=*/true);
  check_like_logp(mask, logp, "mask", /*same_dtype=*/false);
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool || at::isFloatingType(mask.scalar_type()),
                    "srpo::grpo_fwd: mask must be bool or floating point, got ",
                    mask.scalar_type());
  if (ref_logp.has_value()) check_like_logp(*ref_logp, logp, "ref_logp", /*same_dtype=*/true);
  if (token_weight.has_value()) {
    check_like_logp(*token_weight, logp, "token_weight", /*same_dtype=*/false);
    TORCH_CHECK_VALUE(at::isFloatingType(token_weight->scalar_type()),
                      "srpo::grpo_fwd: token_weight must be floating point, got ",
                      token_weight->scalar_type());
  }
  const int64_t n = logp.size(0);
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
}

// The ranges srpo.algo.LossConfig enforces; the kernels rely on them (e.g. dual_clip > 1 keeps
// the dual-clip flag off at masked positions).
void check_options(const Options& o) {
  TORCH_CHECK_VALUE(o.clip_low >= 0.0 && o.clip_low < 1.0,
                    "srpo::grpo_fwd: clip_low must be in [0, 1), got ", o.clip_low);
  TORCH_CHECK_VALUE(o.clip_high >= 0.0, "srpo::grpo_fwd: clip_high must be >= 0, got ",
                    o.clip_high);
  TORCH_CHECK_VALUE(!o.dual_clip || *o.dual_clip > 1.0,
                    "srpo::grpo_fwd: dual_clip must be > 1 or None, got ", o.dual_clip.value_or(0));
  TORCH_CHECK_VALUE(o.kl_coef >= 0.0, "srpo::grpo_fwd: kl_coef must be >= 0, got ", o.kl_coef);
  TORCH_CHECK_VALUE(!o.norm_constant || *o.norm_constant > 0.0,
                    "srpo::grpo_fwd: norm_constant must be > 0 or None");
  TORCH_CHECK_VALUE(o.eps >= 0.0 && o.zero_var_tol >= 0.0,
                    "srpo::grpo_fwd: eps and zero_var_tol must be >= 0");
  TORCH_CHECK_VALUE(!o.denominator || *o.denominator > 0.0,
                    "srpo::grpo_fwd: denominator must be > 0 or None, got ",
                    o.denominator.value_or(0));
}

Options parse_options(double clip_low, double clip_high, std::optional<double> dual_clip,
                      double kl_coef, c10::string_view kl_estimator,
                      c10::string_view aggregation, std::optional<double> norm_constant,
                      bool std_normalize, double eps, double zero_var_tol, bool need_grad,
                      std::optional<double> denominator) {
  Options o;
  o.clip_low = clip_low;
  o.clip_high = clip_high;
  o.dual_clip = dual_clip;
  o.kl_coef = kl_coef;
  o.kl = kK1 + parse_name(kl_estimator, kKLNames, "kl_estimator");
  o.agg = parse_name(aggregation, kAggNames, "aggregation");
  o.norm_constant = norm_constant;
  o.std_normalize = std_normalize;
  o.eps = eps;
  o.zero_var_tol = zero_var_tol;
  o.need_grad = need_grad;
  o.denominator = denominator;
  check_options(o);
  return o;
}

// ---- step 2: inputs in kernel layout, outputs and workspace ----

// Any integer ids -> dense ids in [0, G). CPU: a plain sort on the caller's thread (the ATen
// version is ~5 small ops, and index_put_ opens an OpenMP region whose wake-up costs
// milliseconds on a busy machine).
Tensor dense_group_ids_cpu(const Tensor& ids) {
  Tensor ids64 = ids.to(at::kLong).contiguous();
  const int64_t n = ids64.numel();
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

// Device version: sort + cumsum + scatter, no host sync.
[[maybe_unused]] Tensor dense_group_ids_device(const Tensor& ids) {
  Tensor ids64 = ids.to(at::kLong).contiguous();
  const int64_t n = ids64.numel();
  if (n == 0) return ids64;
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

// Owns every tensor the kernels read or write; `args` points into them.
struct Launch {
  Tensor logp, old_logp, ref_logp, mask, token_weight, rewards, gid;  // contiguous, kernel dtypes
  Tensor out, adv, grad, ws;
  GrpoArgs args;
};

at::ScalarType acc_type(const Tensor& logp) {
  return logp.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

GrpoArgs make_args(const Options& o, int64_t n, int64_t t, at::ScalarType dt, bool has_ref,
                   bool mask_is_bool, bool has_weight, bool adv_given) {
  GrpoArgs a;
  a.n = n;
  a.t = t;
  a.dtype = dt == at::kDouble ? kF64 : (dt == at::kBFloat16 ? kBF16 : kF32);
  a.kl = has_ref ? o.kl : kKLNone;  // ref_logp without kl_coef: KL still reported as a stat
  a.agg = o.agg;
  a.mask_is_bool = mask_is_bool;
  a.std_normalize = o.std_normalize;
  a.need_grad = o.need_grad;
  a.clip_low = o.clip_low;
  a.clip_high = o.clip_high;
  a.has_dual_clip = o.dual_clip.has_value();
  a.has_weight = has_weight;
  a.dual_clip = o.dual_clip.value_or(0.0);
  a.kl_coef = o.kl_coef;
  a.norm_constant = o.norm_constant.value_or(static_cast<double>(t));
  a.eps = o.eps;
  a.zero_var_tol = o.zero_var_tol;
  a.adv_given = adv_given;
  a.denom = o.denominator.value_or(0.0);
  return a;
}

void point_args_at(Launch& l) {
  GrpoArgs& a = l.args;
  a.rewards = l.rewards.const_data_ptr<double>();
  a.gid = l.gid.const_data_ptr<int64_t>();
  a.logp = l.logp.const_data_ptr();
  a.old_logp = l.old_logp.const_data_ptr();
  a.ref_logp = l.ref_logp.defined() ? l.ref_logp.const_data_ptr() : nullptr;
  a.mask = l.mask.const_data_ptr();
  a.token_weight = l.token_weight.defined() ? l.token_weight.const_data_ptr() : nullptr;
  a.grad = a.need_grad ? l.grad.mutable_data_ptr() : nullptr;
  a.adv = l.adv.mutable_data_ptr<double>();
  a.out = l.out.mutable_data_ptr<double>();
  a.ws = l.ws.mutable_data_ptr<double>();
}

// Inputs made contiguous in the kernels' dtypes, outputs and workspace allocated, GrpoArgs
// pointing at them. `dense_ids`: the device's group-id densifier; `parts`: partial rows of its
// fused pass. Given `advantages` take the place of the rewards (one group: no statistics).
Launch prepare_launch(const Tensor& rewards, const Tensor& group_ids, const Tensor& logp,
                      const Tensor& old_logp, const Tensor& mask,
                      const std::optional<Tensor>& ref_logp,
                      const std::optional<Tensor>& token_weight,
                      const std::optional<Tensor>& advantages, const Options& o,
                      Tensor (*dense_ids)(const Tensor&), int64_t (*parts)(int64_t, int64_t)) {
  const int64_t n = logp.size(0), t = logp.size(1);
  const bool has_ref = ref_logp.has_value();
  const bool mask_is_bool = mask.scalar_type() == at::kBool;
  const auto f64 = logp.options().dtype(at::kDouble);
  Launch l;
  l.logp = logp.contiguous();
  l.old_logp = old_logp.contiguous();
  if (has_ref) l.ref_logp = ref_logp->contiguous();
  l.mask = mask_is_bool ? mask.contiguous() : mask.to(acc_type(logp)).contiguous();
  if (token_weight.has_value()) l.token_weight = token_weight->to(acc_type(logp)).contiguous();
  if (advantages.has_value()) {
    l.rewards = advantages->to(at::kDouble).contiguous();
    l.gid = at::zeros({n}, group_ids.options().dtype(at::kLong));
  } else {
    l.rewards = rewards.to(at::kDouble).contiguous();
    l.gid = n > 0 ? dense_ids(group_ids) : group_ids.to(at::kLong);
  }
  l.out = at::zeros({kNumOut}, f64);  // stays 0 for an empty batch (no kernel runs)
  l.adv = at::zeros({n}, f64);
  l.grad = at::empty(o.need_grad ? std::vector<int64_t>{n, t} : std::vector<int64_t>{0},
                     logp.options());
  l.ws = at::empty({n > 0 ? grpo_workspace_doubles(n, parts(n, t)) : 0}, f64);

  l.args = make_args(o, n, t, logp.scalar_type(), has_ref, mask_is_bool,
                     token_weight.has_value(), advantages.has_value());
  point_args_at(l);
  return l;
}

// ---- step 3: the kernels of each dispatch key ----

struct CpuKernels {
  static constexpr auto dense_ids = &dense_group_ids_cpu;
  static constexpr auto parts = &grpo_cpu_parts;
  static void run(const GrpoArgs& a, const Tensor& /*logp*/) {
    // Nested in an ATen parallel region: stay on this thread (grpo.h: grpo_cpu_parallel).
    const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();
    grpo_cpu_forward(a, threads);
  }
};

#if defined(SRPO_WITH_CUDA)
struct CudaKernels {
  static constexpr auto dense_ids = &dense_group_ids_device;
  static constexpr auto parts = &grpo_cuda_parts;
  static void run(const GrpoArgs& a, const Tensor& logp) {
    const c10::cuda::CUDAGuard guard(logp.device());
    const int err = grpo_cuda_forward(a, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == 0, "srpo::grpo_fwd: CUDA launch failed with cudaError ", err);
  }
};
#endif

// ---- step 4: outputs ----

// Loss and stats in the accumulation dtype, as separate tensors (an op's outputs must not
// alias each other).
Outputs finish(const Launch& l) {
  const Tensor out = l.out.to(acc_type(l.logp));
  return {out.select(0, kOutLoss).clone(), out.slice(0, 1).clone(), l.grad, l.adv};
}

// The op for the dispatch key of `Kernels` (registered once per key below): check, allocate,
// run, pack.
template <typename Kernels>
Outputs grpo_fwd(const Tensor& rewards, const Tensor& group_ids, const Tensor& logp,
                 const Tensor& old_logp, const Tensor& mask,
                 const std::optional<Tensor>& ref_logp,
                 const std::optional<Tensor>& token_weight,
                 const std::optional<Tensor>& advantages, double clip_low, double clip_high,
                 std::optional<double> dual_clip, double kl_coef, c10::string_view kl_estimator,
                 c10::string_view aggregation, std::optional<double> norm_constant,
                 bool std_normalize, double eps, double zero_var_tol, bool need_grad,
                 std::optional<double> denominator) {
  const std::optional<Tensor> ref =
      ref_logp.has_value() && ref_logp->defined() ? ref_logp : std::nullopt;
  const std::optional<Tensor> weight =
      token_weight.has_value() && token_weight->defined() ? token_weight : std::nullopt;
  const std::optional<Tensor> adv =
      advantages.has_value() && advantages->defined() ? advantages : std::nullopt;
  check_tensors(rewards, group_ids, logp, old_logp, mask, ref, weight);
  if (adv.has_value()) {
    TORCH_CHECK_VALUE(adv->dim() == 1 && adv->size(0) == logp.size(0),
                      "srpo::grpo_fwd: advantages must be [N] with N = logp.shape[0] = ",
                      logp.size(0), ", got ", adv->sizes());
    TORCH_CHECK_VALUE(adv->device() == logp.device(),
                      "srpo::grpo_fwd: advantages must be on the device of logp");
    TORCH_CHECK_VALUE(at::isFloatingType(adv->scalar_type()),
                      "srpo::grpo_fwd: advantages must be floating point");
  }
  const Options o = parse_options(clip_low, clip_high, dual_clip, kl_coef, kl_estimator,
                                  aggregation, norm_constant, std_normalize, eps, zero_var_tol,
                                  need_grad, denominator);
  const Launch l = prepare_launch(rewards, group_ids, logp, old_logp, mask, ref, weight, adv, o,
                                  Kernels::dense_ids, Kernels::parts);
  if (l.args.n > 0) Kernels::run(l.args, logp);
  return finish(l);
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

// Defaults are srpo.algo.LossConfig's (tests/test_ops_parity.py checks that they agree);
// srpo.ops.grpo_loss passes every option explicitly.
SRPO_LIBRARY(SRPO_OP_NAMESPACE, m) {
  m.def(
      "grpo_fwd(Tensor rewards, Tensor group_ids, Tensor logp, Tensor old_logp, Tensor mask, "
      "Tensor? ref_logp=None, Tensor? token_weight=None, Tensor? advantages=None, *, "
      "float clip_low=0.2, float clip_high=0.2, "
      "float? dual_clip=None, float kl_coef=0.0, str kl_estimator=\"k3\", "
      "str aggregation=\"token-mean\", float? norm_constant=None, bool std_normalize=True, "
      "float eps=1e-06, float zero_var_tol=1e-06, bool need_grad=True, "
      "float? denominator=None) "
      "-> (Tensor loss, Tensor stats, Tensor grad, Tensor adv)");
  m.def("abi_version() -> int", &srpo::abi_version);
  m.def("has_cuda_kernels() -> bool", &srpo::has_cuda_kernels);
}

SRPO_LIBRARY_IMPL(SRPO_OP_NAMESPACE, CPU, m) { m.impl("grpo_fwd", &srpo::grpo_fwd<srpo::CpuKernels>); }

#if defined(SRPO_WITH_CUDA)
SRPO_LIBRARY_IMPL(SRPO_OP_NAMESPACE, CUDA, m) { m.impl("grpo_fwd", &srpo::grpo_fwd<srpo::CudaKernels>); }
#endif

// Importable as `srpo._C` (the ops register at load time; the module itself is empty).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
