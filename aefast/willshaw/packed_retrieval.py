"""The steps of a GPU retrieval that do not depend on which kernels run them: the triton and cuda
backends each supply their kernels (a :class:`RetrievalKernels`) and share these drivers.

- hard and soft thresholds: the AND of the cue's rows (the fewest bytes a retrieval can read) with its
  set bits counted per ANSWER_GROUP words; a cue whose AND is empty though it has ones (no unit reached
  all of them) takes the soft threshold of its sums, as few cues do at or below capacity.
- fixed threshold: the sums compared with T in the kernel; top-k: the sums, then the reference.
- host waits: a wait for the GPU idles it while Python launches the next kernel, which at 4096 cues
  cost more than the AND itself (2.1 ms of wall time for 0.8 ms of GPU time, 14 waits, on the H200).
  retrieve_indices waits once: the cue check's verdict comes back with the answer's size. The AND
  kernels clamp offsets and skip rows outside the matrix, so a bad cue reads nothing outside its
  tensors before the verdict.

Plain PyTorch: it imports neither triton nor the compiled module.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from aefast.willshaw import ops, reference

# Words per count of the answer's ones: the extraction's unit of work (a group without ones costs one
# load of its count). Both backends' AND kernels count in groups of this many words (the CUDA kernels'
# kAnswerGroupWords, tests/willshaw/test_cuda_entry_points.py holds them equal).
ANSWER_GROUP = 128
# Rows longer than this are checked by the reference's sort rather than a pairwise kernel.
CHECK_LONGEST = 256


@dataclasses.dataclass(frozen=True)
class RetrievalKernels:
    """A backend's kernels, each on CUDA tensors (or CPU tensors in Triton's interpreter).

    and_words(matrix, cue_values, cue_offsets) -> (words, counts): the AND of each cue's rows,
        (cues, words per row) int64, 0 for an empty cue; its set bits per ANSWER_GROUP words,
        (cues, groups) int32. A group whose count is 0 may be left unwritten: every reader takes the
        counts first.
    sums(matrix, n_out, cue_values, cue_offsets, at_least) -> (cues, n_out) int32 sums, or with
        ``at_least`` an int, uint8 sum >= at_least.
    unpack(words, counts, n_out) -> (rows, n_out) bool, False in the groups whose count is 0.
    extract(words, counts, ends, total) -> int64 positions of the set bits, group by group, at
        ends[cue, group] - counts[cue, group] (ends: inclusive cumulative counts over (cue, group)).
    row_flags(values, offsets, units, longest) -> int32 per row: 1 for a position outside [0, units),
        2 for one listed twice, else 0; None where the backend has no such kernel (the reference's sort
        checks the rows instead).
    verdict(values, offsets, units) -> pattern_verdict's tensor in fewer launches; None: its torch ops.
    """
    and_words: Callable
    sums: Callable
    unpack: Callable
    extract: Callable
    row_flags: Callable | None = None
    verdict: Callable | None = None

    # The backend's entry points, as ops.py registers them.

    def retrieve(self, matrix, n_out, cue_values, cue_offsets, threshold, value):
        """The (rows, n_out) bool answers of cues already checked (ops.py registers it behind the check)."""
        if threshold in (reference.HARD, reference.SOFT):
            words, counts = self.and_words(matrix, cue_values, cue_offsets)
            if threshold == reference.SOFT:
                below = soft_fallback_flags(counts, cue_offsets).nonzero().flatten()
                if below.numel():
                    self._apply_soft_fallback(matrix, n_out, cue_values, cue_offsets, below, words, counts)
            return self.unpack(words, counts, n_out)
        if threshold == reference.FIXED:
            return self.sums(matrix, n_out, cue_values, cue_offsets, value).view(torch.bool)
        unit_sums = self.sums(matrix, n_out, cue_values, cue_offsets, None)
        return reference.threshold(unit_sums, cue_offsets.diff(), reference.TOPK, value)

    def retrieve_indices(self, matrix, n_out, cue_values, cue_offsets, threshold, value):
        """The answers as (values, offsets). Checks the cue itself (ops.py registers it unchecked; errors
        name it by ops.pattern_name): for the hard and soft thresholds the check's verdict comes back
        with the answer's size, in one wait."""
        name = ops.pattern_name("cue")
        if threshold not in (reference.HARD, reference.SOFT):
            self.check_patterns(cue_values, cue_offsets, matrix.shape[0], name)
            return reference.dense_to_rows(self.retrieve(matrix, n_out, cue_values, cue_offsets, threshold, value))
        # Straight from the packed answer: a sparse answer touches few words, and reading the words is 8x
        # less than reading the answer unpacked to one byte per unit.
        words, counts = self.and_words(matrix, cue_values, cue_offsets)
        ends = counts.flatten().cumsum(0)
        summary = [self._verdict(cue_values, cue_offsets, matrix.shape[0]), ends[-1:].sum().view(1)]
        if threshold == reference.SOFT:
            below_flags = soft_fallback_flags(counts, cue_offsets)
            summary.append(below_flags.sum().view(1))
        # Queued before the wait, so that the GPU makes them while it still runs the AND: after the wait
        # it idles through each launch the host makes, and only the extraction is left for then.
        offsets = answer_offsets(ends, counts.shape)
        offsets_ok, rows_plain, total, *below_count = torch.cat(summary).tolist()  # the one wait
        self._raise_for_verdict(offsets_ok, rows_plain, cue_values, cue_offsets, matrix.shape[0], name)
        if below_count and below_count[0]:  # rare at or below capacity: a second wait
            self._apply_soft_fallback(matrix, n_out, cue_values, cue_offsets, below_flags.nonzero().flatten(),
                                      words, counts)
            ends = counts.flatten().cumsum(0)
            offsets = answer_offsets(ends, counts.shape)
            total = int(ends[-1])
        values = self.extract(words, counts, ends, total) if total else \
            torch.empty(0, dtype=torch.int64, device=matrix.device)
        return values, offsets

    def check_patterns(self, values, offsets, units, name) -> None:
        """reference.check_patterns without its sort, in one wait; a bad row is reported by the
        reference's message."""
        offsets_ok, rows_plain = self._verdict(values, offsets, units).tolist()
        self._raise_for_verdict(offsets_ok, rows_plain, values, offsets, units, name)

    def _verdict(self, values, offsets, units):
        return (self.verdict or pattern_verdict)(values, offsets, units)

    def _apply_soft_fallback(self, matrix, n_out, cue_values, cue_offsets, below, words, counts):
        """Rewrites the answer words and counts of the cues ``below`` with the soft threshold of their sums."""
        values, offsets = select_rows(cue_values, cue_offsets, below)
        answer = reference.threshold(self.sums(matrix, n_out, values, offsets, None), offsets.diff(), reference.SOFT, 0)
        words[below] = reference.pack(answer)
        padded = torch.nn.functional.pad(answer, (0, counts.shape[1] * ANSWER_GROUP * 64 - n_out))
        counts[below] = padded.view(below.numel(), counts.shape[1], -1).sum(2, dtype=torch.int32)

    def _raise_for_verdict(self, offsets_ok, rows_plain, values, offsets, units, name) -> None:
        """The reference's error for what pattern_verdict found; rows that are not plain (unsorted, or
        bad) are checked in full."""
        if not offsets_ok:
            reference.check_offsets(values, offsets, name)
            raise AssertionError("the offsets verdict disagrees with reference.check_offsets")  # a bug here
        if rows_plain or offsets.numel() == 1 or values.numel() == 0:
            return
        # Pairwise comparisons grow with the square of a row's length: long rows are sorted instead.
        longest = int(offsets.diff().max())
        if self.row_flags is None or longest > CHECK_LONGEST:
            return reference.check_patterns(values, offsets, units, name)
        if bool(self.row_flags(values, offsets, units, longest).any()):
            reference.check_patterns(values, offsets, units, name)
            raise AssertionError("the pattern check's kernel flagged a row the reference accepts")  # a kernel bug


