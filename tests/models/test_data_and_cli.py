"""Bundled and generated data, the IDX and .npz loaders (including damaged files), and `aefast train`."""
import gzip
import json
import pathlib
import struct

import matplotlib.axes
import numpy as np
import pytest
import torch

from aefast import data, train_cli
from aefast.cli import main
from aefast.train import fit


def test_digits():
    x, y = data.load_digits()
    assert x.shape == (1797, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0 and set(y.tolist()) == set(range(10))


def test_synthetic_manifold_repeats_from_its_seed():
    x, labels = data.synthetic_manifold(500, 32, seed=3)
    assert x.shape == (500, 32) and ((x >= 0) & (x <= 1)).all() and set(labels.tolist()) <= {0, 1, 2, 3}
    assert torch.equal(data.synthetic_manifold(500, 32, seed=3)[0], x)
    threads = torch.get_num_threads()
    try:  # the same points whatever the threads (a matmul's blocking may change with them)
        torch.set_num_threads(1)
        assert torch.equal(data.synthetic_manifold(500, 32, seed=3)[0], x)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("arguments,match", [
    ({"noise": -0.1}, "noise must be a finite number >= 0, got -0.1"),
    ({"noise": float("nan")}, "noise must be a finite number >= 0, got nan"),
    ({"seed": -1}, r"seed must be an int in \[0, 2\*\*63\)"),
    ({"seed": None}, "the data set is made from it"),
    ({"intrinsic_dim": 0}, "intrinsic_dim must be a positive int, got 0"),
])
def test_synthetic_manifold_names_a_bad_argument(arguments, match):
    with pytest.raises(ValueError, match=match):
        data.synthetic_manifold(50, 8, **arguments)


def write_idx(path, array, type_code=0x08, compress=False):
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(">u1" if type_code == 0x08 else ">i4").tobytes()
    with (gzip.open if compress else open)(path, "wb") as handle:
        handle.write(payload)


@pytest.mark.parametrize("compress,name", [(False, "images.idx"), (True, "images.idx.gz"),
                                           (True, "images.idx"), (False, "images.idx.gz")])
def test_idx_images_and_labels(tmp_path, compress, name):
    """Read through gzip when the content is gzip's, whatever the name says."""
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = tmp_path / name
    write_idx(path, images, compress=compress)
    loaded = data.load_idx(path)
    assert loaded.shape == (3, 20)
    torch.testing.assert_close(loaded, torch.from_numpy(images.reshape(3, 20) / 255.0).float())
    write_idx(tmp_path / "labels.idx", np.array([3, 1, 4]))
    assert data.load_idx(tmp_path / "labels.idx").tolist() == [3, 1, 4]


def test_damaged_idx_files(tmp_path):
    path = tmp_path / "images.idx"
    write_idx(path, np.zeros((3, 4, 5), dtype=np.uint8))
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])
    with pytest.raises(ValueError, match="the header promises 60 bytes of data, the file holds 53"):
        data.load_idx(path)
    path.write_bytes(whole + b"\0")  # a byte past the data: sizes from another file, or two files joined
    with pytest.raises(ValueError, match="the header promises 60 bytes of data, the file holds more"):
        data.load_idx(path)
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="is not an IDX file"):
        data.load_idx(path)
    path.write_bytes(path.read_bytes()[:4] + b"\0")
    with pytest.raises(ValueError, match="is not an IDX file"):  # an IDX file of no dimensions
        data.load_idx(path)
    path.write_bytes(b"\0\0\x08\x03" + (3).to_bytes(4, "big"))  # three dimensions, one size given
    with pytest.raises(ValueError, match="images.idx cannot be read as an IDX file: "):
        data.load_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_header_promising_more_than_memory_holds(tmp_path, compress):
    # (2^32 - 1)^3 bytes: read in one call, the buffer alone would be allocated first.
    path = tmp_path / ("huge.idx.gz" if compress else "huge.idx")
    with (gzip.open if compress else open)(path, "wb") as handle:
        handle.write(struct.pack(">BBBB3I", 0, 0, 0x08, 3, *[2**32 - 1] * 3) + b"\1" * 100)
    with pytest.raises(ValueError, match=r"the header promises 79228162458924105385300197375 bytes .* holds 100"):
        data.load_idx(path)


def test_idx_labels_must_be_integers(tmp_path):
    path = tmp_path / "labels.idx"
    path.write_bytes(struct.pack(">BBBBI2f", 0, 0, 0x0D, 1, 2, 1.5, 2.0))
    with pytest.raises(ValueError, match="a 1-D IDX file holds labels, an integer type, got >f4"):
        data.load_idx(path)


