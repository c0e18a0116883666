// Norm-controlled steps on the CPU in one pass over memory (see normctl/optim/_one_pass_cpu.py).
//
// For every tensor i, element by element: θ ← f_i·θ (Eq. 3 before the step), then the inner
// rule's update — Adam's moments and bias-corrected step as torch's fused AdamW writes them
// (adamwn_step), or SGD's momentum buffer and step as torch's SGD writes them (sgd_step) — and
// θ_new² added up while θ_new is stored, so the next step starts with ‖θ_i‖ known. float32 and
// bfloat16 tensors (weights, gradients and state of one dtype); bfloat16 is computed in float32
// and rounded to nearest even on store, as torch's fused kernels do. square_sums measures
// ‖x‖² alone, for bfloat16 norms accumulated in float32 without a float32 copy of the tensor.
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
#include <cstring>
#include <initializer_list>
#include <vector>

namespace {

constexpr int64_t CHUNK = 65536;
constexpr int64_t SERIAL_BELOW = 32768;  // total elements under which threads cost more than they save

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

// Storage ↔ float32, written with plain integer ops so that the compiler vectorises them.
inline float to_float(float x) { return x; }
inline float to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float x;
  std::memcpy(&x, &wide, sizeof x);
  return x;
}
inline void store(float* at, float x) { *at = x; }
inline void store(uint16_t* at, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;  // round to nearest even
  *at = std::isnan(x) ? static_cast<uint16_t>(0x7fc0) : static_cast<uint16_t>(rounded);
}

// Stores x and returns it as stored, rounding bfloat16 once (not once to store, once to read).
inline float store_rounded(float* at, float x) {
  *at = x;
  return x;
}
inline float store_rounded(uint16_t* at, float x) {
  store(at, x);
  return to_float(*at);
}

template <typename T>
std::vector<T*> data_pointers(const std::vector<torch::Tensor>& tensors) {
  std::vector<T*> pointers;
  pointers.reserve(tensors.size());
  for (const auto& t : tensors) {
    pointers.push_back(reinterpret_cast<T*>(t.data_ptr()));
  }
  return pointers;
}

void check_tensors(const std::vector<torch::Tensor>& tensors, const char* name, size_t count, at::ScalarType dtype) {
  TORCH_CHECK(tensors.size() == count, name, ": expected ", count, " tensors, got ", tensors.size());
  for (const auto& t : tensors) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous(), name,
                ": every tensor must be a contiguous CPU tensor of the weights' dtype");
  }
}

template <typename T>
void step_chunks(const std::vector<Chunk>& chunks, int64_t total, const std::vector<torch::Tensor>& params,
                 const std::vector<torch::Tensor>& grads, const std::vector<torch::Tensor>& exp_avgs,
                 const std::vector<torch::Tensor>& exp_avg_sqs, const double* f_all, const double* step_size_all,
                 const double* bc2_all, double beta1, double beta2, double eps, std::vector<double>& chunk_sums) {
  const auto param_ptrs = data_pointers<T>(params);
  const auto grad_ptrs = data_pointers<const T>(grads);
  const auto exp_avg_ptrs = data_pointers<T>(exp_avgs);
  const auto exp_avg_sq_ptrs = data_pointers<T>(exp_avg_sqs);
  const float one_minus_beta1 = static_cast<float>(1.0 - beta1);
  const float b2 = static_cast<float>(beta2);
  const float one_minus_beta2 = static_cast<float>(1.0 - beta2);
  const float epsf = static_cast<float>(eps);
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());

#pragma omp parallel for schedule(static) num_threads(at::get_num_threads()) if (total >= SERIAL_BELOW)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const Chunk chunk = chunks[c];
    T* __restrict p = param_ptrs[chunk.tensor];
    const T* __restrict g = grad_ptrs[chunk.tensor];
    T* __restrict m = exp_avg_ptrs[chunk.tensor];
    T* __restrict v = exp_avg_sq_ptrs[chunk.tensor];
    const float f = static_cast<float>(f_all[chunk.tensor]);
    const float step_size = static_cast<float>(step_size_all[chunk.tensor]);
    const float bc2 = static_cast<float>(bc2_all[chunk.tensor]);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = chunk.begin; j < chunk.end; ++j) {
      const float gj = to_float(g[j]);
      const float m_old = to_float(m[j]);
      const float mj = m_old + one_minus_beta1 * (gj - m_old);  // lerp(m, g, 1 − β1)
      const float vj = b2 * to_float(v[j]) + one_minus_beta2 * gj * gj;
      const float pj = store_rounded(p + j, to_float(p[j]) * f - step_size * mj / (std::sqrt(vj) / bc2 + epsf));
      store(m + j, mj);
      store(v + j, vj);
      sum += pj * pj;  // the norm of the weight as stored
    }
    chunk_sums[c] = sum;
  }
}

