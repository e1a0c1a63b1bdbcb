"""torch.library custom ops of the fused MLP, their fake implementations, autograd, and the
registration of every backend's kernels.

- ``aefast::fused_linear``: y = act(x~ W^T + b) on 2-D contiguous tensors, x~ = x corrupted in the
  load (denoising); returns y and, for GELU only, the pre-activation that its derivative needs (the
  other derivatives come from y).
- ``aefast::fused_linear_loss``: the last layer and the mean reconstruction loss; returns the loss
  and d loss / d z (the reconstruction itself is never written).
- ``aefast::fused_linear_backward``: dx, dW, db of either, the noise regenerated from the seed.

The seed is a CPU int64 scalar tensor so that a seed drawn from torch's generator traces under
``torch.compile(fullgraph=True)``. Activation ``"none"`` stands for None in the schemas.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from aefast import _backends
from aefast.mlp import reference

FORWARD, BACKWARD, LOSS = "fused_linear", "fused_linear_backward", "fused_linear_loss"


def _activation(name: str) -> Optional[str]:
    return None if name == "none" else name


@torch.library.custom_op("aefast::fused_linear", mutates_args=())
def fused_linear_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, corruption: str,
                    corruption_param: float, seed: Tensor) -> tuple[Tensor, Tensor]:
    _check_linear(x, weight, bias)
    _, kernel = _backends.select(FORWARD, x.device)
    return kernel(x, weight, bias, _activation(activation), corruption, corruption_param, int(seed))


@fused_linear_op.register_fake
def _(x, weight, bias, activation, corruption, corruption_param, seed):
    y = x.new_empty(x.shape[0], weight.shape[0])
    return y, (torch.empty_like(y) if activation == "gelu" else x.new_empty(0))


@torch.library.custom_op("aefast::fused_linear_backward", mutates_args=())
def fused_linear_backward_op(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], y: Tensor,
                             saved_z: Tensor, activation: str, corruption: str, corruption_param: float, seed: Tensor,
                             grad_scale: Optional[Tensor], need_input_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check_linear(x, weight, bias)
    if grad_y.shape != (x.shape[0], weight.shape[0]) or grad_y.dtype != x.dtype or not grad_y.is_contiguous():
        raise ValueError(f"grad_y must be contiguous {(x.shape[0], weight.shape[0])} {x.dtype}, "
                         f"got {tuple(grad_y.shape)} {grad_y.dtype}")
    _, kernel = _backends.select(BACKWARD, x.device)
    return kernel(grad_y, x, weight, bias, y, saved_z, _activation(activation), corruption, corruption_param,
                  int(seed), grad_scale, need_input_grad)


@fused_linear_backward_op.register_fake
def _(grad_y, x, weight, bias, y, saved_z, activation, corruption, corruption_param, seed, grad_scale,
      need_input_grad):
    grad_x = torch.empty_like(x) if need_input_grad else x.new_empty(0)
    return grad_x, torch.empty_like(weight), (torch.empty_like(bias) if bias is not None else weight.new_empty(0))


@torch.library.custom_op("aefast::fused_linear_loss", mutates_args=())
def fused_linear_loss_op(h: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, output_activation: str,
                         loss: str) -> tuple[Tensor, Tensor]:
    _check_linear(h, weight, bias)
    if target.shape != (h.shape[0], weight.shape[0]) or target.device != h.device or not target.is_contiguous():
        raise ValueError(f"target must be contiguous {(h.shape[0], weight.shape[0])} on {h.device}, "
                         f"got {tuple(target.shape)} on {target.device}")
    _, kernel = _backends.select(LOSS, h.device)
    return kernel(h, weight, bias, target, _activation(output_activation), loss)


@fused_linear_loss_op.register_fake
def _(h, weight, bias, target, output_activation, loss):
    return h.new_empty((), dtype=torch.float32), h.new_empty(h.shape[0], weight.shape[0])


def _check_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    """The kernels' contract, checked again here: torch.ops.aefast.* is reachable directly."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x (rows, in) and weight (out, in) must agree, got {tuple(x.shape)} and {tuple(weight.shape)}")
    for name, tensor in (("x", x), ("weight", weight), ("bias", bias)):
        if tensor is None:
            continue
        if tensor.dtype != x.dtype or tensor.device != x.device or not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous, {x.dtype} on {x.device}, got {tensor.dtype} on {tensor.device}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


