"""The fused MLP's ops in plain PyTorch: the oracle of the tests and the fallback on devices without
a kernel. Forward and backward are written out (not autograd), as the kernels compute them.

A layer is y = act(x~ W^T + b), where x~ is x corrupted on the fly for a denoising autoencoder's
first layer: ``("mask", v)`` zeroes each input with probability v, ``("gaussian", s)`` adds s * N(0, 1).
The noise of element (r, c) of an (rows, cols) input is Philox (seed, r * cols + c), so the
kernels regenerate it in backward instead of storing it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from aefast._dtypes import accumulation_dtype
from aefast._philox import compiled_stream, philox_normal, philox_uniform

ACTIVATIONS = (None, "relu", "leaky_relu", "tanh", "sigmoid", "gelu")
LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default
CORRUPTIONS = ("none", "mask", "gaussian")
LOSSES = ("mse", "bce")


def activate(z: Tensor, activation: str | None) -> Tensor:
    if activation is None:
        return z
    if activation == "relu":
        return torch.relu(z)
    if activation == "leaky_relu":
        return F.leaky_relu(z, LEAKY_SLOPE)
    if activation == "tanh":
        return torch.tanh(z)
    if activation == "sigmoid":
        return torch.sigmoid(z)
    if activation == "gelu":
        return F.gelu(z)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def activate_(z: Tensor, activation: str | None) -> Tensor:
    """activate(z), written over z where the activation has an in-place form (GELU does not: its
    derivative needs z)."""
    if activation == "relu":
        return z.relu_()
    if activation == "leaky_relu":
        return F.leaky_relu_(z, LEAKY_SLOPE)
    if activation == "tanh":
        return z.tanh_()
    if activation == "sigmoid":
        return z.sigmoid_()
    return activate(z, activation)


def activation_backward(grad: Tensor, z: Tensor | None, y: Tensor, activation: str | None) -> Tensor:
    """grad times d act / d z at the pre-activation z, whose output is y = act(z). All but GELU take it
    from y (z may be None), in one pass of the backward kernel eager autograd runs for the activation
    module: ReLU passes 0 where y <= 0 even when grad is NaN or inf, and passes grad where y is NaN."""
    if activation is None:
        return grad
    if activation == "relu":
        return torch.ops.aten.threshold_backward(grad, y, 0)
    if activation == "leaky_relu":
        return torch.ops.aten.leaky_relu_backward(grad, y, LEAKY_SLOPE, True)
    if activation == "tanh":
        return torch.ops.aten.tanh_backward(grad, y)
    if activation == "sigmoid":
        return torch.ops.aten.sigmoid_backward(grad, y)
    if activation == "gelu":  # exact (erf) GELU, as F.gelu
        return torch.ops.aten.gelu_backward(grad, z)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _wide(t: Tensor) -> Tensor:
    """t in the dtype the math runs in (float32, or float64 for float64)."""
    return t.to(accumulation_dtype(t.dtype))


def noise_offsets(rows: int, cols: int, device, first: int = 0) -> Tensor:
    return torch.arange(first, first + rows * cols, device=device, dtype=torch.int64).reshape(rows, cols)


def _noise(kind: str, seed: int, shape, device, compiled: bool, first: int = 0) -> Tensor:
    """Philox uniforms or normals of (seed, first + r * cols + c) over ``shape``: by the formulas, or
    where ``compiled`` by a compiled kernel where one can run (``_philox.compiled_stream``)."""
    if compiled:
        values = compiled_stream(kind, seed, math.prod(shape), device, first)
        if values is not None:
            return values.reshape(shape)
    return (philox_uniform if kind == "uniform" else philox_normal)(seed, noise_offsets(*shape, device, first))


def corruption_keep(shape, seed: int, rate: float, device, compiled_noise: bool = False, first: int = 0) -> Tensor:
    """The mask corruption's kept inputs: Philox uniform >= rate."""
    return _noise("uniform", seed, shape, device, compiled_noise, first) >= rate


def corrupt(x: Tensor, corruption: str, param: float, seed: int, compiled_noise: bool = False,
            first: int = 0) -> Tensor:
    """x~. ``compiled_noise``: the noise from a compiled kernel (aefast._C on the CPU, Triton on a GPU:
    the same mask bit for bit, normals within 2e-6), which the layers' plain-autograd path takes; the
    oracle keeps the formulas. ``first``: the offset of x's first element, where x is a block of rows
    of a larger input (the offset of its row times the width)."""
    if corruption == "none":
        return x
    if corruption == "mask":
        return x * corruption_keep(x.shape, seed, param, x.device, compiled_noise, first).to(x.dtype)
    if corruption == "gaussian":
        return (_wide(x) + param * _noise("normal", seed, x.shape, x.device, compiled_noise, first)).to(x.dtype)
    raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")


