"""A layer's dX and dW in one launch (_linear_grads_kernel, in the interpreter) against the two kernels
that it joins: the same tiles, so the same gradients to the bit, on odd shapes (partial tiles on every
edge, the batch split over dW's programs), every activation's derivative, masked and Gaussian
corruption regenerated, the loss's scale, with and without bias, in float32 and bfloat16; then which
layers take it, and GRADS_LAUNCHES's choices."""
import pytest
import torch

from tests.mlp.conftest import count_launches


KERNELS = ("_linear_grads_kernel", "_linear_grad_input_kernel", "_linear_grad_weight_kernel")

# (rows, in, out, activation, corruption, bias, scaled): 300 rows split dW over the interpreter's four
# programs; 129 and 7 leave partial row tiles; widths 3, 17, 100, 130 partial column tiles.
CASES = [(300, 130, 17, "relu", ("mask", 0.25), True, False),
         (129, 100, 130, "gelu", ("gaussian", 0.5), True, True),
         (7, 17, 3, "tanh", ("none", 0.0), False, False),
         (129, 3, 100, "sigmoid", ("none", 0.0), True, True),
         (300, 64, 48, "leaky_relu", ("mask", 0.5), False, True),
         (1, 17, 100, "none", ("none", 0.0), True, True)]


def _gradients(triton_kernels, case, dtype):
    rows, width_in, width_out, activation, (corruption, param), bias, scaled = case
    generator = torch.Generator().manual_seed(rows + width_in)
    x = torch.randn(rows, width_in, generator=generator).to(dtype)
    weight = (torch.randn(width_out, width_in, generator=generator) / width_in ** 0.5).to(dtype)
    b = torch.randn(width_out, generator=generator).to(dtype) if bias else None
    grad_y = torch.randn(rows, width_out, generator=generator).to(dtype)
    y, z = triton_kernels.linear_forward(x, weight, b, activation if activation != "none" else None, corruption,
                                         param, 5)
    scale = torch.tensor(0.75) if scaled else None
    return triton_kernels.linear_backward(grad_y, x, weight, b, y, z, activation if activation != "none" else None,
                                          corruption, param, 5, scale, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(map(str, case[:4])))
def test_one_launch_gives_the_two_kernels_gradients_to_the_bit(triton_kernels, monkeypatch, case, dtype):
    counted = count_launches(monkeypatch, triton_kernels, *KERNELS)
    monkeypatch.setattr(triton_kernels, "GRADS_LAUNCHES", 1)
    together = _gradients(triton_kernels, case, dtype)
    assert [counted[name].launches for name in KERNELS] == [1, 0, 0]
    monkeypatch.setattr(triton_kernels, "GRADS_LAUNCHES", 2)
    separately = _gradients(triton_kernels, case, dtype)
    assert [counted[name].launches for name in KERNELS] == [1, 1, 1]
    for name, got, expected in zip(("dX", "dW", "db"), together, separately, strict=True):
        assert got.dtype == expected.dtype and torch.equal(got, expected), name


@pytest.mark.parametrize("dtype,precision,joined", [(torch.bfloat16, "ieee", True), (torch.float32, "tf32x3", True),
                                                     (torch.float32, "ieee", False)])
def test_the_autoencoders_step_joins_each_layers_gradients_but_the_first(triton_kernels, monkeypatch, dtype,
                                                                         precision, joined):
    """The first layer's input is data (no dX): its dW launches alone. Off a GPU "auto" takes one launch
    for the others, but in IEEE float32 (whose tiles spilled joined)."""
    from aefast.mlp import fp32_precision
    from aefast.nn import FusedAutoencoder

    counted = count_launches(monkeypatch, triton_kernels, *KERNELS)
    torch.manual_seed(0)
    model = FusedAutoencoder([150, 140, 130]).to(dtype)
    with fp32_precision(precision):
        torch.autograd.grad(model.loss(torch.rand(33, 150, dtype=dtype)), list(model.parameters()))
    assert [counted[name].launches for name in KERNELS] == ([3, 0, 1] if joined else [0, 3, 4])


def test_grads_launches_must_be_one_of_its_choices(triton_kernels, monkeypatch):
    monkeypatch.setattr(triton_kernels, "GRADS_LAUNCHES", "one")
    with pytest.raises(ValueError, match="GRADS_LAUNCHES must be one of"):
        _gradients(triton_kernels, CASES[2], torch.float32)
