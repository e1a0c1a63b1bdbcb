"""Triton kernels of the fused MLP: linear + bias + activation with the activation in the matmul's
epilogue, its backward (dX and dW + db, with the activation's derivative applied as the gradient is
loaded), the last layer fused with the reconstruction loss (the reconstruction is never written:
only the loss and d loss / d z are), and the denoising corruption generated in the first layer's
load from (seed, offset) and regenerated in backward. Imported lazily: ``TRITON_INTERPRET`` must be
set before the kernels are defined.

Every kernel takes contiguous row-major tensors: x (M, K), weight (N, K), y (M, N).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from aefast import _backends
from aefast._sizes import cdiv, next_power_of_2
from aefast._triton_launch import arguments_key, launch
from aefast._triton_random import philox_normal, philox_uniform
from aefast.mlp import reference
from aefast.mlp.precision import dot_precision, get_fp32_precision

# Activation codes of the kernels, in the order of reference.ACTIVATIONS.
ACTIVATION_CODES = {None: 0, "relu": 1, "leaky_relu": 2, "tanh": 3, "sigmoid": 4, "gelu": 5}
CORRUPTION_CODES = {"none": 0, "mask": 1, "gaussian": 2}
LOSS_CODES = {"mse": 0, "bce": 1}
_GELU = 5


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _tanh(z):
    t = tl.exp(-2.0 * tl.abs(z))
    magnitude = (1.0 - t) / (1.0 + t)
    return tl.where(z < 0, -magnitude, magnitude)


@triton.jit
def _activate(z, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.where(z < 0, 0.0, z)  # NaN stays NaN, as torch.relu (tl.maximum would drop it on the GPU)
    elif ACT == 2:
        z = tl.where(z > 0, z, 0.01 * z)
    elif ACT == 3:
        z = _tanh(z)
    elif ACT == 4:
        z = _sigmoid(z)
    elif ACT == 5:
        z = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    return z


@triton.jit
def _activation_grad(saved, ACT: tl.constexpr):
    """d act / d z from what the forward saved: the output y, or the pre-activation z for GELU."""
    if ACT == 0:
        grad = tl.zeros_like(saved) + 1.0
    elif ACT == 1:
        grad = tl.where(saved <= 0, 0.0, 1.0)
    elif ACT == 2:
        grad = tl.where(saved > 0, 1.0, 0.01)
    elif ACT == 3:
        grad = 1.0 - saved * saved
    elif ACT == 4:
        grad = saved * (1.0 - saved)
    else:
        grad = 0.5 * (1.0 + tl.erf(saved * 0.7071067811865476)) + saved * tl.exp(-0.5 * saved * saved) * 0.3989422804014327
    return grad


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in float32. UPCAST: Triton's CPU interpreter multiplies bfloat16 operands'
    raw bits, so there they go in as float32; bf16 x bf16 products are exact in float32, so this
    computes what the GPU's bf16 tensor cores do."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


# Addresses: a tile's first element is an int64 scalar (tensors may pass 2^31 elements), the offsets
# inside it are 32-bit (half the registers of 64-bit ones: with those, every tile of 128 rows or
# columns spilled on sm_90), unless LONG_ROWS: rows of 2^31 / 256 elements or more, whose in-tile
# offsets could overflow.


@triton.jit
def _tile_indices(BLOCK: tl.constexpr, LONG_ROWS: tl.constexpr):
    """0 .. BLOCK - 1, in the type of in-tile offsets."""
    indices = tl.arange(0, BLOCK)
    if LONG_ROWS:
        indices = indices.to(tl.int64)
    return indices


@triton.jit
def _extent(first, size, BLOCK: tl.constexpr):
    """How many of the BLOCK indices from ``first`` lie below ``size`` (at most BLOCK), as an int32."""
    return tl.minimum(size - first, BLOCK).to(tl.int32)


@triton.jit
def _load_input(x_ptr, start, offsets, mask, seed, param, CORRUPT: tl.constexpr):
    """A tile of x (``offsets`` from element ``start``; zero outside ``mask``), corrupted as the first layer
    sees it: in its own dtype (so that it can feed the dot straight from the load), or in float32 with
    Gaussian noise added. The noise is keyed by the element's 64-bit index."""
    x = tl.load(x_ptr + start + offsets, mask=mask, other=0.0)
    if CORRUPT == 1:
        x = tl.where(philox_uniform(seed, start + offsets.to(tl.int64)) >= param, x, 0.0)
    elif CORRUPT == 2:
        x = tl.where(mask, x.to(tl.float32) + param * philox_normal(seed, start + offsets.to(tl.int64)), 0.0)
    return x


