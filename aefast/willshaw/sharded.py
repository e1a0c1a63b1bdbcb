"""ShardedWillshawMemory: one Willshaw memory split by output units over the ranks of a torch.distributed
process group (DESIGN.md, "Scale"). Rank r holds the bit-rows of its slice of the output units, all
n_in of them, so a memory too large for one device fits several.

Every method is a collective: all ranks of the group call it, in the same order. The patterns and cues
given on the group's first rank are broadcast (what other ranks pass is ignored; they may pass None),
each rank works on its slice, and every rank receives the whole answer. The soft threshold takes the
largest sum over all slices with a MAX all-reduce; top-k merges each slice's k best.

Failures never hang: a bad argument on the first rank is raised on every rank, ranks that call
different methods (or one retrieval with different thresholds) get an error, and the collectives run in
a group with a timeout.
"""
from __future__ import annotations

import copy
import datetime
import os
import secrets
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from aefast.willshaw import memory_file, ops, reference
from aefast.willshaw.memory import WillshawMemory, _check_units, _threshold, answers_of, check_flat
from aefast.willshaw.patterns import IndexPatterns, PatternRows, from_dense, from_indices

DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)


class ShardedWillshawMemory:
    """A Willshaw memory of ``n_in`` x ``n_out`` units whose output units are split across the ranks of
    ``process_group`` (default: every process). Same methods as :class:`WillshawMemory`.

    ``device``: where this rank's slice lives (default: the current CUDA device with NCCL, else the CPU).
    ``timeout``: the collectives' time limit. Given a value, the memory makes its own group over every
    process with that timeout (a collective: every process constructs the memory); ``None`` uses
    ``process_group`` as it is, with the timeout it was made with. A ``process_group`` of some of the
    processes is always used as it is (only its ranks construct the memory, and a group of their own
    would need the others too): make it with the timeout it needs, ``dist.new_group(ranks, timeout=...)``.
    """

    def __init__(self, n_in: int, n_out: Optional[int] = None, *, process_group=None,
                 device: Optional[str | torch.device] = None, backend: Optional[str] = None,
                 timeout: Optional[datetime.timedelta] = DEFAULT_TIMEOUT):
        n_in = _check_units(n_in, "n_in")
        n_out = n_in if n_out is None else _check_units(n_out, "n_out")
        self._group = _communication_group(process_group, timeout)
        self._rank, self._world = dist.get_rank(self._group), dist.get_world_size(self._group)
        self._source = dist.get_global_rank(self._group, 0)
        nccl = dist.get_backend(self._group) == "nccl"
        self._comm_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        # Patterns are taken where the group broadcasts them from, which with gloo is the CPU even for
        # slices on a GPU: the refusal of a tensor elsewhere says so.
        self._comm_place = f"the device {dist.get_backend(self._group)} broadcasts from,"
        device = device if device is not None else self._comm_device
        every = _all_gather_object(self._group, (n_in, n_out))
        if len(set(every)) != 1:
            raise ValueError("ranks disagree on the memory's sizes: " +
                             ", ".join(f"rank {r} (n_in={a}, n_out={b})" for r, (a, b) in enumerate(every)))
        if n_out < self._world:
            raise ValueError(f"n_out={n_out} must be at least the number of ranks ({self._world})")
        self._n_in, self._n_out = n_in, n_out
        self._slices = [_slice(n_out, self._world, rank) for rank in range(self._world)]
        self._unit_start, self._unit_stop = self._slices[self._rank]
        self._local = _agreed(self._group, lambda: WillshawMemory(n_in, self._unit_stop - self._unit_start,
                                                                  device=device, backend=backend))

    # --- sizes and state -----------------------------------------------------------------------------

    @property
    def n_in(self) -> int:
        return self._n_in

    @property
    def n_out(self) -> int:
        return self._n_out

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world

    @property
    def units(self) -> tuple[int, int]:
        """This rank's slice [start, stop) of the output units."""
        return self._unit_start, self._unit_stop

    @property
    def device(self) -> torch.device:
        """Where this rank's slice lives."""
        return self._local.device

    @property
    def local(self) -> WillshawMemory:
        """This rank's slice, a WillshawMemory of n_in x (stop - start) units."""
        return self._local

    @property
    def n_stored(self) -> int:
        return self._local.n_stored

    @property
    def nbytes(self) -> int:
        """Bytes of this rank's slice of the matrix."""
        return self._local.nbytes

    @property
    def density(self) -> float:
        ones = torch.tensor([self._local._count_ones()], dtype=torch.int64, device=self._comm_device)
        self._collective("density", lambda: dist.all_reduce(ones, group=self._group))
        return int(ones) / (self._n_in * self._n_out)

    def clear(self) -> None:
        self._collective("clear", lambda: None)
        self._local.clear()

    def __repr__(self) -> str:
        return (f"ShardedWillshawMemory(n_in={self._n_in}, n_out={self._n_out}, rank={self._rank} of {self._world}, "
                f"units=[{self._unit_start}, {self._unit_stop}), n_stored={self.n_stored})")

    # --- copies and pickling --------------------------------------------------------------------------
    # A copy (copy.copy or copy.deepcopy) shares the process group and holds its own copy of this rank's
    # slice. Copying is local, no collective: every rank copies its own, as with every method. Pickling
    # is refused, since a process group does not travel to another process: save() and load() do.

    def __copy__(self) -> "ShardedWillshawMemory":
        copied = object.__new__(ShardedWillshawMemory)
        copied.__dict__.update(self.__dict__)
        copied._local = copy.copy(self._local)
        return copied

    def __deepcopy__(self, memo: dict) -> "ShardedWillshawMemory":
        return self.__copy__()

    def __getstate__(self):
        raise TypeError("a ShardedWillshawMemory is bound to its process group and cannot be pickled: save() "
                        "writes each rank's shard and ShardedWillshawMemory.load() reads them; its .local, this "
                        "rank's slice, is a WillshawMemory that pickles")

    # --- storage -------------------------------------------------------------------------------------

    def store(self, x: Optional[Tensor], y: Optional[Tensor] = None) -> None:
        """Store the dense 0/1 pairs given on the first rank (see WillshawMemory.store)."""
        def rows():
            return self._dense_rows(x, self._n_in, "x"), (None if y is None else self._dense_rows(y, self._n_out, "y"))
        self._store("store", rows, "x", "y")

    def store_indices(self, x_idx: Optional[IndexPatterns], y_idx: Optional[IndexPatterns] = None) -> None:
        """Store the pairs given as active positions on the first rank (see WillshawMemory.store_indices)."""
        def rows():
            x_rows = self._index_rows(x_idx, self._n_in, "x_idx")
            return x_rows, (None if y_idx is None else self._index_rows(y_idx, self._n_out, "y_idx"))
        self._store("store_indices", rows, "x_idx", "y_idx")

    def _store(self, op: str, make_rows, x_name: str, y_name: str) -> None:
        def checked():
            x_rows, y_rows = make_rows()
            if y_rows is None and self._n_in != self._n_out:
                raise ValueError(f"{y_name} is required: this memory is hetero-associative "
                                 f"(n_in={self._n_in}, n_out={self._n_out})")
            if y_rows is not None and x_rows.rows != y_rows.rows:
                raise ValueError(f"{x_name} and {y_name} must hold the same number of patterns, "
                                 f"got {x_rows.rows} and {y_rows.rows}")
            return [x_rows, x_rows if y_rows is None else y_rows]
        x_rows, y_rows = self._broadcast_rows(op, checked)
        device = self._local.device
        local_y = _slice_rows(y_rows, self._unit_start, self._unit_stop)
        self._local._store(_to(x_rows, device), _to(local_y, device), False, x_name, y_name)

    # --- retrieval -----------------------------------------------------------------------------------

    def sums(self, x: Optional[Tensor]) -> Tensor:
        """(B, n_out) int32 dendritic sums of the dense cues given on the first rank."""
        cue = self._broadcast_rows("sums", lambda: [self._dense_rows(x, self._n_in, "x")])[0]
        return _unbatch(self._gather_columns(self._local_sums(cue)), cue)

    def sums_indices(self, x_idx: Optional[IndexPatterns]) -> Tensor:
        cue = self._broadcast_rows("sums_indices", lambda: [self._index_rows(x_idx, self._n_in, "x_idx")])[0]
        return _unbatch(self._gather_columns(self._local_sums(cue)), cue)

    def retrieve(self, x: Optional[Tensor], threshold: str | int = "hard", *, k: Optional[int] = None) -> Tensor:
        """(B, n_out) bool answers to the dense cues given on the first rank (see WillshawMemory.retrieve)."""
        code, value = _threshold(threshold, k, self._n_out)
        cue = self._broadcast_rows(_retrieval_call("retrieve", code, value),
                                   lambda: [self._dense_rows(x, self._n_in, "x")])[0]
        if code == reference.TOPK:
            values, offsets = self._top_k(cue, value)
            return _unbatch(reference.dense(values, offsets, self._n_out), cue)
        return _unbatch(self._gather_columns(self._local_answer(cue, code, value)), cue)

    def retrieve_indices(self, x_idx: Optional[IndexPatterns], threshold: str | int = "hard", *,
                         k: Optional[int] = None, flat: bool = False) -> list[Tensor] | Tensor | tuple[Tensor, Tensor]:
        """Like ``retrieve`` for cues given as active positions; sorted int64 indices per cue, or with
        ``flat=True`` all of them as (values, offsets), as WillshawMemory.retrieve_indices."""
        code, value = _threshold(threshold, k, self._n_out)
        check_flat(flat)
        cue = self._broadcast_rows(_retrieval_call("retrieve_indices", code, value, flat=flat),
                                   lambda: [self._index_rows(x_idx, self._n_in, "x_idx")])[0]
        if code == reference.TOPK:
            values, offsets = self._top_k(cue, value)
        else:
            values, offsets = reference.dense_to_rows(self._local_answer(cue, code, value))
            values, offsets = self._gather_rows(values + self._unit_start, offsets)
        return answers_of(values, offsets, cue.single, flat)

    def _dense_rows(self, x, width: int, name: str) -> PatternRows:
        return from_dense(x, width, name, self._comm_device, self._comm_place)

    def _index_rows(self, x_idx, width: int, name: str) -> PatternRows:
        rows = from_indices(x_idx, name, self._comm_device, self._comm_place)
        ops.check_patterns(rows.values, rows.offsets, width, name)
        return rows

    def _local_sums(self, cue: PatternRows) -> Tensor:
        return self._local._sums_of(_to(cue, self._local.device))

    def _local_answer(self, cue: PatternRows, code: int, value: int) -> Tensor:
        """This slice's bool answer; the soft threshold with the largest sum over every slice."""
        if code == reference.SOFT:
            unit_sums = self._local_sums(cue)
            best = unit_sums.max(1).values.to(self._comm_device)
            dist.all_reduce(best, op=dist.ReduceOp.MAX, group=self._group)
            best = best.to(unit_sums.device).unsqueeze(1)
            return (unit_sums >= best) & (best > 0)
        return self._local._answer_of(_to(cue, self._local.device), code, value)

    def _top_k(self, cue: PatternRows, k: int) -> tuple[Tensor, Tensor]:
        """The k largest sums over every slice, ties to the lower index: each slice offers its own k best."""
        unit_sums = self._local_sums(cue).to(self._comm_device)
        offered = min(k, unit_sums.shape[1])
        # Stable descending sort: equal sums keep the lower unit first.
        order = torch.sort(unit_sums, dim=1, descending=True, stable=True).indices[:, :offered]
        best_sums = torch.gather(unit_sums, 1, order).to(torch.int64)
        candidates = torch.stack([best_sums, order + self._unit_start], -1)  # (B, offered, 2)
        padding = torch.tensor([-1, self._n_out], device=self._comm_device)  # below any sum: never chosen
        candidates = torch.cat([candidates, padding.expand(cue.rows, k - offered, 2)], 1)
        gathered = [torch.empty_like(candidates) for _ in range(self._world)]
        dist.all_gather(gathered, candidates, group=self._group)
        # (B, world * k, 2): slices in unit order, each slice's equal sums in unit order, so the stable
        # sort's equal sums keep the lower unit first over all slices too.
        every = torch.cat(gathered, 1)
        chosen = torch.sort(every[..., 0], dim=1, descending=True, stable=True).indices[:, :k]
        units = torch.gather(every[..., 1], 1, chosen).sort(1).values
        return units.flatten(), torch.arange(0, units.numel() + 1, k, device=self._comm_device)

    # --- collectives ---------------------------------------------------------------------------------

    def _collective(self, op: str, run):
        """Check that every rank is in ``op``, then run it."""
        self._check_same_call(op, _broadcast_object(self._group, self._source, op))
        return run()

    def _check_same_call(self, op: str, first_rank_op: str) -> None:
        if first_rank_op != op:
            raise RuntimeError(f"rank {self._rank} called {op} while the first rank called {first_rank_op}: every "
                               "rank must make the same calls, with the same thresholds, in the same order")

    def _broadcast_rows(self, op: str, make_rows) -> list[PatternRows]:
        """``make_rows()`` on the first rank, broadcast to every rank; an error it raises is raised on all."""
        header, failure = [None], None
        if self._rank == 0:
            try:
                rows = make_rows()
                header = [(op, None, [(r.values.numel(), r.offsets.numel(), r.single) for r in rows])]
            except Exception as error:  # any failure, told to every rank: none waits on a broadcast to come
                failure, header = error, [(op, (type(error).__name__, str(error)), None)]
        dist.broadcast_object_list(header, src=self._source, group=self._group)
        their_op, error, shapes = header[0]
        self._check_same_call(op, their_op)
        if failure is not None:
            raise failure
        if error is not None:  # a bad argument is the same error on every rank; anything else is named
            kind = {"ValueError": ValueError, "TypeError": TypeError}.get(error[0])
            raise kind(error[1]) if kind else RuntimeError(f"the first rank failed in {op}: {error[0]}: {error[1]}")
        if self._rank != 0:
            rows = [PatternRows(torch.empty(values, dtype=torch.int64, device=self._comm_device),
                                torch.empty(offsets, dtype=torch.int64, device=self._comm_device), single)
                    for values, offsets, single in shapes]
        for r in rows:
            for tensor in (r.values, r.offsets):
                if tensor.numel():
                    dist.broadcast(tensor, src=self._source, group=self._group)
        return rows

    def _gather_columns(self, local: Tensor) -> Tensor:
        """Every rank's (B, slice width) block side by side: (B, n_out)."""
        widest = max(stop - start for start, stop in self._slices)
        dtype = local.dtype
        padded = torch.zeros(local.shape[0], widest, dtype=torch.uint8 if dtype == torch.bool else dtype,
                             device=self._comm_device)
        padded[:, :local.shape[1]] = local.to(self._comm_device)
        gathered = [torch.empty_like(padded) for _ in range(self._world)]
        dist.all_gather(gathered, padded, group=self._group)
        blocks = [block[:, :stop - start] for block, (start, stop) in zip(gathered, self._slices)]
        return torch.cat(blocks, 1).to(dtype)

    def _gather_rows(self, values: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        """Every rank's rows of positions, merged row by row in rank (so unit) order."""
        values, offsets = values.to(self._comm_device), offsets.to(self._comm_device)
        counts = torch.tensor([values.numel()], device=self._comm_device)
        all_counts = [torch.empty_like(counts) for _ in range(self._world)]
        dist.all_gather(all_counts, counts, group=self._group)
        longest = int(max(all_counts))
        padded = torch.zeros(longest, dtype=torch.int64, device=self._comm_device)
        padded[:values.numel()] = values
        all_values, all_offsets = [torch.empty_like(padded) for _ in range(self._world)], \
            [torch.empty_like(offsets) for _ in range(self._world)]
        dist.all_gather(all_values, padded, group=self._group)
        dist.all_gather(all_offsets, offsets, group=self._group)
        merged = torch.cat([v[:int(c)] for v, c in zip(all_values, all_counts)])
        rows = torch.cat([reference.row_ids(o) for o in all_offsets])
        order = torch.sort(rows, stable=True).indices  # within a row, ranks stay in order
        total_counts = sum(o.diff() for o in all_offsets)
        return merged[order], torch.nn.functional.pad(total_counts.cumsum(0), (1, 0))

    # --- files ---------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Each rank writes its slice to ``directory/shard-<rank>-of-<ranks>.safetensors`` (atomically, with
        its rank, slice, the save's identity and a checksum in the file)."""
        directory = Path(directory)
        # The first rank draws the save's identity; every shard records it (memory_file.SAVE_FIELD).
        save_id = self._collective("save", lambda: _broadcast_object(self._group, self._source,
                                                                     secrets.randbits(63) if self._rank == 0 else None))

        def write():
            if directory.exists() and not directory.is_dir():
                raise ValueError(f"directory must be a folder (made if missing), got the file {directory}")
            directory.mkdir(parents=True, exist_ok=True)
            with self._local._store_lock:
                memory_file.write(_shard_path(directory, self._rank, self._world), self._local._matrix, self._n_in,
                                  self._local.n_out, self._local.n_stored,
                                  shard={**self._shard_fields(), memory_file.SAVE_FIELD: save_id})
        _agreed(self._group, write)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, process_group=None, device: Optional[str | torch.device] = None,
             backend: Optional[str] = None,
             timeout: Optional[datetime.timedelta] = DEFAULT_TIMEOUT) -> "ShardedWillshawMemory":
        """The memory saved by ``save`` into ``directory``, each rank reading its own shard; the group must
        have as many ranks as saved it. Raises on every rank when any shard is missing, damaged, not the
        one its rank saved, or from another save than the others."""
        group = _communication_group(process_group, timeout)
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        path = _shard_path(Path(directory), rank, world)

        def read():
            if not path.is_file():
                found = sorted(p.name for p in Path(directory).glob("shard-*-of-*.safetensors"))
                raise memory_file.WillshawFileError(f"no shard for rank {rank} of {world} ranks: {path} is missing "
                                                    f"(the directory holds {found or 'no shards'})")
            sizes = memory_file.read_sizes(path)
            if "shard_rank" not in sizes:
                raise memory_file.WillshawFileError(f"{path} is a WillshawMemory file, not a shard")
            if (sizes["shard_rank"], sizes["shard_count"]) != (rank, world):
                raise memory_file.WillshawFileError(
                    f"{path} holds the shard of rank {sizes['shard_rank']} of {sizes['shard_count']}, not of rank "
                    f"{rank} of {world}")
            return sizes

        sizes = _agreed(group, read)
        _check_one_save(group, path, sizes)
        memory = cls(sizes["n_in"], sizes["n_out_total"], process_group=group, device=device, backend=backend,
                     timeout=None)

        def fill():  # on every rank, so that one rank's refusal is every rank's (no collective left waiting)
            if (memory._unit_start, memory._unit_stop) != (sizes["unit_start"], sizes["unit_stop"]):
                raise memory_file.WillshawFileError(
                    f"{path} holds units [{sizes['unit_start']}, {sizes['unit_stop']}), but rank {rank} of {world} "
                    f"holds [{memory._unit_start}, {memory._unit_stop})")
            memory_file.read_matrix_into(path, sizes, memory._local._matrix)  # block by block
        _agreed(group, fill)
        memory._local._n_stored = sizes["n_stored"]
        return memory

    def _shard_fields(self) -> dict[str, int]:
        return {"shard_rank": self._rank, "shard_count": self._world, "unit_start": self._unit_start,
                "unit_stop": self._unit_stop, "n_out_total": self._n_out}


