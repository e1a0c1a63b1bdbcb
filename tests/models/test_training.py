"""Every model of the seeds trains on the bundled digits to a documented bound in seconds; the
comparisons the notes make hold (denoising beats plain on corrupted inputs, the sparse code is
sparser, the linear autoencoder reaches PCA's error, the VAE's ELBO improves)."""
import math

import pytest
import torch
import torch.nn.functional as F

import aefast
from aefast.data import load_digits
from aefast.mlp import reference
from aefast.models import (VAE, Autoencoder, ConditionalVAE, ConvAutoencoder, DenoisingAutoencoder, LatentGaussian,
                           SparseAutoencoder, binary_codes, hamming_search, interpolate, pca_check,
                           pretrain_layerwise)
from aefast.train import fit


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def mse(model, x):
    with torch.no_grad():
        return float(((model(x) - x) ** 2).mean())


@pytest.fixture(scope="module")
def plain(digits):
    x, _ = digits
    model = Autoencoder([64, 32, 16], output_activation="sigmoid")
    fit(model, x, epochs=60, batch_size=64, lr=3e-3, seed=1, progress=False)
    return model


def test_plain_autoencoder_reconstructs_digits(digits, plain):
    x, _ = digits
    # Pixel variance of the digits is 0.11; 60 epochs bring the 16-wide code to about 0.010.
    assert mse(plain, x) < 0.02


def test_tied_autoencoder_trains_with_half_the_weights(digits):
    x, _ = digits
    model = Autoencoder([64, 32, 16], output_activation="sigmoid", tied=True)
    untied = Autoencoder([64, 32, 16], output_activation="sigmoid")
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in untied.parameters())
    history = fit(model, x, epochs=30, batch_size=64, lr=3e-3, seed=1, progress=False)
    assert history["train_loss"][-1] < 0.8 * history["train_loss"][0] and mse(model, x) < 0.03


def test_denoising_beats_plain_on_corrupted_digits(digits, plain):
    x, _ = digits
    model = DenoisingAutoencoder([64, 32, 16], noise=("mask", 0.4), output_activation="sigmoid")
    fit(model, x, epochs=60, batch_size=64, lr=3e-3, seed=1, progress=False)
    corrupted = reference.corrupt(x, "mask", 0.4, seed=123)
    with torch.no_grad():
        denoised, copied = ((model(corrupted) - x) ** 2).mean(), ((plain(corrupted) - x) ** 2).mean()
    assert denoised < 0.7 * copied  # measured 0.028 against 0.049


def test_sparse_codes_are_sparser(digits, plain):
    x, _ = digits
    model = SparseAutoencoder([64, 32, 16], l1=3e-3, output_activation="sigmoid")
    fit(model, x, epochs=60, batch_size=64, lr=3e-3, seed=1, progress=False)
    with torch.no_grad():
        sparse_l1, plain_l1 = model.encode(x).abs().mean(), plain.encode(x).abs().mean()
    assert sparse_l1 < 0.25 * plain_l1 and mse(model, x) < 0.03  # measured 0.13 against 2.2


@pytest.mark.parametrize("kwargs", [{"rho": 0.1, "beta": 0.05}, {"k": 4}])
def test_other_sparsity_forms(digits, kwargs):
    x, _ = digits
    model = SparseAutoencoder([64, 32, 16], output_activation="sigmoid", **kwargs)
    fit(model, x, epochs=40, batch_size=64, lr=1e-2, seed=1, progress=False)
    with torch.no_grad():
        code, dense = model.encode(x), Autoencoder.encode(model, x)  # the code before the k-sparse cut
    if "k" in kwargs:
        assert ((code != 0).sum(1) <= 4).all()
        # The units kept are the dense code's 4 largest, unchanged: their sum is the largest of any 4.
        assert ((code == 0) | (code == dense)).all()
        torch.testing.assert_close(code.sum(1), dense.topk(4, dim=1).values.sum(1))
    else:
        assert code.mean() < 0.15  # the target rho = 0.1; measured 0.11
    mean_image_error = float(((x - x.mean(0)) ** 2).mean())  # what predicting the mean digit costs: 0.073
    assert mse(model, x) < 0.5 * mean_image_error  # measured 0.023 (rho) and 0.022 (k = 4)


def test_linear_autoencoder_reaches_pca(digits):
    x, _ = digits
    model = Autoencoder([64, 8], activation=None)
    fit(model, x, epochs=150, batch_size=256, lr=1e-2, seed=0, progress=False)
    check = pca_check(model, x)
    assert check.principal_angles.shape == (8,)
    assert check.pca_error <= check.autoencoder_error < 1.05 * check.pca_error  # measured 2.8% above


