"""Runner hygiene: runner names resolve as Beam resolves them or fail in one line, a
runner's own options are known once its module is imported, DaskRunner is refused with its reason,
local paths are refused for workers that cannot see them, --dry_run only where it means something,
and a runner without metrics gives "not verified", never an invented count.

    .venv/bin/python -m pytest tests/test_runner_options.py -q -n 1
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import schemas
from pipeline import runner
from pipeline.config import JobError
from tests.conftest import REPO_ROOT
from tests.pipeline_helpers import run_cli

FAKE_RUNNER = "tests.fake_runner.NoMetricsRunner"


@pytest.mark.parametrize(
    ("given", "name", "local"),
    [
        (None, "DirectRunner", True),
        ("direct", "DirectRunner", True),
        ("FnApiRunner", "DirectRunner", True),
        ("dataflow", "DataflowRunner", False),
        ("DATAFLOWRUNNER", "DataflowRunner", False),
        ("portable", "PortableRunner", False),
        ("flink", "FlinkRunner", False),
        ("SparkRunner", "SparkRunner", False),
        ("apache_beam.runners.portability.flink_runner.FlinkRunner", "FlinkRunner", False),
    ],
)
def test_runner_names_resolve_as_beam_resolves_them(given: str | None, name: str, local: bool) -> None:
    choice = runner.choose_runner(["--runner", given] if given else [])
    assert (choice.name, choice.local) == (name, local)


def test_where_workers_run_decides_package_and_local_paths() -> None:
    dataflow = runner.choose_runner(["--runner", "DataflowRunner"])
    assert (dataflow.same_machine, dataflow.needs_package) == (False, True)
    flink_docker = runner.choose_runner(["--runner", "FlinkRunner"])  # DOCKER workers by default
    assert (flink_docker.same_machine, flink_docker.needs_package) == (False, True)
    local_pool = runner.choose_runner(
        [
            "--runner",
            "PortableRunner",
            "--environment_type=EXTERNAL",
            "--environment_config",
            "127.0.0.1:5000",
        ]
    )
    assert (local_pool.same_machine, local_pool.needs_package) == (True, False)
    remote_pool = runner.choose_runner(
        ["--runner", "FlinkRunner", "--environment_type", "EXTERNAL", "--environment_config", "10.0.0.5:5000"]
    )
    assert (remote_pool.same_machine, remote_pool.needs_package) == (False, False)
    loopback = runner.choose_runner(["--runner", "PortableRunner", "--environment_type", "LOOPBACK"])
    assert (loopback.same_machine, loopback.needs_package) == (True, False)


@pytest.mark.parametrize("given", ["dask", "DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"])
def test_dask_runner_is_refused_with_the_reason(given: str, tmp_path: Path) -> None:
    result = run_cli(
        "--dataset", "images", "--input", str(tmp_path), "--output-dir", str(tmp_path / "out"),
        "--runner", given, "--dask_client_address", "127.0.0.1:1",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert f"--runner {given} is not supported" in line and "tagged output" in line, line
    assert "Traceback" not in result.output


def test_unknown_runner_fails_in_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "--dataset", "images", "--input", str(tmp_path), "--output-dir", str(tmp_path / "out"),
        "--runner", "Dataflw",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--runner Dataflw is not a Beam runner; known runners: " in result.output
    assert "DataflowRunner" in result.output and "Traceback" not in result.output


def test_a_runners_own_options_are_known_once_its_module_is_imported() -> None:
    """In a fresh interpreter: the fake runner's module is not imported until --runner names it."""
    script = textwrap.dedent(
        f"""
        import sys
        from pipeline import runner
        assert "tests.fake_runner" not in sys.modules
        print(runner.unknown_beam_args(["--runner", "{FAKE_RUNNER}", "--fake_runner_marker", "x", "--typo_option", "y"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['--typo_option', 'y']"


def test_local_paths_are_refused_for_workers_that_cannot_see_them(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    cases = {
        "--output-dir": ["--input", "gs://bucket/in", "--output-dir", str(tmp_path / "out")],
        "--input": ["--input", str(photos), "--output-dir", "gs://bucket/out"],
    }
    for option, arguments in cases.items():
        result = run_cli("--dataset", "images", *arguments, "--runner", "DataflowRunner")
        assert result.exit_code == 2, result.output
        assert (
            f"{option} " in result.output
            and "DataflowRunner's workers do not see this machine's files" in result.output
        )
        assert "gs://" in result.output.splitlines()[-1]
    result = run_cli(
        "--dataset", "mnist", "--mnist-dir", str(tmp_path), "--output-dir", "gs://bucket/out",
        "--runner", "FlinkRunner",
    )  # fmt: skip
    assert result.exit_code == 2 and "--mnist-dir" in result.output and "download MNIST" in result.output


def test_dry_run_is_refused_where_beam_has_none() -> None:
    with pytest.raises(JobError, match="--dry_run is for DataflowRunner"):
        runner.beam_options(["--dry_run", "True"])
    with pytest.raises(JobError, match="--dry_run is for DataflowRunner; PortableRunner"):
        runner.beam_options(
            ["--runner", "PortableRunner", "--environment_type", "LOOPBACK", "--dry_run=True"]
        )
    options, _ = runner.beam_options(["--dry_run", "False"])  # Beam's untyped option: the string "False"
    assert runner.is_dry_run(options) is False


@pytest.mark.slow
def test_a_runner_without_metrics_says_not_verified(tmp_path: Path, shared_data: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = sorted((shared_data / "street-view-samples").glob("*.jpg"))[0]
    (photos / photo.name).write_bytes(photo.read_bytes())
    output = tmp_path / "out"
    result = run_cli(
        "--dataset", "images", "--input", str(photos), "--output-dir", str(output), "--angles", "0,90",
        "--image-size", "32", "--no-progress", "--runner", FAKE_RUNNER, "--environment_type", "LOOPBACK",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "images read: not verified: NoMetricsRunner reported no metrics;" in result.output
    info = schemas.load_manifest(str(output))
    assert info.config["nothing_lost"] == "not verified: NoMetricsRunner reported no metrics"
    assert info.num_records == 2
