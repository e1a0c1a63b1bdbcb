// The one pybind11 module, aefast._C. Entry points take buffers (numpy views of CPU tensors) and
// check their sizes again, so no call from Python can read or write out of bounds.
#include <pybind11/pybind11.h>

#include "common/cpu_features.h"
#include "vae/vae.h"

namespace py = pybind11;
using namespace pybind11::literals;

PYBIND11_MODULE(_C, m) {
  m.doc() = "aefast compiled kernels";
  m.def("cpu_features", &aefast::cpu_features, "Instruction sets of this CPU that the kernels use");
  m.def("build_info", &aefast::build_info, "Compiler and features of this build");

  m.def("vae_forward_cpu", &aefast::vae_forward_cpu, "mu"_a, "logvar"_a, "eps"_a, "z"_a, "kl"_a, "rows"_a,
        "cols"_a, "dtype"_a, "seed"_a, "per_element"_a, "clamp_min"_a, "clamp_max"_a);
  m.def("vae_backward_cpu", &aefast::vae_backward_cpu, "grad_z"_a, "grad_kl"_a, "mu"_a, "logvar"_a, "eps"_a,
        "grad_mu"_a, "grad_logvar"_a, "rows"_a, "cols"_a, "dtype"_a, "seed"_a, "per_element"_a, "clamp_min"_a,
        "clamp_max"_a);
  m.def("philox_normal_cpu", &aefast::philox_normal_cpu, "seed"_a, "offset"_a, "out"_a,
        "Fill a float32 buffer with the normals of Philox (seed, offset + i)");
#ifdef AEFAST_WITH_CUDA
  m.def("vae_forward_cuda", &aefast::vae_forward_cuda, "mu"_a, "logvar"_a, "eps"_a, "z"_a, "kl"_a, "rows"_a,
        "cols"_a, "dtype"_a, "seed"_a, "per_element"_a, "clamp_min"_a, "clamp_max"_a, "stream"_a);
  m.def("vae_backward_cuda", &aefast::vae_backward_cuda, "grad_z"_a, "grad_kl"_a, "mu"_a, "logvar"_a, "eps"_a,
        "grad_mu"_a, "grad_logvar"_a, "rows"_a, "cols"_a, "dtype"_a, "seed"_a, "per_element"_a, "clamp_min"_a,
        "clamp_max"_a, "stream"_a);
#endif
}
