"""Triton kernels of the fused reparameterize + KL: a forward kernel that writes z and the KL (per
row or per element), and a backward kernel that regenerates eps from (seed, offset) instead of
reading it, four normals per Philox offset (reference.noise's layout). Imported lazily:
``TRITON_INTERPRET`` must be set before the kernels are defined."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from aefast import _backends
from aefast._sizes import cdiv, next_power_of_2
from aefast._triton_math import exp
from aefast._triton_launch import launch
from aefast._triton_random import philox_normal4
from aefast.vae.reference import NORMALS_PER_OFFSET, clamp_active, kl_dtype

# Elements per program and warps: 4 elements per thread, in 40-80 registers, so that an SM holds
# enough warps to keep loads in flight. Blocks of 4096 elements in 4 warps (what the H200 run timed)
# took 218-243 registers per thread: two programs per SM (tests/vae/test_compiled_kernels.py keeps
# this in check). Rows wider than a block loop over it, 8 elements per thread at most.
BLOCK_ELEMENTS = 512
WARPS = 4
# Rows whose width is not a multiple of 4 start off 16-byte boundaries: their loads are not vectorized,
# and an offset's four normals reach the threads that hold its columns through shared memory. At 4 warps
# triton 3.6 then spilled (the backward at 3 columns, 56 registers); at 8 (2 elements a thread) the
# kernels take 32-80 registers without spilling on 3.6 and 3.9 (tests/vae/test_compiled_kernels.py).
UNALIGNED_WARPS = 8
_MAX_BLOCK_COLS = 1024


@triton.jit
def _tile_noise(seed, row_ids, col0, offsets_per_row, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """The noise of the (BLOCK_ROWS, BLOCK_COLS) tile whose first column col0 is a multiple of 4: each
    Philox offset's four normals drawn once, then laid side by side as columns 4g .. 4g + 3."""
    offsets = row_ids[:, None] * offsets_per_row + (col0 // 4 + tl.arange(0, BLOCK_COLS // 4))[None, :]
    n0, n1, n2, n3 = philox_normal4(seed, offsets)
    tile = tl.join(tl.join(n0, n2), tl.join(n1, n3))  # [row, g, j, k] = normal 2j + k of offset g
    return tl.reshape(tile, (BLOCK_ROWS, BLOCK_COLS))


@triton.jit
def _clamp_keep_nan(x, lo, hi):
    return tl.where(x < lo, lo, tl.where(x > hi, hi, x))


@triton.jit(do_not_specialize=["seed"])
def _forward_kernel(mu_ptr, logvar_ptr, eps_ptr, z_ptr, kl_ptr, rows, cols, offsets_per_row, seed, clamp_min,
                    clamp_max,
                    HAS_EPS: tl.constexpr, PER_ELEMENT: tl.constexpr, CLAMP: tl.constexpr,
                    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    acc_dtype = kl_ptr.dtype.element_ty
    row_ids = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = row_ids < rows
    row_sums = tl.zeros((BLOCK_ROWS,), dtype=acc_dtype)
    for col0 in range(0, cols, BLOCK_COLS):
        col_ids = col0 + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (col_ids < cols)[None, :]
        offsets = row_ids[:, None] * cols + col_ids[None, :]
        mu = tl.load(mu_ptr + offsets, mask=mask, other=0.0).to(acc_dtype)
        logvar = tl.load(logvar_ptr + offsets, mask=mask, other=0.0).to(acc_dtype)
        if CLAMP:
            logvar = _clamp_keep_nan(logvar, clamp_min, clamp_max)
        if HAS_EPS:
            noise = tl.load(eps_ptr + offsets, mask=mask, other=0.0).to(acc_dtype)
        else:
            noise = _tile_noise(seed, row_ids, col0, offsets_per_row, BLOCK_ROWS, BLOCK_COLS).to(acc_dtype)
        sigma = exp(0.5 * logvar)
        tl.store(z_ptr + offsets, (mu + sigma * noise).to(z_ptr.dtype.element_ty), mask=mask)
        kl = -0.5 * (1.0 + logvar - mu * mu - sigma * sigma)
        if PER_ELEMENT:
            tl.store(kl_ptr + offsets, kl, mask=mask)
        else:
            row_sums += tl.sum(tl.where(mask, kl, 0.0), axis=1)
    if not PER_ELEMENT:
        tl.store(kl_ptr + row_ids, row_sums, mask=row_mask)


@triton.jit(do_not_specialize=["seed"])
def _backward_kernel(grad_z_ptr, grad_kl_ptr, mu_ptr, logvar_ptr, eps_ptr, grad_mu_ptr, grad_logvar_ptr,
                     rows, cols, offsets_per_row, seed, clamp_min, clamp_max,
                     HAS_EPS: tl.constexpr, PER_ELEMENT: tl.constexpr, CLAMP: tl.constexpr,
                     BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    acc_dtype = grad_kl_ptr.dtype.element_ty
    row_ids = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = row_ids < rows
    if not PER_ELEMENT:
        grad_kl_row = tl.load(grad_kl_ptr + row_ids, mask=row_mask, other=0.0)[:, None]
    for col0 in range(0, cols, BLOCK_COLS):
        col_ids = col0 + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (col_ids < cols)[None, :]
        offsets = row_ids[:, None] * cols + col_ids[None, :]
        mu = tl.load(mu_ptr + offsets, mask=mask, other=0.0).to(acc_dtype)
        logvar_raw = tl.load(logvar_ptr + offsets, mask=mask, other=0.0).to(acc_dtype)
        logvar = logvar_raw
        if CLAMP:
            logvar = _clamp_keep_nan(logvar_raw, clamp_min, clamp_max)
        if HAS_EPS:
            noise = tl.load(eps_ptr + offsets, mask=mask, other=0.0).to(acc_dtype)
        else:
            noise = _tile_noise(seed, row_ids, col0, offsets_per_row, BLOCK_ROWS, BLOCK_COLS).to(acc_dtype)
        if PER_ELEMENT:
            grad_kl = tl.load(grad_kl_ptr + offsets, mask=mask, other=0.0)
        else:
            grad_kl = grad_kl_row
        grad_z = tl.load(grad_z_ptr + offsets, mask=mask, other=0.0).to(acc_dtype)
        sigma = exp(0.5 * logvar)
        grad_logvar = 0.5 * (grad_z * noise * sigma + grad_kl * (sigma * sigma - 1.0))
        if CLAMP:
            # torch.clamp passes the gradient where lo <= x <= hi (NaN gets none).
            grad_logvar = tl.where((logvar_raw >= clamp_min) & (logvar_raw <= clamp_max), grad_logvar, 0.0)
        tl.store(grad_mu_ptr + offsets, (grad_z + grad_kl * mu).to(grad_mu_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_logvar_ptr + offsets, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)


def _warps(cols: int) -> int:
    return WARPS if cols % NORMALS_PER_OFFSET == 0 else UNALIGNED_WARPS


def _launch_shape(rows: int, cols: int) -> tuple[int, int, tuple[int]]:
    # At least 4 columns: a tile draws whole Philox offsets of 4 normals.
    block_cols = min(max(next_power_of_2(cols), NORMALS_PER_OFFSET), _MAX_BLOCK_COLS)
    block_rows = max(1, BLOCK_ELEMENTS // block_cols)
    return block_rows, block_cols, (cdiv(rows, block_rows),)


def forward(mu, logvar, eps, seed, per_element, clamp_min, clamp_max):
    rows, cols = mu.shape
    z = torch.empty_like(mu)
    kl = torch.empty((rows, cols) if per_element else (rows,), dtype=kl_dtype(mu.dtype), device=mu.device)
    if mu.numel() == 0:
        return z, kl.zero_()
    block_rows, block_cols, grid = _launch_shape(rows, cols)
    launch(_forward_kernel, grid,
        mu, logvar, eps if eps is not None else mu, z, kl, rows, cols, cdiv(cols, NORMALS_PER_OFFSET), seed,
        clamp_min, clamp_max,
        HAS_EPS=eps is not None, PER_ELEMENT=per_element, CLAMP=clamp_active(clamp_min, clamp_max),
        BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=_warps(cols), **_backends.TRITON_LAUNCH,
    )
    return z, kl


def backward(grad_z, grad_kl, mu, logvar, eps, seed, clamp_min, clamp_max):
    rows, cols = mu.shape
    grad_mu = torch.empty_like(mu)
    grad_logvar = torch.empty_like(mu)
    if mu.numel() == 0:
        return grad_mu, grad_logvar
    block_rows, block_cols, grid = _launch_shape(rows, cols)
    launch(_backward_kernel, grid,
        grad_z, grad_kl, mu, logvar, eps if eps is not None else mu, grad_mu, grad_logvar,
        rows, cols, cdiv(cols, NORMALS_PER_OFFSET), seed, clamp_min, clamp_max,
        HAS_EPS=eps is not None, PER_ELEMENT=grad_kl.dim() == 2, CLAMP=clamp_active(clamp_min, clamp_max),
        BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=_warps(cols), **_backends.TRITON_LAUNCH,
    )
    return grad_mu, grad_logvar
