"""Bad arguments to the models and to layer-wise pretraining raise ValueError naming the argument."""
import math
import re

import pytest
import torch

from aefast.models import (VAE, Autoencoder, ConditionalVAE, ConvAutoencoder, DenoisingAutoencoder, SparseAutoencoder,
                           LatentGaussian, binary_codes, interpolate, pca_check, pretrain_layerwise)


@pytest.mark.parametrize("make,match", [
    (lambda: Autoencoder(None), "dims must be a list of widths, got NoneType"),
    (lambda: Autoencoder([8, 4, 0]), r"^dims\[2\] must be a positive int, got 0"),
    (lambda: SparseAutoencoder([8, 3], l1=math.nan), "l1 must be a finite number >= 0"),
    (lambda: SparseAutoencoder([8, 3], rho=0.1, beta=-1.0), "beta must be a finite number >= 0"),
    (lambda: SparseAutoencoder([8, 3], rho=math.nan), r"rho must be in \(0, 1\)"),
    (lambda: SparseAutoencoder([8, 3], rho=0.0), r"rho must be in \(0, 1\), got 0.0"),
    (lambda: SparseAutoencoder([8, 3], rho=1), r"rho must be in \(0, 1\), got 1"),
    (lambda: SparseAutoencoder([8, 3], k=2.5), r"k must be an int in \[1, code width 3\]"),
    (lambda: SparseAutoencoder([8, 3], k=4), r"k must be an int in \[1, code width 3\], got 4"),
    (lambda: SparseAutoencoder([8, 3], k=0), r"k must be an int in \[1, code width 3\], got 0"),
    (lambda: VAE([8, 3], beta=math.nan), "beta must be a finite number >= 0"),
    (lambda: VAE([8, 3], free_bits=math.inf), "free_bits must be a finite number >= 0"),
    (lambda: ConditionalVAE([8, 3], num_classes=True), "num_classes must be an int >= 2"),
    (lambda: ConditionalVAE([8, 3], num_classes=1), "num_classes must be an int >= 2, got 1"),
    (lambda: SparseAutoencoder([8, 3]), "a SparseAutoencoder needs l1 > 0, rho or k"),
    (lambda: DenoisingAutoencoder([8, 3], noise=("mask", 1.5)), r"^noise \('mask', v\) needs v in \[0, 1\), got 1.5"),
    (lambda: DenoisingAutoencoder([8, 3], noise=("gaussian", -1.0)), r"^noise \('gaussian', sigma\) needs a finite sigma"),
    (lambda: DenoisingAutoencoder([8, 3], noise="mask"), r"^noise must be None, \('mask', v\) or \('gaussian', sigma\), got 'mask'"),
])
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 27, 27), (2, 783), (784,)])
def test_the_conv_autoencoder_takes_28_by_28_images_only(shape):
    with pytest.raises(ValueError, match=rf"x must be \(B, 784\) or \(B, 1, 28, 28\), got {re.escape(str(shape))}"):
        ConvAutoencoder().encode(torch.rand(shape))


@pytest.mark.parametrize("n", [-1, 2.5, None])
def test_sample_counts(n):
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        VAE([8, 4, 2]).sample(n)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        ConditionalVAE([8, 4, 2], num_classes=3).sample(n)


