"""The tests' interpreter rounds float32 to bfloat16 as torch and the GPU do: to nearest, ties to even
(tests/interpreter_rounding.py)."""
import pytest
import torch

from tests.conftest import HAS_GPU


@pytest.mark.skipif(HAS_GPU, reason="the GPU compiles its kernels; the patch is the interpreter's")
def test_a_kernels_bfloat16_store_rounds_as_torch_does():
    import triton
    import triton.language as tl

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
