"""torch.library custom ops of the fused MLP, their fake implementations, autograd, and the
registration of every backend's kernels (reference_kernels.py, triton_kernels.py: the same names).

- ``aefast::fused_linear``: y = act(x~ W^T + b) on 2-D contiguous tensors, x~ = x corrupted in the
  load (denoising); returns y and, for GELU only, the pre-activation that its derivative needs (the
  other derivatives come from y).
- ``aefast::fused_linear_loss``: the last layer and the mean reconstruction loss; returns the loss
  and d loss / d z (the reconstruction itself is never written).
- ``aefast::fused_linear_backward``: dx, dW, db of either, the noise regenerated from the seed.
- ``aefast::fused_narrow_mlp`` and its ``_backward``: consecutive layers of widths <= 128 in one pass.
- ``aefast::fused_narrow_mlp_loss`` and its ``_backward``: such a stretch ending in the mean loss; its
  forward writes the loss alone, and its backward recomputes every activation from x.
- ``aefast::corrupt``: x~ alone, the noise the fused first layer makes in its load, for the layers'
  plain-PyTorch path under ``torch.compile`` (below).

The layers call ``fused_linear``, ``fused_linear_loss`` and ``fused_narrow_mlp`` (end of the autograd
section): the ops under torch.compile, and otherwise autograd.Functions over the same checks and
kernels, which skip the custom op's dispatch (most of a small layer's host time). A whole model without
hooks runs as one autograd node, ``fused_chain``, outside torch.compile; on the CPU a large model's loss
runs as one node too, ``loss_in_blocks``, a block of rows at a time with its gradients.

The seed is a CPU int64 scalar tensor so that a seed drawn from torch's generator traces under
``torch.compile(fullgraph=True)``. Activation ``"none"`` stands for None in the schemas. Every op checks
all its arguments before a kernel runs (they are callable directly); float64, which no compiled kernel
takes, runs the reference's math in float64 on every backend.
"""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from aefast import _backends
from aefast._checks import check_seed_tensor, one_device
from aefast._dtypes import accumulation_dtype, autocast_dtype, no_autocast
from aefast.mlp import reference, reference_kernels

FORWARD, BACKWARD, LOSS = "fused_linear", "fused_linear_backward", "fused_linear_loss"
NARROW, NARROW_BACKWARD = "fused_narrow_mlp", "fused_narrow_mlp_backward"
NARROW_LOSS, NARROW_LOSS_BACKWARD = "fused_narrow_mlp_loss", "fused_narrow_mlp_loss_backward"

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the compiled kernels load and store
OP_DTYPES = KERNEL_DTYPES + (torch.float64,)  # float64 runs the reference's math (_kernel)
ACTIVATION_NAMES = tuple(name or "none" for name in reference.ACTIVATIONS)
NARROW_ACTIVATION_NAMES = tuple(name for name in ACTIVATION_NAMES if name != "gelu")  # GELU's derivative needs z
# Whether the layers' narrow stretches save their hidden activations for backward (the op's save=True)
# or leave backward to recompute them from the stretch's input, a chunk of rows at a time, on chip
# (Triton) or in cache (the CPU's blocks of rows). Recomputing cuts a stretch's activation memory to
# its output alone, for one more pass of its hidden layers' forward.
NARROW_SAVES_ACTIVATIONS = False


def _activation(name: str) -> Optional[str]:
    return None if name == "none" else name


def _fused_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, corruption: str,
                  corruption_param: float, seed: Tensor) -> tuple[Tensor, Tensor]:
    _check_linear(x, weight, bias)
    _check_choice("activation", activation, ACTIVATION_NAMES)
    _check_corruption(corruption, corruption_param, seed)
    kernel = _kernel(FORWARD, x)
    return kernel(x, weight, bias, _activation(activation), corruption, corruption_param, int(seed))


@torch.library.custom_op("aefast::fused_linear", mutates_args=())
def fused_linear_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, corruption: str,
                    corruption_param: float, seed: Tensor) -> tuple[Tensor, Tensor]:
    return _fused_linear(x, weight, bias, activation, corruption, corruption_param, seed)


@fused_linear_op.register_fake
@one_device
def _(x, weight, bias, activation, corruption, corruption_param, seed):
    y = x.new_empty(x.shape[0], weight.shape[0])
    return y, (torch.empty_like(y) if activation == "gelu" else x.new_empty(0))


def _fused_linear_backward(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], y: Tensor,
                           saved_z: Tensor, activation: str, corruption: str, corruption_param: float, seed: Tensor,
                           grad_scale: Optional[Tensor], need_input_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check_linear(x, weight, bias)
    _check_choice("activation", activation, ACTIVATION_NAMES)
    _check_corruption(corruption, corruption_param, seed)
    out_shape = (x.shape[0], weight.shape[0])
    _check_like("grad_y", grad_y, out_shape, x)
    if activation == "gelu":  # the derivative is taken at the saved pre-activation, the others at y
        _check_like("saved_z", saved_z, out_shape, x)
    elif activation != "none":
        _check_like("y", y, out_shape, x)
    scale_dtype = accumulation_dtype(x.dtype)
    if grad_scale is not None and (grad_scale.shape != () or grad_scale.dtype != scale_dtype
                                   or grad_scale.device != x.device):
        raise ValueError(f"grad_scale must be a 0-d {scale_dtype} tensor on {x.device}, got {tuple(grad_scale.shape)} "
                         f"{grad_scale.dtype} on {grad_scale.device}")
    return _linear_backward_unchecked(grad_y, x, weight, bias, y, saved_z, activation, corruption, corruption_param,
                                      seed, grad_scale, need_input_grad)


def _linear_backward_unchecked(grad_y, x, weight, bias, y, saved_z, activation, corruption, corruption_param, seed,
                               grad_scale, need_input_grad):
    """_fused_linear_backward's kernel call alone, for arguments that are known good: a chain's backward
    takes its tensors from its forward, which checked them, and its gradient from autograd, which gives
    it the output's shape, dtype and device."""
    kernel = _kernel(BACKWARD, x)
    return kernel(grad_y, x, weight, bias, y, saved_z, _activation(activation), corruption, corruption_param,
                  int(seed), grad_scale, need_input_grad)