def test_npz(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, x=np.ones((4, 2, 3)), y=np.arange(4))
    x, labels = data.load_npz(path)
    assert x.shape == (4, 6) and labels.tolist() == [0, 1, 2, 3]
    np.savez(path, x=np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="row 0 holds NaN"):
        data.load_npz(path)
    with pytest.raises(ValueError, match="has no array 'images'"):
        data.load_npz(path, x_key="images")
    np.savez(path, x=np.ones((3, 2)), y=np.array([0.0, 2.0, 1.0]))
    assert data.load_npz(path)[1].tolist() == [0, 2, 1]  # labels stored as floats that hold integers


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.array(["a", "b"])}, r"'x' must hold rows of real numbers, got shape \(2,\) <U1"),
    ({"x": np.array(3.0)}, r"'x' must hold rows of real numbers, got shape \(\)"),
    ({"x": np.ones((3, 2)) + 1j}, "'x' must hold rows of real numbers"),
    ({"x": np.ones((3, 2)), "y": np.ones((3, 2))}, r"'y' must hold one label per row \(3\), got shape \(3, 2\)"),
    ({"x": np.ones((3, 2)), "y": np.array([0, 1])}, r"'y' must hold one label per row \(3\)"),
    ({"x": np.ones((3, 2)), "y": np.array([0.5, 1, 2])}, "'y': labels must be integers"),
    ({"x": np.ones((3, 2)), "y": np.array([0, np.nan, 2])}, "'y': labels must be integers"),
    # int64 would hold these as whatever the cast gives (with only a RuntimeWarning)
    ({"x": np.ones((3, 2)), "y": np.array([0, 1e30, 2])}, r"'y': labels must be at most 2\*\*53"),
    ({"x": np.ones((3, 2)), "y": np.array([0, -1e30, 2])}, r"'y': labels must be at most 2\*\*53"),
    ({"x": np.ones((3, 2)), "y": np.array([0, 2**64 - 1, 2], dtype=np.uint64)}, r"'y': labels must be at most 2\*\*53"),
    ({"x": np.ones((3, 2)), "y": np.array(["cat", "dog", "cat"])}, r"'y': labels must be integers, got <U3"),
])
def test_npz_contents_are_checked(tmp_path, arrays, match):
    path = tmp_path / "set.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match):
        data.load_npz(path)


@pytest.mark.parametrize("content,match", [
    (b"PK\x03\x04 damaged", "cannot be read as a .npz file: File is not a zip file"),
    (b"plain text", r"cannot be read as a .npz file: it is neither a .npz \(zip\) archive nor a .npy file"),
    (b"", r"cannot be read as a .npz file: it is neither"),
])
def test_damaged_npz_files(tmp_path, content, match):
    path = tmp_path / "set.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        data.load_npz(path)


