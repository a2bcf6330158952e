"""EXTERNAL worker pools whose Python cannot run rotnet's workers (issue 19): rotnet-pipeline runs a
one-element probe job on the pool first and stops in one line naming what is missing, instead of
hanging (no Beam: the pool's workers die at start and Beam waits for ever) or printing ~115 lines of
Beam traceback (no rotnet). The pools here start workers with a stub `python` first on their PATH.

    .venv/bin/python -m pytest tests/test_worker_pool_check.py -q
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

from pipeline import runner
from tests.pipeline_helpers import run_cli
from tests.servers import BeamWorkerPool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def pool_environment(tmp_path: Path, stub: str) -> dict[str, str]:
    """This environment with a `python` (a shell script running `stub`) first on PATH, no PYTHONPATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(f"#!/bin/sh\n{stub}\n")
    python.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    return env


def portable(address: str) -> list[str]:
    return ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "EXTERNAL",
            "--environment_config", address, "--no-progress"]  # fmt: skip


def pipeline_on(address: str, tmp_path: Path) -> list[str]:
    return ["--dataset", "images", "--input", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "out"),
            *portable(address)]  # fmt: skip


def test_a_pool_whose_python_lacks_beam_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runner.POOL_CHECK_TIMEOUT_VARIABLE, "20")
    # -S: no site-packages, so no apache_beam (a system Python without Beam, as in the issue)
    env = pool_environment(tmp_path, f'exec "{sys.executable}" -S "$@"')
    (tmp_path / "nothing").mkdir()
    with BeamWorkerPool(env, tmp_path / "pool.log") as pool:
        result = run_cli(*pipeline_on(pool.address, tmp_path))
        log = (tmp_path / "pool.log").read_text()
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line == (
        f"Error: the Beam worker pool at {pool.address} started no working SDK worker within 20 s (its log "
        "then says why, e.g. No module named 'apache_beam'): "
        + runner.WORKER_REQUIREMENTS.format(beam=__import__("apache_beam").__version__)
    )
    assert "No module named 'apache_beam'" in log  # what the pool's own log said
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_pool_whose_python_lacks_rotnet_names_it_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Beam's site-packages without .pth files: Beam imports, the editable rotnet install does not; and
    # the pool runs outside the checkout (`python -c` would import rotnet from its working directory).
    monkeypatch.chdir(tmp_path)
    site_packages = sysconfig.get_paths()["purelib"]
    env = pool_environment(tmp_path, f'PYTHONPATH="{site_packages}" exec "{sys.executable}" -S "$@"')
    (tmp_path / "nothing").mkdir()
    with BeamWorkerPool(env, tmp_path / "pool.log") as pool:
        result = run_cli(*pipeline_on(pool.address, tmp_path))
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"Error: the Beam worker pool at {pool.address} runs its workers with ")
    assert "which cannot import rotnet (ModuleNotFoundError: No module named 'pipeline'): install it" in line
    assert not (tmp_path / "out").exists()


def test_a_working_pool_passes_and_a_closed_one_is_named(beam_worker_pool, tmp_path: Path) -> None:
    assert runner.external_pool_problem(portable(beam_worker_pool.address)) is None
    assert runner.external_pool_problem(["--environment_type", "DOCKER"]) is None
    assert runner.external_pool_problem(portable("10.0.0.5:50000")) is None  # elsewhere: not probed
    assert (
        runner.external_pool_problem(portable("127.0.0.1:9"), {runner.POOL_CHECK_TIMEOUT_VARIABLE: "0"})
        is None
    )
