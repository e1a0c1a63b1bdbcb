// Storage types the kernels read and write, with their conversion to and from the compute type.
// float16 and bfloat16 travel as raw uint16 words (numpy has no bfloat16) and are converted here with
// round-to-nearest-even, as torch casts them. Plain integer code, so the loops that use it vectorize.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/fast_math.h"

#include "common/isa.h"

namespace aefast {
enum class DType { f32, f64, f16, bf16 };
}  // namespace aefast

AEFAST_ISA_BEGIN

template <DType D> struct Traits;

template <> struct Traits<DType::f32> {
  using storage = float;
  using compute = float;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
};

template <> struct Traits<DType::f64> {
  using storage = double;
  using compute = double;
  static double load(double x) { return x; }
  static double store(double x) { return x; }
};

template <> struct Traits<DType::bf16> {
  using storage = uint16_t;
  using compute = float;
  static float load(uint16_t x) { return bits_to_float(static_cast<uint32_t>(x) << 16); }
  static uint16_t store(float x) {
    const uint32_t u = float_to_bits(x);
    const uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return x != x ? static_cast<uint16_t>((u >> 16) | 0x0040u) : rounded;  // NaN stays a quiet NaN
  }
};

template <> struct Traits<DType::f16> {
  using storage = uint16_t;
  using compute = float;
  static float load(uint16_t x) {
    const uint32_t sign = static_cast<uint32_t>(x & 0x8000u) << 16;
    const uint32_t exp_mant = x & 0x7FFFu;
    // Normal and subnormal halves: place the bits in a float and rescale by 2^112 (exact).
    const float scaled = bits_to_float(exp_mant << 13) * 5.192296858534828e+33f;
    const float magnitude = exp_mant >= 0x7C00u ? bits_to_float((exp_mant << 13) | 0x7F800000u) : scaled;
    return bits_to_float(float_to_bits(magnitude) | sign);
  }
  static uint16_t store(float x) {
    // Branch-free float -> half with round-to-nearest-even (the FP16 library's algorithm).
    const uint32_t w = float_to_bits(x);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t bias_raw = shl1_w & 0xFF000000u;
    const uint32_t bias = bias_raw < 0x71000000u ? 0x71000000u : bias_raw;
    const float scaled = (std::fabs(x) * 5.192296858534828e+33f) * 7.703719777548943e-34f;  // 2^112, 2^-110
    const float base = bits_to_float((bias >> 1) + 0x07800000u) + scaled;
    const uint32_t bits = float_to_bits(base);
    const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
  }
};

inline float exp_c(float x) { return exp_f32(x); }
inline double exp_c(double x) { return std::exp(x); }

AEFAST_ISA_END
