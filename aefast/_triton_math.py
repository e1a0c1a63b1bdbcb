"""Elementary functions for Triton kernels that hold float32's accuracy over the whole range.

``tl.exp`` compiles to the GPU's 2^x approximation of x * log2(e): the rounding of that product costs
|x| * 2^-24 relative, 3e-6 at x = 50, where torch.exp stays within an ulp. ``exp`` below splits
x = n ln2 + r exactly enough (Cody-Waite) that only exp(r), |r| <= ln2 / 2, is approximated, and builds
2^n from its bits. Imported by the kernel modules only."""
import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2_HI = tl.constexpr(0.693145751953125)  # ln 2, its low mantissa bits zero: n * _LN2_HI is exact for |n| < 2^12
_LN2_LO = tl.constexpr(1.4286068203094173e-06)  # ln 2 - _LN2_HI


@triton.jit
def _pow2(k):
    """2^k for integer-valued float32 k in [-126, 127], from the exponent bits."""
    return ((k.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def exp(x):
    """exp(x) within a few ulp for float32 x (float64 goes to tl.exp, which is accurate there)."""
    if x.dtype != tl.float32:
        return tl.exp(x)
    n = tl.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    half = tl.floor(n * 0.5)  # 2^n as two factors: each stays a normal float where exp(x) is finite
    inside = tl.abs(x) < 170.0
    half = tl.where(inside, half, 0.0)
    rest = tl.where(inside, n - half, 0.0)
    scaled = tl.exp(r) * _pow2(half) * _pow2(rest)
    # Beyond +-170, float32 exp is inf or 0 and tl.exp gives exactly that; it also passes NaN on.
    return tl.where(inside, scaled, tl.exp(x))
