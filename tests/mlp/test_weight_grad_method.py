"""The Triton backward's two ways to a weight gradient: the fused dW kernel, or dZ written by the dX
kernel and then torch.mm and a column sum. Both against the reference (in the interpreter), the cases
that must keep the kernel, and the choice between them that a GPU times once per problem."""
import pytest
import torch

from tests.conftest import force_cpu_backend

# M = 129 rows: partial row tiles; N = 100, K = 130: partial tiles on both edges.
ROWS, WIDTH_IN, WIDTH_OUT = 129, 130, 100


class _Refuse:
    """A kernel that must not launch."""

    def __init__(self, name):
        self.name = name

    def __getitem__(self, grid):
        raise AssertionError(f"{self.name} launched")


def _layer(dtype, bias, seed=3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, WIDTH_IN, generator=generator)
    weight = torch.randn(WIDTH_OUT, WIDTH_IN, generator=generator) / WIDTH_IN ** 0.5
    b = torch.randn(WIDTH_OUT, generator=generator) if bias else None
    grad_y = torch.randn(ROWS, WIDTH_OUT, generator=generator)
    return [t if t is None else t.to(dtype) for t in (x, weight, b, grad_y)]


def _backward(x, weight, bias, grad_y, activation, grad_scale=None):
    seed = torch.tensor(0)
    y, z = torch.ops.aefast.fused_linear(x, weight, bias, activation, "none", 0.0, seed)
    return torch.ops.aefast.fused_linear_backward(grad_y, x, weight, bias, y, z, activation, "none", 0.0, seed,
                                                  grad_scale, True)


# float32: sums of up to 129 O(1) products in another order (1e-6 per term, as test_layers).
TOLERANCES = {torch.float32: dict(atol=1e-6 * ROWS, rtol=1e-5)}
GELU_DERIVATIVE_MAX = 1.13  # the largest |d gelu / dz|; tanh's, ReLU's and the identity's are 1


def assert_within_bfloat16_bound(got, want, grad_y, x, scale):
    """bfloat16: dZ is rounded to 8 bits before the products (each term off by 2^-8 of itself) and each
    gradient once more at the end (2^-8 of itself); a sum's error is then at most 2^-7 times the sum of
    its terms' sizes, |dZ|^T |x| for dW and the column sums of |dZ| for db, with |dZ| <= 1.13 |dY| s."""
    size = GELU_DERIVATIVE_MAX * scale * grad_y.float().abs()
    bound = 2**-7 * (size.T @ x.float().abs() if got.dim() == 2 else size.sum(0))
    assert ((got.float() - want.float()).abs() <= bound).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation,bias,scaled", [("relu", True, False), ("gelu", True, True),
                                                    ("none", False, False), ("tanh", False, True),
                                                    ("none", True, True)])  # the fused loss's backward
def test_the_weight_gradient_by_matmul_equals_the_kernels_and_the_reference(triton_kernels, monkeypatch, dtype,
                                                                          activation, bias, scaled):
    x, weight, b, grad_y = _layer(dtype, bias)
    grad_scale = torch.tensor(0.75) if scaled else None
    by_kernel = _backward(x, weight, b, grad_y, activation, grad_scale)
    monkeypatch.setattr(triton_kernels, "WEIGHT_GRAD", "matmul")
    monkeypatch.setattr(triton_kernels, "_linear_grad_weight_kernel", _Refuse("the dW kernel"))
    by_matmul = _backward(x, weight, b, grad_y, activation, grad_scale)
    assert torch.equal(by_matmul[0], by_kernel[0])  # dX: the same kernel, which also wrote dZ
    with force_cpu_backend("reference"):
        expected = _backward(x, weight, b, grad_y, activation, grad_scale)
    for name, got, kernel, want in zip(("dW", "db"), by_matmul[1:], by_kernel[1:], expected[1:]):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if want.numel() == 0:  # no bias
            continue
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, **TOLERANCES[dtype], msg=name)
            torch.testing.assert_close(got, kernel, **TOLERANCES[dtype], msg=name)
        else:
            assert_within_bfloat16_bound(got, want, grad_y, x, 0.75 if scaled else 1.0)


@pytest.mark.parametrize("index", range(4))
def test_every_tile_of_dx_writing_dz(triton_kernels, monkeypatch, index):
    """Each tile the dX kernel may take while it writes dZ (grad_input_dz) against the reference."""
    x, weight, b, grad_y = _layer(torch.float32, True)
    tiles = triton_kernels.linear_tiles("grad_input_dz", "ieee", (ROWS, WIDTH_OUT, WIDTH_IN))
    assert len(tiles) == 4
    picked = []

    def pick(kind, operands, sizes, device, launch):
        picked.append(kind)
        return tiles[index] if kind == "grad_input_dz" else triton_kernels.linear_tiles(kind, operands, sizes)[0]
    monkeypatch.setattr(triton_kernels, "_pick_tiles", pick)
    monkeypatch.setattr(triton_kernels, "WEIGHT_GRAD", "matmul")
    got = _backward(x, weight, b, grad_y, "tanh")
    assert picked == ["forward", "grad_input_dz"]
    with force_cpu_backend("reference"):
        expected = _backward(x, weight, b, grad_y, "tanh")
    for name, a, want in zip(("dx", "dW", "db"), got, expected):
        torch.testing.assert_close(a, want, **TOLERANCES[torch.float32], msg=name)


