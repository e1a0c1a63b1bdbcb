// Fused reparameterized sample and KL term on CUDA: a row per warp, or per aligned group of its lanes
// for a row of fewer than 32 Philox offsets, the KL row sum by shuffles; the noise regenerated from the
// seed in both passes and never written to memory: each lane draws a Philox offset's four normals
// (aefast/vae/reference.py noise's layout) for four adjacent columns.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "common/checks.h"
#include "common/clamp.h"
#include "common/cuda_checks.h"
#include "common/philox.h"
#include "vae/vae.h"

namespace aefast {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load(const double* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(double* p, int64_t i, double v) { p[i] = v; }
__device__ __forceinline__ void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

template <typename T> struct ComputeOf { using type = float; };
template <> struct ComputeOf<double> { using type = double; };

// The four standard normals of Philox offset ``offset``, as Triton's tl.randn4x gives them.
__device__ __forceinline__ void philox_normal4(uint64_t seed, uint64_t offset, float normals[kNormalsPerOffset]) {
  const PhiloxOut bits = philox4x32_10(seed, offset);
  const uint32_t radius_bits[2] = {bits.x0, bits.x2}, angle_bits[2] = {bits.x1, bits.x3};
#pragma unroll
  for (int pair = 0; pair < 2; ++pair) {
    const float radius = sqrtf(-2.0f * logf(fmaxf(1.0e-7f, uint_to_uniform(radius_bits[pair]))));
    float sine, cosine;
    sincosf(6.283185307179586f * uint_to_uniform(angle_bits[pair]), &sine, &cosine);
    normals[2 * pair] = radius * cosine;
    normals[2 * pair + 1] = radius * sine;
  }
}

// Lanes that share a row: the power of two at or above its Philox offsets, at most a warp. A row of 32
// columns (8 offsets) then shares a warp with three others, where a warp per row left 24 lanes idle.
int lanes_per_row(int64_t cols) {
  int lanes = 1;
  while (lanes < 32 && lanes < offsets_per_row(cols)) lanes *= 2;
  return lanes;
}

// The row this thread works on, and its lane among the row's ``lanes`` (an aligned group of its warp).
struct RowLane {
  int64_t row;
  int lane;
};

__device__ __forceinline__ RowLane row_lane(int lanes) {
  const int warp_lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  return {warp * (32 / lanes) + warp_lane / lanes, warp_lane & (lanes - 1)};
}

// Calls fn(e, noise) for each element e of row ``row`` that this lane takes, with its noise (eps's, or
// regenerated): the columns of every ``lanes``-th Philox offset of the row from the lane's, whose four
// normals the lane draws once.
template <typename T, typename Fn>
__device__ __forceinline__ void for_each_lane_element(int64_t row, int64_t cols, uint64_t seed, const T* eps, int lane,
                                                      int lanes, Fn&& fn) {
  using C = typename ComputeOf<T>::type;
  const int64_t per_row = offsets_per_row(cols);
  for (int64_t group = lane; group < per_row; group += lanes) {
    float normals[kNormalsPerOffset];
    if (!eps) philox_normal4(seed, static_cast<uint64_t>(row * per_row + group), normals);
    const int64_t first_col = group * kNormalsPerOffset;
#pragma unroll
    for (int j = 0; j < kNormalsPerOffset; ++j) {
      if (first_col + j >= cols) break;
      const int64_t e = row * cols + first_col + j;
      fn(e, eps ? static_cast<C>(load(eps, e)) : static_cast<C>(normals[j]));
    }
  }
}

// The sum over each aligned group of ``lanes`` lanes; every lane of the warp must call it.
template <typename C> __device__ __forceinline__ C lanes_sum(C value, int lanes) {
  for (int shift = lanes / 2; shift > 0; shift >>= 1) value += __shfl_xor_sync(0xffffffffu, value, shift);
  return value;
}

template <typename T>
__global__ void forward_kernel(const T* mu, const T* logvar, const T* eps, T* z, typename ComputeOf<T>::type* kl,
                               int64_t rows, int64_t cols, int lanes, uint64_t seed, bool per_element, bool clamped,
                               double clamp_lo, double clamp_hi) {
  using C = typename ComputeOf<T>::type;
  const RowLane at = row_lane(lanes);
  const C lo = static_cast<C>(clamp_lo), hi = static_cast<C>(clamp_hi);
  C row_sum = 0;
  // No early return past the last row: the sum's shuffles take every lane of the warp.
  if (at.row < rows) {
    for_each_lane_element(at.row, cols, seed, eps, at.lane, lanes, [&](int64_t e, C noise) {
      const C m = load(mu, e);
      C lv = load(logvar, e);
      lv = clamped ? clamp_keep_nan(lv, lo, hi) : lv;
      const C sigma = exp(C(0.5) * lv);
      store(z, e, m + sigma * noise);
      const C kl_e = C(-0.5) * (C(1) + lv - m * m - sigma * sigma);
      if (per_element) kl[e] = kl_e;
      row_sum += kl_e;
    });
  }
  row_sum = lanes_sum(row_sum, lanes);
  if (!per_element && at.row < rows && at.lane == 0) kl[at.row] = row_sum;
}

template <typename T>
__global__ void backward_kernel(const T* grad_z, const typename ComputeOf<T>::type* grad_kl, const T* mu,
                                const T* logvar, const T* eps, T* grad_mu, T* grad_logvar, int64_t rows,
                                int64_t cols, int lanes, uint64_t seed, bool per_element, bool clamped,
                                double clamp_lo, double clamp_hi) {
  using C = typename ComputeOf<T>::type;
  const RowLane at = row_lane(lanes);
  if (at.row >= rows) return;
  const int64_t row = at.row;
  const C lo = static_cast<C>(clamp_lo), hi = static_cast<C>(clamp_hi);
  for_each_lane_element(row, cols, seed, eps, at.lane, lanes, [&](int64_t e, C noise) {
    const C m = load(mu, e);
    const C lv_raw = load(logvar, e);
    const C lv = clamped ? clamp_keep_nan(lv_raw, lo, hi) : lv_raw;
    const C gz = load(grad_z, e);
    const C gkl = per_element ? grad_kl[e] : grad_kl[row];
    const C sigma = exp(C(0.5) * lv);
    C glv = C(0.5) * (gz * noise * sigma + gkl * (sigma * sigma - C(1)));
    glv = (!clamped || clamp_passes_gradient(lv_raw, lo, hi)) ? glv : C(0);
    store(grad_mu, e, gz + gkl * m);
    store(grad_logvar, e, glv);
  });
}

template <typename Fn> void dispatch_cuda_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32: fn(static_cast<float*>(nullptr)); break;
    case DType::f64: fn(static_cast<double*>(nullptr)); break;
    case DType::f16: fn(static_cast<__half*>(nullptr)); break;
    case DType::bf16: fn(static_cast<__nv_bfloat16*>(nullptr)); break;
  }
}

