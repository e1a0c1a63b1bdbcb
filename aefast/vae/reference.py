"""Plain PyTorch reparameterize + KL: the test oracle and the fallback backend.

Kernel contract shared by every backend (rows x cols, contiguous):
``forward(mu, logvar, eps, seed, per_element, clamp_min, clamp_max) -> (z, kl)`` and
``backward(grad_z, grad_kl, mu, logvar, eps, seed, clamp_min, clamp_max) -> (grad_mu, grad_logvar)``,
where ``kl`` is per row (rows,) or per element (rows, cols) in the KL dtype, and a missing ``eps``
means the Philox normals of ``seed`` laid out by ``noise`` below.
"""
from __future__ import annotations

import math

import torch

from aefast._dtypes import accumulation_dtype as kl_dtype  # the KL comes back in the dtype it is summed in
from aefast._philox import philox_normal4

# Philox offsets per chunk when the reference generates noise: bounds its int64 scratch to ~200 MiB.
_NOISE_CHUNK = 1 << 22
NORMALS_PER_OFFSET = 4


def clamp_active(clamp_min: float, clamp_max: float) -> bool:
    """Bounds of -inf and +inf mean no clamp."""
    return math.isfinite(clamp_min) or math.isfinite(clamp_max)


def noise(seed: int, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The standard normals the fused kernels regenerate for ``seed`` for a (rows, cols) input:
    element (row, col) is normal ``col % 4`` of Philox offset ``row * ceil(cols / 4) + col // 4``
    (``philox_normal4``, tl.randn4x's four normals). Each row starts an offset of its own, so a kernel
    tile of whole rows, or of a row's columns from a multiple of 4, draws each offset once."""
    rows, cols = shape
    per_row = -(-cols // NORMALS_PER_OFFSET)
    count = rows * per_row
    chunks = [
        philox_normal4(seed, torch.arange(start, min(start + _NOISE_CHUNK, count), device=device))
        for start in range(0, count, _NOISE_CHUNK)
    ]
    normals = torch.cat(chunks) if chunks else torch.empty(0, NORMALS_PER_OFFSET, device=device)
    return normals.reshape(rows, per_row * NORMALS_PER_OFFSET)[:, :cols].to(dtype).contiguous()


def reparameterize_kl_elementwise(mu, logvar, eps, clamp_min=-math.inf, clamp_max=math.inf):
    """z = mu + exp(logvar/2) * eps and the per-element KL(N(mu, exp(logvar)) || N(0, 1)), computed
    in the KL dtype (fp32 accumulation), differentiable by autograd."""
    compute = kl_dtype(mu.dtype)
    mu_c, logvar_c, eps_c = mu.to(compute), logvar.to(compute), eps.to(compute)
    if clamp_active(clamp_min, clamp_max):
        logvar_c = torch.clamp(logvar_c, clamp_min, clamp_max)
    z = mu_c + torch.exp(0.5 * logvar_c) * eps_c
    kl = -0.5 * (1.0 + logvar_c - mu_c * mu_c - torch.exp(logvar_c))
    return z.to(mu.dtype), kl


def _noise_or_eps(mu, eps, seed):
    # Generated noise stays in the compute dtype, as in the kernels: z is rounded to mu's dtype once.
    return eps if eps is not None else noise(seed, mu.shape, kl_dtype(mu.dtype), mu.device)


def forward(mu, logvar, eps, seed, per_element, clamp_min, clamp_max):
    z, kl = reparameterize_kl_elementwise(mu, logvar, _noise_or_eps(mu, eps, seed), clamp_min, clamp_max)
    return z, (kl if per_element else kl.sum(-1))


def backward(grad_z, grad_kl, mu, logvar, eps, seed, clamp_min, clamp_max):
    # Explicit formulas: a custom op's implementation runs below autograd, so it cannot differentiate
    # reparameterize_kl_elementwise itself; tests check these against autograd through it.
    compute = kl_dtype(mu.dtype)
    noise_c = _noise_or_eps(mu, eps, seed).to(compute)
    mu_c, logvar_raw = mu.to(compute), logvar.to(compute)
    clamped = clamp_active(clamp_min, clamp_max)
    logvar_c = torch.clamp(logvar_raw, clamp_min, clamp_max) if clamped else logvar_raw
    grad_kl_e = grad_kl if grad_kl.dim() == 2 else grad_kl[:, None]
    grad_z_c = grad_z.to(compute)
    sigma = torch.exp(0.5 * logvar_c)
    grad_logvar = 0.5 * (grad_z_c * noise_c * sigma + grad_kl_e * (torch.exp(logvar_c) - 1.0))
    if clamped:
        inside = (logvar_raw >= clamp_min) & (logvar_raw <= clamp_max)
        grad_logvar = torch.where(inside, grad_logvar, torch.zeros_like(grad_logvar))
    grad_mu = grad_z_c + grad_kl_e * mu_c
    return grad_mu.to(mu.dtype), grad_logvar.to(mu.dtype)
