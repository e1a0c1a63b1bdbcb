"""The training loop: Adam over a model's ``loss(batch)``, a tqdm progress bar, per-epoch checkpoints
that a rerun resumes from, early stopping, and runs that repeat exactly from a seed. Batches go to the
model's device, so a model on a GPU trains on data held on the CPU."""
from __future__ import annotations

import copy
import hashlib
import io
import math
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset
from tqdm.auto import tqdm

from aefast._checks import check_seed, is_real, positive_int
from aefast._files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "aefast.train/1"
# A checkpoint file is this line, the SHA-256 of the rest (64 hex digits and a newline), then torch.save's
# bytes: torch's zip reader does not notice a flipped bit in tensor data, the checksum does.
_CHECKPOINT_MAGIC = b"aefast-checkpoint v1\n"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is truncated, or belongs to another model."""


def as_loader(data, batch_size: int, *, shuffle: bool, generator: Optional[torch.Generator] = None,
              name: str = "data") -> DataLoader:
    """A DataLoader over ``data``: a tensor, an (x, labels) pair of tensors, a Dataset or a DataLoader.
    Tensors are indexed a whole batch at a time, not row by row and stacked (a fifth of a small model's
    epoch on the CPU), in the order DataLoader's own shuffle draws from ``generator``."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Tensor):
        _check_rows(data, name)
        data = TensorDataset(data)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, Tensor) for d in data):
        x, labels = data
        _check_rows(x, name)
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: {labels.shape[0]} labels for {x.shape[0]} rows")
        data = TensorDataset(x, labels)
    elif not isinstance(data, Dataset):
        raise TypeError(f"{name} must be a tensor, an (x, labels) pair, a Dataset or a DataLoader, "
                        f"got {type(data).__name__}")
    if type(data) is not TensorDataset:  # (a subclass may build its rows one by one)
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
    rows = RandomSampler(data, generator=generator) if shuffle else SequentialSampler(data)
    # batch_size=None: each index list from the BatchSampler is one item, data[indices], uncollated.
    return DataLoader(data, sampler=BatchSampler(rows, batch_size, drop_last=False), batch_size=None,
                      generator=generator)  # (which also draws its base seed first, as before)


def _check_rows(x: Tensor, name: str) -> None:
    """At least one row, all finite."""
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one row, got shape {tuple(x.shape)}")
    bad = ~torch.isfinite(x) if x.dtype.is_floating_point else None
    if bad is not None and bad.any():
        row = int(bad.reshape(x.shape[0], -1).any(1).nonzero()[0, 0])
        raise ValueError(f"{name}: row {row} holds NaN or infinity")


def _batch_for_model(batch, device: Optional[torch.device]):
    """TensorDataset yields lists: one tensor -> the tensor, two -> an (x, labels) tuple; on ``device``."""
    def move(part):
        return part.to(device) if device is not None and isinstance(part, Tensor) else part
    if isinstance(batch, (list, tuple)):
        batch = [move(part) for part in batch]
        return batch[0] if len(batch) == 1 else tuple(batch)
    return move(batch)


