"""Triton kernels as an H100/H200 gets them: compiled ahead of time for sm_90 on any machine (Triton's
bundled ptxas and cuobjdump run without a GPU). The interpreter, which runs the kernels on this CPU,
accepts code the compiler rejects and says nothing of spills; these checks see both.

The compilation must run in a process without TRITON_INTERPRET (the interpreter replaces the kernels by
Python functions), so a test module runs itself as a child: ``compiled_in_child(__file__)`` runs the
module's ``__main__``, which prints one JSON line."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton

from aefast import _backends

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
ROOT = Path(__file__).resolve().parents[1]


def compile_for_sm90(kernel, signature: dict, constants: dict, warps: int, stages: int = 3,
                     divisible: tuple[str, ...] = ()) -> dict:
    """{"stack": bytes of per-thread stack (spills and local arrays), "spills": bytes of spill stores,
    "registers": per thread, "shared": bytes of shared memory per program, "tensor_cores": whether its
    PTX has a (wg)mma instruction} of ``kernel``
    compiled for sm_90. ``signature`` gives every non-constexpr parameter's type ("*i64", "i32", ...);
    ``stages`` is the launch's num_stages (3, Triton's default for CUDA, when a launcher gives none).

    Compiled as a launch with torch's tensors gets it: Triton specializes a kernel on 16-byte aligned
    pointers and on integers divisible by 16 (``divisible`` names those), and vectorizes accesses from
    it, which changes the registers a kernel takes. Compiled afresh (not from Triton's cache) so that
    ptxas's report of spills comes with it."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    full_signature = {**signature, **{name: "constexpr" for name in constants}}
    aligned = {(index,): [["tt.divisibility", 16]] for index, name in enumerate(kernel.arg_names)
               if name in signature and (signature[name].startswith("*") or name in divisible)}
    ptxas_log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(ptxas_log):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True  # printed by Triton once ptxas has run
        compiled = triton.compile(ASTSource(fn=kernel, signature=full_signature, constexprs=constants, attrs=aligned),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages,
                                                                          **_backends.TRITON_LAUNCH})
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
    return {"stack": int(re.search(r"STACK:(\d+)", usage).group(1)),
            "spills": int(re.search(r"(\d+) bytes spill stores", ptxas_log.getvalue()).group(1)),
            "registers": int(re.search(r"REG:(\d+)", usage).group(1)),
            "shared": compiled.metadata.shared,
            "tensor_cores": re.search(r"\b(wgmma|mma)\.", compiled.asm["ptx"]) is not None}


def compiled_in_child(module_file: str, *args: str) -> dict:
    """Runs ``module_file`` as a script (with ``args``) without TRITON_INTERPRET, with this checkout's
    aefast (which tests/conftest.py puts on every child's PYTHONPATH), and returns the JSON its last line
    prints."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, module_file, *args], capture_output=True, text=True, env=env, timeout=600,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
