"""Bad input to the fused layers raises ValueError/TypeError naming the argument."""
import pytest
import torch

from aefast.nn import FusedAutoencoder, FusedLinear, FusedMLP


@pytest.mark.parametrize("make,error,match", [
    (lambda: FusedLinear(0, 3), ValueError, "in_features must be a positive int"),
    (lambda: FusedLinear(3, -1), ValueError, "out_features must be a positive int"),
    (lambda: FusedLinear(3, 2.5), ValueError, "out_features must be a positive int"),
    (lambda: FusedLinear(3, 4, activation="swish"), ValueError, "activation must be one of"),
    (lambda: FusedMLP([5]), ValueError, "dims must list at least 2 widths"),
    (lambda: FusedMLP([5, 0, 3]), ValueError, "must be a positive int"),
    (lambda: FusedMLP([5, 3], output_activation="softmax"), ValueError, "output_activation must be one of"),
    (lambda: FusedAutoencoder([7]), ValueError, "encoder_dims must list at least 2 widths"),
    (lambda: FusedAutoencoder([7, 3], decoder_dims=[4, 7]), ValueError, "decoder_dims must run from the code width 3"),
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


@pytest.mark.parametrize("kwargs,match", [
    ({"loss": "l1"}, "loss must be one of"),
    ({"loss": "bce"}, "loss='bce' needs output_activation='sigmoid'"),
    ({"corruption": ("mask", 1.0)}, r"needs v in \[0, 1\)"),
    ({"corruption": ("mask", -0.1)}, r"needs v in \[0, 1\)"),
    ({"corruption": ("gaussian", -1.0)}, "needs sigma >= 0"),
    ({"corruption": ("salt", 0.1)}, "corruption must be None"),
    ({"corruption": "mask"}, "corruption must be None"),
    ({"l1_code": -1.0}, "l1_code must be a number >= 0"),
    ({"seed": -3}, "seed must be a non-negative int"),
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


def test_direct_op_calls_check_shapes():
    with pytest.raises(ValueError, match="must agree"):
        torch.ops.aefast.fused_linear(torch.zeros(2, 3), torch.zeros(4, 5), None, "none", "none", 0.0,
                                      torch.tensor(0))
    with pytest.raises(ValueError, match="bias must be contiguous"):
        torch.ops.aefast.fused_linear(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(4, dtype=torch.float64),
                                      "none", "none", 0.0, torch.tensor(0))
