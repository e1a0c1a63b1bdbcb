"""FusedMLP.loss: the mean loss of the MLP's output against a target with the loss fused into the last
layer, and, where the last layers form a narrow stretch, into that stretch (aefast::fused_narrow_mlp_loss:
its forward writes the loss alone, its backward recomputes every activation). Against F.mse_loss and
F.binary_cross_entropy of the equal nn.Sequential, for the loss and every gradient."""
import re

import pytest
import torch
import torch.nn.functional as F

import aefast
from aefast._memory import peak_bytes, saved_for_backward_bytes
from aefast.mlp import reference_kernels
from aefast.nn import FusedMLP
from tests.conftest import aefast_ops_run_by

CPU = torch.device("cpu")

# (dims, activation, output activation, loss, the op its last layers run as)
CASES = [
    ([64, 64, 64, 64, 64], "relu", None, "mse", "fused_narrow_mlp_loss"),  # the narrow stack
    ([17, 100, 3, 33], "tanh", "sigmoid", "bce", "fused_narrow_mlp_loss"),  # widths 17, 100, 3 and 33
    ([3, 128, 17], "leaky_relu", "sigmoid", "mse", "fused_narrow_mlp_loss"),
    ([20, 300, 30, 30, 17], "sigmoid", "tanh", "mse", "fused_narrow_mlp_loss"),  # a wide layer, then a narrow stretch
    ([17, 100, 784], "relu", "sigmoid", "bce", "fused_linear_loss"),  # a wide last layer: the linear loss
    ([5, 7], None, "relu", "mse", "fused_linear_loss"),  # one layer
    ([9, 200, 13], "gelu", "gelu", "mse", "fused_linear_loss"),  # GELU's derivative takes z, not the output
    ([6, 40, 24], "relu", "leaky_relu", "mse", "fused_narrow_mlp_loss"),
]


def sequential_loss(sequential, x, target, loss):
    output = sequential(x)
    return F.mse_loss(output, target) if loss == "mse" else F.binary_cross_entropy(output, target)


@pytest.mark.parametrize("dims,activation,output_activation,loss,op", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_loss_equals_the_loss_of_sequential(mlp_backend, dims, activation, output_activation, loss, op, bias):
    torch.manual_seed(len(dims) + dims[-1])
    mlp = FusedMLP(dims, activation=activation, output_activation=output_activation, bias=bias)
    sequential = mlp.to_sequential()
    for batch in (1, 7, 129):
        x, target = torch.randn(batch, dims[0]), torch.rand(batch, dims[-1])
        leaves = [x.clone().requires_grad_(), target.clone().requires_grad_()]
        plain_leaves = [t.clone().requires_grad_() for t in (x, target)]
        ran = aefast_ops_run_by(lambda: mlp.loss(*leaves, loss=loss))
        assert op in ran
        value, expected = mlp.loss(*leaves, loss=loss), sequential_loss(sequential, *plain_leaves, loss)
        # float32 sums of up to 129 x 784 terms in another order: a few ulps of the mean.
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-5)
        got = torch.autograd.grad(value, leaves + list(mlp.parameters()))
        want = torch.autograd.grad(expected, plain_leaves + list(sequential.parameters()))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6 * max(batch, 10), rtol=1e-5)


def test_mlp_loss_of_a_batch_with_more_dimensions():
    torch.manual_seed(3)
    mlp = FusedMLP([6, 16, 16, 5], activation="tanh")
    x, target = torch.randn(3, 7, 6), torch.randn(3, 7, 5)
    torch.testing.assert_close(mlp.loss(x, target), F.mse_loss(mlp.to_sequential()(x), target))


