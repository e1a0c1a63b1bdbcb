"""fit: repeatable from a seed, resumes from its checkpoint after an interruption, stops early, and
refuses bad data and damaged checkpoints with a clear error."""
import hashlib
import io
import math

import pytest
import torch

from aefast.models import Autoencoder, DenoisingAutoencoder
from aefast import train
from aefast.train import CheckpointError, fit


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(300, 12, generator=generator)


def model():
    torch.manual_seed(1)
    return Autoencoder([12, 6, 3], output_activation="sigmoid")


def denoising_model():
    """A model that draws from torch's generator each step (its corruption's seed)."""
    torch.manual_seed(1)
    return DenoisingAutoencoder([12, 6, 3], noise=("mask", 0.3), output_activation="sigmoid")


def test_a_seed_repeats_the_run(data):
    first, second = model(), model()
    assert fit(first, data, epochs=3, seed=5, progress=False) == fit(second, data, epochs=3, seed=5, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))


def test_the_seed_alone_decides_the_run(data):
    """Whatever torch's generator held before fit: the denoising corruption's seeds come from it."""
    first, second = denoising_model(), denoising_model()
    torch.manual_seed(123)
    expected = fit(first, data, epochs=2, seed=5, progress=False)
    torch.manual_seed(456)
    assert fit(second, data, epochs=2, seed=5, progress=False) == expected


