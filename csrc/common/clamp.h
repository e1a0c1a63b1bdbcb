// The optional logvar clamp, shared by the C++ and CUDA kernels: torch.clamp's semantics.
#pragma once
#include <cmath>

#include "common/isa.h"

AEFAST_ISA_BEGIN

// Bounds of -inf and +inf mean no clamp.
inline bool clamp_active(double lo, double hi) { return std::isfinite(lo) || std::isfinite(hi); }

// Clamp that keeps NaN (std::fmin/fmax would turn it into a bound).
template <typename C> AEFAST_HD C clamp_keep_nan(C x, C lo, C hi) { return x < lo ? lo : (x > hi ? hi : x); }

// torch.clamp passes the gradient where lo <= x <= hi (NaN gets none).
template <typename C> AEFAST_HD bool clamp_passes_gradient(C x, C lo, C hi) { return x >= lo && x <= hi; }

AEFAST_ISA_END
