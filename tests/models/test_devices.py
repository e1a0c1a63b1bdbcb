"""Models off the CPU: the analysis tools and samplers make their tensors on the model's device, fit moves
each batch to the model's device, and a resumed run on a GPU restores its generators. The meta device
stands in for a GPU here: a CPU tensor mixed into a computation on it raises as on a GPU (the tools made
CPU tensors there before); the gpu-marked tests run the same on a GPU."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aefast.cli import main
from aefast.models import VAE, Autoencoder, ConditionalVAE, interpolate, pca_check
from aefast.models.analysis import LatentGaussian, binary_codes
from aefast.train import _batch_for_model, fit

META = torch.device("meta")


def on(device, *modules_or_tensors):
    return [item.to(device) for item in modules_or_tensors]


def test_the_tools_work_on_the_models_device():
    model, x = on(META, Autoencoder([12, 6, 3]), torch.rand(20, 12))
    assert interpolate(model, x[0], x[1], steps=5).device == META
    assert LatentGaussian(model, x).sample(4, generator=torch.Generator().manual_seed(0)).device == META
    assert binary_codes(model, x)[0].device == META
    assert VAE([12, 8, 2]).to(META).sample(3).device == META
    assert ConditionalVAE([12, 8, 2], num_classes=3).to(META).sample(3).device == META


@pytest.mark.parametrize("batch", ["tensor", "list of one", "x and labels"])
def test_a_batch_goes_to_the_models_device(batch):
    x, labels = torch.rand(5, 3), torch.arange(5)
    given = {"tensor": x, "list of one": [x], "x and labels": [x, labels]}[batch]
    moved = _batch_for_model(given, META)
    parts = moved if isinstance(moved, tuple) else (moved,)
    assert all(part.device == META for part in parts) and len(parts) == (2 if batch == "x and labels" else 1)


class DropoutAutoencoder(nn.Module):
    """Draws from the GPU's generator in every step (dropout), which a resumed run must restore."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 12))

    def loss(self, x):
        return F.mse_loss(self.net(x), x)


@pytest.mark.gpu
def test_a_gpu_model_trains_on_cpu_data_and_resumes_exactly(tmp_path):
    data = torch.rand(200, 12, generator=torch.Generator().manual_seed(0))  # stays on the CPU
    whole = DropoutAutoencoder().cuda()
    expected = fit(whole, data, epochs=4, batch_size=32, seed=3, progress=False)
    first = DropoutAutoencoder().cuda()
    fit(first, data, epochs=2, batch_size=32, seed=3, checkpoint_dir=tmp_path, progress=False)
    torch.cuda.manual_seed_all(12345)  # a new process's generators: the checkpoint must restore them
    resumed = DropoutAutoencoder().cuda()
    assert fit(resumed, data, epochs=4, batch_size=32, seed=3, checkpoint_dir=tmp_path, progress=False) == expected
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), whole.parameters()))


@pytest.mark.gpu
def test_pca_check_on_the_gpu_matches_the_cpu():
    torch.manual_seed(0)
    model = Autoencoder([10, 3], activation=None)
    x = torch.rand(300, 10, dtype=torch.float64)
    model = model.double()
    on_cpu = pca_check(model, x)
    on_gpu = pca_check(model.cuda(), x.cuda())
    torch.testing.assert_close(on_gpu.principal_angles.cpu(), on_cpu.principal_angles, atol=1e-5, rtol=0)
    assert on_gpu.pca_error == pytest.approx(on_cpu.pca_error, rel=1e-9)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["vae", "cvae"])
def test_cli_trains_on_the_gpu(tmp_path, capsys, model):
    assert main(["train", "--model", model, "--data", "digits", "--epochs", "1", "--out", str(tmp_path),
                 "--device", "cuda"]) == 0
    assert (tmp_path / "samples.png").exists() and (tmp_path / "latent.png").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["device"] == f"cuda:{torch.cuda.current_device()}"