@triton.jit
def _pre_activation(x_ptr, w_ptr, b_ptr, first_row, first_col, rows, cols, rows_in, cols_in, K, seed, param,
                    CORRUPT: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_K: tl.constexpr, LONG_ROWS: tl.constexpr):
    """z = x~ W^T + b for the tile of rows first_row + ``rows`` (``rows_in`` of them real) and output
    columns first_col + ``cols`` (``cols_in`` real), accumulated in float32."""
    acc = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
    inner = _tile_indices(BLOCK_K, LONG_ROWS)
    for k0 in range(0, K, BLOCK_K):
        inner_in = inner[None, :] < K - k0
        x = _load_input(x_ptr, first_row * K + k0, rows[:, None] * K + inner[None, :],
                        (rows[:, None] < rows_in) & inner_in, seed, param, CORRUPT).to(w_ptr.dtype.element_ty)
        w = tl.load(w_ptr + first_col * K + k0 + cols[:, None] * K + inner[None, :],
                    mask=(cols[:, None] < cols_in) & inner_in, other=0.0)
        acc += _dot(x, tl.trans(w), PRECISION, UPCAST)
    if HAS_BIAS:
        acc += tl.load(b_ptr + first_col + cols, mask=cols < cols_in, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit(do_not_specialize=["seed"])
def _linear_forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, z_ptr, M, N, K, seed, param,
                           ACT: tl.constexpr, CORRUPT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           SAVE_Z: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LONG_ROWS: tl.constexpr):
    first_row = tl.program_id(0).to(tl.int64) * BLOCK_M
    first_col = tl.program_id(1).to(tl.int64) * BLOCK_N
    rows, cols = _tile_indices(BLOCK_M, LONG_ROWS), _tile_indices(BLOCK_N, LONG_ROWS)
    rows_in, cols_in = _extent(first_row, M, BLOCK_M), _extent(first_col, N, BLOCK_N)
    z = _pre_activation(x_ptr, w_ptr, b_ptr, first_row, first_col, rows, cols, rows_in, cols_in, K, seed, param,
                        CORRUPT, HAS_BIAS, PRECISION, UPCAST, BLOCK_K, LONG_ROWS)
    out_mask = (rows[:, None] < rows_in) & (cols[None, :] < cols_in)
    out = first_row * N + first_col
    out_offsets = rows[:, None] * N + cols[None, :]
    tl.store(y_ptr + out + out_offsets, _activate(z, ACT).to(y_ptr.dtype.element_ty), mask=out_mask)
    if SAVE_Z:
        tl.store(z_ptr + out + out_offsets, z.to(z_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _times_activation_grad(grad, saved, ACT: tl.constexpr):
    """grad times d act / d z. ReLU selects instead of multiplying, as torch's backward does: a unit that
    is off passes 0 even when grad is NaN or inf, and a NaN output passes grad."""
    if ACT == 1:
        out = tl.where(saved <= 0, 0.0, grad)
    else:
        out = grad * _activation_grad(saved, ACT)
    return out


@triton.jit
def _grad_pre_activation(gy_ptr, saved_ptr, scale_ptr, start, offsets, mask, ACT: tl.constexpr,
                         HAS_SCALE: tl.constexpr):
    """dL/dz for a tile (``offsets`` from element ``start`` of the (M, N) gradient): the incoming gradient
    times the activation's derivative, in float32."""
    grad = tl.load(gy_ptr + start + offsets, mask=mask, other=0.0).to(tl.float32)
    if ACT != 0:
        grad = _times_activation_grad(grad, tl.load(saved_ptr + start + offsets, mask=mask, other=0.0).to(tl.float32),
                                      ACT)
    if HAS_SCALE:
        grad *= tl.load(scale_ptr).to(tl.float32)
    return grad


@triton.jit
def _grad_input_tile(pid_m, pid_k, gy_ptr, saved_ptr, w_ptr, gx_ptr, gz_ptr, scale_ptr, M, N, K, seed, param,
                     ACT: tl.constexpr, CORRUPT: tl.constexpr, HAS_SCALE: tl.constexpr, STORE_GZ: tl.constexpr,
                     PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, LONG_ROWS: tl.constexpr):
    """dx = dz W (times the kept mask of a mask-corrupted input), the (BLOCK_M x BLOCK_K) tile of row
    block pid_m and column block pid_k. With STORE_GZ the first column of tiles also writes dz (M, N),
    rounded as the dot takes it, for a weight gradient by matmul."""
    first_row = pid_m.to(tl.int64) * BLOCK_M
    first_col = pid_k.to(tl.int64) * BLOCK_K
    rows, cols = _tile_indices(BLOCK_M, LONG_ROWS), _tile_indices(BLOCK_K, LONG_ROWS)
    rows_in, cols_in = _extent(first_row, M, BLOCK_M), _extent(first_col, K, BLOCK_K)
    inner = _tile_indices(BLOCK_N, LONG_ROWS)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    w_start = first_col  # of the weight's rows n0 .., kept in int64 (n0 * K is not)
    for n0 in range(0, N, BLOCK_N):
        inner_in = inner < N - n0
        grad_z = _grad_pre_activation(gy_ptr, saved_ptr, scale_ptr, first_row * N + n0, rows[:, None] * N + inner[None, :],
                                      (rows[:, None] < rows_in) & inner_in[None, :], ACT, HAS_SCALE)
        w = tl.load(w_ptr + w_start + inner[:, None] * K + cols[None, :],
                    mask=inner_in[:, None] & (cols[None, :] < cols_in), other=0.0)
        if STORE_GZ:
            if pid_k == 0:
                tl.store(gz_ptr + first_row * N + n0 + rows[:, None] * N + inner[None, :],
                         grad_z.to(gz_ptr.dtype.element_ty), mask=(rows[:, None] < rows_in) & inner_in[None, :])
        acc += _dot(grad_z.to(w.dtype), w, PRECISION, UPCAST)
        w_start += BLOCK_N * K
    out_mask = (rows[:, None] < rows_in) & (cols[None, :] < cols_in)
    out = first_row * K + first_col
    out_offsets = rows[:, None] * K + cols[None, :]
    if CORRUPT == 1:
        acc = tl.where(philox_uniform(seed, out + out_offsets.to(tl.int64)) >= param, acc, 0.0)
    tl.store(gx_ptr + out + out_offsets, acc.to(gx_ptr.dtype.element_ty), mask=out_mask)


@triton.jit(do_not_specialize=["seed"])
def _linear_grad_input_kernel(gy_ptr, saved_ptr, w_ptr, gx_ptr, gz_ptr, scale_ptr, M, N, K, seed, param,
                              ACT: tl.constexpr, CORRUPT: tl.constexpr, HAS_SCALE: tl.constexpr,
                              STORE_GZ: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              LONG_ROWS: tl.constexpr):
    """A grid of (row blocks, column blocks) of _grad_input_tile."""
    _grad_input_tile(tl.program_id(0), tl.program_id(1), gy_ptr, saved_ptr, w_ptr, gx_ptr, gz_ptr, scale_ptr, M, N, K,
                     seed, param, ACT, CORRUPT, HAS_SCALE, STORE_GZ, PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K,
                     LONG_ROWS)


@triton.jit
def _grad_weight_tile(pid_n, pid_k, split, gy_ptr, saved_ptr, x_ptr, gw_ptr, gb_ptr, scale_ptr, M, N, K, seed, param,
                      rows_per_split, split_stride, ACT: tl.constexpr, CORRUPT: tl.constexpr, HAS_BIAS: tl.constexpr,
                      HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LONG_ROWS: tl.constexpr):
    """dW = dz^T x~ as the (BLOCK_N x BLOCK_K) tile (pid_n, pid_k) over the rows of ``split`` (x~
    regenerated), written at gw + split * split_stride; the first column of tiles writes db at
    gb + split * split_stride. _sum_splits_kernel adds the splits: dW reduces over the batch, and a layer
    of 256 x 32 has only 4 such tiles to keep a GPU busy."""
    first_out = pid_n.to(tl.int64) * BLOCK_N
    first_in = pid_k.to(tl.int64) * BLOCK_K
    outs, ins = _tile_indices(BLOCK_N, LONG_ROWS), _tile_indices(BLOCK_K, LONG_ROWS)
    outs_in, ins_in = _extent(first_out, N, BLOCK_N), _extent(first_in, K, BLOCK_K)
    rows = _tile_indices(BLOCK_M, LONG_ROWS)
    split = split.to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    first_row = split * rows_per_split
    stop = tl.minimum(first_row + rows_per_split, M)
    grad_offsets, x_offsets = rows[:, None] * N + outs[None, :], rows[:, None] * K + ins[None, :]
    outs_mask, ins_mask = outs[None, :] < outs_in, ins[None, :] < ins_in
    for m0 in range(first_row, stop, BLOCK_M):
        rows_in = (rows < _extent(m0, stop, BLOCK_M))[:, None]
        grad_z = _grad_pre_activation(gy_ptr, saved_ptr, scale_ptr, m0 * N + first_out, grad_offsets,
                                      rows_in & outs_mask, ACT, HAS_SCALE)
        x = _load_input(x_ptr, m0 * K + first_in, x_offsets, rows_in & ins_mask, seed, param, CORRUPT)
        acc += _dot(tl.trans(grad_z.to(x_ptr.dtype.element_ty)), x.to(x_ptr.dtype.element_ty), PRECISION, UPCAST)
        bias_acc += tl.sum(grad_z, axis=0)
    tl.store(gw_ptr + split * split_stride + first_out * K + first_in + outs[:, None] * K + ins[None, :],
             acc.to(gw_ptr.dtype.element_ty), mask=(outs[:, None] < outs_in) & ins_mask)
    if HAS_BIAS:
        if pid_k == 0:
            tl.store(gb_ptr + split * split_stride + first_out + outs, bias_acc.to(gb_ptr.dtype.element_ty),
                     mask=outs < outs_in)


@triton.jit(do_not_specialize=["seed"])
def _linear_grad_weight_kernel(gy_ptr, saved_ptr, x_ptr, gw_ptr, gb_ptr, scale_ptr, M, N, K, seed, param,
                               rows_per_split, split_stride,
                               ACT: tl.constexpr, CORRUPT: tl.constexpr, HAS_BIAS: tl.constexpr,
                               HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                               LONG_ROWS: tl.constexpr):
    """A grid of (output blocks, input blocks, splits) of _grad_weight_tile."""
    _grad_weight_tile(tl.program_id(0), tl.program_id(1), tl.program_id(2), gy_ptr, saved_ptr, x_ptr, gw_ptr, gb_ptr,
                      scale_ptr, M, N, K, seed, param, rows_per_split, split_stride, ACT, CORRUPT, HAS_BIAS, HAS_SCALE,
                      PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, LONG_ROWS)


@triton.jit(do_not_specialize=["seed"])
def _linear_grads_kernel(gy_ptr, saved_ptr, w_ptr, x_ptr, gx_ptr, gw_ptr, gb_ptr, scale_ptr, M, N, K, seed, param,
                         rows_per_split, split_stride,
                         ACT: tl.constexpr, CORRUPT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                         PRECISION: tl.constexpr, UPCAST: tl.constexpr, LONG_ROWS: tl.constexpr,
                         X_BLOCK_M: tl.constexpr, X_BLOCK_N: tl.constexpr, X_BLOCK_K: tl.constexpr,
                         W_BLOCK_M: tl.constexpr, W_BLOCK_N: tl.constexpr, W_BLOCK_K: tl.constexpr):
    """A layer's dX and dW in one launch, each with its own tiles (X_ and W_BLOCK_*): the first
    cdiv(M, X_BLOCK_M) * cdiv(K, X_BLOCK_K) programs take a _grad_input_tile each, the rest a
    _grad_weight_tile of a split, each in its own kernel's grid order (the first edge fastest). Both
    only read dY, so nothing orders them; one launch where a layer's backward took two."""
    pid = tl.program_id(0)
    row_blocks = tl.cdiv(M, X_BLOCK_M)
    input_programs = row_blocks * tl.cdiv(K, X_BLOCK_K)
    if pid < input_programs:
        _grad_input_tile(pid % row_blocks, pid // row_blocks, gy_ptr, saved_ptr, w_ptr, gx_ptr, gx_ptr, scale_ptr,
                         M, N, K, seed, param, ACT, CORRUPT, HAS_SCALE, False, PRECISION, UPCAST, X_BLOCK_M, X_BLOCK_N,
                         X_BLOCK_K, LONG_ROWS)
    else:
        weight_program = pid - input_programs
        out_blocks = tl.cdiv(N, W_BLOCK_N)
        tiles = out_blocks * tl.cdiv(K, W_BLOCK_K)
        tile = weight_program % tiles
        _grad_weight_tile(tile % out_blocks, tile // out_blocks, weight_program // tiles, gy_ptr, saved_ptr, x_ptr,
                          gw_ptr, gb_ptr, scale_ptr, M, N, K, seed, param, rows_per_split, split_stride, ACT, CORRUPT,
                          HAS_BIAS, HAS_SCALE, PRECISION, UPCAST, W_BLOCK_M, W_BLOCK_N, W_BLOCK_K, LONG_ROWS)


@triton.jit
def _sum_one_gradient(block, partials_ptr, gw_ptr, gb_ptr, splits, split_stride, weight_size, total_size,
                      BLOCK: tl.constexpr):
    """Elements [block * BLOCK, ...) < total_size of one gradient's splits (rows of split_stride floats:
    dW's weight_size, then db's) summed in float32 and stored in the gradients' dtype, to gw[i] or
    gb[i - weight_size]."""
    cols = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = cols < total_size
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    row = partials_ptr
    for _ in range(splits):
        acc += tl.load(row + cols, mask=in_range, other=0.0)
        row += split_stride  # a pointer step: split * split_stride may pass 2^31
    in_weight = cols < weight_size
    tl.store(gw_ptr + cols, acc.to(gw_ptr.dtype.element_ty), mask=in_range & in_weight)
    tl.store(gb_ptr + (cols - weight_size), acc.to(gb_ptr.dtype.element_ty), mask=in_range & ~in_weight)


@triton.jit
def _sum_splits_kernel(partials0, gw0, gb0, splits0, split_stride0, weight_size0, total_size0, end0,
                       partials1, gw1, gb1, splits1, split_stride1, weight_size1, total_size1, end1,
                       partials2, gw2, gb2, splits2, split_stride2, weight_size2, total_size2, end2,
                       partials3, gw3, gb3, splits3, split_stride3, weight_size3, total_size3,
                       GROUPS: tl.constexpr, BLOCK: tl.constexpr):
    """The weight gradients' splits added, for GROUPS (1 to SUM_GROUPS) gradients in one launch: programs
    [end{g-1}, end{g}) add gradient g's (_sum_one_gradient). A chain's backward adds all its layers' so,
    where each layer's took a launch; the arguments of the groups past GROUPS are never read."""
    block = tl.program_id(0)
    if block < end0:
        _sum_one_gradient(block, partials0, gw0, gb0, splits0, split_stride0, weight_size0, total_size0, BLOCK)
    if GROUPS > 1:
        if (block >= end0) & (block < end1):
            _sum_one_gradient(block - end0, partials1, gw1, gb1, splits1, split_stride1, weight_size1, total_size1,
                              BLOCK)
    if GROUPS > 2:
        if (block >= end1) & (block < end2):
            _sum_one_gradient(block - end1, partials2, gw2, gb2, splits2, split_stride2, weight_size2, total_size2,
                              BLOCK)
    if GROUPS > 3:
        if block >= end2:
            _sum_one_gradient(block - end2, partials3, gw3, gb3, splits3, split_stride3, weight_size3, total_size3,
                              BLOCK)


@triton.jit
def _linear_loss_kernel(h_ptr, w_ptr, b_ptr, t_ptr, gz_ptr, partial_ptr, M, N, K, inv_count,
                        OUT_ACT: tl.constexpr, LOSS: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                        UPCAST: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LONG_ROWS: tl.constexpr):
    """The last layer and the loss: each tile writes dL/dz and its share of the loss, not the output."""
    first_row = tl.program_id(0).to(tl.int64) * BLOCK_M
    first_col = tl.program_id(1).to(tl.int64) * BLOCK_N
    rows, cols = _tile_indices(BLOCK_M, LONG_ROWS), _tile_indices(BLOCK_N, LONG_ROWS)
    rows_in, cols_in = _extent(first_row, M, BLOCK_M), _extent(first_col, N, BLOCK_N)
    z = _pre_activation(h_ptr, w_ptr, b_ptr, first_row, first_col, rows, cols, rows_in, cols_in, K, 0, 0.0, 0,
                        HAS_BIAS, PRECISION, UPCAST, BLOCK_K, LONG_ROWS)
    mask = (rows[:, None] < rows_in) & (cols[None, :] < cols_in)
    start = first_row * N + first_col
    offsets = rows[:, None] * N + cols[None, :]
    target = tl.load(t_ptr + start + offsets, mask=mask, other=0.0).to(tl.float32)
    if LOSS == 1:  # BCE with logits, the stable form
        loss = tl.maximum(z, 0.0) - z * target + tl.log(1.0 + tl.exp(-tl.abs(z)))
        grad_z = (_sigmoid(z) - target) * inv_count
    else:
        out = _activate(z, OUT_ACT)
        diff = out - target
        loss = diff * diff
        if OUT_ACT == 5:
            grad_z = _times_activation_grad(2.0 * diff * inv_count, z, OUT_ACT)
        else:
            grad_z = _times_activation_grad(2.0 * diff * inv_count, out, OUT_ACT)
    tl.store(gz_ptr + start + offsets, grad_z.to(gz_ptr.dtype.element_ty), mask=mask)
    partial = tl.sum(tl.sum(tl.where(mask, loss, 0.0), axis=1), axis=0) * inv_count  # the launcher adds them
    tl.store(partial_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), partial)


# --- launchers -----------------------------------------------------------------------------------

def _block(size: int, largest: int) -> int:
    """A power-of-two tile edge: at least 16 (tl.dot's minimum), at most ``largest``."""
    return max(16, min(largest, next_power_of_2(size)))


# Warps of a linear kernel whose output tile has this many elements or more. A 64 x 64 float32 tile in
# 4 warps took all 255 registers per thread and spilled (FMA dots), which leaves room for 2 programs
# per SM; in 8 warps it takes 112-177 and none spill (tests/mlp/test_compiled_kernels.py).
WIDE_TILE, WIDE_TILE_WARPS = 64 * 64, 8


def _warps(tile_rows: int, tile_cols: int) -> int:
    return WIDE_TILE_WARPS if tile_rows * tile_cols >= WIDE_TILE else 4


# In-tile offsets are 32-bit unless a row of x, W or y has this many elements (tiles have at most 256 rows).
LONG_ROW = 2**31 // 256


def _long_rows(*row_lengths: int) -> bool:
    return max(row_lengths) >= LONG_ROW


def _precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: aefast.mlp.precision's setting (by default torch's TF32 switch)."""
    return dot_precision(dtype)


def _operands(dtype: torch.dtype) -> str:
    """What a kernel's dots multiply: "16-bit", or float32 in its dot precision ("ieee", "tf32", "tf32x3")."""
    return _precision(dtype) if dtype == torch.float32 else "16-bit"


