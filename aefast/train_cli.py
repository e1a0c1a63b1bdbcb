"""``aefast train``: train one of the seeds' models on a data set and draw what the notes draw: the
loss curve, inputs above their reconstructions, the 2-D code coloured by label, and for the VAEs
samples and an interpolation strip. Every figure is a PNG in the output folder."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from aefast import data as datasets
from aefast._checks import check_device
from aefast._files import make_output_folder, output_folder
from aefast.models import (VAE, Autoencoder, ConditionalVAE, ConvAutoencoder, DenoisingAutoencoder,
                           SparseAutoencoder, interpolate)
from aefast.train import fit

MODELS = ("ae", "sparse", "denoising", "vae", "cvae", "conv")


def load_data(name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if name == "digits":
        return datasets.load_digits()
    if name == "synthetic":
        return datasets.synthetic_manifold()
    path = Path(name)
    if not path.exists():
        raise ValueError(f"--data must be digits, synthetic or a path to an .npz or IDX file; {path} does not exist")
    if path.suffix == ".npz":
        return datasets.load_npz(path)
    return datasets.load_idx(path), None


def build_model(kind: str, width: int, num_classes: int):
    """The seeds' shapes, scaled to the input width; a 2-D code so that it can be drawn."""
    hidden = [max(2 * width // 3, 8), max(width // 3, 4)]
    if kind == "ae":
        return Autoencoder([width, *hidden, 2], activation="tanh", output_activation="sigmoid")
    if kind == "sparse":
        return SparseAutoencoder([width, *hidden, 16], l1=1e-3, output_activation="sigmoid")
    if kind == "denoising":
        return DenoisingAutoencoder([width, *hidden, 16], noise=("mask", 0.3), output_activation="sigmoid")
    if kind == "vae":
        return VAE([width, hidden[0], 2])
    if kind == "cvae":
        return ConditionalVAE([width, hidden[0], 2], num_classes=num_classes)
    if kind == "conv":
        return ConvAutoencoder()
    raise ValueError(f"--model must be one of {MODELS}, got {kind!r}")


def _as_conv_input(x: torch.Tensor) -> torch.Tensor:
    """Square images of any side, resized to the conv model's 28 x 28."""
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        raise ValueError(f"--model conv needs square images, got rows of {x.shape[1]} values")
    images = x.reshape(-1, 1, side, side)
    return F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).reshape(-1, 784).clamp(0, 1)


def run(model_kind: str, data_name: str, epochs: int, out: Path, *, batch_size: int = 128, lr: float = 3e-3,
        seed: int = 0, device: str = "cpu", progress: bool = True) -> dict:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    out = output_folder(out)
    device = check_device(device)
    x, labels = load_data(data_name)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{data_name} holds no data: its rows have shape {tuple(x.shape)}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{data_name}: the models' sigmoid outputs need inputs in [0, 1], got "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    if model_kind == "cvae" and labels is None:
        raise ValueError(f"--model cvae needs labels, and {data_name} has none")
    if model_kind == "conv":
        x = _as_conv_input(x)
    num_classes = int(labels.max()) + 1 if labels is not None else 2
    torch.manual_seed(seed)
    model = build_model(model_kind, x.shape[1], num_classes).to(device)
    data = (x, labels) if labels is not None else x
    make_output_folder(out)
    history = fit(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                  checkpoint_dir=out / "checkpoints", progress=progress)
    model.eval()
    figures = {}

    def save(figure, name):
        path = out / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        figures[name] = str(path)

    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot(range(1, len(history["train_loss"]) + 1), history["train_loss"])
    axes.set(xlabel="epoch", ylabel="training loss", title=f"{model_kind} on {data_name}")
    save(figure, "loss_curve")

    side = math.isqrt(x.shape[1])
    shown = x[:10]
    x_on_device = x.to(device)
    labels_on_device = labels.to(device) if labels is not None else None
    with torch.no_grad():  # the figures draw from CPU copies
        reconstructed = (model(x_on_device[:10], labels_on_device[:10]) if model_kind == "cvae"
                         else model(x_on_device[:10])).cpu()
    if side * side == x.shape[1]:
        figure, axes = plt.subplots(2, 10, figsize=(10, 2.2))
        for column in range(len(shown)):
            for row, images in enumerate((shown, reconstructed)):
                axes[row, column].imshow(images[column].reshape(side, side).numpy(), cmap="gray", vmin=0, vmax=1)
                axes[row, column].axis("off")
        figure.suptitle("inputs (top) and reconstructions (bottom)")
        save(figure, "reconstructions")

    with torch.no_grad():
        codes = (model.encode(x_on_device, labels_on_device) if model_kind == "cvae"
                 else model.encode(x_on_device)).cpu()
    if codes.shape[1] > 2:  # draw the code's two principal directions
        centered = codes - codes.mean(0)
        codes = centered @ torch.linalg.svd(centered, full_matrices=False)[2][:2].T
    figure, axes = plt.subplots(figsize=(5, 4.5))
    scatter = axes.scatter(codes[:, 0].numpy(), codes[:, 1].numpy(), c=labels.numpy() if labels is not None else None,
                           cmap="tab10", s=4)
    if labels is not None:
        figure.colorbar(scatter, ax=axes, label="label")
    axes.set(title="the code (2-D, or its top 2 principal directions)")
    save(figure, "latent")

    if model_kind in ("vae", "cvae") and side * side == x.shape[1]:
        generator = torch.Generator().manual_seed(seed)
        samples = model.sample(20, generator=generator).cpu()
        figure, axes = plt.subplots(2, 10, figsize=(10, 2.2))
        for index, axis in enumerate(axes.flat):
            axis.imshow(samples[index].reshape(side, side).numpy(), cmap="gray", vmin=0, vmax=1)
            axis.axis("off")
        save(figure, "samples")
        if model_kind == "vae":
            strip = interpolate(model, x_on_device[0], x_on_device[1], steps=10).cpu()
            figure, axes = plt.subplots(1, 10, figsize=(10, 1.2))
            for index, axis in enumerate(axes):
                axis.imshow(strip[index].reshape(side, side).numpy(), cmap="gray", vmin=0, vmax=1)
                axis.axis("off")
            save(figure, "interpolation")
    summary = {"model": model_kind, "data": data_name, "device": str(device), "epochs": history["epochs_run"],
               "final_train_loss": history["train_loss"][-1], "figures": figures}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
