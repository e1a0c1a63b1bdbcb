"""Greedy layer-wise pretraining of a deep autoencoder, as in the seeds: train the outermost
encoder layer with its mirrored decoder layer as a shallow autoencoder, freeze it, train the next
pair on the codes of the frozen layers, and so on inward; then fine-tune the whole network."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aefast._checks import positive_int
from aefast.models.autoencoders import Autoencoder
from aefast.train import fit


class _LayerPair(nn.Module):
    """Encoder layer k and its mirror, reconstructing the output of the frozen layers before k."""

    def __init__(self, model: Autoencoder, index: int):
        super().__init__()
        self.frozen = list(model.encoder.layers[:index])  # a plain list: not trained, not registered
        self.encoder_layer = model.encoder.layers[index]
        self.decoder_layer = model.decoder.layers[len(model.decoder.layers) - 1 - index]

    def loss(self, batch) -> torch.Tensor:
        x = batch if isinstance(batch, torch.Tensor) else batch[0]
        with torch.no_grad():
            for layer in self.frozen:
                x = layer(x)
        return F.mse_loss(self.decoder_layer(self.encoder_layer(x)), x)


def pretrain_layerwise(model: Autoencoder, data, *, epochs_per_layer: int = 5, fine_tune_epochs: int = 10,
                       **fit_options) -> dict:
    """Pretrain ``model`` pair by pair, then fine-tune it; returns the histories of every stage."""
    if not isinstance(model, Autoencoder) or model.tied:
        raise ValueError("pretrain_layerwise takes an untied aefast.models.Autoencoder")
    positive_int(epochs_per_layer, "epochs_per_layer")
    positive_int(fine_tune_epochs, "fine_tune_epochs")
    if "epochs" in fit_options:
        raise ValueError("pretrain_layerwise takes epochs_per_layer and fine_tune_epochs, not epochs")
    fit_options.setdefault("progress", False)
    histories = {}
    for index in range(len(model.encoder.layers)):
        pair = _LayerPair(model, index)
        histories[f"layer {index}"] = fit(pair, data, epochs=epochs_per_layer, **fit_options)
    histories["fine-tune"] = fit(model, data, epochs=fine_tune_epochs, **fit_options)
    return histories
