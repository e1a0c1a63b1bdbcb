"""The README's Python examples run as written, with the names they leave to the reader (an encoder, a
batch x, a user's nn.Sequential) defined by a prelude: an example that drifts from the API fails here."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# What each example takes from the reader, keyed by a line that only that example has.
PRELUDES = {
    "aefast.reparameterize_kl(mu, logvar)": """
import torch
x = torch.rand(7, 20)
encoder, decoder = torch.nn.Linear(20, 2 * 5), torch.nn.Linear(5, 20)
reconstruction_loss = torch.nn.functional.mse_loss
""",
    "FusedMLP.from_sequential(my_sequential)": """
import torch
x = torch.rand(5, 784)
my_sequential = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.Tanh(), torch.nn.Linear(100, 17))
x64, target = torch.randn(9, 64), torch.randn(9, 64)
""",
    "from aefast.train import fit": "",
    "WillshawMemory(n)": "",
    "ShardedWillshawMemory(100_000)": None,  # a torchrun script: test_sharded_example_runs_under_torchrun
}


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def prelude_of(example: str) -> str | None:
    keys = [key for key in PRELUDES if key in example]
    assert len(keys) == 1, f"a README example without exactly one entry in PRELUDES: {example[:200]}"
    return PRELUDES[keys[0]]


def test_every_example_has_its_prelude():
    examples = python_examples()
    assert len(examples) == len(PRELUDES)
    assert sorted(map(prelude_of, examples), key=str) == sorted(PRELUDES.values(), key=str)


@pytest.mark.parametrize("key", [key for key, prelude in PRELUDES.items() if prelude is not None])
def test_example_runs(key, tmp_path, monkeypatch, capsys):
    example = next(example for example in python_examples() if key in example)
    monkeypatch.chdir(tmp_path)  # the examples write checkpoints and memory files where they run
    exec(compile(PRELUDES[key] + example, f"README example ({key})", "exec"), {})


def test_sharded_example_runs_under_torchrun(tmp_path):
    example = next(example for example in python_examples() if "ShardedWillshawMemory(100_000)" in example)
    command = re.search(r"run with: (torchrun .*)", example).group(1).split()
    assert command[:1] == ["torchrun"]
    script = tmp_path / command[-1]
    script.write_text(example)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", *command[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = int(re.search(r"--nproc-per-node=(\d+)", " ".join(command)).group(1))
    assert sorted(path.name for path in (tmp_path / "shards").iterdir()) == [
        f"shard-{rank}-of-{ranks}.safetensors" for rank in range(ranks)]


def test_the_tests_the_readme_names_exist():
    """Each `file.py::name` the README cites (relative to tests/, or starting with it; a bare `::name`
    is in the last file named) is a test function of that file: a renamed or moved test cannot leave a
    promise without its test."""
    tests = README.parent / "tests"
    cited, file = [], None
    for path, name in re.findall(r"`((?:[\w/]+/)?test_\w+\.py)?(?:::(\w+))?`", README.read_text()):
        file = path.removeprefix("tests/") or file
        if name:
            assert file is not None, f"`::{name}` in the README names no file before it"
            cited.append((file, name))
    assert len(cited) > 40  # the Guarantees section's
    missing = [f"{file}::{name}" for file, name in cited
               if not re.search(rf"^def {name}\(", (tests / file).read_text(), flags=re.M)]
    assert missing == []
