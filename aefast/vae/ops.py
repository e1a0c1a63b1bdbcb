"""torch.library custom ops of the fused reparameterize + KL, their fake (meta) implementations,
their autograd, and the registration of every backend's kernels.

``aefast::reparameterize_kl`` takes 2-D contiguous (rows, cols) tensors; the public function in
reparameterize.py validates, reshapes and reduces. The seed is a CPU int64 scalar tensor so that a
seed drawn from torch's generator traces under ``torch.compile(fullgraph=True)``. The public function
calls ``reparameterize_kl`` (below the autograd): the op under torch.compile, otherwise an
autograd.Function over the same checks and kernels without the custom op's dispatch.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from aefast import _backends
from aefast._buffers import DTYPE_NAMES, cpu_buffer, current_stream, device_pointer, empty_on_huge_pages
from aefast._checks import check_seed_tensor, one_device
from aefast._dtypes import no_autocast
from aefast.vae import reference
from aefast.vae.reference import kl_dtype

OP_NAME, BACKWARD_NAME = "reparameterize_kl", "reparameterize_kl_backward"
NO_CLAMP = (-math.inf, math.inf)  # clamp bounds that mean "no clamp"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _reparameterize_kl(mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Tensor, per_element: bool,
                       clamp_min: float, clamp_max: float) -> tuple[Tensor, Tensor]:
    _check_kernel_inputs(mu, logvar=logvar, eps=eps)
    _check_seed_and_clamp(seed, clamp_min, clamp_max)
    kernel = _kernel(OP_NAME, mu.device)
    with no_autocast(mu.device):  # the reference's float32 math, not autocast's 16 bits
        return kernel(mu, logvar, eps, int(seed), per_element, clamp_min, clamp_max)


@torch.library.custom_op("aefast::reparameterize_kl", mutates_args=())
def reparameterize_kl_op(
    mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Tensor, per_element: bool,
    clamp_min: float, clamp_max: float,
) -> tuple[Tensor, Tensor]:
    return _reparameterize_kl(mu, logvar, eps, seed, per_element, clamp_min, clamp_max)


@reparameterize_kl_op.register_fake
@one_device
def _(mu, logvar, eps, seed, per_element, clamp_min, clamp_max):
    kl_shape = mu.shape if per_element else mu.shape[:1]
    return torch.empty_like(mu), mu.new_empty(kl_shape, dtype=kl_dtype(mu.dtype))


def _reparameterize_kl_backward(grad_z: Tensor, grad_kl: Tensor, mu: Tensor, logvar: Tensor, eps: Optional[Tensor],
                                seed: Tensor, clamp_min: float, clamp_max: float) -> tuple[Tensor, Tensor]:
    _check_kernel_inputs(mu, logvar=logvar, eps=eps, grad_z=grad_z)
    _check_seed_and_clamp(seed, clamp_min, clamp_max)
    rows, cols = mu.shape
    expected_dtype = kl_dtype(mu.dtype)
    if (grad_kl.shape not in ((rows,), (rows, cols)) or grad_kl.dtype != expected_dtype
            or grad_kl.device != mu.device or not grad_kl.is_contiguous()):
        raise ValueError(f"grad_kl must be contiguous ({rows},) or ({rows}, {cols}), {expected_dtype} on "
                         f"{mu.device}, got {tuple(grad_kl.shape)}, {grad_kl.dtype} on {grad_kl.device}")
    kernel = _kernel(BACKWARD_NAME, mu.device)
    with no_autocast(mu.device):
        return kernel(grad_z, grad_kl, mu, logvar, eps, int(seed), clamp_min, clamp_max)


@torch.library.custom_op("aefast::reparameterize_kl_backward", mutates_args=())
def reparameterize_kl_backward_op(
    grad_z: Tensor, grad_kl: Tensor, mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Tensor,
    clamp_min: float, clamp_max: float,
) -> tuple[Tensor, Tensor]:
    return _reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, seed, clamp_min, clamp_max)


@reparameterize_kl_backward_op.register_fake
@one_device
def _(grad_z, grad_kl, mu, logvar, eps, seed, clamp_min, clamp_max):
    return torch.empty_like(mu), torch.empty_like(mu)


def _kernel(op: str, device: torch.device):
    """The kernel of ``op`` (OP_NAME or BACKWARD_NAME) of the backend selected for ``device``."""
    name, forward = _backends.select(OP_NAME, device)
    return forward if op == OP_NAME else _BACKWARD_KERNELS[name]


def _check_kernel_inputs(mu, **others):
    """The kernels' contract, checked again at the op boundary: the ops are callable directly through
    torch.ops, and the GPU kernels take raw pointers, so a mismatch must raise before any launch."""
    if mu.dim() != 2 or not mu.is_contiguous():
        raise ValueError(f"mu must be a contiguous 2-D (rows, cols) tensor, got shape {tuple(mu.shape)}")
    if mu.dtype not in FLOAT_DTYPES:
        raise TypeError(f"mu must be float32, float16, bfloat16 or float64, got {mu.dtype}")
    for name, tensor in others.items():
        if tensor is None:
            continue
        if tensor.shape != mu.shape or tensor.dtype != mu.dtype or tensor.device != mu.device:
            raise ValueError(f"{name} must match mu ({tuple(mu.shape)}, {mu.dtype}, {mu.device}), "
                             f"got ({tuple(tensor.shape)}, {tensor.dtype}, {tensor.device})")
        if not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous")


def _check_seed_and_clamp(seed: Tensor, clamp_min: float, clamp_max: float) -> None:
    """What the public function guarantees, checked again: the backends would each do something else
    with a negative seed (the C++ binding refuses it, the others wrap it) or crossed bounds."""
    check_seed_tensor(seed)
    if math.isnan(clamp_min) or math.isnan(clamp_max) or clamp_min > clamp_max:
        raise ValueError(f"clamp_min and clamp_max must be ordered and not NaN, got {clamp_min} and {clamp_max}")


def _setup_context(ctx, inputs, output, backward_kernel=None):
    ctx.backward_kernel = backward_kernel or reparameterize_kl_backward_op
    mu, logvar, eps, seed, _, clamp_min, clamp_max = inputs
    ctx.save_for_backward(mu, logvar, eps, seed)
    ctx.clamp = (clamp_min, clamp_max)


def _backward(ctx, grad_z, grad_kl):
    mu, logvar, eps, seed = ctx.saved_tensors
    if torch.is_grad_enabled():
        # Backward under create_graph (double backward: a gradient penalty, a Hessian-vector product):
        # the reference's formulas in plain ops, the noise regenerated there, which autograd
        # differentiates again to any order. Rare enough that a kernel would not pay.
        with no_autocast(mu.device):
            grad_mu, grad_logvar = reference.backward(grad_z, grad_kl, mu, logvar, eps, int(seed), *ctx.clamp)
    else:
        grad_mu, grad_logvar = ctx.backward_kernel(
            grad_z.contiguous(), grad_kl.contiguous(), mu, logvar, eps, seed, *ctx.clamp
        )
    grad_eps = None
    if eps is not None and ctx.needs_input_grad[2]:
        # eps given by the caller may itself need a gradient: dz/deps = exp(logvar/2).
        logvar_c = torch.clamp(logvar.to(kl_dtype(logvar.dtype)), *ctx.clamp)
        grad_eps = (grad_z.to(logvar_c.dtype) * torch.exp(0.5 * logvar_c)).to(eps.dtype)
    return grad_mu, grad_logvar, grad_eps, None, None, None, None


reparameterize_kl_op.register_autograd(_backward, setup_context=_setup_context)


class _ReparameterizeKL(torch.autograd.Function):
    """The op's autograd outside torch.compile, over the same checks and kernels without the custom
    op's dispatch (as the MLP's ops.fused_linear: most of a small call's host time)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _reparameterize_kl(*inputs)
        _setup_context(ctx, inputs, output, _reparameterize_kl_backward)
        return output

    backward = staticmethod(_backward)


