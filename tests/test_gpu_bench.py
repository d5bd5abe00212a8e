"""bench/gpu.py, the GPU benchmark, kept working before a GPU is there: its quickest CPU run, its JSON, its parsers."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"
CASES = {"Fisher build (forward, stored)", "Fisher-vector product", "CG, 10 iterations", "CG, 10 iterations, check_every=None", "NPG update (train())",
         "NPG natural step alone", "NGDQN gradient step", "DQN gradient step (reference)"}


def _script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documented_keys(doc: str) -> tuple[set[str], set[str]]:
    """The top-level JSON keys and a case row's keys, as the script's docstring lists them."""
    text = " ".join(doc.split("JSON keys (``--out``):", 1)[1].split())
    rows = re.search(r"cases \[\{(.*?)\}\]", text).group(1)
    while re.search(r"[{\[][^{}\[\]]*[}\]]", text):  # drop the nested groups, innermost first
        text = re.sub(r"\s*[{\[][^{}\[\]]*[}\]]", "", text)
    return {k.strip(" .") for k in text.split(",")}, {k.strip() for k in rows.split(",")}


def test_quick_cpu_run_writes_the_documented_json(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--states", "512", "--quick", "--threads", "1", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    top_keys, row_keys = _documented_keys(_script().__doc__)
    assert set(report) == top_keys
    assert {row["case"] for row in report["cases"]} == CASES
    assert all(set(row) == row_keys and row["error"] is None and row["cpu_ms"] > 0 for row in report["cases"])
    assert report["cpu"]["torch_threads"] == 1 and report["settings"]["states"] == 512
    assert report["tests"] == {"ran": False, "reason": "--quick"}
    if torch.cuda.is_available():
        assert all(row["gpu_ms"] > 0 and row["speedup"] > 0 for row in report["cases"])
        return
    assert report["cuda"]["available"] is False and report["cuda"]["message"] == "no CUDA device: GPU columns skipped"
    assert "no CUDA device: GPU columns skipped" in done.stdout and "| Fisher-vector product |" in done.stdout
    assert all(row["gpu_ms"] is None and row["speedup"] is None for row in report["cases"])
    assert report["syncs"]["measured"] is False and report["smoke"]["ran"] is False and report["errors"] == []


@pytest.mark.parametrize("line,expected", [
    ("29 skipped, 171 deselected in 2.16s", dict(skipped=29, deselected=171)),
    ("1 failed, 20 passed in 5.09s", dict(failed=1, passed=20)),
    ("==== 3 passed, 1 error, 2 warnings in 1.20s ====", dict(passed=3, errors=1)),
    ("4 errors in 0.3s", dict(errors=4)),
    ("no tests ran in 0.01s", dict()),
])
def test_pytest_summary_is_read(line, expected):
    output = f"tests/test_cuda.py sss\n{line}\n"
    zeros = dict.fromkeys(("passed", "failed", "skipped", "errors", "deselected"), 0)
    assert _script().parse_pytest_summary(output) == {**zeros, **expected}


def test_bad_arguments_name_the_argument():
    gpu = _script()
    with pytest.raises(ValueError, match="--states"):
        gpu.parse_args(["--states", "0"])
    with pytest.raises(ValueError, match="--widths"):
        gpu.parse_args(["--widths", "256", "0"])
    assert "tests/test_cuda.py" in gpu.cuda_test_files()