unsigned blocks_for(int64_t rows, int lanes) {
  const int64_t rows_per_block = kWarpsPerBlock * (32 / lanes);
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  if (blocks > 0x7FFFFFFF) throw py::value_error("rows: too many rows for one launch");
  return static_cast<unsigned>(blocks);
}

}  // namespace

void vae_forward_cuda(uintptr_t mu, uintptr_t logvar, uintptr_t eps, uintptr_t z, uintptr_t kl, int64_t rows,
                      int64_t cols, const std::string& dtype_name, uint64_t seed, bool per_element,
                      double clamp_min, double clamp_max, uintptr_t stream) {
  check_nonnegative(rows, "rows");
  check_nonnegative(cols, "cols");
  const DType dtype = parse_dtype(dtype_name);
  if (rows == 0) return;
  dispatch_cuda_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = typename ComputeOf<T>::type;
    if (cols == 0) {  // no elements: each row's KL is the empty sum, 0 (the caller's buffer is uninitialized)
      if (per_element) return;
      C* kl_p = device_pointer<C>(kl, "kl");
      if (!kl_p) throw py::value_error("kl must be non-null");
      check_cuda(cudaMemsetAsync(kl_p, 0, static_cast<size_t>(rows) * sizeof(C), reinterpret_cast<cudaStream_t>(stream)),
                 "vae forward: zeroing kl");
      return;
    }
    const T* mu_p = device_pointer<const T>(mu, "mu");
    const T* lv_p = device_pointer<const T>(logvar, "logvar");
    const T* eps_p = device_pointer<const T>(eps, "eps");
    T* z_p = device_pointer<T>(z, "z");
    C* kl_p = device_pointer<C>(kl, "kl");
    if (!mu_p || !lv_p || !z_p || !kl_p) throw py::value_error("mu, logvar, z and kl must be non-null");
    const int lanes = lanes_per_row(cols);
    forward_kernel<T><<<blocks_for(rows, lanes), 32 * kWarpsPerBlock, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        mu_p, lv_p, eps_p, z_p, kl_p, rows, cols, lanes, seed, per_element, clamp_active(clamp_min, clamp_max),
        clamp_min, clamp_max);
    check_cuda(cudaGetLastError(), "vae forward kernel");
  });
}

void vae_backward_cuda(uintptr_t grad_z, uintptr_t grad_kl, uintptr_t mu, uintptr_t logvar, uintptr_t eps,
                       uintptr_t grad_mu, uintptr_t grad_logvar, int64_t rows, int64_t cols,
                       const std::string& dtype_name, uint64_t seed, bool per_element, double clamp_min,
                       double clamp_max, uintptr_t stream) {
  check_nonnegative(rows, "rows");
  check_nonnegative(cols, "cols");
  const DType dtype = parse_dtype(dtype_name);
  if (rows == 0 || cols == 0) return;
  dispatch_cuda_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = typename ComputeOf<T>::type;
    const T* gz_p = device_pointer<const T>(grad_z, "grad_z");
    const C* gkl_p = device_pointer<const C>(grad_kl, "grad_kl");
    const T* mu_p = device_pointer<const T>(mu, "mu");
    const T* lv_p = device_pointer<const T>(logvar, "logvar");
    const T* eps_p = device_pointer<const T>(eps, "eps");
    T* gmu_p = device_pointer<T>(grad_mu, "grad_mu");
    T* glv_p = device_pointer<T>(grad_logvar, "grad_logvar");
    if (!gz_p || !gkl_p || !mu_p || !lv_p || !gmu_p || !glv_p) {
      throw py::value_error("grad_z, grad_kl, mu, logvar, grad_mu and grad_logvar must be non-null");
    }
    const int lanes = lanes_per_row(cols);
    backward_kernel<T><<<blocks_for(rows, lanes), 32 * kWarpsPerBlock, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        gz_p, gkl_p, mu_p, lv_p, eps_p, gmu_p, glv_p, rows, cols, lanes, seed, per_element,
        clamp_active(clamp_min, clamp_max), clamp_min, clamp_max);
    check_cuda(cudaGetLastError(), "vae backward kernel");
  });
}

}  // namespace aefast
