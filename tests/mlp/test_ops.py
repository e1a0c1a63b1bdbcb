"""The fused-MLP custom ops pass opcheck and gradcheck (float64, which runs the reference's written-out
backward on every backend), and trace under torch.compile(fullgraph=True). The autograd.Functions that
the layers call outside torch.compile (ops.fused_linear & co.) pass the same gradchecks and equal the
ops bit for bit."""
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from aefast.mlp import ops, reference
from aefast.mlp.layers import corrupted
from aefast.nn import FusedAutoencoder, FusedMLP
from tests.conftest import aefast_ops_run_by

DIFFERENTIABLE_OPS = ("fused_linear", "fused_linear_loss", "fused_narrow_mlp", "fused_narrow_mlp_loss")
ENTRIES = {"op": SimpleNamespace(**{name: getattr(torch.ops.aefast, name) for name in DIFFERENTIABLE_OPS}),
           "function": SimpleNamespace(**{name: getattr(ops, name) for name in DIFFERENTIABLE_OPS})}


@pytest.fixture(params=sorted(ENTRIES))
def entry(request):
    """Each differentiable op both ways in: torch.ops.aefast.* (the op's registered autograd, which
    torch.compile traces) and ops.fused_* (the autograd.Functions the layers call in eager mode)."""
    return ENTRIES[request.param]


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


@pytest.mark.parametrize("save", [True, False])
def test_opcheck_narrow_backward(mlp_backend, save):
    """From the saved hidden activations, and without them (recomputed)."""
    torch.manual_seed(11)
    dims = [6, 10, 4]
    x, weights, biases = torch.randn(9, 6), torch.randn(6 * 10 + 10 * 4), torch.randn(14)
    out, saved = torch.ops.aefast.fused_narrow_mlp(x, weights, biases, dims, "tanh", "sigmoid", save)
    torch.library.opcheck(torch.ops.aefast.fused_narrow_mlp_backward.default,
                          (torch.randn(9, 4), x, out, saved, weights, biases, dims, "tanh", "sigmoid", True))


