"""The file format of a saved WillshawMemory: safetensors with one tensor, ``matrix`` (the packed bits),
and metadata: format name, format version, sizes, pairs stored, and a SHA-256 over the sizes and
the matrix bytes.

A save replaces the target atomically (aefast/_files.py), so a crash leaves either the old file or
the new one. A load checks the format, the version, the sizes against the
matrix, and the checksum, and raises :class:`WillshawFileError` on any mismatch.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from aefast._files import atomic_write

FORMAT_NAME = "aefast.willshaw"
FORMAT_VERSION = 1
_FIELDS = ("n_in", "n_out", "n_stored")
# A shard of a ShardedWillshawMemory also records where it belongs: its rank among how many, and its
# slice [unit_start, unit_stop) of the n_out_total output units (n_out is the slice's width).
SHARD_FIELDS = ("shard_rank", "shard_count", "unit_start", "unit_stop", "n_out_total")


class WillshawFileError(ValueError):
    """A file that is not a WillshawMemory this version can read: damaged, truncated, or another format."""


def _fields(sizes: dict) -> tuple[str, ...]:
    return _FIELDS + (SHARD_FIELDS if "shard_rank" in sizes else ())


def checksum(matrix: torch.Tensor, sizes: dict[str, int]) -> str:
    digest = hashlib.sha256(" ".join(f"{field}={sizes[field]}" for field in _fields(sizes)).encode())
    digest.update(memoryview(np.ascontiguousarray(matrix.numpy())))
    return digest.hexdigest()


def write(path: str | os.PathLike, matrix: torch.Tensor, n_in: int, n_out: int, n_stored: int,
          shard: dict[str, int] | None = None) -> None:
    matrix = matrix.detach().cpu().contiguous()
    sizes = {"n_in": n_in, "n_out": n_out, "n_stored": n_stored, **(shard or {})}
    metadata = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), **{k: str(v) for k, v in sizes.items()},
                "sha256": checksum(matrix, sizes)}
    atomic_write(path, lambda temporary: save_file({"matrix": matrix}, temporary, metadata=metadata))


def read(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, int]]:
    """The matrix (on the CPU) and the sizes of a saved memory (with the shard fields for a shard)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Willshaw memory file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            _check_metadata(path, metadata)
            if list(handle.keys()) != ["matrix"]:
                raise WillshawFileError(f"{path}: expected one tensor 'matrix', found {list(handle.keys())}")
            matrix = handle.get_tensor("matrix")
    except SafetensorError as error:
        raise WillshawFileError(f"{path} is not a readable safetensors file (truncated or damaged?): {error}") from None
    sizes = {field: int(metadata[field]) for field in _fields(metadata)}
    words = (sizes["n_out"] + 63) // 64
    if matrix.dtype != torch.int64 or tuple(matrix.shape) != (sizes["n_in"], words):
        raise WillshawFileError(f"{path}: the matrix is {tuple(matrix.shape)} {matrix.dtype}, but the sizes say "
                                f"({sizes['n_in']}, {words}) int64")
    if checksum(matrix, sizes) != metadata["sha256"]:
        raise WillshawFileError(f"{path}: checksum mismatch, the stored bits or sizes are damaged")
    return matrix, sizes


def _check_metadata(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FORMAT_NAME:
        raise WillshawFileError(f"{path} is not a saved WillshawMemory (format {metadata.get('format')!r})")
    if metadata.get("version") != str(FORMAT_VERSION):
        raise WillshawFileError(f"{path} has format version {metadata.get('version')!r}; this aefast reads "
                                f"version {FORMAT_VERSION}")
    for field in _fields(metadata):
        value = metadata.get(field, "")
        if not value.isdigit():
            raise WillshawFileError(f"{path}: metadata field {field!r} must be a non-negative integer, got {value!r}")
    if "sha256" not in metadata:
        raise WillshawFileError(f"{path}: the checksum is missing")
