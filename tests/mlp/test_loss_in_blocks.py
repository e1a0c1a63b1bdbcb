"""A model's loss on the CPU in blocks of rows, its gradients taken in the same pass
(``reference_kernels.chain_loss_in_blocks`` through ``ops.loss_in_blocks``), against the model's
nn.Sequential copies in eager PyTorch; and where the layers take that path."""
import pytest
import torch
import torch.nn.functional as F

import aefast
from aefast.mlp import ops, reference, reference_kernels
from aefast.nn import FusedAutoencoder, FusedMLP

# float64: the blocks add the rows' shares in another order than one matmul does (about 1e-15 apart);
# float32: the layers' tolerance elsewhere in these tests, gradients 10x (sums of 100s of products).
TOLERANCES = {torch.float64: dict(atol=1e-12, rtol=1e-9), torch.float32: dict(atol=1e-6, rtol=1e-5)}


@pytest.fixture(params=[1, 5, None], ids=["1-row-blocks", "5-row-blocks", "one-block"])
def in_blocks(request, monkeypatch):
    """Every model loss on the CPU through the blocks (no size threshold), ``request.param`` rows a block
    at the widest width 100 in float64 (None: all rows in one block)."""
    monkeypatch.setattr(reference_kernels, "CHAIN_CPU_MIN_BYTES", 0)
    if request.param is not None:
        monkeypatch.setattr(reference_kernels, "CHAIN_CPU_BLOCK_BYTES", request.param * 100 * 8)
    return request.param


def ran_in_blocks(loss: torch.Tensor) -> bool:
    return type(loss.grad_fn).__name__ == "_LossInBlocksBackward"


def eager_autoencoder_loss(model, x, loss, corruption, l1_code, seed):
    """The autoencoder's loss by its nn.Sequential copies, the input corrupted whole by the noise the
    layers' plain path draws (compiled; against the formulas: test_layers.py)."""
    encoder, decoder = model.encoder.to_sequential(), model.decoder.to_sequential()
    kind, param = corruption or ("none", 0.0)
    code = encoder(reference.corrupt(x, kind, param, seed, compiled_noise=True))
    output = decoder(code)
    value = F.mse_loss(output, x) if loss == "mse" else F.binary_cross_entropy(output, x)
    return value + l1_code * code.abs().sum(1).mean(), [*encoder.parameters(), *decoder.parameters()]