# Whether this module's kernels run in Triton's interpreter: triton.jit decides it when it defines them,
# at import, so it is read once here rather than from the environment on every launch.
_INTERPRETED = _backends.triton_interpreted()


def _upcast(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and _INTERPRETED


def _codes(activation, corruption):
    return ACTIVATION_CODES[activation], CORRUPTION_CODES[corruption]


# --- tiles of the linear kernels, and their tuning on the GPU -------------------------------------

@dataclass(frozen=True)
class Tiles:
    """A linear kernel's launch: its BLOCK_M, BLOCK_N, BLOCK_K and warps."""
    block_m: int
    block_n: int
    block_k: int
    warps: int


# The tiles each linear kernel may take, by the operands of its dots: the largest (BLOCK_M, BLOCK_N,
# BLOCK_K), each edge shrunk to the problem's (a power of two). The first is the default; on a GPU a
# large problem times them all once (_pick_tiles). Each compiles for sm_90 without spilling, with the
# heaviest epilogue and masked corruption, on triton 3.6 and 3.9, as a launch on torch's tensors
# compiles it (aligned pointers, sizes divisible by 16; tests/mlp/test_compiled_kernels.py). Left out
# because they spill with triton 3.6 or 3.9: 128 x 256 forward tiles; the IEEE and 3xTF32 forward's
# 128 x 128 x 64 and IEEE's 128 x 128; the loss's 128 x 128 but in 16 bits; dX's 128 x 64 x 128 and,
# but in IEEE, its 128 x 32 x 128; dW's 64 x 128 x 128 and IEEE's 32 x 64 x 128 (8 bytes, triton 3.9).
# Shrunk to a narrow layer's widths, or at sizes not divisible by 16, a few tiles spill a few bytes a
# thread, which the checks above (at each list's sizes) do not see: with triton 3.9 and an activation,
# float32 dW at 32 x 32 x 16 (IEEE, 16 bytes) or 32 x 32 x 32 (IEEE and 3xTF32, 8), dX writing dZ at
# 64 x 32 x 16 (IEEE, 8); with 3.6, IEEE dW at 32 x 64 x 64 with a ReLU on 100 x 100 layers (8). The
# benchmarks' layers compile none such (tests/test_launch_path.py holds the rest to 16 bytes).
# BLOCK_M/N/K name the kernel's parameters: for "grad_input" BLOCK_N is the reduced edge and the output
# tile is BLOCK_M x BLOCK_K; for "grad_weight" BLOCK_M is reduced (the batch), the output BLOCK_N x BLOCK_K.
_FORWARD = [(64, 64, 32), (128, 64, 32), (64, 128, 32)]
_BIG_FORWARD = [(128, 128, 32), (128, 128, 64)]
_GRAD_INPUT = [(64, 32, 64), (64, 32, 128), (128, 32, 64), (64, 64, 64)]
_GRAD_WEIGHT = [(32, 64, 64), (32, 64, 128), (32, 128, 64), (32, 128, 128), (64, 64, 64)]
LINEAR_TILES = {
    "forward": {"16-bit": _FORWARD + _BIG_FORWARD, "tf32": _FORWARD + _BIG_FORWARD,
                "tf32x3": _FORWARD + _BIG_FORWARD[:1], "ieee": _FORWARD},
    "loss": {"16-bit": _FORWARD + _BIG_FORWARD[:1], "tf32": _FORWARD, "tf32x3": _FORWARD, "ieee": _FORWARD},
    "grad_input": {"16-bit": _GRAD_INPUT, "tf32": _GRAD_INPUT, "tf32x3": _GRAD_INPUT,
                   "ieee": _GRAD_INPUT + [(128, 32, 128)]},
    # dX writing dZ too (the weight gradient by matmul): IEEE's 128 x 32 x 128 then spills.
    "grad_input_dz": {"16-bit": _GRAD_INPUT, "tf32": _GRAD_INPUT, "tf32x3": _GRAD_INPUT, "ieee": _GRAD_INPUT},
    "grad_weight": {"16-bit": _GRAD_WEIGHT, "tf32": _GRAD_WEIGHT, "tf32x3": _GRAD_WEIGHT,
                    "ieee": [tile for tile in _GRAD_WEIGHT if tile != (32, 64, 128)]},
}
# Which two of (M, N, K) a kernel's output tile spans: it takes WIDE_TILE_WARPS from WIDE_TILE elements.
_OUTPUT_EDGES = {"forward": (0, 1), "loss": (0, 1), "grad_input": (0, 2), "grad_input_dz": (0, 2),
                 "grad_weight": (1, 2)}


def fit_tiles(kind: str, largest: tuple[int, int, int], sizes: tuple[int, int, int]) -> Tiles:
    """Tiles of at most ``largest`` for kernel ``kind`` on a problem of (M, N, K) = ``sizes``."""
    edges = [_block(size, cap) for size, cap in zip(sizes, largest)]
    return Tiles(*edges, warps=_warps(*(edges[i] for i in _OUTPUT_EDGES[kind])))


def linear_tiles(kind: str, operands: str, sizes: tuple[int, int, int]) -> list[Tiles]:
    """The distinct tiles of kernel ``kind`` for a problem of (M, N, K) = ``sizes``, the default first."""
    return list(_candidates(kind, operands, sizes))


@functools.lru_cache(maxsize=4096)
def _candidates(kind: str, operands: str, sizes: tuple[int, int, int]) -> tuple[Tiles, ...]:
    """linear_tiles, remembered: every launch asks (building them took about 30 us of host time, a
    tenth of a training step's on the GPU over its eleven launches)."""
    out = []
    for largest in LINEAR_TILES[kind][operands]:
        tiles = fit_tiles(kind, largest, sizes)
        if tiles not in out:
            out.append(tiles)
    return tuple(out)


# Problems of fewer multiply-adds take the default tiles: tuning compiles and times every candidate
# once (seconds), which a small layer would not win back.
TUNE_MIN_WORK = 2**28
_tuned: dict[tuple, Tiles | str] = {}  # tiles by problem, and the weight gradient's method


def _tuning_on(device: torch.device) -> bool:
    """On a GPU, unless AEFAST_TUNE=0."""
    return device.type == "cuda" and os.environ.get("AEFAST_TUNE", "1") != "0"


def _capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream (timing would break it)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _time_launch(launch) -> float:
    """Milliseconds of one launch (median of a short run; the first call, which compiles, is not timed)."""
    return do_bench(launch, warmup=5, rep=20, return_mode="median")


def _fastest(kind: str, operands: str, sizes: tuple[int, int, int], device: torch.device, choices: tuple, run):
    """Which of ``choices`` to take (``run(choice)`` runs the problem that way once, writing only its
    outputs): the first, or on a GPU for a large problem the fastest, timed once per (kind, operands,
    N, K, M rounded up to a power of two) and remembered for the process (not timed while a CUDA graph
    is captured: the first runs then). Nothing is built per call but the key: every launch asks."""
    rows, n, k = sizes
    if len(choices) == 1 or rows * n * k < TUNE_MIN_WORK or not _tuning_on(device):
        return choices[0]
    key = (kind, operands, next_power_of_2(rows), n, k, device.index)
    if key not in _tuned:
        if _capturing(device):
            return choices[0]
        with _split_sums_at_once():
            times = {choice: _time_launch(functools.partial(run, choice)) for choice in choices}
        _tuned[key] = min(times, key=times.get)
    return _tuned[key]


def _pick_tiles(kind: str, operands: str, sizes: tuple[int, int, int], device: torch.device, launch_tiles) -> Tiles:
    """The tiles to launch kernel ``kind`` with (``_fastest`` of its candidates, the default first);
    ``launch_tiles(tiles)`` runs the kernel (it must only write its outputs)."""
    return _fastest(kind, operands, sizes, device, _candidates(kind, operands, sizes), launch_tiles)


# --- the linear launchers ---------------------------------------------------------------------------

def linear_forward(x, weight, bias, activation, corruption, param, seed):
    M, K = x.shape
    N = weight.shape[0]
    act, corrupt = _codes(activation, corruption)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    z = torch.empty(M, N, dtype=x.dtype, device=x.device) if act == _GELU else y.new_empty(0)

    def launch_tiles(tiles: Tiles):
        launch(_linear_forward_kernel, (cdiv(M, tiles.block_m), cdiv(N, tiles.block_n)),
            x, weight, weight if bias is None else bias, y, y if z.numel() == 0 else z, M, N, K, seed, param,
            ACT=act, CORRUPT=corrupt, HAS_BIAS=bias is not None, SAVE_Z=act == _GELU, PRECISION=_precision(x.dtype),
            UPCAST=_upcast(x.dtype), BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
            LONG_ROWS=_long_rows(N, K), num_warps=tiles.warps, **_backends.TRITON_LAUNCH)
    launch_tiles(_pick_tiles("forward", _operands(x.dtype), (M, N, K), x.device, launch_tiles))
    return y, z


class _WeightGradOutputs(NamedTuple):
    """A weight-gradient launch's grid (output tiles), its split of the batch, the gradients it returns
    (grad_b is grad_w where there is no bias) and where its kernel writes them (out_w, out_b: the
    gradients themselves, or with splits the float32 partial sums that _sum_splits_kernel adds)."""
    grid: tuple[int, int]
    rows_per_split: int
    splits: int
    split_stride: int
    grad_w: torch.Tensor
    grad_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor


def linear_backward(grad_y, x, weight, bias, y, saved_z, activation, corruption, param, seed, grad_scale,
                    need_input_grad):
    """(dx or an empty tensor, dW, db or an empty tensor)."""
    M, K = x.shape
    N = weight.shape[0]
    act, corrupt = _codes(activation, corruption)
    saved = saved_z if act == _GELU else y
    scale = grad_scale if grad_scale is not None else grad_y
    common = dict(ACT=act, CORRUPT=corrupt, HAS_SCALE=grad_scale is not None, PRECISION=_precision(x.dtype),
                  UPCAST=_upcast(x.dtype), LONG_ROWS=_long_rows(N, K), **_backends.TRITON_LAUNCH)
    operands = _operands(x.dtype)
    grad_x = torch.empty_like(x) if need_input_grad else x.new_empty(0)

    def launch_input(tiles: Tiles, grad_z: torch.Tensor | None = None):
        launch(_linear_grad_input_kernel, (cdiv(M, tiles.block_m), cdiv(K, tiles.block_k)),
            grad_y, saved, weight, grad_x, grad_x if grad_z is None else grad_z, scale, M, N, K, seed, param,
            STORE_GZ=grad_z is not None, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
            num_warps=tiles.warps, **common)

    def weight_outputs(tiles: Tiles) -> _WeightGradOutputs:
        grid = (cdiv(N, tiles.block_n), cdiv(K, tiles.block_k))
        rows_per_split, splits = _weight_grad_splits(M, tiles.block_m, grid[0] * grid[1], x.device)
        grad_w = torch.empty_like(weight)
        grad_b = torch.empty_like(bias) if bias is not None else grad_w  # (no bias: never written, not returned)
        if splits == 1:  # written in place, in the weight's dtype
            return _WeightGradOutputs(grid, rows_per_split, splits, 0, grad_w, grad_b, grad_w, grad_b)
        # float32 partial sums, a row of dW then db per split, added by _sum_splits_kernel
        split_stride = N * K + (N if bias is not None else 0)
        partials = torch.empty(splits, split_stride, dtype=torch.float32, device=x.device)
        out_b = partials[0, N * K:] if bias is not None else partials
        return _WeightGradOutputs(grid, rows_per_split, splits, split_stride, grad_w, grad_b, partials, out_b)

    def finished(outputs: _WeightGradOutputs):
        """(dW, db or an empty tensor), once the launch has written ``outputs`` (the splits' sum queued)."""
        if outputs.splits > 1:
            _add_splits(SplitSum(outputs.out_w, outputs.grad_w, outputs.grad_b, outputs.splits, outputs.split_stride,
                                 N * K, outputs.split_stride))
        return outputs.grad_w, outputs.grad_b if bias is not None else weight.new_empty(0)

    def launch_weight(tiles: Tiles):
        out = weight_outputs(tiles)
        launch(_linear_grad_weight_kernel, (*out.grid, out.splits),
            grad_y, saved, x, out.out_w, out.out_b, scale, M, N, K, seed, param, out.rows_per_split, out.split_stride,
            HAS_BIAS=bias is not None, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
            num_warps=tiles.warps, **common)
        return finished(out)

    def launch_both(input_tiles: Tiles, weight_tiles: Tiles):
        """dX and dW in one launch of _linear_grads_kernel, unchecked for spills as the linear kernels are
        (_Launch)."""
        out = weight_outputs(weight_tiles)
        input_programs = cdiv(M, input_tiles.block_m) * cdiv(K, input_tiles.block_k)
        launch(_linear_grads_kernel, (input_programs + out.grid[0] * out.grid[1] * out.splits,),
            grad_y, saved, weight, x, grad_x, out.out_w, out.out_b, scale, M, N, K, seed, param, out.rows_per_split,
            out.split_stride, HAS_BIAS=bias is not None, X_BLOCK_M=input_tiles.block_m, X_BLOCK_N=input_tiles.block_n,
            X_BLOCK_K=input_tiles.block_k, W_BLOCK_M=weight_tiles.block_m, W_BLOCK_N=weight_tiles.block_n,
            W_BLOCK_K=weight_tiles.block_k, num_warps=max(input_tiles.warps, weight_tiles.warps), **common)
        return finished(out)

    def by_kernel():
        weight_tiles = _pick_tiles("grad_weight", operands, (M, N, K), x.device, launch_weight)
        if not need_input_grad:
            return launch_weight(weight_tiles)
        input_tiles = _pick_tiles("grad_input", operands, (M, N, K), x.device, launch_input)

        def separately():
            launch_input(input_tiles)
            return launch_weight(weight_tiles)

        def together():
            return launch_both(input_tiles, weight_tiles)
        return together() if _grads_launches((M, N, K), operands, x.device, together, separately) == 1 else separately()


    def by_matmul():
        if act == 0:  # dZ is dY (times the loss's scale, applied after): none to write, no R x N buffer
            if need_input_grad:
                launch_input(_pick_tiles("grad_input", operands, (M, N, K), x.device, launch_input))
            grad_w, grad_b = torch.mm(grad_y.t(), x), (grad_y.sum(0) if bias is not None else weight.new_empty(0))
            return (grad_w, grad_b) if grad_scale is None else (grad_w.mul_(grad_scale), grad_b.mul_(grad_scale))
        grad_z = torch.empty(M, N, dtype=x.dtype, device=x.device)
        launch_with_dz = functools.partial(launch_input, grad_z=grad_z)
        launch_with_dz(_pick_tiles("grad_input_dz", operands, (M, N, K), x.device, launch_with_dz))
        return torch.mm(grad_z.t(), x), (grad_z.sum(0) if bias is not None else weight.new_empty(0))

    matmul_possible = need_input_grad and corrupt == 0 and (x.dtype != torch.float32 or get_fp32_precision() == "torch")
    if matmul_possible and _weight_grad_method((M, N, K), operands, x.device, by_kernel, by_matmul) == "matmul":
        grad_w, grad_b = by_matmul()
    else:
        grad_w, grad_b = by_kernel()
    return grad_x, grad_w, grad_b


# How a layer's weight gradient is computed where it may be either way (its dX is computed, its input
# is not corrupted, and float32 products follow torch's setting as cuBLAS does): "kernel", the fused
# dW kernel (the activation's derivative applied to dY in its loads, the batch split over programs);
# "matmul", dZ written by the dX kernel beside dX (for a layer without activation, such as the fused
# loss's, dZ is dY itself, times the loss's scale after: no buffer the size of dY), then torch.mm and
# a column sum (cuBLAS: the H200 run of 2026-12-05 timed the fused kernel at about 40 TFLOPS in
# bfloat16, two thirds of the autoencoder's backward); "auto", on a GPU the faster of the two for a
# large problem (timed once, as the tiles are), else the kernel.
WEIGHT_GRAD_METHODS = ("auto", "kernel", "matmul")
WEIGHT_GRAD = "auto"


def _weight_grad_method(sizes: tuple[int, int, int], operands: str, device: torch.device, by_kernel,
                        by_matmul) -> str:
    """WEIGHT_GRAD, resolved for a problem of (M, N, K) = ``sizes``: ``by_kernel()`` and ``by_matmul()``
    each run the whole backward one way (they must only write their outputs)."""
    if WEIGHT_GRAD not in WEIGHT_GRAD_METHODS:
        raise ValueError(f"WEIGHT_GRAD must be one of {WEIGHT_GRAD_METHODS}, got {WEIGHT_GRAD!r}")
    if WEIGHT_GRAD != "auto":
        return WEIGHT_GRAD
    return _fastest("weight_grad", operands, sizes, device, WEIGHT_GRAD_METHODS[1:],
                    lambda method: by_kernel() if method == "kernel" else by_matmul())


# How a layer's dX and dW kernels launch where both run on the kernels: 1, together in one launch
# (_linear_grads_kernel, each with the tiles its own kernel takes, in the more warps of the two); 2, a
# launch each; "auto", 2 for IEEE float32, else on a GPU the faster for a large problem (timed once, as
# the tiles are), else 1. One launch saves the host a launch per layer (about 12 us of Triton's launch
# path a launch on the CI machine, docs/gpu_notes.md) and lets dW's few tiles run beside dX's, in the
# registers of the heavier: IEEE float32's FMA tiles, each near a thread's registers alone, spilled
# 8-24 bytes a thread joined at small layers' sizes (tests/test_launch_path.py's small run, triton 3.9).
GRADS_LAUNCHES_CHOICES = ("auto", 1, 2)
GRADS_LAUNCHES = "auto"


def _grads_launches(sizes: tuple[int, int, int], operands: str, device: torch.device, together, separately) -> int:
    """GRADS_LAUNCHES, resolved for a problem of (M, N, K) = ``sizes``: ``together()`` and ``separately()``
    each run dX and dW that way (they must only write their outputs)."""
    if GRADS_LAUNCHES not in GRADS_LAUNCHES_CHOICES:
        raise ValueError(f"GRADS_LAUNCHES must be one of {GRADS_LAUNCHES_CHOICES}, got {GRADS_LAUNCHES!r}")
    if GRADS_LAUNCHES != "auto":
        return GRADS_LAUNCHES
    if operands == "ieee":
        return 2
    return _fastest("grads_launches", operands, sizes, device, GRADS_LAUNCHES_CHOICES[1:],
                    lambda launches: together() if launches == 1 else separately())


# Programs the weight gradient aims at on a GPU, per SM (two waves), and the fewest row blocks a split
# keeps (its partial sum, N x K floats written and added, costs as much as about one row block).
SPLIT_PROGRAMS_PER_SM, SPLIT_MIN_ROW_BLOCKS = 2, 4
SUM_SPLITS_BLOCK = 1024  # elements of dW and db a program of _sum_splits_kernel adds over the splits
INTERPRETER_SPLIT_PROGRAMS = 4  # so that the tests reach the split path with small shapes


# --- the weight gradients' split sums, several in one launch ------------------------------------------
# A weight gradient reduced over the batch in splits (the linear dW kernel, the narrow backward) leaves
# float32 partial sums for _sum_splits_kernel. A chain's backward (ops.fused_chain) gathers its layers'
# (split_sums_gathered) and adds them after its last layer, SUM_GROUPS to a launch: the autoencoder's
# training step at batch 2^14 launched four, one per layer, and now one. Elsewhere each adds its own.

SUM_GROUPS = 4  # the most gradients one _sum_splits_kernel launch adds (its argument groups)


@dataclass(frozen=True)
class SplitSum:
    """One gradient's float32 partial sums (``splits`` rows of ``split_stride``: dW's ``weight_size``
    elements, then db's up to ``total_size``) and the gradients they add up to."""
    partials: torch.Tensor
    grad_w: torch.Tensor
    grad_b: torch.Tensor  # grad_w where there is no bias (total_size == weight_size: never written)
    splits: int
    split_stride: int
    weight_size: int
    total_size: int


_gathered = threading.local()  # .sums: the list a split_sums_gathered block fills on this thread, or None


def _add_splits(split_sum: SplitSum) -> None:
    """Adds the splits now, or at the end of the split_sums_gathered block this thread is in."""
    sums = getattr(_gathered, "sums", None)
    if sums is None:
        _launch_split_sums([split_sum])
    else:
        sums.append(split_sum)


@contextlib.contextmanager
def _sums_held_in(sums: list[SplitSum] | None):
    """Inside, this thread's launchers append their split sums to ``sums`` (None: they add them at
    once); on leaving, the enclosing block's list (or None) again."""
    outer = getattr(_gathered, "sums", None)
    _gathered.sums = sums
    try:
        yield
    finally:
        _gathered.sums = outer


@contextlib.contextmanager
def split_sums_gathered():
    """Inside, the launchers' split sums wait; they run on leaving, in as few launches as SUM_GROUPS
    allows (in the order they came, on the current stream). The gradients hold nothing before then.
    Nothing runs if the block raises."""
    sums = []
    with _sums_held_in(sums):
        yield
    for first in range(0, len(sums), SUM_GROUPS):
        _launch_split_sums(sums[first:first + SUM_GROUPS])


def _split_sums_at_once():
    """Inside, split sums run as they come: a tuner's timed runs must do the whole work of each way."""
    return _sums_held_in(None)


def _launch_split_sums(sums: list[SplitSum]) -> None:
    """One _sum_splits_kernel launch for up to SUM_GROUPS gradients (on their device)."""
    arguments, end = [], 0
    for split_sum in sums:
        end += cdiv(split_sum.total_size, SUM_SPLITS_BLOCK)
        arguments += [split_sum.partials, split_sum.grad_w, split_sum.grad_b, split_sum.splits,
                      split_sum.split_stride, split_sum.weight_size, split_sum.total_size, end]
    unused = arguments[:8] * (SUM_GROUPS - len(sums))  # the first group's again, never read
    with _backends.on_device_of(sums[0].partials):
        launch(_sum_splits_kernel, (end,), *(arguments + unused)[:8 * SUM_GROUPS - 1], GROUPS=len(sums),
               BLOCK=SUM_SPLITS_BLOCK, **_backends.TRITON_LAUNCH)


def _device_programs(device: torch.device, per_sm: int, interpreted: int) -> int:
    """Programs that fill ``device``: ``per_sm`` per SM on a GPU, ``interpreted`` in the CPU interpreter."""
    if device.type == "cuda":
        return per_sm * _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    return interpreted


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    """The SMs of GPU ``device_index``, asked once (every backward launch wants them)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _weight_grad_splits(rows: int, block_m: int, tiles: int, device: torch.device) -> tuple[int, int]:
    """(rows per split, splits) of the weight gradient's batch reduction: enough programs to fill the
    device, each over a whole number of row blocks."""
    target = _device_programs(device, SPLIT_PROGRAMS_PER_SM, INTERPRETER_SPLIT_PROGRAMS)
    most = max(1, rows // (SPLIT_MIN_ROW_BLOCKS * block_m))
    splits = max(1, min(most, cdiv(target, tiles)))
    rows_per_split = max(1, cdiv(cdiv(rows, splits), block_m)) * block_m
    return rows_per_split, max(1, cdiv(rows, rows_per_split))  # one split, writing zeros, for no rows


def linear_loss_forward(h, weight, bias, target, output_activation, loss):
    M, K = h.shape
    N = weight.shape[0]
    grad_z = torch.empty(M, N, dtype=h.dtype, device=h.device)
    if grad_z.numel() == 0:  # no tiles to launch; the mean of nothing
        return torch.full((), math.nan, dtype=torch.float32, device=h.device), grad_z

    def launch_tiles(tiles: Tiles):
        grid = (cdiv(M, tiles.block_m), cdiv(N, tiles.block_n))
        partial = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=h.device)
        launch(_linear_loss_kernel, grid,
            h, weight, weight if bias is None else bias, target, grad_z, partial, M, N, K,
            reference.mean_factor(M * N),
            OUT_ACT=ACTIVATION_CODES[output_activation], LOSS=LOSS_CODES[loss], HAS_BIAS=bias is not None,
            PRECISION=_precision(h.dtype), UPCAST=_upcast(h.dtype), BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
            BLOCK_K=tiles.block_k, LONG_ROWS=_long_rows(N, K), num_warps=tiles.warps, **_backends.TRITON_LAUNCH)
        return partial
    partial = launch_tiles(_pick_tiles("loss", _operands(h.dtype), (M, N, K), h.device, launch_tiles))
    return partial.sum(), grad_z  # each tile's share of the mean


# --- a narrow stretch: consecutive layers of widths <= 128 in one kernel per row block --------------
#
# The stretch's widths are compile-time constants (one compilation per architecture): with the row
# strides known, loads and stores are vectorized and full-width tiles need no column mask. With widths
# read from memory at run time, every element took its own 64-bit address, and the 64-wide tiles'
# addresses alone took 64 registers per thread.

MAX_NARROW_WIDTH = 128


@functools.lru_cache(maxsize=None)
def narrow_constants(dims: tuple[int, ...]) -> dict:
    """The layout constexprs of a stretch: DIMS, each layer's weight and bias offset in the packed
    parameters, and each saved activation's offset in the packed activations in units of rows (the
    activations after layer i start at row M * ACT_COLS[i] of a width-1 view)."""
    w_offsets, b_offsets, act_cols = [0], [0], [0]
    for width_in, width_out in zip(dims[:-1], dims[1:]):
        w_offsets.append(w_offsets[-1] + width_in * width_out)
        b_offsets.append(b_offsets[-1] + width_out)
        act_cols.append(act_cols[-1] + width_out)
    return dict(DIMS=tuple(dims), W_OFFSETS=tuple(w_offsets[:-1]), B_OFFSETS=tuple(b_offsets[:-1]),
                ACT_COLS=tuple(act_cols[:-2] or [0]), NUM_LAYERS=len(dims) - 1)


@triton.jit
def _row_tile_mask(rows_valid, cols, WIDTH: tl.constexpr, BLOCK_D: tl.constexpr):
    """The mask of a (rows x BLOCK_D) tile of a WIDTH-wide matrix: no column test when WIDTH fills the
    tile, so that the mask stays constant along a row and the row's accesses vectorize."""
    if WIDTH == BLOCK_D:
        mask = tl.broadcast_to(rows_valid, (rows_valid.shape[0], BLOCK_D))
    else:
        mask = rows_valid & (cols[None, :] < WIDTH)
    return mask


