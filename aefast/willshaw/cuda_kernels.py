"""Launchers of the Willshaw memory's CUDA kernels (csrc/willshaw/willshaw_cuda.cu): the kernels of
ops.py's "cuda" backend. The same work as triton_kernels.py, written in CUDA to be timed against it
(bench_willshaw.py's "aefast cuda" rows); the retrieval's driver is shared (packed_retrieval.py).

The pattern check is packed_retrieval's verdict (one wait), by Triton's kernel where triton runs
(one launch, where torch's ops take fifteen); rows that are not sorted and inside the matrix are checked
by the reference's sort, there being no pairwise CUDA kernel for that rare case.
"""
from __future__ import annotations

import functools

import torch

from aefast import _backends
from aefast._buffers import current_stream, device_pointer
from aefast.willshaw import packed_retrieval


def _launch(entry_point: str, device: torch.device, *arguments) -> None:
    """aefast._C.willshaw_<entry_point>_cuda(*arguments, stream) on ``device``'s current stream."""
    with torch.cuda.device(device):
        getattr(_backends.compiled_module(), f"willshaw_{entry_point}_cuda")(*arguments, current_stream(device))


def store(matrix, n_out, x_values, x_offsets, y_values, y_offsets) -> None:
    _launch("store", matrix.device, device_pointer(matrix), matrix.shape[0], n_out, device_pointer(x_values),
            x_values.numel(), device_pointer(x_offsets), device_pointer(y_values), y_values.numel(),
            device_pointer(y_offsets), x_offsets.numel() - 1)


def sums(matrix, n_out, cue_values, cue_offsets):
    return _sums(matrix, n_out, cue_values, cue_offsets, None)


def _sums(matrix, n_out, cue_values, cue_offsets, at_least):
    cues = cue_offsets.numel() - 1
    out = torch.empty(cues, n_out, dtype=torch.int32 if at_least is None else torch.uint8, device=matrix.device)
    _launch("sums", matrix.device, device_pointer(matrix), matrix.shape[0], n_out, device_pointer(cue_values),
            cue_values.numel(), device_pointer(cue_offsets), cues, device_pointer(out),
            -1 if at_least is None else min(at_least, matrix.shape[0] + 1))  # any T past n_in: all False
    return out


def _and(matrix, cue_values, cue_offsets):
    cues, words_per_row = cue_offsets.numel() - 1, matrix.shape[1]
    groups = -(-words_per_row // packed_retrieval.ANSWER_GROUP)
    words = torch.empty(cues, words_per_row, dtype=torch.int64, device=matrix.device)
    counts = torch.empty(cues, groups, dtype=torch.int32, device=matrix.device)
    _launch("and", matrix.device, device_pointer(matrix), matrix.shape[0], words_per_row,
            device_pointer(cue_values), cue_values.numel(), device_pointer(cue_offsets), cues,
            device_pointer(words), device_pointer(counts))
    return words, counts


def _unpack(words, counts, n_out):
    out = torch.empty(words.shape[0], n_out, dtype=torch.uint8, device=words.device)
    _launch("unpack", words.device, device_pointer(words), device_pointer(counts), words.shape[0], n_out,
            device_pointer(out))
    return out.view(torch.bool)


def _extract(words, counts, ends, total):
    values = torch.empty(total, dtype=torch.int64, device=words.device)
    _launch("extract", words.device, device_pointer(words), words.shape[0], words.shape[1], device_pointer(counts),
            device_pointer(ends), device_pointer(values), total)
    return values


def count_ones(matrix) -> int:
    total = torch.zeros(1, dtype=torch.int64, device=matrix.device)
    _launch("count_ones", matrix.device, device_pointer(matrix), matrix.numel(), device_pointer(total))
    return int(total)


@functools.lru_cache(maxsize=None)
def _triton_verdict():
    """triton_kernels.pattern_verdict where triton runs on CUDA tensors, else None (torch's ops)."""
    if _backends.can_run("triton", torch.device("cuda")) is not True:
        return None
    from aefast.willshaw import triton_kernels
    return triton_kernels.pattern_verdict


def _verdict(values, offsets, units):
    return (_triton_verdict() or packed_retrieval.pattern_verdict)(values, offsets, units)


KERNELS = packed_retrieval.RetrievalKernels(and_words=_and, sums=_sums, unpack=_unpack, extract=_extract,
                                            verdict=_verdict)

# What ops.py registers (packed_retrieval's driver over this module's kernels).
retrieve, retrieve_indices, check_patterns = KERNELS.retrieve, KERNELS.retrieve_indices, KERNELS.check_patterns
