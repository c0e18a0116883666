// AdamWN's step on the CPU in one pass over memory (see normctl/optim/_one_pass_cpu.py).
//
// For every float32 tensor i, element by element: θ ← f_i·θ (Eq. 3 before the step), then
// Adam's moment update and bias-corrected step as torch's fused AdamW writes them, and
// θ_new² added up while θ_new is stored, so the next step starts with ‖θ_i‖ known.
//
// The work is cut into fixed chunks of CHUNK elements across all tensors and shared by one
// OpenMP region on torch's own thread pool (torch's libgomp is the one loaded). Each chunk's
// sum of squares is kept apart and the chunks are added in order, so the norms do not depend
// on the number of threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t CHUNK = 65536;
constexpr int64_t SERIAL_BELOW = 32768;  // total elements under which threads cost more than they save

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

template <typename T>
std::vector<T*> data_pointers(const std::vector<torch::Tensor>& tensors) {
  std::vector<T*> pointers;
  pointers.reserve(tensors.size());
  for (const auto& t : tensors) {
    pointers.push_back(t.data_ptr<float>());
  }
  return pointers;
}

void check_float32_contiguous(const std::vector<torch::Tensor>& tensors, const char* name, size_t count) {
  TORCH_CHECK(tensors.size() == count, name, ": expected ", count, " tensors, got ", tensors.size());
  for (const auto& t : tensors) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous(),
                name, ": every tensor must be a contiguous float32 CPU tensor");
  }
}

}  // namespace

// Returns Σ θ_new² of each tensor (float64). factors, step_sizes and bias_corrections2_sqrt
// are float64 vectors with one entry per tensor: f_i, γ/(1 − β1^t_i) and sqrt(1 − β2^t_i).
torch::Tensor adamwn_step(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                          const std::vector<torch::Tensor>& exp_avgs, const std::vector<torch::Tensor>& exp_avg_sqs,
                          const torch::Tensor& factors, const torch::Tensor& step_sizes,
                          const torch::Tensor& bias_corrections2_sqrt, double beta1, double beta2, double eps) {
  const size_t n = params.size();
  check_float32_contiguous(params, "params", n);
  check_float32_contiguous(grads, "grads", n);
  check_float32_contiguous(exp_avgs, "exp_avgs", n);
  check_float32_contiguous(exp_avg_sqs, "exp_avg_sqs", n);
  for (const auto* v : {&factors, &step_sizes, &bias_corrections2_sqrt}) {
    TORCH_CHECK(v->scalar_type() == torch::kDouble && v->is_contiguous() && v->numel() == static_cast<int64_t>(n),
                "per-tensor vectors must be contiguous float64 with one entry per tensor");
  }

  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = params[i].numel();
    total += numel;
    for (int64_t begin = 0; begin < numel; begin += CHUNK) {
      chunks.push_back({static_cast<int64_t>(i), begin, std::min(numel, begin + CHUNK)});
    }
  }
  std::vector<double> chunk_sums(chunks.size(), 0.0);
  const auto param_ptrs = data_pointers<float>(params);
  const auto grad_ptrs = data_pointers<const float>(grads);
  const auto exp_avg_ptrs = data_pointers<float>(exp_avgs);
  const auto exp_avg_sq_ptrs = data_pointers<float>(exp_avg_sqs);
  const double* f_all = factors.data_ptr<double>();
  const double* step_size_all = step_sizes.data_ptr<double>();
  const double* bc2_all = bias_corrections2_sqrt.data_ptr<double>();
  const float one_minus_beta1 = static_cast<float>(1.0 - beta1);
  const float b2 = static_cast<float>(beta2);
  const float one_minus_beta2 = static_cast<float>(1.0 - beta2);
  const float epsf = static_cast<float>(eps);
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());

#pragma omp parallel for schedule(static) num_threads(at::get_num_threads()) if (total >= SERIAL_BELOW)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const Chunk chunk = chunks[c];
    float* __restrict p = param_ptrs[chunk.tensor];
    const float* __restrict g = grad_ptrs[chunk.tensor];
    float* __restrict m = exp_avg_ptrs[chunk.tensor];
    float* __restrict v = exp_avg_sq_ptrs[chunk.tensor];
    const float f = static_cast<float>(f_all[chunk.tensor]);
    const float step_size = static_cast<float>(step_size_all[chunk.tensor]);
    const float bc2 = static_cast<float>(bc2_all[chunk.tensor]);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = chunk.begin; j < chunk.end; ++j) {
      const float gj = g[j];
      const float mj = m[j] + one_minus_beta1 * (gj - m[j]);  // lerp(m, g, 1 − β1)
      const float vj = b2 * v[j] + one_minus_beta2 * gj * gj;
      const float pj = p[j] * f - step_size * mj / (std::sqrt(vj) / bc2 + epsf);
      p[j] = pj;
      m[j] = mj;
      v[j] = vj;
      sum += pj * pj;
    }
    chunk_sums[c] = sum;
  }

  auto norm_sq = torch::zeros({static_cast<int64_t>(n)}, torch::kDouble);
  double* out = norm_sq.data_ptr<double>();
  for (int64_t c = 0; c < num_chunks; ++c) {
    out[chunks[c].tensor] += chunk_sums[c];
  }
  return norm_sq;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("adamwn_step", &adamwn_step, "AdamWN's step with Eq. 3 and kept norms (float32, CPU)");
}
