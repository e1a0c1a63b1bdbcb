"""Philox4x32-10 in plain PyTorch: the reference for the stream that the C++, CUDA and Triton kernels
share (DESIGN.md "Random numbers"): counter (offset_lo, offset_hi, 0, 0), key (seed_lo, seed_hi),
normals by the Box-Muller of Triton's ``tl.randn`` (one per offset: the layers' corruption) or
``tl.randn4x`` (four per offset: the VAE's eps).

All arithmetic runs on int64 tensors holding uint32 values; products are split into 16-bit halves
so that no intermediate leaves int64.
"""
from __future__ import annotations

import torch

from aefast import _backends
from aefast._buffers import cpu_buffer

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def _mul_hi_lo(constant: int, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of constant * value for uint32 values held in int64."""
    c_lo, c_hi = constant & 0xFFFF, constant >> 16
    low_part = value * c_lo  # < 2^48
    high_part = value * c_hi  # < 2^48
    hi = (high_part + (low_part >> 16)) >> 16
    lo = (low_part + ((high_part & 0xFFFF) << 16)) & _MASK32
    return hi & _MASK32, lo


def philox4x32_10(seed: int, offsets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four uint32 outputs (as int64) of Philox4x32-10 for each int64 offset."""
    c0 = offsets & _MASK32
    c1 = (offsets >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def _uint_to_uniform(bits: torch.Tensor) -> torch.Tensor:
    signed = torch.where(bits >= 2**31, bits - 2**32, bits)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * 4.6566127342e-10


def philox_normal(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Float32 standard normals, one per int64 offset, as ``tl.randn`` computes them."""
    x0, x1, _, _ = philox4x32_10(seed, offsets)
    u1 = torch.clamp(_uint_to_uniform(x0), min=1.0e-7)
    theta = 6.283185307179586 * _uint_to_uniform(x1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)


def philox_normal4(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Float32 standard normals, four per int64 offset, as ``tl.randn4x`` computes them: (offsets, 4),
    each offset's Philox words (x0, x1) and (x2, x3) turned by Box-Muller into a cos and a sin normal
    each, in that order. A quarter of ``philox_normal``'s Philox rounds and half its logs per normal."""
    x0, x1, x2, x3 = philox4x32_10(seed, offsets)
    normals = []
    for radius_bits, angle_bits in ((x0, x1), (x2, x3)):
        radius = torch.sqrt(-2.0 * torch.log(torch.clamp(_uint_to_uniform(radius_bits), min=1.0e-7)))
        theta = 6.283185307179586 * _uint_to_uniform(angle_bits)
        normals += [radius * torch.cos(theta), radius * torch.sin(theta)]
    return torch.stack(normals, dim=-1)


def philox_uniform(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Float32 uniforms in [0, 1), one per int64 offset, as ``tl.rand`` computes them."""
    return _uint_to_uniform(philox4x32_10(seed, offsets)[0])


def compiled_stream(kind: str, seed: int, count: int, device: torch.device | str = "cpu",
                    first: int = 0) -> torch.Tensor | None:
    """The stream's ``count`` values from offset ``first`` on, float32 on ``device``: ``kind`` "uniform" (bit for bit
    ``philox_uniform``'s) or "normal" (``philox_normal``'s within 2e-6), from compiled kernels: on the
    CPU aefast._C's, about 80x the formulas above (a 128 x 64 batch of uniforms: 10 us against 850 on
    the CI machine); on a GPU one Triton launch (``_triton_random.fill``) where the formulas launch
    about 260 small kernels. None where they cannot run: no aefast._C (or Triton), another device,
    torch.compile tracing, torch.func's transforms, or a mode that makes torch.empty give no real
    tensor (fake tensors): their tensors have no memory to hand to a kernel."""
    device = torch.device(device)
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return None
    if device.type == "cuda" and _backends.can_run("triton", device) is True:
        fill = _triton_fill
    elif device.type == "cpu" and _backends.compiled_module() is not None:
        fill = _cpp_fill
    else:
        return None
    out = torch.empty(count, dtype=torch.float32, device=device)  # not torch.set_default_device's
    if type(out) is not torch.Tensor:
        return None
    fill(out, kind, seed, first)
    return out


def _cpp_fill(out: torch.Tensor, kind: str, seed: int, first: int) -> None:
    compiled = _backends.compiled_module()
    (compiled.philox_uniform_cpu if kind == "uniform" else compiled.philox_normal_cpu)(seed, first, cpu_buffer(out))


_triton_fill = _backends.lazy_kernel("aefast._triton_random", "fill")  # imports triton on the first call
