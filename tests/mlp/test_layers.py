"""The fused layers against nn.Sequential with the same weights (outputs and every gradient), on
every backend with MLP kernels: odd batches (1, 7, 129) and widths (3, 17, 100, 784)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aefast.mlp import reference
from aefast.nn import FusedAutoencoder, FusedLinear, FusedMLP

ACTIVATION_MODULES = {None: nn.Identity, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh,
                      "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
# (batch, in, out); batch 1000 splits the Triton weight gradient's batch reduction in four
SHAPES = [(1, 3, 17), (7, 17, 100), (129, 100, 3), (7, 784, 17), (129, 17, 784), (1000, 17, 3)]


def float32_tolerance(reduced: int) -> float:
    """float32 sums of `reduced` products of O(1) terms, added in another order: about sqrt(n) ulps
    of the running sum; 1e-6 * n covers it with room and still catches any wrong term."""
    return 1e-6 * max(reduced, 10)


def grads_of(module_output, inputs, seed=1):
    grad = torch.randn(module_output.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(module_output, inputs, grad)


@pytest.mark.parametrize("batch,width_in,width_out", SHAPES)
@pytest.mark.parametrize("activation", list(ACTIVATION_MODULES))
def test_fused_linear_equals_linear_then_activation(mlp_backend, batch, width_in, width_out, activation):
    torch.manual_seed(batch * width_in + width_out)
    fused = FusedLinear(width_in, width_out, activation=activation)
    plain = nn.Sequential(nn.Linear(width_in, width_out), ACTIVATION_MODULES[activation]())
    plain[0].load_state_dict(fused.state_dict())
    x = torch.randn(batch, width_in)
    x_fused, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_fused, y_plain = fused(x_fused), plain(x_plain)
    tolerance = float32_tolerance(width_in)
    torch.testing.assert_close(y_fused, y_plain, atol=tolerance, rtol=1e-5)
    got = grads_of(y_fused, (x_fused, fused.weight, fused.bias))
    expected = grads_of(y_plain, (x_plain, plain[0].weight, plain[0].bias))
    for name, a, b, reduced in zip(("x", "weight", "bias"), got, expected, (width_out, batch, batch)):
        torch.testing.assert_close(a, b, atol=float32_tolerance(reduced), rtol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_is_at_most_twice_pytorchs(mlp_backend, dtype):
    torch.manual_seed(3)
    fused = FusedLinear(100, 33, activation="tanh")
    x = torch.randn(65, 100)
    exact = torch.tanh(F.linear(x.double(), fused.weight.double(), fused.bias.double()))
    low = FusedLinear(100, 33, activation="tanh").to(dtype)
    low.load_state_dict(fused.state_dict())
    torch_error = (torch.tanh(F.linear(x.to(dtype), low.weight, low.bias)).double() - exact).abs().max()
    fused_error = (low(x.to(dtype)).double() - exact).abs().max()
    assert fused_error <= 2 * torch_error


def outputs_and_gradients(module, x, *, autocast):
    """module(x) and the gradients of its parameters and x (as float32), under CPU autocast or not."""
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = module(x)
    return out, [g.float() for g in grads_of(out, list(module.parameters()) + [x])]


@pytest.mark.parametrize("make", [lambda: FusedLinear(100, 33, activation="tanh"),
                                  lambda: FusedMLP([17, 12, 9, 200], activation="tanh", output_activation="sigmoid")],
                         ids=["linear", "narrow-then-wide"])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_under_autocast_a_layer_computes_what_its_bfloat16_copy_does(mlp_backend, make, input_dtype):
    """As nn.Linear under autocast: the input (float32, or an earlier layer's bfloat16) and the float32
    parameters cast to bfloat16 for the call, so the output and every gradient are the bit-exact ones of
    the layer's bfloat16 copy (the gradients then come back to the float32 parameters as float32)."""
    torch.manual_seed(12)
    model = make()
    x = torch.randn(65, model.in_features if isinstance(model, FusedLinear) else model.dims[0]).to(input_dtype)
    out, grads = outputs_and_gradients(model, x, autocast=True)
    assert out.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in model.parameters())
    copy_out, copy_grads = outputs_and_gradients(copy.deepcopy(model).bfloat16(), x.bfloat16(), autocast=False)
    assert torch.equal(out, copy_out)
    for a, b in zip(grads, copy_grads):
        assert torch.equal(a, b)
    # And PyTorch's own autocast of the same layers agrees within a few bfloat16 steps (2^-8 each).
    twin = model.to_sequential() if isinstance(model, FusedMLP) else nn.Sequential(nn.Linear(100, 33), nn.Tanh())
    if isinstance(model, FusedLinear):
        twin[0].load_state_dict(model.state_dict())
    twin_out, _ = outputs_and_gradients(twin, x, autocast=True)
    assert twin_out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), twin_out.float(), atol=2.0**-5, rtol=2.0**-5)


