"""Triton kernels of the Willshaw memory, on the packed matrix of reference.py (int64 words, one bit-row
of the n_out output units per input unit, bits past n_out zero) and patterns as rows of positions
(``values[offsets[b]:offsets[b + 1]]``).

- store: one program per pair ORs its x-by-y block of bits into the matrix with atomic ORs on int64
  words, so pairs that share a word need no other coordination. Row order (STORE_ORDER, by default
  for matrices past the L2) sorts the x ones by row first, so that the updates of a row arrive together.
- hard and soft thresholds: one program per (cue, block of words) ANDs the cue's rows and counts the
  answer's ones per group of words; a second kernel unpacks the words into the bool answer, or, for
  retrieve_indices, writes each group's positions at its place in the cumulative counts, reading only
  the groups that hold ones. packed_retrieval.py drives them (its docstring says how, and why one wait).
- sums (and the fixed and top-k thresholds, which start from them): one program per (cue, block of
  words) adds each bit of each cue row into int32 counters; a fixed T is compared in the kernel.
- count of ones: a SWAR popcount (libdevice's popc does not run in the interpreter).
- pattern check: one program per row compares the row's positions pairwise and with [0, units), in
  place of the reference's sort of every (row, position) key, the slowest step of a store on a GPU.
  Its first step, the verdict of every row at once (packed_retrieval.pattern_verdict), is one kernel
  that a retrieval queues behind its AND, where torch's ops took fifteen.

Every offset is computed in int64: a matrix of 10^6 x 15625 words has offsets past 2^33.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from aefast import _backends
from aefast._sizes import cdiv
from aefast._triton_launch import launch
from aefast.willshaw import packed_retrieval
from aefast.willshaw.packed_retrieval import ANSWER_GROUP, CHECK_LONGEST

# Words per program of the AND, unpack and sums kernels: 128 words = 1 KiB of a row per load, whole
# 128-byte lines (HOPPER.md); the sums keep 64 counters per word, so they take fewer.
AND_WORDS, SUMS_WORDS, COUNT_WORDS = 128, 16, 1024
AND_ROWS = 16  # cue rows loaded at once by the AND (a pattern's ones; longer cues loop)
STORE_X, STORE_Y = 16, 32  # a pair's x and y ones per tile; longer rows loop over tiles
CHECK_BLOCK = 32  # positions per tile of the pairwise check; rows longer than CHECK_LONGEST are sorted
CHECK_ROWS = 8  # rows per program when every row fits one tile
# Its (rows, 32, 32) comparison takes 64 elements per thread in 4 warps: 255 registers and a spill with
# triton 3.6 (tests/willshaw/test_compiled_kernels.py); 8 warps halve that.
CHECK_SHORT_WARPS = 8
VERDICT_ROWS, VERDICT_BLOCK = 32, 32  # rows per program of the verdict, and positions per tile of a row


@triton.jit
def _store_kernel(matrix_ptr, words_per_row, x_values_ptr, x_offsets_ptr, y_values_ptr, y_offsets_ptr,
                  BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr):
    pair = tl.program_id(0).to(tl.int64)
    x_start, x_stop = tl.load(x_offsets_ptr + pair), tl.load(x_offsets_ptr + pair + 1)
    y_start, y_stop = tl.load(y_offsets_ptr + pair), tl.load(y_offsets_ptr + pair + 1)
    for x_tile in range(x_start, x_stop, BLOCK_X):
        xi = x_tile + tl.arange(0, BLOCK_X)
        x_mask = xi < x_stop
        rows = tl.load(x_values_ptr + xi, mask=x_mask, other=0)
        for y_tile in range(y_start, y_stop, BLOCK_Y):
            yi = y_tile + tl.arange(0, BLOCK_Y)
            y_mask = yi < y_stop
            units = tl.load(y_values_ptr + yi, mask=y_mask, other=0)
            addresses = rows[:, None] * words_per_row + (units >> 6)[None, :]
            bits = tl.full((BLOCK_Y,), 1, tl.int64) << (units & 63)
            # Relaxed: the ORs need no ordering among themselves (Triton's default, acq_rel, adds fences).
            tl.atomic_or(matrix_ptr + addresses, tl.broadcast_to(bits[None, :], (BLOCK_X, BLOCK_Y)),
                         mask=x_mask[:, None] & y_mask[None, :], sem="relaxed")


@triton.jit
def _store_rows_kernel(matrix_ptr, words_per_row, rows_ptr, entry_pairs_ptr, entries, y_values_ptr, y_offsets_ptr,
                       BLOCK_E: tl.constexpr, BLOCK_Y: tl.constexpr):
    """The store in row order: entry e (x unit ``rows[e]`` of pair ``entry_pairs[e]``, entries sorted by
    row) ORs the pair's y ones into that row. Programs running together then write a few rows, whose
    words stay in L2 while their updates arrive, where in pair order each update fetched its own
    sector from DRAM."""
    e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_mask = e < entries
    rows = tl.load(rows_ptr + e, mask=e_mask, other=0).to(tl.int64)
    pairs = tl.load(entry_pairs_ptr + e, mask=e_mask, other=0).to(tl.int64)
    y_start = tl.load(y_offsets_ptr + pairs, mask=e_mask, other=0)
    y_stop = tl.load(y_offsets_ptr + pairs + 1, mask=e_mask, other=0)
    for y_tile in range(0, tl.max(y_stop - y_start), BLOCK_Y):
        yi = y_start[:, None] + y_tile + tl.arange(0, BLOCK_Y)[None, :]
        y_mask = e_mask[:, None] & (yi < y_stop[:, None])
        units = tl.load(y_values_ptr + yi, mask=y_mask, other=0)
        bits = tl.full((BLOCK_E, BLOCK_Y), 1, tl.int64) << (units & 63)
        tl.atomic_or(matrix_ptr + rows[:, None] * words_per_row + (units >> 6), bits, mask=y_mask, sem="relaxed")


@triton.jit
def _bit_and(a, b):
    return a & b


@triton.jit
def _popcount(x):
    """Set bits of each uint64 word, as int32 (SWAR: libdevice's popc does not run in the interpreter)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return (x & 0x7F).to(tl.int32)


@triton.jit
def _and_kernel(matrix_ptr, n_in, words_per_row, first_word, cue_values_ptr, value_count, cue_offsets_ptr, out_ptr,
                counts_ptr, groups, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, GROUP: tl.constexpr):
    """out[cue, words] = AND of the cue's rows (0 for an empty cue), written only in the GROUPs of words
    that hold a set bit (at capacity nearly every group holds none, and writing it would add a row to
    the M rows read: the readers take counts first); counts[cue, group] = its set bits in each GROUP
    words. BLOCK_R rows are loaded at once: their loads are in flight together instead of one
    after another. Offsets and rows are clamped and masked to the tensors' bounds: a cue that fails its
    check (the verdict comes later) reads nothing outside them and loops no longer than its values."""
    cue = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1).to(tl.int64)
    words = first_word + block * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = words < words_per_row
    start = tl.minimum(tl.maximum(tl.load(cue_offsets_ptr + cue), 0), value_count)
    stop = tl.minimum(tl.maximum(tl.load(cue_offsets_ptr + cue + 1), start), value_count)
    acc = tl.full((BLOCK_W,), -1, tl.int64)
    for tile in range(start, stop, BLOCK_R):
        at = tile + tl.arange(0, BLOCK_R)
        rows = tl.load(cue_values_ptr + at, mask=at < stop, other=0)
        row_mask = (at < stop) & (rows >= 0) & (rows < n_in)
        tile_words = tl.load(matrix_ptr + rows[:, None] * words_per_row + words[None, :],
                             mask=row_mask[:, None] & mask[None, :], other=-1)
        acc &= tl.reduce(tile_words, 0, _bit_and)
    acc = tl.where((stop > start) & mask, acc, 0)
    ones = tl.sum(tl.reshape(_popcount(acc.to(tl.uint64, bitcast=True)), (BLOCK_W // GROUP, GROUP)), axis=1)
    group_ids = first_word // GROUP + block * (BLOCK_W // GROUP) + tl.arange(0, BLOCK_W // GROUP)
    tl.store(counts_ptr + cue * groups + group_ids, ones, mask=group_ids < groups)
    written = tl.reshape(tl.broadcast_to((ones > 0)[:, None], (BLOCK_W // GROUP, GROUP)), (BLOCK_W,))
    tl.store(out_ptr + cue * words_per_row + words, acc, mask=mask & written)


@triton.jit
def _extract_kernel(words_ptr, words_per_row, first_group, counts_ptr, ends_ptr, groups, out_ptr,
                    GROUP: tl.constexpr):
    """The positions of the set bits of one group of a cue's answer words, in order, written at
    out[ends[cue, group] - counts[cue, group]:ends[cue, group]] (ends: the inclusive cumulative counts
    over the flattened (cue, group) grid). A group without ones returns at once; the loop runs once per
    bit of the group's fullest word, taking every word's lowest remaining bit."""
    cue = tl.program_id(0).to(tl.int64)
    group = first_group + tl.program_id(1).to(tl.int64)
    count = tl.load(counts_ptr + cue * groups + group)
    if count > 0:
        words = group * GROUP + tl.arange(0, GROUP)
        packed = tl.load(words_ptr + cue * words_per_row + words, mask=words < words_per_row, other=0)
        remaining = packed.to(tl.uint64, bitcast=True)
        ones = _popcount(remaining)
        at = tl.load(ends_ptr + cue * groups + group) - count + tl.cumsum(ones, 0).to(tl.int64) - ones
        for _ in range(0, tl.max(ones, 0)):
            # x & (x - 1) clears the lowest set bit (not x & -x: triton 3.6's interpreter cannot negate
            # or invert a uint64).
            cleared = remaining & (remaining - 1)
            lowest = remaining ^ cleared
            tl.store(out_ptr + at, words * 64 + _popcount(lowest - 1), mask=remaining != 0)
            at += 1
            remaining = cleared


@triton.jit
def _unpack_kernel(words_ptr, counts_ptr, groups, words_per_row, first_word, n_out, out_ptr, BLOCK_W: tl.constexpr,
                   GROUP: tl.constexpr):
    """out[row, unit] (uint8 0/1) = bit unit % 64 of words[row, unit // 64], 0 in a GROUP of words whose
    count of ones is 0 (_and_kernel leaves those unwritten)."""
    row = tl.program_id(0).to(tl.int64)
    words = first_word + tl.program_id(1).to(tl.int64) * BLOCK_W + tl.arange(0, BLOCK_W)
    inside = words < words_per_row
    written = tl.load(counts_ptr + row * groups + words // GROUP, mask=inside, other=0) > 0
    packed = tl.load(words_ptr + row * words_per_row + words, mask=inside & written, other=0)
    shifts = tl.arange(0, 64).to(tl.int64)
    bits = (packed[:, None] >> shifts[None, :]) & 1
    units = words[:, None] * 64 + shifts[None, :]
    tl.store(out_ptr + row * n_out + units, bits.to(tl.uint8), mask=units < n_out)


@triton.jit
def _sums_kernel(matrix_ptr, words_per_row, first_word, n_out, cue_values_ptr, cue_offsets_ptr, out_ptr, threshold,
                 AT_LEAST: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[cue, unit] = the unit's dendritic sum (int32), or with AT_LEAST (uint8) sum >= threshold."""
    cue = tl.program_id(0).to(tl.int64)
    words = first_word + tl.program_id(1).to(tl.int64) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = words < words_per_row
    shifts = tl.arange(0, 64).to(tl.int64)
    start, stop = tl.load(cue_offsets_ptr + cue), tl.load(cue_offsets_ptr + cue + 1)
    acc = tl.zeros((BLOCK_W, 64), tl.int32)
    for i in range(start, stop):
        row = tl.load(cue_values_ptr + i)
        packed = tl.load(matrix_ptr + row * words_per_row + words, mask=mask, other=0)
        acc += ((packed[:, None] >> shifts[None, :]) & 1).to(tl.int32)
    units = words[:, None] * 64 + shifts[None, :]
    if AT_LEAST:
        tl.store(out_ptr + cue * n_out + units, (acc >= threshold).to(tl.uint8), mask=units < n_out)
    else:
        tl.store(out_ptr + cue * n_out + units, acc, mask=units < n_out)


@triton.jit
def _count_ones_kernel(words_ptr, count, out_ptr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(words_ptr + offsets, mask=offsets < count, other=0).to(tl.uint64, bitcast=True)
    tl.store(out_ptr + tl.program_id(0), tl.sum(_popcount(x).to(tl.int64), axis=0))


@triton.jit
def _check_rows_kernel(values_ptr, offsets_ptr, units, flags_ptr, BLOCK: tl.constexpr):
    """flags[row] = 1 for a position outside [0, units), 2 for a position listed twice, else 0."""
    row = tl.program_id(0).to(tl.int64)
    start, stop = tl.load(offsets_ptr + row), tl.load(offsets_ptr + row + 1)
    flags = tl.zeros((BLOCK,), tl.int32)
    for a in range(start, stop, BLOCK):
        ia = a + tl.arange(0, BLOCK)
        mask_a = ia < stop
        va = tl.load(values_ptr + ia, mask=mask_a, other=0)
        flags = tl.maximum(flags, (mask_a & ((va < 0) | (va >= units))).to(tl.int32))
        for b in range(a, stop, BLOCK):
            ib = b + tl.arange(0, BLOCK)
            mask_b = ib < stop
            vb = tl.load(values_ptr + ib, mask=mask_b, other=0)
            same = (va[:, None] == vb[None, :]) & mask_a[:, None] & mask_b[None, :] & (ia[:, None] < ib[None, :])
            flags = tl.maximum(flags, 2 * tl.max(same.to(tl.int32), axis=1))
    tl.store(flags_ptr + row, tl.max(flags, axis=0))


@triton.jit
def _check_short_rows_kernel(values_ptr, offsets_ptr, rows_total, units, flags_ptr, ROWS: tl.constexpr,
                             BLOCK: tl.constexpr):
    """_check_rows_kernel for rows of at most BLOCK positions, ROWS rows per program: a program per row
    would spend more time starting than comparing (two million rows per million pairs stored)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < rows_total
    start = tl.load(offsets_ptr + rows, mask=row_ok, other=0)
    stop = tl.load(offsets_ptr + rows + 1, mask=row_ok, other=0)
    at = start[:, None] + tl.arange(0, BLOCK)[None, :]
    mask = at < stop[:, None]
    v = tl.load(values_ptr + at, mask=mask, other=0)
    outside = tl.max((mask & ((v < 0) | (v >= units))).to(tl.int32), axis=1)
    position = tl.arange(0, BLOCK)
    same = ((v[:, :, None] == v[:, None, :]) & mask[:, :, None] & mask[:, None, :]
            & (position[:, None] < position[None, :])[None, :, :])
    repeated = tl.max(tl.max(same.to(tl.int32), axis=2), axis=1)
    tl.store(flags_ptr + rows, tl.maximum(outside, 2 * repeated), mask=row_ok)


@triton.jit
def _pattern_verdict_kernel(values_ptr, offsets_ptr, rows_total, count, units, verdict_ptr, ROWS: tl.constexpr,
                            BLOCK: tl.constexpr):
    """verdict (int64, two ones) AND= [whether the offsets run from 0 to ``count`` without decreasing,
    whether every row is strictly increasing inside [0, units)], over ROWS rows per program. Positions
    are read between offsets clamped into [0, count], so bad offsets read nothing outside the values."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < rows_total
    start = tl.load(offsets_ptr + rows, mask=row_ok, other=0)
    stop = tl.load(offsets_ptr + rows + 1, mask=row_ok, other=0)
    offsets_ok = tl.min(((start <= stop) | ~row_ok).to(tl.int64), axis=0)
    if tl.program_id(0) == 0:
        ends_ok = (tl.load(offsets_ptr) == 0) & (tl.load(offsets_ptr + rows_total) == count)
        offsets_ok = offsets_ok & ends_ok.to(tl.int64)
    low = tl.minimum(tl.maximum(start, 0), count)
    high = tl.minimum(tl.maximum(stop, low), count)
    bad = tl.zeros((ROWS, BLOCK), tl.int64)
    for first in range(0, tl.max(high - low, axis=0), BLOCK):
        at = low[:, None] + first + tl.arange(0, BLOCK)[None, :]
        inside = at < high[:, None]
        value = tl.load(values_ptr + at, mask=inside, other=0)
        # A row's first position compares with -1, below any position that passes the range test.
        previous = tl.load(values_ptr + at - 1, mask=inside & (at > low[:, None]), other=-1)
        bad = tl.maximum(bad, (inside & ((value < 0) | (value >= units) | (value <= previous))).to(tl.int64))
    tl.atomic_and(verdict_ptr, offsets_ok, sem="relaxed")
    tl.atomic_and(verdict_ptr + 1, 1 - tl.max(tl.max(bad, axis=1), axis=0), sem="relaxed")


# A launch grid's second axis holds at most 2^16 - 1 programs (CUDA's limit): the kernels whose second
# axis runs over a row's words take them in launches of at most that many blocks (one launch unless a
# row passes 8 million words, or 1 million for the sums' 16-word blocks).
GRID_Y_LIMIT = 2**16 - 1


def _word_chunks(words: int, block: int, align: int = 1):
    """(first word, words) of each launch over ``words`` in blocks of ``block`` words; each launch but
    the last covers a multiple of ``align`` words (a multiple of ``block``)."""
    step = max(align, GRID_Y_LIMIT * block // align * align)
    return [(first, min(step, words - first)) for first in range(0, words, step)]


def _grid(rows: int, words: int, block: int) -> tuple[int, int]:
    return rows, cdiv(words, block)


def _tuned(kernel, configs, key):
    """On a GPU, ``kernel`` autotuned over ``configs`` (timed at its first launch per ``key``, the best
    kept; later launches take the kept config through _triton_launch); in the interpreter, where timing
    means nothing, the first config. The tuned kernels are idempotent (an AND written again, bits ORed
    again), so the timing runs change nothing, and every config computes the same result."""
    if _backends.triton_interpreted():
        first = configs[0]

        def launch_first(grid, *args, **kwargs):
            return kernel[grid(first.kwargs)](*args, **kwargs, **first.kwargs, **_backends.TRITON_LAUNCH)
        return launch_first
    tuned = triton.autotune(configs=configs, key=key)(kernel)
    key_positions = [kernel.arg_names.index(name) for name in key]  # (the launchers give them by position)
    chosen = {}  # the chosen config's options by the key it was tuned on: the key arguments, the tensors' dtypes

    def launch_tuned(grid, *args, **kwargs):
        tuning_key = (tuple(args[position] for position in key_positions),
                      tuple(value.dtype for value in args if isinstance(value, torch.Tensor)))
        options = chosen.get(tuning_key)
        if options is None:  # through the autotuner, which times the configs at its first launch per key
            tuned[grid](*args, **kwargs, **_backends.TRITON_LAUNCH)
            # (In a race, another thread's choice: every config computes the same, if maybe slower.)
            chosen[tuning_key] = tuned.best_config.all_kwargs()
            return
        launch(kernel, grid(options), *args, **kwargs, **options, **_backends.TRITON_LAUNCH)
    return launch_tuned


AND_WIDEST = 512
_AND_LAUNCH = _tuned(_and_kernel, [triton.Config({"BLOCK_R": AND_ROWS, "BLOCK_W": words}, num_warps=warps)
                                   for words in (AND_WORDS, 256, AND_WIDEST) for warps in (4, 8)],
                     key=["words_per_row"])
_STORE_LAUNCH = _tuned(_store_kernel, [triton.Config({"BLOCK_X": STORE_X, "BLOCK_Y": STORE_Y}, num_warps=warps)
                                       for warps in (4, 1, 2, 8)], key=["words_per_row"])


# --- launchers: the kernels of ops.py's "triton" backend ------------------------------------------------

# The store's order of work: "pairs" (one program per pair, as given), "rows" (each pair's x ones
# sorted by row first, _store_rows_kernel, so that a row's updates arrive together while its words
# are in L2), or "auto": rows for a matrix of ROW_ORDER_MIN_BYTES or more. H200, 2026-12-05
# (bench_willshaw.py, 2^20 pairs of M = 16 per call): at n = 2^18 (8 GiB), where each of pair order's
# 256 atomic ORs per pair fetches a sector from DRAM, row order stored 130M pairs/s against 60M; at
# n = 2^14 (32 MiB, inside the 60 MB L2) pair order stored 444M/s. Row order was not timed there, so
# the bound sits at a few times the L2, not at a measured crossing (the bench now times both orders
# at both sizes).
STORE_ORDER = "auto"
ROW_ORDER_MIN_BYTES = 256 << 20
STORE_ENTRIES = 16  # x ones (entries) per program in row order


def store_order(matrix) -> str:
    """The order of work ``store`` takes for ``matrix``: STORE_ORDER, "auto" resolved by its size."""
    if STORE_ORDER != "auto":
        return STORE_ORDER
    return "rows" if matrix.numel() * matrix.element_size() >= ROW_ORDER_MIN_BYTES else "pairs"


def store(matrix, n_out, x_values, x_offsets, y_values, y_offsets) -> None:
    pairs = x_offsets.numel() - 1
    if not (pairs and x_values.numel() and y_values.numel()):
        return
    if store_order(matrix) == "rows":
        _store_in_row_order(matrix, x_values, x_offsets, y_values, y_offsets)
        return
    _STORE_LAUNCH(lambda meta: (pairs,), matrix, matrix.shape[1], x_values, x_offsets, y_values, y_offsets)


def _store_in_row_order(matrix, x_values, x_offsets, y_values, y_offsets) -> None:
    entries, pairs = x_values.numel(), x_offsets.numel() - 1
    # int32 keys (units < 2^31) sort in half the radix passes of int64; output_size avoids a wait.
    rows, order = torch.sort(x_values.to(torch.int32))
    pair_of_entry = torch.repeat_interleave(torch.arange(pairs, dtype=torch.int32, device=x_values.device),
                                            x_offsets.diff(), output_size=entries)
    launch(_store_rows_kernel, (cdiv(entries, STORE_ENTRIES),),
        matrix, matrix.shape[1], rows, pair_of_entry[order], entries, y_values, y_offsets,
        BLOCK_E=STORE_ENTRIES, BLOCK_Y=STORE_Y, **_backends.TRITON_LAUNCH)


def sums(matrix, n_out, cue_values, cue_offsets):
    return _sums(matrix, n_out, cue_values, cue_offsets, None)


def _sums(matrix, n_out, cue_values, cue_offsets, at_least):
    rows = cue_offsets.numel() - 1
    out = torch.empty(rows, n_out, dtype=torch.int32 if at_least is None else torch.uint8, device=matrix.device)
    for first, words in _word_chunks(matrix.shape[1], SUMS_WORDS) if rows else []:
        launch(_sums_kernel, _grid(rows, words, SUMS_WORDS),
            matrix, matrix.shape[1], first, n_out, cue_values, cue_offsets, out, 0 if at_least is None else at_least,
            AT_LEAST=at_least is not None, BLOCK_W=SUMS_WORDS, **_backends.TRITON_LAUNCH)
    return out


def _and(matrix, cue_values, cue_offsets):
    """(the AND of each cue's rows as words (rows, words per row), its set bits per ANSWER_GROUP words
    (rows, groups) int32)."""
    rows, words_per_row = cue_offsets.numel() - 1, matrix.shape[1]
    groups = cdiv(words_per_row, ANSWER_GROUP)
    out = torch.empty(rows, words_per_row, dtype=torch.int64, device=matrix.device)
    counts = torch.empty(rows, groups, dtype=torch.int32, device=matrix.device)
    # Launches of whole multiples of the widest block, so that no block of one reaches into the next.
    for first, words in _word_chunks(words_per_row, AND_WORDS, AND_WIDEST) if rows else []:
        _AND_LAUNCH(lambda meta: _grid(rows, words, meta["BLOCK_W"]), matrix, matrix.shape[0], words_per_row, first,
                    cue_values, cue_values.numel(), cue_offsets, out, counts, groups, GROUP=ANSWER_GROUP)
    return out, counts


def _unpack(words, counts, n_out):
    out = torch.empty(words.shape[0], n_out, dtype=torch.uint8, device=words.device)
    for first, count in _word_chunks(words.shape[1], AND_WORDS) if words.shape[0] else []:
        launch(_unpack_kernel, _grid(words.shape[0], count, AND_WORDS), words, counts, counts.shape[1], words.shape[1],
               first, n_out, out, BLOCK_W=AND_WORDS, GROUP=ANSWER_GROUP, **_backends.TRITON_LAUNCH)
    return out.view(torch.bool)


def _extract(words, counts, ends, total):
    values = torch.empty(total, dtype=torch.int64, device=words.device)
    rows, groups = counts.shape
    for first, count in _word_chunks(groups, 1):  # in groups, not words
        launch(_extract_kernel, _grid(rows, count, 1), words, words.shape[1], first, counts, ends, groups, values,
               GROUP=ANSWER_GROUP, **_backends.TRITON_LAUNCH)
    return values


def row_flags(values, offsets, units, longest=None):
    """Per row: 1 for a position outside [0, units), 2 for a position listed twice, else 0 (int32).
    ``longest``: the longest row's length when the caller has it (finding it is a wait on a GPU)."""
    rows = offsets.numel() - 1
    flags = torch.zeros(rows, dtype=torch.int32, device=values.device)
    if not rows:
        return flags
    if (int(offsets.diff().max()) if longest is None else longest) <= CHECK_BLOCK:
        launch(_check_short_rows_kernel, (cdiv(rows, CHECK_ROWS),), values, offsets, rows, units, flags,
               ROWS=CHECK_ROWS, BLOCK=CHECK_BLOCK, num_warps=CHECK_SHORT_WARPS, **_backends.TRITON_LAUNCH)
    else:
        launch(_check_rows_kernel, (rows,), values, offsets, units, flags, BLOCK=CHECK_BLOCK,
               **_backends.TRITON_LAUNCH)
    return flags


def pattern_verdict(values, offsets, units):
    """packed_retrieval.pattern_verdict in one launch (and the ones it starts from): on the device,
    without a wait, int64 [whether the offsets delimit the values, whether every row is strictly
    increasing and inside [0, units)]."""
    verdict = torch.ones(2, dtype=torch.int64, device=values.device)
    rows = offsets.numel() - 1
    launch(_pattern_verdict_kernel, (max(1, cdiv(rows, VERDICT_ROWS)),), values, offsets, rows, values.numel(), units,
           verdict, ROWS=VERDICT_ROWS, BLOCK=VERDICT_BLOCK, **_backends.TRITON_LAUNCH)
    return verdict


def count_ones(matrix) -> int:
    words = matrix.flatten()
    blocks = cdiv(words.numel(), COUNT_WORDS)
    partial = torch.empty(blocks, dtype=torch.int64, device=matrix.device)
    if blocks:
        launch(_count_ones_kernel, (blocks,), words, words.numel(), partial, BLOCK=COUNT_WORDS,
               **_backends.TRITON_LAUNCH)
    return int(partial.sum())


# In the CPU interpreter, where a program per row is slow, the reference's sort checks the rows that are
# not plain (tests/willshaw/test_errors.py runs row_flags itself).
KERNELS = packed_retrieval.RetrievalKernels(and_words=_and, sums=_sums, unpack=_unpack, extract=_extract,
                                            row_flags=None if _backends.triton_interpreted() else row_flags,
                                            verdict=pattern_verdict)

# What ops.py registers (packed_retrieval's driver over this module's kernels).
retrieve, retrieve_indices, check_patterns = KERNELS.retrieve, KERNELS.retrieve_indices, KERNELS.check_patterns
