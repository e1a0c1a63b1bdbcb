"""What users pass as patterns, turned into what the kernels take: rows of active positions.

Dense patterns are 0/1 tensors of shape (B, n), or (n,) for one pattern, in any real dtype (bool,
integer or floating: any value other than 0 and 1 is refused, NaN included). Index patterns are
(B, M) or (M,) integer tensors, or a list of 1-D tensors (or lists of ints) when rows have different
numbers of ones. Values of index patterns are checked by the backend's
``check_patterns`` kernel (range and repeats), in one pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from aefast._checks import is_int, positive_int
from aefast.willshaw import ops

IndexPatterns = Union[Tensor, Sequence[Union[Tensor, Sequence[int]]]]


@dataclass(frozen=True)
class PatternRows:
    """Row b's active positions are ``values[offsets[b]:offsets[b + 1]]``; ``single`` when the user
    passed one pattern without a batch dimension (the answer drops it too)."""
    values: Tensor
    offsets: Tensor
    single: bool

    @property
    def rows(self) -> int:
        return self.offsets.numel() - 1


def _offsets_from_counts(counts: Tensor) -> Tensor:
    return torch.nn.functional.pad(counts.to(torch.int64).cumsum(0), (1, 0))


def from_dense(x, width: int, name: str, device: torch.device, where: str = "the memory's device") -> PatternRows:
    """``where`` names ``device`` in the refusal of a tensor elsewhere."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of 0/1 values, got {type(x).__name__}")
    if x.dtype.is_complex:
        raise TypeError(f"{name} must be a real tensor of 0/1 values, got {x.dtype}")
    if x.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape (B, {width}) or ({width},), got {tuple(x.shape)}")
    if x.shape[-1] != width:
        raise ValueError(f"{name} must have {width} columns, got shape {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} must be on {where} {device}, got {x.device}")
    single = x.dim() == 1
    x = x.reshape(-1, width)
    if x.dtype != torch.bool:
        outside = (x != 0) & (x != 1)
        if outside.any():
            raise ValueError(f"{name} must hold only 0 and 1, found {x[outside][0].item()}")
        x = x != 0
    values, offsets = ops.dense_to_rows(x.contiguous())
    return PatternRows(values, offsets, single)


def from_indices(x_idx: IndexPatterns, name: str, device: torch.device,
                 where: str = "the memory's device") -> PatternRows:
    """``where`` names ``device`` in the refusal of a tensor elsewhere."""
    if isinstance(x_idx, Tensor):
        _check_index_tensor(x_idx, name, (1, 2))
        if x_idx.device != device:
            raise ValueError(f"{name} must be on {where} {device}, got {x_idx.device}")
        single = x_idx.dim() == 1
        rows = x_idx.unsqueeze(0) if single else x_idx
        counts = torch.full((rows.shape[0],), rows.shape[1], dtype=torch.int64, device=device)
        return PatternRows(rows.to(torch.int64).flatten().contiguous(), _offsets_from_counts(counts), single)
    if isinstance(x_idx, (list, tuple)):
        rows = []
        for b, row in enumerate(x_idx):
            if not isinstance(row, Tensor):
                if not isinstance(row, (list, tuple)):
                    raise TypeError(f"{name}[{b}] must be a 1-D integer tensor or a list of ints, "
                                    f"got {type(row).__name__}")
                row = _index_row(row, f"{name}[{b}]", device)
            _check_index_tensor(row, f"{name}[{b}]", (1,))
            if row.device != device:
                raise ValueError(f"{name}[{b}] must be on {where} {device}, got {row.device}")
            rows.append(row.to(torch.int64))
        counts = torch.tensor([row.numel() for row in rows], dtype=torch.int64, device=device)
        values = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64, device=device)
        return PatternRows(values.contiguous(), _offsets_from_counts(counts), False)
    raise TypeError(f"{name} must be an integer tensor (B, M) or a list of 1-D integer tensors, "
                    f"got {type(x_idx).__name__}")


def _index_row(row: Sequence[int], name: str, device: torch.device) -> Tensor:
    """A list of ints as a 1-D tensor in the dtype torch infers (so a row with 1.5 in it is float and
    refused by the check after, not cut to 1)."""
    if not row:
        return torch.zeros(0, dtype=torch.int64, device=device)
    try:
        return torch.tensor(row, device=device)
    except (RuntimeError, TypeError, ValueError) as error:  # None, a string, an int past int64
        raise ValueError(f"{name} must be a list of ints that fit int64, got {row!r}") from error


def _check_index_tensor(tensor: Tensor, name: str, dims: tuple[int, ...]) -> None:
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer indices, got {tensor.dtype}")
    if tensor.dim() not in dims:
        raise ValueError(f"{name} must be {' or '.join(f'{d}-D' for d in dims)}, got shape {tuple(tensor.shape)}")


def random_patterns(count: int, n: int, ones: int, *, generator: torch.Generator | None = None,
                    device: str | torch.device = "cpu") -> Tensor:
    """(count, ones) int64: ``ones`` distinct positions in [0, n) per row, uniformly at random, sorted.
    Rows drawn with a repeat are drawn again (rare for sparse patterns, so this costs one pass)."""
    if not is_int(count) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    n = positive_int(n, "n")
    if not is_int(ones) or not 0 <= ones <= n:
        raise ValueError(f"ones must be an int in [0, n={n}], got {ones!r}")
    count, ones = int(count), int(ones)
    if 2 * ones > n:  # dense patterns: a random permutation per row is cheaper than redrawing
        keys = torch.rand(count, n, generator=generator, device=device)
        return _sorted_rows(keys.topk(ones, dim=1).indices)
    patterns = _sorted_rows(torch.randint(0, n, (count, ones), generator=generator, device=device))
    while True:
        repeated = (patterns[:, 1:] == patterns[:, :-1]).any(1).nonzero().flatten()
        if repeated.numel() == 0:
            return patterns
        redrawn = torch.randint(0, n, (repeated.numel(), ones), generator=generator, device=device)
        patterns[repeated] = _sorted_rows(redrawn)


def _sorted_rows(rows: Tensor) -> Tensor:
    """Each row sorted. On the CPU by NumPy: torch.sort along rows of 14 took 3.5x as long (2M rows: 229
    ms against 65), a third of a capacity experiment's time at n = 2^16; the same values either way."""
    if rows.device.type == "cpu":
        return torch.from_numpy(np.sort(rows.numpy(), axis=1))
    return rows.sort(1).values
