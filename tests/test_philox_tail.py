"""The normals' far tail, where Box-Muller's first uniform falls below 1e-7 and ``tl.randn`` clamps it
to 1e-7: the PyTorch formulas (aefast/_philox.py), the C++ fill and Triton give the same number
there. About one draw in 10^7 meets the clamp, so the tests of whole streams never reach it."""
import math

import numpy as np
import pytest
import torch

from aefast import _backends
from aefast._philox import _uint_to_uniform, philox4x32_10, philox_normal, philox_normal4

SEED = 1
# Offsets of seed 1 whose first uniform is below 1e-7 (8.8e-8, 2.1e-8 and 1.3e-8), found by scanning
# its first 2^25 uniforms.
OFFSETS = torch.tensor([8418514, 16902731, 27392119])
TOLERANCE = dict(atol=2e-6, rtol=2e-6)  # the C++ and Triton math against the formulas, as elsewhere


def _uniforms() -> tuple[torch.Tensor, torch.Tensor]:
    """Box-Muller's two uniforms (float64) at OFFSETS; the first below the clamp."""
    x0, x1, _, _ = philox4x32_10(SEED, OFFSETS)
    u1, u2 = _uint_to_uniform(x0).double(), _uint_to_uniform(x1).double()
    assert (u1 < 1e-7).all()
    return u1, u2


def test_the_formulas_clamp_the_first_uniform_at_1e_minus_7():
    """Box-Muller in float64 with the first uniform taken as float32's 1e-7."""
    u1, u2 = _uniforms()
    radius = math.sqrt(-2.0 * math.log(float(np.float32(1e-7))))
    expected = (radius * torch.cos(2 * math.pi * u2)).float()
    torch.testing.assert_close(philox_normal(SEED, OFFSETS), expected, **TOLERANCE)
    # Not the unclamped values: the radius differs by 0.4% to 6% at these uniforms.
    assert (torch.sqrt(-2.0 * torch.log(u1)).float() > expected.abs() + 1e-2).all()


@pytest.mark.skipif(_backends.compiled_module() is None, reason="aefast._C is not built")
def test_the_cpp_fill_clamps_as_the_formulas_do():
    C = _backends.compiled_module()
    out = np.zeros(len(OFFSETS), np.float32)
    for i, offset in enumerate(OFFSETS.tolist()):
        C.philox_normal_cpu(SEED, offset, out[i:i + 1])
    torch.testing.assert_close(torch.from_numpy(out), philox_normal(SEED, OFFSETS), **TOLERANCE)


triton_runs = _backends.can_run("triton", torch.device("cpu")) is True or torch.cuda.is_available()
if triton_runs:
    import triton
    import triton.language as tl

    from aefast import _triton_random

    @triton.jit
    def _draw(offsets_ptr, out_ptr, seed, COUNT: tl.constexpr):
        offsets = tl.load(offsets_ptr + tl.arange(0, COUNT))
        tl.store(out_ptr + tl.arange(0, COUNT), _triton_random.philox_normal(seed, offsets))

    @triton.jit
    def _draw4(offsets_ptr, out_ptr, seed, COUNT: tl.constexpr):
        offsets = tl.load(offsets_ptr + tl.arange(0, COUNT))
        rows = out_ptr + tl.arange(0, COUNT) * 4
        n0, n1, n2, n3 = _triton_random.philox_normal4(seed, offsets)
        tl.store(rows, n0)
        tl.store(rows + 1, n1)
        tl.store(rows + 2, n2)
        tl.store(rows + 3, n3)


@pytest.mark.skipif(not triton_runs, reason="triton cannot run here")
def test_tritons_randn_clamps_as_the_formulas_do():
    """The Triton kernels' normals go through tl.pair_uniform_to_normal, Triton's own clamp: the
    formulas (and so the C++ fill) follow it."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    offsets = torch.cat([OFFSETS, OFFSETS[:1]]).to(device)  # COUNT must be a power of two
    out = torch.empty(4, device=device)
    _draw[(1,)](offsets, out, SEED, COUNT=4)
    torch.testing.assert_close(out.cpu()[:3], philox_normal(SEED, OFFSETS), **TOLERANCE)


def test_the_four_normals_clamp_the_first_uniform_of_a_pair():
    """philox_normal4 (the VAE's noise) clamps each Box-Muller pair's first uniform as tl.randn4x does:
    at OFFSETS the first pair's (x0) is below 1e-7, so normals 0 and 1 share the clamped radius."""
    u1, u2 = _uniforms()
    radius = math.sqrt(-2.0 * math.log(float(np.float32(1e-7))))
    angle = 2 * math.pi * u2
    normals = philox_normal4(SEED, OFFSETS)
    torch.testing.assert_close(normals[:, 0], (radius * torch.cos(angle)).float(), **TOLERANCE)
    torch.testing.assert_close(normals[:, 1], (radius * torch.sin(angle)).float(), **TOLERANCE)
    if triton_runs:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        out = torch.empty(4, 4, device=device)
        _draw4[(1,)](torch.cat([OFFSETS, OFFSETS[:1]]).to(device), out, SEED, COUNT=4)
        torch.testing.assert_close(out.cpu()[:3], normals, **TOLERANCE)