def test_pca_check_of_an_autoencoder_set_to_pca(digits):
    """An autoencoder set by hand to PCA's top 5 components (encoder: the centred input projected on
    them; decoder: back, plus the mean) spans the PCA subspace exactly whatever its biases: every
    principal angle 0 and PCA's own error."""
    x, _ = digits
    mean = x.mean(0)
    components = torch.linalg.svd((x - mean).double(), full_matrices=False)[2][:5].float()  # (5, 64)
    model = Autoencoder([64, 5], activation=None)
    encoder, decoder = model.encoder.layers[0], model.decoder.layers[0]
    with torch.no_grad():
        encoder.weight.copy_(components)
        encoder.bias.copy_(-components @ mean)
        decoder.weight.copy_(components.T)
        decoder.bias.copy_(mean)
    check = pca_check(model, x)
    assert check.principal_angles.max() < 1e-3
    assert check.autoencoder_error == pytest.approx(check.pca_error, rel=1e-4)


def test_vae_elbo_improves_and_samples(digits):
    x, _ = digits
    model = VAE([64, 64, 2])
    with torch.no_grad():
        torch.manual_seed(0)
        before = float(model.elbo(x))
    history = fit(model, x, epochs=30, batch_size=64, lr=3e-3, seed=2, progress=False)
    with torch.no_grad():
        torch.manual_seed(0)
        after = float(model.elbo(x))
    assert after > before + 10  # nats per digit; measured -45 -> -25
    assert history["train_loss"][-1] < history["train_loss"][0]
    samples = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 64) and ((samples >= 0) & (samples <= 1)).all()


@pytest.mark.parametrize("make,width", [
    (lambda: Autoencoder([64, 20, 5], output_activation="sigmoid"), 64),
    (lambda: Autoencoder([64, 20, 5], output_activation="sigmoid", tied=True), 64),
    (lambda: SparseAutoencoder([64, 20, 5], k=3, output_activation="sigmoid"), 64),
    (lambda: ConvAutoencoder(), 784),
], ids=["autoencoder", "tied", "k-sparse", "conv"])
def test_a_sigmoid_models_loss_is_the_bce_of_its_output_and_nan_once_diverged(make, width):
    """Taken from the logits, the loss equals torch's BCE of the sigmoid output; once a weight is NaN
    (a diverged run) it is NaN, which fit reports, where torch's BCE of a NaN output raised."""
    torch.manual_seed(0)
    model, x = make(), torch.rand(9, width)
    # float32 means of 9 x 64 (or 784) terms in two orders, and log(sigmoid) against the logits' form
    torch.testing.assert_close(model.loss(x), F.binary_cross_entropy(model(x), x), rtol=1e-5, atol=0)
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    assert model.loss(x).isnan()


