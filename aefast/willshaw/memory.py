"""WillshawMemory: a bit-packed binary associative memory (Willshaw, Buneman and Longuet-Higgins 1969).

Storing a pair (x, y) sets w_ij = 1 wherever y_i x_j = 1 (the binary Hebb rule). Retrieval computes
each output unit's dendritic sum s_i = sum_j w_ij x_j and fires the units with s_i >= T. The matrix
is packed 64 synapses to a word (about n_in * n_out / 8 bytes) and kept transposed, one bit-row of
output units per input unit, so a cue with M ones reads only M rows.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Optional

import torch
from torch import Tensor

from aefast import _backends
from aefast._buffers import empty_on_huge_pages
from aefast._checks import check_device, is_int
from aefast.willshaw import memory_file, ops, reference
from aefast.willshaw.patterns import IndexPatterns, PatternRows, from_dense, from_indices

MAX_UNITS = reference.MAX_UNITS  # units per side at most
_THRESHOLD_CODES = {"hard": reference.HARD, "soft": reference.SOFT, "topk": reference.TOPK}


class WillshawMemory:
    """A Willshaw associative memory of ``n_in`` input and ``n_out`` output units.

    ``n_out=None`` makes an auto-associative memory (n_out = n_in). ``device`` holds the bit matrix;
    ``backend`` forces one backend for this memory (else ``aefast.use_backend``/``AEFAST_BACKEND``/auto).

    Threads: stores (and ``clear``, ``save``) are serialized by the memory's lock, so several threads
    may store into one memory and lose nothing. Retrievals take no lock and may run from several threads
    at once (they only read). A retrieval that runs while another thread stores may see some of that
    store's pairs and not others; finish the store first when that matters.
    (tests/willshaw/test_concurrency.py)
    """

    def __init__(self, n_in: int, n_out: Optional[int] = None, *, device: str | torch.device = "cpu",
                 backend: Optional[str] = None):
        n_in = _check_units(n_in, "n_in")
        n_out = n_in if n_out is None else _check_units(n_out, "n_out")
        device = check_device(device)
        if backend is not None:
            if backend not in _backends.BACKEND_NAMES:
                raise ValueError(f"backend must be one of {_backends.BACKEND_NAMES} or None, got {backend!r}")
            why = _backends.can_run(backend, device) if _backends.has_kernel(ops.STORE, backend) else \
                "it has no Willshaw kernels"
            if why is not True:
                raise _backends.BackendUnavailableError(f"backend {backend!r} cannot hold a memory on {device}: {why}")
        needed = n_in * reference.words_per_row(n_out) * 8
        available = _available_bytes(device)
        if needed > available:
            raise MemoryError(f"WillshawMemory(n_in={n_in}, n_out={n_out}) needs {needed} bytes "
                              f"({needed / 2**30:.2f} GiB) for its bit matrix; {device} has {available} bytes "
                              f"({available / 2**30:.2f} GiB) available")
        self._n_in, self._n_out, self._device, self._backend = n_in, n_out, device, backend
        self._matrix = _zeroed_matrix(n_in, reference.words_per_row(n_out), device)
        self._n_stored = 0
        self._store_lock = threading.Lock()

    # --- sizes and state -----------------------------------------------------------------------------

    @property
    def n_in(self) -> int:
        return self._n_in

    @property
    def n_out(self) -> int:
        return self._n_out

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def backend(self) -> Optional[str]:
        """The backend forced for this memory, or None (the global choice)."""
        return self._backend

    @property
    def nbytes(self) -> int:
        """Bytes of the packed matrix: n_in rows of ceil(n_out / 64) 8-byte words."""
        return self._matrix.numel() * 8

    @property
    def n_stored(self) -> int:
        """Pairs stored since creation or the last ``clear()`` (repeats count again)."""
        return self._n_stored

    @property
    def density(self) -> float:
        """The fraction of synapses set to 1 (p1 of the storage analysis)."""
        return self._count_ones() / (self._n_in * self._n_out)

    def _count_ones(self) -> int:
        """The synapses set to 1, counted by this memory's backend."""
        with self._backend_scope():
            return ops.count_ones(self._matrix)

    def packed_matrix(self) -> Tensor:
        """A copy of the packed matrix (int64, n_in x ceil(n_out / 64)): bit i of row j is w_ij."""
        return self._matrix.clone()

    def clear(self) -> None:
        """Forget every stored pair."""
        with self._store_lock:
            self._matrix.zero_()
            self._n_stored = 0

    def __repr__(self) -> str:
        return (f"WillshawMemory(n_in={self._n_in}, n_out={self._n_out}, device={str(self._device)!r}, "
                f"n_stored={self._n_stored}, nbytes={self.nbytes})")

    # --- devices, copies and pickling -------------------------------------------------------------------
    # A copy holds its own bits, counter and lock, whether by to(), copy.copy, copy.deepcopy or pickle (and
    # so torch.save): a copy sharing the bits would store into them without the original's lock, and its
    # n_stored would go apart from theirs. Each is a snapshot taken under the store lock, so a copy made
    # while another thread stores holds whole calls' pairs only.

    def to(self, device: str | torch.device) -> "WillshawMemory":
        """This memory on ``device``: itself when it is there already, else a copy there (refused, as the
        constructor refuses, when the device lacks the room or the memory's backend cannot run there)."""
        device = check_device(device)
        return self if device == self._device else self._copy_to(device)

    def _copy_to(self, device: torch.device) -> "WillshawMemory":
        copied = WillshawMemory(self._n_in, self._n_out, device=device, backend=self._backend)
        with self._store_lock:
            copied._matrix.copy_(self._matrix)
            copied._n_stored = self._n_stored
        return copied

    def __copy__(self) -> "WillshawMemory":
        return self._copy_to(self._device)

    def __deepcopy__(self, memo: dict) -> "WillshawMemory":
        return self.__copy__()  # nothing else in a memory is mutable

    def __getstate__(self) -> dict:
        with self._store_lock:
            return {"n_in": self._n_in, "n_out": self._n_out, "backend": self._backend, "n_stored": self._n_stored,
                    "matrix": self._matrix.clone()}

    def __setstate__(self, state: dict) -> None:
        matrix, n_stored = state["matrix"], state["n_stored"]
        if not isinstance(matrix, Tensor):
            raise ValueError(f"the pickled memory's matrix must be a tensor, got {type(matrix).__name__}")
        # Through the constructor: the sizes are checked again and the bits land on fresh (huge) pages. On
        # the matrix's device, so that torch.load's map_location moves the memory as it moves tensors.
        self.__init__(state["n_in"], state["n_out"], device=matrix.device, backend=state["backend"])
        if matrix.dtype != torch.int64 or matrix.shape != self._matrix.shape:
            raise ValueError(f"the pickled memory's matrix must be int64 of shape {tuple(self._matrix.shape)}, got "
                             f"{matrix.dtype} {tuple(matrix.shape)}")
        if not is_int(n_stored) or n_stored < 0:
            raise ValueError(f"the pickled memory's n_stored must be an int >= 0, got {n_stored!r}")
        if reference.has_bits_past(matrix, self._n_out):
            raise ValueError(f"the pickled memory's matrix sets bits past unit n_out - 1 = {self._n_out - 1}")
        self._matrix.copy_(matrix)
        self._n_stored = int(n_stored)

    # --- storage -------------------------------------------------------------------------------------

    def store(self, x: Tensor, y: Optional[Tensor] = None) -> None:
        """Store the pairs (x[b], y[b]): dense 0/1 tensors (B, n_in) and (B, n_out). ``y=None`` stores x
        with itself (auto-association)."""
        x_rows = from_dense(x, self._n_in, "x", self._device)
        y_rows = x_rows if y is None else from_dense(y, self._n_out, "y", self._device)
        self._store(x_rows, y_rows, y is None, "x", "y")

    def store_indices(self, x_idx: IndexPatterns, y_idx: Optional[IndexPatterns] = None) -> None:
        """Store the pairs given as active positions: (B, M) int64 tensors, or lists of 1-D tensors when
        rows have different numbers of ones. ``y_idx=None`` stores x with itself."""
        x_rows = from_indices(x_idx, "x_idx", self._device)
        y_rows = x_rows if y_idx is None else from_indices(y_idx, "y_idx", self._device)
        # The op checks the positions (range, repeats) before it stores anything, naming them as given.
        with ops.pattern_names(x="x_idx", y="x_idx" if y_idx is None else "y_idx"):
            self._store(x_rows, y_rows, y_idx is None, "x_idx", "y_idx")

    def _store(self, x_rows: PatternRows, y_rows: PatternRows, auto: bool, x_name: str, y_name: str) -> None:
        if auto and self._n_in != self._n_out:
            raise ValueError(f"{y_name} is required: this memory is hetero-associative "
                             f"(n_in={self._n_in}, n_out={self._n_out})")
        if x_rows.rows != y_rows.rows:
            raise ValueError(f"{x_name} and {y_name} must hold the same number of patterns, "
                             f"got {x_rows.rows} and {y_rows.rows}")
        with self._store_lock, self._backend_scope():
            ops.store(self._matrix, self._n_out, x_rows.values, x_rows.offsets, y_rows.values, y_rows.offsets)
            self._n_stored += x_rows.rows

    # --- retrieval -----------------------------------------------------------------------------------

    def sums(self, x: Tensor) -> Tensor:
        """(B, n_out) int32 dendritic sums s_i = sum_j w_ij x_j of dense 0/1 cues x (B, n_in)."""
        cue = from_dense(x, self._n_in, "x", self._device)
        return self._unbatch(self._sums_of(cue), cue)

    def sums_indices(self, x_idx: IndexPatterns) -> Tensor:
        """Like ``sums`` for cues given as active positions."""
        cue = self._index_cue(x_idx)
        with ops.pattern_names(cue="x_idx"):
            return self._unbatch(self._sums_of(cue), cue)

    def retrieve(self, x: Tensor, threshold: str | int = "hard", *, k: Optional[int] = None) -> Tensor:
        """(B, n_out) bool answers to dense 0/1 cues x (B, n_in): the units whose sum reaches T.

        ``threshold``: ``"hard"`` (T = the cue's number of ones; an empty cue retrieves nothing),
        ``"soft"`` (T = the cue's largest sum; nothing when that is 0), an int T >= 0 (sums >= T), or
        ``"topk"`` with ``k`` (the k largest sums, ties to the lower index).
        """
        code, value = _threshold(threshold, k, self._n_out)
        cue = from_dense(x, self._n_in, "x", self._device)
        return self._unbatch(self._answer_of(cue, code, value), cue)

    def retrieve_indices(self, x_idx: IndexPatterns, threshold: str | int = "hard", *,
                         k: Optional[int] = None, flat: bool = False) -> list[Tensor] | Tensor | tuple[Tensor, Tensor]:
        """Like ``retrieve`` for cues given as active positions; each answer is the sorted int64 indices of
        the units that fire (a list of B tensors, or one tensor for a single cue).

        ``flat=True`` returns every answer in one piece instead, ``(values, offsets)``: answer b is
        ``values[offsets[b]:offsets[b + 1]]``. For large batches: making B tensors costs about a
        microsecond each on the host, more than the GPU takes to answer a cue."""
        code, value = _threshold(threshold, k, self._n_out)
        check_flat(flat)
        cue = self._index_cue(x_idx)
        with self._backend_scope(), ops.pattern_names(cue="x_idx"):
            values, offsets = ops.retrieve_indices(self._matrix, self._n_out, cue.values, cue.offsets, code, value)
        return answers_of(values, offsets, cue.single, flat)

    def _sums_of(self, cue: PatternRows) -> Tensor:
        """(rows, n_out) int32 sums of checked cue rows (on this memory's device)."""
        with self._backend_scope():
            return ops.sums(self._matrix, self._n_out, cue.values, cue.offsets)

    def _answer_of(self, cue: PatternRows, code: int, value: int) -> Tensor:
        """(rows, n_out) bool answers of checked cue rows under threshold ``code``."""
        with self._backend_scope():
            return ops.retrieve(self._matrix, self._n_out, cue.values, cue.offsets, code, value)

    def _index_cue(self, x_idx: IndexPatterns) -> PatternRows:
        """The cue rows of ``x_idx``; their positions are checked by the op (under pattern_names)."""
        return from_indices(x_idx, "x_idx", self._device)

    @staticmethod
    def _unbatch(answer: Tensor, cue: PatternRows) -> Tensor:
        return answer[0] if cue.single else answer

    def _backend_scope(self):
        return contextlib.nullcontext() if self._backend is None else _backends.use_backend(self._backend)

    # --- files ---------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the memory to ``path`` (safetensors with a format version and a SHA-256 of the bits),
        replacing an existing file atomically."""
        with self._store_lock:
            memory_file.write(path, self._matrix, self._n_in, self._n_out, self._n_stored)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
             backend: Optional[str] = None) -> "WillshawMemory":
        """A memory saved by ``save``; raises WillshawFileError when the file is damaged or not one."""
        sizes = memory_file.read_sizes(path)
        if "shard_rank" in sizes:
            raise memory_file.WillshawFileError(
                f"{path} is shard {sizes['shard_rank']} of {sizes['shard_count']} of a ShardedWillshawMemory; "
                "load the shards with ShardedWillshawMemory.load")
        memory = cls(sizes["n_in"], sizes["n_out"], device=device, backend=backend)
        memory_file.read_matrix_into(path, sizes, memory._matrix)  # block by block: no second copy in memory
        memory._n_stored = sizes["n_stored"]
        return memory


def check_flat(flat) -> None:
    """retrieve_indices' ``flat``, checked before any work (and, sharded, before any collective)."""
    if not isinstance(flat, bool):
        raise TypeError(f"flat must be True or False, got {flat!r}")


