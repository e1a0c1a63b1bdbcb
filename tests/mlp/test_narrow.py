"""Narrow stretches (consecutive widths <= 128) run as one op: the same outputs and gradients as the
layer-by-layer chain and nn.Sequential, with training and inference (nothing saved) paths, and a
backward that reads the hidden activations the forward saved or recomputes them."""
import pytest
import torch

import aefast
from aefast._memory import saved_for_backward_bytes
from aefast.mlp import ops, reference, reference_kernels
from aefast.mlp.layers import _narrow_runs
from aefast.nn import FusedAutoencoder, FusedLinear, FusedMLP


@pytest.fixture(params=[False, True], ids=["recomputed", "saved"])
def saves_activations(request, monkeypatch):
    """Both ways backward gets a stretch's hidden activations (ops.NARROW_SAVES_ACTIVATIONS)."""
    monkeypatch.setattr(ops, "NARROW_SAVES_ACTIVATIONS", request.param)
    return request.param


@pytest.mark.parametrize("dims,activation,output_activation", [
    ([64, 64, 64, 64, 64], "relu", None),        # the narrow 64-wide stack
    ([17, 100, 3, 33], "tanh", "sigmoid"),       # different widths, not one shared width
    ([5, 128, 7], "leaky_relu", "relu"),
    ([3, 16, 16, 3], "sigmoid", "tanh"),
])
@pytest.mark.parametrize("bias", [True, False])
def test_narrow_stretch_equals_sequential(mlp_backend, saves_activations, dims, activation, output_activation, bias):
    torch.manual_seed(sum(dims))
    mlp = FusedMLP(dims, activation=activation, output_activation=output_activation, bias=bias)
    assert _narrow_runs(mlp.layers, [False] * len(mlp.layers)) == [(0, len(dims) - 1)]
    sequential = mlp.to_sequential()
    for batch in (1, 7, 129):
        x = torch.randn(batch, dims[0])
        x_fused, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_fused, y_plain = mlp(x_fused), sequential(x_plain)
        torch.testing.assert_close(y_fused, y_plain, atol=1e-5, rtol=1e-5)
        grad = torch.randn(y_fused.shape, generator=torch.Generator().manual_seed(batch))
        got = torch.autograd.grad(y_fused, [x_fused] + list(mlp.parameters()), grad)
        expected = torch.autograd.grad(y_plain, [x_plain] + list(sequential.parameters()), grad)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=1e-5 * max(batch, 10), rtol=1e-5)
        with torch.no_grad():  # inference: the activations between layers are not written
            torch.testing.assert_close(mlp(x), y_plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dims", [[64, 64, 64, 64, 64], [17, 100, 3, 33]])
def test_narrow_backward_in_chunks(mlp_backend, saves_activations, monkeypatch, dims):
    """The Triton backward adds a chunk of row blocks' weight gradients at once to its program's partial
    sums, and its programs loop over chunks: with chunks of 64 rows (2 or 4 blocks) and 2 programs,
    batch 129 makes 3 chunks, the last of one row, so one program adds 2 into its sums (and, recomputing,
    overwrites its chunk of activations with the next chunk's); every gradient must still be
    nn.Sequential's."""
    if mlp_backend != "triton":
        pytest.skip("the reference has no chunks")
    from aefast.mlp import triton_kernels

    monkeypatch.setattr(triton_kernels, "NARROW_CHUNK_ROWS", 64)
    monkeypatch.setattr(triton_kernels, "INTERPRETER_NARROW_PROGRAMS", 2)
    launches = []
    grid = triton_kernels._narrow_backward_grid
    monkeypatch.setattr(triton_kernels, "_narrow_backward_grid", lambda *a: launches.append(grid(*a)) or launches[-1])
    torch.manual_seed(len(dims))
    mlp = FusedMLP(dims, activation="tanh", output_activation="relu")
    sequential = mlp.to_sequential()
    x = torch.randn(129, dims[0])
    x_fused, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(129, dims[-1])
    got = torch.autograd.grad(mlp(x_fused), [x_fused] + list(mlp.parameters()), grad)
    expected = torch.autograd.grad(sequential(x_plain), [x_plain] + list(sequential.parameters()), grad)
    assert len(launches) == 1 and launches[0][0] >= 2 and launches[0][1] == 2  # (blocks per chunk, programs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5 * 129, rtol=1e-5)


class _NotLaunched:
    """A narrow kernel that must not launch."""

    def __getitem__(self, grid):
        raise AssertionError("a narrow kernel launched where its variant spills")


@pytest.fixture
def narrow_kernels_spill(monkeypatch):
    """The Triton backend as on a GPU where every narrow variant spilled (_Launch): the stretches then run
    layer by layer through the linear kernels, and a narrow kernel launch fails the test."""
    from aefast.mlp import triton_kernels

    monkeypatch.setattr(triton_kernels._Launch, "keeps_to_registers", lambda launch: False)
    monkeypatch.setattr(triton_kernels, "_narrow_forward_kernel", _NotLaunched())
    monkeypatch.setattr(triton_kernels, "_narrow_backward_kernel", _NotLaunched())
    with aefast.use_backend("triton"):
        yield


@pytest.mark.parametrize("dims,activation,output_activation", [
    ([17, 100, 100, 17], "relu", None),  # spills 450-1100 bytes a thread with triton 3.6 (sm_90)
    ([128, 100, 3, 33], "tanh", "sigmoid"),
    ([5, 7], "relu", "relu"),  # one layer
])
@pytest.mark.parametrize("bias", [True, False])
def test_a_stretch_whose_kernel_spills_runs_layer_by_layer(narrow_kernels_spill, saves_activations, dims, activation,
                                                            output_activation, bias):
    """Forward (with and without the hidden activations saved), backward (reading them or recomputing),
    with and without dX: nn.Sequential's outputs and gradients, as the narrow kernels give them."""
    torch.manual_seed(sum(dims))
    mlp = FusedMLP(dims, activation=activation, output_activation=output_activation, bias=bias)
    sequential = mlp.to_sequential()
    for batch in (1, 7, 129):
        x = torch.randn(batch, dims[0])
        for input_grad in (True, False):
            x_fused, x_plain = x.clone().requires_grad_(input_grad), x.clone().requires_grad_(input_grad)
            y_fused, y_plain = mlp(x_fused), sequential(x_plain)
            torch.testing.assert_close(y_fused, y_plain, atol=1e-5, rtol=1e-5)
            grad = torch.randn(y_fused.shape, generator=torch.Generator().manual_seed(batch))
            leaves = [x_fused] * input_grad + list(mlp.parameters())
            got = torch.autograd.grad(y_fused, leaves, grad)
            expected = torch.autograd.grad(y_plain, [x_plain] * input_grad + list(sequential.parameters()), grad)
            for a, b in zip(got, expected, strict=True):
                torch.testing.assert_close(a, b, atol=1e-5 * max(batch, 10), rtol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(mlp(x), sequential(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss,output_activation", [("mse", None), ("bce", "sigmoid")])
@pytest.mark.parametrize("dims", [[17, 60, 60, 17], [17, 100, 100, 17]])
def test_a_loss_stretch_whose_kernel_spills_runs_layer_by_layer(narrow_kernels_spill, loss, output_activation, dims):
    """FusedMLP.loss over a stretch run layer by layer (its last layer as the fused linear loss): the
    loss and every gradient, the target's included, as nn.Sequential's. At a 64-wide tile IEEE float32's
    loss backward recomputes (its d loss / d z from the loss layer); at 128 it has none that does, and
    takes d loss / d z from the saved output."""
    import torch.nn.functional as F

    torch.manual_seed(7)
    mlp = FusedMLP(dims, activation="tanh", output_activation=output_activation)
    sequential = mlp.to_sequential()
    for batch in (1, 7, 129):
        x, target = torch.randn(batch, dims[0]), torch.rand(batch, dims[-1])
        leaves = [x.clone().requires_grad_(), target.clone().requires_grad_()]
        plain = [t.clone().requires_grad_() for t in (x, target)]
        value = mlp.loss(*leaves, loss=loss)
        output = sequential(plain[0])
        expected = F.mse_loss(output, plain[1]) if loss == "mse" else F.binary_cross_entropy(output, plain[1])
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-5)
        # The loss's own gradient 2.5, not autograd's 1, reaches the layers' backward.
        got = torch.autograd.grad(2.5 * value, leaves + list(mlp.parameters()))
        want = torch.autograd.grad(2.5 * expected, plain + list(sequential.parameters()))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6 * max(batch, 10), rtol=1e-5)


def test_the_spill_checks_key_tells_apart_what_triton_specializes_on():
    """_Launch.keeps_to_registers keeps its answer per key: a launch differently aligned gets its own, a
    launch of other sizes, values and grid of the same specialization shares it; in the interpreter it
    says True without compiling."""
    from aefast.mlp import triton_kernels

    x = torch.zeros(33)
    launch = triton_kernels._Launch(triton_kernels._narrow_forward_kernel, (1,), (x, 17, 1.0), {"BLOCK": 16})
    moved = triton_kernels._Launch(triton_kernels._narrow_forward_kernel, (1,), (x[1:], 17, 1.0), {"BLOCK": 16})
    assert launch.key() != moved.key()
    assert launch.key() == triton_kernels._Launch(launch.kernel, (3,), (torch.ones(5), 33, 2.0), {"BLOCK": 16}).key()
    if triton_kernels._INTERPRETED:
        assert launch.keeps_to_registers()


def test_narrow_stretch_in_bfloat16(mlp_backend):
    torch.manual_seed(9)
    mlp = FusedMLP([32, 48, 16], activation="relu")
    exact = mlp.to_sequential().double()
    x = torch.randn(65, 32)
    low = FusedMLP([32, 48, 16], activation="relu").bfloat16()
    low.load_state_dict(mlp.state_dict())
    torch_error = (low.to_sequential()(x.bfloat16()).double() - exact(x.double())).abs().max()
    fused_error = (low(x.bfloat16()).double() - exact(x.double())).abs().max()
    assert fused_error <= 2 * torch_error


def test_narrow_gradients_in_bfloat16(mlp_backend, saves_activations):
    """Each gradient's error against float64 at most twice nn.Sequential's in bfloat16 (DESIGN.md's bar
    for low precision): the weight gradients' float32 partial sums are added and rounded once."""
    torch.manual_seed(10)
    mlp = FusedMLP([32, 48, 16, 24], activation="tanh")
    exact = mlp.to_sequential().double()
    low = FusedMLP([32, 48, 16, 24], activation="tanh").bfloat16()
    low.load_state_dict(mlp.state_dict())
    x, grad = torch.randn(129, 32), torch.randn(129, 24)
    want = torch.autograd.grad(exact(x.double()), list(exact.parameters()), grad.double())
    fused = torch.autograd.grad(low(x.bfloat16()), list(low.parameters()), grad.bfloat16())
    plain = low.to_sequential()
    eager = torch.autograd.grad(plain(x.bfloat16()), list(plain.parameters()), grad.bfloat16())
    for got, torch_got, expected in zip(fused, eager, want, strict=True):
        assert got.dtype == torch.bfloat16
        assert (got.double() - expected).abs().max() <= 2 * (torch_got.double() - expected).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_recomputes_what_the_forward_did_not_save(mlp_backend, dtype):
    """The backward op without saved activations recomputes them, rounded as the forward rounded them:
    the same gradients as from the saved ones (up to the order of float32 sums: the recomputation's
    row blocks need not be the forward's)."""
    torch.manual_seed(18)
    dims = [17, 100, 3, 33]
    weights = torch.randn(17 * 100 + 100 * 3 + 3 * 33, dtype=dtype) / 4
    biases = torch.randn(100 + 3 + 33, dtype=dtype)
    x, grad = torch.randn(129, 17, dtype=dtype), torch.randn(129, 33, dtype=dtype)
    out, saved = ops.fused_narrow_mlp_op(x, weights, biases, dims, "tanh", "sigmoid", True)
    out_alone, nothing = ops.fused_narrow_mlp_op(x, weights, biases, dims, "tanh", "sigmoid", False)
    assert nothing.numel() == 0 and torch.equal(out, out_alone)
    from_saved = ops.fused_narrow_mlp_backward_op(grad, x, out, saved, weights, biases, dims, "tanh", "sigmoid", True)
    recomputed = ops.fused_narrow_mlp_backward_op(grad, x, out, nothing, weights, biases, dims, "tanh", "sigmoid",
                                                  True)
    for a, b in zip(recomputed, from_saved, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5 * 129 if dtype == torch.float32 else 0.0,
                                   rtol=1e-6 if dtype == torch.float32 else 0.0)


def test_backward_without_a_recomputing_tile_saves_for_itself(mlp_backend, monkeypatch):
    """Where no tile of the recomputing backward fits the registers (NARROW_ROWS gives None: 3xTF32 and
    IEEE float32 at width 128), Triton's backward has the forward kernel write the hidden activations for it, and reads
    them as the saving backward does: the gradients are still nn.Sequential's."""
    if mlp_backend != "triton":
        pytest.skip("the reference has no tiles")
    from aefast.mlp import fp32_precision, triton_kernels

    monkeypatch.setattr(ops, "NARROW_SAVES_ACTIVATIONS", False)
    saves, forward = [], triton_kernels.narrow_forward

    def recording_forward(x, weights, biases, dims, activation, last_activation, save):
        saves.append(save)
        return forward(x, weights, biases, dims, activation, last_activation, save)
    monkeypatch.setattr(triton_kernels, "narrow_forward", recording_forward)
    assert triton_kernels.NARROW_ROWS[("tf32x3", "recompute")][128] is None
    torch.manual_seed(20)
    mlp = FusedMLP([5, 128, 100, 7], activation="tanh")
    sequential = mlp.to_sequential()
    x, grad = torch.randn(33, 5), torch.randn(33, 7)
    with fp32_precision("tf32x3"):
        got = torch.autograd.grad(mlp(x), list(mlp.parameters()), grad)
    assert saves.count(True) == 1  # the backward's own (the op's forward may call a cached function)
    expected = torch.autograd.grad(sequential(x), list(sequential.parameters()), grad)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5 * 33, rtol=1e-5)


def test_a_recomputing_stretch_saves_its_input_and_output_alone(mlp_backend, saves_activations):
    """The tensors a training step keeps for backward (bench_mlp.py's step: the mean square of the
    output), by the bytes that grow with the batch: a recomputing 64-wide stack of 4 layers keeps its
    input and output, 2 of nn.Sequential's 5 row-sized tensors (the input and each layer's output); a
    saving one also its 3 hidden activations."""
    torch.manual_seed(19)
    mlp = FusedMLP([64] * 5, activation="relu")
    sequential = mlp.to_sequential()
    x = torch.randn(1000, 64)

    def kept_rows(model):  # activations: tensors of at least a row-sized tensor's elements, not parameters
        return saved_for_backward_bytes(lambda: model(x).square().mean().backward(),
                                        smallest=x.numel()) // (x.numel() * x.element_size())

    assert kept_rows(sequential) == 5
    assert kept_rows(mlp) == (5 if saves_activations else 2)


def test_which_layers_fuse():
    def runs(*specs, hooked=()):
        layers = [FusedLinear(a, b, activation=act, bias=bias) for a, b, act, bias in specs]
        return _narrow_runs(layers, [index in hooked for index in range(len(layers))])

    assert runs((784, 64, "relu", True), (64, 32, "relu", True), (32, 64, None, True)) == [(1, 3)]
    assert runs((8, 8, "gelu", True), (8, 8, "gelu", True)) == []  # GELU needs its pre-activation
    assert runs((8, 8, "relu", True), (8, 8, "tanh", True), (8, 8, "tanh", True)) == [(0, 2)]
    assert runs((8, 8, "relu", True), (8, 8, "relu", False)) == []
    assert runs((8, 200, "relu", True), (200, 8, "relu", True)) == []
    # a layer with hooks is called on its own (tests/mlp/test_hooks.py)
    assert runs(*[(8, 8, "relu", True)] * 4, hooked=(1,)) == [(2, 4)]
    assert runs(*[(8, 8, "relu", True)] * 4, hooked=(2,)) == [(0, 2)]


def test_opcheck_narrow(mlp_backend):
    torch.manual_seed(10)
    dims = [6, 10, 4]
    x = torch.randn(9, 6, requires_grad=True)
    weights = torch.randn(6 * 10 + 10 * 4, requires_grad=True)
    biases = torch.randn(14, requires_grad=True)
    torch.library.opcheck(torch.ops.aefast.fused_narrow_mlp.default, (x, weights, biases, dims, "tanh", "none", True))


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.0)])
def test_reference_narrow_in_blocks_of_rows(monkeypatch, dtype, atol):
    """On the CPU the reference runs a narrow stretch in blocks of rows: with blocks of 64 rows (the
    widest layer's 100 outputs in float32 take 64 * 400 bytes), batch 129 makes 3 blocks, the last of
    one row, and every output and gradient must be nn.Sequential's (in bfloat16: bit for bit the
    one-block run's, each layer's output rounded as one block rounds it)."""
    torch.manual_seed(12)
    mlp = FusedMLP([17, 100, 3, 33], activation="tanh", output_activation="sigmoid").to(dtype)
    x = torch.randn(129, 17, dtype=dtype)
    grad = torch.randn(129, 33, dtype=dtype)

    def outputs_and_gradients():
        x_fused = x.clone().requires_grad_()
        with aefast.use_backend("reference"):
            y = mlp(x_fused)
            with torch.no_grad():
                y_inference = mlp(x)
        return [y, y_inference, *torch.autograd.grad(y, [x_fused] + list(mlp.parameters()), grad)]

    one_block = outputs_and_gradients()
    monkeypatch.setattr(reference_kernels, "NARROW_CPU_BLOCK_BYTES", 64 * 4 * 100)
    blocks_of_x = reference_kernels._narrow_blocks(x, [17, 100, 3, 33])
    assert [block.stop - block.start for block in blocks_of_x] == [64, 64, 1]
    blocks = outputs_and_gradients()
    if dtype == torch.float32:
        sequential = mlp.to_sequential()
        x_plain = x.clone().requires_grad_()
        y_plain = sequential(x_plain)
        one_block = [y_plain, y_plain, *torch.autograd.grad(y_plain, [x_plain] + list(sequential.parameters()), grad)]
    for got, expected in zip(blocks, one_block):
        torch.testing.assert_close(got, expected, atol=atol * 129, rtol=atol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("save", [False, True])
def test_reference_narrow_blocks_round_each_layer_as_the_layers_do(monkeypatch, dtype, save):
    """In 16 bits the CPU's row blocks round each layer's output to x's dtype before the next layer, as
    the layer-by-layer chain does: the same output bit for bit, over 3 blocks (without the rounding, 7%
    of the outputs differed)."""
    torch.manual_seed(13)
    dims = [17, 100, 3, 33]
    monkeypatch.setattr(reference_kernels, "NARROW_CPU_BLOCK_BYTES", 64 * 4 * 100)  # blocks of 64 rows
    x = torch.randn(129, 17).to(dtype)
    weights = (0.3 * torch.randn(sum(a * b for a, b in zip(dims[:-1], dims[1:])))).to(dtype)
    biases = (0.1 * torch.randn(sum(dims[1:]))).to(dtype)
    out, _ = reference_kernels.narrow_forward(x, weights, biases, dims, "tanh", "sigmoid", save)
    # The chain on the same blocks of rows: the same matmul shapes, so the same sums on any BLAS.
    chain = [reference.narrow_forward(x[rows], weights, biases, dims, "tanh", "sigmoid") for rows in
             (slice(0, 64), slice(64, 128), slice(128, 129))]
    assert torch.equal(out, torch.cat(chain))


def test_cpu_runs_many_rows_of_a_narrow_stretch_through_the_op(monkeypatch):
    """Under auto on the CPU, a narrow stretch whose widest layer's output takes NARROW_CPU_MIN_BYTES
    or more goes through the op (its blocks), a smaller one layer by layer; both give nn.Sequential's
    outputs and gradients."""
    calls = []
    op = ops.fused_narrow_mlp
    monkeypatch.setattr(ops, "fused_narrow_mlp", lambda *args: calls.append(args[0].shape[0]) or op(*args))
    monkeypatch.setattr(reference_kernels, "NARROW_CPU_BLOCK_BYTES", 32 * 4 * 40)  # blocks of 32 rows
    # From 100 rows of the 40-wide outputs on:
    monkeypatch.setattr(reference_kernels, "NARROW_CPU_MIN_BYTES", 100 * 4 * 40)
    torch.manual_seed(13)
    mlp = FusedMLP([9, 40, 40, 5], activation="relu")
    sequential = mlp.to_sequential()
    # In bfloat16 eager's own is faster:
    assert not reference_kernels.narrow_in_blocks_pays(10**6, 64, torch.bfloat16, torch.device("cpu"))
    for batch, through_op in ((99, False), (100, True), (3 * 50, True)):
        calls.clear()
        x = torch.randn(batch, 9)
        x_fused, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_fused, y_plain = mlp(x_fused.reshape(-1, 50, 9) if batch == 150 else x_fused), sequential(x_plain)
        assert calls == ([batch] if through_op else [])
        torch.testing.assert_close(y_fused.reshape(batch, 5), y_plain, atol=1e-5, rtol=1e-5)
        got = torch.autograd.grad(y_fused.sum(), [x_fused] + list(mlp.parameters()))
        expected = torch.autograd.grad(y_plain.sum(), [x_plain] + list(sequential.parameters()))
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=1e-5 * batch, rtol=1e-5)