@pytest.mark.parametrize("dims", [[64, 64, 64, 64, 64], [17, 100, 3, 33]])
def test_narrow_loss_backward_in_chunks(mlp_backend, monkeypatch, dims):
    """Triton's loss backward recomputes a chunk's activations and d loss / d z before it runs the layers
    backward, program by program over chunks (test_narrow.py's test_narrow_backward_in_chunks)."""
    if mlp_backend != "triton":
        pytest.skip("the reference has no chunks")
    from aefast.mlp import triton_kernels

    monkeypatch.setattr(triton_kernels, "NARROW_CHUNK_ROWS", 64)
    monkeypatch.setattr(triton_kernels, "INTERPRETER_NARROW_PROGRAMS", 2)
    torch.manual_seed(len(dims))
    mlp = FusedMLP(dims, activation="tanh", output_activation="sigmoid")
    sequential = mlp.to_sequential()
    x, target = torch.randn(129, dims[0]), torch.rand(129, dims[-1])
    x_fused, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = torch.autograd.grad(mlp.loss(x_fused, target, "bce"), [x_fused] + list(mlp.parameters()))
    want = torch.autograd.grad(sequential_loss(sequential, x_plain, target, "bce"),
                               [x_plain] + list(sequential.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6 * 129, rtol=1e-5)


def test_narrow_loss_backward_without_a_recomputing_tile(mlp_backend, monkeypatch):
    """Where no recomputing tile fits (NARROW_ROWS gives None: 3xTF32 and IEEE float32 at width 128),
    Triton's loss backward has the forward kernel write the activations and the pre-activation of the
    last layer, takes d loss / d z from them, and runs the saving backward: the same gradients."""
    if mlp_backend != "triton":
        pytest.skip("a Triton fallback")
    from aefast.mlp import triton_kernels

    monkeypatch.setitem(triton_kernels.NARROW_ROWS, ("ieee", "recompute"), {16: None, 32: None, 64: None, 128: None})
    torch.manual_seed(4)
    mlp = FusedMLP([17, 33, 9], activation="relu", output_activation="sigmoid")
    sequential = mlp.to_sequential()
    x, target = torch.randn(33, 17), torch.rand(33, 9)
    got = torch.autograd.grad(mlp.loss(x, target, "bce"), list(mlp.parameters()))
    want = torch.autograd.grad(sequential_loss(sequential, x, target, "bce"), list(sequential.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6 * 33, rtol=1e-5)


@pytest.mark.parametrize("loss,output_activation", [("mse", None), ("bce", "sigmoid")])
def test_narrow_loss_in_bfloat16(mlp_backend, loss, output_activation):
    """The loss's and each gradient's error against float64 at most twice nn.Sequential's in bfloat16
    (DESIGN.md's bar for low precision)."""
    torch.manual_seed(10)
    dims = [32, 48, 16, 24]
    mlp = FusedMLP(dims, activation="tanh", output_activation=output_activation)
    exact = mlp.to_sequential().double()
    low = FusedMLP(dims, activation="tanh", output_activation=output_activation).bfloat16()
    low.load_state_dict(mlp.state_dict())
    plain = low.to_sequential()
    x, target = torch.randn(129, 32), torch.rand(129, 24)

    def loss_and_grads(value, model):
        return [value, *torch.autograd.grad(value, list(model.parameters()))]
    want = loss_and_grads(sequential_loss(exact, x.double(), target.double(), loss), exact)
    fused = loss_and_grads(low.loss(x.bfloat16(), target.bfloat16(), loss), low)
    eager = loss_and_grads(sequential_loss(plain, x.bfloat16(), target.bfloat16(), loss), plain)
    assert fused[0].dtype == torch.float32  # the loss in the accumulation dtype, as the autoencoder's
    for got, torch_got, expected in zip(fused, eager, want, strict=True):
        assert (got.double() - expected).abs().max() <= 2 * (torch_got.double() - expected).abs().max()


def test_a_narrow_loss_keeps_its_input_and_target_alone():
    """The tensors a training step keeps for backward, by the bytes that grow with the batch: the
    64-wide stack's loss keeps x and the target (which the caller holds anyway), nn.Sequential's also
    each layer's output: 6 row-sized tensors against 2."""
    torch.manual_seed(19)
    mlp = FusedMLP([64] * 5, activation="relu")
    sequential = mlp.to_sequential()
    x, target = torch.randn(1000, 64), torch.randn(1000, 64)

    def kept_rows(step):  # activations: tensors of at least a row-sized tensor's elements, not parameters
        with aefast.use_backend("reference"):
            kept = saved_for_backward_bytes(lambda: step().backward(), smallest=x.numel())
        return kept // (x.numel() * x.element_size())

    assert kept_rows(lambda: F.mse_loss(sequential(x), target)) == 6
    assert kept_rows(lambda: mlp.loss(x, target)) == 2


def test_the_cpu_step_peaks_far_below_eagers(monkeypatch):
    """The memory a training step allocates at its peak, above what was live before it, by the CPU
    allocator's own record (aefast._memory.peak_bytes): eager's 64-wide stack holds its 4 outputs and 2
    gradients of them at once (6 row-sized tensors); the fused loss in the reference's blocks holds one
    block's activations and their gradients at a time (about 11 block-sized tensors, whatever the batch).
    Blocks of 256 rows here (64 KiB), 128 of them."""
    block_bytes = 256 * 4 * 64
    monkeypatch.setattr(reference_kernels, "NARROW_CPU_BLOCK_BYTES", block_bytes)
    torch.manual_seed(20)
    mlp = FusedMLP([64] * 5, activation="relu")
    sequential = mlp.to_sequential()
    x, target = torch.randn(128 * 256, 64), torch.randn(128 * 256, 64)
    with aefast.use_backend("reference"):
        fused = peak_bytes(lambda: torch.autograd.grad(mlp.loss(x, target), list(mlp.parameters())), CPU)
    eager = peak_bytes(lambda: torch.autograd.grad(F.mse_loss(sequential(x), target), list(sequential.parameters())),
                       CPU)
    assert eager >= 5 * x.numel() * x.element_size()
    assert fused <= 16 * block_bytes


def test_mlp_loss_refuses_bad_input():
    mlp = FusedMLP([6, 16, 5], activation="relu")
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="target must have the output's shape"):
        mlp.loss(x, torch.randn(4, 6))
    with pytest.raises(ValueError, match="target must have the output's shape"):
        mlp.loss(x, torch.randn(5, 5))
    for shape in [(5, 4), (20,), (4, 5, 1)]:  # the output's 20 values in another shape
        with pytest.raises(ValueError, match=rf"target must have the output's shape \(4, 5\), got {re.escape(str(shape))}"):
            mlp.loss(x, torch.randn(shape))
    with pytest.raises(ValueError, match="target is on meta but x is on cpu"):
        mlp.loss(x, torch.randn(4, 5, device="meta"))
    with pytest.raises(TypeError, match="target has dtype torch.float64"):
        mlp.loss(x, torch.randn(4, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        mlp.loss(x, [[0.0] * 5] * 4)
    with pytest.raises(ValueError, match="loss must be one of"):
        mlp.loss(x, torch.randn(4, 5), loss="l1")
    with pytest.raises(ValueError, match="loss='bce' needs output_activation='sigmoid'"):
        mlp.loss(x, torch.rand(4, 5), loss="bce")
    with pytest.raises(ValueError, match="x must have 6 features"):
        mlp.loss(torch.randn(4, 7), torch.randn(4, 5))


def test_the_narrow_loss_ops_refuse_bad_input():
    dims = [6, 10, 4]
    x, weights, biases = torch.randn(9, 6), torch.randn(6 * 10 + 10 * 4), torch.randn(14)
    op, backward = torch.ops.aefast.fused_narrow_mlp_loss, torch.ops.aefast.fused_narrow_mlp_loss_backward
    with pytest.raises(ValueError, match="target must be contiguous \\(9, 4\\)"):
        op(x, weights, biases, torch.rand(9, 5), dims, "relu", "none", "mse")
    with pytest.raises(ValueError, match="target must be contiguous"):
        op(x, weights, biases, torch.rand(4, 9).T, dims, "relu", "none", "mse")
    with pytest.raises(ValueError, match="last_activation must be 'sigmoid'"):
        op(x, weights, biases, torch.rand(9, 4), dims, "relu", "tanh", "bce")
    with pytest.raises(ValueError, match="loss must be one of"):
        op(x, weights, biases, torch.rand(9, 4), dims, "relu", "none", "huber")
    with pytest.raises(ValueError, match="grad_loss must be one floating-point value"):
        backward(torch.ones(2), x, weights, biases, torch.rand(9, 4), dims, "relu", "none", "mse", True)
    with pytest.raises(ValueError, match="weights must be"):
        op(x, weights[1:], biases, torch.rand(9, 4), dims, "relu", "none", "mse")


def test_mlp_loss_with_hooks_runs_through_the_modules():
    """A hook on the last layer sees its output, as in plain PyTorch: the loss then runs through the
    modules' calls (the fused loss never writes that output)."""
    torch.manual_seed(5)
    mlp = FusedMLP([6, 16, 16, 5], activation="relu", output_activation="sigmoid")
    seen = []
    mlp.layers[-1].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    x, target = torch.randn(4, 6), torch.rand(4, 5)
    value = mlp.loss(x, target, "bce")
    assert seen == [(4, 5)]
    torch.testing.assert_close(value, F.binary_cross_entropy(mlp(x), target))


def test_mlp_loss_compiles_fullgraph(mlp_backend):
    torch.manual_seed(2)
    mlp = FusedMLP([20, 9, 9, 3], activation="tanh", output_activation="sigmoid")
    x, target = torch.randn(5, 20), torch.rand(5, 3)

    def loss_of(x):
        return mlp.loss(x, target, "bce")

    value, expected = torch.compile(loss_of, fullgraph=True, backend="aot_eager")(x), loss_of(x)
    torch.testing.assert_close(value, expected)
    for a, b in zip(torch.autograd.grad(value, list(mlp.parameters())),
                    torch.autograd.grad(expected, list(mlp.parameters()))):
        torch.testing.assert_close(a, b)


def test_mlp_loss_double_backward(mlp_backend):
    """A gradient penalty differentiates the gradients: under create_graph the chain's backward runs the
    reference's plain ops, whose result must equal nn.Sequential's."""
    torch.manual_seed(6)
    mlp = FusedMLP([5, 12, 12, 4], activation="tanh", output_activation="sigmoid")
    sequential = mlp.to_sequential()
    x, target = torch.randn(7, 5), torch.rand(7, 4)

    def penalty(value, parameters):
        grads = torch.autograd.grad(value, parameters, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), parameters)
    got = penalty(mlp.loss(x, target, "bce"), list(mlp.parameters()))
    want = penalty(sequential_loss(sequential, x, target, "bce"), list(sequential.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
