"""The seeds' convolutional autoencoder for 28 x 28 images (the Keras example): conv 16, 8, 8 with
2 x 2 max-pooling down to a 4 x 4 x 8 code, then conv + upsampling back to 28 x 28 x 1; ReLU inside,
sigmoid out. Plain PyTorch convolutions: the fused kernels are for linear layers."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from aefast.models.autoencoders import batch_inputs

SIDE = 28


class ConvAutoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),               # 14 x 14 x 16
            nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),               # 7 x 7 x 8
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # 4 x 4 x 8
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),   # 8 x 8
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),   # 16 x 16
            nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Upsample(scale_factor=2),             # 14 x 14 -> 28 x 28
            nn.Conv2d(16, 1, 3, padding=1), nn.Sigmoid(),
        )

    @staticmethod
    def as_images(x: Tensor) -> Tensor:
        """(B, 784) or (B, 1, 28, 28) -> (B, 1, 28, 28)."""
        if x.dim() == 2 and x.shape[1] == SIDE * SIDE:
            return x.reshape(-1, 1, SIDE, SIDE)
        if x.dim() == 4 and tuple(x.shape[1:]) == (1, SIDE, SIDE):
            return x
        raise ValueError(f"x must be (B, {SIDE * SIDE}) or (B, 1, {SIDE}, {SIDE}), got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        """The 4 x 4 x 8 code, flattened to 128 values."""
        return self.encoder(self.as_images(x)).flatten(1)

    def decode(self, code: Tensor) -> Tensor:
        return self.decoder(code.reshape(-1, 8, 4, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)).reshape(x.shape)

    def loss(self, batch) -> Tensor:
        x, _ = batch_inputs(batch)
        # From the logits, before the decoder's last Sigmoid: stable where it saturates, and NaN rather
        # than an error once training has diverged (which fit then reports).
        logits = self.decoder[:-1](self.encode(x).reshape(-1, 8, 4, 4))
        return F.binary_cross_entropy_with_logits(logits.reshape(x.shape), x)
