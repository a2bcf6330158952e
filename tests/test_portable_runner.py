"""The same job on Beam's portable runner with EXTERNAL workers, the way Flink and Spark run
Python: `--runner PortableRunner --job_endpoint embed --environment_type EXTERNAL --environment_config
127.0.0.1:PORT` against a Beam worker pool started by the test. The records must be byte-identical to
the local runner's, and the nothing-lost balance must come from the runner's own metrics.

    .venv/bin/python -m pytest tests/test_portable_runner.py -q -n 1
"""

from __future__ import annotations

from pathlib import Path

import pytest

import schemas
from tests.pipeline_helpers import LOCAL_ONE_WORKER, content_hash, run_cli, serialized_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def portable(pool_address: str) -> list[str]:
    return [
        "--runner", "PortableRunner", "--job_endpoint", "embed",
        "--environment_type", "EXTERNAL", "--environment_config", pool_address, "--no-progress",
    ]  # fmt: skip


def both_runners(tmp_path: Path, pool_address: str, *arguments: str) -> tuple[Path, Path, str]:
    direct, external = tmp_path / "direct", tmp_path / "external"
    result = run_cli(*arguments, "--output-dir", str(direct), *LOCAL_ONE_WORKER)
    assert result.exit_code == 0, result.output
    result = run_cli(*arguments, "--output-dir", str(external), *portable(pool_address))
    assert result.exit_code == 0, result.output
    return direct, external, result.output


def assert_same_records_and_counted(direct: Path, external: Path, output: str) -> None:
    records = serialized_records(external)
    assert records and content_hash(records) == content_hash(serialized_records(direct))
    info = schemas.load_manifest(str(external))
    # The balance was checked from the runner's metrics, not derived from the written files.
    assert "nothing_lost" not in info.config, info.config
    assert info.config["runner"] == "PortableRunner"
    assert info.num_images_read == schemas.load_manifest(str(direct)).num_images_read
    assert f"images read {info.num_images_read:,};" in output


def test_mnist_on_external_workers_writes_the_local_records(
    tmp_path: Path, shared_data: Path, beam_worker_pool
) -> None:
    arguments = ["--dataset", "mnist", "--mnist-dir", str(shared_data / "mnist-5k")]
    arguments += ["--subset-fraction", "0.002", "--angles", "0,90,180"]
    direct, external, output = both_runners(tmp_path, beam_worker_pool.address, *arguments)
    assert_same_records_and_counted(direct, external, output)


def test_images_on_external_workers_write_the_local_records(
    tmp_path: Path, shared_data: Path, beam_worker_pool
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((shared_data / "street-view-samples").glob("*.jpg"))[:2]:
        (photos / path.name).write_bytes(path.read_bytes())
    (photos / "broken.jpg").write_bytes(b"not a jpeg")  # an errors-file line, counted on the workers
    arguments = ["--dataset", "images", "--input", str(photos), "--angles", "0,90", "--image-size", "32"]
    direct, external, output = both_runners(
        tmp_path, beam_worker_pool.address, *arguments, "--max-error-fraction", "0.5"
    )
    assert_same_records_and_counted(direct, external, output)
    assert schemas.load_manifest(str(external)).num_errors == 1
