"""README.md's examples, run: every Python block (with smaller budgets) and every `train.py` command line."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
# budgets of the examples, cut so that each block runs in seconds: (as written, as run here)
SHRINK = [("100_000", "1_000"), ("15_000", "256"), ("n_tasks=20", "n_tasks=2"), ("sample_tasks(20)", "sample_tasks(2)")]


def train_commands() -> list[list[str]]:
    """Every `python train.py ...` line of the README's bash blocks (continuation lines joined), as arguments."""
    commands = []
    for block in BASH_BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:2] == ["python", "train.py"]:
                    commands.append(words[2:])
    return commands


def test_the_readme_has_examples():
    assert len(PYTHON_BLOCKS) >= 4 and len(train_commands()) >= 8


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(tmp_path, index):
    code = PYTHON_BLOCKS[index]
    for written, run_here in SHRINK:
        code = code.replace(written, run_here)
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, f"README python block {index} failed:\n{code}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("arguments", train_commands(), ids=lambda a: " ".join(a[:5]))
def test_train_py_command_is_accepted(arguments):
    """Each command line of the README names a subcommand and options that exist (what it does is tested elsewhere)."""
    parsed = train.build_parser().parse_args(arguments)
    assert parsed.handler is not None
