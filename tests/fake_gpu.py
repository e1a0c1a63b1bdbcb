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
class Record:
    """What the fake GPU saw: launches per kernel name, and each compiled kernel's options."""
    launches: Counter = field(default_factory=Counter)
    fp_fusion: dict = field(default_factory=dict)  # kernel name -> set of enable_fp_fusion values compiled
    shared_bytes: dict = field(default_factory=dict)  # kernel name -> most shared memory of its compiles
    # kernel name -> most registers a thread and most stack a thread (spills and local arrays) of its
    # compiles, from cuobjdump (absent without Triton's CUDA tools)
    registers: dict = field(default_factory=dict)
    stack_bytes: dict = field(default_factory=dict)
    # each compiled variant, "name warps=.. stages=.. {constexprs}" -> (registers, stack bytes, shared bytes)
    variants: dict = field(default_factory=dict)


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) a thread of the cubin's kernel takes, as cuobjdump reports them."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", str(path)], capture_output=True, text=True,
                               check=True).stdout
    return int(re.search(r"REG:(\d+)", usage).group(1)), int(re.search(r"STACK:(\d+)", usage).group(1))


class _Utils:
    def __init__(self, record: Record):
        self.record = record
        self.compiling = ("", 0)  # the variant whose launcher was made last, and its shared memory

    def load_binary(self, name, cubin, shared, device):
        """(module, function, registers, spills, most threads a program) as the CUDA driver reports them:
        the most threads are what the SM's registers hold at the kernel's registers a thread (allocated
        by 8 a thread, by warp), which Triton compares with the launch's warps."""
        if not CUOBJDUMP.exists():
            return 1, 1, 0, 0, 1024
        registers, stack = resource_usage(cubin)
        self.record.registers[name] = max(self.record.registers.get(name, 0), registers)
        self.record.stack_bytes[name] = max(self.record.stack_bytes.get(name, 0), stack)
        variant, shared_bytes = self.compiling
        self.record.variants[variant] = (registers, stack, shared_bytes)
        allocated = max(8, -(-registers // 8) * 8)
        return 1, 1, registers, 0, min(1024, SM_REGISTERS // (allocated * 32) * 32)

    @staticmethod
    def get_device_properties(device):
        return {"max_shared_mem": H200_SHARED_BYTES, "multiprocessor_count": H200_SMS}


class _Driver:
    """The parts of Triton's active driver that compiling and launching use."""

    def __init__(self, record: Record):
        self.record = record
        self.utils = _Utils(record)

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
        self.utils.compiling = (f"{name} warps={metadata.num_warps} stages={metadata.num_stages} {constexprs}",
                                metadata.shared)
        self.record.fp_fusion.setdefault(name, set()).add(metadata.enable_fp_fusion)
        self.record.shared_bytes[name] = max(self.record.shared_bytes.get(name, 0), metadata.shared)

        def launch(grid_x, grid_y, grid_z, *args):
            grid = (grid_x, grid_y, grid_z)
            if any(size > limit for size, limit in zip(grid, CUDA_GRID_LIMITS)):
                raise RuntimeError(f"{name}: a grid of {grid} programs passes CUDA's limits {CUDA_GRID_LIMITS}")
            self.record.launches[name] += 1
        return launch


def install() -> Record:
    """Makes the fake GPU Triton's active driver for the rest of the process; returns its record."""
    record = Record()
    driver.set_active(_Driver(record))
    return record
