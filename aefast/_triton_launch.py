"""aefast's Triton launches in less of the host's time than Triton's own launch path takes (the autotuned
Willshaw kernels' once their autotuner has chosen, willshaw/triton_kernels.py's _tuned).

Triton's ``kernel[grid](*args)`` binds and specializes each argument, builds its cache key from them
and its options, reads its knobs and builds the launch's metadata, at every launch: a linear layer's
launch took 18 us of host time on the CI machine through that path and 6 through this one (fake GPU,
2026-12-08, docs/gpu_notes.md), and the autoencoder's training step launches 8 to 11 kernels.
``launch`` takes Triton's path the first time a kernel meets a key of its arguments, keeps the compiled
kernel that path chose, and after that calls its launcher directly, with the arguments Triton would
have passed it.

The key tells apart at least what Triton specializes on (checked against triton 3.6 and 3.9's
``native_specialize_impl``; tests/test_triton_launch.py holds it there): each tensor's dtype and 16-byte
alignment; each integer's type (i32, i64 or u64 by its range), whether it is 1 and whether 16 divides
it; bools and None by value; floats not at all (fp32); the keyword arguments (constexprs and options)
by name and value; and the current device. Where Triton's path does more than launch, it is taken every
time: under the interpreter, with a launch hook set (a profiler's), or for a kernel given a runtime
argument by keyword. Not followed after a kernel's first launch with a key: a change to Triton's knobs
that enter its options (TRITON_DEBUG and the like), or to a module's global that the kernel reads
(Triton refuses that; aefast's kernels read none that change).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from triton import knobs
from triton.runtime import driver
from triton.runtime.jit import JITFunction


class _Variant(NamedTuple):
    """A compiled kernel, as its launcher takes it, and the values of the parameters that follow the
    launch's positional arguments (constexprs, fixed by the key), in the kernel's order."""
    launcher: Callable
    function: Any
    packed_metadata: Any
    tail: tuple


_variants: dict[JITFunction, dict[tuple, _Variant]] = {}  # per kernel, by key of the arguments


def launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``: Triton's launch path for a key of the arguments not met yet, the
    compiled kernel it chose after that (the module's docstring). ``grid`` is a tuple of 1 to 3 sizes. A
    kernel that is not a jitted function (interpreted, or a test's stand-in) takes its own ``[grid]``."""
    enter_hook, exit_hook = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    if not isinstance(kernel, JITFunction) or _hooked(enter_hook) or _hooked(exit_hook):
        kernel[grid](*args, **kwargs)
        return
    device = driver.active.get_current_device()
    key = (device, *arguments_key(args, kwargs))
    variant = _variants.get(kernel, {}).get(key)
    if variant is None:
        compiled = kernel[grid](*args, **kwargs)
        variant = _variant(kernel, compiled, len(args), kwargs)
        if variant is not None:
            _variants.setdefault(kernel, {})[key] = variant
        return
    sizes = (*grid, 1, 1)
    variant.launcher(sizes[0], sizes[1], sizes[2], driver.active.get_current_stream(device), variant.function,
                     variant.packed_metadata, None, enter_hook, exit_hook, *args, *variant.tail)


def _hooked(hook) -> bool:
    """Whether a launch hook would run: a chain (triton 3.6, 3.9) with calls in it, or anything else."""
    return hook is not None and getattr(hook, "calls", True) != []


def arguments_key(args: tuple, kwargs: dict) -> tuple:
    """A launch's arguments as the key takes them: each positional one's ``argument_key``, and the
    keyword arguments (constexprs and options) by name and value."""
    return tuple(map(argument_key, args)), tuple(kwargs.items())


def argument_key(value) -> Any:
    """What Triton specializes a positional argument on, or more (the module's docstring)."""
    kind = type(value)
    if kind is int:  # (the commonest first: a key is built at every launch)
        return value == 1, value % 16 == 0, -2**31 <= value < 2**31, value >= 2**63
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if kind is float:
        return float
    return kind, value  # bools (u1) and None by value, or a constexpr given by position


def _variant(kernel, compiled, positional: int, kwargs: dict) -> _Variant | None:
    """What to launch ``compiled`` with again, or None where the key cannot fix the arguments that follow
    the positional ones: a runtime parameter given by keyword or left to its default."""
    if not hasattr(compiled, "packed_metadata") or getattr(compiled, "function", None) is None:
        return None  # (not a loaded compiled kernel: another triton's return value)
    tail = []
    for param in kernel.params[positional:]:
        if not param.is_constexpr:
            return None
        if param.name in kwargs:
            tail.append(kwargs[param.name])
        elif param.has_default:
            tail.append(param.default)
        else:
            return None
    return _Variant(compiled.run, compiled.function, compiled.packed_metadata, tuple(tail))
