// CPU kernel sources are compiled once per instruction set (CMakeLists.txt: generic, avx2, avx512),
// and the entry points pick one copy at run time. Header code that those sources share sits in an
// inline namespace named after the set, so no two copies share a symbol and the linker never hands
// AVX-512 code to a CPU without it.
#pragma once

#ifndef AEFAST_ISA
#define AEFAST_ISA generic
#endif
#define AEFAST_ISA_BEGIN namespace aefast { inline namespace AEFAST_ISA {
#define AEFAST_ISA_END } }
// This unit's copy is opened first as inline, so headers may then declare every copy by name.
AEFAST_ISA_BEGIN
AEFAST_ISA_END

// Functions shared by the C++ and the CUDA kernels.
#if defined(__CUDACC__)
#define AEFAST_HD __host__ __device__ __forceinline__
#else
#define AEFAST_HD inline
#endif

namespace aefast {

enum class Isa { generic, avx2, avx512 };

// The best set this CPU runs and this build has; AEFAST_CPU_ISA=generic|avx2 forces a lower one
// (tests run the portable path that way on an AVX-512 machine).
Isa selected_isa();
const char* isa_name(Isa isa);

// The copy of a kernel for the selected set: by_isa(generic::f, avx2::f, avx512::f)(args...).
template <typename Fn> Fn by_isa(Fn generic_fn, Fn avx2_fn, Fn avx512_fn) {
  switch (selected_isa()) {
    case Isa::avx512: return avx512_fn;
    case Isa::avx2: return avx2_fn;
    default: return generic_fn;
  }
}

}  // namespace aefast