def _all_gather_object(group, value) -> list:
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    return gathered


def _broadcast_object(group, source: int, value):
    """``value`` as given on the rank ``source``, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=source, group=group)
    return box[0]


def _check_one_save(group, path: Path, sizes: dict[str, int]) -> None:
    """Raise on every rank unless every rank's shard comes from the same save: the same identity (where
    the shards have one) and the same number of pairs stored."""
    every = _all_gather_object(group, (str(path), sizes.get(memory_file.SAVE_FIELD), sizes["n_stored"]))
    if len({(save_id, n_stored) for _, save_id, n_stored in every}) != 1:
        raise memory_file.WillshawFileError(
            "the shards come from different saves (did a save fail on some ranks?): " +
            "; ".join(f"rank {rank}: {shard_path} (save {save_id}, n_stored={n_stored})"
                      for rank, (shard_path, save_id, n_stored) in enumerate(every)))


def _agreed(group, run):
    """``run()`` on every rank of ``group``; if it fails on any, every rank raises."""
    try:
        result, error = run(), None
    except Exception as caught:  # any failure (a CUDA out-of-memory is a RuntimeError), told to every rank
        result, error = None, caught
    messages = _all_gather_object(group, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failures = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if failures:
        raise RuntimeError("other ranks failed: " + "; ".join(f"rank {r}: {m}" for r, m in failures))
    return result


def _communication_group(process_group, timeout):
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ShardedWillshawMemory needs torch.distributed: call torch.distributed.init_process_group "
                           "first (or launch with torchrun)")
    group = process_group if process_group is not None else dist.group.WORLD
    if dist.get_rank(group) < 0:  # torch's own error here says only "Invalid process group specified"
        raise ValueError(f"process_group does not include this process (rank {dist.get_rank()} of "
                         f"{dist.get_world_size()}): only the group's ranks construct the memory")
    if timeout is not None and (not isinstance(timeout, datetime.timedelta) or timeout.total_seconds() <= 0):
        raise ValueError(f"timeout must be a positive datetime.timedelta or None, got {timeout!r}")
    ranks = dist.get_process_group_ranks(group)
    if len(ranks) < dist.get_world_size() and timeout is not None:
        # A new group is made by every process, members or not: made by some, it leaves the others' count
        # of groups behind, and the next group that every process makes never meets. (torch's
        # use_local_synchronization names groups by how many each rank knows, which differ as well.)
        if timeout is not DEFAULT_TIMEOUT:
            raise ValueError("timeout: a memory over some of the processes uses process_group as it is; make the "
                             "group with the timeout it needs, torch.distributed.new_group(ranks, timeout=...)")
        timeout = None
    if timeout is None:
        return group
    return dist.new_group(ranks=ranks, timeout=timeout, backend=dist.get_backend(group))


def _retrieval_call(op: str, code: int, value: int, **options) -> str:
    """A retrieval as the ranks compare it, its threshold as checked: ranks that ask for different
    thresholds would each answer their slice by their own, and the gathered answer would mix them."""
    threshold = {reference.HARD: "'hard'", reference.SOFT: "'soft'", reference.FIXED: str(value),
                 reference.TOPK: f"'topk', k={value}"}[code]
    return f"{op}(threshold={threshold}" + "".join(f", {name}={option}" for name, option in options.items()) + ")"


def _slice(n_out: int, world: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s units: as even a split as whole 64-unit words allow, else as even as units allow."""
    words = reference.words_per_row(n_out)
    if words >= world:
        start, stop = rank * words // world * 64, (rank + 1) * words // world * 64
    else:
        start, stop = rank * n_out // world, (rank + 1) * n_out // world
    return min(start, n_out), min(stop, n_out)


def _slice_rows(rows: PatternRows, start: int, stop: int) -> PatternRows:
    """The positions of each row inside [start, stop), shifted to start at 0."""
    keep = (rows.values >= start) & (rows.values < stop)
    counts = torch.bincount(reference.row_ids(rows.offsets)[keep], minlength=rows.rows)
    return PatternRows(rows.values[keep] - start, torch.nn.functional.pad(counts.cumsum(0), (1, 0)), rows.single)


def _to(rows: PatternRows, device: torch.device) -> PatternRows:
    return PatternRows(rows.values.to(device), rows.offsets.to(device), rows.single)


def _unbatch(answer: Tensor, cue: PatternRows) -> Tensor:
    return answer[0] if cue.single else answer


def _shard_path(directory: Path, rank: int, world: int) -> Path:
    return directory / f"shard-{rank}-of-{world}.safetensors"
