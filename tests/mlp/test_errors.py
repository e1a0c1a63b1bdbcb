"""Bad input to the fused layers, and to their ops called directly, raises ValueError/TypeError
naming the argument, before any kernel launches."""
import math

import pytest
import torch

from aefast.nn import FusedAutoencoder, FusedLinear, FusedMLP


@pytest.mark.parametrize("make,error,match", [
    (lambda: FusedLinear(0, 3), ValueError, "in_features must be a positive int"),
    (lambda: FusedLinear(3, -1), ValueError, "out_features must be a positive int"),
    (lambda: FusedLinear(3, 2.5), ValueError, "out_features must be a positive int"),
    (lambda: FusedLinear(3, 4, activation="swish"), ValueError, "activation must be one of"),
    (lambda: FusedMLP([5]), ValueError, "dims must list at least 2 widths"),
    (lambda: FusedMLP(5), ValueError, "dims must be a list of widths, got int 5"),
    (lambda: FusedMLP("784"), ValueError, "dims must be a list of widths, got str"),
    (lambda: FusedMLP(torch.tensor([[5, 3]])), ValueError, "dims must be a list of widths, got Tensor"),
    (lambda: FusedMLP(torch.tensor([5.0, 3.0])), ValueError, r"^dims\[0\] must be a positive int, got 5.0"),
    (lambda: FusedMLP([5, 0, 3]), ValueError, r"^dims\[1\] must be a positive int, got 0"),
    (lambda: FusedMLP((5, 3, -2)), ValueError, r"^dims\[2\] must be a positive int, got -2"),
    (lambda: FusedMLP([5, 3.0]), ValueError, r"^dims\[1\] must be a positive int, got 3.0"),
    (lambda: FusedMLP([5, 3], output_activation="softmax"), ValueError, "output_activation must be one of"),
    (lambda: FusedAutoencoder([7]), ValueError, "encoder_dims must list at least 2 widths"),
    (lambda: FusedAutoencoder(None), ValueError, "encoder_dims must be a list of widths, got NoneType"),
    (lambda: FusedAutoencoder([7, 0]), ValueError, r"^encoder_dims\[1\] must be a positive int"),
    (lambda: FusedAutoencoder([7, 3], decoder_dims=[3, 0, 7]), ValueError, r"^decoder_dims\[1\] must be a positive int"),
    (lambda: FusedAutoencoder([7, 3], decoder_dims=[4, 7]), ValueError, "decoder_dims must run from the code width 3"),
    (lambda: FusedAutoencoder([7, 3], decoder_dims=[3, 5, 6]), ValueError,
     r"decoder_dims must run from the code width 3 to the input width 7, got \[3, 5, 6\]"),
    (lambda: FusedAutoencoder([7, 3], activation="swish"), ValueError, "^activation must be one of"),
    (lambda: FusedAutoencoder([7, 3], code_activation="swish"), ValueError, "^code_activation must be one of"),
    (lambda: FusedAutoencoder([7, 3], output_activation="swish"), ValueError, "^output_activation must be one of"),
])
def test_bad_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_inputs():
    layer = FusedLinear(6, 4)
    with pytest.raises(ValueError, match="x must have 6 features"):
        layer(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the layer's parameters are torch.float32"):
        layer(torch.zeros(3, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="x is on meta but the layer's parameters are on cpu"):
        layer(torch.zeros(3, 6, device="meta"))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        layer([[0.0] * 6])


def test_a_layer_cast_or_moved_on_its_own_is_named(mlp_backend):
    mlp = FusedMLP([5, 7, 3])  # a narrow stretch: its parameters are concatenated
    mlp.layers[1].double()
    with pytest.raises(TypeError, match=r"^layers\[1\] is torch.float64 on cpu but the input is torch.float32"):
        mlp(torch.randn(2, 5))
    model = FusedAutoencoder([6, 4, 3])
    model.decoder.layers[1].bias.data = model.decoder.layers[1].bias.data.double()
    with pytest.raises(TypeError, match=r"^decoder.layers\[1\] is torch.float64"):
        model.loss(torch.rand(2, 6))
    with pytest.raises(TypeError, match=r"^layers\[1\] is torch.float64"):  # the decoder's own forward
        model(torch.rand(2, 6))


@pytest.mark.parametrize("kwargs,match", [
    ({"loss": "l1"}, "loss must be one of"),
    ({"loss": "bce"}, "loss='bce' needs output_activation='sigmoid'"),
    ({"corruption": ("mask", 1.0)}, r"needs v in \[0, 1\)"),
    ({"corruption": ("mask", -0.1)}, r"needs v in \[0, 1\)"),
    ({"corruption": ("mask", math.nan)}, r"needs v in \[0, 1\)"),
    ({"corruption": ("gaussian", -1.0)}, "needs a finite sigma >= 0"),
    ({"corruption": ("gaussian", math.inf)}, "needs a finite sigma >= 0"),
    ({"corruption": ("gaussian", True)}, "needs a finite sigma >= 0"),
    ({"corruption": ("salt", 0.1)}, "corruption must be None"),
    ({"corruption": "mask"}, "corruption must be None"),
    ({"corruption": ("mask", 0.1, 0.2)}, "corruption must be None"),
    ({"l1_code": -1.0}, "l1_code must be a finite number >= 0"),
    ({"l1_code": math.nan}, "l1_code must be a finite number >= 0"),
    ({"seed": -1}, r"seed must be an int in \[0, 2\*\*63\)"),
    ({"seed": 2**63}, r"seed must be an int in \[0, 2\*\*63\)"),
    ({"seed": 1.5}, r"seed must be an int in \[0, 2\*\*63\)"),
])
def test_bad_loss_arguments(kwargs, match):
    model = FusedAutoencoder([6, 3])
    with pytest.raises(ValueError, match=match):
        model.loss(torch.rand(2, 6), **kwargs)


def test_from_sequential_refuses_what_it_cannot_fuse():
    with pytest.raises(ValueError, match=r"sequential\[1\] \(Dropout\) is not an activation after a Linear"):
        FusedMLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout()))
    with pytest.raises(ValueError, match="LeakyReLU slope"):
        FusedMLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LeakyReLU(0.2)))
    with pytest.raises(ValueError, match="consecutive Linear layers must chain"):
        FusedMLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(5, 2)))
    with pytest.raises(TypeError, match=r"sequential\[2\] is torch.float64 on cpu but the first Linear is torch.float32"):
        FusedMLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2).double()))
    with pytest.raises(TypeError, match="sequential must be an nn.Sequential, got Linear"):
        FusedMLP.from_sequential(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"sequential\[1\]: only the exact GELU \(approximate='none'\) is fused"):
        FusedMLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU(approximate="tanh")))
    with pytest.raises(ValueError, match=r"sequential\[2\] \(ReLU\) is not an activation after a Linear"):
        FusedMLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.ReLU()))
    with pytest.raises(ValueError, match=r"sequential\[0\] \(Tanh\) is not an activation after a Linear"):
        FusedMLP.from_sequential(torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="sequential must hold at least one nn.Linear"):
        FusedMLP.from_sequential(torch.nn.Sequential())
    with pytest.raises(ValueError, match="every Linear of sequential must have a bias, or none"):
        FusedMLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2, bias=False)))
    with pytest.raises(TypeError, match="decoder must be an nn.Sequential, got FusedMLP"):
        FusedAutoencoder.from_sequential(torch.nn.Sequential(torch.nn.Linear(6, 2)), FusedMLP([2, 6]))
    with pytest.raises(ValueError, match=r"decoder\[1\] \(Dropout\) is not an activation"):
        FusedAutoencoder.from_sequential(torch.nn.Sequential(torch.nn.Linear(6, 2)),
                                         torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Dropout()))
    with pytest.raises(ValueError, match="decoder must run from the encoder's code width 2 to its input width 6, got 3 -> 6"):
        FusedAutoencoder.from_sequential(torch.nn.Sequential(torch.nn.Linear(6, 2)), torch.nn.Sequential(torch.nn.Linear(3, 6)))
    with pytest.raises(ValueError, match="decoder must run .* got 2 -> 5"):
        FusedAutoencoder.from_sequential(torch.nn.Sequential(torch.nn.Linear(6, 2)), torch.nn.Sequential(torch.nn.Linear(2, 5)))
    with pytest.raises(TypeError, match="decoder is torch.float64 on cpu but encoder is torch.float32"):
        FusedAutoencoder.from_sequential(torch.nn.Sequential(torch.nn.Linear(6, 2)),
                                         torch.nn.Sequential(torch.nn.Linear(2, 6)).double())
    with pytest.raises(ValueError, match=r"sequential\[1\] \(Tanh\) is not an activation after a Linear"):
        FusedMLP.from_sequential(torch.nn.Sequential(FusedLinear(3, 4, activation="relu"), torch.nn.Tanh()))

    class ScaledLinear(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)
    with pytest.raises(ValueError, match=r"sequential\[0\] \(ScaledLinear\) is an nn.Linear with a forward of its own"):
        FusedMLP.from_sequential(torch.nn.Sequential(ScaledLinear(3, 4)))
    normalized = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"sequential\[0\] has parametrized tensors .*remove_parametrizations"):
        FusedMLP.from_sequential(torch.nn.Sequential(normalized))
    nested = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Sequential(torch.nn.Identity(), torch.nn.Dropout()))
    with pytest.raises(ValueError, match=r"sequential\[1\]\[1\] \(Dropout\) is not an activation after a Linear"):
        FusedMLP.from_sequential(nested)