def answers_of(values: Tensor, offsets: Tensor, single: bool, flat: bool):
    """retrieve_indices' answer from its rows: (values, offsets) when ``flat``, else one tensor per cue."""
    if flat:
        return values, offsets
    answers = list(torch.split(values, offsets.diff().tolist()))
    return answers[0] if single else answers


def _check_units(value, name: str) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= value <= MAX_UNITS:
        raise ValueError(f"{name} must be in [1, {MAX_UNITS}], got {value}")
    return int(value)


def _threshold(threshold, k, n_out: int) -> tuple[int, int]:
    if isinstance(threshold, bool):
        raise TypeError("threshold must be 'hard', 'soft', 'topk' or an int, got a bool")
    if is_int(threshold):
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 when it is an int, got {threshold}")
        if k is not None:
            raise ValueError("k goes with threshold='topk' only")
        # No sum exceeds MAX_UNITS, so a larger T gives the same (empty) answer and fits the ops' int64.
        return reference.FIXED, int(min(threshold, MAX_UNITS + 1))
    if not isinstance(threshold, str):
        raise TypeError(f"threshold must be 'hard', 'soft', 'topk' or an int, got {type(threshold).__name__}")
    if threshold not in _THRESHOLD_CODES:
        raise ValueError(f"threshold must be 'hard', 'soft', 'topk' or an int, got {threshold!r}")
    if threshold == "topk":
        if not is_int(k):
            raise TypeError(f"threshold='topk' needs k, an int, got {k!r}")
        if not 1 <= k <= n_out:
            raise ValueError(f"k must be in [1, n_out={n_out}], got {k}")
        return reference.TOPK, int(k)
    if k is not None:
        raise ValueError("k goes with threshold='topk' only")
    return _THRESHOLD_CODES[threshold], 0


def _zeroed_matrix(rows: int, words: int, device: torch.device) -> Tensor:
    # Rows are read at random: with 2 MiB pages a row costs no TLB miss (see the kernels' figures).
    # Never an inference tensor: a memory made inside torch.inference_mode() is stored into after it,
    # and torch refuses in-place updates of inference tensors outside the mode.
    with torch.inference_mode(False):
        return empty_on_huge_pages(rows, words, dtype=torch.int64, device=device).zero_()


def _available_bytes(device: torch.device) -> int:
    """Memory that a new allocation on ``device`` can take now."""
    if device.type == "cuda":
        # Blocks torch's caching allocator holds but no tensor uses count too: an allocation that does not
        # fit frees them and retries. Without them, a memory made after a deleted one (the scaling
        # experiment's growing n) was refused for room the old one's cached blocks still held.
        cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached_unused
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