@torch.library.custom_op("aefast::fused_linear_backward", mutates_args=())
def fused_linear_backward_op(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], y: Tensor,
                             saved_z: Tensor, activation: str, corruption: str, corruption_param: float, seed: Tensor,
                             grad_scale: Optional[Tensor], need_input_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _fused_linear_backward(grad_y, x, weight, bias, y, saved_z, activation, corruption, corruption_param, seed,
                                  grad_scale, need_input_grad)


@fused_linear_backward_op.register_fake
@one_device
def _(grad_y, x, weight, bias, y, saved_z, activation, corruption, corruption_param, seed, grad_scale,
      need_input_grad):
    grad_x = torch.empty_like(x) if need_input_grad else x.new_empty(0)
    return grad_x, torch.empty_like(weight), (torch.empty_like(bias) if bias is not None else weight.new_empty(0))


def _fused_linear_loss(h: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, output_activation: str,
                       loss: str) -> tuple[Tensor, Tensor]:
    _check_linear(h, weight, bias, input_name="h")
    _check_like("target", target, (h.shape[0], weight.shape[0]), h)
    _check_choice("output_activation", output_activation, ACTIVATION_NAMES)
    _check_loss(loss, output_activation, "output_activation")
    kernel = _kernel(LOSS, h)
    return kernel(h, weight, bias, target, _activation(output_activation), loss)


@torch.library.custom_op("aefast::fused_linear_loss", mutates_args=())
def fused_linear_loss_op(h: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, output_activation: str,
                         loss: str) -> tuple[Tensor, Tensor]:
    return _fused_linear_loss(h, weight, bias, target, output_activation, loss)


@fused_linear_loss_op.register_fake
@one_device
def _(h, weight, bias, target, output_activation, loss):
    return h.new_empty((), dtype=accumulation_dtype(h.dtype)), h.new_empty(h.shape[0], weight.shape[0])


def _fused_narrow_mlp(x: Tensor, weights: Tensor, biases: Optional[Tensor], dims: list[int], activation: str,
                      last_activation: str, save: bool) -> tuple[Tensor, Tensor]:
    """Consecutive layers dims[0] -> ... -> dims[-1] (each <= 128 wide) in one pass; ``weights`` and
    ``biases`` are the layers' parameters flattened and concatenated. Returns the output and, when
    ``save``, the activations between the layers (packed) for backward to read; without them backward
    recomputes them from x (NARROW_SAVES_ACTIVATIONS)."""
    _check_narrow(x, weights, biases, dims, activation, last_activation)
    kernel = _kernel(NARROW, x)
    return kernel(x, weights, biases, dims, _activation(activation), _activation(last_activation), save)


@torch.library.custom_op("aefast::fused_narrow_mlp", mutates_args=())
def fused_narrow_mlp_op(x: Tensor, weights: Tensor, biases: Optional[Tensor], dims: list[int], activation: str,
                        last_activation: str, save: bool) -> tuple[Tensor, Tensor]:
    return _fused_narrow_mlp(x, weights, biases, dims, activation, last_activation, save)


@fused_narrow_mlp_op.register_fake
@one_device
def _(x, weights, biases, dims, activation, last_activation, save):
    # The op's own checks first: a traced or meta-device call with bad dims fails as a real one does.
    _check_narrow(x, weights, biases, dims, activation, last_activation)
    saved = x.shape[0] * sum(dims[1:-1]) if save else 0
    return x.new_empty(x.shape[0], dims[-1]), x.new_empty(saved)


