// Fused reparameterized sample and KL term on the CPU: one OpenMP pass forward, one backward; the
// noise is regenerated from the seed in both passes (load_noise) and never written to memory.
// Also the plain Philox fills (normals, uniforms) that Python draws noise with on the CPU
// (aefast/_philox.py compiled_stream: the fused MLP's corruption). Compiled once per instruction set
// (see common/isa.h); nothing here touches Python.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/clamp.h"
#include "common/dtypes.h"
#include "common/fast_math.h"
#include "common/philox.h"
#include "vae/vae.h"

AEFAST_ISA_BEGIN
namespace {

// Elements per inner tile: noise and KL scratch (2 x 4 KiB in float) stay in L1.
constexpr int64_t kTile = 1024;

// Standard normals of Philox (seed, offset + i), as Triton's tl.randn gives them. Two loops per
// chunk: GCC if-converts (and so vectorizes) each alone, not the clamp and the log fused in one.
template <typename C> void fill_normals(uint64_t seed, uint64_t offset, int64_t count, C* out) {
  constexpr int64_t kChunk = 256;
  float radius_input[kChunk], theta[kChunk];
  for (int64_t c0 = 0; c0 < count; c0 += kChunk) {
    const int64_t n = std::min(kChunk, count - c0);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const PhiloxOut bits = philox4x32_10(seed, offset + static_cast<uint64_t>(c0 + i));
      const float u1 = uint_to_uniform(bits.x0);
      radius_input[i] = u1 < 1.0e-7f ? 1.0e-7f : u1;
      theta[i] = 6.283185307179586f * uint_to_uniform(bits.x1);
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      out[c0 + i] = static_cast<C>(std::sqrt(-2.0f * log_positive_f32(radius_input[i])) * cos_box_muller_f32(theta[i]));
    }
  }
}

// Four standard normals per Philox offset, as Triton's tl.randn4x gives them: out[4 * i + j] is
// normal j of offset first + i (aefast/_philox.py philox_normal4). A quarter of fill_normals' Philox
// rounds and half its logs per normal: 2.5x faster on the CI machine's AVX-512.
template <typename C> void fill_normals4(uint64_t seed, uint64_t first, int64_t count, C* out) {
  constexpr int64_t kChunk = 256;
  float radius_input[2][kChunk], theta[2][kChunk];
  for (int64_t c0 = 0; c0 < count; c0 += kChunk) {
    const int64_t n = std::min(kChunk, count - c0);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const PhiloxOut bits = philox4x32_10(seed, first + static_cast<uint64_t>(c0 + i));
      const float u1 = uint_to_uniform(bits.x0), u2 = uint_to_uniform(bits.x2);
      radius_input[0][i] = u1 < 1.0e-7f ? 1.0e-7f : u1;
      radius_input[1][i] = u2 < 1.0e-7f ? 1.0e-7f : u2;
      theta[0][i] = 6.283185307179586f * uint_to_uniform(bits.x1);
      theta[1][i] = 6.283185307179586f * uint_to_uniform(bits.x3);
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      C* normals = out + kNormalsPerOffset * (c0 + i);
      for (int pair = 0; pair < 2; ++pair) {
        const float radius = std::sqrt(-2.0f * log_positive_f32(radius_input[pair][i]));
        const SinCos angle = sincos_box_muller_f32(theta[pair][i]);
        normals[2 * pair] = static_cast<C>(radius * angle.cos);
        normals[2 * pair + 1] = static_cast<C>(radius * angle.sin);
      }
    }
  }
}

// Calls fn(row, i0, i1) for each row's share [i0, i1) of the tile of elements [t0, t0 + n): one
// division per row rather than one per element.
template <typename Fn> void for_each_row_segment(int64_t t0, int64_t n, int64_t cols, Fn&& fn) {
  for (int64_t e = t0; e < t0 + n;) {
    const int64_t row = e / cols;
    const int64_t segment_end = std::min((row + 1) * cols, t0 + n);
    fn(row, e - t0, segment_end - t0);
    e = segment_end;
  }
}

// Scratch a tile's noise may need: whole Philox offsets of up to kTile elements' rows (a 1-wide row
// takes an offset of 4 normals per element), and the offsets cut at the tile's two ends.
constexpr int64_t kNoiseScratch = kNormalsPerOffset * (kTile + 2);