ROWS, WIDTH_IN, WIDTH_OUT, NARROW_DIMS = 5, 3, 4, [3, 6, 4]


def valid_op_calls() -> dict:
    """{op: keyword arguments} of direct calls that run; each bad case below changes some of them."""
    torch.manual_seed(0)
    x, grad_y = torch.randn(ROWS, WIDTH_IN), torch.randn(ROWS, WIDTH_OUT)
    weight, bias, seed = torch.randn(WIDTH_OUT, WIDTH_IN), torch.randn(WIDTH_OUT), torch.tensor(3)
    weights, biases = torch.randn(3 * 6 + 6 * 4), torch.randn(6 + 4)
    return {
        "fused_linear": dict(x=x, weight=weight, bias=bias, activation="tanh", corruption="mask",
                             corruption_param=0.25, seed=seed),
        "fused_linear_backward": dict(grad_y=grad_y, x=x, weight=weight, bias=bias, y=torch.tanh(grad_y),
                                      saved_z=x.new_empty(0), activation="tanh", corruption="mask",
                                      corruption_param=0.25, seed=seed, grad_scale=torch.tensor(0.5),
                                      need_input_grad=True),
        "fused_linear_loss": dict(h=x, weight=weight, bias=bias, target=torch.rand(ROWS, WIDTH_OUT),
                                  output_activation="sigmoid", loss="bce"),
        "fused_narrow_mlp": dict(x=x, weights=weights, biases=biases, dims=NARROW_DIMS, activation="relu",
                                 last_activation="sigmoid", save=True),
        "fused_narrow_mlp_backward": dict(grad_out=grad_y, x=x, out=torch.rand(ROWS, 4), saved=torch.rand(ROWS * 6),
                                          weights=weights, biases=biases, dims=NARROW_DIMS, activation="relu",
                                          last_activation="sigmoid", need_input_grad=True),
        "fused_narrow_mlp_loss": dict(x=x, weights=weights, biases=biases, target=torch.rand(ROWS, 4), dims=NARROW_DIMS,
                                      activation="relu", last_activation="sigmoid", loss="bce"),
        "fused_narrow_mlp_loss_backward": dict(grad_loss=torch.tensor(0.5), x=x, weights=weights, biases=biases,
                                               target=torch.rand(ROWS, 4), dims=NARROW_DIMS, activation="relu",
                                               last_activation="sigmoid", loss="bce", need_input_grad=True),
        "corrupt": dict(x=x, corruption="mask", corruption_param=0.25, seed=seed),
    }