def _fused_narrow_mlp_backward(grad_out: Tensor, x: Tensor, out: Tensor, saved: Tensor, weights: Tensor,
                               biases: Optional[Tensor], dims: list[int], activation: str, last_activation: str,
                               need_input_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check_narrow(x, weights, biases, dims, activation, last_activation)
    if saved.numel() not in (0, x.shape[0] * sum(dims[1:-1])):
        raise ValueError(f"saved must hold the activations the forward saved with save=True "
                         f"({x.shape[0] * sum(dims[1:-1])} elements), or none (recomputed), got {saved.numel()}")
    _check_like("saved", saved, (saved.numel(),), x)
    _check_like("out", out, (x.shape[0], dims[-1]), x)
    _check_like("grad_out", grad_out, (x.shape[0], dims[-1]), x, contiguous=False)  # made contiguous below
    return _narrow_backward_unchecked(grad_out, x, out, saved, weights, biases, dims, activation, last_activation,
                                      need_input_grad)


def _narrow_backward_unchecked(grad_out, x, out, saved, weights, biases, dims, activation, last_activation,
                               need_input_grad):
    """_fused_narrow_mlp_backward's kernel call alone, for known good arguments (a chain's backward:
    _linear_backward_unchecked)."""
    kernel = _kernel(NARROW_BACKWARD, x)
    return kernel(grad_out.contiguous(), x, out, saved, weights, biases, dims, _activation(activation),
                  _activation(last_activation), need_input_grad)


@torch.library.custom_op("aefast::fused_narrow_mlp_backward", mutates_args=())
def fused_narrow_mlp_backward_op(grad_out: Tensor, x: Tensor, out: Tensor, saved: Tensor, weights: Tensor,
                                 biases: Optional[Tensor], dims: list[int], activation: str, last_activation: str,
                                 need_input_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _fused_narrow_mlp_backward(grad_out, x, out, saved, weights, biases, dims, activation, last_activation,
                                      need_input_grad)


@fused_narrow_mlp_backward_op.register_fake
@one_device
def _(grad_out, x, out, saved, weights, biases, dims, activation, last_activation, need_input_grad):
    return (torch.empty_like(x) if need_input_grad else x.new_empty(0), torch.empty_like(weights),
            torch.empty_like(biases) if biases is not None else weights.new_empty(0))


def _fused_narrow_mlp_loss(x: Tensor, weights: Tensor, biases: Optional[Tensor], target: Tensor, dims: list[int],
                           activation: str, last_activation: str, loss: str) -> Tensor:
    """The mean loss of a narrow stretch's output against ``target`` (as ``fused_linear_loss`` takes
    it), in one pass that writes neither the output nor any activation: backward recomputes them."""
    _check_narrow_loss(x, weights, biases, target, dims, activation, last_activation, loss)
    kernel = _kernel(NARROW_LOSS, x)
    return kernel(x, weights, biases, target, dims, _activation(activation), _activation(last_activation), loss)


@torch.library.custom_op("aefast::fused_narrow_mlp_loss", mutates_args=())
def fused_narrow_mlp_loss_op(x: Tensor, weights: Tensor, biases: Optional[Tensor], target: Tensor, dims: list[int],
                             activation: str, last_activation: str, loss: str) -> Tensor:
    return _fused_narrow_mlp_loss(x, weights, biases, target, dims, activation, last_activation, loss)


@fused_narrow_mlp_loss_op.register_fake
@one_device
def _(x, weights, biases, target, dims, activation, last_activation, loss):
    return x.new_empty((), dtype=accumulation_dtype(x.dtype))


def _fused_narrow_mlp_loss_backward(grad_loss: Tensor, x: Tensor, weights: Tensor, biases: Optional[Tensor],
                                    target: Tensor, dims: list[int], activation: str, last_activation: str, loss: str,
                                    need_input_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check_narrow_loss(x, weights, biases, target, dims, activation, last_activation, loss)
    if grad_loss.numel() != 1 or grad_loss.device != x.device or not grad_loss.is_floating_point():
        raise ValueError(f"grad_loss must be one floating-point value on {x.device}, got {tuple(grad_loss.shape)} "
                         f"{grad_loss.dtype} on {grad_loss.device}")
    return _narrow_loss_backward_unchecked(grad_loss, x, weights, biases, target, dims, activation, last_activation,
                                           loss, need_input_grad)


def _narrow_loss_backward_unchecked(grad_loss, x, weights, biases, target, dims, activation, last_activation, loss,
                                    need_input_grad):
    """_fused_narrow_mlp_loss_backward's kernel call alone, for known good arguments (a chain's backward:
    _linear_backward_unchecked)."""
    kernel = _kernel(NARROW_LOSS_BACKWARD, x)
    return kernel(grad_loss.reshape(()).to(accumulation_dtype(x.dtype)), x, weights, biases, target, dims,
                  _activation(activation), _activation(last_activation), loss, need_input_grad)


@torch.library.custom_op("aefast::fused_narrow_mlp_loss_backward", mutates_args=())
def fused_narrow_mlp_loss_backward_op(grad_loss: Tensor, x: Tensor, weights: Tensor, biases: Optional[Tensor],
                                      target: Tensor, dims: list[int], activation: str, last_activation: str,
                                      loss: str, need_input_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _fused_narrow_mlp_loss_backward(grad_loss, x, weights, biases, target, dims, activation, last_activation,
                                           loss, need_input_grad)


@fused_narrow_mlp_loss_backward_op.register_fake
@one_device
def _(grad_loss, x, weights, biases, target, dims, activation, last_activation, loss, need_input_grad):
    return (torch.empty_like(x) if need_input_grad else x.new_empty(0), torch.empty_like(weights),
            torch.empty_like(biases) if biases is not None else weights.new_empty(0))


@torch.library.custom_op("aefast::corrupt", mutates_args=())
def corrupt_op(x: Tensor, corruption: str, corruption_param: float, seed: Tensor) -> Tensor:
    """x~, the denoising corruption of a 2-D x (reference.corrupt, the stream of every backend's fused
    load), as one op: traced into torch.compile's graph, Philox's ten rounds on offsets made by arange
    did not compile in 5 minutes for a 7 x 9 input (inductor inlines every use of every round). On the
    CPU the noise comes from aefast._C, as in the layers' plain path outside torch.compile."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (rows, features), got shape {tuple(x.shape)}")
    _check_dtype(x, "x")
    _check_corruption(corruption, corruption_param, seed)
    with no_autocast(x.device):
        corrupted = reference.corrupt(x, corruption, corruption_param, int(seed), compiled_noise=True)
        return corrupted.clone()  # never x itself


@corrupt_op.register_fake
@one_device
def _(x, corruption, corruption_param, seed):
    return torch.empty_like(x)


def _setup_corrupt(ctx, inputs, output):
    _, ctx.corruption, ctx.param, seed = inputs
    ctx.save_for_backward(seed)


def _corrupt_backward(ctx, grad):
    """The mask's gradient is the same mask over grad (from the seed again); the added noise's is grad."""
    if ctx.corruption == "mask":
        grad = corrupt_op(grad, "mask", ctx.param, ctx.saved_tensors[0])
    return grad, None, None, None


corrupt_op.register_autograd(_corrupt_backward, setup_context=_setup_corrupt)


def _check_narrow(x: Tensor, weights: Tensor, biases: Optional[Tensor], dims: list[int], activation: str,
                  last_activation: str) -> None:
    if len(dims) < 2 or min(dims) < 1 or max(dims) > 128:
        raise ValueError(f"dims must list at least 2 widths in [1, 128], got {dims}")
    if x.dim() != 2 or x.shape[1] != dims[0] or not x.is_contiguous():
        raise ValueError(f"x must be contiguous (rows, {dims[0]}), got {tuple(x.shape)}")
    _check_dtype(x, "x")
    _check_choice("activation", activation, NARROW_ACTIVATION_NAMES)
    _check_choice("last_activation", last_activation, NARROW_ACTIVATION_NAMES)
    _check_like("weights", weights, (sum(a * b for a, b in zip(dims[:-1], dims[1:])),), x)
    if biases is not None:
        _check_like("biases", biases, (sum(dims[1:]),), x)


def _check_narrow_loss(x: Tensor, weights: Tensor, biases: Optional[Tensor], target: Tensor, dims: list[int],
                       activation: str, last_activation: str, loss: str) -> None:
    _check_narrow(x, weights, biases, dims, activation, last_activation)
    _check_like("target", target, (x.shape[0], dims[-1]), x)
    _check_loss(loss, last_activation, "last_activation")


def _check_loss(loss: str, output_activation: str, activation_name: str) -> None:
    _check_choice("loss", loss, reference.LOSSES)
    if loss == "bce" and output_activation != "sigmoid":
        raise ValueError(f"loss 'bce' takes the logits of a sigmoid output: {activation_name} must be 'sigmoid', "
                         f"got {output_activation!r}")


def _check_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], input_name: str = "x") -> None:
    """The kernels' contract, checked again here: torch.ops.aefast.* is reachable directly, and the GPU
    kernels read raw pointers, so any mismatch must raise before a launch."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"{input_name} (rows, in) and weight (out, in) must agree, got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    _check_dtype(x, input_name)
    for name, tensor in ((input_name, x), ("weight", weight), ("bias", bias)):
        if tensor is None:
            continue
        if tensor.dtype != x.dtype or tensor.device != x.device or not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous, {x.dtype} on {x.device}, got {tensor.dtype} on {tensor.device}"
                             f"{'' if tensor.is_contiguous() else ' (not contiguous)'}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def _check_dtype(x: Tensor, name: str) -> None:
    if x.dtype not in OP_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")


def _kernel(op: str, x: Tensor):
    """The kernel that runs ``op`` on x: the selected backend's; float64, which no compiled kernel
    takes, runs the reference's math in float64 on any device (as nn.Linear would; gradcheck's dtype).
    It runs outside any autocast region (the reference's float32 math would be cast to 16 bits)."""
    kernel = (_backends.registered_kernel(op, "reference") if x.dtype == torch.float64
              else _backends.select(op, x.device)[1])
    if autocast_dtype(x.device) is None:  # most calls: the kernel itself, without a wrapper to build and enter
        return kernel

    def run(*args):
        with no_autocast(x.device):
            return kernel(*args)
    return run


def _check_like(name: str, tensor: Tensor, shape: tuple, like: Tensor, contiguous: bool = True) -> None:
    """``tensor`` must have ``shape`` and ``like``'s dtype and device (and be contiguous)."""
    if (tuple(tensor.shape) != tuple(shape) or tensor.dtype != like.dtype or tensor.device != like.device
            or (contiguous and not tensor.is_contiguous())):
        raise ValueError(f"{name} must be {'contiguous ' if contiguous else ''}{tuple(shape)} {like.dtype} on "
                         f"{like.device}, got {tuple(tensor.shape)} {tensor.dtype} on {tensor.device}"
                         f"{'' if tensor.is_contiguous() else ' (not contiguous)'}")


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_corruption(corruption: str, param: float, seed: Tensor) -> None:
    _check_choice("corruption", corruption, reference.CORRUPTIONS)
    if corruption == "mask" and not 0 <= param < 1:
        raise ValueError(f"corruption_param of 'mask' (the drop rate) must be in [0, 1), got {param}")
    if corruption == "gaussian" and not (math.isfinite(param) and param >= 0):
        raise ValueError(f"corruption_param of 'gaussian' (sigma) must be finite and >= 0, got {param}")
    check_seed_tensor(seed)


# --- autograd --------------------------------------------------------------------------------------
# Each op's second output (GELU's pre-activation, the loss's d loss / d z, the narrow stretch's saved
# activations) is for backward only: set_materialize_grads(False) keeps autograd from filling a tensor
# of zeros as large as it for its gradient on every step (for the 64-wide stack at 2^20 rows, 768 MiB).
# Backward then gets None where an output had no gradient.
#
# Two ways in, one math: the custom ops' registered autograd (torch.ops.aefast.*, and whatever
# torch.compile traces), and outside torch.compile the autograd.Functions below, which call the same
# checks and kernels without the custom op's dispatch (argument defaults, the dynamo guard, the
# redispatch below autograd): on the 2-core CI machine a differentiable fused_linear call took 47 us
# through the op and 6 in its launcher. ``ctx.backward_kernels`` tells the shared backward which of
# the two to call for the backward ops: the ops under torch.compile, the plain functions otherwise.

def _gradients_by_recomputing(forward, inputs, grad_output) -> list[Optional[Tensor]]:
    """Backward under create_graph (double backward: a gradient penalty, a contractive autoencoder's
    Jacobian norm): the forward redone in the reference's plain ops from the saved inputs, and
    differentiated by autograd, so that the gradients carry a graph of their own (differentiable to
    any order). One gradient per input, None where it needs none. Rare enough that a kernel would not
    pay; torch.compile traces backward without create_graph, so compiled steps keep the kernels."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    with no_autocast(inputs[0].device):
        outputs = forward(*inputs)
    grads = iter(torch.autograd.grad(outputs, wanted, grad_output, create_graph=True, allow_unused=True))
    return [next(grads) if t is not None and t.requires_grad else None for t in inputs]


def _linear_grads(backward, grad_y, x, weight, bias, y, saved_z, activation, corruption, param, seed,
                  need_input_grad) -> tuple:
    """(dx or None, dW, db or None) of a layer by its backward kernel ``backward``."""
    grad_x, grad_w, grad_b = backward(grad_y.contiguous(), x, weight, bias, y, saved_z, activation, corruption, param,
                                      seed, None, need_input_grad)
    return grad_x if need_input_grad else None, grad_w, grad_b if bias is not None else None


def _loss_grads(backward, grad_loss, h, weight, bias, target, grad_z, output_activation, loss, need_h,
                need_target) -> tuple:
    """(dh or None, dW, db or None, d target or None) of the fused loss layer: its linear backward with
    d loss / d z scaled by ``grad_loss``. ``output_activation`` is None or a name, as the reference's."""
    grad_h, grad_w, grad_b = backward(
        grad_z, h, weight, bias, grad_z, h.new_empty(0), "none", "none", 0.0,
        # No noise to regenerate; made here, where torch.compile traces it.
        torch.zeros((), dtype=torch.int64, device="cpu"),
        grad_loss.reshape(()).to(accumulation_dtype(h.dtype)), need_h)
    grad_target = None
    if need_target:  # the target (the autoencoder's clean input) may come from a layer upstream
        grad_target = grad_loss * reference.loss_target_gradient(h, weight, bias, target, output_activation, loss)
    return grad_h if need_h else None, grad_w, grad_b if bias is not None else None, grad_target


def _narrow_grads(backward, grad_out, x, out, saved, weights, biases, dims, activation, last_activation,
                  need_input_grad) -> tuple:
    """(dx or None, d weights, d biases or None) of a narrow stretch (the parameters packed)."""
    grad_x, grad_w, grad_b = backward(grad_out, x, out, saved, weights, biases, list(dims), activation,
                                      last_activation, need_input_grad)
    return grad_x if need_input_grad else None, grad_w, grad_b if biases is not None else None


def _setup_linear(ctx, inputs, output, backward_kernels=None):
    ctx.backward_kernels = backward_kernels or _BACKWARD_OPS
    ctx.set_materialize_grads(False)
    x, weight, bias, activation, corruption, param, seed = inputs
    y, saved_z = output
    ctx.save_for_backward(x, weight, bias, y, saved_z, seed)
    ctx.attributes = (activation, corruption, param)


def _linear_backward(ctx, grad_y, _grad_saved_z):
    if grad_y is None:
        return None, None, None, None, None, None, None
    x, weight, bias, y, saved_z, seed = ctx.saved_tensors
    activation, corruption, param = ctx.attributes
    if torch.is_grad_enabled():
        grads = _gradients_by_recomputing(
            lambda x, weight, bias: reference.linear_forward(x, weight, bias, _activation(activation), corruption,
                                                             param, int(seed)), (x, weight, bias), grad_y)
        return (*grads, None, None, None, None)
    return (*_linear_grads(ctx.backward_kernels.linear, grad_y, x, weight, bias, y, saved_z, activation, corruption,
                           param, seed, ctx.needs_input_grad[0]), None, None, None, None)


def _setup_loss(ctx, inputs, output, backward_kernels=None):
    ctx.backward_kernels = backward_kernels or _BACKWARD_OPS
    ctx.set_materialize_grads(False)
    h, weight, bias, target, output_activation, loss = inputs
    ctx.save_for_backward(h, weight, bias, target, output[1])
    ctx.attributes = (_activation(output_activation), loss)


def _loss_backward(ctx, grad_loss, _grad_grad_z):
    if grad_loss is None:
        return None, None, None, None, None, None
    h, weight, bias, target, grad_z = ctx.saved_tensors
    output_activation, loss = ctx.attributes
    if torch.is_grad_enabled():
        grads = _gradients_by_recomputing(
            lambda h, weight, bias, target: reference.loss_of_output(reference.pre_activation(h, weight, bias), target,
                                                                     output_activation, loss),
            (h, weight, bias, target), grad_loss)
        return (*grads, None, None)
    return (*_loss_grads(ctx.backward_kernels.linear, grad_loss, h, weight, bias, target, grad_z, output_activation,
                         loss, ctx.needs_input_grad[0], ctx.needs_input_grad[3]), None, None)


def _setup_narrow(ctx, inputs, output, backward_kernels=None):
    ctx.backward_kernels = backward_kernels or _BACKWARD_OPS
    ctx.set_materialize_grads(False)
    x, weights, biases, dims, activation, last_activation, save = inputs
    ctx.save_for_backward(x, output[0], output[1], weights, biases)
    ctx.attributes = (dims, activation, last_activation)


def _narrow_backward(ctx, grad_out, _grad_saved):
    if grad_out is None:
        return None, None, None, None, None, None, None
    x, out, saved, weights, biases = ctx.saved_tensors
    dims, activation, last_activation = ctx.attributes
    if torch.is_grad_enabled():
        grads = _gradients_by_recomputing(
            lambda x, weights, biases: reference.narrow_forward(x, weights, biases, dims, _activation(activation),
                                                                _activation(last_activation)),
            (x, weights, biases), grad_out)
        return (*grads, None, None, None, None)
    return (*_narrow_grads(ctx.backward_kernels.narrow, grad_out, x, out, saved, weights, biases, dims, activation,
                           last_activation, ctx.needs_input_grad[0]), None, None, None, None)


def _narrow_loss_grads(backward, grad_loss, x, weights, biases, target, dims, activation, last_activation, loss,
                       need_input_grad, need_target) -> tuple:
    """(dx or None, d weights, d biases or None, d target or None) of a narrow stretch ending in its loss."""
    grad_x, grad_w, grad_b = backward(grad_loss, x, weights, biases, target, list(dims), activation, last_activation,
                                      loss, need_input_grad)
    grad_target = None
    if need_target:  # a target computed upstream: rare, so through autograd over the reference
        with torch.enable_grad(), no_autocast(x.device):
            detached = target.detach().requires_grad_()
            value = reference.narrow_loss(x, weights, biases, detached, dims, _activation(activation),
                                          _activation(last_activation), loss)
            grad_target, = torch.autograd.grad(value, detached, grad_loss)
    return grad_x if need_input_grad else None, grad_w, grad_b if biases is not None else None, grad_target


def _setup_narrow_loss(ctx, inputs, output, backward_kernels=None):
    ctx.backward_kernels = backward_kernels or _BACKWARD_OPS
    x, weights, biases, target, dims, activation, last_activation, loss = inputs
    ctx.save_for_backward(x, weights, biases, target)
    ctx.attributes = (dims, activation, last_activation, loss)


def _narrow_loss_backward(ctx, grad_loss):
    if grad_loss is None:
        return (None,) * 8
    x, weights, biases, target = ctx.saved_tensors
    dims, activation, last_activation, loss = ctx.attributes
    if torch.is_grad_enabled():
        grads = _gradients_by_recomputing(
            lambda x, weights, biases, target: reference.narrow_loss(
                x, weights, biases, target, dims, _activation(activation), _activation(last_activation), loss),
            (x, weights, biases, target), grad_loss)
        return (*grads, None, None, None, None)
    return (*_narrow_loss_grads(ctx.backward_kernels.narrow_loss, grad_loss, x, weights, biases, target, dims,
                                activation, last_activation, loss, ctx.needs_input_grad[0], ctx.needs_input_grad[3]),
            None, None, None, None)


fused_linear_op.register_autograd(_linear_backward, setup_context=_setup_linear)
fused_narrow_mlp_op.register_autograd(_narrow_backward, setup_context=_setup_narrow)
fused_linear_loss_op.register_autograd(_loss_backward, setup_context=_setup_loss)
fused_narrow_mlp_loss_op.register_autograd(_narrow_loss_backward, setup_context=_setup_narrow_loss)


class _BackwardKernels(NamedTuple):
    linear: Callable
    narrow: Callable
    narrow_loss: Callable


_BACKWARD_OPS = _BackwardKernels(fused_linear_backward_op, fused_narrow_mlp_backward_op,
                                 fused_narrow_mlp_loss_backward_op)
_BACKWARD_FUNCTIONS = _BackwardKernels(_fused_linear_backward, _fused_narrow_mlp_backward,
                                       _fused_narrow_mlp_loss_backward)


def _function(name: str, implementation: Callable, setup: Callable, backward: Callable) -> type:
    """An autograd.Function running ``implementation`` forward and ``backward`` with the plain
    backward functions: an op's autograd without its dispatch."""
    def forward(ctx, *inputs):
        output = implementation(*inputs)
        setup(ctx, inputs, output, _BACKWARD_FUNCTIONS)
        return output
    return type(name, (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward),
                 "__doc__": f"{implementation.__name__} with autograd, outside torch.compile."})


_FusedLinear = _function("_FusedLinear", _fused_linear, _setup_linear, _linear_backward)
_FusedLinearLoss = _function("_FusedLinearLoss", _fused_linear_loss, _setup_loss, _loss_backward)
_FusedNarrowMLP = _function("_FusedNarrowMLP", _fused_narrow_mlp, _setup_narrow, _narrow_backward)
_FusedNarrowMLPLoss = _function("_FusedNarrowMLPLoss", _fused_narrow_mlp_loss, _setup_narrow_loss,
                                _narrow_loss_backward)


def fused_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, corruption: str,
                 corruption_param: float, seed: Tensor) -> tuple[Tensor, Tensor]:
    """``fused_linear_op`` with its autograd: the op under torch.compile, else the same math without
    the op's dispatch. The layers call this."""
    if torch.compiler.is_compiling():
        return fused_linear_op(x, weight, bias, activation, corruption, corruption_param, seed)
    return _FusedLinear.apply(x, weight, bias, activation, corruption, corruption_param, seed)


def fused_linear_loss(h: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, output_activation: str,
                      loss: str) -> tuple[Tensor, Tensor]:
    """``fused_linear_loss_op`` with its autograd, as ``fused_linear`` calls its op."""
    if torch.compiler.is_compiling():
        return fused_linear_loss_op(h, weight, bias, target, output_activation, loss)
    return _FusedLinearLoss.apply(h, weight, bias, target, output_activation, loss)


def fused_narrow_mlp(x: Tensor, weights: Tensor, biases: Optional[Tensor], dims: list[int], activation: str,
                     last_activation: str, save: bool) -> tuple[Tensor, Tensor]:
    """``fused_narrow_mlp_op`` with its autograd, as ``fused_linear`` calls its op."""
    if torch.compiler.is_compiling():
        return fused_narrow_mlp_op(x, weights, biases, dims, activation, last_activation, save)
    return _FusedNarrowMLP.apply(x, weights, biases, dims, activation, last_activation, save)


def fused_narrow_mlp_loss(x: Tensor, weights: Tensor, biases: Optional[Tensor], target: Tensor, dims: list[int],
                          activation: str, last_activation: str, loss: str) -> Tensor:
    """``fused_narrow_mlp_loss_op`` with its autograd, as ``fused_linear`` calls its op."""
    if torch.compiler.is_compiling():
        return fused_narrow_mlp_loss_op(x, weights, biases, target, dims, activation, last_activation, loss)
    return _FusedNarrowMLPLoss.apply(x, weights, biases, target, dims, activation, last_activation, loss)



# --- a chain of layers as one autograd node ---------------------------------------------------------
# A model's layers in eager mode when none has hooks: one autograd.Function for the whole chain runs
# each layer's checks and kernels as the ops above do, but pays for one autograd node, one scan of its
# arguments and one saved-tensor list instead of one of each per layer. Under torch.compile the layers
# call the ops one by one, which it traces.

class LinearStep(NamedTuple):
    """One layer, act(x~ W^T + b); its parameters are (weight, bias or None)."""
    activation: str
    corruption: str = "none"
    corruption_param: float = 0.0


class NarrowStep(NamedTuple):
    """A narrow stretch of len(dims) - 1 layers; its parameters are each layer's (weight, bias or None)."""
    dims: tuple[int, ...]
    activation: str
    last_activation: str


class LossStep(NamedTuple):
    """The last layer and the mean reconstruction loss against the chain's target; (weight, bias or None)."""
    output_activation: str
    loss: str


class NarrowLossStep(NamedTuple):
    """A narrow stretch ending in the mean loss against the chain's target (``fused_narrow_mlp_loss``);
    its parameters are each layer's (weight, bias or None)."""
    dims: tuple[int, ...]
    activation: str
    last_activation: str
    loss: str


_LOSS_STEPS = (LossStep, NarrowLossStep)
# Tensors each kind of step saves for backward: a layer its input, output and GELU's pre-activation; a
# narrow stretch its input, output, hidden activations (empty when recomputed) and packed weights and
# biases; the loss its input and d loss / d z; a narrow stretch ending in its loss its input and packed
# weights and biases (backward recomputes the rest).
_SAVED_PER_STEP = {LinearStep: 3, NarrowStep: 5, LossStep: 2, NarrowLossStep: 3}


def _parameter_count(step) -> int:
    return 2 * (len(step.dims) - 1) if isinstance(step, (NarrowStep, NarrowLossStep)) else 2


def _layout(steps) -> list[tuple[int, int]]:
    """(first parameter, first saved tensor) of each step."""
    layout, parameter, saved = [], 0, 0
    for step in steps:
        layout.append((parameter, saved))
        parameter += _parameter_count(step)
        saved += _SAVED_PER_STEP[type(step)]
    return layout


def _packed(parameters) -> tuple[Tensor, Optional[Tensor]]:
    """A narrow stretch's (weight, bias) pairs packed as its op takes them."""
    weights = torch.cat([weight.reshape(-1) for weight in parameters[0::2]])
    biases = None if parameters[1] is None else torch.cat(parameters[1::2])
    return weights, biases


def _chain_reference(x: Tensor, target: Optional[Tensor], seed: Tensor, steps, *parameters) -> Tensor:
    """The chain in the reference's plain differentiable ops (its backward under create_graph)."""
    h = x
    for step, (first, _) in zip(steps, _layout(steps)):
        taken = parameters[first:first + _parameter_count(step)]
        if isinstance(step, LinearStep):
            h = reference.linear_forward(h, *taken, _activation(step.activation), step.corruption,
                                         step.corruption_param, int(seed))
        elif isinstance(step, NarrowStep):
            h = reference.narrow_forward(h, *_packed(taken), step.dims, _activation(step.activation),
                                         _activation(step.last_activation))
        elif isinstance(step, NarrowLossStep):
            h = reference.narrow_loss(h, *_packed(taken), target, step.dims, _activation(step.activation),
                                      _activation(step.last_activation), step.loss)
        else:
            h = reference.loss_of_output(reference.pre_activation(h, *taken), target,
                                         _activation(step.output_activation), step.loss)
    return h


def _chain_forward(x, target, seed, steps, differentiable, parameters) -> tuple[Tensor, list]:
    """Each step's checks and kernel in order: (the last step's output or the loss, the tensors its
    backward needs)."""
    h, saved = x, []
    for step, (first, _) in zip(steps, _layout(steps)):
        taken = parameters[first:first + _parameter_count(step)]
        if isinstance(step, LinearStep):
            y, saved_z = _fused_linear(h, *taken, step.activation, step.corruption, step.corruption_param, seed)
            saved += [h, y, saved_z]
        elif isinstance(step, NarrowStep):
            weights, biases = _packed(taken)
            y, activations = _fused_narrow_mlp(h, weights, biases, list(step.dims), step.activation,
                                               step.last_activation, differentiable and NARROW_SAVES_ACTIVATIONS)
            saved += [h, y, activations, weights, biases]
        elif isinstance(step, NarrowLossStep):
            weights, biases = _packed(taken)
            y = _fused_narrow_mlp_loss(h, weights, biases, target, list(step.dims), step.activation,
                                       step.last_activation, step.loss)
            saved += [h, weights, biases]
        else:
            y, grad_z = _fused_linear_loss(h, *taken, target, step.output_activation, step.loss)
            saved += [h, grad_z]
        h = y
    return h, saved


class _Chain(torch.autograd.Function):
    """``fused_chain``'s autograd: forward runs each step's checks and kernel, backward each step's
    backward kernel in reverse order (under create_graph, the reference's ops instead)."""

    @staticmethod
    def forward(ctx, x, target, seed, steps, differentiable, *parameters):
        ctx.set_materialize_grads(False)
        h, saved = _chain_forward(x, target, seed, steps, differentiable, parameters)
        ctx.steps = steps
        if differentiable:
            ctx.save_for_backward(x, target, seed, *parameters, *saved)
        return h

    @staticmethod
    def backward(ctx, grad_out):
        steps = ctx.steps
        count = sum(map(_parameter_count, steps))
        if grad_out is None:
            return (None,) * (5 + count)
        x, target, seed, *rest = ctx.saved_tensors
        parameters, saved = rest[:count], rest[count:]
        if torch.is_grad_enabled():
            grads = _gradients_by_recomputing(
                lambda x, target, *parameters: _chain_reference(x, target, seed, steps, *parameters),
                (x, target, *parameters), grad_out)
            return (grads[0], grads[1], None, None, None, *grads[2:])
        with _split_sums_gathered():
            return _chain_backward(ctx, steps, x, target, seed, parameters, saved, grad_out)


def _split_sums_gathered():
    """triton_kernels.split_sums_gathered where that module is loaded (its launchers alone split a weight
    gradient's sum, and a chain's forward on Triton loaded it), else nothing to gather."""
    module = sys.modules.get("aefast.mlp.triton_kernels")
    return module.split_sums_gathered() if module is not None else contextlib.nullcontext()


def _chain_backward(ctx, steps, x, target, seed, parameters, saved, grad_out) -> tuple:
    """_Chain.backward's gradients from each step's backward kernels, the last step first."""
    count = len(parameters)
    grad_parameters, grad_target, grad = [None] * count, None, grad_out
    layout = _layout(steps)
    for index in reversed(range(len(steps))):
        step, (first, at) = steps[index], layout[index]
        weight, bias = parameters[first], parameters[first + 1]
        need_input_grad = index > 0 or ctx.needs_input_grad[0]
        if isinstance(step, LinearStep):
            h, y, saved_z = saved[at:at + 3]
            grad, grad_w, grad_b = _linear_grads(
                _linear_backward_unchecked, grad, h, weight, bias, y, saved_z, step.activation, step.corruption,
                step.corruption_param, seed, need_input_grad)
            grad_parameters[first:first + 2] = [grad_w, grad_b]
        elif isinstance(step, NarrowStep):
            h, y, activations, weights, biases = saved[at:at + 5]
            grad, grad_w, grad_b = _narrow_grads(_narrow_backward_unchecked, grad, h, y, activations, weights,
                                                 biases, step.dims, step.activation, step.last_activation,
                                                 need_input_grad)
            layers = reference.narrow_layers(grad_w, grad_b, step.dims)  # views, one pair per layer
            grad_parameters[first:first + 2 * len(layers)] = [g for pair in layers for g in pair]
        elif isinstance(step, NarrowLossStep):
            h, weights, biases = saved[at:at + 3]
            grad, grad_w, grad_b, grad_target = _narrow_loss_grads(
                _narrow_loss_backward_unchecked, grad, h, weights, biases, target, step.dims, step.activation,
                step.last_activation, step.loss, need_input_grad, ctx.needs_input_grad[1])
            layers = reference.narrow_layers(grad_w, grad_b, step.dims)
            grad_parameters[first:first + 2 * len(layers)] = [g for pair in layers for g in pair]
        else:
            h, grad_z = saved[at:at + 2]
            grad, grad_w, grad_b, grad_target = _loss_grads(
                _linear_backward_unchecked, grad, h, weight, bias, target, grad_z,
                _activation(step.output_activation), step.loss, need_input_grad, ctx.needs_input_grad[1])
            grad_parameters[first:first + 2] = [grad_w, grad_b]
    return (grad, grad_target, None, None, None, *grad_parameters)


def fused_chain(x: Tensor, target: Optional[Tensor], seed: Tensor, steps, parameters) -> Tensor:
    """x (2-D) through ``steps`` (LinearStep, NarrowStep; a LossStep or NarrowLossStep last, against
    ``target``) with
    ``parameters``, each step's (weight, bias) pairs in order, as one autograd node outside
    torch.compile; returns the last step's output, or the loss. ``seed`` is the corruption's."""
    steps = tuple(steps)
    parameters = tuple(parameters)
    if not all(isinstance(step, (LinearStep, NarrowStep, *_LOSS_STEPS)) for step in steps):
        raise TypeError(f"steps must be LinearStep, NarrowStep, LossStep and NarrowLossStep tuples, got {steps}")
    if any(isinstance(step, _LOSS_STEPS) for step in steps[:-1]) or not steps:
        raise ValueError(f"steps must be one or more LinearStep and NarrowStep, a LossStep or NarrowLossStep "
                         f"only last; got {steps}")
    if (target is not None) != isinstance(steps[-1], _LOSS_STEPS):
        raise ValueError("target must be given exactly when the last step is a LossStep or NarrowLossStep")
    if len(parameters) != sum(map(_parameter_count, steps)):
        raise ValueError(f"parameters must hold a (weight, bias) pair per layer of the steps: "
                         f"{sum(map(_parameter_count, steps))} tensors, got {len(parameters)}")
    differentiable = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, target, *parameters))
    if not differentiable:  # no graph to record: the steps without an autograd node (3-4 us a call)
        return _chain_forward(x, target, seed, steps, False, parameters)[0]
    return _Chain.apply(x, target, seed, steps, differentiable, *parameters)


