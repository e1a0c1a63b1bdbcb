#include "common/cpu_features.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "common/isa.h"

namespace aefast {
namespace {

bool cpu_has(const char* feature) {
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports wants a literal; list the features the kernel copies are built with.
  if (!std::strcmp(feature, "avx2")) return __builtin_cpu_supports("avx2");
  if (!std::strcmp(feature, "fma")) return __builtin_cpu_supports("fma");
  if (!std::strcmp(feature, "avx512f")) return __builtin_cpu_supports("avx512f");
  if (!std::strcmp(feature, "avx512bw")) return __builtin_cpu_supports("avx512bw");
  if (!std::strcmp(feature, "avx512dq")) return __builtin_cpu_supports("avx512dq");
  if (!std::strcmp(feature, "avx512vl")) return __builtin_cpu_supports("avx512vl");
  if (!std::strcmp(feature, "avx512vpopcntdq")) return __builtin_cpu_supports("avx512vpopcntdq");
#endif
  (void)feature;
  return false;
}

Isa detect_isa() {
  const bool avx2 = cpu_has("avx2") && cpu_has("fma");
  const bool avx512 = avx2 && cpu_has("avx512f") && cpu_has("avx512bw") && cpu_has("avx512dq") &&
                      cpu_has("avx512vl") && cpu_has("avx512vpopcntdq");
  const Isa best = avx512 ? Isa::avx512 : (avx2 ? Isa::avx2 : Isa::generic);
  const char* forced = std::getenv("AEFAST_CPU_ISA");
  if (forced && !std::strcmp(forced, "generic")) return Isa::generic;
  if (forced && !std::strcmp(forced, "avx2") && best == Isa::avx512) return Isa::avx2;
  return best;
}

}  // namespace

Isa selected_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

pybind11::dict cpu_features() {
  pybind11::dict features;
  for (const char* name : {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vpopcntdq"}) {
    features[name] = cpu_has(name);
  }
  features["kernel_isa"] = isa_name(selected_isa());
  features["openmp_threads"] = omp_get_max_threads();
  return features;
}

pybind11::dict build_info() {
  pybind11::dict info;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = std::string("unknown");
#endif
#ifdef AEFAST_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["kernel_isas"] = pybind11::make_tuple("generic", "avx2", "avx512");
  info["openmp"] = _OPENMP;
  return info;
}

}  // namespace aefast
