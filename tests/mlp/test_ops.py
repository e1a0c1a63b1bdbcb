"""The fused-MLP custom ops pass opcheck and gradcheck (float64, which runs the reference's written-out
backward on every backend), and trace under torch.compile(fullgraph=True)."""
import pytest
import torch

from aefast.nn import FusedAutoencoder, FusedMLP


@pytest.mark.parametrize("activation,corruption", [("relu", "none"), ("gelu", "mask"), ("tanh", "gaussian")])
def test_opcheck_linear(mlp_backend, activation, corruption):
    torch.manual_seed(0)
    x = torch.randn(9, 17, requires_grad=True)
    weight = torch.randn(5, 17, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    torch.library.opcheck(torch.ops.aefast.fused_linear.default,
                          (x, weight, bias, activation, corruption, 0.3, torch.tensor(4)))


@pytest.mark.parametrize("loss,activation", [("mse", "none"), ("bce", "sigmoid")])
def test_opcheck_loss(mlp_backend, loss, activation):
    torch.manual_seed(1)
    h = torch.randn(9, 6, requires_grad=True)
    weight = torch.randn(11, 6, requires_grad=True)
    target = torch.rand(9, 11)
    torch.library.opcheck(torch.ops.aefast.fused_linear_loss.default, (h, weight, None, target, activation, loss))


@pytest.mark.parametrize("activation,corruption,scaled", [
    ("relu", "none", False), ("gelu", "mask", False), ("tanh", "gaussian", True)])
def test_opcheck_linear_backward(mlp_backend, activation, corruption, scaled):
    """The backward ops are custom ops of their own (called by the forwards' autograd)."""
    torch.manual_seed(3)
    x, weight, bias, seed = torch.randn(9, 17), torch.randn(5, 17), torch.randn(5), torch.tensor(4)
    y, saved_z = torch.ops.aefast.fused_linear(x, weight, bias, activation, corruption, 0.3, seed)
    grad_scale = torch.tensor(0.5) if scaled else None
    torch.library.opcheck(torch.ops.aefast.fused_linear_backward.default,
                          (torch.randn(9, 5), x, weight, bias, y, saved_z, activation, corruption, 0.3, seed,
                           grad_scale, True))


def test_opcheck_narrow_backward(mlp_backend):
    torch.manual_seed(11)
    dims = [6, 10, 4]
    x, weights, biases = torch.randn(9, 6), torch.randn(6 * 10 + 10 * 4), torch.randn(14)
    out, saved = torch.ops.aefast.fused_narrow_mlp(x, weights, biases, dims, "tanh", "sigmoid", True)
    torch.library.opcheck(torch.ops.aefast.fused_narrow_mlp_backward.default,
                          (torch.randn(9, 4), x, out, saved, weights, biases, dims, "tanh", "sigmoid", True))


def test_training_step_compiles_fullgraph(mlp_backend):
    torch.manual_seed(2)
    model = FusedAutoencoder([20, 9, 3], output_activation="sigmoid")
    x = torch.rand(5, 20)

    def loss_of(x):
        return model.loss(x, corruption=("mask", 0.2), seed=3)

    compiled = torch.compile(loss_of, fullgraph=True, backend="aot_eager")
    loss, expected_loss = compiled(x), loss_of(x)
    torch.testing.assert_close(loss, expected_loss)
    # The backward of the compiled graph (AOT autograd's) against the eager one.
    for a, b in zip(torch.autograd.grad(loss, list(model.parameters())),
                    torch.autograd.grad(expected_loss, list(model.parameters()))):
        torch.testing.assert_close(a, b)


def test_forward_compiles_fullgraph(mlp_backend):
    mlp = FusedMLP([8, 16, 4], activation="gelu")
    x = torch.randn(3, 8)
    torch.testing.assert_close(torch.compile(mlp, fullgraph=True, backend="aot_eager")(x), mlp(x))


def float64_leaves(*shapes, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_() for shape in shapes]


@pytest.mark.parametrize("activation,corruption", [
    ("none", "none"), ("relu", "mask"), ("leaky_relu", "gaussian"), ("tanh", "none"), ("sigmoid", "mask"),
    ("gelu", "gaussian"),
])
def test_gradcheck_linear(mlp_backend, activation, corruption):
    x, weight, bias = float64_leaves((7, 5), (3, 5), (3,), seed=len(activation))

    def layer(x, weight, bias):
        return torch.ops.aefast.fused_linear(x, weight, bias, activation, corruption, 0.3, torch.tensor(9))[0]
    assert layer(x, weight, bias).dtype == torch.float64
    assert torch.autograd.gradcheck(layer, (x, weight, bias))


@pytest.mark.parametrize("loss,activation", [("mse", "none"), ("mse", "tanh"), ("mse", "gelu"), ("bce", "sigmoid")])
def test_gradcheck_loss(mlp_backend, loss, activation):
    h, weight, bias = float64_leaves((6, 4), (5, 4), (5,), seed=3)
    target = torch.rand(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def value(h, weight, bias):
        return torch.ops.aefast.fused_linear_loss(h, weight, bias, target, activation, loss)[0]
    assert value(h, weight, bias).dtype == torch.float64
    assert torch.autograd.gradcheck(value, (h, weight, bias))


@pytest.mark.parametrize("activation,last_activation", [("relu", "none"), ("tanh", "sigmoid"), ("leaky_relu", "tanh")])
def test_gradcheck_narrow(mlp_backend, activation, last_activation):
    dims = [5, 7, 3, 4]
    x, weights, biases = float64_leaves((6, 5), (5 * 7 + 7 * 3 + 3 * 4,), (7 + 3 + 4,), seed=5)

    def stretch(x, weights, biases):
        return torch.ops.aefast.fused_narrow_mlp(x, weights, biases, dims, activation, last_activation, True)[0]
    assert torch.autograd.gradcheck(stretch, (x, weights, biases))
