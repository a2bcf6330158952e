"""A damaged backup never makes a run unresumable (issue 17, item 2): each backup is written aside and
renamed into place, the one before it is kept, and at resume a backup whose weights do not match the
SHA-256 its metadata recorded is set aside with one line; training resumes from the previous whole
backup, or starts over when none is left."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from schemas.output_rules import sha256_of
from tests.factories import write_records_dir
from trainer import callbacks, run_dir, train
from trainer.cli import main as train_main

pytestmark = pytest.mark.slow


class _Crash(keras.callbacks.Callback):
    """Stops the process's fit at epoch 1, after its second batch, as a kill would (no cleanup)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("records")
    write_records_dir(directory, images_per_split={"train": 8, "validation": 2}, angles=(0, 90, 180, 270))
    return directory


def _arguments(records: Path, output: Path) -> list[str]:
    return [
        *("--records", str(records), "--output", str(output), "--epochs", "3"),
        *("--steps-per-epoch", "3", "--batch-size", "4", "--no-tensorboard", "--backup-every-steps", "1"),
    ]


def _interrupted_run(records: Path, output: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    original = train.run
    with monkeypatch.context() as patch:
        patch.setattr(
            train, "run", lambda config, callbacks=(), **kw: original(config, [*callbacks, _Crash()], **kw)
        )
        result = CliRunner().invoke(train_main, _arguments(records, output))
    assert isinstance(result.exception, RuntimeError), result.output
    backup = output / "backup"
    assert {p.name for p in backup.iterdir()} == {
        "latest.weights.h5",
        "training_metadata.json",
        "previous.weights.h5",
        "previous_training_metadata.json",
    }
    return backup


def _epochs_logged(output: Path) -> list[int]:
    with open(output / "history.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def _rerun(records: Path, output: Path):
    result = CliRunner().invoke(train_main, _arguments(records, output))
    assert result.exit_code == 0, result.output + result.stderr
    assert "Traceback" not in result.stderr
    assert _epochs_logged(output) == [0, 1, 2]
    assert (output / "model.keras").is_file() and not (output / "backup").exists()
    return result


def test_backup_pairs_record_their_digest(records: Path, tmp_path: Path, monkeypatch) -> None:
    backup = _interrupted_run(records, tmp_path / "run", monkeypatch)
    for weights, metadata in (
        ("latest.weights.h5", "training_metadata.json"),
        ("previous.weights.h5", "previous_training_metadata.json"),
    ):
        data = json.loads((backup / metadata).read_text())
        assert data["sha256"] == sha256_of(str(backup / weights))
        assert data["epoch"] == 1
    assert not [p for p in backup.iterdir() if p.name.startswith(".rotnet-tmp")]


def test_truncated_latest_backup_is_set_aside_and_the_previous_one_resumed(
    records: Path, tmp_path: Path, monkeypatch
) -> None:
    output = tmp_path / "run"
    backup = _interrupted_run(records, output, monkeypatch)
    weights = backup / "latest.weights.h5"
    os.truncate(weights, weights.stat().st_size // 2)  # a kill in the middle of the write
    result = _rerun(records, output)
    damaged = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert len(damaged) == 1, result.stderr
    assert "latest.weights.h5 does not match" in damaged[0] and "trying the previous backup" in damaged[0]
    assert "resuming at epoch 2" in result.stderr


def test_no_whole_backup_left_starts_over(records: Path, tmp_path: Path, monkeypatch) -> None:
    output = tmp_path / "run"
    backup = _interrupted_run(records, output, monkeypatch)
    with open(backup / "latest.weights.h5", "r+b") as handle:  # same size, other bytes
        handle.seek(100)
        handle.write(b"\xff" * 64)
    (backup / "previous_training_metadata.json").write_text("{not json")
    result = _rerun(records, output)
    lines = result.stderr.splitlines()
    assert len([line for line in lines if "is damaged" in line]) == 2, result.stderr
    assert any("previous_training_metadata.json is not a backup's metadata" in line for line in lines)
    assert any("training starts over at epoch 1" in line for line in lines)
    assert "resuming" not in result.stderr
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 0 and metrics["epochs_run"] == 3


def test_a_write_cut_short_leaves_the_latest_backup_whole(tmp_path: Path, monkeypatch) -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    backup = callbacks.Backup(str(tmp_path / "backup"))
    backup.set_model(model)
    backup._save_model()
    before = (tmp_path / "backup" / "latest.weights.h5").read_bytes()
    model.layers[0].kernel.assign(np.ones((2, 1), "float32"))

    def half_write(self, filepath, overwrite=True):
        Path(filepath).write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(keras.Model, "save_weights", half_write)
    with pytest.raises(KeyboardInterrupt):
        backup._save_model()
    assert (tmp_path / "backup" / "latest.weights.h5").read_bytes() == before
    assert (
        run_dir.backup_problem(str(tmp_path / "backup"), "latest.weights.h5", "training_metadata.json")
        is None
    )
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [
        "latest.weights.h5",
        "training_metadata.json",
    ]


def test_a_legacy_run_without_marker_is_resumed(records: Path, tmp_path: Path, monkeypatch) -> None:
    output = tmp_path / "run"
    _interrupted_run(records, output, monkeypatch)
    (output / ".rotnet-run.json").unlink()  # as written before the marker existed
    for metadata in ("training_metadata.json", "previous_training_metadata.json"):  # no digest then
        path = output / "backup" / metadata
        path.write_text(json.dumps({"epoch": 1, "batch": 1}))
    result = _rerun(records, output)
    assert "resuming at epoch 2" in result.stderr
    assert (output / ".rotnet-run.json").is_file()