def pre_activation(x_used: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """z = x~ W^T + b, accumulated in float32 (float64 for float64)."""
    return F.linear(_wide(x_used), _wide(weight), None if bias is None else _wide(bias))


def linear_forward(x, weight, bias, activation, corruption="none", param=0.0, seed=0) -> Tensor:
    """act(x~ W^T + b), accumulated in float32 (float64 for float64) and returned in x's dtype."""
    return activate_(pre_activation(corrupt(x, corruption, param, seed), weight, bias), activation).to(x.dtype)


def linear_backward(grad_y, x, weight, bias, activation, corruption="none", param=0.0, seed=0,
                    grad_scale: Tensor | None = None, y: Tensor | None = None):
    """(dx, dW, db) of linear_forward; ``grad_scale`` multiplies grad_y (the fused loss's upstream).
    With the forward's output ``y`` the derivative comes from it (except GELU's) and z is not redone."""
    x_used = _wide(corrupt(x, corruption, param, seed))
    if y is not None and activation != "gelu":
        grad_z = activation_backward(_wide(grad_y), None, _wide(y), activation)
    else:
        z = pre_activation(x_used, weight, bias)
        grad_z = activation_backward(_wide(grad_y), z, activate(z, activation), activation)
    if grad_scale is not None:
        grad_z = grad_z * _wide(grad_scale)
    grad_x = grad_z @ _wide(weight)
    if corruption == "mask":
        grad_x = grad_x * corruption_keep(x.shape, seed, param, x.device)
    grad_w = grad_z.T @ x_used
    grad_b = None if bias is None else grad_z.sum(0).to(bias.dtype)
    return grad_x.to(x.dtype), grad_w.to(weight.dtype), grad_b


def loss_of_output(output_pre_activation: Tensor, target: Tensor, output_activation, loss: str) -> Tensor:
    """Mean reconstruction loss over all elements; BCE takes the sigmoid output's logits (stable)."""
    z = _wide(output_pre_activation)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(z, _wide(target))
    return loss_of_activated(activate(z, output_activation), target, loss)


def loss_of_activated(output: Tensor, target: Tensor, loss: str) -> Tensor:
    """loss_of_output from the output itself, after its activation, as a plain-PyTorch autoencoder
    computes it: BCE on the sigmoid's probabilities (torch clamps its logs at -100, so where the
    sigmoid saturates it parts from the logits' form)."""
    out, t = _wide(output), _wide(target)
    if loss == "bce":
        return F.binary_cross_entropy(out, t)
    if loss == "mse":
        return F.mse_loss(out, t)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def loss_target_gradient(h, weight, bias, target, output_activation, loss) -> Tensor:
    """d loss / d target of linear_loss_forward's loss, for a target that needs a gradient itself (the
    clean input of an autoencoder whose input comes from a layer upstream): BCE with logits z is
    mean(softplus(z) - t z), MSE is mean((act(z) - t)^2)."""
    z = pre_activation(h, weight, bias)
    if loss == "bce":
        grad = -z / z.numel()
    else:
        grad = -2 * (activate(z, output_activation) - _wide(target)) / z.numel()
    return grad.to(target.dtype)


def narrow_layers(weights: Tensor, biases: Tensor | None, dims) -> list[tuple[Tensor, Tensor | None]]:
    """The narrow op's packed parameters (each layer's flattened and concatenated, in order) as one
    (weight, bias) pair of views per layer."""
    w_sizes = [a * b for a, b in zip(dims[:-1], dims[1:])]
    layer_weights = [w.reshape(b, a) for w, a, b in zip(weights.split(w_sizes), dims[:-1], dims[1:])]
    layer_biases = list(biases.split(dims[1:])) if biases is not None else [None] * len(w_sizes)
    return list(zip(layer_weights, layer_biases))


def narrow_forward(x, weights, biases, dims, activation, last_activation) -> Tensor:
    """The narrow op's stretch layer by layer, in plain differentiable ops."""
    layers = narrow_layers(weights, biases, dims)
    for index, (weight, bias) in enumerate(layers):
        x = linear_forward(x, weight, bias, activation if index < len(layers) - 1 else last_activation)
    return x


def mean_factor(count: int) -> float:
    """1 / count, the factor of a mean over ``count`` elements: NaN for none, as torch's mean of
    nothing (an empty batch's loss is NaN and its gradients empty)."""
    return 1.0 / count if count else math.nan


def loss_gradient(z: Tensor, target: Tensor, output_activation, loss: str, scale, out: Tensor | None = None) -> Tensor:
    """``scale`` times d loss / d z of the summed (not mean) loss of the output pre-activation z (in
    the accumulation dtype): BCE with logits sigmoid(z) - t, MSE 2 (act(z) - t) act'(z); ``out``, where
    given, is act(z) already computed."""
    if loss == "bce":
        return (torch.sigmoid(z) - _wide(target)) * scale
    out = activate(z, output_activation) if out is None else out
    return activation_backward(2 * (out - _wide(target)) * scale, z, out, output_activation)


def linear_loss_forward(h, weight, bias, target, output_activation, loss) -> tuple[Tensor, Tensor]:
    """(mean loss, d loss / d z) of the last layer, z = h W^T + b, without its output as a result."""
    z = pre_activation(h, weight, bias)
    grad_z = loss_gradient(z, target, output_activation, loss, mean_factor(z.numel()))
    return loss_of_output(z, target, output_activation, loss), grad_z.to(h.dtype)


def narrow_loss(x, weights, biases, target, dims, activation, last_activation, loss) -> Tensor:
    """The narrow op's stretch with the loss fused into its last layer (the narrow loss op), in plain
    differentiable ops: the hidden layers as ``narrow_forward``, the last as ``linear_loss_forward``."""
    layers = narrow_layers(weights, biases, dims)
    for weight, bias in layers[:-1]:
        x = linear_forward(x, weight, bias, activation)
    return loss_of_output(pre_activation(x, *layers[-1]), target, last_activation, loss)