// The tile's noise: the caller's eps, or the normals regenerated for elements [t0, t0 + n) of a
// (rows, cols) input in aefast/vae/reference.py noise's layout, where element (row, col) is normal
// col % 4 of offset row * ceil(cols / 4) + col / 4. The tile's offsets form one run: its rows' in
// turn. Where cols is a multiple of 4 that layout is the elements' own order; else each row's
// columns are taken from its offsets' normals, past a padding of up to 3.
template <DType D, typename C>
void load_noise(const typename Traits<D>::storage* eps, uint64_t seed, int64_t cols, int64_t t0, int64_t n, C* out,
                float* scratch) {
  if (eps) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = Traits<D>::load(eps[t0 + i]);
    return;
  }
  if (cols % kNormalsPerOffset == 0) {  // t0 and n are multiples of 4 too: whole offsets, in order
    fill_normals4(seed, static_cast<uint64_t>(t0 / kNormalsPerOffset), n / kNormalsPerOffset, out);
    return;
  }
  const int64_t per_row = offsets_per_row(cols);
  const auto offset_of = [&](int64_t e) { return (e / cols) * per_row + (e % cols) / kNormalsPerOffset; };
  const int64_t first = offset_of(t0);
  fill_normals4(seed, static_cast<uint64_t>(first), offset_of(t0 + n - 1) - first + 1, scratch);
  for_each_row_segment(t0, n, cols, [&](int64_t row, int64_t i0, int64_t i1) {
    const float* normals = scratch + kNormalsPerOffset * (row * per_row - first) + (t0 + i0 - row * cols);
    for (int64_t i = i0; i < i1; ++i) out[i] = static_cast<C>(normals[i - i0]);
  });
}

// Rows are split into tasks of whole rows, so per-row KL sums need no atomics.
struct RowTasks {
  int64_t rows, cols, rows_per_task, count;
  RowTasks(int64_t rows_, int64_t cols_) : rows(rows_), cols(cols_) {
    rows_per_task = std::max<int64_t>(1, kTile / std::max<int64_t>(cols, 1));
    count = (rows + rows_per_task - 1) / rows_per_task;
  }
  int64_t first_row(int64_t task) const { return task * rows_per_task; }
  int64_t end_row(int64_t task) const { return std::min(rows, (task + 1) * rows_per_task); }
};

template <DType D>
void store_tile(const typename Traits<D>::compute* in, int64_t n, typename Traits<D>::storage* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = Traits<D>::store(in[i]);
}

template <DType D> void forward(const VaeForwardArgs& a) {
  using S = typename Traits<D>::storage;
  using C = typename Traits<D>::compute;
  const S* mu = static_cast<const S*>(a.mu);
  const S* logvar = static_cast<const S*>(a.logvar);
  const S* eps = static_cast<const S*>(a.eps);
  S* z = static_cast<S*>(a.z);
  C* kl = static_cast<C*>(a.kl);
  const int64_t cols = a.cols;
  const bool clamped = clamp_active(a.clamp_min, a.clamp_max);
  const C lo = static_cast<C>(a.clamp_min), hi = static_cast<C>(a.clamp_max);
  const RowTasks tasks(a.rows, cols);
#pragma omp parallel
  {
    std::vector<C> noise(kTile), kl_tile(kTile), row_sums(tasks.rows_per_task);
    std::vector<float> noise_scratch(kNoiseScratch);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks.count; ++task) {
      const int64_t row0 = tasks.first_row(task);
      const int64_t begin = row0 * cols, end = tasks.end_row(task) * cols;
      std::fill(row_sums.begin(), row_sums.end(), C(0));
      for (int64_t t0 = begin; t0 < end; t0 += kTile) {
        const int64_t n = std::min(kTile, end - t0);
        load_noise<D>(eps, a.seed, cols, t0, n, noise.data(), noise_scratch.data());
        const C* noise_tile = noise.data();
        C* kl_out = kl_tile.data();
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const int64_t e = t0 + i;
          const C m = Traits<D>::load(mu[e]);
          const C lv_raw = Traits<D>::load(logvar[e]);
          const C lv = clamped ? clamp_keep_nan(lv_raw, lo, hi) : lv_raw;
          const C sigma = exp_c(C(0.5) * lv);
          z[e] = Traits<D>::store(m + sigma * noise_tile[i]);
          kl_out[i] = C(-0.5) * (C(1) + lv - m * m - sigma * sigma);
        }
        if (a.per_element) {
          std::copy(kl_tile.begin(), kl_tile.begin() + n, kl + t0);
        } else {
          for_each_row_segment(t0, n, cols, [&](int64_t row, int64_t i0, int64_t i1) {
            C sum = 0;
            for (int64_t i = i0; i < i1; ++i) sum += kl_out[i];
            row_sums[row - row0] += sum;
          });
        }
      }
      if (!a.per_element) std::copy(row_sums.begin(), row_sums.begin() + (tasks.end_row(task) - row0), kl + row0);
    }
  }
}

