"""Every Triton kernel of the Willshaw memory compiles for an H100/H200 (sm_90) with each launch
configuration its launchers use, without spilling to local memory. The interpreter that runs them in the
other tests accepts code the compiler rejects (tests/sm90.py). The CUDA kernels too, built by nvcc."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.sm90 import CUOBJDUMP, compile_for_sm90, compiled_in_child

# The parameters' types as the launchers pass them: int64 matrices and patterns, int32 sizes.
SIGNATURES = {
    "_store_kernel": dict(matrix_ptr="*i64", words_per_row="i32", x_values_ptr="*i64", x_offsets_ptr="*i64",
                          y_values_ptr="*i64", y_offsets_ptr="*i64"),
    "_store_rows_kernel": dict(matrix_ptr="*i64", words_per_row="i32", rows_ptr="*i32", entry_pairs_ptr="*i32",
                               entries="i32", y_values_ptr="*i64", y_offsets_ptr="*i64"),
    "_and_kernel": dict(matrix_ptr="*i64", n_in="i32", words_per_row="i32", first_word="i32", cue_values_ptr="*i64",
                        value_count="i32",
                        cue_offsets_ptr="*i64", out_ptr="*i64", counts_ptr="*i32", groups="i32"),
    "_extract_kernel": dict(words_ptr="*i64", words_per_row="i32", first_group="i32", counts_ptr="*i32",
                            ends_ptr="*i64", groups="i32", out_ptr="*i64"),
    "_unpack_kernel": dict(words_ptr="*i64", counts_ptr="*i32", groups="i32", words_per_row="i32", first_word="i32",
                           n_out="i32", out_ptr="*u8"),
    "_sums_kernel": dict(matrix_ptr="*i64", words_per_row="i32", first_word="i32", n_out="i32", cue_values_ptr="*i64",
                         cue_offsets_ptr="*i64", out_ptr="*i32", threshold="i32"),
    "_count_ones_kernel": dict(words_ptr="*i64", count="i32", out_ptr="*i64"),
    "_check_rows_kernel": dict(values_ptr="*i64", offsets_ptr="*i64", units="i32", flags_ptr="*i32"),
    "_check_short_rows_kernel": dict(values_ptr="*i64", offsets_ptr="*i64", rows_total="i32", units="i32",
                                     flags_ptr="*i32"),
    "_pattern_verdict_kernel": dict(values_ptr="*i64", offsets_ptr="*i64", rows_total="i32", count="i32", units="i32",
                                    verdict_ptr="*i64"),
}


def launches():
    """(case id, kernel name, constants, warps) of every configuration a launcher can pick."""
    from aefast.willshaw import triton_kernels as k

    for warps in (1, 2, 4, 8):  # _STORE_LAUNCH's configurations
        yield f"store-{warps}", "_store_kernel", dict(BLOCK_X=k.STORE_X, BLOCK_Y=k.STORE_Y), warps
    yield "store-rows", "_store_rows_kernel", dict(BLOCK_E=k.STORE_ENTRIES, BLOCK_Y=k.STORE_Y), 4
    for words in (k.AND_WORDS, 256, 512):  # _AND_LAUNCH's configurations
        for warps in (4, 8):
            yield f"and-{words}-{warps}", "_and_kernel", dict(BLOCK_R=k.AND_ROWS, BLOCK_W=words,
                                                              GROUP=k.ANSWER_GROUP), warps
    yield "extract", "_extract_kernel", dict(GROUP=k.ANSWER_GROUP), 4
    yield "unpack", "_unpack_kernel", dict(BLOCK_W=k.AND_WORDS, GROUP=k.ANSWER_GROUP), 4
    for at_least in (False, True):
        yield f"sums-{at_least}", "_sums_kernel", dict(AT_LEAST=at_least, BLOCK_W=k.SUMS_WORDS), 4
    yield "count-ones", "_count_ones_kernel", dict(BLOCK=k.COUNT_WORDS), 4
    yield "check-rows", "_check_rows_kernel", dict(BLOCK=k.CHECK_BLOCK), 4
    yield "check-short-rows", "_check_short_rows_kernel", dict(ROWS=k.CHECK_ROWS, BLOCK=k.CHECK_BLOCK), \
        k.CHECK_SHORT_WARPS
    yield "pattern-verdict", "_pattern_verdict_kernel", dict(ROWS=k.VERDICT_ROWS, BLOCK=k.VERDICT_BLOCK), 4


CASE_IDS = ["store-1", "store-2", "store-4", "store-8", "store-rows", *(f"and-{w}-{n}" for w in (128, 256, 512) for n in (4, 8)),
            "extract", "unpack", "sums-False", "sums-True", "count-ones", "check-rows", "check-short-rows",
            "pattern-verdict"]


def compile_launches() -> dict:
    from aefast.willshaw import triton_kernels

    # Compiled for the benchmark's sizes (n = 2^18: 4096 words per row), multiples of 16 as Triton sees them.
    return {case: compile_for_sm90(getattr(triton_kernels, name), SIGNATURES[name], constants, warps,
                                   divisible=("words_per_row", "n_in", "n_out"))
            for case, name, constants, warps in launches()}


@pytest.fixture(scope="module")
def compiled():
    return compiled_in_child(__file__)


def test_the_case_list_is_every_launch():
    assert [case for case, *_ in launches()] == CASE_IDS


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("case", CASE_IDS)
def test_willshaw_kernels_compile_for_sm90_without_spills(compiled, case):
    assert compiled[case]["stack"] == 0


if __name__ == "__main__":
    print(json.dumps(compile_launches()))


# --- the cuda backend's kernels (csrc/willshaw/willshaw_cuda.cu), compiled by nvcc for sm_90 ---------------

CUDA_SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "willshaw" / "willshaw_cuda.cu"
CUDA_KERNELS = ("store_kernel", "and_kernel", "extract_kernel", "sums_kernel", "unpack_kernel", "count_ones_kernel")


@pytest.fixture(scope="module")
def cuda_kernels(tmp_path_factory):
    """Each kernel's registers, spill bytes and stack frame, from ptxas's report of an sm_90 build."""
    import sysconfig

    pybind11 = pytest.importorskip("pybind11")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    done = subprocess.run([nvcc, "-std=c++17", "-O3", "-arch=sm_90", "-DAEFAST_WITH_CUDA=1", "-Xptxas", "-v", "-c",
                           str(CUDA_SOURCE),
                           "-I", str(CUDA_SOURCE.parents[1]), "-I", sysconfig.get_paths()["include"],
                           "-I", pybind11.get_include(), "-o", str(tmp_path_factory.mktemp("nvcc") / "willshaw.o")],
                          capture_output=True, text=True, timeout=600,
                          # nvcc is no process of ours to sanitize: scripts/sanitize.sh preloads ASan, which crashes it.
                          env={name: value for name, value in os.environ.items() if name != "LD_PRELOAD"})
    assert done.returncode == 0, done.stderr
    report, kernel = {}, None
    for line in done.stderr.splitlines():
        if "Compiling entry function" in line:
            kernel = next(name for name in CUDA_KERNELS if f"{len(name)}{name}E" in line)
        elif kernel and "stack frame" in line:
            stack, spill_stores, spill_loads = map(int, re.findall(r"(\d+) bytes", line))
            report[kernel] = dict(stack=stack, spills=spill_stores + spill_loads)
        elif kernel and "Used" in line and "registers" in line:
            report[kernel]["registers"] = int(re.search(r"Used (\d+) registers", line).group(1))
    return report


@pytest.mark.parametrize("kernel", CUDA_KERNELS)
def test_cuda_kernels_compile_for_sm90_without_spills(cuda_kernels, kernel):
    """No local memory, and at most 64 registers a thread: the AND and the sums keep 16 rows' loads in
    flight (56 registers with nvcc 13), and 64 leaves room for the full 2048 threads per SM."""
    assert cuda_kernels[kernel]["spills"] == 0 and cuda_kernels[kernel]["stack"] == 0
    assert cuda_kernels[kernel]["registers"] <= 64
