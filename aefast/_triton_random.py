"""Philox random numbers inside Triton kernels, keyed by (seed, 64-bit offset) and equal to
aefast/_philox.py's: the counter is (offset_lo, offset_hi, 0, 0) on every Triton version (older
releases ran int64 offsets through Philox4x64 instead). Imported by the kernel modules, and by
``_philox.compiled_stream`` on a GPU.

A kernel that takes a seed declares ``do_not_specialize=["seed"]``: Triton otherwise compiles a
variant for integers divisible by 16, and a training loop that draws a fresh seed each step met one
at random (on an H200, steps of 0.6 and 1.6 s among steps of 3 ms, in bench_mlp.py's 2026-12-05 run).

``fill`` writes the stream itself into a tensor: the GPU's noise for the layers' plain path
(aefast/_philox.py compiled_stream)."""
import torch
import triton
import triton.language as tl

from aefast import _backends
from aefast._triton_launch import launch


@triton.jit
def _philox_words(seed, offsets):
    """The four Philox words of each 64-bit offset."""
    lo = offsets.to(tl.uint32)
    hi = (offsets >> 32).to(tl.uint32)
    zero = lo * 0
    return tl.philox(seed, lo, hi, zero, zero)


@triton.jit
def philox_normal4(seed, offsets):
    """tl.randn4x's four standard normals for 64-bit offsets (aefast/_philox.py philox_normal4)."""
    c0, c1, c2, c3 = _philox_words(seed, offsets)
    n0, n1 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(c0), tl.uint_to_uniform_float(c1))
    n2, n3 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(c2), tl.uint_to_uniform_float(c3))
    return n0, n1, n2, n3


@triton.jit
def philox_normal(seed, offsets):
    """tl.randn's standard normal for 64-bit offsets."""
    c0, c1, _, _ = _philox_words(seed, offsets)
    n1, _ = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(c0), tl.uint_to_uniform_float(c1))
    return n1


@triton.jit
def philox_uniform(seed, offsets):
    """tl.rand's uniform in [0, 1) for 64-bit offsets."""
    c0, _, _, _ = _philox_words(seed, offsets)
    return tl.uint_to_uniform_float(c0)


FILL_BLOCK = 1024  # values a program writes


@triton.jit(do_not_specialize=["seed", "first", "count"])
def fill_kernel(out_ptr, seed, first, count, NORMAL: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = the stream's normal (or uniform) at offset first + i, for i < count."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if NORMAL:
        values = philox_normal(seed, first + offsets)
    else:
        values = philox_uniform(seed, first + offsets)
    tl.store(out_ptr + offsets, values, mask=offsets < count)


def fill(out: torch.Tensor, kind: str, seed: int, first: int = 0) -> None:
    """``out`` (contiguous float32) = the stream's ``out.numel()`` uniforms (``kind`` "uniform") or
    normals from offset ``first`` on, in one launch (the formulas of aefast/_philox.py launch about 260
    small kernels on a GPU). Called through _backends.lazy_kernel, which makes ``out``'s GPU the current one."""
    count = out.numel()
    if count:
        launch(fill_kernel, (triton.cdiv(count, FILL_BLOCK),), out, seed, first, count, NORMAL=kind == "normal",
               BLOCK=FILL_BLOCK, **_backends.TRITON_LAUNCH)
