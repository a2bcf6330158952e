"""scripts/gpu_check.sh, the GPU run of issue 31: what it copies to the GPU machine fits its 64 MiB (the
tree, the listed wheels and the Street View samples), the wheel folder matches its list when present,
and its CPU path (the same benchmark code under JAX, tiny) runs here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# scripts/ is not a package: load scripts/gpu_wheels.py by its path.
_spec = importlib.util.spec_from_file_location("gpu_wheels", REPO_ROOT / "scripts" / "gpu_wheels.py")
gpu_wheels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_wheels)

COPY_LIMIT_BYTES = 64 * 2**20  # what the GPU machine takes per run, the tree included


def _tree_bytes() -> int:
    """Bytes of the files the device run copies: tracked, plus untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    paths = [REPO_ROOT / os.fsdecode(name) for name in listed if name]
    return sum(path.stat().st_size for path in paths if path.is_file())


def test_the_tree_wheels_and_samples_fit_the_gpu_machines_64_mib(shared_data: Path) -> None:
    wheels = gpu_wheels.listed()
    names = {name.split("-")[0].lower().replace("_", "-") for name, _, _ in wheels}
    assert {"keras", "tfrecord-lite", "google-crc32c", "optree", "click"} <= names
    assert all(name.endswith(".whl") and "tensorflow" not in name for name, _, _ in wheels)
    assert all("cp312" in name or "py3-none-any" in name for name, _, _ in wheels)  # Python 3.12 there
    samples = sum(path.stat().st_size for path in (shared_data / "street-view-samples").glob("*.jpg"))
    total = _tree_bytes() + sum(size for _, size, _ in wheels) + samples
    print(f"copied to the GPU machine: {total / 2**20:.1f} MiB of {COPY_LIMIT_BYTES / 2**20:.0f}")
    assert total <= COPY_LIMIT_BYTES


@pytest.mark.skipif(
    not gpu_wheels.WHEELS_DIR.is_dir(), reason="no fetched wheels (scripts/gpu_wheels.py fetch)"
)
def test_the_fetched_wheels_are_the_listed_ones() -> None:
    assert gpu_wheels.check() == []


def test_installing_skips_what_the_machine_has(tmp_path: Path) -> None:
    assert (
        gpu_wheels._distribution("google_crc32c-1.9.0-cp312-cp312-manylinux2014_x86_64.whl")
        == "google-crc32c"
    )
    assert gpu_wheels._installed("click") and not gpu_wheels._installed("no-such-distribution-rotnet")
    problems = gpu_wheels.check(tmp_path)  # an empty folder: every listed wheel is missing, one line each
    assert len(problems) == len(gpu_wheels.listed()) and all("missing" in problem for problem in problems)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (the test extra)")
def test_the_cpu_path_of_gpu_check_runs(tmp_path: Path, shared_data: Path) -> None:
    environment = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "ROTNET_SHARED_DATA": str(shared_data),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    finished = subprocess.run(
        ["sh", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--cpu"],
        capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=600,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    document = (tmp_path / "out" / "benchmarks.md").read_text()
    section = document[document.index("<!-- bench:gpu_training:start -->") :]
    assert "TINY CPU PATH" in section and "under JAX" in section
    row = next(line for line in section.splitlines() if line.startswith("| resnet50 | mixed_bfloat16"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[2].replace(",", "")) > 0 and float(cells[3].replace(",", "")) > 0  # both rates
    assert cells[6] == "yes"  # the loss stayed finite
    assert "<!-- bench:input_pipeline:start -->" in document  # the other sections kept
    assert "gpu_check (cpu) finished" in finished.stdout
