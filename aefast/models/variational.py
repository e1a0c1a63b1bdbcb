"""The variational autoencoder and its conditional form, with aefast's fused reparameterize + KL op.

The encoder maps x to (mu, logvar) of a diagonal Gaussian q(z|x); the decoder maps z to Bernoulli
means (a sigmoid output). The loss is the negative ELBO per input: the reconstruction's binary
cross-entropy summed over the input's units, plus beta times the KL to N(0, I), with ``free_bits``
nats per latent unit not penalized (the KL of each unit, averaged over the batch, is raised to it).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import aefast
from aefast._checks import is_int, non_negative
from aefast.mlp.layers import FusedMLP, _check_activation, _widths
from aefast.models.autoencoders import batch_inputs


class VAE(nn.Module):
    """``dims``: input width, hidden widths, latent width (e.g. [64, 128, 2])."""

    def __init__(self, dims: Sequence[int], beta: float = 1.0, free_bits: float = 0.0,
                 activation: Optional[str] = "relu", condition_width: int = 0):
        super().__init__()
        self.dims = _widths(dims, "dims")
        _check_activation(activation, "activation")
        beta, free_bits = non_negative(beta, "beta"), non_negative(free_bits, "free_bits")
        self.beta, self.free_bits, self.condition_width = beta, free_bits, condition_width
        latent = self.dims[-1]
        self.encoder = FusedMLP([self.dims[0] + condition_width] + self.dims[1:-1] + [2 * latent], activation)
        self.decoder = FusedMLP([latent + condition_width] + self.dims[-2:0:-1] + [self.dims[0]], activation,
                                output_activation="sigmoid")

    @property
    def latent_dim(self) -> int:
        return self.dims[-1]

    def encode_distribution(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu.contiguous(), logvar.contiguous()

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean: the code used for plots and interpolation."""
        return self.encode_distribution(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def negative_elbo_terms(self, x: Tensor, encoder_input: Tensor, decoder_condition: Optional[Tensor] = None):
        """(reconstruction, KL per latent unit averaged over the batch) of one sample z per input."""
        mu, logvar = self.encode_distribution(encoder_input)
        z, kl = aefast.reparameterize_kl(mu, logvar, reduction="none", logvar_clamp=(-30.0, 20.0))
        decoder_input = z if decoder_condition is None else torch.cat([z, decoder_condition], dim=-1)
        # The decoder's fused BCE, taken from the logits (stable where the sigmoid saturates, and NaN,
        # not an error, once training has diverged), is a mean over every unit: times the units per input.
        reconstruction = self.decoder.loss(decoder_input, x, loss="bce") * x.shape[-1]
        return reconstruction, kl.mean(0)

    def elbo(self, batch) -> Tensor:
        """The evidence lower bound per input (higher is better; no free bits, beta = 1)."""
        reconstruction, kl = self.negative_elbo_terms(*self._inputs(batch))
        return -(reconstruction + kl.sum())

    def loss(self, batch) -> Tensor:
        reconstruction, kl = self.negative_elbo_terms(*self._inputs(batch))
        return reconstruction + self.beta * kl.clamp(min=self.free_bits).sum()

    def _inputs(self, batch):
        x, _ = batch_inputs(batch)
        return x, x, None

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n inputs decoded from z ~ N(0, I)."""
        _check_count(n)
        weight = self.decoder.layers[0].weight
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=weight.dtype, device="cpu").to(weight.device)
        return self.decode(z)


class ConditionalVAE(VAE):
    """A VAE conditioned on a class label: its one-hot code is appended to the encoder's input and to
    z. Trains on (x, labels) batches; ``sample(n, labels)`` draws inputs of the given classes."""

    def __init__(self, dims: Sequence[int], num_classes: int, beta: float = 1.0, free_bits: float = 0.0,
                 activation: Optional[str] = "relu"):
        if not is_int(num_classes) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        super().__init__(dims, beta, free_bits, activation, condition_width=num_classes)
        self.num_classes = num_classes

    def one_hot(self, labels: Optional[Tensor], rows: int) -> Tensor:
        """The one-hot codes of ``labels``, one label for each of ``rows`` rows."""
        if labels is None:
            raise ValueError("ConditionalVAE needs labels: pass (x, labels) batches")
        labels = labels if isinstance(labels, Tensor) else torch.as_tensor(labels, device="cpu")
        if labels.shape != (rows,):
            raise ValueError(f"labels must be 1-D with one label per row ({rows}), got shape {tuple(labels.shape)}")
        message = f"labels must be integers in [0, {self.num_classes})"
        if labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise ValueError(f"{message}, got dtype {labels.dtype}")
        in_range = ((labels >= 0) & (labels < self.num_classes)).all()
        if torch.compiler.is_compiling():
            # An `if` on tensor values would break a fullgraph trace: the traced assert raises
            # (a RuntimeError) when the compiled step runs.
            torch._assert_async(in_range, message)
        elif not in_range:
            raise ValueError(f"{message}, got {labels.tolist()[:8]}")
        weight = self.encoder.layers[0].weight
        return F.one_hot(labels.long(), self.num_classes).to(weight.dtype).to(weight.device)

    def _inputs(self, batch):
        x, labels = batch_inputs(batch)
        condition = self.one_hot(labels, x.shape[0])
        return x, torch.cat([x, condition], dim=-1), condition

    def encode(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        return self.encode_distribution(torch.cat([x, self.one_hot(labels, x.shape[0])], dim=-1))[0]

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        return self.decode(torch.cat([self.encode(x, labels), self.one_hot(labels, x.shape[0])], dim=-1))

    @torch.no_grad()
    def sample(self, n: int, labels: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        _check_count(n)
        labels = torch.arange(n, device="cpu") % self.num_classes if labels is None else labels
        weight = self.decoder.layers[0].weight
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=weight.dtype, device="cpu").to(weight.device)
        return self.decode(torch.cat([z, self.one_hot(labels, n)], dim=-1))


def _check_count(n) -> None:
    if not is_int(n) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
