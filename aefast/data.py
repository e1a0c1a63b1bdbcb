"""Data sets that need no download: scikit-learn's bundled 8x8 digits, a generated manifold, and
loaders for MNIST-format IDX files and .npz files at a path the user gives.

Every loader returns (x float32 in [0, 1] or as stored, labels int64 or None) and refuses NaN.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor


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
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    latent = torch.rand(n, intrinsic_dim, generator=generator) * 2 - 1
    frequencies = torch.randn(intrinsic_dim, dim, generator=generator) * 2
    phases = torch.rand(dim, generator=generator) * 2 * math.pi
    x = 0.5 + 0.4 * torch.sin(latent @ frequencies + phases) + noise * torch.randn(n, dim, generator=generator)
    angle = torch.atan2(latent[:, 1 % intrinsic_dim], latent[:, 0])
    labels = ((angle + math.pi) / (math.pi / 2)).long().clamp(max=3)
    return x.clamp(0, 1).float(), labels


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str | os.PathLike) -> Tensor:
    """An MNIST-format IDX file (gzip or not) as a tensor of its shape; uint8 images come back as
    float32 in [0, 1] flattened to (count, rows * cols), labels as int64."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(4)
            if len(header) != 4 or header[:2] != b"\0\0" or header[2] not in _IDX_TYPES:
                raise ValueError(f"{path} is not an IDX file (bad magic number {header.hex()})")
            dims = struct.unpack(f">{header[3]}I", handle.read(4 * header[3]))
            dtype = np.dtype(_IDX_TYPES[header[2]])
            expected = int(np.prod(dims)) * dtype.itemsize
            payload = handle.read(expected + 1)
    except (OSError, EOFError, struct.error) as error:
        raise ValueError(f"{path} cannot be read as an IDX file: {error}") from None
    if len(payload) != expected:
        raise ValueError(f"{path}: the header promises {expected} bytes of data, the file holds "
                         f"{len(payload) if len(payload) <= expected else 'more'}")
    array = np.frombuffer(payload, dtype=dtype).reshape(dims)
    if len(dims) == 1:
        return torch.from_numpy(array.astype(np.int64))
    values = array.reshape(dims[0], -1).astype(np.float32)
    if header[2] == 0x08:
        values /= 255.0
    return _checked(torch.from_numpy(values), str(path))


def load_npz(path: str | os.PathLike, x_key: str = "x", labels_key: Optional[str] = "y") -> tuple[Tensor, Optional[Tensor]]:
    """Arrays ``x_key`` (rows of features; more dimensions are flattened) and, if present,
    ``labels_key`` of a .npz file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if x_key not in archive:
                raise ValueError(f"{path} has no array {x_key!r} (it has {sorted(archive.files)})")
            x = archive[x_key]
            labels = archive[labels_key] if labels_key and labels_key in archive else None
    except (OSError, EOFError) as error:
        raise ValueError(f"{path} cannot be read as a .npz file: {error}") from None
    x = torch.from_numpy(np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float32))
    if labels is not None:
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"{path}: {labels_key!r} has {labels.shape[0]} labels for {x.shape[0]} rows")
        labels = torch.from_numpy(labels.astype(np.int64).reshape(-1))
    return _checked(x, str(path)), labels


def _checked(x: Tensor, where: str) -> Tensor:
    bad = ~torch.isfinite(x)
    if bad.any():
        row = int(bad.any(1).nonzero()[0, 0])
        raise ValueError(f"{where}: row {row} holds NaN or infinity")
    return x
