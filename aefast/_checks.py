"""Argument checks shared by the layers, models, training loop, memories and custom ops: each raises a
ValueError that names the argument. bool is refused where a number is asked for (True is an int to Python)."""
from __future__ import annotations

import functools
import inspect
import math
import numbers

import torch


def is_int(value) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(value, name: str) -> int:
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def non_negative(value, name: str) -> float:
    # Comparisons, not math.isfinite: torch.compile(dynamic=True) traces a float as a SymFloat, which
    # math.isfinite cannot take; NaN fails both comparisons.
    if not is_real(value) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


# The seed a call that draws no noise hands its op: checked there like any other, and never used.
NO_SEED = torch.zeros((), dtype=torch.int64, device="cpu")


def check_seed_tensor(seed) -> None:
    """The seed a custom op takes: a 0-d int64 tensor >= 0 (its ops are callable directly)."""
    if seed.shape != () or seed.dtype != torch.int64 or int(seed) < 0:
        raise ValueError(f"seed must be a 0-d int64 tensor >= 0, got {tuple(seed.shape)} {seed.dtype}"
                         f"{f' {int(seed)}' if seed.shape == () and seed.dtype == torch.int64 else ''}")


def check_seed(seed, name: str = "seed") -> None:
    """A seed is an int in [0, 2**63) (it is stored as int64) or None."""
    if seed is not None and (not is_int(seed) or not 0 <= seed < 2**63):
        raise ValueError(f"{name} must be an int in [0, 2**63) or None, got {seed!r}")


def _capturing_cuda_graph(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def check_no_seed_drawn_in_capture(seed, device: torch.device, noise: str) -> None:
    """seed=None draws the seed of ``noise`` on the host at each call. A CUDA graph captured around the
    call keeps the number it drew as a constant of its launches, so every replay would make the same
    noise: refused while a graph is captured on ``device``. torch.compile traces the draw as an op of its
    graph (and does not run this check)."""
    if seed is None and not torch.compiler.is_compiling() and _capturing_cuda_graph(device):
        raise ValueError(f"seed is None while a CUDA graph is captured: the graph would replay this call's one "
                         f"draw of {noise} at every replay. Pass seed= (then each replay makes that seed's noise), "
                         f"or capture without {noise}")


def check_device(device) -> torch.device:
    """``device`` as a torch.device that tensors on it compare equal to ("cuda" becomes "cuda:0", ...);
    ValueError naming it when torch does not know it or it is a GPU this machine lacks."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {device}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for, but no CUDA device is available")
        if device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} asked for, but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    return device


def one_device(fake):
    """A custom op's fake (meta) implementation that first refuses tensors on different devices, as the
    real one does. The dispatcher runs the fake for the whole call when any argument is a meta tensor,
    even beside CPU or CUDA ones, and the fake alone would answer with uninitialized tensors (or, for an
    op that writes, do nothing). The seed, which is read on the host, may also sit on the CPU."""
    names = tuple(inspect.signature(fake).parameters)

    @functools.wraps(fake)
    def checked(*args, **kwargs):
        tensors = [(name, value) for name, value in {**dict(zip(names, args)), **kwargs}.items()
                   if isinstance(value, torch.Tensor)]
        first_name, first = next((item for item in tensors if item[0] != "seed"), tensors[0])
        for name, tensor in tensors:
            if tensor.device != first.device and not (name == "seed" and tensor.device.type == "cpu"):
                raise ValueError(f"{name} is on {tensor.device} but {first_name} is on {first.device}")
        return fake(*args, **kwargs)
    return checked
