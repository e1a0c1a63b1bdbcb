// Python entry points of the CPU reparameterize + KL kernels: check the buffers, release the GIL,
// and run the copy of the kernels built for the best instruction set this CPU has.
#include "vae/vae.h"

#include "common/checks.h"
#include "common/isa.h"

namespace aefast {
namespace {

py::ssize_t kl_item_bytes(DType dtype) { return dtype == DType::f64 ? 8 : 4; }

const void* optional_buffer(const py::object& buffer, const char* name, py::ssize_t count, py::ssize_t item) {
  if (buffer.is_none()) return nullptr;
  return checked_buffer(buffer.cast<py::buffer>(), name, count, item, false);
}

}  // namespace

void vae_forward_cpu(const py::buffer& mu, const py::buffer& logvar, const py::object& eps, const py::buffer& z,
                     const py::buffer& kl, int64_t rows, int64_t cols, const std::string& dtype_name,
                     uint64_t seed, bool per_element, double clamp_min, double clamp_max) {
  check_nonnegative(rows, "rows");
  check_nonnegative(cols, "cols");
  const DType dtype = parse_dtype(dtype_name);
  const py::ssize_t count = checked_product(rows, cols, "rows x cols"), item = itemsize(dtype);
  VaeForwardArgs args{
      checked_buffer(mu, "mu", count, item, false),
      checked_buffer(logvar, "logvar", count, item, false),
      optional_buffer(eps, "eps", count, item),
      checked_buffer(z, "z", count, item, true),
      checked_buffer(kl, "kl", per_element ? count : rows, kl_item_bytes(dtype), true),
      rows, cols, dtype, seed, per_element, clamp_min, clamp_max,
  };
  py::gil_scoped_release release;
  by_isa(generic::vae_forward, avx2::vae_forward, avx512::vae_forward)(args);
}

void vae_backward_cpu(const py::buffer& grad_z, const py::buffer& grad_kl, const py::buffer& mu,
                      const py::buffer& logvar, const py::object& eps, const py::buffer& grad_mu,
                      const py::buffer& grad_logvar, int64_t rows, int64_t cols, const std::string& dtype_name,
                      uint64_t seed, bool per_element, double clamp_min, double clamp_max) {
  check_nonnegative(rows, "rows");
  check_nonnegative(cols, "cols");
  const DType dtype = parse_dtype(dtype_name);
  const py::ssize_t count = checked_product(rows, cols, "rows x cols"), item = itemsize(dtype);
  VaeBackwardArgs args{
      checked_buffer(grad_z, "grad_z", count, item, false),
      checked_buffer(grad_kl, "grad_kl", per_element ? count : rows, kl_item_bytes(dtype), false),
      checked_buffer(mu, "mu", count, item, false),
      checked_buffer(logvar, "logvar", count, item, false),
      optional_buffer(eps, "eps", count, item),
      checked_buffer(grad_mu, "grad_mu", count, item, true),
      checked_buffer(grad_logvar, "grad_logvar", count, item, true),
      rows, cols, dtype, seed, per_element, clamp_min, clamp_max,
  };
  py::gil_scoped_release release;
  by_isa(generic::vae_backward, avx2::vae_backward, avx512::vae_backward)(args);
}

void philox_normal_cpu(uint64_t seed, uint64_t offset, const py::buffer& out) {
  const py::ssize_t count = out.request().size;
  float* out_p = static_cast<float*>(checked_buffer(out, "out", count, sizeof(float), true));
  py::gil_scoped_release release;
  by_isa(generic::philox_normal, avx2::philox_normal, avx512::philox_normal)(seed, offset, count, out_p);
}

void philox_uniform_cpu(uint64_t seed, uint64_t offset, const py::buffer& out) {
  const py::ssize_t count = out.request().size;
  float* out_p = static_cast<float*>(checked_buffer(out, "out", count, sizeof(float), true));
  py::gil_scoped_release release;
  by_isa(generic::philox_uniform, avx2::philox_uniform, avx512::philox_uniform)(seed, offset, count, out_p);
}

}  // namespace aefast
