"""The Willshaw memory in plain PyTorch: the oracle of the tests and the fallback on devices without a
kernel. It works on the same packed matrix as the kernels (csrc/willshaw/willshaw.h): int64 words,
one bit-row of the n_out output units per input unit, bits past n_out zero.

Patterns arrive as rows of active positions: ``values[offsets[b]:offsets[b + 1]]`` is row b.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Pairs (or cues) expanded to dense 0/1 rows at a time: bounds the reference's memory.
CHUNK_ROWS = 1024

HARD, SOFT, FIXED, TOPK = 0, 1, 2, 3  # threshold codes shared with the C++ kernels
# Units per side at most: sums are int32, and the C++ store keeps the answers' units in 32 bits.
MAX_UNITS = 2**31 - 1


def words_per_row(n_out: int) -> int:
    return (n_out + 63) // 64


def has_bits_past(matrix: Tensor, n_out: int) -> bool:
    """Whether a packed (rows, ceil(n_out / 64)) matrix sets a bit past unit n_out - 1, in its last word's
    padding. No store sets one; kernels that read whole words would answer with such units."""
    used = n_out % 64
    if used == 0 or matrix.numel() == 0:
        return False
    return bool((matrix[:, -1] & ~((1 << used) - 1)).any())


def unpack(words: Tensor, n: int) -> Tensor:
    """(..., W) int64 words -> (..., n) bool: bit i of word w is unit 64 w + i."""
    shifts = torch.arange(64, device=words.device)
    return ((words.unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., :n].bool()


def pack(bits: Tensor) -> Tensor:
    """(..., n) bool -> (..., ceil(n / 64)) int64. Bit 63 weighs -2^63, so the sum is the word exactly."""
    n = bits.shape[-1]
    padded = torch.nn.functional.pad(bits.long(), (0, words_per_row(n) * 64 - n))
    shifts = torch.arange(64, device=bits.device)
    return (padded.unflatten(-1, (-1, 64)) << shifts).sum(-1)


def row_ids(offsets: Tensor) -> Tensor:
    """The row of each value."""
    counts = offsets.diff()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=offsets.device), counts)


def dense(values: Tensor, offsets: Tensor, n: int) -> Tensor:
    """Rows of active positions -> (rows, n) bool."""
    out = torch.zeros(offsets.numel() - 1, n, dtype=torch.bool, device=values.device)
    out[row_ids(offsets), values] = True
    return out


def dense_to_rows(dense: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, n) bool -> the active positions of each row: (values, offsets)."""
    positions = dense.nonzero()
    counts = torch.bincount(positions[:, 0], minlength=dense.shape[0])
    return positions[:, 1].clone(memory_format=torch.contiguous_format), torch.nn.functional.pad(counts.cumsum(0), (1, 0))


def offsets_delimit(values: Tensor, offsets: Tensor) -> Tensor:
    """Whether ``offsets`` run from 0 to the number of values without decreasing, as a bool tensor on
    their device (one test, so one wait on a GPU when it is read)."""
    return (offsets[0] == 0) & (offsets[-1] == values.numel()) & (offsets.diff() >= 0).all()


def check_offsets(values: Tensor, offsets: Tensor, name: str) -> None:
    """ValueError naming ``name`` for offsets that do not delimit ``values``."""
    if not bool(offsets_delimit(values, offsets)):
        raise ValueError(f"{name}: offsets must run from 0 to the number of values ({values.numel()}) "
                         "and must not decrease")


def check_patterns(values: Tensor, offsets: Tensor, units: int, name: str) -> None:
    """ValueError naming ``name`` for offsets that do not delimit ``values``, an index outside [0, units),
    or an index listed twice in one row."""
    check_offsets(values, offsets, name)
    if values.numel() == 0:
        return
    rows = row_ids(offsets)
    bad = (values < 0) | (values >= units)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}: row {int(rows[first])}: index {int(values[first])} is outside [0, {units})")
    keys, _ = torch.sort(rows * units + values)
    repeated = (keys[1:] == keys[:-1]).nonzero()
    if repeated.numel():
        key = int(keys[int(repeated[0, 0])])
        raise ValueError(f"{name}: row {key // units} lists index {key % units} more than once")


