"""Every Triton kernel of the Willshaw memory compiles for an H100/H200 (sm_90) with each launch
configuration its launchers use, without spilling to local memory. The interpreter that runs them in the
other tests accepts code the compiler rejects (tests/sm90.py)."""
import json

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
    "_unpack_kernel": dict(words_ptr="*i64", words_per_row="i32", first_word="i32", n_out="i32", out_ptr="*u8"),
    "_sums_kernel": dict(matrix_ptr="*i64", words_per_row="i32", first_word="i32", n_out="i32", cue_values_ptr="*i64",
                         cue_offsets_ptr="*i64", out_ptr="*i32", threshold="i32"),
    "_count_ones_kernel": dict(words_ptr="*i64", count="i32", out_ptr="*i64"),
    "_check_rows_kernel": dict(values_ptr="*i64", offsets_ptr="*i64", units="i32", flags_ptr="*i32"),
    "_check_short_rows_kernel": dict(values_ptr="*i64", offsets_ptr="*i64", rows_total="i32", units="i32",
                                     flags_ptr="*i32"),
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
    yield "unpack", "_unpack_kernel", dict(BLOCK_W=k.AND_WORDS), 4
    for at_least in (False, True):
        yield f"sums-{at_least}", "_sums_kernel", dict(AT_LEAST=at_least, BLOCK_W=k.SUMS_WORDS), 4
    yield "count-ones", "_count_ones_kernel", dict(BLOCK=k.COUNT_WORDS), 4
    yield "check-rows", "_check_rows_kernel", dict(BLOCK=k.CHECK_BLOCK), 4
    yield "check-short-rows", "_check_short_rows_kernel", dict(ROWS=k.CHECK_ROWS, BLOCK=k.CHECK_BLOCK), \
        k.CHECK_SHORT_WARPS


CASE_IDS = ["store-1", "store-2", "store-4", "store-8", "store-rows", *(f"and-{w}-{n}" for w in (128, 256, 512) for n in (4, 8)),
            "extract", "unpack", "sums-False", "sums-True", "count-ones", "check-rows", "check-short-rows"]


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