def _model_device(model: nn.Module) -> Optional[torch.device]:
    """Where the model's parameters (else buffers) live; None for a model that holds no tensors."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


# Where torch.optim.Adam(fused=True) has its update (torch >= 2.4 on the CPU); it checks only at the first step.
_FUSED_ADAM_DEVICES = ("cpu", "cuda")
_FUSED_ADAM_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _adam(params: list[Tensor], lr: float) -> torch.optim.Adam:
    """Adam, fused where every parameter's device and dtype have the fused update: one kernel for all
    parameters instead of about ten per parameter (a small model's step on the CI machine's CPU: 67 us
    against 213). The same update, its arithmetic in another order."""
    fused = all(p.device.type in _FUSED_ADAM_DEVICES and p.dtype in _FUSED_ADAM_DTYPES for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def _mean_loss(model: nn.Module, loader) -> float:
    model.eval()
    total, count = 0.0, 0
    device = _model_device(model)
    with torch.no_grad():
        for batch in loader:
            batch = _batch_for_model(batch, device)
            size = (batch[0] if isinstance(batch, tuple) else batch).shape[0]
            total += float(model.loss(batch)) * size
            count += size
    return total / max(count, 1)


def fit(model: nn.Module, data, *, epochs: int, batch_size: int = 128, lr: float = 1e-3, seed: Optional[int] = None,
        val_data=None, checkpoint_dir: Optional[str | os.PathLike] = None, progress: bool = True,
        patience: Optional[int] = None) -> dict:
    """Train ``model`` (anything with ``loss(batch)``) with Adam; returns ``{"train_loss": [...],
    "val_loss": [...] (with val_data), "epochs_run": n, "stopped_early": bool}``.

    ``checkpoint_dir``: after every epoch the model, the optimizer, the epoch, the history and every
    random generator's state are written there (atomically); a later call with the same directory
    resumes after the last finished epoch. ``patience``: stop when the validation loss (the training
    loss without val_data) has not improved for that many epochs. With ``seed`` the run repeats exactly.
    """
    positive_int(epochs, "epochs")
    positive_int(batch_size, "batch_size")
    if not is_real(lr) or not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if patience is not None:
        positive_int(patience, "patience")
    check_seed(seed)
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"model must have a loss(batch) method, got {type(model).__name__}")
    if torch.is_inference_mode_enabled():  # (its tensors cannot be saved for backward)
        raise RuntimeError("fit trains with autograd, which torch.inference_mode() turns off: call it outside")
    if seed is not None:
        torch.manual_seed(seed)
    loader_seed = seed if seed is not None else int(torch.randint(0, 2**62, (), device="cpu"))
    generator = torch.Generator().manual_seed(loader_seed)
    loader = as_loader(data, batch_size, shuffle=True, generator=generator)
    val_loader = as_loader(val_data, batch_size, shuffle=False, name="val_data") if val_data is not None else None
    optimizer = _adam([p for p in model.parameters() if p.requires_grad], lr)
    history = {"train_loss": [], **({"val_loss": []} if val_loader else {}), "epochs_run": 0, "stopped_early": False}
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if checkpoint is not None and checkpoint.parent.exists() and not checkpoint.parent.is_dir():
        # Found before the first epoch, not when its checkpoint would be written.
        raise ValueError(f"checkpoint_dir must be a folder (made if missing), got the file {checkpoint.parent}")
    if checkpoint is not None and checkpoint.exists():
        history = _resume(checkpoint, model, optimizer, generator)
    best, since_best = _best_so_far(history)
    device = _model_device(model)
    bar = tqdm(range(history["epochs_run"], epochs), disable=not progress, desc=type(model).__name__, unit="epoch")
    for epoch in bar:
        if patience is not None and since_best >= patience:
            history["stopped_early"] = True
            break
        model.train()
        total, count = 0.0, 0
        for batch in _batches(loader, data):
            batch = _batch_for_model(batch, device)
            with torch.enable_grad():  # also inside a caller's torch.no_grad(): training needs the graph
                loss = model.loss(batch)
            # The step's one wait for the device: read before backward, so that on a GPU backward and
            # the update run behind the host's work on the next batch.
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss became {value} in epoch {epoch + 1}; lower lr?")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            size = (batch[0] if isinstance(batch, tuple) else batch).shape[0]
            total += value * size
            count += size
        history["train_loss"].append(total / count)
        if val_loader is not None:
            history["val_loss"].append(_mean_loss(model, _batches(val_loader, val_data)))
        history["epochs_run"] = epoch + 1
        best, since_best = _best_so_far(history)
        bar.set_postfix(loss=f"{history['train_loss'][-1]:.4g}")
        if checkpoint is not None:
            _save(checkpoint, model, optimizer, generator, history)
    return history


_END = object()


def _batches(loader: DataLoader, data):
    """The batches of ``loader`` (``as_loader(data)``). One that fit made is drawn with the CPU as
    torch's default device: DataLoader draws its base seed, and its sampler the shuffle, on the default
    device, where a CPU generator cannot draw (a user's torch.set_default_device("cuda") made fit
    fail); a DataLoader the caller made is iterated as it is."""
    if isinstance(data, DataLoader):  # (then ``loader`` is ``data``)
        yield from loader
        return
    with torch.device("cpu"):
        batches = iter(loader)
    while True:
        with torch.device("cpu"):
            batch = next(batches, _END)
        if batch is _END:
            return
        yield batch


def _best_so_far(history: dict) -> tuple[float, int]:
    watched = history.get("val_loss") or history["train_loss"]
    if not watched:
        return math.inf, 0
    best_index = min(range(len(watched)), key=watched.__getitem__)
    return watched[best_index], len(watched) - 1 - best_index


def _save(path: Path, model, optimizer, generator, history) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "history": history, "torch_rng": torch.get_rng_state(), "loader_rng": generator.get_state(),
             # A model on a GPU may draw from its generators (dropout): resuming restores them too.
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}
    payload = io.BytesIO()
    torch.save(state, payload)
    payload = payload.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()

    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            handle.write(_CHECKPOINT_MAGIC + digest + b"\n" + payload)
    atomic_write(path, write)


def _read_checkpoint(path: Path) -> dict:
    """The state in a checkpoint file; CheckpointError when it is not one, another version, or damaged."""
    data = path.read_bytes()
    if not data.startswith(_CHECKPOINT_MAGIC):
        first_line = data.split(b"\n", 1)[0][:40]
        if first_line.startswith(b"aefast-checkpoint "):
            raise CheckpointError(f"{path} is a checkpoint of another format version ({first_line.decode(errors='replace')!r}); "
                                  f"this aefast reads {_CHECKPOINT_MAGIC.strip().decode()!r}")
        raise CheckpointError(f"{path} is not an aefast training checkpoint")
    header_end = len(_CHECKPOINT_MAGIC) + 65
    digest, payload = data[len(_CHECKPOINT_MAGIC):header_end - 1], data[header_end:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: checksum mismatch, the file is truncated, appended to or damaged")
    try:
        return torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as error:  # a matching checksum over bytes torch cannot read: written by something else
        raise CheckpointError(f"{path} cannot be read: {error}") from None


def _resume(path: Path, model, optimizer, generator) -> dict:
    state = _read_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an aefast training checkpoint")
    # load_state_dict copies the parameters that fit before it complains about the rest: keep a copy so
    # that a checkpoint of another model leaves this one as it was.
    before = copy.deepcopy(model.state_dict())
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["loader_rng"])
        if torch.cuda.is_available():  # the GPUs this machine has of those that saved (a CPU has none)
            for index, cuda_state in enumerate((state.get("cuda_rng") or [])[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, index)
        history = state["history"]
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        model.load_state_dict(before)
        raise CheckpointError(f"{path} does not fit this model or run (another model's or settings' checkpoint? "
                              f"give another folder, or remove it to start afresh): {error}") from None
    return history