# --- a model's loss on the CPU in blocks of rows ---------------------------------------------------
# reference_kernels.chain_loss_in_blocks: every layer, the loss and its gradients for one block of rows
# before the next, where the layers run the reference's math through plain autograd (the layers decide:
# reference_kernels.chain_in_blocks_pays). One autograd node, eager mode only (torch.compile traces the
# layers' plain ops); its backward scales the gradients the forward took.

class BlockedLoss(NamedTuple):
    """All of a chain's loss but its tensors: each layer's activation (the last the output's), the
    loss, the first layer's corruption, and the L1 penalty on layer ``code_layer``'s output (None: none)."""
    activations: tuple[Optional[str], ...]
    loss: str
    corruption: str = "none"
    corruption_param: float = 0.0
    l1_code: float = 0.0
    code_layer: Optional[int] = None


def _blocked_loss_reference(x: Tensor, target: Tensor, seed: Tensor, spec: BlockedLoss, *parameters) -> Tensor:
    """What ``loss_in_blocks`` computes, in the reference's plain differentiable ops."""
    h = reference.corrupt(x, spec.corruption, spec.corruption_param, int(seed), compiled_noise=True)
    last, penalty = len(spec.activations) - 1, None
    for index, (weight, bias) in enumerate(zip(parameters[0::2], parameters[1::2])):
        z = reference.pre_activation(h, weight, bias)
        if index == last:
            value = reference.loss_of_output(z, target, spec.activations[last], spec.loss)
            return value if penalty is None else value + penalty
        h = reference.activate(z, spec.activations[index])
        if index == spec.code_layer:
            penalty = spec.l1_code * h.abs().sum(1).mean()


