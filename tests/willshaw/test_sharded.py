"""ShardedWillshawMemory over gloo: 2 and 3 processes launched with torch.distributed.run on this
machine, and over NCCL with one rank per GPU (tests/willshaw/sharded_worker.py runs on each rank), against one unsharded memory."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aefast.willshaw import ShardedWillshawMemory

WORKER = Path(__file__).with_name("sharded_worker.py")


def launch(scenario: str, ranks: int, out: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               str(WORKER), scenario, str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert sorted(p.name for p in out.glob("*.ok")) == [f"{rank}.ok" for rank in range(ranks)]


def test_three_ranks_answer_as_one_memory(tmp_path):
    launch("agree", 3, tmp_path)


def test_a_memory_over_some_of_the_processes(tmp_path):
    launch("subgroup", 3, tmp_path)


@pytest.mark.parametrize("ranks", [2, 3])
def test_random_sizes_and_patterns_answer_as_one_memory(tmp_path, ranks):
    launch("random", ranks, tmp_path)


def test_errors_reach_every_rank_and_nothing_hangs(tmp_path):
    launch("errors", 2, tmp_path)


@pytest.mark.gpu
def test_nccl_on_the_gpu_answers_as_one_memory(tmp_path):
    # NCCL takes one rank per GPU: as many ranks as this machine has GPUs (one on a single-GPU machine).
    launch("nccl", torch.cuda.device_count(), tmp_path)


def test_without_torch_distributed_it_says_how_to_start():
    with pytest.raises(RuntimeError, match="init_process_group"):
        ShardedWillshawMemory(100, device=torch.device("cpu"))
