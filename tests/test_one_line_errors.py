"""Faults and nonsense end in ONE line saying what to do, never a traceback (issue 17, items 8 and 9):
a full disk (ENOSPC) or an unwritable directory while the pipeline or the trainer writes, Ctrl-C of a
training run, a manifest of deeply nested JSON or claiming 100000x100000 px, `--weights /etc/passwd`,
`--output-dir afile/sub`, `--direct_num_workers -3`, `--angles ''`, more shards than records, and every
validation shard damaged."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import schemas
from pipeline import job
from tests.conftest import REPO_ROOT
from tests.factories import write_records_dir
from tests.hostile_inputs import small_jpeg
from tests.pipeline_helpers import LOCAL_ONE_WORKER, run_cli


def _one_error_line(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(2):
        (folder / f"p{index}.jpg").write_bytes(small_jpeg(index))
    return folder


def _pipeline(photos: Path, output: Path | str, *extra: str):
    return run_cli(
        "--dataset", "images", "--input", str(photos), "--output-dir", str(output),
        "--image-size", "16", *extra,
    )  # fmt: skip


# --- the pipeline's command line -----------------------------------------------------------------


def test_empty_angles_are_refused(photos: Path, tmp_path: Path) -> None:
    line = _one_error_line(_pipeline(photos, tmp_path / "out", "--angles", "", *LOCAL_ONE_WORKER), 2)
    assert "--angles" in line and "is empty" in line
    assert not (tmp_path / "out").exists()


def test_more_shards_than_records_are_refused(photos: Path, tmp_path: Path) -> None:
    result = _pipeline(
        photos, tmp_path / "out", "--angles", "0,90", "--num-shards", "100000", *LOCAL_ONE_WORKER
    )
    line = _one_error_line(result, 2)
    assert "--num-shards 100000 is more shards per split than the about 4 records" in line
    assert not (tmp_path / "out").exists(), "refused before anything was written"


def test_negative_direct_num_workers_is_one_line(photos: Path, tmp_path: Path) -> None:
    result = _pipeline(photos, tmp_path / "out", "--angles", "0,90", "--direct_num_workers", "-3")
    assert "--direct_num_workers -3 must be >= 1" in _one_error_line(result, 1)


def test_output_dir_below_a_file_is_refused(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("a user's file\n")
    result = _pipeline(photos, tmp_path / "afile" / "sub", "--angles", "0,90", *LOCAL_ONE_WORKER)
    assert "which is a file, not a directory" in _one_error_line(result, 2)
    assert (tmp_path / "afile").read_text() == "a user's file\n"


@pytest.mark.slow
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_pipeline_on_a_full_or_read_only_disk_is_one_line(
    photos: Path, tmp_path: Path, monkeypatch, code: int
) -> None:
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "out" / "train-00000-of-00001.tfrecord"))

    monkeypatch.setattr(job, "publish", fail)  # the renames into place hit the full or read-only disk
    result = _pipeline(photos, tmp_path / "out", "--angles", "0,90", *LOCAL_ONE_WORKER)
    line = _one_error_line(result, 1)
    assert os.strerror(code) in line and "rerun the same command" in line
    assert not (tmp_path / "out" / schemas.MANIFEST_NAME).exists()


def test_a_manifest_write_cut_short_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    info = write_records_dir(tmp_path / "records")
    (tmp_path / "records" / schemas.MANIFEST_NAME).unlink()

    import tempfile

    real = tempfile.NamedTemporaryFile

    class Full:
        def __init__(self, *args, **kwargs):
            self._file = real(*args, **kwargs)
            self.name = self._file.name

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._file.close()

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", Full)
    with pytest.raises(OSError, match="No space left"):
        schemas.write_manifest(str(tmp_path / "records"), info)
    assert not [p.name for p in (tmp_path / "records").iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_inspect_sheet_on_a_full_or_read_only_disk_is_one_line(
    tmp_path: Path, monkeypatch, code: int
) -> None:
    from tools import inspect

    write_records_dir(tmp_path / "records")

    def fail(records, path, title):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(inspect, "write_sheet", fail)
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(
        inspect.main, [str(tmp_path / "records"), "--sheet", str(sheet), "--no-progress"]
    )
    line = _one_error_line(result, 1)
    assert f"cannot write {sheet} ({os.strerror(code)})" in line
    assert not sheet.exists()


# --- manifests that would cost a traceback or all memory --------------------------------------------


@pytest.mark.parametrize("damage", ["nested", "huge image", "channels"])
def test_hostile_manifests_are_one_line(tmp_path: Path, damage: str) -> None:
    from tools.inspect import main as inspect_main

    records = tmp_path / "records"
    write_records_dir(records)
    manifest = records / schemas.MANIFEST_NAME
    if damage == "nested":
        manifest.write_text('{"schema_version": ' + "[" * 100_000 + "]" * 100_000 + "}")
        expected = "nests JSON too deeply"
    elif damage == "huge image":
        data = json.loads(manifest.read_text())
        data["image"]["height"] = data["image"]["width"] = 100_000
        manifest.write_text(json.dumps(data))
        expected = "image 100000x100000 px is over 4096 px a side"
    else:  # issue 32, item 2: rotnet-train passed it to TensorFlow (InvalidArgumentError, a traceback)
        data = json.loads(manifest.read_text())
        data["image"]["channels"] = 7
        manifest.write_text(json.dumps(data))
        expected = "image channels 7 is not one of (1, 3)"
    with pytest.raises(schemas.ManifestError, match=re.escape(expected)):
        schemas.load_manifest(str(records))
    line = _one_error_line(CliRunner().invoke(inspect_main, [str(records), "--no-progress"]), 1)
    assert expected in line


# --- the trainer ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("records")
    write_records_dir(directory, images_per_split={"train": 8, "validation": 2}, angles=(0, 90, 180, 270))
    return directory


def _train_arguments(records: Path, output: Path, *extra: str) -> list[str]:
    return [
        *("--records", str(records), "--output", str(output), "--epochs", "3", "--steps-per-epoch", "3"),
        *("--batch-size", "4", "--no-tensorboard", *extra),
    ]


def _train(records: Path, output: Path, *extra: str):
    from trainer.cli import main as train_main

    return CliRunner().invoke(train_main, _train_arguments(records, output, *extra))


@pytest.mark.parametrize("weights", ["/etc/passwd", "fifo"])
def test_weights_that_are_not_a_weights_file_are_refused(records: Path, tmp_path: Path, weights: str) -> None:
    if weights == "fifo":
        weights = str(tmp_path / "w.h5")
        os.mkfifo(weights)
    result = _train(records, tmp_path / "run", "--model", "mobilenet-v3-small", "--weights", weights)
    line = _one_error_line(result, 2)
    assert "--weights" in line and ("not an HDF5 weights file" in line or "FIFO" in line), line
    assert not (tmp_path / "run").exists()


def test_train_on_a_manifest_claiming_7_channels_is_one_line(tmp_path: Path) -> None:
    """Issue 32, item 2: the manifest's facts are checked before TensorFlow sees them (before:
    InvalidArgumentError and its traceback, exit 1)."""
    records = tmp_path / "records"
    write_records_dir(records, images_per_split={"train": 4, "validation": 2}, angles=(0, 90))
    manifest = records / schemas.MANIFEST_NAME
    data = json.loads(manifest.read_text())
    data["image"]["channels"] = 7
    manifest.write_text(json.dumps(data))
    line = _one_error_line(_train(records, tmp_path / "run"), 2)
    assert "image channels 7 is not one of (1, 3)" in line and "--records" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_every_validation_shard_damaged_is_refused(records: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    for shard in copy.glob("validation-*"):
        os.truncate(shard, shard.stat().st_size // 2)
    line = _one_error_line(_train(copy, tmp_path / "run", "--skip-corrupt-shards"), 1)
    assert "every validation shard is damaged" in line


@pytest.mark.slow
def test_train_on_a_full_disk_is_one_line(records: Path, tmp_path: Path, monkeypatch) -> None:
    from trainer import callbacks

    def full(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(self.backup_dir, "x.weights.h5"))

    monkeypatch.setattr(callbacks.Backup, "_save_model", full)
    line = _one_error_line(_train(records, tmp_path / "run"), 1)
    assert "No space left on device" in line and "rerun the same command to resume" in line


@pytest.mark.slow
def test_ctrl_c_of_training_is_one_line_and_exit_130(records: Path, tmp_path: Path) -> None:
    from tests.test_trainer_reliability import KILLING_SCRIPT  # signals itself at epoch 1, batch 2

    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)}
    arguments = _train_arguments(records, tmp_path / "run")
    interrupted = subprocess.run(
        [sys.executable, "-c", KILLING_SCRIPT, "1", "SIGINT", *arguments],
        capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert "Traceback" not in interrupted.stderr
    lines = [line for line in interrupted.stderr.splitlines() if "interrupted (Ctrl-C)" in line]
    assert len(lines) == 1 and "rerun the same command to resume" in lines[0]
    assert not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_of_a_two_worker_pipeline_is_one_line_and_exit_130(tmp_path: Path, shared_data: Path) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group, Beam's workers included."""
    import signal
    import time

    script = "import sys; from pipeline.cli import main; main(sys.argv[1:])"
    arguments = [
        *(
            "--dataset",
            "mnist",
            "--mnist-dir",
            str(shared_data / "mnist-5k"),
            "--output-dir",
            str(tmp_path / "out"),
        ),
        *("--image-size", "28", "--direct_num_workers", "2", "--no-progress"),
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", script, *arguments], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True, env=environment, cwd=REPO_ROOT, start_new_session=True,
    )  # fmt: skip
    lines = []
    for line in process.stderr:  # the job has started once it says what it writes
        lines.append(line)
        if line.startswith("writing mnist"):
            break
    time.sleep(3)  # the workers are rendering (the whole job takes over a minute here)
    os.killpg(process.pid, signal.SIGINT)
    lines += process.stderr.readlines()
    assert process.wait(timeout=120) == 130, "".join(lines)
    output = "".join(lines)
    assert "Traceback" not in output and "CRITICAL" not in output, output
    assert sum("interrupted (Ctrl-C)" in line for line in lines) == 1, output
    assert not (tmp_path / "out" / schemas.MANIFEST_NAME).exists()


