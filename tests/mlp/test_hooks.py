"""Module hooks on the fused layers run as in plain PyTorch: a layer with hooks is called on its own
(its neighbours still fuse), and the autoencoder's loss runs through module calls where a hook sits
that its fused corruption or loss would pass by. Parametrized weights (weight_norm, spectral_norm)
train too. Each test compares with the nn.Sequential of the same weights and the same hooks or
parametrizations."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrizations, parametrize, prune

from aefast.mlp import ops, reference
from aefast.nn import FusedAutoencoder, FusedMLP
from tests.conftest import aefast_ops_run_by, backends_with_kernels, force_cpu_backend

# float32 sums of at most 16 products added in another order: a few ulps of O(1) values
ATOL, RTOL = 1e-5, 1e-5
NARROW_DIMS = [9, 16, 12, 10, 5]  # one narrow stretch of four layers when no layer has hooks


@pytest.fixture(params=["auto", *backends_with_kernels(ops.FORWARD)])
def layer_backend(request):
    """The default choice (plain autograd on the CPU), then each backend's op forced."""
    if request.param == "auto":
        yield request.param
    else:
        with force_cpu_backend(request.param):
            yield request.param


def fused_and_plain(dims=NARROW_DIMS, seed=0):
    torch.manual_seed(seed)
    fused = FusedMLP(dims, activation="tanh")
    return fused, fused.to_sequential()  # layer i's output is plain[2 i + 1]'s (after its tanh)