@triton.jit
def _narrow_weight_mask(cols, WIDTH_IN: tl.constexpr, WIDTH_OUT: tl.constexpr):
    return (cols[:, None] < WIDTH_OUT) & (cols[None, :] < WIDTH_IN)


@triton.jit
def _narrow_weight(w_ptr, cols, WIDTH_IN: tl.constexpr, WIDTH_OUT: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (WIDTH_OUT x WIDTH_IN) weight at ``w_ptr`` as a zero-padded (BLOCK_D x BLOCK_D) tile."""
    offsets = cols[:, None] * WIDTH_IN + cols[None, :]
    if WIDTH_IN == BLOCK_D and WIDTH_OUT == BLOCK_D:
        w = tl.load(w_ptr + offsets)
    else:
        w = tl.load(w_ptr + offsets, mask=_narrow_weight_mask(cols, WIDTH_IN, WIDTH_OUT), other=0.0)
    return w


@triton.jit
def _narrow_dot_quarter(h_quarter, w_ptr, FIRST: tl.constexpr, WIDTH_IN: tl.constexpr, WIDTH_OUT: tl.constexpr,
                        BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """h_quarter @ W[:, FIRST::4]^T: the share of input columns FIRST, FIRST + 4, ... of h @ W^T."""
    outs, ins = tl.arange(0, BLOCK_D), FIRST + tl.arange(0, BLOCK_D // 4) * 4
    w = tl.load(w_ptr + outs[:, None] * WIDTH_IN + ins[None, :],
                mask=(outs[:, None] < WIDTH_OUT) & (ins[None, :] < WIDTH_IN), other=0.0)
    return _dot(h_quarter.to(w.dtype), tl.trans(w), PRECISION, UPCAST)


@triton.jit
def _narrow_dot_in_quarters(h, w_ptr, WIDTH_IN: tl.constexpr, WIDTH_OUT: tl.constexpr, BLOCK_D: tl.constexpr,
                            PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """h @ W^T for a (WIDTH_OUT x WIDTH_IN) weight at ``w_ptr``, as four dots a quarter as deep, each over
    the input columns 4j + q of one q. An IEEE float32 dot runs on the FMA units and holds both operands
    whole in registers: 128 deep it spilled at any rows (in halves too), 64 deep it took 156 registers
    per thread at 32 rows; in quarters, 190 and 112 (sm_90, triton 3.9; 223 and 127 with 3.6)."""
    QUARTER: tl.constexpr = BLOCK_D // 4
    h_even, h_odd = tl.split(tl.reshape(h, (h.shape[0], QUARTER, 2, 2)))  # columns 4j + 2a and 4j + 2a + 1
    h_0, h_2 = tl.split(h_even)
    h_1, h_3 = tl.split(h_odd)
    z = _narrow_dot_quarter(h_0, w_ptr, 0, WIDTH_IN, WIDTH_OUT, BLOCK_D, PRECISION, UPCAST)
    z += _narrow_dot_quarter(h_1, w_ptr, 1, WIDTH_IN, WIDTH_OUT, BLOCK_D, PRECISION, UPCAST)
    z += _narrow_dot_quarter(h_2, w_ptr, 2, WIDTH_IN, WIDTH_OUT, BLOCK_D, PRECISION, UPCAST)
    return z + _narrow_dot_quarter(h_3, w_ptr, 3, WIDTH_IN, WIDTH_OUT, BLOCK_D, PRECISION, UPCAST)


@triton.jit
def _saved_activations(acts_ptr, M, ACT_COLS: tl.constexpr, INDEX: tl.constexpr):
    """Where the activations after layer INDEX start in the packed ``acts``. M may be a constant (Triton
    makes an argument of 1 one), so it is cast, not converted with ``.to``."""
    return acts_ptr + tl.cast(M, tl.int64) * ACT_COLS[INDEX]


@triton.jit
def _narrow_rows(chunk, block, M, rows, CHUNK_ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """(first row, which of ``rows`` are real) of row block ``block`` of chunk ``chunk``."""
    first_row = tl.cast(chunk, tl.int64) * CHUNK_ROWS + block * BLOCK_M
    return first_row, rows[:, None] < _extent(first_row, M, BLOCK_M)


@triton.jit
def _narrow_loss_rows(z, t_ptrs, valid, grad_ptrs, grad_scale, LAST_ACT: tl.constexpr, LOSS: tl.constexpr,
                      WRITE_GRAD: tl.constexpr):
    """The summed loss of a row block of the last layer's pre-activation z against the target at
    ``t_ptrs`` (as _linear_loss_kernel computes it); when WRITE_GRAD, also grad_scale times d loss / d z
    at ``grad_ptrs`` (float32, zero outside ``valid``)."""
    target = tl.load(t_ptrs, mask=valid, other=0.0).to(tl.float32)
    if LOSS == 1:  # BCE with logits, the stable form
        loss = tl.maximum(z, 0.0) - z * target + tl.log(1.0 + tl.exp(-tl.abs(z)))
        grad_z = _sigmoid(z) - target
    else:
        out = _activate(z, LAST_ACT)
        diff = out - target
        loss = diff * diff
        grad_z = _times_activation_grad(2.0 * diff, out, LAST_ACT)
    if WRITE_GRAD:
        tl.store(grad_ptrs, tl.where(valid, grad_z * grad_scale, 0.0))
    return tl.sum(tl.sum(tl.where(valid, loss, 0.0), axis=1), axis=0)


@triton.jit
def _narrow_forward_rows(x_ptr, w_ptr, b_ptr, out_ptr, acts_ptr, t_ptr, grad_slot_ptr, grad_scale, acts_rows,
                         first_row, acts_first_row, rows, cols, rows_valid, DIMS: tl.constexpr,
                         W_OFFSETS: tl.constexpr, B_OFFSETS: tl.constexpr, ACT_COLS: tl.constexpr,
                         NUM_LAYERS: tl.constexpr, LAYERS: tl.constexpr, ACT: tl.constexpr, LAST_ACT: tl.constexpr,
                         HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, HAS_LOSS: tl.constexpr, LOSS: tl.constexpr,
                         WRITE_GRAD: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                         BLOCK_D: tl.constexpr, SPLIT_DOTS: tl.constexpr):
    """The first LAYERS layers of the stretch on one row block (``first_row`` of x): the activations
    between layers stay on chip; when SAVE, the hidden ones are written at row ``acts_first_row`` of
    packed activations ``acts_rows`` rows long; the last layer's output, when LAYERS reaches it, to
    ``out``. Each activation is rounded to the output's dtype, as the unfused chain rounds each layer.
    HAS_LOSS: the last layer's output is not written; returned is the block's summed loss against the
    target ``t`` (_narrow_loss_rows), and, when WRITE_GRAD, grad_scale times d loss / d z is written to
    this block's scratch slot at ``grad_slot_ptr`` (BLOCK_D float32 columns a row)."""
    loss_sum = 0.0
    h = tl.load(x_ptr + first_row * DIMS[0] + (rows[:, None] * DIMS[0] + cols[None, :]),
                mask=_row_tile_mask(rows_valid, cols, DIMS[0], BLOCK_D), other=0.0).to(tl.float32)
    for layer in tl.static_range(LAYERS):
        width_out = DIMS[layer + 1]
        if SPLIT_DOTS:
            z = _narrow_dot_in_quarters(h, w_ptr + W_OFFSETS[layer], DIMS[layer], width_out, BLOCK_D, PRECISION,
                                        UPCAST)
        else:
            w = _narrow_weight(w_ptr + W_OFFSETS[layer], cols, DIMS[layer], width_out, BLOCK_D)
            z = _dot(h.to(w.dtype), tl.trans(w), PRECISION, UPCAST)
        if HAS_BIAS:
            z += tl.load(b_ptr + B_OFFSETS[layer] + cols, mask=cols < width_out, other=0.0).to(tl.float32)[None, :]
        valid = _row_tile_mask(rows_valid, cols, width_out, BLOCK_D)
        tile = rows[:, None] * width_out + cols[None, :]
        if HAS_LOSS and layer == NUM_LAYERS - 1:
            loss_sum = _narrow_loss_rows(z, t_ptr + first_row * width_out + tile, valid,
                                         grad_slot_ptr + (rows[:, None] * BLOCK_D + cols[None, :]), grad_scale,
                                         LAST_ACT, LOSS, WRITE_GRAD)
        else:
            if layer == NUM_LAYERS - 1:
                h = _activate(z, LAST_ACT)
            else:
                h = _activate(z, ACT)
            if width_out < BLOCK_D:
                h = tl.where(valid, h, 0.0)  # padding columns stay zero whatever act(0) is
            h = h.to(out_ptr.dtype.element_ty).to(tl.float32)
            if SAVE:
                if layer < NUM_LAYERS - 1:
                    tl.store(_saved_activations(acts_ptr, acts_rows, ACT_COLS, layer) + acts_first_row * width_out
                             + tile, h.to(acts_ptr.dtype.element_ty), mask=valid)
            if layer == NUM_LAYERS - 1:
                tl.store(out_ptr + first_row * width_out + tile, h.to(out_ptr.dtype.element_ty), mask=valid)
    return loss_sum


@triton.jit
def _narrow_forward_kernel(x_ptr, w_ptr, b_ptr, out_ptr, acts_ptr, t_ptr, partial_ptr, inv_count, M,
                           DIMS: tl.constexpr, W_OFFSETS: tl.constexpr, B_OFFSETS: tl.constexpr,
                           ACT_COLS: tl.constexpr, NUM_LAYERS: tl.constexpr, ACT: tl.constexpr,
                           LAST_ACT: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, HAS_LOSS: tl.constexpr,
                           LOSS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_D: tl.constexpr, SPLIT_DOTS: tl.constexpr):
    """Every layer of the stretch on a block of rows; the activations between layers stay on chip
    (written to ``acts`` only when backward is to read them rather than recompute them). Rows are
    addressed as the linear kernels do: an int64 first row, 32-bit offsets inside the tile. SPLIT_DOTS
    multiplies in quarters of the depth (_narrow_dot_in_quarters). HAS_LOSS: nothing is written but the
    block's share of the mean loss against ``t``, at ``partial[program]`` (``out`` is only its dtype)."""
    first_row = tl.program_id(0).to(tl.int64) * BLOCK_M
    rows, cols = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    rows_valid = rows[:, None] < _extent(first_row, M, BLOCK_M)
    loss_sum = _narrow_forward_rows(x_ptr, w_ptr, b_ptr, out_ptr, acts_ptr, t_ptr, partial_ptr, 0.0, M, first_row,
                                    first_row, rows, cols, rows_valid, DIMS, W_OFFSETS, B_OFFSETS, ACT_COLS, NUM_LAYERS,
                                    NUM_LAYERS, ACT, LAST_ACT, HAS_BIAS, SAVE, HAS_LOSS, LOSS, False, PRECISION,
                                    UPCAST, BLOCK_D, SPLIT_DOTS)
    if HAS_LOSS:
        tl.store(partial_ptr + tl.program_id(0), loss_sum * inv_count)  # the launcher adds them


@triton.jit
def _narrow_grad_z(gy_ptr, out_ptr, acts_ptr, grad_slot_ptr, acts_rows, first_row, acts_first_row, rows, cols,
                   rows_valid, LAYER: tl.constexpr, DIMS: tl.constexpr, ACT_COLS: tl.constexpr,
                   NUM_LAYERS: tl.constexpr, ACT: tl.constexpr, LAST_ACT: tl.constexpr, HAS_LOSS: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """dL/dz of layer LAYER on one row block, zero outside it: the incoming gradient (the stretch's
    output gradient for the last layer, else this program's scratch slot) times act'(y); with HAS_LOSS,
    the last layer's is in the scratch slot already. The block is
    row ``first_row`` of the stretch's input and output, and row ``acts_first_row`` of the packed
    activations (``acts_rows`` rows long)."""
    width_out: tl.constexpr = DIMS[LAYER + 1]
    out_mask = _row_tile_mask(rows_valid, cols, width_out, BLOCK_D)
    out_tile = first_row * width_out + (rows[:, None] * width_out + cols[None, :])
    if LAYER == NUM_LAYERS - 1 and HAS_LOSS:
        grad_z = tl.load(grad_slot_ptr)  # d loss / d z, which the recomputing forward left there
    elif LAYER == NUM_LAYERS - 1:
        grad = tl.load(gy_ptr + out_tile, mask=out_mask, other=0.0).to(tl.float32)
        y = tl.load(out_ptr + out_tile, mask=out_mask, other=0.0).to(tl.float32)
        grad_z = _times_activation_grad(grad, y, LAST_ACT)
    else:
        grad = tl.load(grad_slot_ptr)
        acts_tile = acts_first_row * width_out + (rows[:, None] * width_out + cols[None, :])
        y = tl.load(_saved_activations(acts_ptr, acts_rows, ACT_COLS, LAYER) + acts_tile, mask=out_mask,
                    other=0.0).to(tl.float32)
        grad_z = _times_activation_grad(grad, y, ACT)
    return tl.where(out_mask, grad_z, 0.0)


@triton.jit
def _narrow_layer_input(x_ptr, acts_ptr, acts_rows, first_row, acts_first_row, rows, cols, rows_valid,
                        LAYER: tl.constexpr, DIMS: tl.constexpr, ACT_COLS: tl.constexpr, BLOCK_D: tl.constexpr):
    """The input of layer LAYER on one row block (rows as _narrow_grad_z's), in float32: x for the
    first layer, else the activation of the layer before."""
    width_in: tl.constexpr = DIMS[LAYER]
    in_mask = _row_tile_mask(rows_valid, cols, width_in, BLOCK_D)
    if LAYER == 0:
        h_in = tl.load(x_ptr + first_row * width_in + (rows[:, None] * width_in + cols[None, :]), mask=in_mask,
                       other=0.0)
    else:
        h_in = tl.load(_saved_activations(acts_ptr, acts_rows, ACT_COLS, LAYER - 1) + acts_first_row * width_in
                       + (rows[:, None] * width_in + cols[None, :]), mask=in_mask, other=0.0)
    return h_in.to(tl.float32)


@triton.jit
def _narrow_backward_kernel(gy_ptr, x_ptr, out_ptr, acts_ptr, w_ptr, b_ptr, gx_ptr, partials_ptr, scratch_ptr,
                            t_ptr, scale_ptr, inv_count, M, DIMS: tl.constexpr, W_OFFSETS: tl.constexpr,
                            B_OFFSETS: tl.constexpr, ACT_COLS: tl.constexpr, NUM_LAYERS: tl.constexpr, ACT: tl.constexpr,
                            LAST_ACT: tl.constexpr, HAS_BIAS: tl.constexpr, NEED_GX: tl.constexpr,
                            PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_D: tl.constexpr, CHUNK_BLOCKS: tl.constexpr, SPLIT_PASSES: tl.constexpr,
                            RECOMPUTE: tl.constexpr, ACTS_PER_ROW: tl.constexpr, SPLIT_DOTS: tl.constexpr,
                            HAS_LOSS: tl.constexpr, LOSS: tl.constexpr):
    """Backward through the stretch, last layer first, over chunks of CHUNK_BLOCKS row blocks: per row
    block dz = dh * act'(h) and dh = dz W; a layer's weight and bias gradients are summed over the
    chunk on chip, then added to this program's own float32 partial sums (row program_id of
    ``partials``: the packed weights' gradients, then the biases'), which the launcher adds up over the
    programs. Not to one shared sum: the programs' adds onto the same addresses would contend, and land
    in an order that changes the gradients' last bits from run to run. The dh passed down between
    layers waits in this program's own slots of ``scratch`` (two per row block, the layers alternating
    between them so that no slot is read and written in one layer), small enough to stay in L2.
    Programs loop over chunks.

    SPLIT_PASSES runs each layer's chunk twice, first for dh (which needs the weight), then for the
    weight gradient (which needs its sum), for tiles where a weight and its gradient's sum do not fit
    one program's registers together. The second pass computes dz again from loads the first pass left
    in L2.

    RECOMPUTE: the forward saved no activations; each chunk first runs the forward's hidden layers
    again on its rows (SPLIT_DOTS as the forward's), into this program's own rows of ``acts`` (a chunk
    of packed activations, ACTS_PER_ROW to a row), which stay in L2 too. The stretch's activation
    memory is then its output alone.

    HAS_LOSS (with RECOMPUTE): the stretch ends in the mean loss against ``t``, and the forward kept
    nothing. The recomputing forward runs the last layer too, and leaves d loss / d z times the loss's
    gradient (``scale``) over the count in the last layer's scratch slots, where dh would wait.
    """
    cols = tl.arange(0, BLOCK_D)
    rows = tl.arange(0, BLOCK_M)
    CHUNK_ROWS: tl.constexpr = CHUNK_BLOCKS * BLOCK_M
    slots = scratch_ptr + tl.program_id(0).to(tl.int64) * (2 * CHUNK_ROWS * BLOCK_D)
    WEIGHT_COUNT: tl.constexpr = W_OFFSETS[NUM_LAYERS - 1] + DIMS[NUM_LAYERS - 1] * DIMS[NUM_LAYERS]
    BIAS_COUNT: tl.constexpr = B_OFFSETS[NUM_LAYERS - 1] + DIMS[NUM_LAYERS]
    slot_tile = rows[:, None] * BLOCK_D + cols[None, :]
    if RECOMPUTE:
        acts_ptr += tl.program_id(0).to(tl.int64) * (CHUNK_ROWS * ACTS_PER_ROW)
        acts_rows = CHUNK_ROWS
    else:
        acts_rows = M
    grad_scale = 0.0
    if HAS_LOSS:
        grad_scale = tl.load(scale_ptr).to(tl.float32) * inv_count
    FORWARD_LAYERS: tl.constexpr = NUM_LAYERS if HAS_LOSS else NUM_LAYERS - 1
    for chunk in range(tl.program_id(0), tl.cdiv(M, CHUNK_ROWS), tl.num_programs(0)):
        if RECOMPUTE:
            for block in range(CHUNK_BLOCKS):
                first_row, rows_valid = _narrow_rows(chunk, block, M, rows, CHUNK_ROWS, BLOCK_M)
                _narrow_forward_rows(x_ptr, w_ptr, b_ptr, out_ptr, acts_ptr, t_ptr,
                                     slots + (NUM_LAYERS % 2) * CHUNK_ROWS * BLOCK_D + block * BLOCK_M * BLOCK_D,
                                     grad_scale, acts_rows, first_row, block * BLOCK_M, rows, cols, rows_valid, DIMS,
                                     W_OFFSETS, B_OFFSETS, ACT_COLS, NUM_LAYERS, FORWARD_LAYERS, ACT, LAST_ACT,
                                     HAS_BIAS, True, HAS_LOSS, LOSS, True, PRECISION, UPCAST, BLOCK_D, SPLIT_DOTS)
            tl.debug_barrier()  # the layers below read rows other threads wrote
        for layer in tl.static_range(NUM_LAYERS - 1, -1, -1):
            width_in = DIMS[layer]
            w = _narrow_weight(w_ptr + W_OFFSETS[layer], cols, width_in, DIMS[layer + 1], BLOCK_D)
            grad_in_slots = slots + ((layer + 1) % 2) * CHUNK_ROWS * BLOCK_D + slot_tile
            grad_out_slots = slots + (layer % 2) * CHUNK_ROWS * BLOCK_D + slot_tile
            grad_w = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
            grad_b = tl.zeros((BLOCK_D,), dtype=tl.float32)
            for block in range(CHUNK_BLOCKS):
                first_row, rows_valid = _narrow_rows(chunk, block, M, rows, CHUNK_ROWS, BLOCK_M)
                acts_first_row = block * BLOCK_M if RECOMPUTE else first_row
                grad_z = _narrow_grad_z(gy_ptr, out_ptr, acts_ptr, grad_in_slots + block * BLOCK_M * BLOCK_D,
                                        acts_rows, first_row, acts_first_row, rows, cols, rows_valid, layer, DIMS,
                                        ACT_COLS, NUM_LAYERS, ACT, LAST_ACT, HAS_LOSS, BLOCK_D)
                if not SPLIT_PASSES:
                    h_in = _narrow_layer_input(x_ptr, acts_ptr, acts_rows, first_row, acts_first_row, rows, cols,
                                               rows_valid, layer, DIMS, ACT_COLS, BLOCK_D)
                    grad_w += _dot(tl.trans(grad_z.to(w.dtype)), h_in.to(w.dtype), PRECISION, UPCAST)
                if HAS_BIAS:
                    grad_b += tl.sum(grad_z, axis=0)
                if layer > 0:
                    tl.store(grad_out_slots + block * BLOCK_M * BLOCK_D, _dot(grad_z.to(w.dtype), w, PRECISION, UPCAST))
                elif NEED_GX:
                    tl.store(gx_ptr + first_row * width_in + (rows[:, None] * width_in + cols[None, :]),
                             _dot(grad_z.to(w.dtype), w, PRECISION, UPCAST).to(gx_ptr.dtype.element_ty),
                             mask=_row_tile_mask(rows_valid, cols, width_in, BLOCK_D))
            if SPLIT_PASSES:
                for block in range(CHUNK_BLOCKS):
                    first_row, rows_valid = _narrow_rows(chunk, block, M, rows, CHUNK_ROWS, BLOCK_M)
                    acts_first_row = block * BLOCK_M if RECOMPUTE else first_row
                    grad_z = _narrow_grad_z(gy_ptr, out_ptr, acts_ptr, grad_in_slots + block * BLOCK_M * BLOCK_D,
                                            acts_rows, first_row, acts_first_row, rows, cols, rows_valid, layer,
                                            DIMS, ACT_COLS, NUM_LAYERS, ACT, LAST_ACT, HAS_LOSS, BLOCK_D)
                    h_in = _narrow_layer_input(x_ptr, acts_ptr, acts_rows, first_row, acts_first_row, rows, cols,
                                               rows_valid, layer, DIMS, ACT_COLS, BLOCK_D)
                    grad_w += _dot(tl.trans(grad_z.to(w.dtype)), h_in.to(w.dtype), PRECISION, UPCAST)
            # Added in place with atomics that return nothing (a load, add and store held the loaded tile
            # beside the sum, and spilled in six configurations), to addresses no other program adds
            # to: one thread adds a chunk's sum after the last chunk's, in the chunks' order.
            my_sums = partials_ptr + tl.program_id(0).to(tl.int64) * (WEIGHT_COUNT + BIAS_COUNT)
            tl.atomic_add(my_sums + W_OFFSETS[layer] + (cols[:, None] * width_in + cols[None, :]), grad_w,
                          mask=_narrow_weight_mask(cols, width_in, DIMS[layer + 1]), sem="relaxed")
            if HAS_BIAS:
                tl.atomic_add(my_sums + WEIGHT_COUNT + B_OFFSETS[layer] + cols, grad_b, mask=cols < DIMS[layer + 1],
                              sem="relaxed")
            # The next layer's threads read slots other threads wrote in this one.
            tl.debug_barrier()


# Rows per program of the narrow kernels (8 warps), by operands ("16-bit" or float32's dot precision),
# direction and tile width: the most of 16, 32, 64 and 128 that compile for sm_90 without spilling to
# local memory with triton 3.6 and 3.9, as a launch on torch's tensors compiles them (16-byte aligned,
# the batch a multiple of 16; the forward both saving and not saving the hidden activations;
# tests/mlp/test_compiled_kernels.py checks each). A spill is costly here:
# 64 x 64 float32 tiles in 4 warps spilled 13 KiB per thread, which made the stack 40x slower than
# eager on an H200. More rows per program mean fewer loads of the weights (a 64-wide stack of four
# float32 layers loads 64 KiB of them per row block), at the price of registers: the forward holds a
# tile of rows and one weight, the backward also the weight gradient's sum. The 128-wide backward
# takes its two passes (NARROW_ONE_PASS_WIDTH), the IEEE float32 forward from 64 wide its dots in
# quarters (NARROW_QUARTER_IEEE_DEPTH). One exception: that forward at width 64 takes 32 rows where 64
# compile, since at 112 registers per thread (127 with triton 3.6) two programs share an SM (at 64
# rows, 142: one; tests/mlp/test_compiled_kernels.py holds it to 128).
# Those cases are uniform widths, 4 layers. Other stretches at a 128-wide tile may spill (rows that are
# not a multiple of 16 bytes wide, such as 17-100-100-17: 450-1100 bytes a thread with triton 3.6), so
# the launchers compile each variant before its first launch and run a spilling stretch layer by layer
# (_Launch; `benchmarks/profile_kernels.py faked` lists the variants that spilled).
NARROW_WARPS = 8
NARROW_MAX_ROWS = 128
NARROW_ONE_PASS_WIDTH = 64  # wider backward tiles take two passes (SPLIT_PASSES): one pass spills
NARROW_QUARTER_IEEE_DEPTH = 64  # IEEE float32 forward dots this deep or deeper run in quarters (SPLIT_DOTS)
NARROW_ROWS = {
    ("16-bit", "forward"): {16: 128, 32: 128, 64: 128, 128: 128},
    ("tf32", "forward"): {16: 128, 32: 128, 64: 128, 128: 128},
    ("tf32x3", "forward"): {16: 128, 32: 128, 64: 128, 128: 16},
    ("ieee", "forward"): {16: 128, 32: 128, 64: 32, 128: 16},  # 128 wide, 32 rows spilled 176 bytes unsaved
    ("16-bit", "backward"): {16: 128, 32: 128, 64: 128, 128: 16},
    ("tf32", "backward"): {16: 128, 32: 128, 64: 32, 128: 16},
    ("tf32x3", "backward"): {16: 64, 32: 16, 64: 16, 128: 16},
    ("ieee", "backward"): {16: 128, 32: 128, 64: 16, 128: 16},  # 64 wide, 32 rows spilled 96 bytes without dX
    # The backward that first recomputes a chunk's hidden activations (RECOMPUTE): the backward's rows,
    # but where the two phases together spilled (3xTF32: 32 bytes at width 16 with 64 rows, 176 at 128
    # with 16, triton 3.9; IEEE: 48 bytes at 128 with 16, triton 3.6). None: no tile, and the launcher
    # has the forward kernel write the activations for the backward alone.
    ("16-bit", "recompute"): {16: 128, 32: 128, 64: 128, 128: 16},
    ("tf32", "recompute"): {16: 128, 32: 128, 64: 32, 128: 16},
    ("tf32x3", "recompute"): {16: 32, 32: 16, 64: 16, 128: None},
    ("ieee", "recompute"): {16: 128, 32: 128, 64: 32, 128: None},
}


# Pipeline stages (Triton's num_stages) of the narrow backward by operands, direction and tile width,
# where Triton's default of 3 did not fit an H100/H200:
# - IEEE float32 at width 32 (128 rows) and 64 spilled without dX: 24-32 bytes a thread at 32 with
#   triton 3.9; at 64 with 3.6, 96 reading saved activations and 28 recomputing;
# - the recomputing backward at width 128 asked for more shared memory than a program has (227 KiB):
#   272 KiB in 16 bits with the loss (208 without), 416-544 in TF32 (triton 3.6; Triton refuses such a
#   launch). Two stages take at most 140 KiB in 16 bits; TF32 needs one (76 KiB).
# Each compiles without spills, with and without dX, in 3.6 and 3.9 (tests/mlp/test_compiled_kernels.py);
# fewer stages prefetch less.
NARROW_BACKWARD_STAGES = {("ieee", "backward", 32): 2, ("ieee", "recompute", 32): 2, ("ieee", "backward", 64): 1,
                          ("ieee", "recompute", 64): 1, ("16-bit", "recompute", 128): 2, ("tf32", "recompute", 128): 1}
DEFAULT_STAGES = 3


def narrow_backward_stages(operands: str, direction: str, block_d: int) -> int:
    """num_stages of the narrow backward (``direction`` "backward" or "recompute")."""
    return NARROW_BACKWARD_STAGES.get((operands, direction, block_d), DEFAULT_STAGES)


def narrow_dots_in_quarters(precision: str, block_d: int) -> bool:
    """Whether the narrow forward multiplies in quarters of the depth (its SPLIT_DOTS)."""
    return precision == "ieee" and block_d >= NARROW_QUARTER_IEEE_DEPTH


def _narrow_width(dims) -> int:
    """The narrow kernels' tile width for a stretch's widths."""
    return max(16, next_power_of_2(max(dims)))


def _narrow_blocks(dims, rows, operands, direction):
    """(tile width, rows per program, warps) of a narrow kernel (``direction`` a key of NARROW_ROWS)."""
    block_d = _narrow_width(dims)
    most = NARROW_ROWS[(operands, direction)][block_d]
    return block_d, min(_block(rows, NARROW_MAX_ROWS), most), NARROW_WARPS


_KEEPS_TO_REGISTERS: dict = {}  # by _Launch.key(): whether the variant compiled without spills


class _Launch:
    """One launch of a narrow kernel, set up before it runs, so that the compiled variant it takes can be
    asked first whether it keeps to registers.

    The narrow kernels hold a tile of rows, a weight and, backward, the weight gradient's sum in
    registers: at a 128-wide tile, near a thread's 255. Where they run out the compiler spills to local
    memory, which costs a kernel most of its speed (a 64 x 64 float32 tile in 4 warps spilled 13 KiB a
    thread once, and the narrow stack ran 40x slower than eager on an H200). Which stretches spill
    follows no rule that tests written ahead could list: it changes with Triton's version, with the
    widths' alignment (Triton specializes on 16-byte alignment), and not with the work (a lighter
    variant spilled where the heaviest did not). With triton 3.6 at a 128-wide tile, stretches whose
    rows are not a multiple of 16 bytes spill hundreds of bytes a thread (17-100-100-17 in bfloat16:
    450-1100, in every direction), and some uniform ones a few dozen (128-128-128 in 3xTF32 reading
    saved activations: 40). So on a GPU each variant is compiled once before its first launch, as the
    launch would compile it, and the driver's count of its local memory decides: where it spills, the
    stretch runs layer by layer through the linear kernels instead (_narrow_forward_by_layers and its
    siblings). A linear kernel spills a few bytes at most (LINEAR_TILES), and has no other way to run:
    it launches unchecked."""

    def __init__(self, kernel, grid: tuple, args: tuple, kwargs: dict):
        self.kernel, self.grid, self.args, self.kwargs = kernel, grid, args, kwargs

    def __call__(self):
        launch(self.kernel, self.grid, *self.args, **self.kwargs)

    def key(self) -> tuple:
        """What Triton specializes a variant on, or more: the arguments as the launch path keys them
        (_triton_launch.arguments_key)."""
        # The first argument's device: the launchers make it the current one, which Triton compiles for.
        return (self.kernel.__name__, self.args[0].device, *arguments_key(self.args, self.kwargs))

    def keeps_to_registers(self) -> bool:
        """Whether the variant this launch takes compiled without spills (True in the interpreter, which
        compiles nothing). Compiling is what the launch would do first; the answer is kept."""
        if _INTERPRETED:
            return True
        key = self.key()
        if key not in _KEEPS_TO_REGISTERS:
            compiled = self.kernel.warmup(*self.args, grid=self.grid, **self.kwargs)
            if hasattr(compiled, "result"):  # triton 3.6's asynchronous compile
                compiled = compiled.result()
            compiled._init_handles()  # loads it: the driver then reports its local memory (n_spills)
            _KEEPS_TO_REGISTERS[key] = compiled.n_spills == 0
        return _KEEPS_TO_REGISTERS[key]


def narrow_forward(x, weights, biases, dims, activation, last_activation, save):
    """(out, saved activations between the layers, packed; empty when not saved)."""
    rows = x.shape[0]
    layout = narrow_constants(tuple(dims))
    out = torch.empty(rows, dims[-1], dtype=x.dtype, device=x.device)
    acts = torch.empty(rows * sum(dims[1:-1]) if save else 0, dtype=x.dtype, device=x.device)
    block_d, block_m, warps = _narrow_blocks(dims, rows, _operands(x.dtype), "forward")
    precision = _precision(x.dtype)
    narrow_launch = _Launch(_narrow_forward_kernel, (cdiv(rows, block_m),), (
        x, weights, weights if biases is None else biases, out, acts if acts.numel() else out, out, out, 0.0, rows),
        dict(**layout, ACT=ACTIVATION_CODES[activation], LAST_ACT=ACTIVATION_CODES[last_activation],
             HAS_BIAS=biases is not None, SAVE=save, HAS_LOSS=False, LOSS=0, PRECISION=precision,
             UPCAST=_upcast(x.dtype), BLOCK_M=block_m, BLOCK_D=block_d,
             SPLIT_DOTS=narrow_dots_in_quarters(precision, block_d), num_warps=warps, **_backends.TRITON_LAUNCH))
    if not narrow_launch.keeps_to_registers():
        return _narrow_forward_by_layers(x, weights, biases, dims, activation, last_activation, save)
    narrow_launch()
    return out, acts


def narrow_loss_forward(x, weights, biases, target, dims, activation, last_activation, loss):
    """The mean loss of the stretch's output against ``target``, the output never written: each row
    block adds its share (accumulation dtype, a 0-d tensor)."""
    rows = x.shape[0]
    block_d, block_m, warps = _narrow_blocks(dims, rows, _operands(x.dtype), "forward")
    grid = max(1, cdiv(rows, block_m))
    partial = torch.zeros(grid, dtype=torch.float32, device=x.device)
    precision = _precision(x.dtype)
    narrow_launch = _Launch(_narrow_forward_kernel, (grid,), (
        x, weights, weights if biases is None else biases, x, x, target, partial,
        reference.mean_factor(rows * dims[-1]), rows),
        dict(**narrow_constants(tuple(dims)), ACT=ACTIVATION_CODES[activation],
             LAST_ACT=ACTIVATION_CODES[last_activation], HAS_BIAS=biases is not None, SAVE=False, HAS_LOSS=True,
             LOSS=LOSS_CODES[loss], PRECISION=precision, UPCAST=_upcast(x.dtype), BLOCK_M=block_m, BLOCK_D=block_d,
             SPLIT_DOTS=narrow_dots_in_quarters(precision, block_d), num_warps=warps, **_backends.TRITON_LAUNCH))
    if not narrow_launch.keeps_to_registers():
        return _narrow_loss_by_layers(x, weights, biases, target, dims, activation, last_activation, loss)[0]
    narrow_launch()
    return partial.sum() if rows else torch.full((), math.nan, dtype=torch.float32, device=x.device)


# Rows of a narrow backward chunk (its weight gradients are added once per chunk): the scratch of one
# program per SM, two float32 slots per row at width 64, is then 17 MB on an H200, and a recomputing
# backward's chunks of activations (the 64-wide stack of 4 layers: 3 per row) 26 MB in float32, 13 in
# bfloat16, which its 50 MB L2 holds together.
NARROW_CHUNK_ROWS = 256
INTERPRETER_NARROW_PROGRAMS = 2  # so that the tests see programs looping over several chunks


def _narrow_backward_grid(rows: int, block_m: int, device: torch.device) -> tuple[int, int]:
    """(row blocks per chunk, programs) of the narrow backward: one program per SM (the widest tiles'
    registers leave room for one), each looping over chunks."""
    chunk_blocks = max(1, NARROW_CHUNK_ROWS // block_m)
    chunks = cdiv(rows, chunk_blocks * block_m)
    return chunk_blocks, max(1, min(chunks, _device_programs(device, 1, INTERPRETER_NARROW_PROGRAMS)))


def narrow_backward(grad_out, x, out, acts, weights, biases, dims, activation, last_activation, need_input_grad):
    """(dx or an empty tensor, d weights, d biases or an empty tensor); the hidden activations from
    ``acts``, or, where it is empty, recomputed by each program for its chunks."""
    operands = _operands(x.dtype)
    recompute = acts.numel() == 0 and len(dims) > 2
    if recompute and NARROW_ROWS[(operands, "recompute")][_narrow_width(dims)] is None:
        # No tile recomputes in registers here: the forward kernel writes them for this backward alone.
        _, acts = narrow_forward(x, weights, biases, dims, activation, last_activation, save=True)
        recompute = False
    return _narrow_backward_launch(grad_out, x, out, acts, weights, biases, dims, activation, last_activation,
                                   need_input_grad, recompute)


def narrow_loss_backward(grad_loss, x, weights, biases, target, dims, activation, last_activation, loss,
                         need_input_grad):
    """narrow_backward of narrow_loss_forward (``grad_loss`` a 0-d float32 tensor): every activation and
    d loss / d z recomputed on chip, where a recomputing tile fits; elsewhere (a single layer, which the
    layers never make a stretch of, or no such tile: only float32 modes lack one) the forward kernel
    writes the hidden activations and the last layer's pre-activation in x's dtype, from which d loss / d z
    is taken in torch."""
    operands = _operands(x.dtype)
    if len(dims) == 2 or NARROW_ROWS[(operands, "recompute")][_narrow_width(dims)] is None:
        z, acts = narrow_forward(x, weights, biases, dims, activation, None, save=True)
        scale = grad_loss * reference.mean_factor(z.numel())
        grad_z = reference.loss_gradient(z.float(), target, last_activation, loss, scale).to(x.dtype)
        return _narrow_backward_launch(grad_z, x, z, acts, weights, biases, dims, activation, None, need_input_grad,
                                       recompute=False)
    return _narrow_backward_launch(x, x, x, x.new_empty(0), weights, biases, dims, activation, last_activation,
                                   need_input_grad, recompute=True, loss=(target, grad_loss, loss))


def _narrow_backward_launch(grad_out, x, out, acts, weights, biases, dims, activation, last_activation,
                            need_input_grad, recompute, loss=None):
    """The narrow backward kernel (RECOMPUTE: ``acts`` is this launch's to allocate); ``loss``: the
    (target, loss gradient, loss name) of a stretch ending in its loss, which always recomputes."""
    rows = x.shape[0]
    grad_x = torch.empty_like(x) if need_input_grad else x.new_empty(0)
    operands = _operands(x.dtype)
    direction = "recompute" if recompute else "backward"
    block_d, block_m, warps = _narrow_blocks(dims, rows, operands, direction)
    chunk_blocks, programs = _narrow_backward_grid(rows, block_m, x.device)
    # Each program's float32 partial sums of the weights' gradients, then the biases' (a program without
    # rows adds none; the biases' columns stay zero without biases).
    weight_count = weights.numel()
    partials = torch.zeros(programs, weight_count + sum(dims[1:]), dtype=torch.float32, device=x.device)
    scratch = torch.empty(programs * 2 * chunk_blocks * block_m * block_d, dtype=torch.float32, device=x.device)
    acts_per_row = sum(dims[1:-1])
    if recompute:
        acts = torch.empty(programs * chunk_blocks * block_m * acts_per_row, dtype=x.dtype, device=x.device)
    target, grad_loss, loss_name = loss if loss is not None else (x, partials, "mse")
    precision = _precision(x.dtype)
    narrow_launch = _Launch(_narrow_backward_kernel, (programs,), (
        grad_out, x, out, acts if acts.numel() else out, weights, weights if biases is None else biases,
        grad_x if need_input_grad else out, partials, scratch, target, grad_loss,
        reference.mean_factor(rows * dims[-1]), rows),
        dict(**narrow_constants(tuple(dims)), ACT=ACTIVATION_CODES[activation],
             LAST_ACT=ACTIVATION_CODES[last_activation], HAS_BIAS=biases is not None, NEED_GX=need_input_grad,
             PRECISION=precision, UPCAST=_upcast(x.dtype), BLOCK_M=block_m, BLOCK_D=block_d, CHUNK_BLOCKS=chunk_blocks,
             SPLIT_PASSES=block_d > NARROW_ONE_PASS_WIDTH, RECOMPUTE=recompute, ACTS_PER_ROW=acts_per_row,
             SPLIT_DOTS=narrow_dots_in_quarters(precision, block_d), HAS_LOSS=loss is not None,
             LOSS=LOSS_CODES[loss_name], num_warps=warps,
             num_stages=narrow_backward_stages(operands, direction, block_d), **_backends.TRITON_LAUNCH))
    if not narrow_launch.keeps_to_registers():
        del narrow_launch, partials, scratch  # the kernel's buffers, freed before the layers allocate theirs
        if recompute:
            acts = x.new_empty(0)  # this launch's chunk buffer: the layers recompute the activations whole
        return _narrow_backward_by_layers(grad_out, x, out, acts, weights, biases, dims, activation, last_activation,
                                          need_input_grad, loss)
    narrow_launch()
    grad_w = torch.empty_like(weights)
    grad_b = torch.empty_like(biases) if biases is not None else weights.new_empty(0)
    width = partials.shape[1]
    _add_splits(SplitSum(partials, grad_w, grad_b if biases is not None else grad_w, programs, width, weight_count,
                         width if biases is not None else weight_count))
    return grad_x, grad_w, grad_b


# --- a narrow stretch layer by layer, where its fused kernel would spill (_Launch) ------------------

def _narrow_forward_by_layers(x, weights, biases, dims, activation, last_activation, save):
    """narrow_forward through the linear kernels: (out, the hidden activations packed, or empty)."""
    outputs = _narrow_outputs_by_layers(x, weights, biases, dims, activation, last_activation, len(dims) - 1)
    acts = torch.cat([h.reshape(-1) for h in outputs[:-1]]) if save and len(dims) > 2 else x.new_empty(0)
    return outputs[-1], acts


def _narrow_outputs_by_layers(x, weights, biases, dims, activation, last_activation, layers):
    """The outputs of the stretch's first ``layers`` layers, by linear_forward."""
    outputs, h = [], x
    for index, (weight, bias) in enumerate(reference.narrow_layers(weights, biases, dims)[:layers]):
        h, _ = linear_forward(h, weight, bias, activation if index < len(dims) - 2 else last_activation, "none",
                              0.0, 0)
        outputs.append(h)
    return outputs


def _narrow_loss_by_layers(x, weights, biases, target, dims, activation, last_activation, loss):
    """(mean loss, d loss / d z of the last layer, the hidden layers' outputs) through the linear kernels."""
    hidden = _narrow_outputs_by_layers(x, weights, biases, dims, activation, None, len(dims) - 2)
    weight, bias = reference.narrow_layers(weights, biases, dims)[-1]
    mean_loss, grad_z = linear_loss_forward(hidden[-1] if hidden else x, weight, bias, target, last_activation, loss)
    return mean_loss, grad_z, hidden


def _narrow_backward_by_layers(grad_out, x, out, acts, weights, biases, dims, activation, last_activation,
                               need_input_grad, loss=None):
    """_narrow_backward_launch through the linear kernels: the hidden activations from ``acts``, or
    where it is empty recomputed; ``loss`` as there (the last layer's gradient then from its loss)."""
    rows, layers = x.shape[0], reference.narrow_layers(weights, biases, dims)
    if loss is not None:
        target, grad_loss, loss_name = loss
        _, grad, hidden = _narrow_loss_by_layers(x, weights, biases, target, dims, activation, last_activation,
                                                 loss_name)
        # The last layer's backward as the fused loss's: dY is d loss / d z, no activation, times the loss's gradient.
        scale, last_activation = grad_loss.reshape(()).to(torch.float32), None
    elif acts.numel():
        at = narrow_constants(tuple(dims))["ACT_COLS"]
        hidden = [acts[rows * at[i]:rows * (at[i] + dims[i + 1])].view(rows, dims[i + 1]) for i in range(len(dims) - 2)]
        grad, scale = grad_out, None
    else:
        hidden = _narrow_outputs_by_layers(x, weights, biases, dims, activation, None, len(dims) - 2)
        grad, scale = grad_out, None
    inputs, outputs = [x, *hidden], [*hidden, grad if loss is not None else out]  # (no activation reads grad)
    grad_w = torch.empty_like(weights)
    grad_b = torch.empty_like(biases) if biases is not None else weights.new_empty(0)
    grad_layers = reference.narrow_layers(grad_w, grad_b if biases is not None else None, dims)
    with _split_sums_at_once():  # each layer's gradient is copied into the stretch's as soon as it is taken
        for index in reversed(range(len(layers))):
            weight, bias = layers[index]
            last = index == len(layers) - 1
            grad, layer_grad_w, layer_grad_b = linear_backward(
                grad, inputs[index], weight, bias, outputs[index], x.new_empty(0),
                last_activation if last else activation, "none", 0.0, 0, scale if last else None,
                index > 0 or need_input_grad)
            grad_layers[index][0].copy_(layer_grad_w)
            if bias is not None:
                grad_layers[index][1].copy_(layer_grad_b)
    return (grad if need_input_grad else x.new_empty(0)), grad_w, grad_b
