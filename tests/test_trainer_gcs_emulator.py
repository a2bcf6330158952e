"""rotnet-train on gs:// with STORAGE_EMULATOR_HOST and no HTTPS proxy (issue 19): Beam reads the
manifest from the emulator, but TensorFlow's GCS client ignores that variable, so training stops in one
line that says so and what works, instead of "check that the GCS emulator ... is reachable" while it is.

    .venv/bin/python -m pytest tests/test_trainer_gcs_emulator.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from schemas.gcs import tensorflow_emulator_problem
from tests.factories import write_records_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_only_an_emulator_without_a_proxy_is_a_problem() -> None:
    path = "gs://b/records"
    assert tensorflow_emulator_problem(path, {}) is None
    assert tensorflow_emulator_problem("/local/records", {"STORAGE_EMULATOR_HOST": "http://h:1"}) is None
    assert (
        tensorflow_emulator_problem(path, {"STORAGE_EMULATOR_HOST": "http://h:1", "HTTPS_PROXY": "x"}) is None
    )
    problem = tensorflow_emulator_problem(path, {"STORAGE_EMULATOR_HOST": "http://h:1"})
    assert problem is not None and problem.startswith(
        "gs://b/records: TensorFlow's GCS client, which reads the shards, ignores STORAGE_EMULATOR_HOST=http://h:1"
    )


def test_training_from_the_emulator_without_a_proxy_says_why_in_one_line(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud import storage

    from trainer.cli import main

    for variable in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(variable, raising=False)
    local = tmp_path / "records"
    write_records_dir(local, images_per_split={"train": 4, "validation": 1}, angles=(0, 180))
    bucket = storage.Client().bucket(gcs_bucket.removeprefix("gs://"))
    for path in local.iterdir():
        bucket.blob(f"records/{path.name}").upload_from_filename(str(path))
    records = f"{gcs_bucket}/records"
    result = CliRunner().invoke(
        main, ["--records", records, "--output", str(tmp_path / "run"), "--epochs", "1"]
    )
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line == f"Error: {tensorflow_emulator_problem(records)}"
    assert "reachable" not in line and "HTTPS_PROXY" in line and "copy the records" in line
