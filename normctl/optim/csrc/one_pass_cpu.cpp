// AdamWN's step on the CPU in one pass over memory (see normctl/optim/_one_pass.py).
//
// For every float32 tensor i: θ ← f_i·θ (Eq. 3 before the step), Adam's moment update and
// bias-corrected step exactly as torch's AdamW writes them, and Σ θ_new² accumulated while
// θ_new is stored, so the next step starts with ‖θ_i‖ known. Chunks of each tensor run on
// torch's intra-op thread pool; the per-chunk sums are added in double.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

torch::Tensor adamwn_step(
    std::vector<torch::Tensor> params,
    std::vector<torch::Tensor> grads,
    std::vector<torch::Tensor> exp_avgs,
    std::vector<torch::Tensor> exp_avg_sqs,
    torch::Tensor factors,       // float64 [n]: Eq. 3's factor of each tensor
    torch::Tensor step_sizes,    // float64 [n]: lr / (1 − β1^t)
    torch::Tensor bias_corrections2_sqrt,  // float64 [n]: sqrt(1 − β2^t)
    double beta1,
    double beta2,
    double eps) {
  const auto n = static_cast<int64_t>(params.size());
  auto norm_sq = torch::zeros({n}, torch::kFloat64);
  auto* out = norm_sq.data_ptr<double>();
  const auto* f_all = factors.data_ptr<double>();
  const auto* s_all = step_sizes.data_ptr<double>();
  const auto* b_all = bias_corrections2_sqrt.data_ptr<double>();
  const float one_minus_beta1 = static_cast<float>(1.0 - beta1);
  const float b2 = static_cast<float>(beta2);
  const float one_minus_beta2 = static_cast<float>(1.0 - beta2);
  const float epsf = static_cast<float>(eps);
  for (int64_t i = 0; i < n; ++i) {
    float* p = params[i].data_ptr<float>();
    const float* g = grads[i].data_ptr<float>();
    float* m = exp_avgs[i].data_ptr<float>();
    float* v = exp_avg_sqs[i].data_ptr<float>();
    const float f = static_cast<float>(f_all[i]);
    const float step_size = static_cast<float>(s_all[i]);
    const float bc2 = static_cast<float>(b_all[i]);
    out[i] = at::parallel_reduce(
        0, params[i].numel(), 32768, 0.0,
        [&](int64_t begin, int64_t end, double total) {
          float sum = 0.f;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = begin; j < end; ++j) {
            const float gj = g[j];
            const float mj = m[j] + one_minus_beta1 * (gj - m[j]);
            const float vj = b2 * v[j] + one_minus_beta2 * gj * gj;
            const float pj = p[j] * f - step_size * mj / (std::sqrt(vj) / bc2 + epsf);
            p[j] = pj;
            m[j] = mj;
            v[j] = vj;
            sum += pj * pj;
          }
          return total + sum;
        },
        std::plus<double>());
  }
  return norm_sq;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("adamwn_step", &adamwn_step, "AdamWN step with kept norms (float32, CPU)");
}