template <DType D> void backward(const VaeBackwardArgs& a) {
  using S = typename Traits<D>::storage;
  using C = typename Traits<D>::compute;
  const S* grad_z = static_cast<const S*>(a.grad_z);
  const C* grad_kl = static_cast<const C*>(a.grad_kl);
  const S* mu = static_cast<const S*>(a.mu);
  const S* logvar = static_cast<const S*>(a.logvar);
  const S* eps = static_cast<const S*>(a.eps);
  S* grad_mu = static_cast<S*>(a.grad_mu);
  S* grad_logvar = static_cast<S*>(a.grad_logvar);
  const int64_t cols = a.cols;
  const bool clamped = clamp_active(a.clamp_min, a.clamp_max);
  const C lo = static_cast<C>(a.clamp_min), hi = static_cast<C>(a.clamp_max);
  const RowTasks tasks(a.rows, cols);
#pragma omp parallel
  {
    std::vector<C> noise(kTile), grad_kl_tile(kTile), grad_mu_tile(kTile), grad_logvar_tile(kTile);
    std::vector<float> noise_scratch(kNoiseScratch);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks.count; ++task) {
      const int64_t begin = tasks.first_row(task) * cols, end = tasks.end_row(task) * cols;
      for (int64_t t0 = begin; t0 < end; t0 += kTile) {
        const int64_t n = std::min(kTile, end - t0);
        load_noise<D>(eps, a.seed, cols, t0, n, noise.data(), noise_scratch.data());
        if (a.per_element) {
          std::copy(grad_kl + t0, grad_kl + t0 + n, grad_kl_tile.begin());
        } else {
          for_each_row_segment(t0, n, cols, [&](int64_t row, int64_t i0, int64_t i1) {
            std::fill(grad_kl_tile.begin() + i0, grad_kl_tile.begin() + i1, grad_kl[row]);
          });
        }
        const C* noise_tile = noise.data();
        const C* gkl = grad_kl_tile.data();
        C* grad_mu_out = grad_mu_tile.data();
        C* grad_logvar_out = grad_logvar_tile.data();
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const int64_t e = t0 + i;
          const C m = Traits<D>::load(mu[e]);
          const C lv_raw = Traits<D>::load(logvar[e]);
          const C lv = clamped ? clamp_keep_nan(lv_raw, lo, hi) : lv_raw;
          const C gz = Traits<D>::load(grad_z[e]);
          const C sigma = exp_c(C(0.5) * lv);
          const C glv = C(0.5) * (gz * noise_tile[i] * sigma + gkl[i] * (sigma * sigma - C(1)));
          const bool passes = !clamped || clamp_passes_gradient(lv_raw, lo, hi);
          grad_mu_out[i] = gz + gkl[i] * m;
          grad_logvar_out[i] = passes ? glv : C(0);
        }
        // Stored in a loop of their own: with two half-precision conversions in the loop above, GCC
        // no longer vectorizes it (fp16 backward 3.6x slower on AVX-512).
        store_tile<D>(grad_mu_out, n, grad_mu + t0);
        store_tile<D>(grad_logvar_out, n, grad_logvar + t0);
      }
    }
  }
}

}  // namespace

void vae_forward(const VaeForwardArgs& args) {
  switch (args.dtype) {
    case DType::f32: forward<DType::f32>(args); break;
    case DType::f64: forward<DType::f64>(args); break;
    case DType::f16: forward<DType::f16>(args); break;
    case DType::bf16: forward<DType::bf16>(args); break;
  }
}

void vae_backward(const VaeBackwardArgs& args) {
  switch (args.dtype) {
    case DType::f32: backward<DType::f32>(args); break;
    case DType::f64: backward<DType::f64>(args); break;
    case DType::f16: backward<DType::f16>(args); break;
    case DType::bf16: backward<DType::bf16>(args); break;
  }
}

void philox_normal(uint64_t seed, uint64_t offset, int64_t count, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t t0 = 0; t0 < count; t0 += kTile) {
    fill_normals(seed, offset + static_cast<uint64_t>(t0), std::min(kTile, count - t0), out + t0);
  }
}

// Uniforms in [0, 1) of Philox (seed, offset + i), as Triton's tl.rand gives them: integer work and
// one exact conversion, so bit for bit the values of the PyTorch formulas (aefast/_philox.py).
void philox_uniform(uint64_t seed, uint64_t offset, int64_t count, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t t0 = 0; t0 < count; t0 += kTile) {
    const int64_t n = std::min(kTile, count - t0);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      out[t0 + i] = uint_to_uniform(philox4x32_10(seed, offset + static_cast<uint64_t>(t0 + i)).x0);
    }
  }
}

AEFAST_ISA_END
