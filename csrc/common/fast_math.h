// float32 exp, log, sin and cos written so that GCC vectorizes the loops that call them (glibc's scalar
// expf/logf/cosf keep a loop scalar). Plain multiply-adds, no std::fma: on an ISA without FMA,
// std::fma is a libm call; where FMA exists the compiler contracts them itself.
// Accuracy: exp within 2 ulp over the whole range with inf/0/NaN as IEEE; log within 2 ulp for
// normal positive inputs; sin and cos within 2e-7 absolute on [0, 2*pi]. Tests compare them to torch.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/isa.h"

AEFAST_ISA_BEGIN

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// Round to nearest integer for |x| < 2^22 without a libm call.
inline float round_small(float x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  return (x + magic) - magic;
}

inline float exp_f32(float x) {
  // Clamped (NaN to 0) so that the integer steps below stay defined; NaN is restored at the end.
  const float xc = x != x ? 0.0f : (x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x));
  const float n = round_small(xc * 1.44269504088896341f);
  // ln2 split so that n * hi is exact for |n| <= 150.
  float r = xc - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  // Taylor to degree 7 on |r| <= ln2/2: truncation error below 1e-8 relative.
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n in two factors so that n in [-150, 128] never leaves the exponent range of one factor.
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni / 2, n2 = ni - n1;
  const float result = p * bits_to_float(static_cast<uint32_t>(n1 + 127) << 23) *
                       bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
  return x != x ? x : result;
}

// Natural log for positive normal floats (the Box-Muller input is at least 1e-7).
inline float log_positive_f32(float x) {
  const uint32_t bits = float_to_bits(x);
  const int32_t e_raw = static_cast<int32_t>(bits >> 23) - 127;
  const float m_raw = bits_to_float((bits & 0x007FFFFFu) | 0x3F800000u);  // in [1, 2)
  // Fold m into [sqrt(1/2), sqrt(2)); arithmetic rather than ?: so that GCC if-converts the loop.
  const int32_t high = m_raw > 1.41421356f;
  const float m = m_raw * (1.0f - 0.5f * static_cast<float>(high));
  const int32_t e = e_raw + high;
  // log(m) = 2 atanh(t), t = (m-1)/(m+1), |t| <= 0.1716: odd series to t^9.
  const float t = (m - 1.0f) / (m + 1.0f);
  const float t2 = t * t;
  float p = 1.0f / 9.0f;
  p = p * t2 + 1.0f / 7.0f;
  p = p * t2 + 1.0f / 5.0f;
  p = p * t2 + 1.0f / 3.0f;
  p = p * t2 + 1.0f;
  const float ef = static_cast<float>(e);
  return ef * 0.693145751953125f + (ef * 1.428606765330187e-06f + 2.0f * t * p);
}

// sin and cos for arguments in [0, 2*pi] (the Box-Muller angle).
struct SinCos {
  float sin, cos;
};

inline SinCos sincos_box_muller_f32(float theta) {
  const float k = round_small(theta * 0.636619772367581343f);  // quadrant
  // pi/2 in three parts (Cephes): k * part is exact for the k <= 4 of a Box-Muller angle.
  float r = theta - k * 1.5703125f;
  r = r - k * 4.837512969970703125e-4f;
  r = r - k * 7.54978995489188216e-8f;
  const float r2 = r * r;
  float c = 1.0f / 40320.0f;
  c = c * r2 - 1.0f / 720.0f;
  c = c * r2 + 1.0f / 24.0f;
  c = c * r2 - 0.5f;
  c = c * r2 + 1.0f;
  float s = 1.0f / 362880.0f;
  s = s * r2 - 1.0f / 5040.0f;
  s = s * r2 + 1.0f / 120.0f;
  s = s * r2 - 1.0f / 6.0f;
  s = s * r2 * r + r;
  // Quadrant q: cos is c, -s, -c, s and sin is s, c, -s, -c; selected by arithmetic so that GCC
  // if-converts the loop.
  const int32_t q = static_cast<int32_t>(k) & 3;
  const float odd = static_cast<float>(q & 1);
  const float cos_sign = 1.0f - 2.0f * static_cast<float>(((q + 1) >> 1) & 1);
  const float sin_sign = 1.0f - 2.0f * static_cast<float>((q >> 1) & 1);
  return {sin_sign * (odd * c + (1.0f - odd) * s), cos_sign * (odd * s + (1.0f - odd) * c)};
}

inline float cos_box_muller_f32(float theta) { return sincos_box_muller_f32(theta).cos; }

AEFAST_ISA_END
