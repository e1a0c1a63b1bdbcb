"""A GPU that Triton compiles for but never runs: Triton's own launch path (argument binding, specialization,
the sm_90 compile, its cache, autotuning, the limits of shared memory, registers, threads and grid)
on a machine without one.

``install()`` makes a stand-in the active driver (``triton.runtime.driver.set_active``, an interface 3.6
and 3.9 share) and returns the record of what was compiled and launched. A launch runs nothing: buffers
keep what they held, so a workload on it must not depend on a kernel's output. An autotuner's timing
runs each config once and calls every config equal (the first wins). Only for a process that runs no
other Triton code: tests start it as a child without TRITON_INTERPRET (tests/sm90.py's
``compiled_in_child``), as the interpreter replaces the kernels when a module defines them."""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver

# An H100's and H200's: 227 KiB of shared memory a program at most, 132 SMs.
H200_SHARED_BYTES = 232448
H200_SMS = 132
# The most programs a CUDA grid holds along x, y and z: a launch past them fails on a GPU.
CUDA_GRID_LIMITS = (2**31 - 1, 2**16 - 1, 2**16 - 1)
# An SM's registers, which a program's threads share: a kernel taking many a thread runs fewer threads.
SM_REGISTERS = 65536
CUOBJDUMP = Path(__import__("triton").__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


@dataclass
class Variant:
    """One compiled kernel: its name, whether it asked for FMA contraction, its shared memory a program,
    (from cuobjdump; None without Triton's CUDA tools) its registers and stack (spills and local arrays)
    a thread, and how often it was launched (a variant may be compiled and loaded and never launched:
    aefast's narrow launchers refuse one that spills)."""
    name: str
    fp_fusion: bool
    shared_bytes: int
    registers: int | None = None
    stack_bytes: int | None = None
    launches: int = 0


@dataclass
class Record:
    """What the fake GPU saw: launches per kernel name, and each compiled variant, by
    "name warps=.. stages=.. {constexprs}"."""
    launches: Counter = field(default_factory=Counter)
    variants: dict = field(default_factory=dict)

    def most(self, attribute: str) -> dict:
        """{kernel name: the most ``attribute`` of its launched variants} (variants without it left out)."""
        out = {}
        for variant in self.variants.values():
            value = getattr(variant, attribute)
            if not variant.launches:
                continue
            if value is not None:
                out[variant.name] = max(out.get(variant.name, value), value)
        return out

    def fp_fusion(self) -> dict:
        """{kernel name: the sorted enable_fp_fusion values its variants were compiled with}."""
        out = {}
        for variant in self.variants.values():
            out.setdefault(variant.name, set()).add(variant.fp_fusion)
        return {name: sorted(values) for name, values in out.items()}


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) a thread of the cubin's kernel takes, as cuobjdump reports them."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", str(path)], capture_output=True, text=True,
                               check=True).stdout
    return int(re.search(r"REG:(\d+)", usage).group(1)), int(re.search(r"STACK:(\d+)", usage).group(1))


