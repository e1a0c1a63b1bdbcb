"""ops.fused_chain: a model's layers as one autograd node in eager mode. Same kernels as the layer-by-
layer ops, so the same losses, outputs and gradients to the bit; its own backward under create_graph
(the reference's ops) passes gradgradcheck; and its bad arguments are refused by name."""
import pytest
import torch

from aefast.mlp import layers as mlp_layers
from aefast.mlp import ops
from aefast.nn import FusedAutoencoder, FusedMLP

# (encoder dims, activation, output activation, loss, corruption, bias): an odd-width autoencoder; one
# whose middle layers 9 -> 6 -> 3 -> 6 -> 9 form narrow stretches; GELU (which saves z); BCE; no biases.
AUTOENCODERS = [
    ([17, 100, 3], "relu", None, "mse", ("mask", 0.25), True),
    ([20, 9, 6, 3], "tanh", "sigmoid", "bce", ("gaussian", 0.5), True),
    ([13, 7, 5], "gelu", "sigmoid", "mse", None, True),
    ([11, 6, 4], "leaky_relu", None, "mse", ("mask", 0.5), False),
]


def _layer_by_layer(monkeypatch):
    monkeypatch.setattr(mlp_layers, "_one_node", lambda plain, hooked: False)


def _loss_and_gradients(model, x, **loss_args):
    x = x.clone().requires_grad_()  # the input and the target both take a gradient
    value = model.loss(x, **loss_args)
    return [value, *torch.autograd.grad(value, [x, *model.parameters()])]


@pytest.mark.parametrize("case", range(len(AUTOENCODERS)))
def test_the_autoencoder_loss_as_one_node_equals_it_layer_by_layer(mlp_backend, monkeypatch, case):
    dims, activation, output_activation, loss, corruption, bias = AUTOENCODERS[case]
    torch.manual_seed(case)
    model = FusedAutoencoder(dims, activation=activation, output_activation=output_activation)
    if not bias:
        for layer in [*model.encoder.layers, *model.decoder.layers]:
            layer.bias = None
    x = torch.rand(7, dims[0])
    loss_args = dict(loss=loss, corruption=corruption, seed=11)
    assert type(model.loss(x.requires_grad_(), **loss_args).grad_fn).__name__ == "_ChainBackward"
    chained = _loss_and_gradients(model, x, **loss_args)
    _layer_by_layer(monkeypatch)
    assert type(model.loss(x, **loss_args).grad_fn).__name__ != "_ChainBackward"
    for got, expected in zip(chained, _loss_and_gradients(model, x, **loss_args), strict=True):
        assert torch.equal(got, expected)


def test_an_mlp_forward_as_one_node_equals_it_layer_by_layer(mlp_backend, monkeypatch):
    """A 3-D input; layers 5 -> 8 -> 4 -> 6 form a narrow stretch between two wide layers."""
    torch.manual_seed(3)
    mlp = FusedMLP([130, 5, 8, 4, 6, 129], activation="tanh", output_activation="sigmoid")
    x = torch.randn(2, 3, 130)
    grad_out = torch.randn(2, 3, 129)

    def outputs_and_gradients():
        leaf = x.clone().requires_grad_()
        out = mlp(leaf)
        return [out, *torch.autograd.grad(out, [leaf, *mlp.parameters()], grad_out)]
    assert type(mlp(x.requires_grad_()).grad_fn).__name__ == "ViewBackward0"  # the reshape of the chain's output
    chained = outputs_and_gradients()
    _layer_by_layer(monkeypatch)
    for got, expected in zip(chained, outputs_and_gradients(), strict=True):
        assert torch.equal(got, expected)
    with torch.no_grad():
        assert torch.equal(mlp(x), chained[0])


def test_frozen_layers_and_an_input_without_gradient(mlp_backend):
    """Gradients only where asked: a frozen first layer gets none, the input none."""
    torch.manual_seed(4)
    model = FusedAutoencoder([9, 6, 3])
    model.encoder.layers[0].requires_grad_(False)
    value = model.loss(torch.rand(5, 9))
    frozen = list(model.encoder.layers[0].parameters())
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, trained)
    assert len(grads) == len(list(model.parameters())) - len(frozen)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def _float64_chain():
    """A chain of every step kind on float64 leaves: a masked first layer, a narrow stretch, the loss."""
    generator = torch.Generator().manual_seed(8)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()
    steps = [ops.LinearStep("tanh", "mask", 0.3), ops.NarrowStep((5, 4, 3), "relu", "none"),
             ops.LossStep("sigmoid", "mse")]
    parameters = [leaf(5, 7), leaf(5), leaf(4, 5), leaf(4), leaf(3, 4), leaf(3), leaf(7, 3), leaf(7)]
    return leaf(6, 7), leaf(6, 7), steps, parameters


def test_gradcheck_and_gradgradcheck_of_a_chain(mlp_backend):
    x, target, steps, parameters = _float64_chain()

    def chain(x, target, *parameters):
        return ops.fused_chain(x, target, torch.tensor(5), steps, parameters)
    assert torch.autograd.gradcheck(chain, (x, target, *parameters))
    assert torch.autograd.gradgradcheck(chain, (x, target, *parameters))


@pytest.mark.parametrize("change,message", [
    (lambda s, p, t: (s[2:] + s[:2], p, t), "LossStep only last"),
    (lambda s, p, t: ([], p, t), "LossStep only last"),
    (lambda s, p, t: (s, p[:-1], t), "parameters must hold"),
    (lambda s, p, t: (s, p, None), "target must be given"),
    (lambda s, p, t: (s[:2], p[:6], t), "target must be given"),
])
def test_bad_chains_are_refused_by_name(change, message):
    x, target, steps, parameters = _float64_chain()
    steps, parameters, target = change(steps, parameters, target)
    with pytest.raises(ValueError, match=message):
        ops.fused_chain(x, target, torch.tensor(5), steps, parameters)


def test_a_step_of_another_kind_is_refused_by_name():
    x, target, steps, parameters = _float64_chain()
    with pytest.raises(TypeError, match="steps must be LinearStep"):
        ops.fused_chain(x, target, torch.tensor(5), [("relu",)] + steps[1:], parameters)


def test_a_layer_that_does_not_fit_is_refused_by_name(mlp_backend):
    """The steps' own checks run in the chain: a weight of the wrong width names it."""
    x, target, steps, parameters = _float64_chain()
    parameters[2] = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="weights must be"):
        ops.fused_chain(x, target, torch.tensor(5), steps, parameters)