def test_conditional_vae_labels_match_the_rows():
    model = ConditionalVAE([8, 4, 2], num_classes=3)
    x = torch.rand(4, 8)
    with pytest.raises(ValueError, match=r"labels must be 1-D with one label per row \(4\), got shape \(3,\)"):
        model.loss((x, torch.tensor([0, 1, 2])))
    with pytest.raises(ValueError, match=r"labels must be 1-D with one label per row \(4\), got shape \(4, 1\)"):
        model(x, torch.zeros(4, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels must be 1-D with one label per row \(2\), got shape \(3,\)"):
        model.sample(2, labels=torch.tensor([0, 1, 2]))
    assert model.sample(0).shape == (0, 8)


def test_pretrain_layerwise_names_its_epochs():
    model, x = Autoencoder([8, 4, 2]), torch.rand(10, 8)
    with pytest.raises(ValueError, match="epochs_per_layer must be a positive int"):
        pretrain_layerwise(model, x, epochs_per_layer=0)
    with pytest.raises(ValueError, match="fine_tune_epochs must be a positive int"):
        pretrain_layerwise(model, x, fine_tune_epochs=-2)
    with pytest.raises(ValueError, match="takes epochs_per_layer and fine_tune_epochs, not epochs"):
        pretrain_layerwise(model, x, epochs=3)


def test_pretrain_layerwise_takes_an_untied_autoencoder():
    for model in (Autoencoder([8, 4, 2], tied=True), VAE([8, 4, 2])):
        with pytest.raises(ValueError, match="pretrain_layerwise takes an untied aefast.models.Autoencoder"):
            pretrain_layerwise(model, torch.rand(10, 8))


def test_analysis_tools_name_their_arguments():
    with pytest.raises(ValueError, match=r"pca_check needs a linear autoencoder \(activation=None"):
        pca_check(Autoencoder([8, 2]), torch.rand(10, 8))
    model = Autoencoder([8, 4, 2])
    for steps in (1, 2.5, "3"):
        with pytest.raises(ValueError, match=f"steps must be an int >= 2, got {steps!r}"):
            interpolate(model, torch.rand(8), torch.rand(8), steps)
    with pytest.raises(ValueError, match=r"x1 and x2 must be tensors of one input each, got torch.Size\(\[8\]\) and "
                                         r"torch.Size\(\[7\]\)"):
        interpolate(model, torch.rand(8), torch.rand(7))
    assert interpolate(model, torch.rand(1, 8), torch.rand(8), 3).shape == (3, 8)
    with pytest.raises(ValueError, match=r"x must be a 2-D tensor \(rows, 8\), got \(5, 7\)"):
        pca_check(Autoencoder([8, 2], activation=None), torch.rand(5, 7))
    for x in (torch.rand(1, 8), torch.rand(8)):  # the std of one input is NaN: so would every sample be
        with pytest.raises(ValueError, match=re.escape(f"x must be a batch of at least 2 inputs, got {tuple(x.shape)}")):
            LatentGaussian(model, x)
    for n in (-1, 2.5):
        with pytest.raises(ValueError, match=f"n must be an int >= 0, got {n}"):
            LatentGaussian(model, torch.rand(3, 8)).sample(n)
    for thresholds in (torch.zeros(3), torch.zeros(1, 2), 0.5):
        with pytest.raises(ValueError, match=r"thresholds must be a tensor of one threshold per code unit \(2,\) or a 0-d"):
            binary_codes(model, torch.rand(4, 8), thresholds)
    x = torch.rand(4, 8)
    with torch.no_grad():  # one threshold for every unit
        assert torch.equal(binary_codes(model, x, torch.tensor(0.0))[0], model.encode(x) > 0)


def test_a_batch_must_be_a_tensor_or_a_pair_and_labels_integers():
    with pytest.raises(TypeError, match="a batch must be a tensor or an \\(x, labels\\) pair, got str"):
        Autoencoder([8, 2]).loss("batch")
    x = torch.rand(2, 8)
    for batch in ((x, torch.zeros(2), torch.zeros(2)), (), [torch.zeros(2).tolist(), x]):
        with pytest.raises(TypeError, match="a batch must be a tensor or an \\(x, labels\\) pair, got "):
            Autoencoder([8, 2]).loss(batch)
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 3\), got dtype torch.float32"):
        ConditionalVAE([8, 3], num_classes=3).loss((torch.rand(2, 8), torch.tensor([0.0, 1.0])))
    for labels in ([0, -1], [3, 0]):
        with pytest.raises(ValueError, match=rf"labels must be integers in \[0, 3\), got \{labels}"):
            ConditionalVAE([8, 3], num_classes=3).loss((torch.rand(2, 8), torch.tensor(labels)))
