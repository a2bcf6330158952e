"""The pipeline under bad inputs and faults: nothing lost silently, nothing partial visible.

* bad and unusual images become correct records or an errors-file line with a reason; counts add up;
* too many bad images fail the run (exit 1) and leave no manifest;
* a pipeline killed mid-write leaves no partial shard and no manifest; a rerun writes the same records;
* a download with a wrong checksum fails with a clear message and writes nothing downstream;
* bad command lines are one-line usage errors (exit 2), never a traceback.

    .venv/bin/python -m pytest tests/test_pipeline_reliability.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import schemas
from pipeline import codec
from pipeline.config import PipelineConfig
from pipeline.datasets import mnist
from schemas import sharding
from tests.conftest import REPO_ROOT
from tests.helpers import final_shards
from tests.pipeline_helpers import (
    LOCAL_ONE_WORKER,
    content_hash,
    error_entries,
    expected_records,
    mnist_subset,
    read_records,
    reliability_inputs,
    run_cli,
    serialized_records,
    write_idx,
)


@pytest.mark.slow
def test_bad_inputs_become_records_or_errors_and_counts_add_up(tmp_path: Path, shared_data: Path) -> None:
    inputs = tmp_path / "inputs"
    expected = reliability_inputs(inputs, shared_data / "street-view-samples" / "008922_1.jpg")
    output = tmp_path / "records"
    arguments = ["--dataset", "images", "--input", str(inputs), "--angles", "0,90", "--image-size", "32"]
    result = run_cli(
        *arguments, "--output-dir", str(output), "--max-error-fraction", "0.5", *LOCAL_ONE_WORKER
    )
    assert result.exit_code == 0, result.output

    bad = {name: reason for name, reason in expected.items() if reason}
    good = sorted(name for name, reason in expected.items() if reason is None)
    entries = {entry["image_id"]: entry for entry in error_entries(output)}
    assert sorted(entries) == sorted(bad)
    for name, word in bad.items():
        assert word in entries[name]["reason"], entries[name]
        assert entries[name]["stage"] == "decode" and entries[name]["dataset"] == "images"

    info = schemas.load_manifest(str(output))
    assert info.num_images_read == len(expected) == len(good) + info.num_errors
    assert info.num_records + info.num_errors * 2 == info.num_images_read * 2  # records + errors x angles
    assert info.error_files == ["errors-00000-of-00001.jsonl"]
    assert "non-image files skipped 1" in result.output  # notes.txt: counted, not an image by name
    assert {record.image_id for record in read_records(output)} == set(good)

    # Good inputs: exactly the records the pure chain makes of the decoded pixels (EXIF applied,
    # CMYK / 16-bit / alpha / palette / grey converted to RGB).
    pixels = {name: codec.decode_source_image((inputs / name).read_bytes()) for name in good}
    config = PipelineConfig(
        dataset="images",
        output_dir="-",
        dataset_settings={"input_pattern": "-"},
        image_size=32,
        angles_degrees=(0, 90),
    )
    images = {name: (pixels[name], schemas.assign_split(name, 0.1), -1) for name in good}
    assert content_hash(serialized_records(output)) == content_hash(expected_records(images, config))
    upright = pixels["exif_rotated.jpg"]
    stored = codec.decode_source_image((inputs / "exif_rotated.jpg").read_bytes(), apply_exif=False)
    assert upright.shape == (96, 72, 3) and stored.shape == (72, 96, 3)

    # A finished directory is not replaced without --overwrite (checked before Beam starts): a usage error.
    again = run_cli(*arguments, "--output-dir", str(output), *LOCAL_ONE_WORKER)
    assert again.exit_code == 2 and "--overwrite" in again.output

    # With the default --max-error-fraction (1%) the run fails: exit 1, errors listed, no manifest.
    failed = tmp_path / "failed"
    result = run_cli(*arguments, "--output-dir", str(failed), *LOCAL_ONE_WORKER)
    assert result.exit_code == 1
    assert f"{len(bad)} of {len(expected)} source images" in result.output
    assert "over --max-error-fraction 0.01" in result.output and "Traceback" not in result.output
    assert not (failed / schemas.MANIFEST_NAME).exists()
    assert len(error_entries(failed)) == len(bad)


def _rotnet_pipeline_command() -> list[str]:
    script = Path(sys.executable).parent / "rotnet-pipeline"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from pipeline.cli import main; main()"]


def _records_in_temporary_shards(output: Path) -> bool:
    """True once a temporary shard holds records (one shard written; others are being written)."""
    for path in output.glob(".rotnet-tmp-*/*.tfrecord"):
        try:
            if path.stat().st_size:
                return True
        except FileNotFoundError:  # renamed by Beam meanwhile
            continue
    return False


@pytest.mark.slow
def test_killed_pipeline_leaves_no_partial_shard_and_a_rerun_writes_the_same_records(
    tmp_path: Path, shared_data: Path
) -> None:
    offline = shared_data / "mnist-5k"
    output = tmp_path / "records"
    arguments = [
        "--dataset", "mnist", "--mnist-dir", str(offline), "--output-dir", str(output),
        "--subset-fraction", "0.1", "--angles", "0-359:10", "--image-size", "56", "--num-shards", "4",
        "--no-progress", "--direct_num_workers", "2",
    ]  # fmt: skip
    log = tmp_path / "killed.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            _rotnet_pipeline_command() + arguments,
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the Beam worker processes die with it
        )
        try:
            deadline = time.monotonic() + 120
            while not _records_in_temporary_shards(output):
                assert process.poll() is None, f"finished before it could be killed: {log.read_text()}"
                assert time.monotonic() < deadline, "no shard was ever being written"
                time.sleep(0.01)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    assert not (output / schemas.MANIFEST_NAME).exists()
    # Shards are renamed into place only when all are complete: killed mid-write, no file has a final
    # shard name, while the temporary shard that was being written is still there, holding records.
    assert not final_shards(output), "a shard was renamed into place before all were done"
    assert _records_in_temporary_shards(output)

    result = run_cli(*arguments)
    assert result.exit_code == 0, result.output
    assert not list(output.glob(".rotnet-*")), "temporary, progress, ledger or lock files were left behind"
    assert "removing what its ledger names" in result.output, "the killed run's leftovers are reported"
    info = schemas.load_manifest(str(output))
    train = mnist_subset(offline / "train-images-idx3-ubyte.gz", offline / "train-labels-idx1-ubyte.gz", 0.1)
    assert info.num_images_read == len(train)
    config = PipelineConfig(
        dataset="mnist", output_dir="-", image_size=56, angles_degrees=tuple(range(0, 360, 10))
    )
    assert content_hash(serialized_records(output)) == content_hash(expected_records(train, config))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("sent", "code", "cause"), [("SIGINT", 130, "Ctrl-C"), ("SIGTERM", 143, "SIGTERM")])
def test_interrupted_one_worker_pipeline_is_one_line_and_leaves_only_its_ledger(
    tmp_path: Path, shared_data: Path, sent: str, code: int, cause: str
) -> None:
    """Issue 32, item 3: Ctrl-C of `--direct_num_workers 1` exited 1 with "the Beam job failed:
    KeyboardInterrupt"; SIGTERM killed it without a word, leaving its lock, temp and progress files.
    Now: 130 / 143, one line, and only the ledger is left (it names what the rerun removes)."""
    output = tmp_path / "records"
    arguments = [
        "--dataset", "mnist", "--mnist-dir", str(shared_data / "mnist-5k"), "--output-dir", str(output),
        "--image-size", "28", "--no-progress", "--direct_num_workers", "1",
    ]  # fmt: skip
    process = subprocess.Popen(
        _rotnet_pipeline_command() + arguments, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = []
    try:
        for line in process.stderr:  # the job runs once it says what it writes
            lines.append(line)
            if line.startswith("writing mnist"):
                break
        time.sleep(6)  # in a DoFn: rendering 5,000 images x 360 angles on one worker takes minutes
        assert process.poll() is None, "".join(lines)
        process.send_signal(getattr(signal, sent))  # the launcher alone, as `kill` or a scheduler does
        lines += process.stderr.readlines()
        assert process.wait(timeout=60) == code, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
    text = "".join(lines)
    assert "Traceback" not in text and "Beam job failed" not in text, text
    [line] = [line for line in lines if line.startswith("interrupted")]
    assert (
        line.startswith(f"interrupted ({cause}): no manifest was written")
        and "rerun the same command" in line
    )
    # Its lock released, its temp and progress dirs removed; the ledger names what is left to remove.
    assert sorted(os.listdir(output)) == [".rotnet-run.json"]


@pytest.mark.slow
def test_download_with_a_wrong_checksum_fails_clearly_and_writes_nothing(
    tmp_path: Path, shared_data: Path, http_server: tuple[str, Path]
) -> None:
    base_url, www = http_server
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data / "mnist-5k" / name, www / name)
    images, labels = mnist.load_split(
        (www / "train-images-idx3-ubyte.gz").read_bytes(), (www / "train-labels-idx1-ubyte.gz").read_bytes()
    )
    write_idx(www / "t10k-images-idx3-ubyte.gz", images[:10])
    write_idx(www / "t10k-labels-idx1-ubyte.gz", labels[:10])
    checksums = tmp_path / "wrong.json"
    checksums.write_text(json.dumps(dict.fromkeys(mnist.MNIST_FILES, "0" * 32)))
    output = tmp_path / "records"
    result = run_cli(
        "--dataset", "mnist", "--output-dir", str(output), "--mnist-mirror", base_url,
        "--mnist-checksums", str(checksums), "--download-dir", str(tmp_path / "cache"),
        "--angles", "0", *LOCAL_ONE_WORKER,
    )  # fmt: skip
    assert result.exit_code == 1
    message = result.output[result.output.index("Error: the Beam job failed:") :]
    assert "ChecksumError: could not download" in message and "Traceback" not in message
    assert "md5 expected 00000000000000000000000000000000" in message
    assert not (output / schemas.MANIFEST_NAME).exists()
    assert not final_shards(output) and not (output / sharding.errors_name()).exists()
    assert not list((tmp_path / "cache").glob("*.gz")), "a file that failed its checksum was kept"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--dataset", "cifar", "--output-dir", "x"], "Invalid value for '--dataset'"),
        (["--dataset", "mnist"], "Missing option '--output-dir'"),
        (["--dataset", "images", "--output-dir", "x"], "--dataset images needs --input"),
        (["--dataset", "images", "--output-dir", "x", "--input", "/no/such/dir"], "does not exist"),
        (["--dataset", "mnist", "--output-dir", "x", "--mnist-dir", "/no/such/dir"], "is not a directory"),
        (["--dataset", "mnist", "--output-dir", "x", "--angles", "0-400"], "angles must be in 0..359"),
        (["--dataset", "mnist", "--output-dir", "x", "--image-size", "big"], "'big' is not a valid integer"),
        (["--dataset", "mnist", "--output-dir", "x", "--mnist-dri", "d"], "did you mean --mnist-dir?"),
        (["--dataset", "mnist", "--output-dir", "x", "--validation-fraction", "1"], "--validation-fraction"),
    ],
)
def test_bad_command_lines_are_one_line_usage_errors(arguments: list[str], expected: str) -> None:
    result = run_cli(*arguments)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