template <typename T, bool NESTEROV>
void sgd_chunks(const std::vector<Chunk>& chunks, int64_t total, const std::vector<torch::Tensor>& params,
                const std::vector<torch::Tensor>& grads, const std::vector<torch::Tensor>& buffers, const double* f_all,
                const double* keep_all, const double* take_all, double lr, double momentum,
                std::vector<double>& chunk_sums) {
  const auto param_ptrs = data_pointers<T>(params);
  const auto grad_ptrs = data_pointers<const T>(grads);
  const auto buffer_ptrs = data_pointers<T>(buffers);
  const float lrf = static_cast<float>(lr);
  const float mu = static_cast<float>(momentum);
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());

#pragma omp parallel for schedule(static) num_threads(at::get_num_threads()) if (total >= SERIAL_BELOW)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const Chunk chunk = chunks[c];
    T* __restrict p = param_ptrs[chunk.tensor];
    const T* __restrict g = grad_ptrs[chunk.tensor];
    T* __restrict b = buffer_ptrs[chunk.tensor];
    const float f = static_cast<float>(f_all[chunk.tensor]);
    const float keep = static_cast<float>(keep_all[chunk.tensor]);  // μ, or 0 where the buffer starts
    const float take = static_cast<float>(take_all[chunk.tensor]);  // 1 − dampening, or 1 where it starts
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = chunk.begin; j < chunk.end; ++j) {
      const float gj = to_float(g[j]);
      const float bj = store_rounded(b + j, keep * to_float(b[j]) + take * gj);  // the step uses b as stored, as torch's
      const float dj = NESTEROV ? gj + mu * bj : bj;
      const float pj = store_rounded(p + j, to_float(p[j]) * f - lrf * dj);
      sum += pj * pj;
    }
    chunk_sums[c] = sum;
  }
}

template <typename T>
void square_sum_chunks(const std::vector<Chunk>& chunks, int64_t total, const std::vector<torch::Tensor>& tensors,
                       std::vector<double>& chunk_sums) {
  const auto ptrs = data_pointers<const T>(tensors);
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());

#pragma omp parallel for schedule(static) num_threads(at::get_num_threads()) if (total >= SERIAL_BELOW)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const Chunk chunk = chunks[c];
    const T* __restrict x = ptrs[chunk.tensor];
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = chunk.begin; j < chunk.end; ++j) {
      const float xj = to_float(x[j]);
      sum += xj * xj;
    }
    chunk_sums[c] = sum;
  }
}

std::vector<Chunk> chunk_tensors(const std::vector<torch::Tensor>& params, int64_t& total) {
  std::vector<Chunk> chunks;
  total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t numel = params[i].numel();
    total += numel;
    for (int64_t begin = 0; begin < numel; begin += CHUNK) {
      chunks.push_back({static_cast<int64_t>(i), begin, std::min(numel, begin + CHUNK)});
    }
  }
  return chunks;
}

torch::Tensor sum_chunks(const std::vector<Chunk>& chunks, const std::vector<double>& chunk_sums, size_t n) {
  auto norm_sq = torch::zeros({static_cast<int64_t>(n)}, torch::kDouble);
  double* out = norm_sq.data_ptr<double>();
  for (size_t c = 0; c < chunks.size(); ++c) {
    out[chunks[c].tensor] += chunk_sums[c];
  }
  return norm_sq;
}

void check_vectors(std::initializer_list<const torch::Tensor*> vectors, size_t n) {
  for (const auto* v : vectors) {
    TORCH_CHECK(v->scalar_type() == torch::kDouble && v->is_contiguous() && v->numel() == static_cast<int64_t>(n),
                "per-tensor vectors must be contiguous float64 with one entry per tensor");
  }
}

at::ScalarType check_params(const std::vector<torch::Tensor>& params) {
  TORCH_CHECK(!params.empty(), "params: expected at least one tensor");
  const auto dtype = params[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "params: float32 or bfloat16 only, got ", dtype);
  check_tensors(params, "params", params.size(), dtype);
  return dtype;
}

}  // namespace

// Returns Σ x² of each tensor (float64), summed in float32 per chunk as the steps sum θ_new²:
// torch accumulates a bfloat16 norm in float32 only by first copying the tensor to float32.
torch::Tensor square_sums(const std::vector<torch::Tensor>& tensors) {
  const auto dtype = check_params(tensors);
  int64_t total = 0;
  const auto chunks = chunk_tensors(tensors, total);
  std::vector<double> chunk_sums(chunks.size(), 0.0);
  (dtype == at::kFloat ? square_sum_chunks<float> : square_sum_chunks<uint16_t>)(chunks, total, tensors, chunk_sums);
  return sum_chunks(chunks, chunk_sums, tensors.size());
}

