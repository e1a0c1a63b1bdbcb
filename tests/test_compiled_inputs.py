"""aefast._C's CPU entry points against whatever Python can hand them: every call either runs or raises a
Python exception, never crashes or reads past a buffer (scripts/sanitize.sh runs this file under ASan).
The module is private, but importable: its own checks are the last line before raw memory."""
import math
import random

import numpy as np
import pytest

from aefast import _backends

C = _backends.compiled_module()
pytestmark = pytest.mark.skipif(C is None, reason="aefast._C is not built")

REFUSALS = (ValueError, TypeError, RuntimeError, OverflowError)
HUGE = 2**40  # sizes whose product wraps a 64-bit integer: 2^31 x 2^40 = 2^71, 2^32 x 2^32 = 2^64


def test_sizes_whose_product_wraps_to_an_empty_buffer_are_refused():
    # Before: rows x width wrapped to 0, matched the empty buffer, and the kernel walked 2^31 rows of it.
    with pytest.raises(ValueError, match=r"dense must be a 2-D buffer of shape \(rows=2147483648"):
        C.willshaw_dense_to_rows(np.zeros((0, 5), np.uint8), 2**31, HUGE)
    with pytest.raises(ValueError, match=r"dense must be a 2-D buffer of shape \(rows=0, width=-1\)"):
        C.willshaw_dense_to_rows(np.zeros((0, 0), np.uint8), 0, -1)
    for wrong_rank in (np.zeros(6, np.uint8), np.zeros((2, 3, 1), np.uint8)):  # the same bytes as (2, 3)
        with pytest.raises(ValueError, match=r"dense must be a 2-D buffer of shape \(rows=2, width=3\)"):
            C.willshaw_dense_to_rows(wrong_rank, 2, 3)
    empty = np.zeros(0, np.float32)
    for entry, args in (
        (C.vae_forward_cpu, (empty, empty, None, empty, empty, 2**32, 2**32, "float32", 0, True, -1.0, 1.0)),
        (C.vae_backward_cpu, (empty, empty, empty, empty, None, empty, empty, 2**32, 2**32, "float32", 0, True,
                              -1.0, 1.0)),
    ):
        with pytest.raises(ValueError, match=r"rows x cols \(4294967296 x 4294967296\) must be a size"):
            entry(*args)


def test_a_row_count_with_no_room_for_its_offsets_is_refused():
    offsets = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="rows must be < 2"):
        C.willshaw_check_patterns(np.zeros(0, np.int64), offsets, 2**63 - 1, 10, "x")


def one_cue():
    """An empty 5 x 70 memory (2 words a row) and one cue (values, offsets) of units 1 and 3."""
    return np.zeros(5 * 2, np.int64), np.array([1, 3], np.int64), np.array([0, 2], np.int64)


@pytest.mark.parametrize("threshold,value,match", [
    (-1, 0, r"threshold must be 0 \(hard\), 1 \(soft\), 2 \(fixed\) or 3 \(topk\), got -1"),
    (4, 0, r"threshold must be .* got 4"),
    (2, -1, "a fixed threshold must be >= 0"),
    (3, 0, r"k must be in \[1, n_out=70\], got 0"),
    (3, 71, r"k must be in \[1, n_out=70\], got 71"),
])
def test_the_retrievals_refuse_a_bad_threshold_themselves(threshold, value, match):
    """Checked again in C++: the threshold code picks the kernel's branch, and k sizes its selection."""
    matrix, cue_values, cue_offsets = one_cue()
    with pytest.raises(ValueError, match=match):
        C.willshaw_retrieve_cpu(matrix, 5, 70, cue_values, cue_offsets, 1, threshold, value, np.zeros(70, np.uint8))
    with pytest.raises(ValueError, match=match):
        C.willshaw_retrieve_indices_cpu(matrix, 5, 70, cue_values, cue_offsets, 1, threshold, value)


def test_a_memory_without_units_is_refused():
    empty, start = np.zeros(0, np.int64), np.array([0], np.int64)
    for n_in, n_out in ((0, 70), (5, 0)):
        with pytest.raises(ValueError, match=rf"n_in and n_out must be in \[1, 2\^31 - 1\], got {n_in} and {n_out}"):
            C.willshaw_sums_cpu(empty, n_in, n_out, empty, start, 0, np.zeros(0, np.int32))


