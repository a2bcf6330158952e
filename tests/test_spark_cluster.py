"""The pipeline on a Spark 3.5 standalone cluster: 1 Master + 2 Workers (separate JVMs) on 127.0.0.1,
from PyPI's pyspark 3.5.7 jars, with Beam's Spark job server assembled from beam-runners-spark-3 2.62.0
and started by rotnet-pipeline (`--runner SparkRunner --spark_master_url spark://127.0.0.1:PORT`).

    make test-cluster        # or: .venv/bin/python -m pytest -m cluster -p no:xdist tests/test_spark_cluster.py

The same byte-identity check as on Flink (tests/test_flink_cluster.py): an MNIST subset and a folder of
photos with a corrupt file give the DirectRunner's shards (every SHA-256), counts and errors file; the
Spark master lists the application FINISHED and both workers ran an executor for it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.pipeline_helpers import LOCAL_ONE_WORKER, run_cli
from tests.test_flink_cluster import mnist_arguments, shard_digests

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def spark(cluster, job_name: str) -> list[str]:
    return [
        "--runner",
        "SparkRunner",
        "--spark_master_url",
        cluster.master,
        "--job_name",
        job_name,
        "--no-progress",
    ]


def assert_same_as_direct(direct: Path, on_spark: Path) -> None:
    import schemas

    reference, info = schemas.load_manifest(str(direct)), schemas.load_manifest(str(on_spark))
    assert shard_digests(on_spark) == shard_digests(direct) and shard_digests(direct)
    assert (info.num_images_read, info.num_errors) == (reference.num_images_read, reference.num_errors)
    for name in info.error_files:
        assert (on_spark / name).read_bytes() == (direct / name).read_bytes()
    # Spark's Beam metrics over-count recomputed stages: the balance is not claimed (runner.UNRELIABLE_METRICS),
    # and the count of images read is the files' (written + errors), as for a runner without metrics.
    assert info.config["nothing_lost"].startswith(
        "not verified: Beam 2.62's Spark job server counts a stage again"
    )
    assert info.config["runner"] == "SparkRunner"


def assert_finished_on_both_workers(cluster, job_name: str) -> None:
    [app] = [app for app in cluster.rest("/json/")["completedapps"] if app["name"].startswith(job_name)]
    assert app["state"] == "FINISHED", app
    # Each worker keeps a folder per application it ran an executor for.
    worked = [
        folder for folder in (cluster.directory / "work").glob(f"worker-*/{app['id']}") if folder.is_dir()
    ]
    assert len(worked) == 2, worked


@pytest.mark.parametrize("dataset", ["mnist", "images"])
def test_spark_writes_the_direct_runners_bytes(
    tmp_path: Path, shared_data: Path, spark_cluster, dataset: str
) -> None:
    if dataset == "mnist":
        arguments = mnist_arguments(shared_data, "0.004", "0,90,180")
    else:
        photos = tmp_path / "photos"
        photos.mkdir()
        for path in sorted((shared_data / "street-view-samples").glob("*.jpg"))[:2]:
            (photos / path.name).write_bytes(path.read_bytes())
        (photos / "broken.jpg").write_bytes(b"not a jpeg")
        arguments = ["--dataset", "images", "--input", str(photos), "--angles", "0,90", "--image-size", "32"]
        arguments += ["--max-error-fraction", "0.5"]
    direct, on_spark, name = tmp_path / "direct", tmp_path / "spark", f"rotnet-test-{uuid.uuid4().hex[:10]}"
    assert run_cli(*arguments, "--output-dir", str(direct), *LOCAL_ONE_WORKER).exit_code == 0
    result = run_cli(*arguments, "--output-dir", str(on_spark), *spark(spark_cluster, name))
    assert result.exit_code == 0, result.output
    assert_same_as_direct(direct, on_spark)
    assert_finished_on_both_workers(spark_cluster, name)