def store(matrix: Tensor, n_out: int, x_values: Tensor, x_offsets: Tensor, y_values: Tensor, y_offsets: Tensor) -> None:
    """The binary Hebb rule, w_ij = 1 where y_i x_j = 1: row j of the matrix ORs every y whose x has j."""
    n_in = matrix.shape[0]
    x_all, y_all = dense(x_values, x_offsets, n_in), dense(y_values, y_offsets, n_out)
    touched = x_all.any(0).nonzero().flatten()
    new_rows = []
    for start in range(0, touched.numel(), CHUNK_ROWS):
        rows = touched[start:start + CHUNK_ROWS]
        hits = x_all[:, rows].T.float() @ y_all.float()  # pairs that set each bit (exact: >0 when any)
        new_rows.append(pack(unpack(matrix[rows], n_out) | (hits > 0)))
    if new_rows:  # written once at the end, so a failure before leaves the matrix unchanged
        matrix[touched] = torch.cat(new_rows)


def sums(matrix: Tensor, n_out: int, cue_values: Tensor, cue_offsets: Tensor) -> Tensor:
    """(rows, n_out) int32 dendritic sums: sum over the cue's ones j of w_ij."""
    rows = cue_offsets.numel() - 1
    out = torch.zeros(rows, n_out, dtype=torch.int32, device=matrix.device)
    ids = row_ids(cue_offsets)
    for start in range(0, cue_values.numel(), CHUNK_ROWS):
        chunk = slice(start, start + CHUNK_ROWS)
        out.index_add_(0, ids[chunk], unpack(matrix[cue_values[chunk]], n_out).int())
    return out


def threshold(unit_sums: Tensor, cue_ones: Tensor, mode: int, value: int) -> Tensor:
    """(rows, n_out) bool: the units whose sum reaches the threshold ``mode`` sets (see WillshawMemory.retrieve)."""
    if mode == HARD:
        return (unit_sums >= cue_ones.unsqueeze(1)) & (cue_ones > 0).unsqueeze(1)
    if mode == SOFT:
        best = unit_sums.max(1, keepdim=True).values
        return (unit_sums >= best) & (best > 0)
    if mode == FIXED:
        if value > torch.iinfo(unit_sums.dtype).max:  # no sum reaches it (torch would wrap the scalar)
            return torch.zeros_like(unit_sums, dtype=torch.bool)
        return unit_sums >= value
    if mode == TOPK:
        order = torch.sort(unit_sums, dim=1, descending=True, stable=True).indices[:, :value]
        return torch.zeros_like(unit_sums, dtype=torch.bool).scatter_(1, order, True)
    raise ValueError(f"threshold must be 0 (hard), 1 (soft), 2 (fixed) or 3 (topk), got {mode}")


def retrieve(matrix: Tensor, n_out: int, cue_values: Tensor, cue_offsets: Tensor, mode: int, value: int) -> Tensor:
    return threshold(sums(matrix, n_out, cue_values, cue_offsets), cue_offsets.diff(), mode, value)


def retrieve_indices(matrix, n_out, cue_values, cue_offsets, mode, value) -> tuple[Tensor, Tensor]:
    answer = retrieve(matrix, n_out, cue_values, cue_offsets, mode, value)
    offsets = torch.nn.functional.pad(answer.sum(1).cumsum(0), (1, 0))
    return answer.nonzero()[:, 1].clone(memory_format=torch.contiguous_format), offsets


def count_ones(matrix: Tensor) -> int:
    """Set bits of the matrix, unpacked 2^16 words (a 32 MiB temporary) at a time."""
    flat, chunk = matrix.flatten(), 1 << 16
    return sum(int(unpack(flat[start:start + chunk], 64 * flat[start:start + chunk].numel()).sum())
               for start in range(0, flat.numel(), chunk))
