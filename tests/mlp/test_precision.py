"""The float32 matmul setting of the MLP kernels (aefast.mlp.precision): what each value resolves to,
that it reaches every kernel launch, and that bad values are refused by name. Its numerics are the
GPU's (the interpreter multiplies in float32 whatever the setting): tests/mlp/test_gpu.py."""
import pytest
import torch

from aefast.mlp import FP32_PRECISIONS, fp32_precision, get_fp32_precision, set_fp32_precision
from aefast.mlp.precision import dot_precision
from aefast.nn import FusedAutoencoder, FusedMLP


@pytest.fixture
def tf32_switch():
    """Restores torch's TF32 switch after a test that flips it."""
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def test_the_default_follows_torchs_tf32_switch(tf32_switch):
    assert get_fp32_precision() == "torch"
    torch.backends.cuda.matmul.allow_tf32 = False
    assert dot_precision(torch.float32) == "ieee"
    torch.backends.cuda.matmul.allow_tf32 = True
    assert dot_precision(torch.float32) == "tf32"


@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_a_set_precision_applies_to_float32_only_and_is_restored(tf32_switch, precision):
    torch.backends.cuda.matmul.allow_tf32 = precision != "tf32"  # the setting, not torch's switch, decides
    with fp32_precision(precision):
        assert get_fp32_precision() == precision
        assert dot_precision(torch.float32) == precision
        assert dot_precision(torch.bfloat16) == dot_precision(torch.float16) == "tf32"
    assert get_fp32_precision() == "torch"
    with pytest.raises(RuntimeError, match="inside"):
        with fp32_precision(precision):
            raise RuntimeError("inside")
    assert get_fp32_precision() == "torch"


@pytest.mark.parametrize("bad", ["highest", "TF32", "", None, 3])
def test_bad_precisions_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"precision must be one of .*tf32x3"):
        set_fp32_precision(bad)
    with pytest.raises(ValueError, match="precision"):
        with fp32_precision(bad):
            pass
    assert get_fp32_precision() == "torch"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("precision", FP32_PRECISIONS)
def test_every_kernel_launch_gets_the_setting(mlp_backend, monkeypatch, dtype, precision):
    """A training step of a model with wide layers and a narrow stretch: each launch's PRECISION."""
    if mlp_backend != "triton":
        pytest.skip("the reference runs torch's matmul")
    from aefast.mlp import triton_kernels

    seen = []
    resolve = triton_kernels._precision
    monkeypatch.setattr(triton_kernels, "_precision", lambda d: seen.append(resolve(d)) or seen[-1])
    torch.manual_seed(0)
    model = FusedAutoencoder([150, 40, 9], output_activation="sigmoid").to(dtype)
    narrow = FusedMLP([9, 20, 9], activation="tanh").to(dtype)
    x = torch.rand(33, 150, dtype=dtype)
    with fp32_precision(precision):
        expected = dot_precision(dtype)
        loss = model.loss(x, corruption=("mask", 0.1), seed=1) + narrow(model.encode(x)).square().mean()
        torch.autograd.grad(loss, list(model.parameters()) + list(narrow.parameters()))
    assert len(seen) >= 8 and set(seen) == {expected}
