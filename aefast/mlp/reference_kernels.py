"""The reference backend's kernels of the fused MLP's ops (registered in ops.py, with the same names
as triton_kernels.py's): reference.py's math in each op's kernel signature, on any device. On the CPU a
large narrow stretch runs in blocks of rows that stay in cache (NARROW_CPU_BLOCK_BYTES)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from aefast._buffers import empty_on_huge_pages
from aefast._dtypes import accumulation_dtype
from aefast.mlp import reference


def linear_forward(x, weight, bias, activation, corruption, param, seed):
    z = reference.pre_activation(reference.corrupt(x, corruption, param, seed), weight, bias)
    y = reference.activate_(z, activation).to(x.dtype)  # over z, except GELU's, which backward needs
    return y, (z.to(x.dtype) if activation == "gelu" else x.new_empty(0))


def linear_backward(grad_y, x, weight, bias, y, saved_z, activation, corruption, param, seed, grad_scale,
                    need_input_grad):
    grad_x, grad_w, grad_b = reference.linear_backward(grad_y, x, weight, bias, activation, corruption, param, seed,
                                                       grad_scale, y=y)
    return (grad_x if need_input_grad else x.new_empty(0), grad_w,
            grad_b if grad_b is not None else weight.new_empty(0))


def linear_loss_forward(h, weight, bias, target, output_activation, loss):
    value, grad_z = reference.linear_loss_forward(h, weight, bias, target, output_activation, loss)
    return value.to(accumulation_dtype(h.dtype)), grad_z


# On the CPU the reference runs a narrow stretch in blocks of rows, every layer of a block before the
# next block: a block's widest activation takes 1 MiB in float32 (4096 rows at width 64), so the
# block stays in cache, and only the output and the saved activations reach memory (layer by layer,
# each layer's output and its activation's go there and back). Elsewhere one block holds every row
# (no per-block launches).
NARROW_CPU_BLOCK_BYTES = 1 << 20
# From this size of the widest layer's output on, the layers send a narrow stretch on the CPU through
# the op rather than layer by layer through plain autograd, whose outputs that large are fresh memory
# on every call. Op against plain autograd on the 2-core CI machine, 4 layers of widths 16 to 128:
# at 16 MiB, 1.07-1.37x for the training step and 1.5-2.0x for inference; at 64 MiB 1.4-1.8x and
# 2.8-5.4x; at 4 MiB, 0.7-1.1x. The 64-wide stack at 2^18 rows in other precisions: float64 1.3x and
# 1.4x; float16 10x and 14x (this CPU has no float16 matmul of its own, so eager's is slow). Not
# bfloat16: eager's matmuls run natively in it while the blocks compute in float32 (training 0.64x).
NARROW_CPU_MIN_BYTES = 16 << 20


def narrow_in_blocks_pays(rows: int, widest: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a narrow stretch of ``rows`` rows of ``dtype``, ``widest`` its largest width, runs faster
    on ``device`` through the reference's blocks than layer by layer."""
    return (device.type == "cpu" and dtype != torch.bfloat16
            and rows * widest * dtype.itemsize >= NARROW_CPU_MIN_BYTES)