def reparameterize_kl(mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Tensor, per_element: bool,
                      clamp_min: float, clamp_max: float) -> tuple[Tensor, Tensor]:
    """``reparameterize_kl_op`` with its autograd: the op under torch.compile (which traces it), else
    ``_ReparameterizeKL``."""
    if torch.compiler.is_compiling():
        return reparameterize_kl_op(mu, logvar, eps, seed, per_element, clamp_min, clamp_max)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (mu, logvar, eps))):
        # Nothing to differentiate: the kernel without the autograd.Function, whose apply took about a
        # quarter of a small call's host time (12 of 51 us for 128 x 2 on the CI machine).
        return _reparameterize_kl(mu, logvar, eps, seed, per_element, clamp_min, clamp_max)
    return _ReparameterizeKL.apply(mu, logvar, eps, seed, per_element, clamp_min, clamp_max)


# ---- backend kernels: each takes 2-D contiguous tensors and a Python int seed -------------------

# The outputs are written whole by the kernels; a large one on the CPU goes on 2 MiB pages, whose first
# write faults in a 512th as many pages (a 128 MiB z: 13 ms instead of 52 on the CI machine).
def _empty_like_2d(mu):
    return empty_on_huge_pages(*mu.shape, dtype=mu.dtype, device=mu.device)


