"""Faults during training: a run killed mid-epoch (SIGKILL, SIGTERM) resumes from its backup when the
same command runs again; a truncated or corrupted shard stops training with an error naming the shard,
or is skipped, counted and reported with --skip-corrupt-shards."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import REPO_ROOT
from tests.factories import write_records_dir
from trainer.cli import main as train_main

pytestmark = pytest.mark.slow

# Runs rotnet-train in a child process with one extra callback that sends the process a signal in the
# middle of epoch KILL_EPOCH (after its second batch): the crash happens inside fit, as in real life.
KILLING_SCRIPT = """
import os, signal, sys
import keras
from trainer import train

KILL_EPOCH, SIGNAL = int(sys.argv[1]), getattr(signal, sys.argv[2])

class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == KILL_EPOCH and batch == 1:
            print("sending", sys.argv[2], "at epoch", self.epoch, flush=True)
            os.kill(os.getpid(), SIGNAL)

original_run = train.run
train.run = lambda config, callbacks=(), echo=print, **options: original_run(config, [*callbacks, Kill()], echo, **options)
from trainer.cli import main
main(sys.argv[3:])
"""


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("records")
    write_records_dir(directory, images_per_split={"train": 8, "validation": 2}, angles=(0, 90, 180, 270))
    return directory


def _arguments(records: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--records",
        str(records),
        "--output",
        str(output),
        "--epochs",
        "3",
        "--steps-per-epoch",
        "4",
        "--batch-size",
        "4",
        "--no-tensorboard",
        *extra,
    ]


def _epochs_logged(output: Path) -> list[int]:
    with open(output / "history.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize(
    ("signal_name", "extra", "expected_code"),
    [
        ("SIGKILL", ("--backup-every-steps", "1"), -signal.SIGKILL),
        ("SIGTERM", (), 143),
    ],
)
def test_killed_mid_epoch_then_the_same_command_resumes_and_finishes(
    records: Path, tmp_path: Path, signal_name: str, extra: tuple[str, ...], expected_code: int
) -> None:
    output = tmp_path / "run"
    arguments = _arguments(records, output, *extra)
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)}
    killed = subprocess.run(
        [sys.executable, "-c", KILLING_SCRIPT, "1", signal_name, *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert killed.returncode == expected_code, killed.stderr[-3000:]
    assert f"sending {signal_name} at epoch 1" in killed.stdout
    metadata = json.loads((output / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 1  # epoch 0 finished, epoch 1 was cut short
    if signal_name == "SIGTERM":
        assert "rerun the same command to resume" in killed.stderr
    assert not (output / "saved_model").exists()

    result = CliRunner().invoke(train_main, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "resuming at epoch 2" in result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs_run"] == 3
    assert _epochs_logged(output) == [0, 1, 2]  # the cut-short epoch logged once, by the rerun
    assert (output / "saved_model" / "saved_model.pb").exists() and (output / "model.keras").exists()
    assert not (output / "backup").exists()


def test_resume_with_different_options_is_refused(records: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    (output / "backup").mkdir(parents=True)
    (output / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    (output / "train_config.json").write_text(json.dumps({"records": str(records), "model": "resnet50"}))
    (output / ".rotnet-run.json").write_text('{"tool": "rotnet-train", "files": []}')  # a run's own dir
    result = CliRunner().invoke(train_main, _arguments(records, output))
    assert result.exit_code == 1 and "different model" in result.output
    # Written before --width existed: the missing field means its default, not a difference.
    assert "width" not in result.output


def _damage(tmp_path: Path, truncate: bool = True) -> tuple[Path, str, str]:
    """Records with one shard truncated (unless not `truncate`) and another with a flipped byte (same size)."""
    directory = tmp_path / "damaged"
    write_records_dir(
        directory, images_per_split={"train": 8, "validation": 2}, angles=(0, 90, 180, 270), num_shards=4
    )
    truncated, flipped = (
        directory / "train-00001-of-00004.tfrecord",
        directory / "train-00002-of-00004.tfrecord",
    )
    if truncate:
        truncated.write_bytes(truncated.read_bytes()[:-100])
    content = bytearray(flipped.read_bytes())
    content[len(content) // 2] ^= 0x55
    flipped.write_bytes(bytes(content))
    return directory, str(truncated), str(flipped)


def test_truncated_shard_stops_training_with_its_name(tmp_path: Path) -> None:
    directory, truncated, _ = _damage(tmp_path)
    result = CliRunner().invoke(train_main, _arguments(directory, tmp_path / "run"))
    assert result.exit_code == 1
    assert truncated in result.output and "truncated" in result.output
    assert "--skip-corrupt-shards" in result.output and "Traceback" not in result.output


def test_corrupted_shard_found_while_training_is_named(tmp_path: Path) -> None:
    directory, _, flipped = _damage(
        tmp_path, truncate=False
    )  # same size: only TensorFlow's CRC check sees it
    result = CliRunner().invoke(train_main, _arguments(directory, tmp_path / "run"))
    assert result.exit_code == 1, result.output
    assert f"damaged shard {flipped}" in result.output and "CRC" in result.output


def test_skip_corrupt_shards_trains_on_the_rest_and_reports_them(tmp_path: Path) -> None:
    directory, truncated, flipped = _damage(tmp_path)
    output = tmp_path / "run"
    result = CliRunner().invoke(train_main, [*_arguments(directory, output), "--skip-corrupt-shards"])
    assert result.exit_code == 0, result.output
    assert f"skipping damaged shard {truncated}" in result.output
    assert f"skipping damaged shard {flipped}" in result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["num_skipped_shards"] == 2
    assert sorted(entry.split(":")[0] for entry in metrics["skipped_shards"]) == sorted([truncated, flipped])
