"""rotnet-train on gs://. TensorFlow's GCS client ignores STORAGE_EMULATOR_HOST, so it reaches
the emulator through tests/servers.py's GoogleApisProxy (HTTPS_PROXY + CURL_CA_BUNDLE + a test token):
the shards are read by TensorFlow's own gs:// code, the manifest by Beam's. An unreachable or
unauthorised gs:// path ends in one line naming the path and the fix. The first line a user sees is
the tool's own (no TensorFlow start-up noise), and TensorBoard logs are written.

    .venv/bin/python -m pytest tests/test_trainer_gcs.py -q -n 1
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import REPO_ROOT
from tests.factories import write_records_dir
from tests.servers import ForbiddenServer, GoogleApisProxy, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# A small shuffle buffer: the default 10,000 would cycle the 40 records 250 times through the proxy.
TRAIN = ["--epochs", "1", "--steps-per-epoch", "2", "--validation-steps", "1", "--batch-size", "4"]
TRAIN += ["--shuffle-buffer", "16", "--cycle-length", "2"]
NOISE = (
    "absl::InitializeLog",
    "cudart_stub",
    "cuInit",
    "oneDNN",
    "cpu_feature_guard",
    "TF_ENABLE_ONEDNN_OPTS",
)


@pytest.fixture
def gcs_records(gcs_bucket: str, tmp_path: Path) -> str:
    """A tiny records directory (8 + 2 images x 4 angles) on the emulator: its gs:// path."""
    from google.cloud import storage

    local = tmp_path / "records"
    write_records_dir(local, images_per_split={"train": 8, "validation": 2}, angles=(0, 90, 180, 270))
    bucket = storage.Client().bucket(gcs_bucket.removeprefix("gs://"))
    for path in local.iterdir():
        bucket.blob(f"records/{path.name}").upload_from_filename(str(path))
    return f"{gcs_bucket}/records"


def environment_without_tf_log_level() -> dict[str, str]:
    """This environment as a user's: tests/conftest.py sets TF_CPP_MIN_LOG_LEVEL, a user need not."""
    return {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}


def train_in_subprocess(records: str, output: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from trainer.cli import main; main()", "--records", records,
         "--output", str(output), *TRAIN],
        env={**environment_without_tf_log_level(), "PYTHONPATH": str(REPO_ROOT), **env}, capture_output=True, text=True,
        timeout=240, check=False,
    )  # fmt: skip


def test_trainer_reads_gs_shards_through_tensorflows_gcs_client(
    gcs_records: str, googleapis_proxy: GoogleApisProxy, tmp_path: Path
) -> None:
    connects_before = len(googleapis_proxy.connects)
    done = train_in_subprocess(gcs_records, tmp_path / "run", googleapis_proxy.environment())
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "model.keras").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    # TensorFlow itself went to storage.googleapis.com (the shards) and www.googleapis.com (stat).
    assert {"storage.googleapis.com", "www.googleapis.com"} <= set(
        googleapis_proxy.connects[connects_before:]
    )
    # A quiet start: the tool's own line comes first, no TensorFlow start-up line anywhere.
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("training mnist-cnn"), done.stderr[:2000]
    assert not [word for word in NOISE if word in done.stderr], done.stderr[:2000]
    assert "no TensorBoard logs" not in done.stderr
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))


def test_trainer_without_access_for_tensorflow_says_so_in_one_line(gcs_records: str, tmp_path: Path) -> None:
    """The manifest is readable (Beam, emulator) but TensorFlow's requests are refused (403)."""
    with ForbiddenServer() as forbidden, GoogleApisProxy(forbidden.port, tmp_path / "ca") as proxy:
        done = train_in_subprocess(gcs_records, tmp_path / "run", proxy.environment())
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"Error: cannot read {gcs_records}: access denied (")
    assert "check the account's permissions on the bucket" in lines[0]


def test_trainer_unauthorised_or_unreachable_gs_is_one_line(
    gcs_records: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.cli import main

    with ForbiddenServer() as forbidden:  # Beam's client gets 403 for the manifest
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", forbidden.url)
        result = CliRunner().invoke(main, ["--records", gcs_records, "--output", str(tmp_path / "a"), *TRAIN])
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(
        f"Error: cannot read {gcs_records}/dataset_info.json: access denied"
    ) or line.startswith(f"Error: cannot read {gcs_records}: access denied"), line

    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", closed)
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["--records", gcs_records, "--output", str(tmp_path / "b"), *TRAIN])
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line == (
        f"Error: {gcs_records}: the GCS emulator STORAGE_EMULATOR_HOST={closed} does not answer; start it, "
        "or unset STORAGE_EMULATOR_HOST to use Google Cloud Storage"
    )
    assert time.perf_counter() - started < 10  # Beam would retry for ~80 s, TensorFlow for ~200 s
