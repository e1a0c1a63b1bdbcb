"""The file format of a saved WillshawMemory: safetensors with one tensor, ``matrix`` (the packed bits),
and metadata: format name, format version, sizes, pairs stored, and a SHA-256 over the sizes and
the matrix bytes.

A save replaces the target atomically (aefast/_files.py), so a crash leaves either the old file or
the new one. A load checks the format, the version, the sizes against the
matrix, and the checksum, and raises :class:`WillshawFileError` on any mismatch.

Both stream the matrix in blocks of BLOCK_BYTES, so host memory stays bounded at any size: the seeds'
n = 10^6 memory is 116 GiB on a GPU whose host has 128 GiB, and safetensors' own writer takes whole
tensors on the host, so a GPU memory needed a whole host copy to be saved (older safetensors copy
CPU tensors too, when writing and reading). Files are read with safetensors' reader, a slice of rows
at a time; they are written here, in its layout (an 8-byte header length, the JSON header padded to
8 bytes, the little-endian bytes), and the tests read them back with safetensors.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from aefast._files import atomic_write
from aefast.willshaw import reference

FORMAT_NAME = "aefast.willshaw"
FORMAT_VERSION = 1
_FIELDS = ("n_in", "n_out", "n_stored")
# A shard of a ShardedWillshawMemory also records where it belongs: its rank among how many, and its
# slice [unit_start, unit_stop) of the n_out_total output units (n_out is the slice's width).
SHARD_FIELDS = ("shard_rank", "shard_count", "unit_start", "unit_stop", "n_out_total")
# And which save wrote it: one number drawn per save and shared by its shards, so that shards of two
# saves (a save that failed on some ranks leaves the others' new shards beside old ones) are not
# loaded as one memory. Shards written before it existed lack it and load as before.
SAVE_FIELD = "save_id"
# Matrix bytes per step of a save or load. A block is hashed, then written while still in cache: saving
# 1 GiB took 1.4-1.9 s in blocks of 8 MiB (as safetensors' whole-tensor writer), 2.3-4.6 s in 64 MiB.
BLOCK_BYTES = 1 << 23


class WillshawFileError(ValueError):
    """A file that is not a WillshawMemory this version can read: damaged, truncated, or another format."""


def _fields(sizes: dict) -> tuple[str, ...]:
    shard = "shard_rank" in sizes
    return _FIELDS + (SHARD_FIELDS if shard else ()) + ((SAVE_FIELD,) if shard and SAVE_FIELD in sizes else ())


def _sizes_digest(sizes: dict[str, int]):
    """The checksum's SHA-256 after the sizes; the matrix bytes follow."""
    return hashlib.sha256(" ".join(f"{field}={sizes[field]}" for field in _fields(sizes)).encode())


def _row_blocks(rows: int, words: int) -> Iterator[tuple[int, int]]:
    step = max(1, BLOCK_BYTES // (8 * words))
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def _bytes_of(block: torch.Tensor) -> memoryview:
    return memoryview(np.ascontiguousarray(block.numpy())).cast("B")


def _header(metadata: dict[str, str], rows: int, words: int) -> bytes:
    """safetensors' header: its length (8 bytes, little-endian), then JSON padded with spaces to a
    multiple of 8 bytes, so that the data starts aligned."""
    header = json.dumps({"__metadata__": metadata, "matrix": {"dtype": "I64", "shape": [rows, words],
                                                              "data_offsets": [0, rows * words * 8]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def write(path: str | os.PathLike, matrix: torch.Tensor, n_in: int, n_out: int, n_stored: int,
          shard: dict[str, int] | None = None) -> None:
    sizes = {"n_in": n_in, "n_out": n_out, "n_stored": n_stored, **(shard or {})}
    metadata = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), **{k: str(v) for k, v in sizes.items()}}
    rows, words = matrix.shape

    def write_file(temporary: str) -> None:
        digest = _sizes_digest(sizes)
        with open(temporary, "wb") as handle:
            # The checksum is known after the data: the header goes first with a stand-in of the same
            # length (64 hex digits), and is rewritten at the end.
            handle.write(_header({**metadata, "sha256": "0" * 64}, rows, words))
            for start, stop in _row_blocks(rows, words):
                data = _bytes_of(matrix[start:stop].detach().cpu())
                digest.update(data)
                handle.write(data)
            handle.seek(0)
            handle.write(_header({**metadata, "sha256": digest.hexdigest()}, rows, words))
    atomic_write(path, write_file)


def read_sizes(path: str | os.PathLike) -> dict[str, int]:
    """The sizes of a saved memory (with the shard fields for a shard), its header checked against them;
    the bits are read by read_matrix_into."""
    return _open(Path(path), lambda handle, metadata, sizes: sizes)


def read_matrix_into(path: str | os.PathLike, sizes: dict[str, int], matrix: torch.Tensor) -> None:
    """The saved bits copied into ``matrix`` (n_in x words int64, on any device) block by block, then
    the checksum checked. On a WillshawFileError ``matrix`` may hold a damaged file's bits: discard it."""
    path = Path(path)

    def copy(handle, metadata, found):
        if found != sizes:
            raise WillshawFileError(f"{path} changed while it was loaded")
        digest = _sizes_digest(sizes)
        saved = handle.get_slice("matrix")
        padding_set_in = None  # the first block whose padding holds a one: reported if the checksum holds
        for start, stop in _row_blocks(*matrix.shape):
            block = saved[start:stop]
            if block.dtype != torch.int64:
                raise WillshawFileError(f"{path}: the matrix is {block.dtype}, not int64")
            if padding_set_in is None and reference.has_bits_past(block, sizes["n_out"]):
                padding_set_in = (start, stop - 1)
            digest.update(_bytes_of(block))
            matrix[start:stop].copy_(block)
        if digest.hexdigest() != metadata["sha256"]:
            raise WillshawFileError(f"{path}: checksum mismatch, the stored bits or sizes are damaged")
        if padding_set_in is not None:
            # Not damage: a writer other than aefast's. The kernels read whole words, and would answer
            # with these units.
            raise WillshawFileError(f"{path}: rows {padding_set_in[0]}-{padding_set_in[1]} set bits past unit "
                                    f"n_out - 1 = {sizes['n_out'] - 1}, which no store sets")
    _open(path, copy)


def _open(path: Path, then):
    """``then(handle, metadata, sizes)`` on the open file, once its metadata and shape are checked."""
    if not path.is_file():
        raise FileNotFoundError(f"no Willshaw memory file at {path}")
    try:
        # safetensors makes a slice's tensor on torch's default device (a user's set_default_device
        # would send every block there, or to meta): the file's blocks come to the CPU first.
        with torch.device("cpu"), safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            _check_metadata(path, metadata)
            if list(handle.keys()) != ["matrix"]:
                raise WillshawFileError(f"{path}: expected one tensor 'matrix', found {list(handle.keys())}")
            sizes = {field: int(metadata[field]) for field in _fields(metadata)}
            shape, words = tuple(handle.get_slice("matrix").get_shape()), (sizes["n_out"] + 63) // 64
            if shape != (sizes["n_in"], words):
                raise WillshawFileError(f"{path}: the matrix is {shape}, but the sizes say ({sizes['n_in']}, {words})")
            return then(handle, metadata, sizes)
    except SafetensorError as error:
        raise WillshawFileError(f"{path} is not a readable safetensors file (truncated or damaged?): {error}") from None


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
