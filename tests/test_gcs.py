"""gs:// paths through a GCS emulator on 127.0.0.1: the pipeline reads its input from and
writes its records to gs:// with the same records as a local run, rotnet-inspect verifies them there,
and a process pointed at an emulator does not spend ~24 s retrying for Google credentials.

    .venv/bin/python -m pytest tests/test_gcs.py -q -n 1
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import schemas
from tests.conftest import REPO_ROOT
from tests.pipeline_helpers import LOCAL_ONE_WORKER, content_hash, run_cli, serialized_records

pytestmark = pytest.mark.slow

IMAGE_ARGS = ["--dataset", "images", "--angles", "0,90", "--image-size", "32"]


def upload(bucket: str, prefix: str, files: list[Path]) -> None:
    from google.cloud import storage

    client = storage.Client()  # anonymous under STORAGE_EMULATOR_HOST
    target = client.bucket(bucket.removeprefix("gs://"))
    for path in files:
        target.blob(f"{prefix}/{path.name}").upload_from_filename(str(path))


def gcs_records(directory: str) -> list[bytes]:
    from schemas import paths, tfrecord_file

    info = schemas.load_manifest(directory)
    found = []
    for split in info.splits:
        for path in info.shard_paths(directory, split):
            with paths.open_binary(path) as handle:
                local = Path(os.environ["ROTNET_TEST_TMP"]) / path.rsplit("/", 1)[-1]
                local.write_bytes(handle.read())
            found += list(tfrecord_file.iter_records(str(local), verify=True))
    return found


def test_pipeline_reads_and_writes_gs_like_a_local_run_and_inspect_verifies_it(
    tmp_path: Path, shared_data: Path, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = sorted((shared_data / "street-view-samples").glob("*.jpg"))[:3]
    upload(gcs_bucket, "in/photos", photos)
    local_input = tmp_path / "photos"
    local_input.mkdir()
    for path in photos:
        (local_input / path.name).write_bytes(path.read_bytes())

    local = run_cli(
        *IMAGE_ARGS, "--input", str(local_input), "--output-dir", str(tmp_path / "local"), *LOCAL_ONE_WORKER
    )
    assert local.exit_code == 0, local.output
    output = f"{gcs_bucket}/records/photos"
    remote = run_cli(
        *IMAGE_ARGS, "--input", f"{gcs_bucket}/in/photos", "--output-dir", output, *LOCAL_ONE_WORKER
    )
    assert remote.exit_code == 0, remote.output
    assert "images read 3;" in remote.output

    monkeypatch.setenv("ROTNET_TEST_TMP", str(tmp_path))
    records = gcs_records(output)
    assert len(records) == 3 * 2
    assert content_hash(records) == content_hash(serialized_records(tmp_path / "local"))
    info = schemas.load_manifest(output)
    assert info.num_images_read == 3 and info.num_errors == 0

    from tools import inspect

    with pytest.raises(SystemExit) as done:
        inspect.main([output, "--verify", "--no-progress"])
    assert done.value.code == 0


def test_emulator_credentials_spare_the_credentials_retries(gcs_bucket: str, tmp_path: Path) -> None:
    """A fresh process (Beam caches credentials per process) with STORAGE_EMULATOR_HOST and no
    credentials: Beam's first gs:// call waited 23.1 s (measured) retrying google.auth.default() without
    the token-only credentials file; with it, it answers at once."""
    script = textwrap.dedent(
        f"""
        import time
        started = time.perf_counter()
        from schemas import gcs
        assert gcs.use_emulator_credentials() is not None
        import google.auth
        credentials, _ = google.auth.default()
        assert credentials.valid and credentials.token == "storage-emulator", credentials
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.create("{gcs_bucket}/probe.txt") as handle:
            handle.write(b"x")
        assert FileSystems.exists("{gcs_bucket}/probe.txt")
        print(f"seconds {{time.perf_counter() - started:.1f}}")
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "GOOGLE_APPLICATION_CREDENTIALS"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["TMPDIR"] = str(tmp_path)  # where the credentials file goes
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    seconds = float(done.stdout.split()[-1])
    # Beam's retries alone sleep ~2+4+8+16 s with jitter (23 s measured); imports take ~2-5 s here.
    assert seconds < 15, done.stdout
    assert "Unable to find default credentials" not in done.stderr