def as_dtype(call: dict, dtype: torch.dtype, *names: str) -> dict:
    return {name: call[name].to(dtype) for name in names}


def as_float64(call: dict, *names: str) -> dict:
    return as_dtype(call, torch.float64, *names)


# (op, the arguments changed: a dict, or a function of the valid call's arguments, error, message)
BAD_OP_CALLS = [
    ("fused_linear", lambda c: as_dtype(c, torch.int32, "x", "weight", "bias"), TypeError,
     "x must be float32, bfloat16, float16 or float64, got torch.int32"),
    ("fused_linear", {"x": torch.randn(ROWS, WIDTH_IN + 1)}, ValueError, r"x \(rows, in\) and weight \(out, in\) must agree"),
    ("fused_linear", {"weight": torch.randn(WIDTH_IN, WIDTH_OUT).t()}, ValueError, "weight must be contiguous"),
    ("fused_linear", {"bias": torch.randn(WIDTH_OUT + 1)}, ValueError, r"bias must have shape \(4,\)"),
    ("fused_linear", {"bias": torch.randn(1, WIDTH_OUT)}, ValueError, r"bias must have shape \(4,\), got \(1, 4\)"),
    ("fused_linear", lambda c: as_float64(c, "weight"), ValueError,
     "weight must be contiguous, torch.float32 on cpu, got torch.float64"),
    ("fused_linear", {"activation": "swish"}, ValueError, "activation must be one of"),
    ("fused_linear", {"corruption": "salt"}, ValueError, "corruption must be one of"),
    ("fused_linear", {"corruption_param": 1.0}, ValueError, r"corruption_param of 'mask' \(the drop rate\) must be in"),
    ("fused_linear", {"corruption": "gaussian", "corruption_param": -0.5}, ValueError, "corruption_param of 'gaussian'"),
    ("fused_linear", {"corruption": "gaussian", "corruption_param": math.inf}, ValueError, "corruption_param of 'gaussian'"),
    ("fused_linear", {"seed": torch.tensor([1, 2])}, ValueError, "seed must be a 0-d int64 tensor"),
    ("fused_linear", {"seed": torch.tensor(1.0)}, ValueError, "seed must be a 0-d int64 tensor"),
    ("fused_linear", {"seed": torch.tensor(-1)}, ValueError, "seed must be a 0-d int64 tensor >= 0, got .* -1"),
    ("fused_linear_backward", {"grad_y": torch.randn(ROWS, WIDTH_OUT + 1)}, ValueError, r"grad_y must be contiguous \(5, 4\)"),
    ("fused_linear_backward", lambda c: as_float64(c, "grad_y"), ValueError, "grad_y must be contiguous"),
    ("fused_linear_backward", {"grad_y": torch.randn(WIDTH_OUT, ROWS).t()}, ValueError, r"grad_y .*\(not contiguous\)"),
    ("fused_linear_backward", {"y": torch.empty(0)}, ValueError, r"^y must be contiguous \(5, 4\)"),
    ("fused_linear_backward", {"activation": "gelu"}, ValueError, r"^saved_z must be contiguous \(5, 4\)"),
    ("fused_linear_backward", {"grad_scale": torch.tensor([0.5])}, ValueError, "grad_scale must be a 0-d torch.float32 tensor"),
    ("fused_linear_backward", {"grad_scale": torch.tensor(0.5, dtype=torch.float64)}, ValueError,
     "grad_scale must be a 0-d torch.float32 tensor"),
    ("fused_linear_backward", {"corruption_param": -0.1}, ValueError, "corruption_param of 'mask'"),
    ("fused_linear_backward", {"seed": torch.tensor([3])}, ValueError, "seed must be a 0-d int64 tensor"),
    ("fused_linear_loss", {"h": torch.randn(ROWS, WIDTH_IN + 1)}, ValueError, r"h \(rows, in\) and weight"),
    ("fused_linear_loss", lambda c: as_float64(c, "target"), ValueError, r"target must be contiguous \(5, 4\) torch.float32"),
    ("fused_linear_loss", {"target": torch.rand(ROWS, WIDTH_OUT + 1)}, ValueError, "target must be contiguous"),
    ("fused_linear_loss", {"loss": "l1"}, ValueError, "loss must be one of"),
    ("fused_linear_loss", {"output_activation": "none"}, ValueError, "output_activation must be 'sigmoid'"),
    ("fused_linear_loss", {"output_activation": "swish", "loss": "mse"}, ValueError, "output_activation must be one of"),
    ("fused_narrow_mlp", {"dims": [3, 200, 4]}, ValueError, r"dims must list at least 2 widths in \[1, 128\]"),
    ("fused_narrow_mlp", {"x": torch.randn(ROWS, 4)}, ValueError, r"x must be contiguous \(rows, 3\), got \(5, 4\)"),
    ("fused_narrow_mlp", {"x": torch.randn(3, ROWS).t()}, ValueError, r"x must be contiguous \(rows, 3\), got \(5, 3\)"),
    ("fused_narrow_mlp", {"activation": "gelu"}, ValueError, "^activation must be one of"),
    ("fused_narrow_mlp", {"last_activation": "gelu"}, ValueError, "^last_activation must be one of"),
    ("fused_narrow_mlp", lambda c: {"weights": c["weights"][:-1]}, ValueError, r"weights must be contiguous \(42,\)"),
    ("fused_narrow_mlp", {"weights": torch.randn(84)[::2]}, ValueError, r"weights .*\(not contiguous\)"),
    ("fused_narrow_mlp", lambda c: as_float64(c, "biases"), ValueError, r"biases must be contiguous \(10,\)"),
    ("fused_narrow_mlp", lambda c: as_dtype(c, torch.complex64, "x", "weights", "biases"), TypeError,
     "x must be float32, bfloat16, float16 or float64, got torch.complex64"),
    ("fused_narrow_mlp_backward", {"grad_out": torch.randn(ROWS, 5)}, ValueError, r"grad_out must be \(5, 4\)"),
    ("fused_narrow_mlp_backward", {"out": torch.rand(ROWS, 5)}, ValueError, r"^out must be contiguous \(5, 4\)"),
    ("fused_narrow_mlp_backward", lambda c: as_float64(c, "saved"), ValueError, r"saved must be contiguous \(30,\)"),
    ("fused_narrow_mlp_backward", {"saved": torch.rand(ROWS * 5)}, ValueError, "saved must hold the activations"),
    ("fused_narrow_mlp_backward", {"activation": "gelu"}, ValueError, "^activation must be one of"),
    ("corrupt", {"x": torch.randn(ROWS)}, ValueError, r"x must be 2-D \(rows, features\), got shape \(5,\)"),
    ("corrupt", lambda c: as_dtype(c, torch.int64, "x"), TypeError, "x must be float32, bfloat16, float16 or float64"),
    ("corrupt", {"corruption": "salt"}, ValueError, "corruption must be one of"),
    ("corrupt", {"corruption_param": -0.25}, ValueError, r"corruption_param of 'mask' \(the drop rate\) must be in"),
    ("corrupt", {"seed": torch.tensor(-1)}, ValueError, "seed must be a 0-d int64 tensor >= 0"),
]


