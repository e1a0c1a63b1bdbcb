"""The MLP kernels as the GPU gets them: compiled ahead of time for an H100/H200 (sm_90) with the
launch configuration the launchers choose, on any machine (Triton's bundled ptxas runs without a GPU).
A 64 x 64 float32 tile in 4 warps once spilled 13 KiB per thread to local memory, which made the
narrow stack 40x slower than eager on an H200; these tests keep every width up to 64 spill-free.

The compilation runs in a child process without TRITON_INTERPRET (the interpreter replaces the kernels
by Python functions that cannot be compiled)."""
import itertools
import json

import pytest
import torch

from tests.sm90 import CUOBJDUMP, compile_for_sm90, compiled_in_child

WIDTHS = (16, 32, 64)  # 128 spills in every configuration (triton_kernels.NARROW_ROWS)
PRECISIONS = (("fp32", "ieee"), ("fp32", "tf32x3"), ("fp32", "tf32"), ("bf16", "tf32"))
DIRECTIONS = ("forward", "backward")
CASES = list(itertools.product(DIRECTIONS, PRECISIONS, WIDTHS))


# Parameters whose type does not follow the tensors' element type.
FIXED_TYPES = {"partial_ptr": "*fp32", "gw_ptr": "*fp32", "gb_ptr": "*fp32", "scratch_ptr": "*fp32", "seed": "i64",
               "param": "fp32", "inv_count": "fp32"}


def signature(kernel, element: str, constants: dict) -> dict:
    def kind(name):
        if name in FIXED_TYPES:
            return FIXED_TYPES[name]
        if name.endswith("_ptr"):
            return "*i64" if ("dims" in name or "offsets" in name) else f"*{element}"
        return "i32"
    return {param.name: kind(param.name) for param in kernel.params if param.name not in constants}


def compile_cases() -> dict:
    """{case id: compile_for_sm90's result} for every case, in this process (which must not interpret
    Triton)."""
    from aefast.mlp import triton_kernels

    results = {}
    for direction, (element, precision), width in CASES:
        operands = "16-bit" if element == "bf16" else precision
        block_d, block_m, warps = triton_kernels._narrow_blocks([width] * 5, 2**20, operands, direction)
        constants = dict(NUM_LAYERS=4, ACT=1, LAST_ACT=0, HAS_BIAS=True, PRECISION=precision, UPCAST=False,
                         BLOCK_M=block_m, BLOCK_D=block_d)
        if direction == "forward":
            kernel, constants["SAVE"] = triton_kernels._narrow_forward_kernel, True
        else:
            kernel, constants["NEED_GX"] = triton_kernels._narrow_backward_kernel, True
            constants["CHUNK_BLOCKS"] = triton_kernels._narrow_backward_grid(2**20, block_m, torch.device("cpu"))[0]
        results[f"{direction}-{element}-{precision}-{width}"] = compile_for_sm90(
            kernel, signature(kernel, element, constants), constants, warps)
    for element, precision in PRECISIONS:
        for name, kernel, constants, warps in linear_launches(triton_kernels, precision):
            results[f"{name}-{element}-{precision}"] = compile_for_sm90(
                kernel, signature(kernel, element, constants), constants, warps)
    return results


def linear_launches(k, precision):
    """The linear kernels with the tiles and warps their launchers pick for the autoencoder
    784-256-32-256-784 at batch 2^14 (the largest tiles they use), masked denoising and GELU included.
    (Gaussian corruption adds a 32-byte local array of its Box-Muller, not a spill.)"""
    common = dict(HAS_BIAS=True, PRECISION=precision, UPCAST=False)
    block = k._block
    m, n, kk = block(2**14, 64), block(256, 64), block(784, 32)
    yield "linear-forward", k._linear_forward_kernel, dict(
        ACT=5, CORRUPT=1, SAVE_Z=True, BLOCK_M=m, BLOCK_N=n, BLOCK_K=kk, **common), k._warps(m, n)
    m, n, kk = block(2**14, 64), block(256, 32), block(784, 64)
    yield "linear-grad-input", k._linear_grad_input_kernel, dict(
        ACT=5, CORRUPT=1, HAS_SCALE=True, PRECISION=precision, UPCAST=False, BLOCK_M=m, BLOCK_N=n, BLOCK_K=kk), \
        k._warps(m, kk)
    m, n, kk = block(2**14, 32), block(256, 64), block(784, 64)
    yield "linear-grad-weight", k._linear_grad_weight_kernel, dict(
        ACT=5, CORRUPT=1, HAS_SCALE=True, BLOCK_M=m, BLOCK_N=n, BLOCK_K=kk, **common), k._warps(n, kk)
    m, n, kk = block(2**14, 64), block(784, 64), block(256, 32)
    yield "linear-loss", k._linear_loss_kernel, dict(
        OUT_ACT=4, LOSS=1, BLOCK_M=m, BLOCK_N=n, BLOCK_K=kk, **common), k._warps(m, n)


LINEAR_CASES = [f"{name}-{element}-{precision}" for element, precision in PRECISIONS
                for name in ("linear-forward", "linear-grad-input", "linear-grad-weight", "linear-loss")]


@pytest.fixture(scope="module")
def compiled():
    return compiled_in_child(__file__)


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("direction,precision,width", CASES, ids=lambda value: "-".join(value) if isinstance(value, tuple) else str(value))
def test_narrow_kernels_compile_for_sm90_without_spills(compiled, direction, precision, width):
    element, dot_precision = precision
    result = compiled[f"{direction}-{element}-{dot_precision}-{width}"]
    assert result["stack"] == 0
    # The tensor cores are the point of every precision but IEEE float32 (Triton has no FMA fallback
    # for "tf32x3" that it would take silently, but a version could).
    assert result["tensor_cores"] == (dot_precision != "ieee" or element != "fp32")


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear_kernels_compile_for_sm90_without_spills(compiled, case):
    assert compiled[case]["stack"] == 0
    assert compiled[case]["tensor_cores"] == (not case.endswith("fp32-ieee"))


if __name__ == "__main__":
    print(json.dumps(compile_cases()))
