"""Triton kernels of the fused MLP: linear + bias + activation with the activation in the matmul's
epilogue, its backward (dX and dW + db, with the activation's derivative applied as the gradient is
loaded), the last layer fused with the reconstruction loss (the reconstruction is never written:
only the loss and d loss / d z are), and the denoising corruption generated in the first layer's
load from (seed, offset) and regenerated in backward. Imported lazily: ``TRITON_INTERPRET`` must be
set before the kernels are defined.

Every kernel takes contiguous row-major tensors: x (M, K), weight (N, K), y (M, N).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from aefast._triton_random import philox_normal, philox_uniform

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
        z = tl.maximum(z, 0.0)
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
        grad = saved * 0.0 + 1.0
    elif ACT == 1:
        grad = tl.where(saved > 0, 1.0, 0.0)
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


@triton.jit
def _load_input(x_ptr, rows, cols, M, K, seed, param, CORRUPT: tl.constexpr):
    """A (rows x cols) tile of x as float32, corrupted as the first layer sees it; zero outside."""
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    offsets = rows[:, None] * K + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if CORRUPT == 1:
        x = tl.where(philox_uniform(seed, offsets) >= param, x, 0.0)
    elif CORRUPT == 2:
        x = tl.where(mask, x + param * philox_normal(seed, offsets), 0.0)
    return x


@triton.jit
def _pre_activation(x_ptr, w_ptr, b_ptr, rm, rn, M, N, K, seed, param, CORRUPT: tl.constexpr,
                    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """z = x~ W^T + b for a (BLOCK_M x BLOCK_N) tile, accumulated in float32."""
    acc = tl.zeros((rm.shape[0], rn.shape[0]), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = _load_input(x_ptr, rm, rk, M, K, seed, param, CORRUPT).to(w_ptr.dtype.element_ty)
        w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)
        acc += _dot(x, tl.trans(w), PRECISION, UPCAST)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _linear_forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, z_ptr, M, N, K, seed, param,
                           ACT: tl.constexpr, CORRUPT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           SAVE_Z: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    z = _pre_activation(x_ptr, w_ptr, b_ptr, rm, rn, M, N, K, seed, param, CORRUPT, HAS_BIAS, PRECISION, UPCAST,
                        BLOCK_K)
    out_mask = (rm[:, None] < M) & (rn[None, :] < N)
    out_offsets = rm[:, None] * N + rn[None, :]
    tl.store(y_ptr + out_offsets, _activate(z, ACT).to(y_ptr.dtype.element_ty), mask=out_mask)
    if SAVE_Z:
        tl.store(z_ptr + out_offsets, z.to(z_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _grad_pre_activation(gy_ptr, saved_ptr, scale_ptr, rm, rn, M, N, ACT: tl.constexpr, HAS_SCALE: tl.constexpr):
    """dL/dz for a (rows x cols) tile: the incoming gradient times the activation's derivative."""
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
    grad = tl.load(gy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if ACT != 0:
        grad *= _activation_grad(tl.load(saved_ptr + offsets, mask=mask, other=0.0).to(tl.float32), ACT)
    if HAS_SCALE:
        grad *= tl.load(scale_ptr).to(tl.float32)
    return grad


@triton.jit
def _linear_grad_input_kernel(gy_ptr, saved_ptr, w_ptr, gx_ptr, scale_ptr, M, N, K, seed, param,
                              ACT: tl.constexpr, CORRUPT: tl.constexpr, HAS_SCALE: tl.constexpr,
                              PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dx = dz W (times the kept mask of a mask-corrupted input), a (BLOCK_M x BLOCK_K) tile."""
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        grad_z = _grad_pre_activation(gy_ptr, saved_ptr, scale_ptr, rm, rn, M, N, ACT, HAS_SCALE)
        w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)
        acc += _dot(grad_z.to(w.dtype), w, PRECISION, UPCAST)
    out_mask = (rm[:, None] < M) & (rk[None, :] < K)
    out_offsets = rm[:, None] * K + rk[None, :]
    if CORRUPT == 1:
        acc = tl.where(philox_uniform(seed, out_offsets) >= param, acc, 0.0)
    tl.store(gx_ptr + out_offsets, acc.to(gx_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _linear_grad_weight_kernel(gy_ptr, saved_ptr, x_ptr, gw_ptr, gb_ptr, scale_ptr, M, N, K, seed, param,
                               ACT: tl.constexpr, CORRUPT: tl.constexpr, HAS_BIAS: tl.constexpr,
                               HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dW = dz^T x~ as a (BLOCK_N x BLOCK_K) tile, x~ regenerated; the first column of tiles adds db."""
    rn = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        grad_z = _grad_pre_activation(gy_ptr, saved_ptr, scale_ptr, rm, rn, M, N, ACT, HAS_SCALE)
        x = _load_input(x_ptr, rm, rk, M, K, seed, param, CORRUPT)
        acc += _dot(tl.trans(grad_z.to(gw_ptr.dtype.element_ty)), x.to(gw_ptr.dtype.element_ty), PRECISION, UPCAST)
        bias_acc += tl.sum(grad_z, axis=0)
    tl.store(gw_ptr + rn[:, None] * K + rk[None, :], acc.to(gw_ptr.dtype.element_ty),
             mask=(rn[:, None] < N) & (rk[None, :] < K))
    if HAS_BIAS:
        if tl.program_id(1) == 0:
            tl.store(gb_ptr + rn, bias_acc.to(gb_ptr.dtype.element_ty), mask=rn < N)


@triton.jit
def _linear_loss_kernel(h_ptr, w_ptr, b_ptr, t_ptr, gz_ptr, partial_ptr, M, N, K, inv_count,
                        OUT_ACT: tl.constexpr, LOSS: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                        UPCAST: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The last layer and the loss: each tile writes dL/dz and its share of the loss, not the output."""
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    z = _pre_activation(h_ptr, w_ptr, b_ptr, rm, rn, M, N, K, 0, 0.0, 0, HAS_BIAS, PRECISION, UPCAST, BLOCK_K)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
    target = tl.load(t_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if LOSS == 1:  # BCE with logits, the stable form
        loss = tl.maximum(z, 0.0) - z * target + tl.log(1.0 + tl.exp(-tl.abs(z)))
        grad_z = (_sigmoid(z) - target) * inv_count
    else:
        out = _activate(z, OUT_ACT)
        diff = out - target
        loss = diff * diff
        if OUT_ACT == 5:
            slope = _activation_grad(z, OUT_ACT)
        else:
            slope = _activation_grad(out, OUT_ACT)
        grad_z = 2.0 * diff * slope * inv_count
    tl.store(gz_ptr + offsets, grad_z.to(gz_ptr.dtype.element_ty), mask=mask)
    partial = tl.sum(tl.sum(tl.where(mask, loss, 0.0), axis=1), axis=0)
    tl.store(partial_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), partial)


# --- launchers -----------------------------------------------------------------------------------

def _block(size: int, largest: int) -> int:
    """A power-of-two tile edge: at least 16 (tl.dot's minimum), at most ``largest``."""
    return max(16, min(largest, triton.next_power_of_2(size)))


def _precision(dtype: torch.dtype) -> str:
    """float32 matmuls follow torch's TF32 switch, so kernel and eager agree on what is computed."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") == "1"


def _codes(activation, corruption):
    return ACTIVATION_CODES[activation], CORRUPTION_CODES[corruption]


def linear_forward(x, weight, bias, activation, corruption, param, seed):
    M, K = x.shape
    N = weight.shape[0]
    act, corrupt = _codes(activation, corruption)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    z = torch.empty(M, N, dtype=x.dtype, device=x.device) if act == _GELU else y.new_empty(0)
    block_m, block_n, block_k = _block(M, 64), _block(N, 64), _block(K, 32)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _linear_forward_kernel[grid](
        x, weight, weight if bias is None else bias, y, y if z.numel() == 0 else z, M, N, K, seed, param,
        ACT=act, CORRUPT=corrupt, HAS_BIAS=bias is not None, SAVE_Z=act == _GELU, PRECISION=_precision(x.dtype), UPCAST=_upcast(x.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return y, z


def linear_backward(grad_y, x, weight, bias, y, saved_z, activation, corruption, param, seed, grad_scale,
                    need_input_grad):
    """(dx or an empty tensor, dW, db or an empty tensor)."""
    M, K = x.shape
    N = weight.shape[0]
    act, corrupt = _codes(activation, corruption)
    saved = saved_z if act == _GELU else y
    scale = grad_scale if grad_scale is not None else grad_y
    precision = _precision(x.dtype)
    grad_x = x.new_empty(0)
    if need_input_grad:
        grad_x = torch.empty_like(x)
        block_m, block_n, block_k = _block(M, 64), _block(N, 32), _block(K, 64)
        _linear_grad_input_kernel[(triton.cdiv(M, block_m), triton.cdiv(K, block_k))](
            grad_y, saved, weight, grad_x, scale, M, N, K, seed, param, ACT=act, CORRUPT=corrupt,
            HAS_SCALE=grad_scale is not None, PRECISION=precision, UPCAST=_upcast(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    grad_w = torch.empty_like(weight)
    grad_b = torch.empty_like(bias) if bias is not None else weight.new_empty(0)
    block_m, block_n, block_k = _block(M, 32), _block(N, 64), _block(K, 64)
    _linear_grad_weight_kernel[(triton.cdiv(N, block_n), triton.cdiv(K, block_k))](
        grad_y, saved, x, grad_w, grad_b if bias is not None else grad_w, scale, M, N, K, seed, param,
        ACT=act, CORRUPT=corrupt, HAS_BIAS=bias is not None, HAS_SCALE=grad_scale is not None, PRECISION=precision,
        UPCAST=_upcast(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return grad_x, grad_w, grad_b


def linear_loss_forward(h, weight, bias, target, output_activation, loss):
    M, K = h.shape
    N = weight.shape[0]
    grad_z = torch.empty(M, N, dtype=h.dtype, device=h.device)
    block_m, block_n, block_k = _block(M, 64), _block(N, 64), _block(K, 32)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    partial = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=h.device)
    _linear_loss_kernel[grid](
        h, weight, weight if bias is None else bias, target, grad_z, partial, M, N, K, 1.0 / (M * N),
        OUT_ACT=ACTIVATION_CODES[output_activation], LOSS=LOSS_CODES[loss], HAS_BIAS=bias is not None,
        PRECISION=_precision(h.dtype), UPCAST=_upcast(h.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return partial.sum() / (M * N), grad_z