@pytest.mark.parametrize("corruption,param", [("mask", 0.3), ("gaussian", 0.5), ("none", 0.0)])
def test_opcheck_and_gradcheck_corrupt(corruption, param):
    """aefast::corrupt (the plain path's corruption under torch.compile) is the layers' outside it (the
    noise from aefast._C on the CPU: the formulas' mask bit for bit, their normals within 2e-6), and
    its backward regenerates the mask from the seed."""
    x = torch.randn(9, 17, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor(4)
    torch.library.opcheck(torch.ops.aefast.corrupt.default,
                          (x.detach().float().requires_grad_(), corruption, param, seed))
    got = torch.ops.aefast.corrupt(x, corruption, param, seed)
    assert torch.equal(got, corrupted(x, corruption, param, seed))
    torch.testing.assert_close(got, reference.corrupt(x, corruption, param, 4),
                               atol=0 if corruption == "mask" else 2e-6 * param, rtol=0)
    assert torch.autograd.gradcheck(lambda x: torch.ops.aefast.corrupt(x, corruption, param, seed), (x,))
    assert torch.autograd.gradgradcheck(lambda x: torch.ops.aefast.corrupt(x, corruption, param, seed), (x,))


@pytest.mark.parametrize("corruption", [("mask", 0.2), ("gaussian", 0.3)])
def test_the_denoising_loss_compiles_with_inductor_where_auto_runs_plain_ops(corruption):
    """On the CPU auto runs the layers in plain ops, which torch.compile traces: the corruption goes in
    as the op aefast::corrupt (traced as plain ops, inductor did not compile its noise in 5 minutes)."""
    torch.manual_seed(2)
    model = FusedAutoencoder([20, 9, 3], output_activation="sigmoid")
    x = torch.rand(5, 20)

    def loss_of(x):
        return model.loss(x, corruption=corruption, seed=3)

    loss, expected_loss = torch.compile(loss_of, fullgraph=True)(x), loss_of(x)
    torch.testing.assert_close(loss, expected_loss)
    for a, b in zip(torch.autograd.grad(loss, list(model.parameters())),
                    torch.autograd.grad(expected_loss, list(model.parameters()))):
        torch.testing.assert_close(a, b)


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


@pytest.mark.parametrize("loss_options", [dict(corruption=("gaussian", 0.1), l1_code=0.01),
                                          dict(loss="bce", corruption=("mask", 0.3))])
def test_training_step_compiles_fullgraph_with_dynamic_shapes(mlp_backend, loss_options):
    """dynamic=True traces Python floats (corruption parameters, l1_code) as SymFloats, which the
    layers' checks must take: math.isfinite of one once broke the trace."""
    torch.manual_seed(2)
    model = FusedAutoencoder([20, 9, 3], output_activation="sigmoid")

    def loss_of(x):
        return model.loss(x, seed=3, **loss_options)

    compiled = torch.compile(loss_of, fullgraph=True, dynamic=True, backend="aot_eager")
    for rows in (5, 2, 9):
        x = torch.rand(rows, 20)
        loss, expected_loss = compiled(x), loss_of(x)
        torch.testing.assert_close(loss, expected_loss)
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
def test_gradcheck_linear(mlp_backend, entry, activation, corruption):
    x, weight, bias = float64_leaves((7, 5), (3, 5), (3,), seed=len(activation))

    def layer(x, weight, bias):
        return entry.fused_linear(x, weight, bias, activation, corruption, 0.3, torch.tensor(9))[0]
    assert layer(x, weight, bias).dtype == torch.float64
    assert torch.autograd.gradcheck(layer, (x, weight, bias))


@pytest.mark.parametrize("loss,activation", [("mse", "none"), ("mse", "tanh"), ("mse", "gelu"), ("bce", "sigmoid")])
def test_gradcheck_loss(mlp_backend, entry, loss, activation):
    """The target too: an autoencoder's clean input may come from a layer upstream."""
    h, weight, bias = float64_leaves((6, 4), (5, 4), (5,), seed=3)
    target = torch.rand(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).requires_grad_()

    def value(h, weight, bias, target):
        return entry.fused_linear_loss(h, weight, bias, target, activation, loss)[0]
    assert value(h, weight, bias, target).dtype == torch.float64
    assert torch.autograd.gradcheck(value, (h, weight, bias, target))


@pytest.mark.parametrize("activation,last_activation", [("relu", "none"), ("tanh", "sigmoid"), ("leaky_relu", "tanh")])
def test_gradcheck_narrow(mlp_backend, entry, activation, last_activation):
    dims = [5, 7, 3, 4]
    x, weights, biases = float64_leaves((6, 5), (5 * 7 + 7 * 3 + 3 * 4,), (7 + 3 + 4,), seed=5)

    def stretch(x, weights, biases):
        return entry.fused_narrow_mlp(x, weights, biases, dims, activation, last_activation, True)[0]
    assert torch.autograd.gradcheck(stretch, (x, weights, biases))


@pytest.mark.parametrize("loss,activation,last_activation",
                         [("mse", "relu", "none"), ("mse", "tanh", "sigmoid"), ("bce", "leaky_relu", "sigmoid")])
def test_gradcheck_narrow_loss(mlp_backend, entry, loss, activation, last_activation):
    """The written-out backward that recomputes every activation and d loss / d z (float64 runs the
    reference's on every backend), the target differentiable too."""
    dims = [5, 7, 3, 4]
    x, weights, biases = float64_leaves((6, 5), (5 * 7 + 7 * 3 + 3 * 4,), (7 + 3 + 4,), seed=6)
    target = torch.rand(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7)).requires_grad_()

    def value(x, weights, biases, target):
        return entry.fused_narrow_mlp_loss(x, weights, biases, target, dims, activation, last_activation, loss)
    assert value(x, weights, biases, target).dtype == torch.float64
    assert torch.autograd.gradcheck(value, (x, weights, biases, target))


# --- double backward: under create_graph each op's backward redoes its forward in plain ops ---------

@pytest.mark.parametrize("activation,corruption", [("relu", "mask"), ("tanh", "gaussian"), ("gelu", "none"),
                                                   ("sigmoid", "none")])
def test_gradgradcheck_linear(mlp_backend, entry, activation, corruption):
    x, weight, bias = float64_leaves((7, 5), (3, 5), (3,), seed=len(activation))

    def layer(x, weight, bias):
        return entry.fused_linear(x, weight, bias, activation, corruption, 0.3, torch.tensor(9))[0]
    assert torch.autograd.gradgradcheck(layer, (x, weight, bias))


