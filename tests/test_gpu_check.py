"""benchmarks/gpu_check.sh in its CI mode (``--device cpu --quick``): the one command a GPU machine runs, here on the
CPU. This is CI's only run of the device_check tests (the Makefile's pytest deselects them, so they run once)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from helpers import python_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
VERSION_KEYS = {"python", "torch", "cuda", "gpu", "torchaudio", "s3prl", "transformers", "s3prl_distill"}


def gpu_check(*arguments: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = python_env(extra={"PYTHON": sys.executable})
    env.pop("OUT", None)
    env.pop("S3PRL_DISTILL_TEST_DEVICE", None)
    return subprocess.run(["bash", str(SCRIPT), *arguments], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def device_test_functions() -> set:
    tree = ast.parse((ROOT / "tests" / "test_on_device.py").read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_cpu_mode_passes_and_reports_every_test(tmp_path):
    out = tmp_path / "gpu_check"
    result = gpu_check("--device", "cpu", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert (report["device"], report["quick"], report["exit_status"]) == ("cpu", True, 0)
    # The package imports here: nothing is installed.
    assert report["installed_wheels"] is False and not (out / "install.log").exists()
    assert "nothing installed" in result.stdout
    assert set(report["versions"]) == VERSION_KEYS
    assert all(isinstance(value, str) and value for value in report["versions"].values()), report["versions"]
    assert report["steps"]["setup"]["status"] == report["steps"]["tests"]["status"] == "ok"
    speed_present = (ROOT / "benchmarks" / "gpu_speed.py").exists()
    assert report["steps"]["speed"]["status"] == ("ok" if speed_present else "absent")
    if not speed_present:
        assert "benchmarks/gpu_speed.py is not in this tree" in result.stdout
    assert all(step["seconds"] >= 0 for step in report["steps"].values())
    # The speed step had at least its own limit, and otherwise what set-up and tests left of the total (less 10 s).
    limits = report["limits_s"]
    assert (limits["setup"], limits["tests"], limits["total"]) == (120, 900, 1620)
    left = limits["total"] - 10 - (report["steps"]["setup"]["seconds"] + report["steps"]["tests"]["seconds"])
    assert limits["speed"] >= 600 and abs(limits["speed"] - max(600, left)) <= 2, (limits, report["steps"])
    assert f"limit {limits['speed']} s of the 1620 s in all" in result.stdout

    tests = report["tests"]
    assert {test["name"].split("[")[0] for test in tests} == device_test_functions()  # every test reported
    for test in tests:
        assert test["outcome"] in ("passed", "skipped"), test
        if test["outcome"] == "skipped":
            assert test["reason"], test
    assert report["test_counts"]["passed"] == sum(test["outcome"] == "passed" for test in tests) > 0
    assert report["test_counts"]["failed"] == report["test_counts"]["error"] == 0
    # Nothing CUDA-only ran on the CPU; everything else did.
    for test in tests:
        if test["outcome"] == "skipped":
            assert "CUDA" in test["reason"], test

    # What comes back from a device machine: <= 8 plain files, <= 2 folders deep, simple names.
    files = [path for path in out.rglob("*") if path.is_file()]
    assert 0 < len(files) <= 8
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for path in files for part in path.relative_to(out).parts)
    assert all(len(path.relative_to(out).parts) <= 3 for path in files)


def test_bad_arguments_are_named():
    result = gpu_check("--device", "tpu")
    assert result.returncode == 2 and "--device must be cuda or cpu, not 'tpu'" in result.stderr
    result = gpu_check("--fast")
    assert result.returncode == 2 and "unknown argument --fast" in result.stderr