def assert_close_all(got, expected, dtype, grad_factor=10):
    tolerance = TOLERANCES[dtype]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=tolerance["atol"], rtol=grad_factor * tolerance["rtol"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rows", [1, 7, 129])
@pytest.mark.parametrize("dims,activation,code_activation,loss,corruption,l1_code", [
    ([17, 100, 3], "relu", None, "bce", ("mask", 0.3), 0.0),
    ([17, 100, 3], "tanh", "sigmoid", "mse", ("gaussian", 0.4), 0.05),
    ([100, 7], "gelu", "leaky_relu", "mse", None, 0.2),
])
def test_an_autoencoders_loss_in_blocks_equals_the_sequentials(in_blocks, dtype, rows, dims, activation,
                                                                code_activation, loss, corruption, l1_code):
    """The loss and every parameter's gradient, with the noise of each block drawn from its own rows'
    offsets (a block of 1 or 5 rows draws what the whole input's noise holds there)."""
    torch.manual_seed(3)
    model = FusedAutoencoder(dims, activation=activation, code_activation=code_activation,
                             output_activation="sigmoid").to(dtype)
    x = torch.rand(rows, dims[0], dtype=dtype)
    got = model.loss(x, loss=loss, corruption=corruption, l1_code=l1_code, seed=11)
    assert ran_in_blocks(got) and got.dtype == dtype
    expected, eager_parameters = eager_autoencoder_loss(model, x, loss, corruption, l1_code, 11)
    assert_close_all([got], [expected], dtype, grad_factor=1)
    assert_close_all(torch.autograd.grad(got, list(model.parameters())),
                     torch.autograd.grad(expected, eager_parameters), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_an_mlps_loss_in_blocks_gives_its_inputs_gradient_and_none_to_frozen_layers(in_blocks, dtype):
    """FusedMLP.loss with an input that needs a gradient (a decoder fed an encoder's code, as the models'
    losses are), a frozen first layer and a layer without bias."""
    torch.manual_seed(4)
    mlp = FusedMLP([9, 100, 33, 4], activation="gelu", output_activation="sigmoid").to(dtype)
    mlp.layers[1].bias = None
    mlp.layers[0].requires_grad_(False)
    sequential = mlp.to_sequential()
    x = torch.randn(23, 9, dtype=dtype, requires_grad=True)
    target = torch.rand(23, 4, dtype=dtype)
    got = mlp.loss(x, target, loss="bce")
    assert ran_in_blocks(got)
    expected = F.binary_cross_entropy(sequential(x), target)
    assert_close_all([got], [expected], dtype, grad_factor=1)
    trained = [index for index, p in enumerate(mlp.parameters()) if p.requires_grad]
    got.backward()
    assert [p.grad for p in mlp.layers[0].parameters()] == [None, None] and len(trained) == 3
    eager_parameters = list(sequential.parameters())
    assert_close_all([x.grad, *(list(mlp.parameters())[index].grad for index in trained)],
                     torch.autograd.grad(expected, [x, *(eager_parameters[index] for index in trained)]), dtype)


def test_the_loss_in_blocks_backward_scales_by_the_incoming_gradient_and_runs_again(in_blocks):
    """Its gradients are taken in forward for a loss gradient of 1: backward multiplies them by the one
    that comes (here 3, from 3 * loss), and a retained graph gives them again."""
    torch.manual_seed(5)
    model = FusedAutoencoder([30, 100, 6], output_activation="sigmoid").double()
    x = torch.rand(12, 30, dtype=torch.float64)
    got = model.loss(x, corruption=("mask", 0.2), seed=3)
    assert ran_in_blocks(got)
    first = torch.autograd.grad(3 * got, list(model.parameters()), retain_graph=True)
    second = torch.autograd.grad(got, list(model.parameters()))
    expected, eager_parameters = eager_autoencoder_loss(model, x, "mse", ("mask", 0.2), 0.0, 3)
    expected_grads = torch.autograd.grad(expected, eager_parameters)
    assert_close_all(first, [3 * g for g in expected_grads], torch.float64)
    assert_close_all(second, expected_grads, torch.float64)


def test_double_backward_through_the_loss_in_blocks_equals_eagers(in_blocks):
    """A gradient penalty (the squared norm of the loss's gradient), differentiated again: backward
    under create_graph redoes the loss in the reference's plain ops."""
    torch.manual_seed(6)
    model = FusedAutoencoder([20, 100, 5], activation="tanh", output_activation="sigmoid").double()
    x = torch.rand(9, 20, dtype=torch.float64)
    got = model.loss(x, corruption=("gaussian", 0.3), l1_code=0.1, seed=8)
    assert ran_in_blocks(got)
    expected, eager_parameters = eager_autoencoder_loss(model, x, "mse", ("gaussian", 0.3), 0.1, 8)

    def penalty_gradients(value, parameters):
        grads = torch.autograd.grad(value, parameters, create_graph=True)
        return torch.autograd.grad(sum((g ** 2).sum() for g in grads), parameters)
    assert_close_all(penalty_gradients(got, list(model.parameters())), penalty_gradients(expected, eager_parameters),
                     torch.float64)


def test_without_gradients_the_blocks_take_none(in_blocks, monkeypatch):
    """Under no_grad (a validation loss) the blocks run the forward alone, and the value is training's."""
    asked = []
    chain = reference_kernels.chain_loss_in_blocks

    def recorded(*args):
        asked.append(args[-2])  # need_grads
        return chain(*args)
    monkeypatch.setattr(reference_kernels, "chain_loss_in_blocks", recorded)
    torch.manual_seed(7)
    model = FusedAutoencoder([40, 100, 4], output_activation="sigmoid").double()
    x = torch.rand(11, 40, dtype=torch.float64)
    with torch.no_grad():
        value = model.loss(x, loss="bce", seed=2)
    assert value.grad_fn is None and asked == [False]
    training = model.loss(x, loss="bce", seed=2)
    assert asked == [False, True]
    assert torch.equal(value, training.detach())


def test_which_losses_run_in_blocks():
    """By default, a loss on the CPU whose widest layer output takes CHAIN_CPU_MIN_BYTES or more in float32 or float64,
    where the layers run in plain autograd; not a smaller one, nor one in float16, with a hook, with a
    target that needs a gradient, with a backend forced, or a stretch narrow from end to end (the narrow
    loss op's)."""
    torch.manual_seed(9)
    model = FusedAutoencoder([784, 32])
    rows = -(-reference_kernels.CHAIN_CPU_MIN_BYTES // (784 * 4))  # the fewest that reach it
    large, small = torch.rand(rows, 784), torch.rand(rows - 1, 784)
    assert ran_in_blocks(model.loss(large))
    assert not ran_in_blocks(model.loss(small))
    assert not ran_in_blocks(model.half().loss(large.half()))
    model.float()
    assert not ran_in_blocks(model.loss(large.clone().requires_grad_()))  # x is the target too
    with aefast.use_backend("reference"):
        assert not ran_in_blocks(model.loss(large))
    handle = model.decoder.layers[0].register_forward_hook(lambda *args: None)
    assert not ran_in_blocks(model.loss(large))
    handle.remove()
    assert ran_in_blocks(model.loss(large))
    narrow = FusedMLP([64, 64, 64])
    wide_rows = torch.rand(-(-reference_kernels.CHAIN_CPU_MIN_BYTES // (64 * 4)), 64)
    assert type(narrow.loss(wide_rows, wide_rows).grad_fn).__name__ == "_FusedNarrowMLPLossBackward"
    assert ran_in_blocks(FusedMLP([64, 200, 64]).loss(wide_rows, wide_rows))


def test_a_hidden_layer_is_the_only_code_layer():
    with pytest.raises(ValueError, match="code_layer"):
        reference_kernels.chain_loss_in_blocks(torch.rand(2, 3), torch.rand(2, 3), [torch.rand(3, 3)], [None],
                                               [None], "mse", l1_code=0.1, code_layer=0)
    spec = ops.BlockedLoss((None,), "mse")
    assert spec.code_layer is None and spec.corruption == "none"