# --- Ctrl-C and SIGTERM: one convention for every command (issue 32, item 3) -------------------------

# Runs a console script's main with one function replaced by one that signals this process (the
# interrupt lands while the command runs, as a Ctrl-C or `kill` would), then returns the exit status.
_SIGNALLED_COMMAND = """
import importlib, os, signal, sys, time
entry, target, sent = sys.argv[1:4]
module_name, attribute = target.rsplit(":", 1)

def interrupt(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, sent))
    time.sleep(30)  # the signal's handler raises here

setattr(importlib.import_module(module_name), attribute, interrupt)
entry_module, entry_name = entry.split(":")
getattr(importlib.import_module(entry_module), entry_name)(sys.argv[4:], prog_name="rotnet")
"""


def _convention_cases(tmp_path: Path) -> dict[str, tuple[str, str, list[str], str]]:
    """command -> (entry point, function replaced, arguments, words its line must hold)."""
    records = tmp_path / "records"
    write_records_dir(records, images_per_split={"train": 2, "validation": 2}, angles=(0, 90))
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(small_jpeg(0))
    run = tmp_path / "run" / "saved_model"
    run.mkdir(parents=True)
    (run / "saved_model.pb").write_bytes(b"")
    spec = tmp_path / "spec.toml"
    spec.write_text(f'records = "{records}"\n')
    tensorflow = "trainer.quiet:import_tensorflow"
    return {
        "rotnet-pipeline": (
            "pipeline.cli:main", "pipeline.job:run",
            ["--dataset", "images", "--input", str(photos), "--output-dir", str(tmp_path / "out")],
            "no manifest was written",
        ),
        "rotnet-train": (
            "trainer.cli:main", tensorflow, ["--records", str(records), "--output", str(tmp_path / "t")],
            "rerun the same command to resume",
        ),
        "rotnet-evaluate": (
            "trainer.evaluate_cli:main", tensorflow,
            ["--model", str(records), "--records", str(records), "--output", str(tmp_path / "e")],
            "nothing was written",
        ),
        "rotnet-correct": (
            "tools.correct:main", tensorflow, [str(records), str(photos), "-o", str(tmp_path / "c")],
            "nothing was written",
        ),
        "rotnet-inspect": ("tools.inspect:main", "tools.inspect:stray_files", [str(records)], "nothing changed"),
        "rotnet-bench": (
            "tools.bench:main", "tools.bench:load", ["geometry", "--print-only"], "was not changed",
        ),
        "rotnet-ablate": (
            "trainer.ablate:main", "trainer.ablate:load_spec", [str(spec), "--output", str(tmp_path / "a")],
            "rerun the same command to resume",
        ),
        "rotnet-export": (
            "trainer.export:main", tensorflow,
            [str(run.parent), "--format", "tflite", "--output", str(tmp_path / "m.tflite")],
            "nothing was written",
        ),
        "rotnet-cluster": (
            "pipeline.engines.cli:main", "pipeline.engines.dist:job_server",
            ["status", "flink", "--dir", str(tmp_path / "cluster")], "nothing changed",
        ),
    }  # fmt: skip


@pytest.mark.parametrize(("sent", "code", "cause"), [("SIGINT", 130, "Ctrl-C"), ("SIGTERM", 143, "SIGTERM")])
@pytest.mark.parametrize(
    "command",
    [
        "rotnet-pipeline", "rotnet-train", "rotnet-evaluate", "rotnet-correct", "rotnet-inspect",
        "rotnet-bench", "rotnet-ablate", "rotnet-export", "rotnet-cluster",
    ],
)  # fmt: skip
def test_every_command_ends_an_interrupt_in_one_line_and_130_or_143(
    tmp_path: Path, command: str, sent: str, code: int, cause: str
) -> None:
    """Before: rotnet-export and rotnet-correct printed click's "Aborted!" and exited 1 on Ctrl-C;
    SIGTERM killed most commands without a word (exit -15), leaving their temporary files."""
    entry, target, arguments, kept = _convention_cases(tmp_path)[command]
    done = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_COMMAND, entry, target, sent, *arguments],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    assert "Traceback" not in output and "Aborted!" not in output, output
    [line] = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert line.startswith(f"interrupted ({cause}): ") and kept in line, line
