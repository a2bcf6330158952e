"""DataflowRunner offline: `--dry_run True` against a GCS emulator builds the job, stages
rotnet's sdist and the pipeline to the emulated bucket, writes the job description, prints what would
run and exits 0, touching nothing in --output-dir. Without credentials or emulator it fails at once,
in one line.

    .venv/bin/python -m pytest tests/test_dataflow_dry_run.py -q -n 1
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.version import PACKAGE_VERSION
from tests.conftest import REPO_ROOT
from tests.pipeline_helpers import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Every step of the graph (pipeline/job.py build): the top-level transforms of the staged pipeline.
STEPS = (
    "Read", "CheckIds", "DecodeImages", "PrepareRotations", "WriteShards", "FlattenErrors", "WriteErrors",
    "FlattenStats", "WriteStats",
)  # fmt: skip


def dataflow_args(bucket: str) -> list[str]:
    return [
        "--runner", "DataflowRunner", "--project", "rotnet-test", "--region", "us-central1",
        "--temp_location", f"{bucket}/tmp", "--job_name", "rotnet-dry-run",
    ]  # fmt: skip


def test_dry_run_stages_the_package_and_writes_the_job_file(
    shared_data: Path, gcs_bucket: str, tmp_path: Path
) -> None:
    from apache_beam import version as beam_version
    from apache_beam.portability.api import beam_runner_api_pb2
    from google.cloud import storage

    client = storage.Client()
    bucket = client.bucket(gcs_bucket.removeprefix("gs://"))
    for path in sorted((shared_data / "street-view-samples").glob("*.jpg"))[:2]:
        bucket.blob(f"in/{path.name}").upload_from_filename(str(path))
    job_file = f"{gcs_bucket}/jobs/rotnet.json"
    result = run_cli(
        "--dataset", "images", "--input", f"{gcs_bucket}/in", "--output-dir", f"{gcs_bucket}/records",
        "--angles", "0,90", "--image-size", "32", "--no-progress",
        *dataflow_args(gcs_bucket), "--dry_run", "True", "--dataflow_job_file", job_file,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dry run: Dataflow job rotnet-dry-run built and staged, not submitted" in result.output
    assert f"job description: {job_file}" in result.output

    names = sorted(blob.name for blob in client.list_blobs(bucket))
    assert not [name for name in names if name.startswith("records/")], names  # output dir untouched
    job = json.loads(bucket.blob("jobs/rotnet.json").download_as_bytes())
    environment = job["environment"]
    assert job["name"] == "rotnet-dry-run"
    assert environment["userAgent"]["version"] == beam_version.__version__
    [pool] = environment["workerPools"]
    packages = {package["name"]: package["location"] for package in pool["packages"]}
    sdist = f"rotnet-{PACKAGE_VERSION}.tar.gz"
    assert sdist in packages and "pickled_main_session" not in packages, packages
    staged = [name for name in names if name.endswith("/" + sdist)]
    assert len(staged) == 1 and packages[sdist].endswith(staged[0]), (packages, names)
    options = environment["sdkPipelineOptions"]["options"]
    assert options["project"] == "rotnet-test" and options["region"] == "us-central1"
    assert options["save_main_session"] is False
    assert options["temp_location"].startswith(f"{gcs_bucket}/tmp/rotnet-dry-run.")
    assert options["extra_packages"][0].endswith(sdist)

    [pipeline_blob] = [name for name in names if name.endswith("/pipeline.pb")]
    proto = beam_runner_api_pb2.Pipeline.FromString(bucket.blob(pipeline_blob).download_as_bytes())
    top_level = {t.unique_name for t in proto.components.transforms.values() if "/" not in t.unique_name}
    assert set(STEPS) <= top_level, top_level
    assert f"steps: {' -> '.join(STEPS)}\n" in result.output  # what would run, in order


def test_dataflow_without_credentials_fails_fast_in_one_line(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GOOGLE_", "STORAGE_"))}
    env.update(PYTHONPATH=str(REPO_ROOT), HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "from pipeline.cli import main; main()",
         "--dataset", "images", "--input", "gs://no-such-bucket/in", "--output-dir", "gs://no-such-bucket/out",
         *dataflow_args("gs://no-such-bucket"), "--dry_run", "True"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "gs://no-such-bucket" in lines[0] and "no Google credentials were found" in lines[0]
    assert "gcloud auth application-default login" in lines[0]
    assert seconds < 30, seconds  # Beam alone would spend ~24 s retrying, then minutes timing out
