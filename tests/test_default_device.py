"""What aefast makes itself (seeds, noise, generated data, labels, sampling draws) is made on the CPU,
in its own dtype, whatever torch's default device and dtype: a GPU user's
``torch.set_default_device("cuda")`` must not send a seed to the GPU (the ops take a CPU seed) or
clash with a CPU generator. The meta device stands in for that default here, since any value read
back from it fails (on a GPU machine, cuda too): every call must give what it gives without it."""
import pytest
import torch

import aefast
from aefast.data import synthetic_manifold
from aefast.models import VAE, ConditionalVAE, DenoisingAutoencoder, LatentGaussian
from aefast.nn import FusedAutoencoder
from aefast.train import fit
from aefast import WillshawMemory
from aefast.willshaw import experiments

DEFAULTS = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


def seeded(call, seed=0):
    def run():
        torch.manual_seed(seed)
        return call()
    return run


def willshaw_round_trip(folder):
    """A memory's answers after save and load."""
    generator = torch.Generator().manual_seed(0)
    x, y = ((torch.rand(30, 200, generator=generator, device="cpu", dtype=torch.float32) < 0.03).to(torch.uint8)
            for _ in range(2))
    memory = WillshawMemory(200)
    memory.store(x, y)
    folder.mkdir(parents=True, exist_ok=True)
    memory.save(folder / "memory.safetensors")
    return WillshawMemory.load(folder / "memory.safetensors").retrieve(x)


def cases(tmp_path):
    torch.manual_seed(3)
    autoencoder = FusedAutoencoder([20, 8, 3], output_activation="sigmoid")
    vae, conditional = VAE([20, 8, 2]), ConditionalVAE([20, 8, 2], num_classes=3)
    denoising = DenoisingAutoencoder([20, 8, 3])
    trained, trained_unseeded = FusedAutoencoder([20, 4]), FusedAutoencoder([20, 4])  # made here, on the CPU
    x = torch.rand(6, 20)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    # The models are made here: made under a default device, their parameters would be on it.
    return {
        "autoencoder loss, mask, seed from torch": seeded(lambda: autoencoder.loss(x, corruption=("mask", 0.3))),
        "autoencoder loss, gaussian, seed given": lambda: autoencoder.loss(x, loss="bce", corruption=("gaussian", 0.2),
                                                                           seed=7),
        "denoising autoencoder loss": seeded(lambda: denoising.loss(x)),
        "VAE loss": seeded(lambda: vae.loss(x)),
        "VAE sample": lambda: vae.sample(4, generator=torch.Generator().manual_seed(1)),
        "ConditionalVAE sample, labels as a list": lambda: conditional.sample(
            3, labels=[0, 2, 1], generator=torch.Generator().manual_seed(1)),
        "LatentGaussian sample": lambda: LatentGaussian(vae, x).sample(3, generator=torch.Generator().manual_seed(2)),
        "reparameterize_kl, seed from torch": seeded(lambda: aefast.reparameterize_kl(mu, logvar)),
        "reparameterize_kl, seed given": lambda: aefast.reparameterize_kl(mu, logvar, seed=11),
        "synthetic_manifold": lambda: synthetic_manifold(50, dim=12, seed=4),
        "fit": lambda: fit(trained, x, epochs=2, seed=5, val_data=x, progress=False),
        "fit without a seed": seeded(lambda: fit(trained_unseeded, x, epochs=1, progress=False)),
        "Willshaw memory saved and loaded": lambda: willshaw_round_trip(tmp_path / "saved"),
        "Willshaw noise experiment": lambda: experiments.noise(
            64, 3, pairs=20, queries=8, out=tmp_path / "noise", progress=False),
    }


def same(a, b):
    if isinstance(a, torch.Tensor):
        return a.device == b.device and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(u, v) for u, v in zip(a, b))
    return a == b


CASES = list(cases(None))


@pytest.mark.parametrize("default", DEFAULTS)
@pytest.mark.parametrize("case", CASES)
def test_aefast_makes_its_own_tensors_on_the_cpu_whatever_the_default_device(default, case, tmp_path):
    expected = cases(tmp_path / "plain")[case]()
    call = cases(tmp_path / default)[case]
    with torch.device(default):
        got = call()
    assert same(got, expected)


@pytest.mark.parametrize("case", CASES)
def test_results_do_not_follow_the_default_dtype(case, tmp_path):
    """torch.set_default_dtype(torch.float64) changes no result of a call on float32 models and data."""
    expected = cases(tmp_path / "plain")[case]()
    call = cases(tmp_path / "float64")[case]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = call()
    finally:
        torch.set_default_dtype(previous)
    assert same(got, expected)