def _narrow_blocks(x: Tensor, dims) -> list[slice]:
    rows = x.shape[0]
    step = max(1, NARROW_CPU_BLOCK_BYTES // (4 * max(dims))) if x.device.type == "cpu" else max(rows, 1)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _narrow_activations(x: Tensor, saved: Tensor, out: Tensor, dims) -> list[Tensor]:
    """[x, each layer's output]: the hidden ones are (rows, width) views of the packed ``saved``."""
    rows = x.shape[0]
    hidden = saved.split([rows * d for d in dims[1:-1]])
    return [x] + [h.view(rows, d) for h, d in zip(hidden, dims[1:-1])] + [out]


def _matmul(h: Tensor, weight_t: Tensor, bias: Optional[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """h @ weight_t (+ bias), into ``out`` when given."""
    return torch.mm(h, weight_t, out=out) if bias is None else torch.addmm(bias, h, weight_t, out=out)


def _narrow_block_forward(x_block: Tensor, layers, acts, outputs) -> list[Tensor]:
    """One block of rows through ``layers`` ((weight^T, bias) in the accumulation dtype) with
    activations ``acts``: each layer's output in x's dtype, also written to its block of ``outputs``
    where that is not None."""
    wide = layers[0][0].dtype
    rounded = x_block.dtype != wide  # each output rounded to x's dtype, as the saved ones are
    h, results = x_block.to(wide), []
    for (weight_t, bias), act, dst in zip(layers, acts, outputs):
        # In x's own dtype the matmul writes straight into the output.
        h = reference.activate_(_matmul(h, weight_t, bias, out=None if rounded else dst), act)
        if rounded:
            low = h.to(x_block.dtype)
            if dst is not None:
                dst.copy_(low)
            h = low.to(wide)
        results.append(low if rounded else h)
    return results


def _narrow_parameters(x, weights, biases, dims, activation, last_activation):
    """([(weight^T, bias) per layer] in the accumulation dtype, [each layer's activation])."""
    wide = accumulation_dtype(x.dtype)
    layers = [(w.to(wide).T, None if b is None else b.to(wide)) for w, b in reference.narrow_layers(weights, biases, dims)]
    return layers, [activation] * (len(layers) - 1) + [last_activation]


def narrow_forward(x, weights, biases, dims, activation, last_activation, save):
    layers, acts = _narrow_parameters(x, weights, biases, dims, activation, last_activation)
    out = empty_on_huge_pages(x.shape[0], dims[-1], dtype=x.dtype, device=x.device)
    saved = empty_on_huge_pages(x.shape[0] * sum(dims[1:-1]) if save else 0, dtype=x.dtype, device=x.device)
    # Where each layer's output goes: the saved activations when saving, else only the last's.
    outputs = _narrow_activations(x, saved, out, dims)[1:] if save else [None] * (len(layers) - 1) + [out]
    for block in _narrow_blocks(x, dims):
        _narrow_block_forward(x[block], layers, acts, [None if o is None else o[block] for o in outputs])
    return out, saved


def narrow_backward(grad_out, x, out, saved, weights, biases, dims, activation, last_activation,
                    need_input_grad):
    wide = accumulation_dtype(x.dtype)
    layers, acts = _narrow_parameters(x, weights, biases, dims, activation, last_activation)
    layer_weights = [weight_t.T for weight_t, _ in layers]
    recompute = saved.numel() == 0 and len(dims) > 2  # the forward saved nothing: each block's again
    if not recompute:
        activations = _narrow_activations(x, saved, out, dims)
    grad_ws = [torch.zeros_like(weight) for weight in layer_weights]
    grad_bs = [weight.new_zeros(weight.shape[0]) for weight in layer_weights]
    grad_x = empty_on_huge_pages(*x.shape, dtype=x.dtype, device=x.device) if need_input_grad else x.new_empty(0)
    for block in _narrow_blocks(x, dims):
        if recompute:  # the hidden layers again, rounded as the forward rounded them
            hidden = _narrow_block_forward(x[block], layers[:-1], acts[:-1], [None] * len(acts[:-1]))
            block_activations = [x[block], *hidden, out[block]]
        else:
            block_activations = [a[block] for a in activations]
        _narrow_block_backward(grad_out[block].to(wide), block_activations, layer_weights, acts, grad_ws,
                               grad_bs if biases is not None else None, grad_x[block] if need_input_grad else None)
    return _narrow_packed_grads(grad_x, grad_ws, grad_bs, weights, biases)


def _narrow_block_backward(grad, block_activations, layer_weights, acts, grad_ws, grad_bs, grad_x_block) -> None:
    """Backward through a block of rows: ``grad`` (accumulation dtype) at the last layer's output,
    [its input, each layer's output] of the block, and each layer's weight and activation; adds to
    the weights' and (unless None) biases' gradient sums, and writes dx to ``grad_x_block`` unless None."""
    for index in reversed(range(len(layer_weights))):
        wide = grad.dtype
        grad_z = reference.activation_backward(grad, None, block_activations[index + 1].to(wide), acts[index])
        grad_ws[index].addmm_(grad_z.T, block_activations[index].to(wide))
        if grad_bs is not None:
            grad_bs[index] += grad_z.sum(0)
        if index:
            grad = grad_z @ layer_weights[index]
        elif grad_x_block is not None and grad_x_block.dtype == wide:
            torch.mm(grad_z, layer_weights[0], out=grad_x_block)
        elif grad_x_block is not None:
            grad_x_block.copy_(grad_z @ layer_weights[0])


def _narrow_packed_grads(grad_x, grad_ws, grad_bs, weights, biases) -> tuple[Tensor, Tensor, Tensor]:
    grad_w = torch.cat([g.reshape(-1) for g in grad_ws]).to(weights.dtype)
    grad_b = torch.cat(grad_bs).to(biases.dtype) if biases is not None else weights.new_empty(0)
    return grad_x, grad_w, grad_b


def _narrow_block_pre_activation(x_block, layers, acts) -> tuple[list[Tensor], Tensor]:
    """(the hidden layers' outputs, rounded as the forward rounds them; the last layer's pre-activation
    in the accumulation dtype) of a block of rows."""
    hidden = _narrow_block_forward(x_block, layers[:-1], acts[:-1], [None] * len(acts[:-1])) if len(layers) > 1 else []
    last_input = (hidden[-1] if hidden else x_block).to(layers[-1][0].dtype)
    return hidden, _matmul(last_input, *layers[-1])


def narrow_loss_forward(x, weights, biases, target, dims, activation, last_activation, loss):
    layers, acts = _narrow_parameters(x, weights, biases, dims, activation, last_activation)
    total = 0.0
    for block in _narrow_blocks(x, dims):
        _, z = _narrow_block_pre_activation(x[block], layers, acts)
        total = total + reference.loss_of_output(z, target[block], last_activation, loss) * z.numel()
    count = x.shape[0] * dims[-1]
    return torch.as_tensor(total * reference.mean_factor(count), dtype=accumulation_dtype(x.dtype), device=x.device)


def narrow_loss_backward(grad_loss, x, weights, biases, target, dims, activation, last_activation, loss,
                         need_input_grad):
    layers, acts = _narrow_parameters(x, weights, biases, dims, activation, last_activation)
    layer_weights = [weight_t.T for weight_t, _ in layers]
    grad_ws = [torch.zeros_like(weight) for weight in layer_weights]
    grad_bs = [weight.new_zeros(weight.shape[0]) for weight in layer_weights]
    grad_x = empty_on_huge_pages(*x.shape, dtype=x.dtype, device=x.device) if need_input_grad else x.new_empty(0)
    scale = grad_loss.to(layer_weights[0].dtype) / max(1, x.shape[0] * dims[-1])
    for block in _narrow_blocks(x, dims):  # every activation recomputed, a block at a time
        hidden, z = _narrow_block_pre_activation(x[block], layers, acts)
        grad_z = reference.loss_gradient(z, target[block], last_activation, loss, scale)
        # The last layer's derivative is in grad_z already: it passes as a layer without activation.
        _narrow_block_backward(grad_z, [x[block], *hidden, z], layer_weights, acts[:-1] + [None], grad_ws,
                               grad_bs if biases is not None else None, grad_x[block] if need_input_grad else None)
    return _narrow_packed_grads(grad_x, grad_ws, grad_bs, weights, biases)


# --- a model's loss on the CPU, in blocks of rows, its gradients in the same pass ------------------
#
# A model's loss (an autoencoder's against its input, an MLP's against a target) on the CPU, wider than
# a narrow stretch, runs every layer, the loss and, in training, the whole backward for one block of
# rows before the next: the block's activations stay in cache, and nothing the size of the batch is
# written but dx where the input needs it. The gradients are taken in the forward pass for a loss
# gradient of 1 (the loss is a mean over rows, so a row's share of every gradient is known once its
# block has run), and the loss's backward scales them: a loss computed for training but never
# backpropagated costs a backward. The autoencoder 784-256-32-256-784's step in float32 on the 2-core
# CI machine, against eager's (direct timings, one session; medians of 5, which moved by 0.3x between
# repeats): 1.2-1.3x at 2^14 rows (49 MiB at width 784), 1.4-1.5x at 2^15, 0.8-1.3x at 6144-8192 and
# 0.9-1.1x below, where eager's layers stay in the 32 MiB L3 themselves; blocks of 2, 4, 6 and 8 MiB
# within that spread at 2^14 (1.18-1.26x). The loss alone (no_grad): 94 ms against eager's 136. A
# row-blocked forward alone gained nothing (139 ms against 140), bound by its matmuls and its output.
CHAIN_CPU_BLOCK_BYTES = 4 << 20  # a block's widest activation: 1337 rows at width 784 in float32
CHAIN_CPU_MIN_BYTES = 32 << 20  # the widest layer's output over all rows
CHAIN_CPU_DTYPES = (torch.float32, torch.float64)  # the math runs in x's dtype, as the reference's


def chain_in_blocks_pays(rows: int, widest: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a model's loss over ``rows`` rows of ``dtype``, ``widest`` its largest width, runs faster
    on ``device`` by ``chain_loss_in_blocks`` than layer by layer through plain autograd."""
    return device.type == "cpu" and dtype in CHAIN_CPU_DTYPES and rows * widest * dtype.itemsize >= CHAIN_CPU_MIN_BYTES


class ChainGradients(NamedTuple):
    """``chain_loss_in_blocks``'s gradients for a loss gradient of 1: each layer's dW and db (None for a
    layer without bias), and dx (None where not asked for)."""
    weights: list[Tensor]
    biases: list[Optional[Tensor]]
    x: Optional[Tensor]


def chain_loss_in_blocks(x: Tensor, target: Tensor, weights, biases, activations, loss: str, corruption: str = "none",
                         param: float = 0.0, seed: int = 0, l1_code: float = 0.0, code_layer: Optional[int] = None,
                         need_grads: bool = True,
                         need_input_grad: bool = False) -> tuple[Tensor, Optional[ChainGradients]]:
    """(the mean ``loss`` of the layers' output on x~ against ``target``, plus ``l1_code`` times the
    mean over rows of the L1 norm of layer ``code_layer``'s output; its gradients when ``need_grads``)
    for a chain of layers act_i(h W_i^T + b_i), x~ = x corrupted as ``reference.corrupt`` does. x,
    target and the parameters share one dtype of CHAIN_CPU_DTYPES; the last layer's activation is the
    output's (BCE takes its logits)."""
    rows, width = x.shape
    last = len(weights) - 1
    if code_layer is not None and not 0 <= code_layer < last:
        raise ValueError(f"code_layer must be a hidden layer, in [0, {last}), got {code_layer}")
    widest = max([width] + [weight.shape[0] for weight in weights])
    step = max(1, CHAIN_CPU_BLOCK_BYTES // (x.dtype.itemsize * widest))
    weights_t = [weight.T for weight in weights]
    scale = reference.mean_factor(rows * weights[-1].shape[0])
    code_scale = l1_code * reference.mean_factor(rows)
    grads = None
    if need_grads:
        grads = ChainGradients([torch.zeros_like(weight) for weight in weights],
                               [None if bias is None else torch.zeros_like(bias) for bias in biases],
                               torch.empty_like(x) if need_input_grad else None)
    loss_sum = x.new_zeros(())
    code_sum = x.new_zeros(())
    for start in range(0, rows, step):
        block = slice(start, min(start + step, rows))
        inputs = [reference.corrupt(x[block], corruption, param, seed, compiled_noise=True, first=start * width)]
        pre_activations = []  # GELU's alone: the others' derivatives come from their outputs
        for index, (weight_t, bias) in enumerate(zip(weights_t, biases)):
            z = _matmul(inputs[-1], weight_t, bias)
            if index == last:
                break
            pre_activations.append(z if activations[index] == "gelu" else None)
            inputs.append(reference.activate_(z, activations[index]))  # over z but for GELU's
        block_target = target[block]
        output = None  # the output itself, which MSE needs (BCE takes the logits)
        if loss == "bce":
            loss_sum += F.binary_cross_entropy_with_logits(z, block_target, reduction="sum")
        else:
            output = reference.activate(z, activations[last])
            loss_sum += (output - block_target).square().sum()
        if code_layer is not None:
            code_sum += inputs[code_layer + 1].abs().sum()
        if grads is None:
            continue
        grad_z = reference.loss_gradient(z, block_target, activations[last], loss, scale, output)
        for index in reversed(range(last + 1)):
            if index < last:  # grad_z holds d loss / d (layer index's output) until here
                if index == code_layer:
                    grad_z = grad_z + code_scale * inputs[index + 1].sign()
                grad_z = reference.activation_backward(grad_z, pre_activations[index], inputs[index + 1],
                                                       activations[index])
            grads.weights[index].addmm_(grad_z.T, inputs[index])
            if grads.biases[index] is not None:
                grads.biases[index] += grad_z.sum(0)
            if index:
                grad_z = grad_z @ weights[index]
            elif grads.x is not None:
                torch.mm(grad_z, weights[0], out=grads.x[block])
                if corruption == "mask":
                    grads.x[block] *= reference.corruption_keep(grads.x[block].shape, seed, param, x.device,
                                                                compiled_noise=True, first=start * width)
    value = loss_sum * scale
    return (value + code_sum * code_scale if code_layer is not None else value), grads
