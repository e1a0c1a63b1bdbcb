"""The seeds' deterministic autoencoders as nn.Modules with ``encode``, ``decode``, ``forward`` (the
reconstruction) and ``loss(batch)``, built from aefast's fused layers (which run the PyTorch
reference where no kernel applies). A batch is x, or (x, labels) with the labels ignored."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aefast._checks import check_no_seed_drawn_in_capture, is_int, is_real, non_negative
from aefast.mlp.layers import (FusedMLP, _check_activation, _check_corruption, _seed_tensor, _widths, corrupted,
                               fused_linear)


def batch_inputs(batch) -> tuple[Tensor, Optional[Tensor]]:
    """(x, labels or None) of a batch given as x, (x,) or (x, labels)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 2 and isinstance(batch[0], Tensor):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    raise TypeError(f"a batch must be a tensor or an (x, labels) pair, got {type(batch).__name__}")


class Autoencoder(nn.Module):
    """``dims`` lists the encoder widths from the input to the code; the decoder mirrors them.
    ``activation=None`` gives the linear autoencoder; ``tied=True`` reuses each encoder weight,
    transposed, in the mirrored decoder layer (the decoder keeps its own biases)."""

    def __init__(self, dims: Sequence[int], activation: Optional[str] = "relu",
                 output_activation: Optional[str] = None, tied: bool = False):
        super().__init__()
        self.dims = _widths(dims, "dims")
        _check_activation(activation, "activation")
        _check_activation(output_activation, "output_activation")
        self.activation, self.output_activation, self.tied = activation, output_activation, tied
        self.encoder = FusedMLP(self.dims, activation, output_activation=None)  # a linear code layer
        self.decoder = FusedMLP(self.dims[::-1], activation, output_activation)
        if tied:  # decoder layer i uses encoder layer -1 - i's weight, transposed
            for layer in self.decoder.layers:
                del layer.weight
                layer.register_parameter("weight", None)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, code: Tensor) -> Tensor:
        if not self.tied:
            return self.decoder(code)
        return self._tied_decode(code, self.output_activation)

    def _tied_decode(self, code: Tensor, output_activation: Optional[str]) -> Tensor:
        h, layers = code, self.decoder.layers
        for index, layer in enumerate(layers):
            activation = layer.activation if index < len(layers) - 1 else output_activation
            h = fused_linear(h, self.encoder.layers[-1 - index].weight.t().contiguous(), layer.bias, activation)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def reconstruction_loss(self, output: Tensor, x: Tensor) -> Tensor:
        """The loss of a reconstruction ``output`` against ``x``: binary cross-entropy for a sigmoid
        output, else the mean square error. Training takes it from the code instead (``_code_loss``)."""
        if self.output_activation == "sigmoid":
            return F.binary_cross_entropy(output.clamp(1e-7, 1 - 1e-7), x)
        return F.mse_loss(output, x)

    def _code_loss(self, code: Tensor, x: Tensor) -> Tensor:
        """The loss of decode(code) against x, fused into the decoder's last layer; for a sigmoid output
        the binary cross-entropy is taken from the logits: stable where the sigmoid saturates, and NaN
        rather than an error once training has diverged (which fit then reports)."""
        loss = "bce" if self.output_activation == "sigmoid" else "mse"
        if not self.tied:
            return self.decoder.loss(code, x, loss=loss)
        if loss == "bce":
            return F.binary_cross_entropy_with_logits(self._tied_decode(code, None), x)
        return F.mse_loss(self.decode(code), x)

    def loss(self, batch) -> Tensor:
        x, _ = batch_inputs(batch)
        return self._code_loss(self.encode(x), x)


class SparseAutoencoder(Autoencoder):
    """An autoencoder whose code is pushed to be sparse: ``l1`` weighs the code's mean L1 norm,
    ``rho`` sets a target mean activation per code unit (KL(rho || mean) summed, weighted by
    ``beta``; needs codes in (0, 1), so the code goes through a sigmoid), or ``k`` keeps only the k
    largest code units of each input (the k-sparse autoencoder)."""

    def __init__(self, dims: Sequence[int], l1: float = 0.0, rho: Optional[float] = None, beta: float = 1.0,
                 k: Optional[int] = None, activation: Optional[str] = "relu", output_activation: Optional[str] = None):
        super().__init__(dims, activation, output_activation)
        l1, beta = non_negative(l1, "l1"), non_negative(beta, "beta")
        if rho is not None and not (is_real(rho) and 0 < rho < 1):
            raise ValueError(f"rho must be in (0, 1), got {rho!r}")
        if k is not None and not (is_int(k) and 1 <= k <= self.dims[-1]):
            raise ValueError(f"k must be an int in [1, code width {self.dims[-1]}], got {k!r}")
        if l1 == 0 and rho is None and k is None:
            raise ValueError("a SparseAutoencoder needs l1 > 0, rho or k")
        self.l1, self.rho, self.beta, self.k = l1, rho, beta, k
        if rho is not None:
            self.encoder.layers[-1].activation = "sigmoid"

    def encode(self, x: Tensor) -> Tensor:
        code = super().encode(x)
        if self.k is not None:
            top = code.topk(self.k, dim=-1)
            code = torch.zeros_like(code).scatter(-1, top.indices, top.values)
        return code

    def loss(self, batch) -> Tensor:
        x, _ = batch_inputs(batch)
        code = self.encode(x)
        loss = self._code_loss(code, x)
        if self.l1:
            loss = loss + self.l1 * code.abs().sum(-1).mean()
        if self.rho is not None:
            mean = code.mean(0).clamp(1e-6, 1 - 1e-6)
            rho = self.rho
            loss = loss + self.beta * (rho * torch.log(rho / mean) + (1 - rho) * torch.log((1 - rho) / (1 - mean))).sum()
        return loss


class DenoisingAutoencoder(Autoencoder):
    """Reconstructs the clean input from a corrupted copy: ``noise=("mask", v)`` zeroes inputs with
    probability v, ``("gaussian", sigma)`` adds Gaussian noise. Training corrupts fresh noise each
    step (drawn from torch's generator); ``forward`` and ``encode`` see the input as given."""

    def __init__(self, dims: Sequence[int], noise=("mask", 0.3), activation: Optional[str] = "relu",
                 output_activation: Optional[str] = None):
        super().__init__(dims, activation, output_activation)
        self.noise = _check_corruption(noise, "noise")

    def corrupt(self, x: Tensor, seed: Optional[int] = None) -> Tensor:
        kind, param = self.noise
        check_no_seed_drawn_in_capture(seed, x.device, "the noise")
        return corrupted(x, kind, param, _seed_tensor(seed))

    def loss(self, batch) -> Tensor:
        x, _ = batch_inputs(batch)
        return self._code_loss(self.encode(self.corrupt(x)), x)