def test_npy_is_not_npz(tmp_path):
    np.save(tmp_path / "one.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"one.npy cannot be read as a .npz file: it holds one array \(a .npy file\)"):
        data.load_npz(tmp_path / "one.npy")


@pytest.mark.parametrize("model,dataset,figures", [
    ("ae", "digits", {"loss_curve", "reconstructions", "latent"}),
    ("sparse", "synthetic", {"loss_curve", "reconstructions", "latent"}),
    ("denoising", "digits", {"loss_curve", "reconstructions", "latent"}),
    ("vae", "digits", {"loss_curve", "reconstructions", "latent", "samples", "interpolation"}),
    ("cvae", "digits", {"loss_curve", "reconstructions", "latent", "samples"}),
    ("conv", "synthetic", {"loss_curve", "reconstructions", "latent"}),
])
def test_cli_train_writes_the_figures(tmp_path, capsys, model, dataset, figures):
    assert main(["train", "--model", model, "--data", dataset, "--epochs", "1", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["figures"]) == figures and summary["device"] == "cpu"
    for path in summary["figures"].values():
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_train_is_fit_of_the_seeded_model_and_draws_what_it_learned(tmp_path, capsys, monkeypatch):
    """`aefast train` seeds the initial weights from --seed and runs fit with the batch size and learning
    rate it is given: fit called so gives the summary's loss, and the reconstructions figure draws each
    input beside that model's reconstruction of it. A rerun in the same folder resumes from its
    checkpoint: it ends where one longer run ends, and a shorter rerun trains no further."""
    drawn = []  # every image the figures draw, in order
    imshow = matplotlib.axes.Axes.imshow

    def recording_imshow(axes, image, *args, **kwargs):
        drawn.append(np.array(image))
        return imshow(axes, image, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", recording_imshow)
    out = tmp_path / "run"
    arguments = ["train", "--model", "ae", "--data", "digits", "--out", str(out), "--seed", "3",
                 "--batch-size", "100", "--lr", "0.01"]
    x, labels = data.load_digits()

    def fit_directly(epochs):
        torch.manual_seed(3)
        model = train_cli.build_model("ae", x.shape[1], 10)
        return model, fit(model, (x, labels), epochs=epochs, batch_size=100, lr=0.01, seed=3, progress=False)

    assert main([*arguments, "--epochs", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    model, history = fit_directly(2)
    assert summary["epochs"] == 2 and summary["final_train_loss"] == history["train_loss"][-1]
    with torch.no_grad():
        reconstructed = model.eval()(x[:10])
    # Column by column, the input (top) then its reconstruction (bottom); the digits are 8 x 8.
    for column in range(10):
        np.testing.assert_array_equal(drawn[2 * column], x[column].reshape(8, 8).numpy())
        np.testing.assert_array_equal(drawn[2 * column + 1], reconstructed[column].reshape(8, 8).numpy())
    assert main([*arguments, "--epochs", "3"]) == 0
    _, longer = fit_directly(3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["final_train_loss"] == longer["train_loss"][-1]
    assert main([*arguments, "--epochs", "1"]) == 0
    assert json.loads((out / "summary.json").read_text()) == summary
    capsys.readouterr()


def test_cli_train_refuses_a_folder_it_cannot_write_into(tmp_path, capsys, monkeypatch):
    # As root (CI) every folder is writable: the refusal is seen through os.access.
    from aefast import _files

    monkeypatch.setattr(_files.os, "access", lambda path, mode: pathlib.Path(path) != tmp_path / "locked")
    with pytest.raises(SystemExit):
        main(["train", "--model", "ae", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "locked")])
    assert f"out: cannot write into the folder {tmp_path / 'locked'}" in capsys.readouterr().err
    assert not (tmp_path / "locked" / "checkpoints").exists()


def test_cli_train_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "ae", "--data", str(tmp_path / "missing.npz"), "--epochs", "1", "--out", str(tmp_path)])
    assert "does not exist" in capsys.readouterr().err
    np.savez(tmp_path / "unlabelled.npz", x=np.random.rand(20, 16))
    with pytest.raises(SystemExit):
        main(["train", "--model", "cvae", "--data", str(tmp_path / "unlabelled.npz"), "--epochs", "1",
              "--out", str(tmp_path)])
    assert "needs labels" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit):
        main(["train", "--model", "ae", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "a-file")])
    assert "out must be a folder, but" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "ae", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "a-file" / "run")])
    assert "out: cannot create the folder" in capsys.readouterr().err
    # The models end in a sigmoid: data outside [0, 1], above or below, is refused before training.
    for name, values in (("above.npz", np.linspace(0, 1.5, 320)), ("below.npz", np.linspace(-0.25, 1, 320))):
        np.savez(tmp_path / name, x=values.reshape(20, 16))
        with pytest.raises(SystemExit):
            main(["train", "--model", "ae", "--data", str(tmp_path / name), "--epochs", "1", "--out", str(tmp_path)])
        low, high = values.min(), values.max()
        assert f"the models' sigmoid outputs need inputs in [0, 1], got [{low:.3g}, {high:.3g}]" in capsys.readouterr().err
    np.savez(tmp_path / "not-square.npz", x=np.random.rand(20, 15))
    with pytest.raises(SystemExit):
        main(["train", "--model", "conv", "--data", str(tmp_path / "not-square.npz"), "--epochs", "1",
              "--out", str(tmp_path)])
    assert "--model conv needs square images, got rows of 15 values" in capsys.readouterr().err
    np.savez(tmp_path / "featureless.npz", x=np.zeros((20, 0)))
    with pytest.raises(SystemExit):
        main(["train", "--model", "ae", "--data", str(tmp_path / "featureless.npz"), "--epochs", "1", "--out", str(tmp_path)])
    assert r"featureless.npz holds no data: its rows have shape (20, 0)" in capsys.readouterr().err
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 16)))
    with pytest.raises(SystemExit):
        main(["train", "--model", "ae", "--data", str(tmp_path / "empty.npz"), "--epochs", "1", "--out", str(tmp_path)])
    assert r"empty.npz holds no data: its rows have shape (0, 16)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "ae", "--data", "digits", "--epochs", "1", "--out", str(tmp_path), "--device", "abacus"])
    assert "device must name a torch device" in capsys.readouterr().err
    # An lr that makes the first step's weights overflow: the second loss is NaN, and the run says so.
    with pytest.raises(SystemExit):
        main(["train", "--model", "vae", "--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "diverged"),
              "--lr", "1e30"])
    assert "the loss became nan in epoch 1; lower lr?" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["train", "--model", "ae", "--data", "digits", "--epochs", "1", "--out", str(tmp_path), "--device", "cuda"])
        assert "no CUDA device is available" in capsys.readouterr().err