@pytest.mark.parametrize("loss,activation", [("mse", "tanh"), ("bce", "sigmoid")])
def test_gradgradcheck_loss(mlp_backend, entry, loss, activation):
    h, weight, bias, target = float64_leaves((6, 4), (5, 4), (5,), (6, 5), seed=3)

    def value(h, weight, bias, target):
        return entry.fused_linear_loss(h, weight, bias, target, activation, loss)[0]
    assert torch.autograd.gradgradcheck(value, (h, weight, bias, target.sigmoid().detach().requires_grad_()))


def test_gradgradcheck_narrow(mlp_backend, entry):
    dims = [5, 7, 3, 4]
    x, weights, biases = float64_leaves((6, 5), (5 * 7 + 7 * 3 + 3 * 4,), (7 + 3 + 4,), seed=5)

    def stretch(x, weights, biases):
        return entry.fused_narrow_mlp(x, weights, biases, dims, "tanh", "sigmoid", True)[0]
    assert torch.autograd.gradgradcheck(stretch, (x, weights, biases))


@pytest.mark.parametrize("loss,last_activation", [("mse", "relu"), ("bce", "sigmoid")])
def test_gradgradcheck_narrow_loss(mlp_backend, entry, loss, last_activation):
    """With the target differentiable too (backward takes its gradient through the reference)."""
    dims = [5, 7, 3, 4]
    x, weights, biases, target = float64_leaves((6, 5), (5 * 7 + 7 * 3 + 3 * 4,), (7 + 3 + 4,), (6, 4), seed=7)

    def value(x, weights, biases, target):
        return entry.fused_narrow_mlp_loss(x, weights, biases, target, dims, "tanh", last_activation, loss)
    assert torch.autograd.gradgradcheck(value, (x, weights, biases, target.sigmoid().detach().requires_grad_()))


@pytest.mark.parametrize("loss,last_activation", [("mse", "none"), ("bce", "sigmoid")])
def test_opcheck_narrow_loss(mlp_backend, loss, last_activation):
    torch.manual_seed(11)
    dims = [6, 10, 4]
    x = torch.randn(9, 6, requires_grad=True)
    weights = torch.randn(6 * 10 + 10 * 4, requires_grad=True)
    biases = torch.randn(14, requires_grad=True)
    target = torch.rand(9, 4)
    torch.library.opcheck(torch.ops.aefast.fused_narrow_mlp_loss.default,
                          (x, weights, biases, target, dims, "leaky_relu", last_activation, loss))
    torch.library.opcheck(torch.ops.aefast.fused_narrow_mlp_loss_backward.default,
                          (torch.tensor(0.5), x.detach(), weights.detach(), biases.detach(), target, dims, "leaky_relu",
                           last_activation, loss, True))


def test_a_plain_backward_runs_the_backward_kernels_and_a_create_graph_one_the_plain_ops(mlp_backend):
    torch.manual_seed(6)
    model = FusedAutoencoder([9, 6, 5, 3], activation="tanh", output_activation="sigmoid")
    x = torch.rand(4, 9)
    loss = model.loss(x, corruption=("mask", 0.2), seed=1)
    assert aefast_ops_run_by(lambda: torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)) == {
        "fused_linear_backward", "fused_narrow_mlp_backward", "fused_narrow_mlp_loss_backward"}
    assert aefast_ops_run_by(lambda: torch.autograd.grad(loss, list(model.parameters()), create_graph=True)) == set()