def test_autoencoder_loss_under_autocast_is_its_bfloat16_copys(mlp_backend):
    """The fused loss reads the target in the input's dtype, so under autocast the clean x is cast with
    the corrupted one: the loss and gradients are the bfloat16 copy's on x in bfloat16."""
    torch.manual_seed(13)
    model = FusedAutoencoder([40, 20, 12, 6], activation="tanh", output_activation="sigmoid")
    x = torch.rand(33, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = model.loss(x, corruption=("mask", 0.2), l1_code=0.01, seed=4)
    low = copy.deepcopy(model).bfloat16()
    expected = low.loss(x.bfloat16(), corruption=("mask", 0.2), l1_code=0.01, seed=4)
    assert value.dtype == expected.dtype == torch.float32 and torch.equal(value, expected)
    for a, b in zip(torch.autograd.grad(value, list(model.parameters())),
                    torch.autograd.grad(expected, list(low.parameters()))):
        assert a.dtype == torch.float32 and torch.equal(a, b.float())


def test_mlp_loss_under_autocast_is_its_bfloat16_copys(mlp_backend):
    """FusedMLP.loss casts the target with x under autocast, as the autoencoder's loss does: the loss
    and gradients of float32 x and target are the bfloat16 copy's on both in bfloat16."""
    torch.manual_seed(14)
    model = FusedMLP([40, 20, 12, 6], activation="tanh", output_activation="sigmoid")
    x, target = torch.rand(33, 40), torch.rand(33, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = model.loss(x, target, loss="bce")
    low = copy.deepcopy(model).bfloat16()
    expected = low.loss(x.bfloat16(), target.bfloat16(), loss="bce")
    assert value.dtype == expected.dtype == torch.float32 and torch.equal(value, expected)
    for a, b in zip(torch.autograd.grad(value, list(model.parameters())),
                    torch.autograd.grad(expected, list(low.parameters()))):
        assert a.dtype == torch.float32 and torch.equal(a, b.float())


def test_float64_layers_under_autocast_stay_float64():
    mlp = FusedMLP([5, 4, 3]).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mlp(torch.randn(2, 5, dtype=torch.float64)).dtype == torch.float64


def test_bias_free_layers_and_leading_dimensions(mlp_backend):
    torch.manual_seed(4)
    fused = FusedLinear(17, 5, bias=False, activation="relu")
    x = torch.randn(2, 3, 17, requires_grad=True)
    y = fused(x)
    assert y.shape == (2, 3, 5) and fused.bias is None
    torch.testing.assert_close(y, torch.relu(x @ fused.weight.T), atol=1e-5, rtol=1e-5)
    (grad_w,) = torch.autograd.grad(y.sum(), (fused.weight,))
    torch.testing.assert_close(grad_w, ((x @ fused.weight.T > 0).float().reshape(-1, 5).T @ x.reshape(-1, 17)),
                               atol=1e-5, rtol=1e-5)


def test_a_layer_whose_bias_was_removed_runs_apart_from_its_narrow_neighbours(mlp_backend):
    """nn.Linear lets its bias be set to None after construction. A narrow kernel takes biases for all
    of its layers or none, so the layers with and without one run in separate stretches: the model
    still computes its nn.Sequential's output, loss and gradients."""
    torch.manual_seed(16)
    mlp = FusedMLP([9, 16, 12, 10, 5], activation="tanh")
    mlp.layers[2].bias = None
    plain = mlp.to_sequential()
    x, target = torch.rand(7, 9), torch.rand(7, 5)
    torch.testing.assert_close(mlp(x), plain(x), atol=1e-5, rtol=1e-5)
    value, expected = mlp.loss(x, target), F.mse_loss(plain(x), target)
    torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(value, list(mlp.parameters())),
                    torch.autograd.grad(expected, list(plain.parameters()))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_fused_linear_is_a_drop_in_for_nn_linear():
    torch.manual_seed(5)
    fused = FusedLinear(20, 7)
    torch.manual_seed(5)
    plain = nn.Linear(20, 7)
    assert list(fused.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    assert all(torch.equal(a, b) for a, b in zip(fused.parameters(), plain.parameters()))  # same default init


def seeds_sequential():
    """The seeds' TensorFlow example at a smaller scale: 64-50-30-2-30-50-64, tanh inside, sigmoid out."""
    dims = [64, 50, 30, 2, 30, 50, 64]
    modules = []
    for i in range(len(dims) - 1):
        modules += [nn.Linear(dims[i], dims[i + 1]), nn.Sigmoid() if i == len(dims) - 2 else nn.Tanh()]
    return nn.Sequential(*modules)


def test_from_sequential_and_back(mlp_backend):
    torch.manual_seed(6)
    sequential = seeds_sequential()
    mlp = FusedMLP.from_sequential(sequential)
    assert all(a is not b and torch.equal(a, b) for a, b in zip(mlp.parameters(), sequential.parameters()))
    x = torch.rand(7, 64)
    torch.testing.assert_close(mlp(x), sequential(x), atol=1e-5, rtol=1e-5)
    got = grads_of(mlp(x), list(mlp.parameters()))
    expected = grads_of(sequential(x), list(sequential.parameters()))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    back = mlp.to_sequential()
    assert [type(m) for m in back] == [type(m) for m in sequential]
    torch.testing.assert_close(back(x), sequential(x), atol=0, rtol=0)


def test_from_sequential_opens_an_encoder_and_a_decoder_in_one_sequential(mlp_backend):
    torch.manual_seed(7)
    encoder = nn.Sequential(nn.Linear(20, 9), nn.Tanh(), nn.Identity(), nn.Linear(9, 3))
    decoder = nn.Sequential(nn.Sequential(nn.Linear(3, 9), nn.ReLU()), nn.Linear(9, 20), nn.Sigmoid())
    autoencoder = nn.Sequential(encoder, decoder)
    mlp = FusedMLP.from_sequential(autoencoder)
    assert mlp.dims == [20, 9, 3, 9, 20]
    assert [layer.activation for layer in mlp.layers] == ["tanh", None, "relu", "sigmoid"]
    assert all(torch.equal(a, b) for a, b in zip(mlp.parameters(), autoencoder.parameters(), strict=True))
    x = torch.rand(7, 20)
    torch.testing.assert_close(mlp(x), autoencoder(x), atol=1e-5, rtol=1e-5)


def test_from_sequential_keeps_the_activations_of_fused_layers_in_it(mlp_backend):
    """A FusedLinear is an nn.Linear: its activation was dropped (a relu layer came back linear)."""
    torch.manual_seed(9)
    sequential = nn.Sequential(FusedLinear(6, 5, activation="relu"), nn.Linear(5, 4),
                               FusedMLP([4, 7, 3], activation="tanh"), nn.Sigmoid())
    mlp = FusedMLP.from_sequential(sequential)
    assert [layer.activation for layer in mlp.layers] == ["relu", None, "tanh", "sigmoid"]
    assert all(torch.equal(a, b) for a, b in zip(mlp.parameters(), sequential.parameters(), strict=True))
    x = torch.randn(7, 6)
    torch.testing.assert_close(mlp(x), sequential(x), atol=1e-6, rtol=1e-5)


def test_fused_mlp_dims_and_activations():
    mlp = FusedMLP([10, 8, 6, 4], activation="gelu", output_activation="sigmoid")
    assert mlp.dims == [10, 8, 6, 4]
    assert [layer.activation for layer in mlp.layers] == ["gelu", "gelu", "sigmoid"]


def test_widths_may_come_as_a_numpy_array_or_a_tensor():
    """Widths computed with NumPy or torch (np.linspace(...).astype(int), a tensor of sizes) are taken
    as the list of their Python ints."""
    assert FusedMLP(np.array([10, 8, 4])).dims == [10, 8, 4]
    assert FusedMLP([np.int64(10), np.int32(4)]).dims == [10, 4]
    assert FusedAutoencoder(torch.tensor([10, 6, 3]), decoder_dims=np.array([3, 10])).decoder.dims == [3, 10]
    assert all(type(width) is int for width in FusedMLP(np.array([10, 8, 4])).dims)


def assert_loss_matches_the_sequential(model, x, loss, corruption, l1_code, atol, rtol):
    """model.loss(x, ...), its gradients and model(x) against the model's nn.Sequential copies fed the
    same corrupted input (seed 11). The gradients include x's: through the corrupted input and
    through the loss's target (the clean x), as when the input comes from a layer upstream."""
    encoder, decoder = model.encoder.to_sequential(), model.decoder.to_sequential()
    x = x.detach().clone().requires_grad_()
    kind, param = corruption or ("none", 0.0)
    code = encoder(reference.corrupt(x, kind, param, seed=11))
    output = decoder(code)
    expected = F.mse_loss(output, x) if loss == "mse" else F.binary_cross_entropy(output, x)
    expected = expected + l1_code * code.abs().sum(1).mean()
    got = model.loss(x, loss=loss, corruption=corruption, l1_code=l1_code, seed=11)
    assert got.dtype == x.dtype
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)
    got_grads = torch.autograd.grad(got, list(model.parameters()) + [x])
    expected_grads = torch.autograd.grad(expected, list(encoder.parameters()) + list(decoder.parameters()) + [x])
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, atol=atol, rtol=10 * rtol)
    torch.testing.assert_close(model(x), decoder(encoder(x)), atol=atol, rtol=rtol)


@pytest.mark.parametrize("bias", [True, False])
def test_an_autoencoder_from_two_sequentials_computes_theirs(mlp_backend, bias):
    """Each layer keeps its own activation (not one for all hidden layers), and the fused loss and
    corruption apply to the converted model as to one built by width."""
    torch.manual_seed(8)
    encoder = nn.Sequential(nn.Linear(40, 17, bias=bias), nn.GELU(), nn.Linear(17, 5, bias=bias), nn.Tanh())
    decoder = nn.Sequential(nn.Linear(5, 17, bias=bias), nn.LeakyReLU(), nn.Linear(17, 40, bias=bias), nn.Sigmoid())
    model = FusedAutoencoder.from_sequential(encoder, decoder)
    assert [layer.activation for layer in [*model.encoder.layers, *model.decoder.layers]] == \
        ["gelu", "tanh", "leaky_relu", "sigmoid"]
    assert all(a is not b and torch.equal(a, b) for a, b in
               zip(model.parameters(), [*encoder.parameters(), *decoder.parameters()], strict=True))
    x = torch.rand(9, 40)
    torch.testing.assert_close(model(x), decoder(encoder(x)), atol=1e-6, rtol=1e-5)
    assert_loss_matches_the_sequential(model, x, "bce", ("mask", 0.3), 0.01, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("loss,corruption,l1_code", [
    ("mse", None, 0.0), ("mse", ("mask", 0.25), 0.0), ("bce", ("gaussian", 0.3), 0.0), ("mse", None, 0.05),
])
def test_autoencoder_loss_equals_the_sequential_on_the_same_corrupted_input(mlp_backend, loss, corruption, l1_code):
    torch.manual_seed(7)
    model = FusedAutoencoder([64, 30, 8], activation="relu", output_activation="sigmoid")
    assert model.decoder.dims == [8, 30, 64]
    assert_loss_matches_the_sequential(model, torch.rand(33, 64), loss, corruption, l1_code, atol=1e-6, rtol=1e-5)


def jacobian_penalty_gradients(model, x, parameters):
    """The gradients of a contractive autoencoder's penalty, the squared norm of d sum(model(x)) / dx,
    with respect to the parameters and x: a double backward."""
    x = x.detach().clone().requires_grad_()
    (jacobian_row_sums,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    return torch.autograd.grad((jacobian_row_sums ** 2).sum(), list(parameters) + [x])


@pytest.mark.parametrize("dims,activation", [([17, 12, 9, 5], "tanh"), ([33, 200, 7], "sigmoid")])
def test_double_backward_through_the_layers_equals_the_sequentials(mlp_backend, dims, activation):
    """A Jacobian penalty through a narrow stretch (every width <= 128, one op) and through layers one by
    one, against the nn.Sequential copy."""
    torch.manual_seed(8)
    mlp = FusedMLP(dims, activation=activation, output_activation="sigmoid")
    sequential = mlp.to_sequential()
    x = torch.randn(7, dims[0])
    got = jacobian_penalty_gradients(mlp, x, mlp.parameters())
    expected = jacobian_penalty_gradients(sequential, x, sequential.parameters())
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("trained", ["biases", "weights", "input"])
def test_training_some_parameters_only_equals_the_sequential(mlp_backend, trained):
    """Frozen weights with trained biases (BitFit), frozen biases, or nothing but the input, through a
    narrow stretch (12 -> 9 -> 6 -> 4, one op) and a wide layer (4 -> 200)."""
    torch.manual_seed(9)
    mlp = FusedMLP([12, 9, 6, 4, 200], activation="tanh")
    sequential = mlp.to_sequential()
    x = torch.randn(5, 12, requires_grad=trained == "input")
    for model in (mlp, sequential):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.endswith("bias") == (trained == "biases") and trained != "input")
    wanted = [p for p in mlp.parameters() if p.requires_grad] + ([x] if trained == "input" else [])
    expected_wanted = [p for p in sequential.parameters() if p.requires_grad] + ([x] if trained == "input" else [])
    assert len(wanted) == {"biases": 4, "weights": 4, "input": 1}[trained]
    for a, b in zip(grads_of(mlp(x), wanted), grads_of(sequential(x), expected_wanted)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_float64_models_compute_in_float64(mlp_backend):
    """No kernel takes float64: the layers run it as nn.Linear does, in float64 (through the ops it ran
    in float32, an error near 1e-7 where float64's is near 1e-15)."""
    torch.manual_seed(9)
    model = FusedAutoencoder([17, 9, 3], activation="tanh", output_activation="sigmoid").double()
    x = torch.rand(7, 17, dtype=torch.float64)
    assert_loss_matches_the_sequential(model, x, "bce", ("gaussian", 0.3), 0.01, atol=1e-13, rtol=1e-12)


def test_corruption_rates():
    x = torch.ones(400, 500)
    kept = reference.corrupt(x, "mask", 0.3, seed=1)
    # 200000 Bernoulli(0.7) draws: the kept fraction is within 5 standard deviations (0.005) of 0.7.
    assert abs(kept.mean().item() - 0.7) < 0.005
    noisy = reference.corrupt(x, "gaussian", 0.5, seed=1) - x
    assert abs(noisy.std().item() - 0.5) < 0.005 and abs(noisy.mean().item()) < 0.005
    assert torch.equal(reference.corrupt(x, "mask", 0.3, seed=1), kept)  # the seed fixes the noise
    assert not torch.equal(reference.corrupt(x, "mask", 0.3, seed=2), kept)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("shape", [(1, 1), (7, 17), (129, 100)])
def test_the_layers_noise_from_compiled_kernels_is_the_formulas(shape, device, monkeypatch):
    """The layers' plain path draws the corruption's noise with a compiled kernel (aefast._C on the CPU,
    80x the formulas' speed; one Triton launch on a GPU, where the formulas launch about 260): the mask
    keeps exactly the inputs the formulas keep, the Gaussian noise is theirs within the compiled normals'
    2e-6 (times sigma)."""
    from aefast.mlp.layers import corrupted

    drawn = []

    def recorded(kind, seed, count, on, first):
        values = compiled_stream(kind, seed, count, on, first)
        drawn.append((kind, values is not None and values.device.type == device))
        return values
    compiled_stream = reference.compiled_stream
    monkeypatch.setattr(reference, "compiled_stream", recorded)
    x = torch.rand(*shape, device=device) + 0.5
    seed = torch.tensor(2**40 + 3)
    for kind, param, tolerance in (("mask", 0.3, 0.0), ("gaussian", 0.5, 1e-6)):
        formulas = reference.corrupt(x, kind, param, int(seed))
        assert not drawn  # the oracle keeps the formulas
        torch.testing.assert_close(corrupted(x, kind, param, seed), formulas, atol=tolerance, rtol=0)
        assert drawn == [("uniform" if kind == "mask" else "normal", True)]
        drawn.clear()
        with torch.device("meta"):  # a default device elsewhere: the noise is still made on x's
            torch.testing.assert_close(corrupted(x, kind, param, seed), formulas, atol=tolerance, rtol=0)
        assert drawn == [("uniform" if kind == "mask" else "normal", True)]
        drawn.clear()


def test_unseeded_losses_follow_torch_manual_seed(mlp_backend):
    model = FusedAutoencoder([20, 5])
    x = torch.rand(4, 20)
    torch.manual_seed(8)
    first = model.loss(x, corruption=("mask", 0.5))
    torch.manual_seed(8)
    assert torch.equal(model.loss(x, corruption=("mask", 0.5)), first)
    # Without reseeding, the generator has moved on: a new mask (a fixed seed would repeat the first).
    assert not torch.equal(model.loss(x, corruption=("mask", 0.5)), first)


@pytest.mark.parametrize("seed", [None, 3])
def test_a_loss_without_noise_leaves_torchs_generator_as_it_was(mlp_backend, seed):
    """As F.mse_loss does: only a corruption draws (its seed, when none is given)."""
    model = FusedAutoencoder([20, 5])
    x = torch.rand(4, 20)
    state = torch.get_rng_state()
    model.loss(x, seed=seed).backward()
    assert torch.equal(torch.get_rng_state(), state)
    model.loss(x, corruption=("mask", 0.5), seed=seed)
    assert torch.equal(torch.get_rng_state(), state) == (seed is not None)


def test_auto_on_the_cpu_gives_what_the_forced_reference_gives():
    # auto picks the reference on a CPU and runs it through plain autograd; forcing it runs the op.
    import aefast

    torch.manual_seed(12)
    model = FusedAutoencoder([30, 20, 10, 4], activation="tanh", output_activation="sigmoid")
    x = torch.rand(17, 30)
    results = []
    for backend in ("auto", "reference"):
        with aefast.use_backend(backend):
            loss = model.loss(x, loss="bce", corruption=("mask", 0.2), l1_code=0.01, seed=4)
            results.append((loss, model(x), *torch.autograd.grad(loss, list(model.parameters()))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_a_chain_of_layers_chooses_its_backend_once(monkeypatch):
    """FusedMLP.forward asks which backend runs once for its whole chain (a narrow run and a wide layer
    here), not once per layer: on a small batch each lookup costs as much as a layer's math."""
    from aefast.mlp import layers

    calls = []
    choose = layers._plain_autograd
    monkeypatch.setattr(layers, "_plain_autograd", lambda device: calls.append(device) or choose(device))
    torch.manual_seed(15)
    mlp = FusedMLP([6, 8, 8, 200, 3], activation="tanh")
    x = torch.randn(5, 6)
    torch.testing.assert_close(mlp(x), mlp.to_sequential()(x), atol=1e-6, rtol=1e-5)
    assert calls == [x.device]


@pytest.mark.parametrize("bias,dtype", [(False, torch.float32), (True, torch.bfloat16), (False, torch.float16)])
def test_the_split_weight_gradient_without_bias_and_in_16_bits(mlp_backend, bias, dtype):
    """Batch 1000 splits the Triton weight gradient's batch sum in four: float32 partial sums of dW
    (then db, when there is a bias) added and cast to the weights' dtype in one launch. Against
    nn.Linear in float64 on the same (rounded) weights and input: a 16-bit gradient is the float32 sum
    rounded once, so within 2 ulps (2^-7 relative for bfloat16) of the exact one."""
    torch.manual_seed(17)
    fused = FusedLinear(17, 3, bias=bias, activation="tanh").to(dtype)
    exact = nn.Linear(17, 3, bias=bias).double()
    exact.load_state_dict(fused.state_dict())
    x = torch.randn(1000, 17).to(dtype)
    grad_y = torch.randn(1000, 3).to(dtype)
    got = torch.autograd.grad(fused(x), list(fused.parameters()), grad_y)
    expected = torch.autograd.grad(torch.tanh(exact(x.double())), list(exact.parameters()), grad_y.double())
    epsilon = torch.finfo(dtype).eps if dtype != torch.float32 else 1e-6
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == dtype
        # The sum's own rounding (1000 terms in float32, and the tanh' of a 16-bit output) plus the final
        # rounding of a value of |b|: 2 epsilon of the largest entry covers both.
        torch.testing.assert_close(a.double(), b, atol=2 * epsilon * b.abs().max().item(), rtol=0)