def test_the_fused_loss_layer_by_matmul(triton_kernels, monkeypatch):
    """The loss layer's backward scales dZ by d loss / d (loss value): written scaled, dW and db take it."""
    x, weight, b, _ = _layer(torch.float32, True)
    target = torch.rand(ROWS, WIDTH_OUT, generator=torch.Generator().manual_seed(4))

    def gradients():
        leaves = [t.clone().requires_grad_() for t in (x, weight, b)]
        value, _ = torch.ops.aefast.fused_linear_loss(*leaves, target, "sigmoid", "bce")
        return torch.autograd.grad(3.0 * value, leaves)
    by_kernel = gradients()
    monkeypatch.setattr(triton_kernels, "WEIGHT_GRAD", "matmul")
    monkeypatch.setattr(triton_kernels, "_linear_grad_weight_kernel", _Refuse("the dW kernel"))
    for got, want in zip(gradients(), by_kernel, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("why", ["corrupted input", "no dX", "3xTF32"])
def test_the_kernel_stays_where_a_matmul_would_differ(triton_kernels, monkeypatch, why):
    """A corrupted input (x~ is never written), a layer without dX (no dZ is written) and float32 in a
    precision of the kernels' own (cuBLAS follows torch's) keep the fused kernel."""
    x, weight, b, grad_y = _layer(torch.float32, True)
    monkeypatch.setattr(triton_kernels, "WEIGHT_GRAD", "matmul")
    monkeypatch.setattr(torch, "mm", lambda *args: pytest.fail("torch.mm ran"))
    seed = torch.tensor(2)
    corruption = "mask" if why == "corrupted input" else "none"
    y, z = torch.ops.aefast.fused_linear(x, weight, b, "relu", corruption, 0.3, seed)
    if why == "3xTF32":
        from aefast.mlp import fp32_precision
        with fp32_precision("tf32x3"):
            grads = torch.ops.aefast.fused_linear_backward(grad_y, x, weight, b, y, z, "relu", corruption, 0.3,
                                                           seed, None, True)
    else:
        grads = torch.ops.aefast.fused_linear_backward(grad_y, x, weight, b, y, z, "relu", corruption, 0.3, seed,
                                                       None, why != "no dX")
    with force_cpu_backend("reference"):
        expected = torch.ops.aefast.fused_linear_backward(grad_y, x, weight, b, y, z, "relu", corruption, 0.3, seed,
                                                          None, why != "no dX")
    for got, want in zip(grads[1:], expected[1:]):
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])


def test_auto_times_both_ways_once_and_keeps_the_faster(triton_kernels, monkeypatch):
    timed = []

    def fake_time(run):  # run: the problem run one way, functools.partial(run_one_way, method)
        timed.append(run.args[0])
        run()
        return 1.0 if run.args[0] == "matmul" else 2.0
    monkeypatch.setattr(triton_kernels, "_time_launch", fake_time)
    monkeypatch.setattr(triton_kernels, "_tuning_on", lambda device: True)
    monkeypatch.setattr(triton_kernels, "TUNE_MIN_WORK", 0)
    monkeypatch.setattr(triton_kernels, "_tuned", {})
    monkeypatch.setattr(triton_kernels, "_pick_tiles", lambda kind, operands, sizes, device, launch:
                        triton_kernels.linear_tiles(kind, operands, sizes)[0])
    x, weight, b, grad_y = _layer(torch.float32, True)
    first = _backward(x, weight, b, grad_y, "relu")
    assert timed == ["kernel", "matmul"]
    monkeypatch.setattr(triton_kernels, "_linear_grad_weight_kernel", _Refuse("the dW kernel"))
    again = _backward(x, weight, b, grad_y, "relu")  # the choice is remembered: matmul, untimed
    assert timed == ["kernel", "matmul"]
    for a, b_ in zip(first, again):
        assert torch.equal(a, b_)


def test_auto_keeps_the_kernel_off_the_gpu_and_a_bad_setting_is_named(triton_kernels, monkeypatch):
    monkeypatch.setattr(triton_kernels, "_time_launch", lambda run: pytest.fail("timed"))
    monkeypatch.setattr(torch, "mm", lambda *args: pytest.fail("torch.mm ran"))
    x, weight, b, grad_y = _layer(torch.float32, True)
    _backward(x, weight, b, grad_y, "relu")
    monkeypatch.setattr(triton_kernels, "WEIGHT_GRAD", "cublas")
    with pytest.raises(ValueError, match="WEIGHT_GRAD must be one of"):
        _backward(x, weight, b, grad_y, "relu")


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["kernel", "matmul"])
@pytest.mark.parametrize("sizes", [(2**14, 256, 784), (2**14, 784, 256), (2**14, 32, 256)])
def test_both_ways_compiled_on_the_gpu_at_the_autoencoders_sizes(monkeypatch, method, sizes):
    """bfloat16, the autoencoder's layers at batch 2^14 (M, N = out, K = in), against the reference
    within the bound above."""
    from aefast import use_backend
    from aefast.mlp import triton_kernels

    rows, width_out, width_in = sizes
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(rows, width_in, generator=generator).to("cuda", torch.bfloat16)
    weight = (torch.randn(width_out, width_in, generator=generator) / width_in ** 0.5).to("cuda", torch.bfloat16)
    bias = torch.randn(width_out, generator=generator).to("cuda", torch.bfloat16)
    grad_y = torch.randn(rows, width_out, generator=generator).to("cuda", torch.bfloat16)
    monkeypatch.setattr(triton_kernels, "WEIGHT_GRAD", method)
    with use_backend("triton"):
        got = _backward(x, weight, bias, grad_y, "relu")
    with use_backend("reference"):
        want = _backward(x, weight, bias, grad_y, "relu")
    # dX = dZ W: the same bound, with |dZ| <= |dY| (ReLU) and the terms' sizes |dY| |W|.
    assert ((got[0].float() - want[0].float()).abs() <= 2**-7 * (grad_y.float().abs() @ weight.float().abs())).all()
    for g, w in zip(got[1:], want[1:]):
        assert_within_bfloat16_bound(g, w, grad_y, x, 1.0)