def test_an_output_buffer_of_the_wrong_size_is_refused():
    """The sums and the answer take rows x n_out items: one short, or one over, is refused before the kernel
    writes a byte (the random calls below always size them right)."""
    matrix, cue_values, cue_offsets = one_cue()
    for extra in (-1, 1):
        sums = np.full(70 + extra, -1, np.int32)
        with pytest.raises(ValueError, match=f"sums: expected 70 elements, got {70 + extra}"):
            C.willshaw_sums_cpu(matrix, 5, 70, cue_values, cue_offsets, 1, sums)
        answer = np.full(70 + extra, 7, np.uint8)
        with pytest.raises(ValueError, match=f"answer: expected 70 elements, got {70 + extra}"):
            C.willshaw_retrieve_cpu(matrix, 5, 70, cue_values, cue_offsets, 1, 0, 0, answer)
        assert (sums == -1).all() and (answer == 7).all()


def test_a_negative_row_count_is_refused_before_its_offsets_are_read():
    """rows = -1 asks for no offsets at all: an empty offsets buffer would pass the size check."""
    empty = np.zeros(0, np.int64)
    with pytest.raises(ValueError, match="rows must be >= 0, got -1"):
        C.willshaw_check_patterns(empty, empty, -1, 10, "x")


def test_outputs_in_read_only_buffers_are_refused():
    """What a call writes (the matrix a store ORs into, the sums, the answer, z and the KL) must be a
    writable buffer: numpy's read-only arrays (np.broadcast_to views among them) are refused."""
    def read_only(array):
        array.flags.writeable = False
        return array
    matrix, values, offsets = one_cue()
    with pytest.raises(ValueError, match="read-only"):
        C.willshaw_store_cpu(read_only(matrix.copy()), 5, 70, values, offsets, values, offsets, 1)
    with pytest.raises(ValueError, match="read-only"):
        C.willshaw_sums_cpu(matrix, 5, 70, values, offsets, 1, read_only(np.zeros(70, np.int32)))
    with pytest.raises(ValueError, match="read-only"):
        C.willshaw_retrieve_cpu(matrix, 5, 70, values, offsets, 1, 0, 0, read_only(np.zeros(70, np.uint8)))
    mu = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="read-only"):
        C.vae_forward_cpu(mu, mu, None, read_only(np.zeros(6, np.float32)), np.zeros(2, np.float32), 2, 3,
                          "float32", 0, False, -math.inf, math.inf)
    with pytest.raises(ValueError, match="read-only"):
        C.philox_normal_cpu(0, 0, read_only(np.zeros(4, np.float32)))


@pytest.mark.parametrize("per_element", [False, True])
def test_vae_buffers_of_the_wrong_size_are_refused(per_element):
    """mu, logvar, eps, z and grad_* take rows x cols items, kl and grad_kl rows (per_element: rows x cols)."""
    rows, cols, inf = 2, 3, math.inf
    full, kl = np.zeros(6, np.float32), np.zeros(6 if per_element else 2, np.float32)
    short, short_kl = full[:5], kl[:-1]
    with pytest.raises(ValueError, match="eps: expected 6 elements, got 5"):
        C.vae_forward_cpu(full, full, short, full.copy(), kl, rows, cols, "float32", 0, per_element, -inf, inf)
    with pytest.raises(ValueError, match=f"kl: expected {kl.size} elements, got {kl.size - 1}"):
        C.vae_forward_cpu(full, full, None, full.copy(), short_kl, rows, cols, "float32", 0, per_element, -inf, inf)
    with pytest.raises(ValueError, match="z: expected 6 elements, got 5"):
        C.vae_forward_cpu(full, full, None, short.copy(), kl, rows, cols, "float32", 0, per_element, -inf, inf)
    with pytest.raises(ValueError, match=f"grad_kl: expected {kl.size} elements, got {kl.size - 1}"):
        C.vae_backward_cpu(full, short_kl, full, full, None, full.copy(), full.copy(), rows, cols, "float32", 0,
                           per_element, -inf, inf)
    with pytest.raises(ValueError, match="grad_logvar: expected 6 elements, got 5"):
        C.vae_backward_cpu(full, kl, full, full, None, full.copy(), short.copy(), rows, cols, "float32", 0,
                           per_element, -inf, inf)


def pattern_rows(rng, npr, rows, units):
    """(values, offsets) of ``rows`` patterns, one time in four damaged in one place."""
    offsets = np.concatenate([[0], np.cumsum(npr.integers(0, 4, size=rows))]).astype(np.int64)
    values = npr.integers(0, units, size=int(offsets[-1])).astype(np.int64)
    damage = rng.random()
    if damage < 0.1 and len(values):
        values[rng.randrange(len(values))] = rng.choice([-1, units, 2**62, -2**63])
    elif damage < 0.2 and rows:
        offsets[rng.randrange(1, rows + 1)] = rng.choice([-1, 0, 2**40, int(offsets[-1]) + 1])
    elif damage < 0.25:
        offsets[0] = rng.choice([1, -1])
    return values, offsets