def answer_offsets(ends, shape):
    """The answers' offsets, (cues + 1) int64: 0, then each cue's inclusive count of ones (``ends``, the
    cumulative counts over (cue, group), at the cue's last group)."""
    rows, groups = shape
    offsets = torch.zeros(rows + 1, dtype=torch.int64, device=ends.device)
    if rows:
        offsets[1:] = ends.view(rows, groups)[:, -1]
    return offsets


def soft_fallback_flags(counts, cue_offsets):
    """Per cue, whether its AND is empty though it has ones: the soft threshold takes its largest sum."""
    return (counts.sum(1) == 0) & (cue_offsets.diff() > 0)


def pattern_verdict(values, offsets, units):
    """On the device, without a wait: int64 [whether the offsets delimit the values, whether every row is
    strictly increasing and inside [0, units)]. The second rules out repeats without comparing positions
    pairwise, and holds in the usual case (random_patterns' rows are sorted)."""
    count = values.numel()
    row_start = torch.zeros(count + 1, dtype=torch.bool, device=values.device)
    row_start.index_fill_(0, offsets[:-1].clamp(0, count), True)  # clamped: bad offsets must not index past
    increasing = (values[1:] > values[:-1]) | row_start[1:count]
    plain = increasing.all() & (values >= 0).all() & (values < units).all()
    return torch.stack([reference.offsets_delimit(values, offsets), plain]).long()


def select_rows(values, offsets, rows):
    """The pattern rows ``rows`` of (values, offsets), as a new (values, offsets)."""
    counts = offsets.diff()[rows]
    new_offsets = torch.nn.functional.pad(counts.cumsum(0), (1, 0))
    within = torch.arange(int(new_offsets[-1]), device=values.device) - torch.repeat_interleave(new_offsets[:-1], counts)
    return values[torch.repeat_interleave(offsets[rows], counts) + within], new_offsets