def _empty_outputs(mu, per_element):
    kl_shape = mu.shape if per_element else mu.shape[:1]
    return _empty_like_2d(mu), empty_on_huge_pages(*kl_shape, dtype=kl_dtype(mu.dtype), device=mu.device)


def _cpp_forward(mu, logvar, eps, seed, per_element, clamp_min, clamp_max):
    z, kl = _empty_outputs(mu, per_element)
    _backends.compiled_module().vae_forward_cpu(
        cpu_buffer(mu), cpu_buffer(logvar), cpu_buffer(eps), cpu_buffer(z), cpu_buffer(kl), mu.shape[0],
        mu.shape[1], DTYPE_NAMES[mu.dtype], seed, per_element, clamp_min, clamp_max,
    )
    return z, kl


def _cpp_backward(grad_z, grad_kl, mu, logvar, eps, seed, clamp_min, clamp_max):
    grad_mu, grad_logvar = _empty_like_2d(mu), _empty_like_2d(mu)
    _backends.compiled_module().vae_backward_cpu(
        cpu_buffer(grad_z), cpu_buffer(grad_kl), cpu_buffer(mu), cpu_buffer(logvar), cpu_buffer(eps),
        cpu_buffer(grad_mu), cpu_buffer(grad_logvar), mu.shape[0], mu.shape[1], DTYPE_NAMES[mu.dtype],
        seed, grad_kl.dim() == 2, clamp_min, clamp_max,
    )
    return grad_mu, grad_logvar


def _cuda_forward(mu, logvar, eps, seed, per_element, clamp_min, clamp_max):
    z, kl = _empty_outputs(mu, per_element)
    with torch.cuda.device(mu.device):
        _backends.compiled_module().vae_forward_cuda(
            device_pointer(mu), device_pointer(logvar), device_pointer(eps), device_pointer(z),
            device_pointer(kl), mu.shape[0], mu.shape[1], DTYPE_NAMES[mu.dtype], seed, per_element,
            clamp_min, clamp_max, current_stream(mu.device),
        )
    return z, kl


def _cuda_backward(grad_z, grad_kl, mu, logvar, eps, seed, clamp_min, clamp_max):
    grad_mu, grad_logvar = _empty_like_2d(mu), _empty_like_2d(mu)
    with torch.cuda.device(mu.device):
        _backends.compiled_module().vae_backward_cuda(
            device_pointer(grad_z), device_pointer(grad_kl), device_pointer(mu), device_pointer(logvar),
            device_pointer(eps), device_pointer(grad_mu), device_pointer(grad_logvar), mu.shape[0],
            mu.shape[1], DTYPE_NAMES[mu.dtype], seed, grad_kl.dim() == 2, clamp_min, clamp_max,
            current_stream(mu.device),
        )
    return grad_mu, grad_logvar


_triton_forward = _backends.lazy_kernel("aefast.vae.triton_kernels", "forward")
_triton_backward = _backends.lazy_kernel("aefast.vae.triton_kernels", "backward")


_backends.register_kernel(OP_NAME, "reference", reference.forward)
_backends.register_kernel(OP_NAME, "cpp", _cpp_forward)
_backends.register_kernel(OP_NAME, "cuda", _cuda_forward)
_backends.register_kernel(OP_NAME, "triton", _triton_forward)
_BACKWARD_KERNELS = {
    "reference": reference.backward,
    "cpp": _cpp_backward,
    "cuda": _cuda_backward,
    "triton": _triton_backward,
}
