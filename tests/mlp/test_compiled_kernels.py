"""The narrow kernels as the GPU gets them: compiled ahead of time for an H100/H200 (sm_90) with the
launch configuration the launchers choose, on any machine (Triton's bundled ptxas runs without a GPU).
A 64 x 64 float32 tile in 4 warps once spilled 13 KiB per thread to local memory, which made the
narrow stack 40x slower than eager on an H200; these tests keep every width up to 64 spill-free.

The compilation runs in a child process without TRITON_INTERPRET (the interpreter replaces the kernels
by Python functions that cannot be compiled)."""
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import triton

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
WIDTHS = (16, 64)
PRECISIONS = (("fp32", "ieee"), ("fp32", "tf32"), ("bf16", "tf32"))
DIRECTIONS = ("forward", "backward")
CASES = list(itertools.product(DIRECTIONS, PRECISIONS, WIDTHS))


def stack_bytes(kernel, element: str, constants: dict, warps: int, folder: Path) -> int:
    """Bytes of per-thread stack (spills, local arrays) of ``kernel`` compiled for sm_90."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for param in kernel.params:
        name = param.name
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*i64" if ("dims" in name or "offsets" in name) else f"*{element}"
        else:
            signature[name] = "i32"
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    cubin = folder / "kernel.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    usage = subprocess.run([str(CUOBJDUMP), "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
    return int(re.search(r"STACK:(\d+)", usage.stdout).group(1))


def compile_cases() -> dict:
    """{case id: stack bytes} for every case, in this process (which must not interpret Triton)."""
    from aefast.mlp import triton_kernels

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for direction, (element, precision), width in CASES:
            block_d, block_m, warps = triton_kernels._narrow_blocks([width] * 5, 2**20, precision)
            constants = dict(NUM_LAYERS=4, ACT=1, LAST_ACT=0, HAS_BIAS=True, PRECISION=precision, UPCAST=False,
                             BLOCK_M=block_m, BLOCK_D=block_d)
            if direction == "forward":
                kernel, constants["SAVE"] = triton_kernels._narrow_forward_kernel, True
            else:
                kernel, constants["NEED_GX"] = triton_kernels._narrow_backward_kernel, True
            results[f"{direction}-{element}-{precision}-{width}"] = stack_bytes(kernel, element, constants, warps,
                                                                              Path(folder))
    return results


@pytest.fixture(scope="module")
def compiled():
    root = Path(__file__).resolve().parents[2]
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])  # this checkout's aefast
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("direction,precision,width", CASES, ids=lambda value: "-".join(value) if isinstance(value, tuple) else str(value))
def test_narrow_kernels_compile_for_sm90_without_spills(compiled, direction, precision, width):
    element, dot_precision = precision
    assert compiled[f"{direction}-{element}-{dot_precision}-{width}"] == 0


if __name__ == "__main__":
    print(json.dumps(compile_cases()))