def test_a_compiled_training_step_keeps_the_backward_kernels(mlp_backend):
    """AOT autograd traces backward without create_graph: the compiled backward graph calls the fused
    backward ops, not the plain ops double backward takes."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified
    graphs = []

    def backend(graph_module, example_inputs):
        def keep(graph, _):
            graphs.append(str(graph.graph))
            return make_boxed_func(graph.forward)
        return aot_module_simplified(graph_module, example_inputs, fw_compiler=keep, bw_compiler=keep)

    torch.manual_seed(2)
    # 9 -> 6 -> 3 and back to 9: narrow; the loss in a 9 -> 200 layer, or in the decoder's narrow stretch.
    for width, loss_op in ((200, "fused_linear_loss"), (20, "fused_narrow_mlp_loss")):
        graphs.clear()
        model = FusedAutoencoder([width, 9, 6, 3], output_activation="sigmoid")
        torch.compile(lambda x: model.loss(x, seed=3), fullgraph=True, backend=backend)(torch.rand(5, width)).backward()
        forward_graph, backward_graph = graphs
        assert f"{loss_op}.default" in forward_graph and "fused_narrow_mlp.default" in forward_graph
        assert "fused_linear_backward" in backward_graph and "fused_narrow_mlp_backward" in backward_graph
        if loss_op == "fused_narrow_mlp_loss":
            assert "fused_narrow_mlp_loss_backward" in backward_graph


def _float32_cases():
    """(op name, inputs, which of them are differentiable) on odd shapes."""
    generator = torch.Generator().manual_seed(21)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)
    dims = [6, 9, 3, 5]
    return [
        ("fused_linear", (rand(7, 17), rand(5, 17), rand(5), "gelu", "mask", 0.3, torch.tensor(8)), (0, 1, 2)),
        ("fused_linear", (rand(129, 3), rand(17, 3), None, "tanh", "gaussian", 0.5, torch.tensor(2)), (1,)),
        ("fused_linear_loss", (rand(7, 4), rand(17, 4), rand(17), rand(7, 17).sigmoid(), "sigmoid", "bce"),
         (0, 1, 2)),
        ("fused_narrow_mlp", (rand(7, 6), rand(6 * 9 + 9 * 3 + 3 * 5), rand(9 + 3 + 5), dims, "relu", "sigmoid",
                              True), (0, 1, 2)),
        ("fused_narrow_mlp_loss", (rand(7, 6), rand(6 * 9 + 9 * 3 + 3 * 5), rand(9 + 3 + 5), rand(7, 5).sigmoid(),
                                   dims, "relu", "sigmoid", "bce"), (0, 1, 2)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_the_eager_functions_equal_the_ops_bit_for_bit_without_their_dispatch(mlp_backend, case):
    """Outside torch.compile the layers call ops.fused_linear & co.: autograd.Functions over the ops' own
    checks and kernels, without the op's dispatch (which took 40 of a differentiable call's 47 us of host
    time). Same kernels, so the same outputs and gradients to the bit; and no aefast op dispatched, or
    the eager path would pay that dispatch again."""
    name, inputs, differentiable = _float32_cases()[case]

    def outputs_and_gradients(call):
        leaves = [t.clone().requires_grad_() if i in differentiable else t for i, t in enumerate(inputs)]
        out = call(*leaves)
        out = out if isinstance(out, torch.Tensor) else out[0]  # (output, tensor for backward only) but the loss
        grad_out = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        return [out, *torch.autograd.grad(out, [leaves[i] for i in differentiable], grad_out)]

    through_op = outputs_and_gradients(getattr(torch.ops.aefast, name))
    ran = aefast_ops_run_by(lambda: outputs_and_gradients(getattr(ops, name)))
    through_function = outputs_and_gradients(getattr(ops, name))
    for got, expected in zip(through_function, through_op, strict=True):
        assert got.dtype == expected.dtype == torch.float32
        assert torch.equal(got, expected)

    class RefuseAefastOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            assert func.namespace != "aefast", f"{func} dispatched"
            return func(*args, **(kwargs or {}))
    with RefuseAefastOps():
        outputs_and_gradients(getattr(ops, name))
    assert name in ran  # its kernel ran, picked by op name


@pytest.mark.parametrize("case", range(5))
def test_an_empty_batch_gives_empty_outputs_a_nan_loss_and_zero_parameter_gradients(mlp_backend, entry, case):
    """Zero rows, as torch gives them: F.mse_loss of an empty batch is NaN (the mean of nothing) and the
    parameters' gradients are empty sums, zero. The linear loss op once divided by the element count in
    Python and raised ZeroDivisionError."""
    name, inputs, differentiable = _float32_cases()[case]
    rows = inputs[0].shape[0]
    batched = (0, 3) if name.endswith("_loss") else (0,)  # x, and the loss ops' target
    inputs = [t[:0] if i in batched else t for i, t in enumerate(inputs)]
    assert inputs[0].shape[0] == 0 and rows > 0
    leaves = [t.clone().requires_grad_() if i in differentiable else t for i, t in enumerate(inputs)]
    out = getattr(entry, name)(*leaves)
    out = out if isinstance(out, torch.Tensor) else out[0]
    if name.endswith("_loss"):
        assert out.shape == () and out.isnan()
    else:
        assert out.shape == (0, inputs[1].shape[0] if name == "fused_linear" else inputs[3][-1])
    gradients = torch.autograd.grad(out, [leaves[i] for i in differentiable], torch.ones_like(out))
    for index, gradient in zip(differentiable, gradients, strict=True):
        assert gradient.shape == inputs[index].shape
        assert torch.equal(gradient, torch.zeros_like(gradient))  # an input's is empty; a parameter's, zero
