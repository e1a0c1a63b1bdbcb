"""Drop-in layers: FusedLinear (nn.Linear + activation), FusedMLP (a chain of them) and
FusedAutoencoder (encoder + decoder with the seeds' undercomplete, sparse and denoising losses).

Each layer runs the op ``aefast::fused_linear`` (Triton on the GPU, the PyTorch reference on the
CPU), a narrow stretch ``aefast::fused_narrow_mlp``. The losses (``FusedMLP.loss``,
``FusedAutoencoder.loss``) run the last layer as ``aefast::fused_linear_loss``, or a narrow stretch that
ends the model as ``aefast::fused_narrow_mlp_loss``; the autoencoder's first layer generates the
corruption in its load.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from aefast import _backends
from aefast._checks import NO_SEED, check_no_seed_drawn_in_capture, check_seed, is_real, non_negative, positive_int
from aefast._dtypes import autocast_dtype
from aefast.mlp import ops, reference, reference_kernels

_MODULE_ACTIVATIONS = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
                       nn.GELU: "gelu"}


def _check_activation(activation, name: str) -> Optional[str]:
    if activation not in reference.ACTIVATIONS:
        raise ValueError(f"{name} must be one of {reference.ACTIVATIONS}, got {activation!r}")
    return activation


def _widths(widths, name: str) -> list[int]:
    """``widths`` (a list, tuple or range of at least 2 positive ints, or a 1-d NumPy array or tensor of
    them) as a list; ValueError naming ``name``, and the entry at fault, otherwise."""
    if isinstance(widths, (np.ndarray, Tensor)) and widths.ndim == 1:
        widths = widths.tolist()  # Python ints (or floats, refused below by entry)
    if not isinstance(widths, (list, tuple, range)):
        raise ValueError(f"{name} must be a list of widths, got {type(widths).__name__} {widths!r}")
    if len(widths) < 2:
        raise ValueError(f"{name} must list at least 2 widths, got {widths!r}")
    return [positive_int(width, f"{name}[{index}]") for index, width in enumerate(widths)]


def _seed_tensor(seed: Optional[int]) -> Tensor:
    """The seed as the ops take it, a CPU int64 scalar (on the CPU whatever torch's default device)."""
    if seed is None:  # from torch's generator, so torch.manual_seed repeats a run
        return torch.randint(0, 2**62, (), dtype=torch.int64, device="cpu")
    check_seed(seed)
    return torch.tensor(int(seed), dtype=torch.int64, device="cpu")


def _check_tensor(x, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have at least 1 dimension (the features), got a 0-d tensor")


def _check_input(x: Tensor, weight: Tensor, name: str = "x") -> None:
    _check_tensor(x, name)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{name} must have {weight.shape[1]} features in its last dimension, got shape {tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"{name} is on {x.device} but the layer's parameters are on {weight.device}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the layer's parameters are {weight.dtype}")


def _check_layers(layers, x: Tensor, hooked: list[bool], prefix: str = "") -> None:
    """Every layer's parameters on x's device and of x's dtype (a layer moved or cast on its own would
    otherwise fail inside a kernel's checks, or in torch, without naming the layer). A layer with hooks
    checks its input itself when it is called."""
    dtype, device = x.dtype, x.device
    for index, layer in enumerate(layers):
        if hooked[index]:
            continue
        for tensor in (layer.weight, layer.bias):
            if tensor is not None and (tensor.dtype != dtype or tensor.device != device):
                raise TypeError(f"{prefix}layers[{index}] is {tensor.dtype} on {tensor.device} but the input is {x.dtype} on "
                                f"{x.device}: every layer's parameters must match the input's dtype and device")


class _LayerTensors(NamedTuple):
    """What the layer functions read of a layer for one call: its parameters, read once (a parametrized
    weight, such as spectral_norm's, is computed on each read, and nn.Linear reads it once a call),
    cast under autocast."""
    weight: Tensor
    bias: Optional[Tensor]
    activation: Optional[str]
    in_features: int
    out_features: int


def _read_layers(x, modules: list, hooked: list[bool]) -> tuple:
    """(x, layers) as nn.Linear runs under autocast: inside an autocast region on x's device, x and the
    parameters cast to its dtype (bfloat16 or float16), float64 ones left as they are, as autocast
    leaves them; the kernels then run in that dtype. A layer with hooks is left as its module, unread:
    it is called through the module, which reads its parameters after its pre-hooks have run."""
    layers = [module if hook else _LayerTensors(module.weight, module.bias, module.activation,
                                                 module.in_features, module.out_features)
              for module, hook in zip(modules, hooked)]
    dtype = autocast_dtype(x.device) if isinstance(x, Tensor) else None
    if dtype is None:  # (most calls: no cast to make, none to call)
        return x, layers

    def cast(t):
        if t is None or not t.is_floating_point() or t.dtype == torch.float64:
            return t
        return t.to(dtype)
    return cast(x), [layer if hook else layer._replace(weight=cast(layer.weight), bias=cast(layer.bias))
                     for layer, hook in zip(layers, hooked)]


@torch.compiler.assume_constant_result  # a choice made when tracing, like the op's own dispatch
def _plain_autograd(device: torch.device) -> bool:
    """True where ``auto`` picks the reference (a CPU, and a GPU while its kernels time slower than eager:
    _backends.AUTO_ORDER): the same math through plain autograd, without the custom op's per-call cost,
    which made small models 2x slower than plain PyTorch on the CPU (bench_models.py). A backend forced
    by name, the reference included, still runs through the op, and so does a large narrow stretch on
    the CPU (``reference_kernels.narrow_in_blocks_pays``)."""
    requested = _backends.requested_backend()
    return requested == "auto" and _backends.select(ops.FORWARD, device, requested)[0] == "reference"


def _plain(device: torch.device) -> bool:
    """Whether the layers run the reference's math through plain autograd: where auto picks the
    reference (``_plain_autograd``), and under torch.func's transforms with auto on any device."""
    return _plain_autograd(device) or _backends.func_transform_takes_plain_ops()


def _own_hooks(module: nn.Module) -> bool:
    """Whether ``module`` has forward, forward pre- or backward hooks of its own."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs hooks, its own or global ones (the test that nn.Module's own
    call makes). Such a module is called rather than fused with its neighbours, so that its hooks run as
    in plain PyTorch: a forward hook sees the layer's output, torch.nn.utils.prune's pre-hook sets its
    weight first, a backward hook sees its gradients."""
    return _own_hooks(module) or bool(
        torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
        or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks)


def corrupted(x: Tensor, corruption: str, param: float, seed: Tensor) -> Tensor:
    """x~ (2-D) in plain ops, the noise from aefast._C on the CPU, or under torch.compile through the
    op ``aefast::corrupt`` (inductor takes minutes over the noise's plain ops: ``ops.corrupt_op``)."""
    if torch.compiler.is_compiling():
        return ops.corrupt_op(x, corruption, param, seed)
    return reference.corrupt(x, corruption, param, int(seed), compiled_noise=True)


def fused_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation, corruption="none", param=0.0,
                 seed: Tensor = NO_SEED, plain: Optional[bool] = None) -> Tensor:
    """act(x~ W^T + b) over x's last dimension: the op, or plain autograd where auto picks the reference
    (``plain``: that choice, when the caller has made it for a whole chain of layers)."""
    if plain is None:
        plain = _plain(x.device)
    if plain:
        if corruption != "none":
            x = corrupted(x, corruption, param, seed)
        # In place over the fresh pre-activation, which the linear's backward does not read: no second
        # activation-sized tensor (at 2^14 x 784 rows on the CPU, fresh pages to fault in; the
        # autoencoder's inference 336 -> 285 ms, direct timing, 2-core CI machine).
        return reference.activate_(F.linear(x, weight, bias), activation)
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    y, _ = ops.fused_linear(rows, weight, bias, activation or "none", corruption, float(param), seed)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _linear(x: Tensor, layer: nn.Linear, activation, corruption="none", param=0.0, seed: Tensor = NO_SEED,
            plain: Optional[bool] = None) -> Tensor:
    return fused_linear(x, layer.weight, layer.bias, activation, corruption, param, seed, plain)


class FusedLinear(nn.Linear):
    """``nn.Linear`` followed by ``activation`` (None, "relu", "leaky_relu", "tanh", "sigmoid",
    "gelu"), in one kernel: the same parameters, state_dict keys and initialization as nn.Linear, and
    under autocast the same casts (the kernel then runs in autocast's dtype)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: Optional[str] = None,
                 device=None, dtype=None):
        in_features = positive_int(in_features, "in_features")
        out_features = positive_int(out_features, "out_features")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = _check_activation(activation, "activation")

    def forward(self, x: Tensor) -> Tensor:
        x, (layer,) = _read_layers(x, [self], [False])  # this call runs its hooks itself
        _check_input(x, layer.weight)
        return _linear(x, layer, self.activation)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation!r}"


class FusedMLP(nn.Module):
    """The chain dims[0] -> ... -> dims[-1] of FusedLinear layers: ``activation`` after every layer
    but the last, ``output_activation`` after the last. A layer with hooks (prune's, a forward hook
    that reads features) is called on its own, so they run as in an nn.Sequential."""

    def __init__(self, dims: Sequence[int], activation: Optional[str] = "relu",
                 output_activation: Optional[str] = None, bias: bool = True, device=None, dtype=None):
        super().__init__()
        dims = _widths(dims, "dims")
        _check_activation(activation, "activation")
        _check_activation(output_activation, "output_activation")
        self.layers = nn.ModuleList(
            FusedLinear(dims[i], dims[i + 1], bias=bias, device=device, dtype=dtype,
                        activation=activation if i < len(dims) - 2 else output_activation)
            for i in range(len(dims) - 1))

    @property
    def dims(self) -> list[int]:
        return [self.layers[0].in_features] + [layer.out_features for layer in self.layers]

    def forward(self, x: Tensor) -> Tensor:
        modules = list(self.layers)
        hooked = [_has_hooks(module) for module in modules]
        x, layers = _read_layers(x, modules, hooked)
        if hooked[0]:
            _check_tensor(x)  # the layer's own call checks the rest
        else:
            _check_input(x, layers[0].weight)
        _check_layers(layers, x, hooked)
        return _run_layers(layers, x, modules, hooked)

    def loss(self, x: Tensor, target: Tensor, loss: str = "mse") -> Tensor:
        """The mean loss of ``forward(x)`` against ``target`` (of the output's shape): ``"mse"`` is
        ``F.mse_loss(forward(x), target)``; ``"bce"`` needs a sigmoid output and is
        ``F.binary_cross_entropy(forward(x), target)`` taken from the logits (the stable form). The last
        layer computes it without writing the output; where the last layers form a narrow stretch
        (widths <= 128), that stretch writes nothing but the loss, and backward recomputes its
        activations. Returned in float32 for 16-bit models (float64 for float64). With a hook on the
        model or its last layer it runs as that expression through the modules' calls."""
        modules = list(self.layers)
        as_modules = _has_hooks(self) or _has_hooks(modules[-1])
        hooked = [] if as_modules else [_has_hooks(module) for module in modules]
        x, layers = _read_layers(x, [] if as_modules else modules, hooked)
        target, _ = _read_layers(target, [], [])  # cast with x under autocast: the kernels read both in one dtype
        if as_modules:
            _check_tensor(x)
        else:
            _check_input(x, layers[0].weight)
            _check_layers(layers, x, hooked)
        _check_target(target, x, self.dims[-1])
        _check_loss(loss, modules[-1].activation)
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        target_rows = target.reshape(-1, target.shape[-1]).contiguous()
        if as_modules:
            return reference.loss_of_activated(self(rows), target_rows, loss)
        plain = _plain(rows.device)
        # A stretch narrow from end to end takes the narrow loss op (its blocks recompute in backward).
        if (_loss_in_blocks(plain, hooked, rows, target_rows, layers)
                and (0, len(layers)) not in _narrow_runs(layers, hooked)):
            return ops.loss_in_blocks(rows, target_rows, NO_SEED, ops.BlockedLoss(_activations(layers), loss),
                                      _parameters(layers))
        if _one_node(plain, hooked):
            steps, parameters = _steps_with_loss(layers, hooked, loss)
            return ops.fused_chain(rows, target_rows, NO_SEED, steps, parameters)
        return _layers_loss(layers, rows, target_rows, modules, hooked, loss, plain)

    @classmethod
    def from_sequential(cls, sequential: nn.Sequential) -> "FusedMLP":
        """An MLP equal to ``sequential`` (nn.Linear layers, each followed by at most one activation
        module; FusedLinear layers keep their own), sharing nothing with it; parameters come in the order
        of ``sequential.parameters()``. Nested nn.Sequentials and FusedMLPs are opened (an encoder and a
        decoder in one) and nn.Identity is skipped."""
        return _mlp_from_sequential(cls, sequential, "sequential")

    def to_sequential(self) -> nn.Sequential:
        """The equal nn.Sequential of nn.Linear and activation modules (a copy; a layer with hooks is
        refused, as ``from_sequential`` refuses one)."""
        modules = []
        for index, layer in enumerate(self.layers):
            _refuse_hooks(layer, f"layers[{index}]")
            _refuse_parametrized(layer, f"layers[{index}]", "the nn.Linear copy")
            linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                               device=layer.weight.device, dtype=layer.weight.dtype)
            linear.load_state_dict(layer.state_dict())
            modules.append(linear)
            if layer.activation is not None:
                module_type = next(t for t, name in _MODULE_ACTIVATIONS.items() if name == layer.activation)
                modules.append(module_type())
        return nn.Sequential(*modules)


def _mlp_from_sequential(mlp_class: type, sequential, name: str) -> "FusedMLP":
    """FusedMLP.from_sequential (into ``mlp_class``), its errors naming the argument ``name``."""
    if not isinstance(sequential, nn.Sequential):
        raise TypeError(f"{name} must be an nn.Sequential, got {type(sequential).__name__}")
    layers, modules = [], list(_opened(sequential, name))
    for label, module in modules:
        if isinstance(module, nn.Linear):
            _refuse_parametrized(module, label, "a FusedLinear")
        if isinstance(module, FusedLinear):  # an nn.Linear too, whose activation must not be lost
            layers.append([module, module.activation])
            continue
        if isinstance(module, nn.Linear):
            if type(module).forward is not nn.Linear.forward:
                raise ValueError(f"{label} ({type(module).__name__}) is an nn.Linear with a forward of its own: "
                                 "FusedMLP cannot know what it computes")
            layers.append([module, None])
            continue
        activation = _MODULE_ACTIVATIONS.get(type(module))
        if activation is None or not layers or layers[-1][1] is not None:
            raise ValueError(f"{label} ({type(module).__name__}) is not an activation after a Linear; "
                             f"FusedMLP takes nn.Linear layers each followed by at most one of "
                             f"{[m.__name__ for m in _MODULE_ACTIVATIONS]}")
        if isinstance(module, nn.LeakyReLU) and module.negative_slope != reference.LEAKY_SLOPE:
            raise ValueError(f"{label}: LeakyReLU slope must be {reference.LEAKY_SLOPE}")
        if isinstance(module, nn.GELU) and module.approximate != "none":
            raise ValueError(f"{label}: only the exact GELU (approximate='none') is fused")
        layers[-1][1] = activation
    if not layers:
        raise ValueError(f"{name} must hold at least one nn.Linear")
    first = layers[0][0]
    for label, module in modules:
        if isinstance(module, nn.Linear) and (module.weight.dtype, module.weight.device) != (
                first.weight.dtype, first.weight.device):
            raise TypeError(f"{label} is {module.weight.dtype} on {module.weight.device} but the first "
                            f"Linear is {first.weight.dtype} on {first.weight.device}: the layers must share both")
    for (previous, _), (following, _) in zip(layers, layers[1:]):
        if previous.out_features != following.in_features:
            raise ValueError(f"consecutive Linear layers must chain, got {previous.out_features} -> "
                             f"{following.in_features}")
    mlp = mlp_class([first.in_features] + [linear.out_features for linear, _ in layers],
                    bias=first.bias is not None, device=first.weight.device, dtype=first.weight.dtype)
    for fused, (linear, activation) in zip(mlp.layers, layers):
        if (linear.bias is None) != (fused.bias is None):
            raise ValueError(f"every Linear of {name} must have a bias, or none")
        fused.activation = activation
        fused.load_state_dict(linear.state_dict())
    return mlp


def _refuse_hooks(module: nn.Module, label: str) -> None:
    """A conversion refuses a module with hooks: it cannot carry them over (prune's and the old
    weight_norm's refer to the module they sit on, and keep its weight under other state_dict keys)."""
    if _own_hooks(module):
        raise ValueError(f"{label} ({type(module).__name__}) has hooks (torch.nn.utils.prune and the old "
                         "weight_norm work through them), which the converted layers would not keep: remove "
                         "them first (prune.remove(module, 'weight'), nn.utils.remove_weight_norm(module)) "
                         "and register what is still needed on the converted model")


def _refuse_parametrized(linear: nn.Linear, label: str, target: str) -> None:
    """A conversion refuses a layer with parametrized tensors: it copies plain state_dict values."""
    if nn.utils.parametrize.is_parametrized(linear):
        raise ValueError(f"{label} has parametrized tensors (weight_norm, spectral_norm, ...), which "
                         f"{target} cannot hold; nn.utils.parametrize.remove_parametrizations(module, "
                         "'weight') first converts their present values")


def _opened(sequential: nn.Sequential, label: str):
    """(label, module) for the modules of ``sequential`` in order, nested nn.Sequentials and FusedMLPs
    opened (their parameters come in the same order) and nn.Identity left out; labels index as
    ``sequential[1][0]``. Every module on the way, containers too, is refused if it has hooks."""
    _refuse_hooks(sequential, label)
    for index, module in enumerate(sequential):
        if isinstance(module, nn.Sequential):
            yield from _opened(module, f"{label}[{index}]")
            continue
        _refuse_hooks(module, f"{label}[{index}]")
        if isinstance(module, FusedMLP):
            for i, layer in enumerate(module.layers):
                _refuse_hooks(layer, f"{label}[{index}].layers[{i}]")
                yield f"{label}[{index}].layers[{i}]", layer
        elif not isinstance(module, nn.Identity):
            yield f"{label}[{index}]", module


# Widths up to this run as one kernel per row block (activations kept on chip); the Triton tile is
# the next power of two, and 128 x 128 weights still fit beside the activations.
MAX_NARROW_WIDTH = 128


def _narrow_runs(layers, hooked) -> list[tuple[int, int]]:
    """[start, end) runs of 2+ consecutive layers that one narrow kernel can take: every width <= 128,
    no GELU (its derivative needs the pre-activation), no hooks (``hooked[i]``: layer i is called on
    its own), the same activation until the last layer, and biases on all or none."""
    def fusable(index):
        layer = layers[index]
        return (max(layer.in_features, layer.out_features) <= MAX_NARROW_WIDTH and layer.activation != "gelu"
                and not hooked[index])

    runs, start = [], 0
    while start < len(layers):
        end = start + 1
        if fusable(start):
            while (end < len(layers) and fusable(end)
                   and layers[end - 1].activation == layers[start].activation
                   and (layers[end].bias is None) == (layers[start].bias is None)):
                end += 1
        if end - start >= 2:
            runs.append((start, end))
        start = end
    return runs


def _loss_in_blocks(plain: bool, hooked: list[bool], rows: Tensor, target: Tensor, layers) -> bool:
    """Whether a model's loss on 2-D ``rows`` runs as ``ops.loss_in_blocks``: where the layers run the
    reference's math in plain autograd, eager and without torch.func, none with hooks, a target that
    needs no gradient, and rows enough that the blocks pay (``reference_kernels.chain_in_blocks_pays``)."""
    return (plain and not any(hooked) and not target.requires_grad and not torch.compiler.is_compiling()
            and not _backends.func_transform_takes_plain_ops()
            and reference_kernels.chain_in_blocks_pays(rows.shape[0], max(_narrow_dims(layers)), rows.dtype,
                                                       rows.device))


def _activations(layers) -> tuple[Optional[str], ...]:
    return tuple(layer.activation for layer in layers)


def _parameters(layers) -> list[Optional[Tensor]]:
    return [tensor for layer in layers for tensor in (layer.weight, layer.bias)]


def _one_node(plain: bool, hooked: list[bool]) -> bool:
    """Whether a chain of layers runs as one autograd node (``ops.fused_chain``): on the kernels, in
    eager mode (torch.compile traces the ops one by one) and without hooks (each runs at its layer)."""
    return not plain and not any(hooked) and not torch.compiler.is_compiling()


def _steps(layers, hooked) -> tuple[list, list]:
    """(ops.fused_chain's steps, their parameters) for the layers: narrow runs and single layers."""
    runs = dict(_narrow_runs(layers, hooked))
    steps, parameters, index = [], [], 0
    while index < len(layers):
        end = runs.get(index, index + 1)
        stretch = layers[index:end]
        if end - index > 1:
            steps.append(ops.NarrowStep(tuple([stretch[0].in_features] + [layer.out_features for layer in stretch]),
                                        stretch[0].activation or "none", stretch[-1].activation or "none"))
        else:
            steps.append(ops.LinearStep(stretch[0].activation or "none"))
        parameters += [tensor for layer in stretch for tensor in (layer.weight, layer.bias)]
        index = end
    return steps, parameters


def _steps_with_loss(layers, hooked, loss: str) -> tuple[list, list]:
    """``_steps`` of layers whose last computes the mean loss: a narrow run that ends them becomes a
    NarrowLossStep (nothing of it written), else the last layer a LossStep."""
    steps, parameters = _steps(layers, hooked)
    last = steps[-1]
    steps[-1] = (ops.NarrowLossStep(last.dims, last.activation, last.last_activation, loss)
                 if isinstance(last, ops.NarrowStep) else ops.LossStep(layers[-1].activation or "none", loss))
    return steps, parameters


def _layers_loss(layers, h: Tensor, target: Tensor, modules: list, hooked: list[bool], loss: str,
                 plain: bool) -> Tensor:
    """The mean loss of the layers' output on rows ``h`` against ``target``, layer by layer as
    ``_run_layers`` runs them (under torch.compile, with hooks, in plain autograd), the loss fused into a
    narrow run that ends them (where it runs through its op) or into the last layer. The last layer has
    no hooks (the callers take the modules' own calls then)."""
    start = next((start for start, end in _narrow_runs(layers, hooked) if end == len(layers)), None)
    if start is not None and _narrow_by_op(plain, h.shape[0], layers[start:], h.dtype, h.device):
        h = _run_layers(layers[:start], h, modules[:start], hooked[:start]).contiguous()
        stretch = layers[start:]
        return ops.fused_narrow_mlp_loss(h, *_narrow_parameters(stretch), target, _narrow_dims(stretch),
                                         stretch[0].activation or "none", stretch[-1].activation or "none", loss)
    h = _run_layers(layers[:-1], h, modules[:-1], hooked[:-1])
    last = layers[-1]
    if plain:
        return reference.loss_of_output(F.linear(h, last.weight, last.bias), target, last.activation, loss)
    value, _ = ops.fused_linear_loss(h.contiguous(), last.weight, last.bias, target, last.activation or "none", loss)
    return value


def _run_layers(layers, x: Tensor, modules: list, hooked: list[bool]) -> Tensor:
    """x through the layers (``_read_layers`` of ``modules``): narrow runs as one op each, the other
    layers one by one, a layer with hooks (``hooked[i]``) through its module's call; all as one autograd
    node where ``_one_node`` says so. The backend choice is made once for the chain, on a plain list of
    the layers: on a small batch each layer's own lookups (and slices of the ModuleList, each a new
    Module) cost as much as its math."""
    plain = _plain(x.device)
    if layers and _one_node(plain, hooked):
        steps, parameters = _steps(layers, hooked)
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        out = ops.fused_chain(rows, None, NO_SEED, steps, parameters)
        return out.reshape(*x.shape[:-1], out.shape[-1])
    # In plain autograd a narrow run goes through its op only where the rows fill enough memory
    # (_narrow_by_op): below that for the widest run there is, no run needs to be looked for.
    rows = x.numel() // x.shape[-1]
    may_narrow = not plain or reference_kernels.narrow_in_blocks_pays(rows, MAX_NARROW_WIDTH, x.dtype, x.device)
    runs = dict(_narrow_runs(layers, hooked)) if may_narrow else {}
    index = 0
    while index < len(layers):
        if index in runs:
            end = runs[index]
            x = _narrow(layers[index:end], x, plain)
            index = end
        else:
            layer = layers[index]
            x = modules[index](x) if hooked[index] else _linear(x, layer, layer.activation, plain=plain)
            index += 1
    return x


def _narrow_dims(layers) -> list[int]:
    return [layers[0].in_features] + [layer.out_features for layer in layers]


def _narrow_parameters(layers) -> tuple[Tensor, Optional[Tensor]]:
    """A narrow stretch's weights and biases packed as the narrow ops take them."""
    weights = torch.cat([layer.weight.reshape(-1) for layer in layers])
    biases = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None
    return weights, biases


def _narrow_by_op(plain: bool, rows: int, layers, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a narrow stretch runs through its op: always on the kernels; in plain autograd where the
    reference's blocks pay (reference_kernels.narrow_in_blocks_pays) and no torch.func transform wants plain ops."""
    return not plain or (reference_kernels.narrow_in_blocks_pays(rows, max(_narrow_dims(layers)), dtype, device)
                         and not _backends.func_transform_takes_plain_ops())


def _narrow(layers, x: Tensor, plain: bool) -> Tensor:
    dims = _narrow_dims(layers)
    if not _narrow_by_op(plain, x.numel() // x.shape[-1], layers, x.dtype, x.device):
        for layer in layers:
            x = _linear(x, layer, layer.activation, plain=True)
        return x
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    weights, biases = _narrow_parameters(layers)
    save = ops.NARROW_SAVES_ACTIVATIONS and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (rows, weights, biases))
    out, _ = ops.fused_narrow_mlp(rows, weights, biases, dims, layers[0].activation or "none",
                                  layers[-1].activation or "none", save)
    return out.reshape(*x.shape[:-1], out.shape[-1])


class FusedAutoencoder(nn.Module):
    """encoder_dims[0] -> ... -> code -> ... -> input width. The decoder mirrors the encoder unless
    ``decoder_dims`` (code width first) is given. ``forward`` is the reconstruction."""

    def __init__(self, encoder_dims: Sequence[int], decoder_dims: Optional[Sequence[int]] = None,
                 activation: Optional[str] = "relu", code_activation: Optional[str] = None,
                 output_activation: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        encoder_dims = _widths(encoder_dims, "encoder_dims")
        decoder_dims = encoder_dims[::-1] if decoder_dims is None else _widths(decoder_dims, "decoder_dims")
        if decoder_dims[0] != encoder_dims[-1] or decoder_dims[-1] != encoder_dims[0]:
            raise ValueError(f"decoder_dims must run from the code width {encoder_dims[-1]} to the input width "
                             f"{encoder_dims[0]}, got {decoder_dims}")
        for name, value in (("activation", activation), ("code_activation", code_activation),
                            ("output_activation", output_activation)):  # named here, not as the MLPs' arguments
            _check_activation(value, name)
        self.encoder = FusedMLP(encoder_dims, activation, code_activation, device=device, dtype=dtype)
        self.decoder = FusedMLP(decoder_dims, activation, output_activation, device=device, dtype=dtype)

    @classmethod
    def from_sequential(cls, encoder: nn.Sequential, decoder: nn.Sequential) -> "FusedAutoencoder":
        """The autoencoder ``decoder(encoder(x))`` of two nn.Sequentials of nn.Linear and activation
        modules (each as ``FusedMLP.from_sequential`` takes it), sharing nothing with them: an existing
        model's ``loss`` with the corruption and the loss fused in."""
        fused_encoder = _mlp_from_sequential(FusedMLP, encoder, "encoder")
        fused_decoder = _mlp_from_sequential(FusedMLP, decoder, "decoder")
        encoder_dims, decoder_dims = fused_encoder.dims, fused_decoder.dims
        if decoder_dims[0] != encoder_dims[-1] or decoder_dims[-1] != encoder_dims[0]:
            raise ValueError(f"decoder must run from the encoder's code width {encoder_dims[-1]} to its input width "
                             f"{encoder_dims[0]}, got {decoder_dims[0]} -> {decoder_dims[-1]}")
        first, other = fused_encoder.layers[0].weight, fused_decoder.layers[0].weight
        if (first.dtype, first.device) != (other.dtype, other.device):
            raise TypeError(f"decoder is {other.dtype} on {other.device} but encoder is {first.dtype} on "
                            f"{first.device}: the layers must share both")
        model = cls(encoder_dims, decoder_dims, device="meta")  # the shapes; the layers come next
        model.encoder, model.decoder = fused_encoder, fused_decoder
        return model

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # narrow runs of the encoder and decoder each fuse into one kernel

    def decode(self, code: Tensor) -> Tensor:
        return self.decoder(code)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: Tensor, loss: str = "mse", corruption=None, l1_code: float = 0.0,
             seed: Optional[int] = None) -> Tensor:
        """The mean reconstruction loss of x against itself, its input corrupted first when asked:
        ``("mask", v)`` zeroes each input with probability v in [0, 1), ``("gaussian", sigma)`` adds
        sigma * N(0, 1), sigma >= 0 (the denoising autoencoder). ``l1_code`` adds l1_code times the
        mean over the batch of the code's L1 norm (the sparse autoencoder). ``loss="bce"`` needs a
        sigmoid output and takes its logits. Equals ``loss_fn(forward(x~), x) + penalty``. With a hook
        on the encoder, the decoder, the encoder's first layer or the decoder's last, it runs as that
        expression through the modules' calls, so the hooks see what they would in plain PyTorch (BCE
        then on the sigmoid's output)."""
        # Under autocast the target (x) is cast with the input: the fused loss reads both in one dtype.
        encoder_modules, decoder_modules = list(self.encoder.layers), list(self.decoder.layers)
        modules = encoder_modules + decoder_modules
        # Hooks that a fused corruption or loss would pass by: the loss as plain PyTorch computes it.
        as_modules = any(map(_has_hooks, (self.encoder, self.decoder, encoder_modules[0], decoder_modules[-1])))
        # That path calls the encoder and decoder, which read and check their layers themselves.
        hooked = [] if as_modules else [_has_hooks(module) for module in modules]
        x, layers = _read_layers(x, [] if as_modules else modules, hooked)
        encoder_layers, decoder_layers = layers[:len(encoder_modules)], layers[len(encoder_modules):]
        if as_modules:
            _check_tensor(x)
        else:
            _check_input(x, encoder_layers[0].weight)
            _check_layers(encoder_layers, x, hooked, "encoder.")
            _check_layers(decoder_layers, x, hooked[len(encoder_modules):], "decoder.")
        _check_loss(loss, decoder_modules[-1].activation)
        kind, param = _check_corruption(corruption)
        if kind != "none":
            check_no_seed_drawn_in_capture(seed, x.device, "the corruption's noise")
            seed_tensor = _seed_tensor(seed)
        else:  # no noise: a given seed is checked, none is drawn (torch's generator stays as F.mse_loss leaves it)
            check_seed(seed)
            seed_tensor = NO_SEED
        l1_code = non_negative(l1_code, "l1_code")
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        if as_modules:
            code = self.encoder(corrupted(rows, kind, param, seed_tensor))
            value = reference.loss_of_activated(self.decoder(code), rows, loss)
            return value + l1_code * code.abs().sum(1).mean() if l1_code else value
        first = encoder_layers[0]
        plain = _plain(rows.device)
        if _loss_in_blocks(plain, hooked, rows, rows, layers):
            code_layer = len(encoder_layers) - 1 if l1_code else None
            spec = ops.BlockedLoss(_activations(layers), loss, kind, param, l1_code, code_layer)
            return ops.loss_in_blocks(rows, rows, seed_tensor, spec, _parameters(layers))
        if not l1_code and _one_node(plain, hooked):  # (the code is not an output of the chain)
            # The steps the layer-by-layer path below takes: the corrupting first layer, the encoder's and
            # the decoder's narrow runs each apart, the loss fused into the decoder's last.
            encoder_steps, encoder_parameters = _steps(encoder_layers[1:], [False] * (len(encoder_layers) - 1))
            decoder_steps, decoder_parameters = _steps_with_loss(decoder_layers, [False] * len(decoder_layers), loss)
            steps = [ops.LinearStep(first.activation or "none", kind, param)] + encoder_steps + decoder_steps
            parameters = [first.weight, first.bias] + encoder_parameters + decoder_parameters
            return ops.fused_chain(rows, rows, seed_tensor, steps, parameters)
        h = _linear(rows, first, first.activation, kind, param, seed_tensor)
        h = _run_layers(encoder_layers[1:], h, encoder_modules[1:], hooked[1:len(encoder_modules)])
        penalty = l1_code * h.abs().sum(1).mean() if l1_code else None
        value = _layers_loss(decoder_layers, h, rows, decoder_modules, hooked[len(encoder_modules):], loss, plain)
        return value if penalty is None else value + penalty


def _check_loss(loss, output_activation: Optional[str]) -> None:
    """``loss`` one of reference.LOSSES; BCE (taken from the logits) only after a sigmoid output."""
    if loss not in reference.LOSSES:
        raise ValueError(f"loss must be one of {reference.LOSSES}, got {loss!r}")
    if loss == "bce" and output_activation != "sigmoid":
        raise ValueError(f"loss='bce' needs output_activation='sigmoid', got {output_activation!r}")


def _check_target(target, x: Tensor, width: int) -> None:
    """``target`` of the output's shape (x's, ``width`` features last), x's dtype and device."""
    _check_tensor(target, "target")
    expected = (*x.shape[:-1], width)
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have the output's shape {expected}, got {tuple(target.shape)}")
    if target.device != x.device:
        raise ValueError(f"target is on {target.device} but x is on {x.device}")
    if target.dtype != x.dtype:
        raise TypeError(f"target has dtype {target.dtype} but x is {x.dtype}")


def _check_corruption(corruption, name: str = "corruption") -> tuple[str, float]:
    if corruption is None:
        return "none", 0.0
    if not isinstance(corruption, (tuple, list)) or len(corruption) != 2:
        raise ValueError(f"{name} must be None, ('mask', v) or ('gaussian', sigma), got {corruption!r}")
    kind, param = corruption
    if kind == "mask":
        if not is_real(param) or not 0 <= param < 1:
            raise ValueError(f"{name} ('mask', v) needs v in [0, 1), got {param!r}")
    elif kind == "gaussian":
        if not is_real(param) or not 0 <= param < math.inf:  # not math.isfinite: torch.compile traces floats
            raise ValueError(f"{name} ('gaussian', sigma) needs a finite sigma >= 0, got {param!r}")
    else:
        raise ValueError(f"{name} must be None, ('mask', v) or ('gaussian', sigma), got {corruption!r}")
    return kind, float(param)