def _run_in_blocks(x, target, seed, spec, parameters, need_grads: bool, need_input_grad: bool):
    return reference_kernels.chain_loss_in_blocks(
        x, target, parameters[0::2], parameters[1::2], spec.activations, spec.loss, spec.corruption,
        spec.corruption_param, int(seed), spec.l1_code, spec.code_layer, need_grads, need_input_grad)


class _LossInBlocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, seed, spec, *parameters):
        ctx.set_materialize_grads(False)
        value, ctx.grads = _run_in_blocks(x, target, seed, spec, parameters, True, ctx.needs_input_grad[0])
        ctx.spec = spec
        ctx.save_for_backward(x, target, seed, *parameters)  # read again only under create_graph
        return value

    @staticmethod
    def backward(ctx, grad_loss):
        count = len(ctx.grads.weights) * 2
        if grad_loss is None:
            return (None,) * (4 + count)
        if torch.is_grad_enabled():
            x, target, seed, *parameters = ctx.saved_tensors
            grads = _gradients_by_recomputing(
                lambda x, target, *parameters: _blocked_loss_reference(x, target, seed, ctx.spec, *parameters),
                (x, target, *parameters), grad_loss)
            return (grads[0], grads[1], None, None, *grads[2:])
        unit = bool(grad_loss == 1)  # the usual loss.backward(): the gradients as the forward took them

        def scaled(grad, needed):
            return None if grad is None or not needed else (grad if unit else grad * grad_loss)
        needed = ctx.needs_input_grad[4:]
        grad_parameters = [scaled(grad, needed[2 * index + kind])
                           for index, pair in enumerate(zip(ctx.grads.weights, ctx.grads.biases))
                           for kind, grad in enumerate(pair)]
        return (scaled(ctx.grads.x, ctx.needs_input_grad[0]), None, None, None, *grad_parameters)