@pytest.mark.parametrize("model", [model, denoising_model], ids=["plain", "denoising"])
def test_an_interrupted_run_resumes_from_its_checkpoint(data, tmp_path, model):
    """The same parameters and losses as the run that was not interrupted: the checkpoint restores the
    loader's shuffle and torch's generator (the denoising corruption's seeds)."""
    whole = model()
    expected = fit(whole, data, epochs=6, seed=5, progress=False)

    class Interrupt(Exception):
        pass

    interrupted = model()
    calls = {"n": 0}
    original_loss = interrupted.loss

    def loss_that_stops(batch):  # dies in the middle of epoch 4
        calls["n"] += 1
        if calls["n"] == 3 * 3 + 2:
            raise Interrupt
        return original_loss(batch)

    interrupted.loss = loss_that_stops
    with pytest.raises(Interrupt):
        fit(interrupted, data, epochs=6, batch_size=128, seed=5, checkpoint_dir=tmp_path, progress=False)
    resumed = model()
    steps = []
    original_resumed_loss = resumed.loss
    resumed.loss = lambda batch: steps.append(1) or original_resumed_loss(batch)
    history = fit(resumed, data, epochs=6, batch_size=128, seed=5, checkpoint_dir=tmp_path, progress=False)
    assert history["epochs_run"] == 6
    assert len(steps) == 3 * 3  # epochs 4 to 6 only: the checkpoint of epoch 3 was there to resume from
    assert history["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)
    for a, b in zip(resumed.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_after_patience_epochs_without_improvement(data, patience):
    # lr 0.5 overshoots, so the validation loss soon stops improving.
    history = fit(model(), data, epochs=60, lr=0.5, seed=5, patience=patience, val_data=data[:50], progress=False)
    watched = history["val_loss"]
    best = min(range(len(watched)), key=watched.__getitem__)
    assert history["stopped_early"] and history["epochs_run"] < 60
    assert len(watched) - 1 - best == patience  # stopped exactly `patience` epochs after the best one


def test_validation_loss_is_recorded(data):
    history = fit(model(), data[:250], epochs=2, val_data=data[250:], seed=1, progress=False)
    assert len(history["val_loss"]) == 2 and all(v > 0 for v in history["val_loss"])


@pytest.mark.parametrize("bad,error,match", [
    (lambda d: d.index_put_((torch.tensor([7, 200]), torch.tensor([3, 0])), torch.tensor(float("nan"))), ValueError,
     "data: row 7 holds NaN"),
    (lambda d: "digits", TypeError, "data must be a tensor"),
    (lambda d: (d, torch.zeros(5)), ValueError, "5 labels for 300 rows"),
    (lambda d: d[:0], ValueError, r"data must hold at least one row, got shape \(0, 12\)"),
])
def test_bad_data(data, bad, error, match):
    with pytest.raises(error, match=match):
        fit(model(), bad(data.clone()), epochs=1, progress=False)


@pytest.mark.parametrize("options,match", [
    ({"epochs": 0}, "epochs must be a positive int"),
    ({"epochs": 2.0}, "epochs must be a positive int"),
    ({"batch_size": True}, "batch_size must be a positive int"),
    ({"lr": float("nan")}, "lr must be > 0"),
    ({"lr": "0.1"}, "lr must be > 0"),
    ({"patience": 0}, "patience must be a positive int"),
    ({"seed": -1}, r"seed must be an int in \[0, 2\*\*63\)"),
    ({"seed": 1.5}, r"seed must be an int in \[0, 2\*\*63\)"),
])
def test_bad_options_are_refused_by_name(data, options, match):
    with pytest.raises(ValueError, match=match):
        fit(model(), data, **{"epochs": 1, "progress": False, **options})


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(data, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("not a folder")
    target = model()
    before = {name: value.clone() for name, value in target.state_dict().items()}
    with pytest.raises(ValueError, match="checkpoint_dir must be a folder .*notes.txt"):
        fit(target, data, epochs=1, checkpoint_dir=taken, progress=False)
    assert taken.read_text() == "not a folder"
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_model_without_a_loss_method_is_refused(data):
    with pytest.raises(TypeError, match=r"model must have a loss\(batch\) method, got Linear"):
        fit(torch.nn.Linear(12, 12), data, epochs=1, progress=False)


class _DivergingModel(torch.nn.Module):
    """A loss that is finite for the first step and infinite after it, as a too-large lr makes it."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self.steps = 0

    def loss(self, batch):
        self.steps += 1
        return self.scale * batch.mean() * (1.0 if self.steps == 1 else math.inf)


class _RecordingModel(torch.nn.Module):
    """A loss of the batch alone (the parameter beside it gets zero gradients, so Adam leaves it as it
    is), recording whether the model was in training mode at each call."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))
        self.training_at_call = []

    def loss(self, batch):
        self.training_at_call.append(self.training)
        return batch.mean() + 0 * self.unused


def test_epoch_losses_are_means_over_rows_and_validation_runs_in_eval_mode():
    """Batches of 2, 2 and 1 rows: each epoch's loss is the mean over rows, not over batches."""
    recording = _RecordingModel()
    history = fit(recording, torch.arange(5.0).unsqueeze(1), epochs=2, batch_size=2, seed=0, progress=False,
                  val_data=torch.tensor([[1.0], [2.0], [6.0]]))
    assert history["train_loss"] == [2.0, 2.0] and history["val_loss"] == [3.0, 3.0]
    assert recording.training_at_call == [True] * 3 + [False] * 2 + [True] * 3 + [False] * 2


def test_a_loss_that_stops_being_finite_stops_the_run_and_says_so(data):
    model = _DivergingModel()
    with pytest.raises(FloatingPointError, match=r"the loss became inf in epoch 1; lower lr\?"):
        fit(model, data, epochs=3, batch_size=100, progress=False)
    assert model.steps == 2  # stopped at the first such step, before its backward and update


def test_wrong_width_names_x(data):
    with pytest.raises(ValueError, match="x must have 12 features"):
        fit(model(), torch.rand(10, 5), epochs=1, progress=False)


DAMAGES = {
    "truncated": lambda data: data[:len(data) // 2],
    "bit-flipped": lambda data: data[:len(data) * 2 // 3] + bytes([data[len(data) * 2 // 3] ^ 0x10]) + data[len(data) * 2 // 3 + 1:],
    "appended to": lambda data: data + b"\0" * 16,
    "wrong version": lambda data: data.replace(b"aefast-checkpoint v1", b"aefast-checkpoint v9", 1),
    "garbage": lambda data: b"not a checkpoint at all",
    "empty": lambda data: b"",
}


def _checkpoint_with_a_valid_checksum(payload: bytes) -> bytes:
    """What another program writing our header and checksum over its own bytes would leave."""
    return train._CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _saved(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("payload,match", [
    (b"these bytes are no torch.save archive", "checkpoint.pt cannot be read: "),
    (_saved({"model": {}}), "checkpoint.pt is not an aefast training checkpoint"),
    (_saved([1, 2, 3]), "checkpoint.pt is not an aefast training checkpoint"),
])
def test_a_checkpoint_with_a_valid_checksum_over_other_contents_is_refused(data, tmp_path, payload, match):
    (tmp_path / "checkpoint.pt").write_bytes(_checkpoint_with_a_valid_checksum(payload))
    target = model()
    before = {name: value.clone() for name, value in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        fit(target, data, epochs=1, checkpoint_dir=tmp_path, progress=False)
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("damage", [*DAMAGES, "other model"])
def test_damaged_checkpoints_are_refused_and_leave_the_model_as_it_was(data, tmp_path, damage):
    fit(model(), data, epochs=1, seed=1, checkpoint_dir=tmp_path, progress=False)
    checkpoint = tmp_path / "checkpoint.pt"
    if damage in DAMAGES:
        checkpoint.write_bytes(DAMAGES[damage](checkpoint.read_bytes()))
    # "other model": same layer names, other sizes, so load_state_dict would copy the layers that fit.
    target = Autoencoder([12, 5, 3], output_activation="sigmoid") if damage == "other model" else model()
    before = {name: value.clone() for name, value in target.state_dict().items()}
    # A checkpoint that reads but fits no model says how to go on.
    match = {"other model": "does not fit this model or run .*remove it to start afresh",
             "wrong version": r"another format version \('aefast-checkpoint v9'\); this aefast reads "
                              r"'aefast-checkpoint v1'"}.get(damage, "checkpoint.pt")
    with pytest.raises(CheckpointError, match=match):
        fit(target, data, epochs=2, checkpoint_dir=tmp_path, progress=False)
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_datasets_and_loaders_are_taken_as_they_are(data):
    from torch.utils.data import DataLoader, TensorDataset

    dataset = TensorDataset(data)
    assert len(fit(model(), dataset, epochs=2, seed=1, progress=False)["train_loss"]) == 2
    loader = DataLoader(dataset, batch_size=50)
    assert len(fit(model(), loader, epochs=2, seed=1, progress=False)["train_loss"]) == 2


def test_an_overcomplete_autoencoder_trains(data):
    overcomplete = Autoencoder([12, 24])  # MSE loss: BCE on non-binary targets never nears 0
    history = fit(overcomplete, data, epochs=30, lr=1e-2, seed=1, progress=False)
    assert history["train_loss"][-1] < 0.2 * history["train_loss"][0]


@pytest.mark.parametrize("shuffle", [True, False])
def test_tensors_are_batched_as_dataloaders_shuffle_batches_them(data, shuffle):
    """as_loader indexes a whole batch of a tensor at once; its batches, and what it draws from the
    generator, are those of DataLoader's own row-by-row loading (so seeded runs and checkpoints from
    before still repeat)."""
    from torch.utils.data import DataLoader, TensorDataset

    labels = torch.arange(data.shape[0])
    for given, dataset in ((data, TensorDataset(data)), ((data, labels), TensorDataset(data, labels))):
        ours, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        for _ in range(2):  # two epochs: the generator carries on between them in both
            batched = list(train.as_loader(given, 128, shuffle=shuffle, generator=ours))
            expected = list(DataLoader(dataset, batch_size=128, shuffle=shuffle, generator=theirs))
            assert [len(batch[0]) for batch in batched] == [128, 128, 44]
            assert len(batched) == len(expected)
            for batch, reference in zip(batched, expected):
                assert len(batch) == len(reference)
                for part, reference_part in zip(batch, reference):
                    assert torch.equal(part, reference_part)
        assert torch.equal(ours.get_state(), theirs.get_state())


def test_a_tensordataset_subclass_keeps_its_own_rows(data):
    """A subclass of TensorDataset may build each row in __getitem__: it is loaded row by row."""
    from torch.utils.data import TensorDataset

    class Doubled(TensorDataset):
        def __getitem__(self, index):
            assert isinstance(index, int)
            return (2 * self.tensors[0][index],)

    (batch,) = next(iter(train.as_loader(Doubled(data), 50, shuffle=False)))
    assert torch.equal(batch, 2 * data[:50])


def test_fit_trains_inside_no_grad_and_refuses_inference_mode(data):
    """A caller's torch.no_grad() (an evaluation harness around it) does not stop training: the run
    equals one outside it. torch.inference_mode() makes tensors that backward cannot use: refused by name."""
    outside, inside = model(), model()
    expected = fit(outside, data, epochs=2, seed=5, progress=False)
    with torch.no_grad():
        assert fit(inside, data, epochs=2, seed=5, progress=False) == expected
    assert all(torch.equal(a, b) for a, b in zip(inside.parameters(), outside.parameters()))
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"torch\.inference_mode\(\)"):
        fit(model(), data, epochs=1, progress=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_takes_adams_steps_fused_where_torch_has_the_fused_update(data, dtype):
    """The parameters after fit equal a hand-written loop's over the same batches with Adam(fused=True),
    bit for bit (with torch's default Adam the same loop ends a few last bits away, and this fails)."""
    fitted, by_hand = model().to(dtype), model().to(dtype)
    data = data.to(dtype)
    fit(fitted, data, epochs=2, batch_size=64, lr=1e-2, seed=3, progress=False)
    torch.manual_seed(3)
    loader = train.as_loader(data, 64, shuffle=True, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(by_hand.parameters(), lr=1e-2, fused=True)
    for _ in range(2):
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            by_hand.loss(batch).backward()
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(fitted.parameters(), by_hand.parameters()))
    assert train._adam(list(fitted.parameters()), 1e-3).defaults["fused"] is True


def test_parameters_without_the_fused_update_take_torchs_default_adam():
    """A complex parameter has no fused Adam on the CPU (torch would refuse it at the first step)."""
    complex_parameter = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    optimizer = train._adam([torch.nn.Parameter(torch.zeros(3)), complex_parameter], 1e-3)
    assert optimizer.defaults["fused"] is None
    complex_parameter.grad = torch.ones(3, dtype=torch.complex64)
    optimizer.step()  # runs
    assert complex_parameter.abs().max() > 0
