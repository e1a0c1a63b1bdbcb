"""Property tests of the fused layers: any widths and batches (1, and sizes no block divides), any
activation, fp32 values with inf and NaN, and the low-precision dtypes; every backend against
nn.Sequential with the same weights, outputs and all gradients."""
import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from aefast.mlp import reference
from aefast.mlp.reference import ACTIVATIONS
from aefast.nn import FusedAutoencoder, FusedLinear, FusedMLP
from tests.mlp.test_layers import ACTIVATION_MODULES, float32_tolerance

widths = st.integers(1, 70)
batches = st.integers(1, 40)
activations = st.sampled_from((None,) + tuple(ACTIVATIONS))
# Unit roundoff of the low-precision formats.
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def special_values(draw_data, x: torch.Tensor, activations_used) -> torch.Tensor:
    """x with a few inf, -inf and NaN entries at drawn positions (or none). Not inf before a GELU:
    torch's CPU GELU gives NaN at +inf where the formula x Phi(x) (the kernels', torch on CUDA) gives inf."""
    specials = [math.nan] if "gelu" in activations_used else [math.inf, -math.inf, math.nan]
    count = draw_data.draw(st.integers(0, 3), label="special values")
    flat = x.flatten()
    for _ in range(count):
        position = draw_data.draw(st.integers(0, flat.numel() - 1), label="position")
        flat[position] = draw_data.draw(st.sampled_from(specials), label="value")
    return flat.reshape(x.shape)


def outputs_and_grads(module, x, grad):
    x = x.clone().requires_grad_()
    y = module(x)
    return [y, *torch.autograd.grad(y, [x, *module.parameters()], grad)]


def compare(fused_module, plain_module, x, dtype, tolerance):
    grad = torch.randn(plain_module(x).shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    names = ["output", "grad of x"] + [f"grad of {name}" for name, _ in fused_module.named_parameters()]
    got, torch_result = outputs_and_grads(fused_module, x, grad), outputs_and_grads(plain_module, x, grad)
    if dtype == torch.float32:
        for name, a, b in zip(names, got, torch_result):
            torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance, equal_nan=True, msg=name)
        return
    # Low precision, DESIGN.md's bar: against float64, the kernel's error is at most twice that of PyTorch
    # running the same layers in the low precision, plus one rounding of the result.
    exact = outputs_and_grads(copy.deepcopy(plain_module).double(), x.double(), grad.double())
    for name, a, b, e in zip(names, got, torch_result, exact):
        kernel_error, torch_error = (a.double() - e).abs().max(), (b.double() - e).abs().max()
        assert kernel_error <= 2 * torch_error + 2 * UNIT_ROUNDOFF[dtype] * e.abs().max(), name


@given(batch=batches, width_in=widths, width_out=widths, activation=activations, bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), data=st.data())
def test_fused_linear_equals_linear_then_activation(mlp_backend, batch, width_in, width_out, activation, bias, dtype,
                                                    data):
    torch.manual_seed(batch * 1000 + width_in * 10 + width_out)
    fused = FusedLinear(width_in, width_out, bias=bias, activation=activation).to(dtype)
    plain = nn.Sequential(nn.Linear(width_in, width_out, bias=bias), ACTIVATION_MODULES[activation]()).to(dtype)
    plain[0].load_state_dict(fused.state_dict())
    x = torch.randn(batch, width_in)
    if dtype == torch.float32:
        x = special_values(data, x, [activation])
        tolerance = float32_tolerance(max(width_in, width_out, batch))
    else:
        tolerance = None
    compare(fused, plain, x.to(dtype), dtype, tolerance)


@given(dims=st.lists(widths, min_size=2, max_size=5), batch=batches, activation=activations,
       output_activation=activations, data=st.data())
def test_fused_mlp_equals_its_sequential(mlp_backend, dims, batch, activation, output_activation, data):
    torch.manual_seed(sum(dims) + batch)
    fused = FusedMLP(dims, activation=activation, output_activation=output_activation)
    x = special_values(data, torch.randn(batch, dims[0]), [activation, output_activation])
    compare(fused, fused.to_sequential(), x, torch.float32, float32_tolerance(max(dims + [batch])) * len(dims))


@given(dims=st.lists(widths, min_size=2, max_size=3), batch=batches, loss=st.sampled_from(["mse", "bce"]),
       corruption=st.one_of(st.none(), st.tuples(st.just("mask"), st.floats(0.0, 0.95)),
                            st.tuples(st.just("gaussian"), st.floats(0.0, 2.0))),
       l1_code=st.sampled_from([0.0, 0.01]), seed=st.integers(0, 2**40))
def test_autoencoder_loss_equals_the_loss_of_forward_on_the_corrupted_input(mlp_backend, dims, batch, loss,
                                                                            corruption, l1_code, seed):
    """The fused loss against the reference backend's corrupted input pushed through to_sequential()."""
    torch.manual_seed(sum(dims) + batch)
    model = FusedAutoencoder(dims, output_activation="sigmoid" if loss == "bce" else None)
    x = torch.rand(batch, dims[0])
    value = model.loss(x, loss=loss, corruption=corruption, l1_code=l1_code, seed=seed)
    grads = torch.autograd.grad(value, list(model.parameters()))
    with torch.no_grad():
        corrupted = x if corruption is None else reference.corrupt(x, corruption[0], corruption[1], seed)
    encoder, decoder = model.encoder.to_sequential(), model.decoder.to_sequential()
    code = encoder(corrupted)
    if loss == "mse":
        expected = torch.nn.functional.mse_loss(decoder(code), x)
    else:  # the documented BCE of the sigmoid output, taken from its logits
        expected = torch.nn.functional.binary_cross_entropy_with_logits(decoder[:-1](code), x)
    expected = expected + l1_code * code.abs().sum(1).mean()
    tolerance = float32_tolerance(max(dims + [batch])) * len(dims)
    torch.testing.assert_close(value, expected, atol=tolerance, rtol=tolerance)
    plain_parameters = list(encoder.parameters()) + list(decoder.parameters())
    for a, b in zip(grads, torch.autograd.grad(expected, plain_parameters)):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)


@given(width_in=widths, width_out=widths, activation=st.text(min_size=1, max_size=8))
def test_unknown_activations_are_refused_by_name(width_in, width_out, activation):
    if activation in ACTIVATIONS:
        return
    with pytest.raises(ValueError, match="activation"):
        FusedLinear(width_in, width_out, activation=activation)