def willshaw_call(rng, npr):
    n_in, n_out = rng.choice([1, 2, 63, 64, 65, 130]), rng.choice([1, 2, 63, 64, 65, 130])
    words = n_in * ((n_out + 63) // 64)
    matrix = npr.integers(-2**63, 2**63 - 1, size=words, dtype=np.int64)
    if rng.random() < 0.05:
        matrix = matrix[:-1]
    rows = rng.choice([0, 1, 2, 5, 300])
    cues, answers = pattern_rows(rng, npr, rows, n_in), pattern_rows(rng, npr, rows, n_out)
    said_rows = rows + rng.choice([0, 0, 0, 0, 1, -1])  # the count the caller claims
    threshold, value = rng.randrange(-1, 5), rng.choice([-1, 0, 1, 3, n_out, n_out + 1])
    out_rows = max(said_rows, 0)
    return rng.choice([
        lambda: C.willshaw_store_cpu(matrix, n_in, n_out, *cues, *answers, said_rows),
        lambda: C.willshaw_sums_cpu(matrix, n_in, n_out, *cues, said_rows, np.zeros(out_rows * n_out, np.int32)),
        lambda: C.willshaw_retrieve_cpu(matrix, n_in, n_out, *cues, said_rows, threshold, value,
                                        np.zeros(out_rows * n_out, np.uint8)),
        lambda: C.willshaw_retrieve_indices_cpu(matrix, n_in, n_out, *cues, said_rows, threshold, value),
        lambda: C.willshaw_check_patterns(*cues, said_rows, n_in, "x"),
        lambda: C.willshaw_dense_to_rows((npr.random((out_rows, n_out)) < 0.1).astype(np.uint8),
                                         said_rows + rng.choice([0, 0, 1]), n_out + rng.choice([0, 0, -1])),
        lambda: C.willshaw_count_ones_cpu(matrix, words + rng.choice([0, 0, 1, -1])),
    ])


def vae_call(rng, npr):
    rows, cols = rng.choice([0, 1, 3, 17]), rng.choice([0, 1, 5, 33])
    count = rows * cols + rng.choice([0, 0, 0, 1])
    dtype = rng.choice(["float32", "float64", "float16", "bfloat16"])
    storage = {"float32": np.float32, "float64": np.float64}.get(dtype, np.int16)  # 16-bit types as raw words
    mu = npr.integers(-30000, 30000, size=count).astype(storage)
    kl_storage = np.float64 if dtype == "float64" else np.float32
    per_element = rng.random() < 0.5
    kl = np.zeros(count if per_element else rows, kl_storage)
    bounds = (rng.choice([-math.inf, -30.0, math.nan]), rng.choice([math.inf, 20.0, -40.0]))
    seed = rng.randrange(0, 2**64)
    return rng.choice([
        lambda: C.vae_forward_cpu(mu, mu.copy(), rng.choice([None, mu.copy()]), np.empty_like(mu), kl, rows, cols,
                                  dtype, seed, per_element, *bounds),
        lambda: C.vae_backward_cpu(mu, kl, mu, mu, None, np.empty_like(mu), np.empty_like(mu), rows, cols, dtype,
                                   seed, per_element, *bounds),
    ])


def buffer_call(rng, npr):
    """The entry points that take any buffer: Philox normals or uniforms into it, huge pages under it."""
    buffer = npr.standard_normal(rng.choice([0, 1, 7, 1000])).astype(rng.choice([np.float32, np.float64, np.int8]))
    if rng.random() < 0.2:
        buffer = buffer[::2]
    return rng.choice([
        lambda: C.philox_normal_cpu(rng.randrange(0, 2**64), rng.randrange(0, 2**64), buffer),
        lambda: C.philox_uniform_cpu(rng.randrange(0, 2**64), rng.randrange(0, 2**64), buffer),
        lambda: C.advise_huge_pages(buffer),
    ])


@pytest.mark.parametrize("seed", range(3))
def test_random_calls_run_or_raise(seed):
    """Well-formed buffers with damaged contents and claimed sizes one off: each call runs or raises."""
    rng, npr = random.Random(seed), np.random.default_rng(seed)
    outcomes = {"ran": 0, "raised": 0}
    for _ in range(1500):
        call = rng.choices([willshaw_call, vae_call, buffer_call], weights=[7, 2, 1])[0](rng, npr)
        try:
            call()
            outcomes["ran"] += 1
        except REFUSALS:
            outcomes["raised"] += 1
    # Both kinds happen, so the damage reaches the checks and the kernels alike.
    assert outcomes["ran"] > 300 and outcomes["raised"] > 300, outcomes
