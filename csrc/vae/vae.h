// The fused reparameterize + KL kernels: the arguments every backend takes, the CPU kernels (one
// copy per instruction set), and the entry points bound into Python.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/dtypes.h"

namespace aefast {

// rows x cols contiguous tensors; eps == nullptr means the Philox normals of seed in the layout of
// aefast/vae/reference.py noise: element (row, col) is normal col % 4 of offset
// row * ceil(cols / 4) + col / 4.
// kl is float (double for f64 inputs): per element when per_element, else one sum per row.
struct VaeForwardArgs {
  const void* mu;
  const void* logvar;
  const void* eps;
  void* z;
  void* kl;
  int64_t rows, cols;
  DType dtype;
  uint64_t seed;
  bool per_element;
  double clamp_min, clamp_max;  // -inf, +inf: no clamp
};

struct VaeBackwardArgs {
  const void* grad_z;
  const void* grad_kl;  // per element or per row, as in the forward
  const void* mu;
  const void* logvar;
  const void* eps;
  void* grad_mu;
  void* grad_logvar;
  int64_t rows, cols;
  DType dtype;
  uint64_t seed;
  bool per_element;
  double clamp_min, clamp_max;
};

#define AEFAST_DECLARE_VAE_KERNELS(isa)                                        \
  namespace isa {                                                              \
  void vae_forward(const VaeForwardArgs& args);                                \
  void vae_backward(const VaeBackwardArgs& args);                              \
  void philox_normal(uint64_t seed, uint64_t offset, int64_t count, float* out); \
  void philox_uniform(uint64_t seed, uint64_t offset, int64_t count, float* out); \
  }
AEFAST_DECLARE_VAE_KERNELS(generic)
AEFAST_DECLARE_VAE_KERNELS(avx2)
AEFAST_DECLARE_VAE_KERNELS(avx512)
#undef AEFAST_DECLARE_VAE_KERNELS

namespace py = pybind11;

void vae_forward_cpu(const py::buffer& mu, const py::buffer& logvar, const py::object& eps, const py::buffer& z,
                     const py::buffer& kl, int64_t rows, int64_t cols, const std::string& dtype, uint64_t seed,
                     bool per_element, double clamp_min, double clamp_max);
void vae_backward_cpu(const py::buffer& grad_z, const py::buffer& grad_kl, const py::buffer& mu,
                      const py::buffer& logvar, const py::object& eps, const py::buffer& grad_mu,
                      const py::buffer& grad_logvar, int64_t rows, int64_t cols, const std::string& dtype,
                      uint64_t seed, bool per_element, double clamp_min, double clamp_max);
void philox_normal_cpu(uint64_t seed, uint64_t offset, const py::buffer& out);
void philox_uniform_cpu(uint64_t seed, uint64_t offset, const py::buffer& out);

#ifdef AEFAST_WITH_CUDA
// CUDA entry points: device pointers (0 for an absent eps) and the stream to launch on.
void vae_forward_cuda(uintptr_t mu, uintptr_t logvar, uintptr_t eps, uintptr_t z, uintptr_t kl, int64_t rows,
                      int64_t cols, const std::string& dtype, uint64_t seed, bool per_element, double clamp_min,
                      double clamp_max, uintptr_t stream);
void vae_backward_cuda(uintptr_t grad_z, uintptr_t grad_kl, uintptr_t mu, uintptr_t logvar, uintptr_t eps,
                       uintptr_t grad_mu, uintptr_t grad_logvar, int64_t rows, int64_t cols,
                       const std::string& dtype, uint64_t seed, bool per_element, double clamp_min,
                       double clamp_max, uintptr_t stream);
#endif

}  // namespace aefast