class _Utils:
    def __init__(self):
        self.compiling = None  # the Variant whose launcher was made last: Triton loads its binary next

    def load_binary(self, name, cubin, shared, device):
        """(module, function, registers, spills, most threads a program) as the CUDA driver reports them:
        the most threads are what the SM's registers hold at the kernel's registers a thread (allocated
        by 8 a thread, by warp), which Triton compares with the launch's warps."""
        if not CUOBJDUMP.exists():
            return 1, 1, 0, 0, 1024
        registers, stack = resource_usage(cubin)
        self.compiling.registers, self.compiling.stack_bytes = registers, stack
        allocated = max(8, -(-registers // 8) * 8)
        # The driver's "spills" are the local memory a thread takes, in 4-byte words (triton's driver.c).
        return 1, 1, registers, stack // 4, min(1024, SM_REGISTERS // (allocated * 32) * 32)

    @staticmethod
    def get_device_properties(device):
        return {"max_shared_mem": H200_SHARED_BYTES, "multiprocessor_count": H200_SMS}


class _Driver:
    """The parts of Triton's active driver that compiling and launching use."""

    def __init__(self, record: Record, check: bool):
        self.record, self.check = record, check
        self.utils = _Utils()

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        def bench(kernel_call, quantiles=None, **_):
            kernel_call()
            return [1.0] * len(quantiles) if quantiles else 1.0
        return bench

    def get_empty_cache_for_benchmark(self):
        return torch.empty(0)

    def clear_cache(self, cache):
        pass

    def launcher_cls(self, src, metadata):
        """The launcher of one compiled kernel: records its options, then counts its launches."""
        name = metadata.name
        constexprs = {src.fn.arg_names[key[0]] if isinstance(key, tuple) else key: value
                      for key, value in src.constants.items()}
        variant = Variant(name, metadata.enable_fp_fusion, metadata.shared)
        self.record.variants[f"{name} warps={metadata.num_warps} stages={metadata.num_stages} {constexprs}"] = variant
        self.utils.compiling = variant

        def launch(grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook,
                   *args):
            grid = (grid_x, grid_y, grid_z)
            if any(size > limit for size, limit in zip(grid, CUDA_GRID_LIMITS)):
                raise RuntimeError(f"{name}: a grid of {grid} programs passes CUDA's limits {CUDA_GRID_LIMITS}")
            if self.check:
                check_arguments(src, args)
            self.record.launches[name] += 1
            variant.launches += 1
        return launch


def check_arguments(src, args: tuple) -> None:
    """Raises unless ``args`` are what the compiled kernel of ``src`` was specialized for, as a GPU's
    launcher would need them (it would read them as that signature says, and not check): one per
    parameter in order, constexprs equal to the compiled constants, each pointer a tensor of its dtype
    and 16-byte aligned where compiled so, each integer of its type's range and divisible by 16 where
    compiled so. Triton's launch path passes them so by construction; aefast's (_triton_launch) must."""
    names = src.fn.arg_names
    if len(args) != len(names):
        raise RuntimeError(f"{src.fn.__name__}: {len(args)} arguments for {len(names)} parameters")
    constants = {key[0] if isinstance(key, tuple) else names.index(key): value for key, value in src.constants.items()}
    divisible = {key[0] for key, attrs in src.attrs.items() if ["tt.divisibility", 16] in attrs}
    ranges = {"i32": (-2**31, 2**31), "i64": (-2**63, 2**63), "u64": (2**63, 2**64)}
    for index, (name, value) in enumerate(zip(names, args)):
        kind = src.signature[name]
        if index in constants:
            ok = value == constants[index] and type(value) is type(constants[index])
        elif kind.startswith("*"):
            ok = (isinstance(value, torch.Tensor) and _POINTER_TYPES.get(value.dtype) == kind
                  and (index not in divisible or value.data_ptr() % 16 == 0))
        elif kind in ranges:
            low, high = ranges[kind]
            ok = (isinstance(value, int) and not isinstance(value, bool) and low <= value < high
                  and (index not in divisible or value % 16 == 0))
        else:
            ok = {"fp32": float, "u1": bool, "i1": bool}.get(kind) is type(value)
        if not ok:
            raise RuntimeError(f"{src.fn.__name__}: argument {name} = {value!r:.60} does not fit the compiled {kind}"
                               f"{' (divisible by 16)' if index in divisible else ''}"
                               f"{f' constant {constants[index]!r}' if index in constants else ''}")


_POINTER_TYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float64: "*fp64",
                  torch.int64: "*i64", torch.int32: "*i32", torch.int16: "*i16", torch.int8: "*i8", torch.uint8: "*u8",
                  torch.bool: "*i1"}


def install(check_arguments: bool = True) -> Record:
    """Makes the fake GPU Triton's active driver for the rest of the process; returns its record. Each
    launch's arguments are held to its compiled kernel's signature (``check_arguments``) unless told
    not to: a host-time profile leaves that out, as a GPU's launcher does no such thing."""
    record = Record()
    driver.set_active(_Driver(record, check_arguments))
    return record


def install_for_aefast(check_arguments: bool = True) -> Record:
    """``install``, and aefast's Triton backend let onto it as onto an H200: Triton on CPU tensors (which the
    fake GPU never reads), programs per device by the H200's SMs, and the MLP tuner's choices as a GPU's
    (every candidate tile and way of taking a weight gradient launched once, the first kept)."""
    from aefast import _backends
    from aefast.mlp import triton_kernels

    record = install(check_arguments)
    _backends.can_run = lambda backend, device: True
    triton_kernels._device_programs = lambda device, per_sm, interpreted: per_sm * H200_SMS
    triton_kernels._tuning_on = lambda device: True
    triton_kernels._time_launch = lambda launch: (launch(), 1.0)[1]
    return record
