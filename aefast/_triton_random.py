"""Philox random numbers inside Triton kernels, keyed by (seed, 64-bit offset) and equal to
aefast/_philox.py's: the counter is (offset_lo, offset_hi, 0, 0) on every Triton version (older
releases ran int64 offsets through Philox4x64 instead). Imported by the kernel modules only.

A kernel that takes a seed declares ``do_not_specialize=["seed"]``: Triton otherwise compiles a
variant for integers divisible by 16, and a training loop that draws a fresh seed each step met one
at random (on an H200, steps of 0.6 and 1.6 s among steps of 3 ms, in bench_mlp.py's 2026-12-05 run)."""
import triton
import triton.language as tl


@triton.jit
def _philox_words(seed, offsets):
    lo = offsets.to(tl.uint32)
    hi = (offsets >> 32).to(tl.uint32)
    zero = lo * 0
    c0, c1, _, _ = tl.philox(seed, lo, hi, zero, zero)
    return c0, c1


@triton.jit
def philox_normal(seed, offsets):
    """tl.randn's standard normal for 64-bit offsets."""
    c0, c1 = _philox_words(seed, offsets)
    n1, _ = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(c0), tl.uint_to_uniform_float(c1))
    return n1


@triton.jit
def philox_uniform(seed, offsets):
    """tl.rand's uniform in [0, 1) for 64-bit offsets."""
    c0, _ = _philox_words(seed, offsets)
    return tl.uint_to_uniform_float(c0)