# --- autograd --------------------------------------------------------------------------------------

def _setup_linear(ctx, inputs, output):
    x, weight, bias, activation, corruption, param, seed = inputs
    y, saved_z = output
    ctx.save_for_backward(x, weight, bias, y, saved_z, seed)
    ctx.attributes = (activation, corruption, param)


def _linear_backward(ctx, grad_y, _grad_saved_z):
    x, weight, bias, y, saved_z, seed = ctx.saved_tensors
    activation, corruption, param = ctx.attributes
    grad_x, grad_w, grad_b = fused_linear_backward_op(grad_y.contiguous(), x, weight, bias, y, saved_z, activation,
                                                      corruption, param, seed, None, ctx.needs_input_grad[0])
    return (grad_x if ctx.needs_input_grad[0] else None, grad_w, grad_b if bias is not None else None,
            None, None, None, None)


def _setup_loss(ctx, inputs, output):
    h, weight, bias, _, _, _ = inputs
    ctx.save_for_backward(h, weight, bias, output[1])


def _loss_backward(ctx, grad_loss, _grad_grad_z):
    h, weight, bias, grad_z = ctx.saved_tensors
    grad_h, grad_w, grad_b = fused_linear_backward_op(
        grad_z, h, weight, bias, grad_z, h.new_empty(0), "none", "none", 0.0, torch.zeros((), dtype=torch.int64),
        grad_loss.reshape(()).to(torch.float32), ctx.needs_input_grad[0])
    return (grad_h if ctx.needs_input_grad[0] else None, grad_w, grad_b if bias is not None else None,
            None, None, None)


fused_linear_op.register_autograd(_linear_backward, setup_context=_setup_linear)
fused_linear_loss_op.register_autograd(_loss_backward, setup_context=_setup_loss)


# --- kernels ---------------------------------------------------------------------------------------

def _reference_forward(x, weight, bias, activation, corruption, param, seed):
    y = reference.linear_forward(x, weight, bias, activation, corruption, param, seed)
    if activation != "gelu":
        return y, x.new_empty(0)
    x_used = reference.corrupt(x, corruption, param, seed)
    return y, torch.nn.functional.linear(x_used.float(), weight.float(),
                                         None if bias is None else bias.float()).to(x.dtype)


def _reference_backward(grad_y, x, weight, bias, y, saved_z, activation, corruption, param, seed, grad_scale,
                        need_input_grad):
    grad_x, grad_w, grad_b = reference.linear_backward(grad_y, x, weight, bias, activation, corruption, param, seed,
                                                       grad_scale)
    return (grad_x if need_input_grad else x.new_empty(0), grad_w,
            grad_b if grad_b is not None else weight.new_empty(0))


def _reference_loss(h, weight, bias, target, output_activation, loss):
    value, grad_z = reference.linear_loss_forward(h, weight, bias, target, output_activation, loss)
    return value.float(), grad_z


def _triton(name):
    def run(*args):
        from aefast.mlp import triton_kernels  # lazily: TRITON_INTERPRET is read when kernels are defined

        return getattr(triton_kernels, name)(*args)
    return run


for _op, _reference_kernel, _triton_name in (
    (FORWARD, _reference_forward, "linear_forward"),
    (BACKWARD, _reference_backward, "linear_backward"),
    (LOSS, _reference_loss, "linear_loss_forward"),
):
    _backends.register_kernel(_op, "reference", _reference_kernel)
    _backends.register_kernel(_op, "triton", _triton(_triton_name))
