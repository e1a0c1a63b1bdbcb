// Philox4x32-10 keyed by a 64-bit seed, counted by a 64-bit offset: the stream of Triton's
// tl.philox(seed, offset_lo, offset_hi, 0, 0), turned into normals by the Box-Muller of tl.randn
// (one per offset) or tl.randn4x (four per offset).
// One seed therefore gives the same noise from the C++, CUDA and Triton kernels.
#pragma once
#include <cstdint>

#include "common/isa.h"

AEFAST_ISA_BEGIN

struct PhiloxOut {
  uint32_t x0, x1, x2, x3;
};

AEFAST_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

AEFAST_HD PhiloxOut philox4x32_10(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t a0 = c0, a2 = c2;
    c0 = mulhi32(0xCD9E8D57u, a2) ^ c1 ^ k0;
    c2 = mulhi32(0xD2511F53u, a0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * a2;
    c3 = 0xD2511F53u * a0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {c0, c1, c2, c3};
}

// Normals per offset where all four words are used, as Triton's tl.randn4x (the VAE's noise): element
// (row, col) of a rows x cols input takes normal col % 4 of offset row * offsets_per_row(cols) + col / 4.
constexpr int64_t kNormalsPerOffset = 4;

AEFAST_HD int64_t offsets_per_row(int64_t cols) { return (cols + kNormalsPerOffset - 1) / kNormalsPerOffset; }

// tl.uint_to_uniform_float: the largest scale with INT32_MAX * scale < 1 in float32.
AEFAST_HD float uint_to_uniform(uint32_t bits) {
  int32_t i = static_cast<int32_t>(bits);
  i ^= i >> 31;  // ~i for negative i, branch-free
  return static_cast<float>(i) * 4.6566127342e-10f;
}

AEFAST_ISA_END
