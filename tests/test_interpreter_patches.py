"""The tests' patches of Triton's interpreter (tests/interpreter_patches.py): it rounds float32 to
bfloat16 as torch and the GPU do (to nearest, ties to even), and reduces with aefast's bitwise AND as
its own element-by-element reduce does."""
import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from aefast.willshaw.triton_kernels import _bit_and
from tests.conftest import HAS_GPU


@pytest.mark.skipif(HAS_GPU, reason="the GPU compiles its kernels; the patch is the interpreter's")
def test_a_kernels_bfloat16_store_rounds_as_torch_does():
    @triton.jit
    def to_bfloat16(x_ptr, y_ptr, N: tl.constexpr):
        offsets = tl.arange(0, N)
        tl.store(y_ptr + offsets, tl.load(x_ptr + offsets).to(tl.bfloat16))

    ulp = 2.0**-7  # of bfloat16 in [1, 2)
    special = [1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp * 0.75, -(1 + ulp * 0.75), 3.3895e38, float("inf"),
               -float("inf"), 1e-40, -0.0]  # ties to even both ways, halfway up, overflow, a subnormal
    x = torch.cat([torch.tensor(special), torch.randn(119, generator=torch.Generator().manual_seed(1)) * 100])
    y = torch.empty(128, dtype=torch.bfloat16)
    to_bfloat16[(1,)](x, y, 128)
    assert torch.equal(y, x.bfloat16())
    nan = torch.full((128,), float("nan"))
    to_bfloat16[(1,)](nan, y, 128)
    assert y.isnan().all()


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def reduce_words(x_ptr, and_ptr, or_ptr, ROWS: tl.constexpr, COLS: tl.constexpr, AXIS: tl.constexpr):
    words = tl.load(x_ptr + tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :])
    out = tl.arange(0, COLS if AXIS == 0 else ROWS)
    tl.store(and_ptr + out, tl.reduce(words, AXIS, _bit_and))
    tl.store(or_ptr + out, tl.reduce(words, AXIS, _bit_or))


@pytest.mark.skipif(HAS_GPU, reason="the GPU compiles its kernels; the patch is the interpreter's")
@pytest.mark.parametrize("axis", [0, 1])
def test_a_kernels_bitwise_and_reduce_equals_numpys_and_the_interpreters_own(axis):
    """A kernel's ``tl.reduce(x, axis, _bit_and)`` over int64 words (sign bits, all ones, zeros) equals
    NumPy's AND along that axis, and the interpreter's unpatched reduce gives the same; a reduce with
    another combine function (OR here) still takes the interpreter's own path."""
    from triton.runtime import interpreter

    generator = torch.Generator().manual_seed(7)
    words = torch.randint(-2**63, 2**63 - 1, (8, 16), dtype=torch.int64, generator=generator)
    words = words | torch.randint(-2**63, 2**63 - 1, (8, 16), dtype=torch.int64, generator=generator)  # dense bits
    words[:, 0], words[0, 1], words[:, 2] = -1, 0, -2**63
    and_out, or_out = (torch.empty(16 if axis == 0 else 8, dtype=torch.int64) for _ in range(2))
    reduce_words[(1,)](words, and_out, or_out, 8, 16, axis)
    assert torch.equal(and_out, torch.from_numpy(np.bitwise_and.reduce(words.numpy(), axis=axis)))
    assert torch.equal(or_out, torch.from_numpy(np.bitwise_or.reduce(words.numpy(), axis=axis)))

    patched = interpreter.ReduceOps.apply_impl
    assert patched.reduces_bitwise_and_with_numpy
    unpatched = torch.empty_like(and_out)
    try:
        interpreter.ReduceOps.apply_impl = interpreter.ReduceOps.generic_reduce
        reduce_words[(1,)](words, unpatched, or_out, 8, 16, axis)
    finally:
        interpreter.ReduceOps.apply_impl = patched
    assert torch.equal(unpatched, and_out)