def test_valid_direct_op_calls_run(mlp_backend):
    """The base of the bad cases is itself valid, so each bad case fails by the one change it makes."""
    for op, call in valid_op_calls().items():
        getattr(torch.ops.aefast, op)(**call)


@pytest.mark.parametrize("op,change,error,match", BAD_OP_CALLS,
                         ids=[f"{op}-{index}" for index, (op, *_) in enumerate(BAD_OP_CALLS)])
def test_direct_op_calls_check_every_argument(mlp_backend, op, change, error, match):
    call = valid_op_calls()[op]
    call.update(change(call) if callable(change) else change)
    with pytest.raises(error, match=match):
        getattr(torch.ops.aefast, op)(**call)


@pytest.mark.parametrize("op", list(valid_op_calls()))
def test_a_meta_tensor_among_cpu_ones_is_refused(op):
    """With any argument on the meta device the dispatcher runs the op's fake implementation for the
    whole call, which alone would answer with uninitialized CPU tensors: it refuses mixed devices as the
    op does. All on meta, the call gives the outputs' shapes (the seed, read on the host, may stay on
    the CPU)."""
    call = valid_op_calls()[op]
    tensors = [name for name, value in call.items() if isinstance(value, torch.Tensor)]
    for name in tensors:
        if tensors == [name, "seed"]:
            continue  # the one data tensor on meta, the seed on the CPU: a valid call
        with pytest.raises(ValueError, match=rf"^({name} is on meta but \w+ is on cpu|\w+ is on cpu but {name} is on meta)$"):
            getattr(torch.ops.aefast, op)(**{**call, name: call[name].to("meta")})
    on_meta = {name: value.to("meta") if isinstance(value, torch.Tensor) and name != "seed" else value
               for name, value in call.items()}
    outputs = [getattr(torch.ops.aefast, op)(**arguments) for arguments in (on_meta, call)]
    got, expected = [list(output) if isinstance(output, tuple) else [output] for output in outputs]
    for got, want in zip(got, expected, strict=True):
        assert got.device.type == "meta" and got.shape == want.shape and got.dtype == want.dtype


@pytest.mark.parametrize("dims", [[], [3], [3, 200, 4], [3, 0, 4]])
def test_the_narrow_ops_fake_checks_dims_as_the_op_does(dims):
    """On meta tensors (and under torch.compile's tracing) the op runs its fake implementation, which
    once shaped its outputs without checking dims: an IndexError for dims=[], and outputs for widths
    the op refuses."""
    x, weights = torch.empty(ROWS, 3, device="meta"), torch.empty(42, device="meta")
    with pytest.raises(ValueError, match=r"dims must list at least 2 widths in \[1, 128\]"):
        torch.ops.aefast.fused_narrow_mlp(x, weights, None, dims, "relu", "none", True)
    out, saved = torch.ops.aefast.fused_narrow_mlp(x, weights, None, [3, 6, 4], "relu", "none", True)
    assert out.shape == (ROWS, 4) and saved.shape == (ROWS * 6,) and out.device.type == "meta"
