"""Launchers of the Willshaw memory's CUDA kernels (csrc/willshaw/willshaw_cuda.cu): the kernels of
ops.py's "cuda" backend. The same work as triton_kernels.py, written in CUDA to be timed against it
(bench_willshaw.py's "aefast cuda" rows); the retrieval's driver is shared (packed_retrieval.py).

The pattern check is packed_retrieval's verdict (one wait); rows that are not sorted and inside the
matrix are checked by the reference's sort, there being no pairwise CUDA kernel for that rare case.
"""
from __future__ import annotations

import torch

from aefast import _backends
from aefast._buffers import current_stream, device_pointer
from aefast.willshaw import packed_retrieval


def store(matrix, n_out, x_values, x_offsets, y_values, y_offsets) -> None:
    with torch.cuda.device(matrix.device):
        _backends.compiled_module().willshaw_store_cuda(
            device_pointer(matrix), matrix.shape[0], n_out, device_pointer(x_values), x_values.numel(),
            device_pointer(x_offsets), device_pointer(y_values), y_values.numel(), device_pointer(y_offsets),
            x_offsets.numel() - 1, current_stream(matrix.device))


def sums(matrix, n_out, cue_values, cue_offsets):
    return _sums(matrix, n_out, cue_values, cue_offsets, None)


def _sums(matrix, n_out, cue_values, cue_offsets, at_least):
    cues = cue_offsets.numel() - 1
    out = torch.empty(cues, n_out, dtype=torch.int32 if at_least is None else torch.uint8, device=matrix.device)
    with torch.cuda.device(matrix.device):
        _backends.compiled_module().willshaw_sums_cuda(
            device_pointer(matrix), matrix.shape[0], n_out, device_pointer(cue_values), cue_values.numel(),
            device_pointer(cue_offsets), cues, device_pointer(out),
            -1 if at_least is None else min(at_least, matrix.shape[0] + 1),  # any T past n_in: all False
            current_stream(matrix.device))
    return out


def _and(matrix, cue_values, cue_offsets):
    cues, words_per_row = cue_offsets.numel() - 1, matrix.shape[1]
    groups = -(-words_per_row // packed_retrieval.ANSWER_GROUP)
    words = torch.empty(cues, words_per_row, dtype=torch.int64, device=matrix.device)
    counts = torch.empty(cues, groups, dtype=torch.int32, device=matrix.device)
    with torch.cuda.device(matrix.device):
        _backends.compiled_module().willshaw_and_cuda(
            device_pointer(matrix), matrix.shape[0], words_per_row, device_pointer(cue_values),
            cue_values.numel(), device_pointer(cue_offsets), cues, device_pointer(words), device_pointer(counts),
            current_stream(matrix.device))
    return words, counts


def _unpack(words, n_out):
    out = torch.empty(words.shape[0], n_out, dtype=torch.uint8, device=words.device)
    with torch.cuda.device(words.device):
        _backends.compiled_module().willshaw_unpack_cuda(
            device_pointer(words), words.shape[0], n_out, device_pointer(out), current_stream(words.device))
    return out.view(torch.bool)


def _extract(words, counts, ends, total):
    values = torch.empty(total, dtype=torch.int64, device=words.device)
    with torch.cuda.device(words.device):
        _backends.compiled_module().willshaw_extract_cuda(
            device_pointer(words), words.shape[0], words.shape[1], device_pointer(counts), device_pointer(ends),
            device_pointer(values), total, current_stream(words.device))
    return values


def count_ones(matrix) -> int:
    total = torch.zeros(1, dtype=torch.int64, device=matrix.device)
    with torch.cuda.device(matrix.device):
        _backends.compiled_module().willshaw_count_ones_cuda(
            device_pointer(matrix), matrix.numel(), device_pointer(total), current_stream(matrix.device))
    return int(total)


KERNELS = packed_retrieval.RetrievalKernels(and_words=_and, sums=_sums, unpack=_unpack, extract=_extract)

# What ops.py registers (packed_retrieval's driver over this module's kernels).
retrieve, retrieve_indices, check_patterns = KERNELS.retrieve, KERNELS.retrieve_indices, KERNELS.check_patterns