def test_outputs_for_backward_only_get_no_gradient_filled(mlp_backend):
    """The ops' second outputs (saved activations, GELU's pre-activation, the loss's d loss / d z) are
    for backward: autograd passes None for their unused gradients instead of filling zeros as large as
    them, so a loss of those outputs alone differentiates to nothing."""
    torch.manual_seed(14)
    x = torch.randn(7, 6, requires_grad=True)
    weights = torch.randn(6 * 10 + 10 * 4, requires_grad=True)
    _, saved = ops.fused_narrow_mlp_op(x, weights, None, [6, 10, 4], "tanh", "none", True)
    assert torch.autograd.grad(saved.sum(), [x, weights], allow_unused=True) == (None, None)
    weight = torch.randn(5, 6, requires_grad=True)
    _, saved_z = ops.fused_linear_op(x, weight, None, "gelu", "none", 0.0, torch.zeros((), dtype=torch.int64))
    assert torch.autograd.grad(saved_z.sum(), [x, weight], allow_unused=True) == (None, None)
    _, grad_z = ops.fused_linear_loss_op(x, weight, None, torch.rand(7, 5), "sigmoid", "bce")
    assert torch.autograd.grad(grad_z.sum(), [x, weight], allow_unused=True) == (None, None)


def test_a_large_narrow_stretch_under_torch_func_and_torch_compile(monkeypatch):
    """A narrow stretch large enough for the op on the CPU still works under torch.func.grad and vmap
    (which refuse the custom op's autograd: the layers run it layer by layer there) and traces whole
    under torch.compile(fullgraph=True) (through the op)."""
    from torch.func import functional_call, grad, vmap

    monkeypatch.setattr(reference_kernels, "NARROW_CPU_MIN_BYTES", 4 * 16)
    torch.manual_seed(16)
    mlp = FusedMLP([6, 16, 16, 4], activation="tanh")
    sequential = mlp.to_sequential()
    x = torch.randn(9, 6)
    parameters = dict(mlp.named_parameters())
    got = grad(lambda p: functional_call(mlp, p, (x,)).square().sum())(parameters)
    expected = torch.autograd.grad(sequential(x).square().sum(), list(sequential.parameters()))
    for a, b in zip(got.values(), expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vmap(mlp)(x.reshape(3, 3, 6)), sequential(x).reshape(3, 3, 4), atol=1e-6, rtol=1e-5)
    compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), sequential(x), atol=1e-6, rtol=1e-5)


def test_torch_func_under_auto_runs_plain_ops_where_auto_picks_a_kernel(monkeypatch):
    """Where auto picks a kernel (a GPU; here the choice is patched), torch.func.grad still works: the
    layers run the reference's math in plain ops inside its transforms."""
    from torch.func import functional_call, grad

    from aefast.mlp import layers

    monkeypatch.setattr(layers, "_plain_autograd", lambda device: False)
    torch.manual_seed(17)
    model = FusedAutoencoder([10, 8, 6, 3], activation="tanh", output_activation="sigmoid")
    x = torch.rand(7, 10)
    parameters = dict(model.named_parameters())
    got = grad(lambda p: functional_call(model, p, (x,)).square().sum())(parameters)
    expected = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))  # through the ops
    for a, b in zip(got.values(), expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # The loss's gradient with respect to its input, through the corruption and the target.
    leaf = x.clone().requires_grad_()
    (expected_x,) = torch.autograd.grad(model.loss(leaf, corruption=("mask", 0.3), seed=2), leaf)
    torch.testing.assert_close(grad(lambda x: model.loss(x, corruption=("mask", 0.3), seed=2))(x), expected_x,
                               atol=1e-7, rtol=1e-5)