// Returns each tensor's first element as float32 (0 for an empty tensor): what the kept norms
// check for writes through .data, read in one call instead of a view per tensor.
torch::Tensor first_elements(const std::vector<torch::Tensor>& tensors) {
  const auto dtype = check_params(tensors);
  auto out = torch::zeros({static_cast<int64_t>(tensors.size())}, torch::kFloat);
  float* first = out.data_ptr<float>();
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].numel() == 0) continue;
    first[i] = dtype == at::kFloat ? *reinterpret_cast<const float*>(tensors[i].data_ptr())
                                   : to_float(*reinterpret_cast<const uint16_t*>(tensors[i].data_ptr()));
  }
  return out;
}

// Whether every tensor is a contiguous CPU tensor of the first one's dtype: a batch the kernels
// can walk as flat arrays, tested in one call (161 tensors and their state on ResNet-50, each step).
bool alike(const std::vector<torch::Tensor>& tensors) {
  if (tensors.empty()) return false;
  const auto dtype = tensors[0].scalar_type();
  for (const auto& t : tensors) {
    if (!(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous())) return false;
  }
  return true;
}

// Returns Σ θ_new² of each tensor (float64). factors holds f_i; keep and take the momentum
// buffer's coefficients, b ← keep_i·b + take_i·g (μ and 1 − dampening, or 0 and 1 where the
// buffer starts, as torch sets it to the gradient at its first step).
torch::Tensor sgd_step(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                       const std::vector<torch::Tensor>& buffers, const torch::Tensor& factors,
                       const torch::Tensor& keep, const torch::Tensor& take, double lr, double momentum,
                       bool nesterov) {
  const auto dtype = check_params(params);
  const size_t n = params.size();
  check_tensors(grads, "grads", n, dtype);
  check_tensors(buffers, "buffers", n, dtype);
  check_vectors({&factors, &keep, &take}, n);
  int64_t total = 0;
  const auto chunks = chunk_tensors(params, total);
  std::vector<double> chunk_sums(chunks.size(), 0.0);
  const double* f = factors.data_ptr<double>();
  const double* k = keep.data_ptr<double>();
  const double* t = take.data_ptr<double>();
  if (dtype == at::kFloat) {
    (nesterov ? sgd_chunks<float, true> : sgd_chunks<float, false>)(chunks, total, params, grads, buffers, f, k, t, lr,
                                                                    momentum, chunk_sums);
  } else {
    (nesterov ? sgd_chunks<uint16_t, true> : sgd_chunks<uint16_t, false>)(chunks, total, params, grads, buffers, f, k,
                                                                          t, lr, momentum, chunk_sums);
  }
  return sum_chunks(chunks, chunk_sums, n);
}

// Returns Σ θ_new² of each tensor (float64). factors, step_sizes and bias_corrections2_sqrt
// are float64 vectors with one entry per tensor: f_i, γ/(1 − β1^t_i) and sqrt(1 − β2^t_i).
torch::Tensor adamwn_step(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                          const std::vector<torch::Tensor>& exp_avgs, const std::vector<torch::Tensor>& exp_avg_sqs,
                          const torch::Tensor& factors, const torch::Tensor& step_sizes,
                          const torch::Tensor& bias_corrections2_sqrt, double beta1, double beta2, double eps) {
  const auto dtype = check_params(params);
  const size_t n = params.size();
  check_tensors(grads, "grads", n, dtype);
  check_tensors(exp_avgs, "exp_avgs", n, dtype);
  check_tensors(exp_avg_sqs, "exp_avg_sqs", n, dtype);
  check_vectors({&factors, &step_sizes, &bias_corrections2_sqrt}, n);
  int64_t total = 0;
  const auto chunks = chunk_tensors(params, total);
  std::vector<double> chunk_sums(chunks.size(), 0.0);
  const double* f_all = factors.data_ptr<double>();
  const double* step_size_all = step_sizes.data_ptr<double>();
  const double* bc2_all = bias_corrections2_sqrt.data_ptr<double>();
  if (dtype == at::kFloat) {
    step_chunks<float>(chunks, total, params, grads, exp_avgs, exp_avg_sqs, f_all, step_size_all, bc2_all, beta1,
                       beta2, eps, chunk_sums);
  } else {
    step_chunks<uint16_t>(chunks, total, params, grads, exp_avgs, exp_avg_sqs, f_all, step_size_all, bc2_all, beta1,
                          beta2, eps, chunk_sums);
  }
  return sum_chunks(chunks, chunk_sums, n);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("adamwn_step", &adamwn_step, "AdamWN's step with Eq. 3 and kept norms (float32 or bfloat16, CPU)");
  m.def("alike", &alike, "every tensor a contiguous CPU tensor of the first one's dtype");
  m.def("first_elements", &first_elements, "each tensor's first element as float32 (float32 or bfloat16, CPU)");
  m.def("square_sums", &square_sums, "Σ x² per tensor (float32 or bfloat16, CPU), float32 sums per chunk");
  m.def("sgd_step", &sgd_step, "SGD with momentum after Eq. 3, with kept norms (float32 or bfloat16, CPU)");
}
