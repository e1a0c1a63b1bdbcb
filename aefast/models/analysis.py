"""Tools on trained autoencoders: the PCA check of a linear autoencoder, interpolation in the code
space, a Gaussian fitted to the codes to sample from, and binary codes searched by Hamming distance."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aefast._checks import is_int
from aefast.models.autoencoders import Autoencoder


@dataclass
class PcaCheck:
    principal_angles: Tensor  # radians, between the decoder's subspace and the top-k PCA subspace
    autoencoder_error: float  # mean squared reconstruction error per element
    pca_error: float          # the same for the top-k PCA reconstruction (the best linear one)


@torch.no_grad()
def pca_check(model: Autoencoder, x: Tensor) -> PcaCheck:
    """How close a linear autoencoder came to PCA: a linear autoencoder with a k-wide code at its
    optimum spans the top-k principal subspace and matches PCA's reconstruction error."""
    if model.activation is not None or model.output_activation is not None:
        raise ValueError("pca_check needs a linear autoencoder (activation=None, output_activation=None)")
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != model.dims[0]:
        raise ValueError(f"x must be a 2-D tensor (rows, {model.dims[0]}), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    k = model.dims[-1]
    # The decoder's map from code to output is linear: its image is spanned by the images of the unit codes.
    zero = model.decode(torch.zeros(1, k, dtype=x.dtype, device=x.device))
    decoder_basis = (model.decode(torch.eye(k, dtype=x.dtype, device=x.device)) - zero).T  # (d, k)
    centered = x - x.mean(0)
    _, _, components = torch.linalg.svd(centered.double(), full_matrices=False)
    pca_basis = components[:k].T  # (d, k)
    q_decoder, _ = torch.linalg.qr(decoder_basis.double())
    cosines = torch.linalg.svdvals(q_decoder.T @ pca_basis).clamp(-1, 1)
    pca_reconstruction = centered.double() @ pca_basis @ pca_basis.T + x.mean(0).double()
    return PcaCheck(
        principal_angles=torch.arccos(cosines).float(),
        autoencoder_error=float(((model(x) - x) ** 2).mean()),
        pca_error=float(((pca_reconstruction - x.double()) ** 2).mean()),
    )


@torch.no_grad()
def interpolate(model, x1: Tensor, x2: Tensor, steps: int = 8) -> Tensor:
    """g((1 - a) f(x1) + a f(x2)) for ``steps`` values of a from 0 to 1: (steps, width)."""
    if not is_int(steps) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    if not isinstance(x1, Tensor) or not isinstance(x2, Tensor) or x1.numel() != x2.numel():
        raise ValueError(f"x1 and x2 must be tensors of one input each, got {getattr(x1, 'shape', type(x1).__name__)} "
                         f"and {getattr(x2, 'shape', type(x2).__name__)}")
    codes = model.encode(torch.stack([x1.reshape(-1), x2.reshape(-1)]))
    weights = torch.linspace(0, 1, steps, dtype=codes.dtype, device=codes.device).unsqueeze(1)
    return model.decode((1 - weights) * codes[0] + weights * codes[1])


class LatentGaussian:
    """A diagonal Gaussian fitted to a model's codes of some data; ``sample`` decodes draws from it."""

    @torch.no_grad()
    def __init__(self, model, x: Tensor):
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 2:  # the std of one row is NaN
            raise ValueError(f"x must be a batch of at least 2 inputs, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        self.model = model
        codes = model.encode(x)
        self.mean, self.std = codes.mean(0), codes.std(0)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if not is_int(n) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        # Drawn on the CPU, as VAE.sample: a CPU generator's seed gives the same samples on any device.
        noise = torch.randn(n, self.mean.numel(), generator=generator, dtype=self.mean.dtype,
                            device="cpu").to(self.mean.device)
        return self.model.decode(self.mean + self.std * noise)


@torch.no_grad()
def binary_codes(model, x: Tensor, thresholds: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Codes thresholded to bits (at each unit's median over x unless ``thresholds`` is given):
    (bool codes, the thresholds used)."""
    codes = model.encode(x)
    if thresholds is None:
        thresholds = codes.median(0).values
    elif not isinstance(thresholds, Tensor) or thresholds.shape not in ((), codes.shape[-1:]):
        raise ValueError(f"thresholds must be a tensor of one threshold per code unit ({codes.shape[-1]},) or a "
                         f"0-d tensor, got {tuple(thresholds.shape) if isinstance(thresholds, Tensor) else thresholds!r}")
    return codes > thresholds, thresholds


# (query, database row) distances hamming_search holds at a time, about 20 bytes each (the float
# distances, then int64 distances and sort keys): 80 MB, against the (queries, rows, bits) comparison's
# one byte per bit of every pair before.
HAMMING_BLOCK_PAIRS = 2**22


def hamming_search(queries: Tensor, database: Tensor, k: int) -> Tensor:
    """The k database rows nearest to each query in Hamming distance (ties to the lower index): a
    (queries, k) int64 tensor of database rows. ``queries`` (Q, B) and ``database`` (N, B) hold bits
    (bool, or any dtype holding only 0 and 1)."""
    for name, bits in (("queries", queries), ("database", database)):
        if not isinstance(bits, Tensor) or bits.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor of bits (rows, bits), got "
                             f"{tuple(bits.shape) if isinstance(bits, Tensor) else type(bits).__name__}")
        if bits.dtype != torch.bool and not ((bits == 0) | (bits == 1)).all():
            raise ValueError(f"{name} must hold only 0 and 1 (or be bool)")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries and database must have the same number of bits, got {queries.shape[1]} "
                         f"and {database.shape[1]}")
    if queries.device != database.device:
        raise ValueError(f"queries and database must be on one device, got {queries.device} and {database.device}")
    if not is_int(k) or not 1 <= k <= database.shape[0]:
        raise ValueError(f"k must be an int in [1, database rows {database.shape[0]}], got {k!r}")
    # For bit vectors, |q xor r| = |q| + |r| - 2 q.r: one matmul per block of queries instead of a
    # (queries, rows, bits) comparison. Every partial sum is an integer below the width, which float32
    # holds exactly below 2^24 (TF32 too: its inputs are 0 and 1); autocast's 16 bits would not.
    dtype = torch.float32 if database.shape[1] < 2**24 else torch.float64
    with torch.autocast(database.device.type, enabled=False):
        return _nearest_by_blocks(queries.to(dtype), database.to(dtype), k)


def _nearest_by_blocks(queries: Tensor, rows: Tensor, k: int) -> Tensor:
    row_ones = rows.sum(1)
    # Distance * rows + index orders by distance, then by index: unique keys, so topk's pick is exact.
    index = torch.arange(rows.shape[0], device=rows.device)
    nearest = [torch.empty(0, k, dtype=torch.int64, device=rows.device)]
    block_rows = max(1, HAMMING_BLOCK_PAIRS // rows.shape[0])
    for start in range(0, queries.shape[0], block_rows):
        block = queries[start:start + block_rows]
        distances = (block.sum(1, keepdim=True) + row_ones - 2 * block @ rows.T).round().long()
        nearest.append(torch.topk(distances * rows.shape[0] + index, k, dim=1, largest=False).indices)
    return torch.cat(nearest)
