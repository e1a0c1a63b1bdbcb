"""One rank of the sharded-memory tests, launched by test_sharded.py with torch.distributed.run (gloo on
the CPU; NCCL on the GPU for the ``nccl`` scenario, one rank per GPU).
Each scenario asserts on every rank and writes ``<rank>.ok`` into the output folder when all held."""
import copy
import datetime
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from aefast import _backends
from aefast.willshaw import sharded as sharded_module
from aefast.willshaw import ShardedWillshawMemory, WillshawFileError, WillshawMemory, memory_file, random_patterns

N_IN, N_OUT = 300, 250  # 4 words of output units: not a multiple of 64, and uneven over 3 ranks


def dense(indices, n):
    return torch.zeros(indices.shape[0], n, dtype=torch.bool).scatter_(1, indices, True)


def same_answers(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def agree(rank: int, out: Path) -> None:
    """Every method of the sharded memory gives what one unsharded memory gives."""
    generator = torch.Generator().manual_seed(0)
    x, y = random_patterns(400, N_IN, 7, generator=generator), random_patterns(400, N_OUT, 7, generator=generator)
    first = rank == 0  # only the first rank's patterns count; the others pass None
    sharded, plain = ShardedWillshawMemory(N_IN, N_OUT), WillshawMemory(N_IN, N_OUT)
    sharded.store_indices(x[:200] if first else None, y[:200] if first else None)
    sharded.store(dense(x[200:], N_IN) if first else None, dense(y[200:], N_OUT) if first else None)
    plain.store_indices(x, y)
    assert sharded.n_stored == plain.n_stored == 400
    assert sharded.density == plain.density
    noisy = torch.cat([x[:40, :5], (x[:40, :2] + 1) % N_IN], 1)
    noisy = [row.unique() for row in noisy]
    for cues in (x[:40], x[:40, :4], noisy):
        given = cues if first else None
        assert torch.equal(sharded.sums_indices(given), plain.sums_indices(cues))
        for threshold, k in (("hard", None), ("soft", None), (3, None), ("topk", 1), ("topk", 9), ("topk", N_OUT)):
            assert same_answers(sharded.retrieve_indices(given, threshold, k=k),
                                plain.retrieve_indices(cues, threshold, k=k)), (threshold, k)
    values, offsets = sharded.retrieve_indices(x[:40, :4] if first else None, "soft", flat=True)
    assert torch.equal(values, torch.cat(plain.retrieve_indices(x[:40, :4], "soft")))
    assert offsets.tolist() == [0] + torch.tensor([a.numel() for a in plain.retrieve_indices(x[:40, :4], "soft")]).cumsum(0).tolist()
    cue_dense = dense(x[:40, :5], N_IN)
    for threshold, k in (("hard", None), ("soft", None), (2, None), ("topk", 4)):
        assert torch.equal(sharded.retrieve(cue_dense if first else None, threshold, k=k),
                           plain.retrieve(cue_dense, threshold, k=k)), (threshold, k)
    assert torch.equal(sharded.sums(cue_dense if first else None), plain.sums(cue_dense))
    assert torch.equal(sharded.retrieve_indices(x[0] if first else None), plain.retrieve_indices(x[0]))
    for threshold, k in (("hard", None), ("topk", 4)):  # one dense cue without a batch dimension: none back
        answer = sharded.retrieve(cue_dense[0] if first else None, threshold, k=k)
        assert answer.shape == (N_OUT,) and torch.equal(answer, plain.retrieve(cue_dense[0], threshold, k=k))
    assert torch.equal(sharded.sums(cue_dense[0] if first else None), plain.sums(cue_dense[0]))
    # The slices are whole 64-unit words (4 words of 250 units over 3 ranks), so no word is split.
    assert sharded.units == [(0, 64), (64, 128), (128, 250)][rank]
    one = x[0, :1]  # a cue of one one: a single value to broadcast
    for threshold in ("hard", "soft"):
        assert torch.equal(sharded.retrieve_indices(one if first else None, threshold),
                           plain.retrieve_indices(one, threshold))

    # Each rank writes its shard under its slice's store lock: a store from another thread cannot
    # change the slice halfway through the write.
    class RecordingLock:
        held = False

        def __enter__(self):
            self.held = True

        def __exit__(self, *exc):
            self.held = False

    lock, real_lock, writes_under_lock = RecordingLock(), sharded.local._store_lock, []
    sharded.local._store_lock = lock
    with pytest.MonkeyPatch.context() as patch:
        real_write = memory_file.write
        patch.setattr(memory_file, "write", lambda *args, **kwargs: writes_under_lock.append(lock.held) or
                      real_write(*args, **kwargs))
        sharded.save(out / "memory")
    sharded.local._store_lock = real_lock
    assert writes_under_lock == [True]
    loaded = ShardedWillshawMemory.load(out / "memory")
    assert loaded.n_stored == 400 and loaded.density == plain.density and loaded.units == sharded.units
    assert same_answers(loaded.retrieve_indices(x[:40, :4] if first else None, "soft"),
                        plain.retrieve_indices(x[:40, :4], "soft"))

    copied = copy.deepcopy(sharded)  # its own slice on every rank: storing into it leaves the original
    copied.store_indices((x[:50, :3] + 1) % N_IN if first else None, (y[:50, :3] + 1) % N_OUT if first else None)
    assert copied.n_stored == 450 and sharded.n_stored == 400 and sharded.density == plain.density
    assert copied.density > plain.density and copied.units == sharded.units
    with pytest.raises(TypeError, match="bound to its process group and cannot be pickled"):
        pickle.dumps(sharded)

    # A memory made with a backend runs every op on it, its density's count included.
    chosen = ShardedWillshawMemory(N_IN, N_OUT, backend="reference")
    chosen.store_indices(x[:50] if first else None, y[:50] if first else None)
    with pytest.MonkeyPatch.context() as patch:
        backends_counting, count_ones = [], sharded_module.ops.count_ones
        patch.setattr(sharded_module.ops, "count_ones", lambda matrix: backends_counting.append(
            _backends.requested_backend()) or count_ones(matrix))
        assert chosen.density > 0 and backends_counting == ["reference"]

    auto, auto_plain = ShardedWillshawMemory(N_IN), WillshawMemory(N_IN)
    auto.store_indices(x if first else None)
    auto_plain.store_indices(x)
    assert same_answers(auto.retrieve_indices(x[:30, :3] if first else None, "soft"),
                        auto_plain.retrieve_indices(x[:30, :3], "soft"))
    sharded.clear()
    assert sharded.density == 0 and sharded.n_stored == 0


def subgroup(rank: int, out: Path) -> None:
    """A memory over some of the processes (ranks 1 and 2 of 3): its first rank (global rank 1) gives the
    patterns, it answers as one memory, the process outside is refused, a timeout of its own is refused
    (the group is used as it is), and groups that every process makes afterwards still meet."""
    group = dist.new_group([1, 2], timeout=datetime.timedelta(seconds=30))
    generator = torch.Generator().manual_seed(3)
    x, y = random_patterns(300, N_IN, 7, generator=generator), random_patterns(300, N_OUT, 7, generator=generator)
    if rank == 0:
        with pytest.raises(ValueError, match=r"process_group does not include this process \(rank 0 of 3\)"):
            ShardedWillshawMemory(N_IN, N_OUT, process_group=group)
    else:
        first = rank == 1
        with pytest.raises(ValueError, match=r"timeout: a memory over some of the processes uses process_group as "
                           r"it is; make the group with the timeout it needs"):
            ShardedWillshawMemory(N_IN, N_OUT, process_group=group, timeout=datetime.timedelta(seconds=30))
        for options in ({}, {"timeout": None}):  # the group as it is, either way
            sharded, plain = ShardedWillshawMemory(N_IN, N_OUT, process_group=group, **options), \
                WillshawMemory(N_IN, N_OUT)
            assert (sharded.rank, sharded.world_size) == (rank - 1, 2)
            sharded.store_indices(x if first else None, y if first else None)
            plain.store_indices(x, y)
            assert sharded.density == plain.density and sharded.n_stored == 300
            for threshold, k in (("hard", None), ("soft", None), ("topk", 7)):
                assert same_answers(sharded.retrieve_indices(x[:30, :4] if first else None, threshold, k=k),
                                    plain.retrieve_indices(x[:30, :4], threshold, k=k)), (threshold, k)
    everyone = ShardedWillshawMemory(N_IN, N_OUT, timeout=datetime.timedelta(seconds=30))
    everyone.store_indices(x if rank == 0 else None, y if rank == 0 else None)
    assert everyone.n_stored == 300


def random_cases(rank: int, out: Path) -> None:
    """Random sizes (down to one unit per rank), ragged patterns with 0 to 20 ones, every threshold: the
    sharded memory answers as one memory. Every rank draws the same cases from the same seed."""
    generator = torch.Generator().manual_seed(11)
    draw = lambda low, high: int(torch.randint(low, high + 1, (1,), generator=generator))  # noqa: E731

    def ragged(rows, n):
        return [torch.randperm(n, generator=generator)[:draw(0, min(n, 20))].sort().values for _ in range(rows)]

    for _ in range(12):
        world = dist.get_world_size()
        n_in, n_out = draw(1, 200), draw(world, 200)
        rows = draw(0, 30)
        x, y = ragged(rows, n_in), ragged(rows, n_out)
        cues = ragged(draw(1, 10), n_in)
        sharded, plain = ShardedWillshawMemory(n_in, n_out), WillshawMemory(n_in, n_out)
        if rows:
            sharded.store_indices(x if rank == 0 else None, y if rank == 0 else None)
            plain.store_indices(x, y)
        assert sharded.density == plain.density
        assert torch.equal(sharded.sums_indices(cues if rank == 0 else None), plain.sums_indices(cues))
        for threshold, k in (("hard", None), ("soft", None), (draw(0, 4), None), ("topk", draw(1, n_out))):
            assert same_answers(sharded.retrieve_indices(cues if rank == 0 else None, threshold, k=k),
                                plain.retrieve_indices(cues, threshold, k=k)), (n_in, n_out, threshold, k)


def errors(rank: int, out: Path) -> None:
    """Bad arguments, disagreeing ranks and wrong shard files raise on every rank; nothing hangs."""
    with pytest.raises(ValueError, match="ranks disagree on the memory's sizes"):
        ShardedWillshawMemory(N_IN, N_OUT + rank)
    with pytest.raises(ValueError, match="at least the number of ranks"):
        ShardedWillshawMemory(N_IN, 1)
    memory = ShardedWillshawMemory(N_IN, N_OUT)
    with pytest.raises(ValueError, match="x_idx: row 1: index 999 is outside"):
        memory.store_indices(torch.tensor([[1, 2], [3, 999]]) if rank == 0 else None, torch.tensor([[1], [2]]))
    with pytest.raises(ValueError, match="y_idx: row 0: index 250 is outside"):  # no slice would take it
        memory.store_indices(torch.tensor([[1, 2]]) if rank == 0 else None, torch.tensor([[3, 250]]))
    with pytest.raises(ValueError, match="x_idx and y_idx must hold the same number of patterns, got 2 and 1"):
        memory.store_indices(torch.tensor([[1, 2], [3, 4]]) if rank == 0 else None, torch.tensor([[3, 4]]))
    with pytest.raises(ValueError, match="y is required"):
        memory.store(torch.ones(1, N_IN, dtype=torch.bool) if rank == 0 else None)
    for retrieval in (memory.retrieve_indices, memory.sums_indices):
        with pytest.raises(ValueError, match="x_idx: row 1: index 300 is outside"):
            retrieval(torch.tensor([[1, 2], [3, 300]]) if rank == 0 else None)
    with pytest.raises(TypeError, match="x_idx must hold integer indices"):  # its type reaches every rank too
        memory.retrieve_indices(torch.tensor([1.0, 2.0]) if rank == 0 else None)
    # Patterns are taken on the device the group broadcasts from (the CPU with gloo, even for slices
    # on a GPU), and the refusal says which.
    with pytest.raises(ValueError, match=r"^x_idx must be on the device gloo broadcasts from, cpu, got meta$"):
        memory.retrieve_indices(torch.tensor([[1, 2]], device="meta") if rank == 0 else None)
    with pytest.raises(ValueError, match=r"^y must be on the device gloo broadcasts from, cpu, got meta$"):
        memory.store(torch.ones(1, N_IN) if rank == 0 else None, torch.ones(1, N_OUT, device="meta"))
    with pytest.raises(TypeError, match="flat must be True or False, got 'yes'"):
        memory.retrieve_indices(torch.tensor([[1, 2]]) if rank == 0 else None, flat="yes")
    assert memory.density == 0 and memory.n_stored == 0  # nothing was stored anywhere
    for timeout in (datetime.timedelta(0), 5):
        with pytest.raises(ValueError, match=r"timeout must be a positive datetime.timedelta or None, got "):
            ShardedWillshawMemory(N_IN, N_OUT, timeout=timeout)
    memory.store_indices(torch.tensor([[1, 2]]), torch.tensor([[3, 200]]))
    if rank == 0:
        (out / "a file").write_text("not a folder")
    dist.barrier()
    with pytest.raises((ValueError, RuntimeError), match="directory must be a folder .*a file"):
        memory.save(out / "a file")

    memory.save(out / "swapped")
    dist.barrier()
    if rank == 0:
        (out / "swapped" / "shard-0-of-2.safetensors").rename(out / "swapped" / "tmp")
        (out / "swapped" / "shard-1-of-2.safetensors").rename(out / "swapped" / "shard-0-of-2.safetensors")
        (out / "swapped" / "tmp").rename(out / "swapped" / "shard-1-of-2.safetensors")
    dist.barrier()
    with pytest.raises((WillshawFileError, RuntimeError), match="holds the shard of rank"):
        ShardedWillshawMemory.load(out / "swapped")
    with pytest.raises(WillshawFileError, match="load the shards with ShardedWillshawMemory.load"):
        WillshawMemory.load(out / "swapped" / f"shard-{rank}-of-2.safetensors")
    memory.save(out / "partial")
    dist.barrier()
    if rank == 0:
        (out / "partial" / "shard-1-of-2.safetensors").unlink()
    dist.barrier()
    with pytest.raises((WillshawFileError, RuntimeError), match="no shard for rank 1 of 2"):
        ShardedWillshawMemory.load(out / "partial")

    # Shards of two saves, as a save that failed on some ranks leaves them, are refused on every rank:
    # with different numbers of pairs, and with the same (two saves of one unchanged memory).
    memory.save(out / "before")
    memory.save(out / "again")
    memory.store_indices(torch.tensor([[4, 5]]), torch.tensor([[6, 7]]))
    memory.save(out / "after")
    dist.barrier()
    if rank == 0:
        for mixed, newer in (("again", "before"), ("before", "after")):  # "again" takes the original
            shutil.copy(out / newer / "shard-1-of-2.safetensors", out / mixed / "shard-1-of-2.safetensors")
    dist.barrier()
    with pytest.raises(WillshawFileError, match=r"the shards come from different saves \(did a save fail on some "
                       r"ranks\?\): rank 0: \S*before/shard-0-of-2.safetensors \(save \d+, n_stored=1\); "
                       r"rank 1: \S*before/shard-1-of-2.safetensors \(save \d+, n_stored=2\)$"):
        ShardedWillshawMemory.load(out / "before")
    with pytest.raises(WillshawFileError, match=r"different saves .*\(save \d+, n_stored=1\); .*\(save \d+, n_stored=1\)"):
        ShardedWillshawMemory.load(out / "again")
    # Shards written before saves had an identity (no save_id field) load as before, and are refused
    # where their pairs stored disagree.
    shard = out / "after" / f"shard-{rank}-of-2.safetensors"
    assert memory_file.read_sizes(shard)[memory_file.SAVE_FIELD] >= 0
    memory_file.write(shard, memory.local._matrix, N_IN, memory.local.n_out, memory.n_stored,
                      shard=memory._shard_fields())
    assert memory_file.SAVE_FIELD not in memory_file.read_sizes(shard)
    loaded = ShardedWillshawMemory.load(out / "after")
    assert loaded.n_stored == 2 and loaded.density == memory.density
    cue = torch.tensor([[1, 2, 4, 5]])
    assert torch.equal(loaded.sums_indices(cue), memory.sums_indices(cue))
    memory_file.write(shard, memory.local._matrix, N_IN, memory.local.n_out, memory.n_stored + rank,
                      shard=memory._shard_fields())
    with pytest.raises(WillshawFileError, match=r"different saves .*\(save None, n_stored=2\); .*\(save None, n_stored=3\)"):
        ShardedWillshawMemory.load(out / "after")

    # A plain memory's file where a shard belongs, and a shard whose units are not its rank's slice
    # (written by hand here; its sizes and checksum are whole) are refused on every rank.
    for folder in ("plain", "shifted"):
        (out / folder).mkdir(exist_ok=True)
    WillshawMemory(N_IN, N_OUT).save(out / "plain" / f"shard-{rank}-of-2.safetensors")
    with pytest.raises((WillshawFileError, RuntimeError), match="is a WillshawMemory file, not a shard"):
        ShardedWillshawMemory.load(out / "plain")
    start, stop = memory.units
    shifted = {**memory._shard_fields(), "unit_start": start + 1, "unit_stop": stop + 1}
    memory_file.write(out / "shifted" / f"shard-{rank}-of-2.safetensors", memory.local._matrix, N_IN,
                      memory.local.n_out, memory.n_stored, shard=shifted)
    with pytest.raises((WillshawFileError, RuntimeError), match=rf"holds units \[{start + 1}, {stop + 1}\), but rank "
                       rf"{rank} of 2 holds \[{start}, {stop}\)"):
        ShardedWillshawMemory.load(out / "shifted")

    # A failure other than a bad argument, on one rank, reaches the others at once, named, instead of
    # leaving them to wait out the timeout: here a device running out of memory on rank 1 as the
    # memory is made, and a failure on the first rank as it reads the patterns it broadcasts.
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    def unreadable(*args, **kwargs):
        raise RuntimeError("the patterns could not be read (injected)")

    with pytest.MonkeyPatch.context() as patch:
        if rank == 1:
            patch.setattr(sharded_module, "WillshawMemory", out_of_memory)
        with pytest.raises(RuntimeError, match=r"other ranks failed: rank 1: OutOfMemoryError: CUDA out of memory "
                           r"\(injected\)$" if rank == 0 else r"^CUDA out of memory \(injected\)$"):
            ShardedWillshawMemory(N_IN, N_OUT, timeout=datetime.timedelta(seconds=3))
    dist.barrier()
    quick = ShardedWillshawMemory(N_IN, N_OUT, timeout=datetime.timedelta(seconds=3))
    with pytest.MonkeyPatch.context() as patch:
        if rank == 0:
            patch.setattr(sharded_module, "from_indices", unreadable)
        with pytest.raises(RuntimeError, match=r"^the patterns could not be read \(injected\)$" if rank == 0 else
                           r"^the first rank failed in store_indices: RuntimeError: the patterns could not be read "
                           r"\(injected\)$"):
            quick.store_indices(torch.tensor([[1, 2]]) if rank == 0 else None, torch.tensor([[3, 4]]))
    dist.barrier()

    # Ranks that call different methods, or one method with different thresholds (each rank would
    # answer its slice by its own): rank 1 sees the mismatch, rank 0 times out instead of hanging.
    quick = ShardedWillshawMemory(N_IN, N_OUT, timeout=datetime.timedelta(seconds=3))
    with pytest.raises(RuntimeError, match="rank 1 called clear while the first rank called density" if rank else ""):
        if rank == 0:
            quick.density
        else:
            quick.clear()
    dist.barrier()  # rank 1 raised at once, rank 0 after its timeout: together again before the next group
    quick = ShardedWillshawMemory(N_IN, N_OUT, timeout=datetime.timedelta(seconds=3))
    with pytest.raises(RuntimeError, match=r"rank 1 called retrieve_indices\(threshold=2, flat=False\) while the "
                       r"first rank called retrieve_indices\(threshold='hard', flat=False\)" if rank else ""):
        quick.retrieve_indices(torch.tensor([[1, 2, 3]]) if rank == 0 else None, "hard" if rank == 0 else 2)
    dist.barrier()
    quick = ShardedWillshawMemory(N_IN, N_OUT, timeout=datetime.timedelta(seconds=3))
    with pytest.raises(RuntimeError, match=r"rank 1 called retrieve\(threshold='topk', k=3\) while the first rank "
                       r"called retrieve\(threshold='topk', k=2\)" if rank else ""):
        quick.retrieve(torch.ones(N_IN) if rank == 0 else None, "topk", k=2 + rank)


def nccl(rank: int, out: Path) -> None:
    """Over NCCL, each rank's slice on its GPU: every method answers as one memory on the GPU, and the
    shards saved from the GPU load back."""
    device = torch.device("cuda", torch.cuda.current_device())
    generator = torch.Generator().manual_seed(5)
    x = random_patterns(500, N_IN, 7, generator=generator).to(device)
    y = random_patterns(500, N_OUT, 7, generator=generator).to(device)
    first = rank == 0
    sharded, plain = ShardedWillshawMemory(N_IN, N_OUT), WillshawMemory(N_IN, N_OUT, device=device)
    assert sharded.device == device
    sharded.store_indices(x if first else None, y if first else None)
    plain.store_indices(x, y)
    assert sharded.n_stored == plain.n_stored == 500 and sharded.density == plain.density
    for cues in (x[:50], x[:50, :4]):
        given = cues if first else None
        assert torch.equal(sharded.sums_indices(given), plain.sums_indices(cues))
        for threshold, k in (("hard", None), ("soft", None), (3, None), ("topk", 1), ("topk", 9)):
            assert same_answers(sharded.retrieve_indices(given, threshold, k=k),
                                plain.retrieve_indices(cues, threshold, k=k)), (threshold, k)
    cue_dense = torch.zeros(50, N_IN, dtype=torch.bool, device=device).scatter_(1, x[:50, :5], True)
    assert torch.equal(sharded.retrieve(cue_dense if first else None, "soft"), plain.retrieve(cue_dense, "soft"))
    sharded.save(out / "memory")
    loaded = ShardedWillshawMemory.load(out / "memory")
    assert loaded.density == plain.density
    assert same_answers(loaded.retrieve_indices(x[:50, :4] if first else None, "soft"),
                        plain.retrieve_indices(x[:50, :4], "soft"))


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    if scenario == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    dist.init_process_group("nccl" if scenario == "nccl" else "gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    {"agree": agree, "subgroup": subgroup, "random": random_cases, "errors": errors, "nccl": nccl}[scenario](rank, out)
    (out / f"{rank}.ok").write_text("ok")
    sys.stdout.flush()
    os._exit(0)  # after a timed-out collective the group cannot be torn down cleanly


if __name__ == "__main__":
    main()