def test_a_forward_hook_sees_and_replaces_a_fused_layers_output(layer_backend):
    fused, plain = fused_and_plain()
    seen = {"fused": [], "plain": []}

    def doubling(name):
        def hook(module, inputs, output):
            seen[name].append(output.detach().clone())
            return 2 * output
        return hook
    fused.layers[1].register_forward_hook(doubling("fused"))
    plain[3].register_forward_hook(doubling("plain"))
    x = torch.randn(7, NARROW_DIMS[0])
    x_fused, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_fused, y_plain = fused(x_fused), plain(x_plain)
    assert len(seen["fused"]) == 1
    torch.testing.assert_close(seen["fused"][0], seen["plain"][0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(y_fused, y_plain, atol=ATOL, rtol=RTOL)
    y_fused.sum().backward()
    y_plain.sum().backward()
    torch.testing.assert_close(x_fused.grad, x_plain.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(fused.layers[0].weight.grad, plain[0].weight.grad, atol=ATOL, rtol=RTOL)


def test_the_layers_without_hooks_still_run_as_one_narrow_stretch():
    fused, _ = fused_and_plain()
    x = torch.randn(7, NARROW_DIMS[0])
    with force_cpu_backend("reference"):
        assert "fused_narrow_mlp" in aefast_ops_run_by(lambda: fused(x))
        fused.layers[1].register_forward_hook(lambda module, inputs, output: None)
        assert "fused_narrow_mlp" in aefast_ops_run_by(lambda: fused(x))  # layers 2 and 3
        fused.layers[2].register_forward_pre_hook(lambda module, inputs: None)
        assert "fused_narrow_mlp" not in aefast_ops_run_by(lambda: fused(x))  # no two neighbours left


def test_a_backward_hook_sees_a_fused_layers_output_gradient(layer_backend):
    fused, plain = fused_and_plain()
    seen = {"fused": [], "plain": []}
    fused.layers[2].register_full_backward_hook(lambda m, grad_in, grad_out: seen["fused"].append(grad_out[0]))
    plain[5].register_full_backward_hook(lambda m, grad_in, grad_out: seen["plain"].append(grad_out[0]))
    x = torch.randn(129, NARROW_DIMS[0], requires_grad=True)
    (fused(x) ** 2).sum().backward()
    (plain(x) ** 2).sum().backward()
    assert len(seen["fused"]) == 1
    torch.testing.assert_close(seen["fused"][0], seen["plain"][0], atol=ATOL, rtol=RTOL)


def test_a_global_forward_hook_sees_every_layer(layer_backend):
    fused, _ = fused_and_plain()
    called = []
    handle = torch_module.register_module_forward_hook(
        lambda module, inputs, output: called.append(type(module).__name__))
    try:
        fused(torch.randn(7, NARROW_DIMS[0]))
    finally:
        handle.remove()
    assert called == ["FusedLinear"] * 4 + ["FusedMLP"]


def train_pruned(model, loss_of, steps=3):
    """Prune half of the first layer's weights by magnitude, then take SGD steps on a fixed batch:
    prune's pre-hook recomputes the weight from weight_orig before every call."""
    first = model.layers[0] if isinstance(model, FusedMLP) else model[0]
    prune.l1_unstructured(first, "weight", amount=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(33, NARROW_DIMS[0], generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(model, x).backward()
        optimizer.step()
    return first.weight_orig, first.weight_mask


def test_a_pruned_layer_trains_as_in_plain_pytorch(layer_backend):
    # Before hooks were honoured, the second step failed: the weight prune set once, from weight_orig
    # at pruning time, was used again ("Trying to backward through the graph a second time").
    fused, plain = fused_and_plain()

    def loss_of(model, x):
        return (model(x) ** 2).mean()
    fused_orig, fused_mask = train_pruned(fused, loss_of)
    plain_orig, plain_mask = train_pruned(plain, loss_of)
    assert torch.equal(fused_mask, plain_mask)
    torch.testing.assert_close(fused_orig, plain_orig, atol=ATOL, rtol=RTOL)
    assert not torch.equal(fused_orig * fused_mask, fused.layers[0].weight)  # the last step moved weight_orig


def autoencoder_and_plain(output_activation=None, seed=0):
    torch.manual_seed(seed)
    model = FusedAutoencoder([9, 16, 5], activation="tanh", output_activation=output_activation)
    return model, model.encoder.to_sequential(), model.decoder.to_sequential()


@pytest.mark.parametrize("loss,output_activation", [("mse", None), ("bce", "sigmoid")])
@pytest.mark.parametrize("hooked", ["encoder", "decoder", "first layer", "last layer"])
def test_the_loss_runs_hooks_that_its_fused_corruption_and_loss_would_pass_by(layer_backend, loss,
                                                                                  output_activation, hooked):
    model, encoder, decoder = autoencoder_and_plain(output_activation)
    module = {"encoder": model.encoder, "decoder": model.decoder, "first layer": model.encoder.layers[0],
              "last layer": model.decoder.layers[-1]}[hooked]
    seen = []
    module.register_forward_hook(lambda m, inputs, output: seen.append((inputs[0].detach(), output.detach())))
    x = torch.rand(7, 9)
    x_fused, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    value = model.loss(x_fused, loss=loss, corruption=("mask", 0.3), l1_code=0.1, seed=5)
    corrupted = reference.corrupt(x_plain, "mask", 0.3, 5)
    code = encoder(corrupted)
    output = decoder(code)
    loss_fn = F.mse_loss if loss == "mse" else F.binary_cross_entropy
    expected = loss_fn(output, x_plain) + 0.1 * code.abs().sum(1).mean()
    assert len(seen) == 1
    hook_input = {"encoder": corrupted, "first layer": corrupted, "decoder": code}.get(hooked)
    if hook_input is not None:
        torch.testing.assert_close(seen[0][0], hook_input.detach(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(value, expected, atol=ATOL, rtol=RTOL)
    value.backward()
    expected.backward()
    torch.testing.assert_close(x_fused.grad, x_plain.grad, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("hooked", ["model", "last layer"])
def test_the_mlps_loss_runs_a_hook_on_the_model_or_its_last_layer(layer_backend, hooked):
    # A forward hook that replaces the output: the loss is that of the replaced output, as in plain
    # PyTorch, not the fused loss of the layers' own output.
    fused, plain = fused_and_plain()
    {"model": fused, "last layer": fused.layers[-1]}[hooked].register_forward_hook(
        lambda module, inputs, output: 2 * output)
    x, target = torch.rand(7, NARROW_DIMS[0]), torch.rand(7, NARROW_DIMS[-1])
    torch.testing.assert_close(fused.loss(x, target), F.mse_loss(2 * plain(x), target), atol=ATOL, rtol=RTOL)


def test_a_pruned_autoencoder_trains_through_its_loss_as_in_plain_pytorch(layer_backend):
    model, encoder, decoder = autoencoder_and_plain()
    prune.l1_unstructured(model.encoder.layers[0], "weight", amount=0.5)
    prune.l1_unstructured(encoder[0], "weight", amount=0.5)
    fused_optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    plain_optimizer = torch.optim.SGD([*encoder.parameters(), *decoder.parameters()], lr=0.5)
    x = torch.rand(33, 9, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        fused_optimizer.zero_grad()
        plain_optimizer.zero_grad()
        model.loss(x).backward()
        F.mse_loss(decoder(encoder(x)), x).backward()
        fused_optimizer.step()
        plain_optimizer.step()
    torch.testing.assert_close(model.encoder.layers[0].weight_orig, encoder[0].weight_orig, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(model.decoder.layers[-1].weight, decoder[-1].weight, atol=ATOL, rtol=RTOL)


def test_a_middle_layers_hook_keeps_the_fused_loss():
    model, _, _ = autoencoder_and_plain()
    model.encoder.layers[1].register_forward_hook(lambda module, inputs, output: None)
    x = torch.rand(7, 9)
    with force_cpu_backend("reference"):
        # The decoder's layers are all narrow: the loss fuses into its stretch.
        assert "fused_narrow_mlp_loss" in aefast_ops_run_by(lambda: model.loss(x))
        model.decoder.layers[-1].register_forward_hook(lambda module, inputs, output: None)
        assert not {"fused_narrow_mlp_loss", "fused_linear_loss"} & aefast_ops_run_by(lambda: model.loss(x))


def test_conversions_refuse_modules_with_hooks_they_could_not_keep():
    # Before, a pruned or old-style weight_norm Linear failed with a state_dict key error, and a hook on
    # an activation module was dropped without a word.
    pruned = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    prune.l1_unstructured(pruned[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"sequential\[0\] \(Linear\) has hooks .*prune.remove"):
        FusedMLP.from_sequential(pruned)
    hooked_activation = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    hooked_activation[1].register_forward_hook(lambda module, inputs, output: None)
    with pytest.raises(ValueError, match=r"sequential\[1\] \(ReLU\) has hooks"):
        FusedMLP.from_sequential(hooked_activation)
    nested = nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.Linear(3, 2)))
    nested[1].register_forward_pre_hook(lambda module, inputs: None)
    with pytest.raises(ValueError, match=r"sequential\[1\] \(Sequential\) has hooks"):
        FusedMLP.from_sequential(nested)
    inner, _ = fused_and_plain()  # a FusedMLP inside the sequential is opened: its layers are checked too
    inner.layers[1].register_forward_hook(lambda module, inputs, output: None)
    with pytest.raises(ValueError, match=r"sequential\[1\]\.layers\[1\] \(FusedLinear\) has hooks"):
        FusedMLP.from_sequential(nn.Sequential(nn.Linear(4, NARROW_DIMS[0]), inner))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old weight_norm is deprecated (its replacement is a parametrization)
        normalized = nn.utils.weight_norm(nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"encoder\[0\] \(Linear\) has hooks"):
        FusedAutoencoder.from_sequential(nn.Sequential(normalized), nn.Sequential(nn.Linear(2, 4)))
    fused, _ = fused_and_plain()
    prune.l1_unstructured(fused.layers[2], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"layers\[2\] \(FusedLinear\) has hooks"):
        fused.to_sequential()
    prune.remove(fused.layers[2], "weight")  # what the message advises: the pruned weight, made permanent
    torch.testing.assert_close(fused.to_sequential()(torch.ones(2, NARROW_DIMS[0])), fused(torch.ones(2, NARROW_DIMS[0])),
                               atol=ATOL, rtol=RTOL)


def test_parametrized_layers_train_as_in_plain_pytorch(layer_backend):
    # A parametrization recomputes `weight` on each read, so the fused layers (narrow stretch included)
    # see it as nn.Linear does and its gradient flows back to the parametrization's own tensors.
    fused, plain = fused_and_plain()
    for model, first, third in ((fused, fused.layers[0], fused.layers[2]), (plain, plain[0], plain[4])):
        torch.manual_seed(3)  # spectral_norm starts its power iteration from a random vector
        parametrizations.weight_norm(first)
        parametrizations.spectral_norm(third)
    x = torch.rand(33, NARROW_DIMS[0], generator=torch.Generator().manual_seed(1))
    weights = []
    for model in (fused, plain):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):
            optimizer.zero_grad()
            (model(x) ** 2).mean().backward()
            optimizer.step()
        weights.append([parameter.detach() for parameter in model.parameters()])
    assert len(weights[0]) == len(weights[1]) == 9  # 4 layers, weight_norm splitting one weight in two
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_to_sequential_refuses_parametrized_layers_and_says_how_to_convert():
    # Before, it failed inside nn.Linear.load_state_dict on the parametrization's keys.
    fused, _ = fused_and_plain()
    parametrizations.weight_norm(fused.layers[1])
    with pytest.raises(ValueError, match=r"layers\[1\] has parametrized tensors .*remove_parametrizations"):
        fused.to_sequential()
    parametrize.remove_parametrizations(fused.layers[1], "weight")
    x = torch.ones(2, NARROW_DIMS[0])
    torch.testing.assert_close(fused.to_sequential()(x), fused(x), atol=ATOL, rtol=RTOL)


class CountedReads(nn.Module):
    """An identity parametrization that counts how often the weight it sits on is read."""
    def __init__(self):
        super().__init__()
        self.reads = 0

    def forward(self, weight):
        self.reads += 1
        return weight


@pytest.mark.parametrize("dims", [NARROW_DIMS, [9, 200, 5]], ids=["narrow", "wide"])
@pytest.mark.parametrize("hook_on_last", [False, True], ids=["fused loss", "loss through modules"])
def test_each_parametrized_weight_is_read_once_a_call_as_nn_linear_reads_it(layer_backend, dims, hook_on_last):
    # Before, each call read a weight three times (input check, layer check, math): spectral_norm ran
    # three power iterations a call instead of one, and a costly parametrization was computed 3 times.
    torch.manual_seed(0)
    model = FusedAutoencoder(dims, activation="tanh")
    counters = {name: CountedReads() for name in ("first", "middle", "last")}
    parametrize.register_parametrization(model.encoder.layers[0], "weight", counters["first"])
    parametrize.register_parametrization(model.encoder.layers[-1], "weight", counters["middle"])
    parametrize.register_parametrization(model.decoder.layers[-1], "weight", counters["last"])
    if hook_on_last:
        model.decoder.layers[-1].register_forward_hook(lambda module, inputs, output: None)
    x = torch.rand(7, dims[0])
    for call in (lambda: model.encoder.layers[0](x), lambda: model.encoder(x), lambda: model(x),
                 lambda: model.loss(x, corruption=("mask", 0.2))):
        for counter in counters.values():
            counter.reads = 0
        call().sum().backward()
        read = [counter.reads for counter in counters.values()]
        assert all(count <= 1 for count in read), read
    assert read == [1, 1, 1]
