"""_triton_random.fill, the layers' corruption noise on a GPU, as an H100/H200 gets it (tests/sm90.py):
compiled for sm_90 for both kinds and the seed, first offset and count types a launch gives it (i32 below 2^31, i64
above), without spills; a GPU runs it nowhere else before a lent one does."""
import itertools
import json

import pytest

from tests.sm90 import CUOBJDUMP, compile_for_sm90, compiled_in_child

CASES = [f"{kind}-seed{seed}-first{first}-count{count}" for kind, seed, first, count in
         itertools.product(("uniform", "normal"), ("i32", "i64"), ("i32", "i64"), ("i32", "i64"))]


def compile_case(case: str) -> dict:
    from aefast import _triton_random

    kind, seed, first, count = case.split("-")
    signature = {"out_ptr": "*fp32", "seed": seed[len("seed"):], "first": first[len("first"):],
                 "count": count[len("count"):]}
    constants = {"NORMAL": kind == "normal", "BLOCK": _triton_random.FILL_BLOCK}
    return compile_for_sm90(_triton_random.fill_kernel, signature, constants, warps=4)


@pytest.fixture(scope="module")
def compiled():
    return compiled_in_child(__file__)


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("case", CASES)
def test_fill_compiles_for_sm90_without_spills(compiled, case):
    assert compiled[case]["spills"] == 0
    assert compiled[case]["stack"] <= 32  # at most libdevice's cosine reduction array (as the VAE's kernels)


if __name__ == "__main__":
    print(json.dumps({case: compile_case(case) for case in CASES}))