def loss_in_blocks(x: Tensor, target: Tensor, seed: Tensor, spec: BlockedLoss, parameters) -> Tensor:
    """The loss ``spec`` describes of a chain of layers with ``parameters`` (each layer's weight and
    bias or None, in order) on 2-D rows x against ``target``, by ``reference_kernels.chain_loss_in_blocks``:
    in training, its gradients in the same pass. The caller has checked every tensor (one dtype of
    CHAIN_CPU_DTYPES, one device, the widths) and that ``target`` needs no gradient."""
    parameters = tuple(parameters)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *parameters)):
        return _LossInBlocks.apply(x, target, seed, spec, *parameters)
    return _run_in_blocks(x, target, seed, spec, parameters, False, False)[0]


for _op, _kernel_name in ((FORWARD, "linear_forward"), (BACKWARD, "linear_backward"), (LOSS, "linear_loss_forward"),
                         (NARROW, "narrow_forward"), (NARROW_BACKWARD, "narrow_backward"),
                         (NARROW_LOSS, "narrow_loss_forward"), (NARROW_LOSS_BACKWARD, "narrow_loss_backward")):
    _backends.register_kernel(_op, "reference", getattr(reference_kernels, _kernel_name))
    _backends.register_kernel(_op, "triton", _backends.lazy_kernel("aefast.mlp.triton_kernels", _kernel_name))
