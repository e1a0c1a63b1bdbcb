"""Data sets that need no download: scikit-learn's bundled 8x8 digits, a generated manifold, and
loaders for MNIST-format IDX files and .npz files at a path the user gives.

Every loader returns (x float32 in [0, 1] or as stored, labels int64 or None) and refuses NaN.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from aefast._checks import check_seed, non_negative, positive_int


def load_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled handwritten digits: X (1797, 64) float32 in [0, 1] (pixels / 16), y int64."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return torch.from_numpy(digits.data.astype(np.float32) / 16.0), torch.from_numpy(digits.target.astype(np.int64))


def synthetic_manifold(n: int = 2000, dim: int = 64, *, intrinsic_dim: int = 2, noise: float = 0.01,
                       seed: int = 0) -> tuple[Tensor, Tensor]:
    """Points on a smooth ``intrinsic_dim``-dimensional manifold in [0, 1]^dim: each coordinate is a
    random sinusoid of the latent coordinates, plus Gaussian noise. Labels: which of 4 angular
    sectors of the first two latent coordinates a point lies in (for coloured latent plots)."""
    for name, value in (("n", n), ("dim", dim), ("intrinsic_dim", intrinsic_dim)):
        positive_int(value, name)
    noise = non_negative(noise, "noise")
    if seed is None:
        raise ValueError("seed must be an int in [0, 2**63): the data set is made from it")
    check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    # On the generator's device and in float32, whatever torch's defaults: one seed, one data set.
    made = dict(device="cpu", dtype=torch.float32)
    latent = torch.rand(n, intrinsic_dim, generator=generator, **made) * 2 - 1
    frequencies = torch.randn(intrinsic_dim, dim, generator=generator, **made) * 2
    phases = torch.rand(dim, generator=generator, **made) * 2 * math.pi
    # Summed term by term, not by a matmul: BLAS may split a matmul by the threads it finds free,
    # and the last bit then changes from call to call; the same seed must give the same points.
    projection = torch.zeros(n, dim, **made)
    for k in range(intrinsic_dim):
        projection.addcmul_(latent[:, k:k + 1], frequencies[k])
    x = 0.5 + 0.4 * torch.sin(projection + phases) + noise * torch.randn(n, dim, generator=generator, **made)
    angle = torch.atan2(latent[:, 1 % intrinsic_dim], latent[:, 0])
    labels = ((angle + math.pi) / (math.pi / 2)).long().clamp(max=3)
    return x.clamp(0, 1).float(), labels


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str | os.PathLike) -> Tensor:
    """An MNIST-format IDX file (gzip or not) as a tensor of its shape; uint8 images come back as
    float32 in [0, 1] flattened to (count, rows * cols), a 1-D file (labels, an integer type) as int64."""
    path = Path(path)
    try:
        with _open_maybe_gzipped(path) as handle:
            header = handle.read(4)
            if len(header) != 4 or header[:2] != b"\0\0" or header[2] not in _IDX_TYPES or header[3] == 0:
                raise ValueError(f"{path} is not an IDX file (bad magic number {header.hex()})")
            dims = struct.unpack(f">{header[3]}I", handle.read(4 * header[3]))
            dtype = np.dtype(_IDX_TYPES[header[2]])
            expected = math.prod(dims) * dtype.itemsize
            payload, more = _read_up_to(handle, expected)
    except (OSError, EOFError, struct.error) as error:
        raise ValueError(f"{path} cannot be read as an IDX file: {error}") from None
    if len(payload) != expected or more:
        raise ValueError(f"{path}: the header promises {expected} bytes of data, the file holds "
                         f"{'more' if more else len(payload)}")
    array = np.frombuffer(payload, dtype=dtype).reshape(dims)
    if len(dims) == 1:
        if dtype.kind == "f":
            raise ValueError(f"{path}: a 1-D IDX file holds labels, an integer type, got {dtype}")
        return torch.from_numpy(array.astype(np.int64))
    values = array.reshape(dims[0], math.prod(dims[1:])).astype(np.float32)
    if header[2] == 0x08:
        values /= 255.0
    return _checked(torch.from_numpy(values), str(path))


def _open_maybe_gzipped(path: Path):
    """``path`` opened for reading, through gzip when it starts with gzip's magic bytes: told by its
    content, not its name (MNIST's files come as .gz, and are often kept unpacked under either name)."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_up_to(handle, size: int, chunk: int = 1 << 24) -> tuple[bytes, bool]:
    """Up to ``size`` bytes, and whether more follow. Read in chunks: a header may promise far more than
    the file holds, and one read of that size would allocate it first."""
    parts, remaining = [], size
    while remaining > 0:
        part = handle.read(min(chunk, remaining))
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts), bool(handle.read(1))


def load_npz(path: str | os.PathLike, x_key: str = "x", labels_key: Optional[str] = "y") -> tuple[Tensor, Optional[Tensor]]:
    """Arrays ``x_key`` (rows of numbers; more dimensions are flattened) and, if present,
    ``labels_key`` (one integer per row) of a .npz file."""
    try:
        with open(path, "rb") as handle:  # ours to close: np.load leaves a file it opened open on a bad zip
            # np.load takes any other content for a pickle, and refuses it as "pickled (object) data"
            if not handle.read(6).startswith((b"PK", b"\x93NUMPY")):
                raise ValueError("it is neither a .npz (zip) archive nor a .npy file")
            handle.seek(0)
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("it holds one array (a .npy file), not named arrays")
            if x_key not in archive:
                raise ValueError(f"it has no array {x_key!r} (it has {sorted(archive.files)})")
            x = archive[x_key]
            labels = archive[labels_key] if labels_key and labels_key in archive else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} cannot be read as a .npz file: {error}") from None
    if x.ndim == 0 or x.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {x_key!r} must hold rows of real numbers, got shape {x.shape} {x.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(x.reshape(x.shape[0], math.prod(x.shape[1:])), dtype=np.float32))
    if labels is not None:
        labels = _labels(labels, x.shape[0], f"{path}: {labels_key!r}")
    return _checked(x, str(path)), labels


def _labels(labels: np.ndarray, rows: int, name: str) -> Tensor:
    """One integer label per row (floats that hold integers, as some files store them, are taken)."""
    if labels.shape not in ((rows,), (rows, 1)):
        raise ValueError(f"{name} must hold one label per row ({rows}), got shape {labels.shape}")
    if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise ValueError(f"{name}: labels must be integers, got non-integer values")
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"{name}: labels must be integers, got {labels.dtype}")
    largest = np.abs(labels).max() if labels.size and labels.dtype.kind in "uf" else 0
    if largest > 2**53:  # past it, the cast to int64 gives whatever it gives
        raise ValueError(f"{name}: labels must be at most 2**53 in magnitude, got {largest}")
    return torch.from_numpy(labels.astype(np.int64).reshape(-1))


def _checked(x: Tensor, where: str) -> Tensor:
    bad = ~torch.isfinite(x)
    if bad.any():
        row = int(bad.any(1).nonzero()[0, 0])
        raise ValueError(f"{where}: row {row} holds NaN or infinity")
    return x
