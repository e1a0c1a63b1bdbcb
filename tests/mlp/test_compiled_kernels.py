"""The narrow kernels as the GPU gets them: compiled ahead of time for an H100/H200 (sm_90) with the
launch configuration the launchers choose, on any machine (Triton's bundled ptxas runs without a GPU).
A 64 x 64 float32 tile in 4 warps once spilled 13 KiB per thread to local memory, which made the
narrow stack 40x slower than eager on an H200; these tests keep every width up to 64 spill-free.

The compilation runs in a child process without TRITON_INTERPRET (the interpreter replaces the kernels
by Python functions that cannot be compiled)."""
import itertools
import json

import pytest

from tests.sm90 import CUOBJDUMP, compile_for_sm90, compiled_in_child

WIDTHS = (16, 64)
PRECISIONS = (("fp32", "ieee"), ("fp32", "tf32"), ("bf16", "tf32"))
DIRECTIONS = ("forward", "backward")
CASES = list(itertools.product(DIRECTIONS, PRECISIONS, WIDTHS))


def signature(kernel, element: str, constants: dict) -> dict:
    return {param.name: ("*i64" if ("dims" in param.name or "offsets" in param.name) else f"*{element}")
            if param.name.endswith("_ptr") else "i32"
            for param in kernel.params if param.name not in constants}


def compile_cases() -> dict:
    """{case id: stack bytes} for every case, in this process (which must not interpret Triton)."""
    from aefast.mlp import triton_kernels

    results = {}
    for direction, (element, precision), width in CASES:
        block_d, block_m, warps = triton_kernels._narrow_blocks([width] * 5, 2**20, precision)
        constants = dict(NUM_LAYERS=4, ACT=1, LAST_ACT=0, HAS_BIAS=True, PRECISION=precision, UPCAST=False,
                         BLOCK_M=block_m, BLOCK_D=block_d)
        if direction == "forward":
            kernel, constants["SAVE"] = triton_kernels._narrow_forward_kernel, True
        else:
            kernel, constants["NEED_GX"] = triton_kernels._narrow_backward_kernel, True
        results[f"{direction}-{element}-{precision}-{width}"] = compile_for_sm90(
            kernel, signature(kernel, element, constants), constants, warps)["stack"]
    return results


@pytest.fixture(scope="module")
def compiled():
    return compiled_in_child(__file__)


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("direction,precision,width", CASES, ids=lambda value: "-".join(value) if isinstance(value, tuple) else str(value))
def test_narrow_kernels_compile_for_sm90_without_spills(compiled, direction, precision, width):
    element, dot_precision = precision
    assert compiled[f"{direction}-{element}-{dot_precision}-{width}"] == 0


if __name__ == "__main__":
    print(json.dumps(compile_cases()))