def test_the_vae_reconstruction_term_is_the_summed_bce_per_input(digits):
    """The fused BCE from the decoder's logits, against torch's BCE of its sigmoid output for the same z."""
    x = digits[0][:50]
    model = VAE([64, 32, 4])
    with torch.no_grad():
        torch.manual_seed(0)
        reconstruction, kl = model.negative_elbo_terms(x, x)
        torch.manual_seed(0)  # the same seed for the reparameterized sample
        mu, logvar = model.encode_distribution(x)
        z, expected_kl = aefast.reparameterize_kl(mu, logvar, reduction="none", logvar_clamp=(-30.0, 20.0))
        expected = F.binary_cross_entropy(model.decode(z), x, reduction="sum") / x.shape[0]
    # float32 sums of 50 x 64 terms of about 0.7 in two orders, and log(sigmoid) against the logits' form
    torch.testing.assert_close(reconstruction, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(kl, expected_kl.mean(0))


@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_loss_weighs_the_kl_by_beta_with_free_bits_and_the_elbo_by_neither(digits, beta):
    """loss = reconstruction + beta * sum_j max(KL_j, free_bits) (the free bits keep the KL penalty at
    least free_bits a unit); elbo = -(reconstruction + sum_j KL_j)."""
    x, _ = digits
    model = VAE([64, 32, 4], beta=beta, free_bits=0.5)
    with torch.no_grad():
        torch.manual_seed(0)  # the same noise for every call
        reconstruction, kl = model.negative_elbo_terms(x, x)
        torch.manual_seed(0)
        loss = model.loss(x)
        torch.manual_seed(0)
        elbo = model.elbo(x)
    torch.testing.assert_close(loss, reconstruction + beta * kl.clamp(min=0.5).sum())
    assert loss >= reconstruction + beta * 4 * 0.5
    torch.testing.assert_close(elbo, -(reconstruction + kl.sum()))


def test_conditional_vae_needs_labels_and_trains(digits):
    x, y = digits
    model = ConditionalVAE([64, 64, 2], num_classes=10)
    history = fit(model, (x, y), epochs=15, batch_size=64, lr=3e-3, seed=3, progress=False)
    assert history["train_loss"][-1] < 0.8 * history["train_loss"][0]
    assert model.sample(10, labels=torch.arange(10)).shape == (10, 64)
    with pytest.raises(ValueError, match="ConditionalVAE needs labels"):
        model.loss(x)
    with pytest.raises(ValueError, match="labels must be integers in"):
        model.loss((x[:4], torch.tensor([0, 1, 2, 10])))


def test_conv_autoencoder_shapes_and_training():
    model = ConvAutoencoder()
    x = torch.rand(8, 784)
    assert model.encode(x).shape == (8, 128) and model(x).shape == (8, 784)
    assert model(x.reshape(8, 1, 28, 28)).shape == (8, 1, 28, 28)
    history = fit(model, x, epochs=5, batch_size=4, lr=1e-2, seed=4, progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
    with pytest.raises(ValueError, match="x must be"):
        model(torch.rand(2, 64))


def test_layerwise_pretraining_then_fine_tuning(digits):
    x, _ = digits
    model = Autoencoder([64, 32, 16, 8], activation="tanh", output_activation="sigmoid")
    histories = pretrain_layerwise(model, x, epochs_per_layer=5, fine_tune_epochs=10, batch_size=64, lr=3e-3, seed=5)
    assert list(histories) == ["layer 0", "layer 1", "layer 2", "fine-tune"]
    for history in histories.values():
        assert history["train_loss"][-1] < history["train_loss"][0]
    assert mse(model, x) < 0.04


def test_layerwise_pretraining_freezes_the_outer_layers_while_an_inner_pair_trains(digits, monkeypatch):
    # Each stage trains one encoder layer and its mirror on the codes of the layers outside it, which
    # stay as their own stage left them; fine-tuning then trains every layer.
    from aefast.models import pretrain

    x, _ = digits
    model = Autoencoder([64, 32, 16, 8], activation="tanh", output_activation="sigmoid")
    changed, graded = [], []  # per stage: which of the model's parameters the stage changed, gave a gradient

    def recording_fit(trained, data, **options):
        before = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad = None
        history = fit(trained, data, **options)
        changed.append([not torch.equal(p, b) for p, b in zip(model.parameters(), before)])
        graded.append([p.grad is not None for p in model.parameters()])
        return history
    monkeypatch.setattr(pretrain, "fit", recording_fit)
    pretrain_layerwise(model, x[:256], epochs_per_layer=1, fine_tune_epochs=1, batch_size=64, seed=5)
    names = [name for name, _ in model.named_parameters()]
    trained = [{name for name, was_changed in zip(names, stage) if was_changed} for stage in changed]
    # The frozen layers run without autograd: they get no gradient, not only no step.
    with_gradient = [{name for name, has_grad in zip(names, stage) if has_grad} for stage in graded]
    for index, stage in enumerate(trained[:3]):  # encoder layer k and decoder layer 2 - k, nothing else
        assert stage == with_gradient[index] == {f"encoder.layers.{index}.weight", f"encoder.layers.{index}.bias",
                                                 f"decoder.layers.{2 - index}.weight", f"decoder.layers.{2 - index}.bias"}
    assert trained[3] == with_gradient[3] == set(names)


def test_latent_tools(digits, plain):
    x, _ = digits
    path = interpolate(plain, x[0], x[1], steps=5)
    assert path.shape == (5, 64)
    with torch.no_grad():
        torch.testing.assert_close(path[0], plain(x[:1])[0])
        torch.testing.assert_close(path[-1], plain(x[1:2])[0])
    samples = LatentGaussian(plain, x).sample(6, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, 64)
    with torch.no_grad():  # decoded draws from N(the codes' mean, their std^2) per unit
        codes = plain.encode(x)
        noise = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(samples, plain.decode(codes.mean(0) + codes.std(0) * noise))
    bits, thresholds = binary_codes(plain, x)
    assert bits.dtype == torch.bool and bits.shape == (1797, 16)
    assert (bits.sum(0) <= 1797 // 2).all()  # strictly above each unit's median: at most half the digits
    # A digit's own code is its nearest neighbour by Hamming distance (distance 0).
    nearest = hamming_search(bits[:20], bits, k=1)
    assert (bits[nearest[:, 0]] == bits[:20]).all()


def test_the_code_layer_and_the_reconstruction_loss_follow_the_model():
    """The code is linear (the notes' bottleneck) unless rho asks for a sigmoid code; a sigmoid output's
    reconstruction loss is the binary cross-entropy, any other's the mean square error."""
    torch.manual_seed(0)
    x = torch.rand(64, 8)
    model = Autoencoder([8, 6, 3], activation="relu", output_activation="sigmoid")
    assert model.encoder.layers[-1].activation is None and (model.encode(x) < 0).any()
    with torch.no_grad():
        output = model(x)
        assert torch.equal(model.reconstruction_loss(output, x), F.binary_cross_entropy(output, x))
        linear_output = Autoencoder([8, 6, 3])(x)
        assert torch.equal(Autoencoder([8, 6, 3]).reconstruction_loss(linear_output, x), F.mse_loss(linear_output, x))
        code = SparseAutoencoder([8, 6, 3], rho=0.1).encode(x)
    assert ((code > 0) & (code < 1)).all()


def test_the_vae_clamps_logvar_and_the_conditional_decoder_sees_the_label():
    torch.manual_seed(0)
    x = torch.rand(5, 8)
    model = VAE([8, 4, 2])
    with torch.no_grad():  # logvar = 100: exp(logvar) overflows float32 unless clamped (to 20)
        model.encoder.layers[-1].weight[2:] = 0
        model.encoder.layers[-1].bias[2:] = 100.0
    assert torch.isfinite(model.loss(x))
    conditional = ConditionalVAE([8, 4, 2], num_classes=3)
    with torch.no_grad():
        conditional.encoder.layers[0].weight[:, 8:] = 0  # the encoder ignores the label: only the decoder sees it
    losses = []
    for label in (0, 1):
        torch.manual_seed(1)  # the same eps for both
        losses.append(float(conditional.loss((x, torch.full((5,), label))).detach()))
    assert losses[0] != losses[1]
    generator_seed = 3
    assert torch.equal(conditional.sample(6, generator=torch.Generator().manual_seed(generator_seed)),
                       conditional.sample(6, labels=torch.arange(6) % 3,
                                          generator=torch.Generator().manual_seed(generator_seed)))


def _hamming_nearest_by_comparison(queries, database, k):
    """Every (query, row, bit) compared, then a stable sort: the definition, in (Q, N, B) memory."""
    distances = (queries.unsqueeze(1).bool() != database.unsqueeze(0).bool()).sum(-1)
    return torch.sort(distances, dim=1, stable=True).indices[:, :k]


@pytest.mark.parametrize("queries,rows,bits,k", [(1, 1, 1, 1), (7, 129, 3, 129), (37, 501, 17, 9), (300, 700, 100, 1)])
def test_hamming_search_equals_comparing_every_bit(queries, rows, bits, k, monkeypatch):
    """The search by matmul (|q| + |r| - 2 q.r) and topk over unique keys equals the definition, with
    its ties, also when the queries are cut into several blocks (a block of 2 queries at 700 rows) and
    for 0/1 tensors of other dtypes."""
    from aefast.models import analysis

    generator = torch.Generator().manual_seed(queries * rows)
    q = torch.rand(queries, bits, generator=generator) > 0.5
    database = torch.rand(rows, bits, generator=generator) > 0.5
    database[rows // 2:] = database[:rows - rows // 2].clone()  # repeated rows: ties at every distance
    expected = _hamming_nearest_by_comparison(q, database, k)
    assert torch.equal(hamming_search(q, database, k), expected)
    assert torch.equal(hamming_search(q.float(), database.to(torch.uint8), k), expected)
    monkeypatch.setattr(analysis, "HAMMING_BLOCK_PAIRS", 1400)
    assert torch.equal(hamming_search(q, database, k), expected)


@pytest.mark.parametrize("call,match", [
    (lambda q, d: hamming_search(q[0], d, 1), r"queries must be a 2-D tensor of bits \(rows, bits\), got \(16,\)"),
    (lambda q, d: hamming_search(q, [[True]], 1), "database must be a 2-D tensor of bits"),
    (lambda q, d: hamming_search(q.float() + 2, d, 1), "queries must hold only 0 and 1"),
    (lambda q, d: hamming_search(q, d.float().fill_(float("nan")), 1), "database must hold only 0 and 1"),
    (lambda q, d: hamming_search(q, d[:, :15], 1), "same number of bits, got 16 and 15"),
    (lambda q, d: hamming_search(q, d, 0), r"k must be an int in \[1, database rows 10\], got 0"),
    (lambda q, d: hamming_search(q, d, 11), r"k must be an int in \[1, database rows 10\], got 11"),
    (lambda q, d: hamming_search(q, d, 2.0), "k must be an int"),
])
def test_hamming_search_refuses_what_is_not_two_sets_of_bit_rows(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(3, 16, dtype=torch.bool), torch.ones(10, 16, dtype=torch.bool))


def test_hamming_search_breaks_ties_by_the_lower_index():
    database = torch.zeros(3000, 16, dtype=torch.bool)
    database[::3, 0] = True  # every third row one bit away from the query, the others equal to it
    nearest = hamming_search(torch.zeros(1, 16, dtype=torch.bool), database, k=5)
    assert nearest.tolist() == [[1, 2, 4, 5, 7]]
