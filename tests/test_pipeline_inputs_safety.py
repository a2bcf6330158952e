"""Every input of rotnet-pipeline ends as records or as one errors-file line; reads are bounded.

Issue 10, findings 5 (FIFO, /dev/zero, 1.5 GB file), 6 (non-UTF-8 names), 7 (duplicate image ids) and 8
(symlink loops, symlinked directories, and the usage errors: --angles bounds, --image-size, --lr).
"""

from __future__ import annotations

import hashlib
import io
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import schemas
from tests.hostile_inputs import NON_UTF8_PRINTED, plant_hostile_inputs, small_jpeg, tree_digest
from tests.pipeline_helpers import LOCAL_ONE_WORKER, error_entries, read_records, run_cli

pytestmark = pytest.mark.slow


# method="thread": if a FIFO were opened, the reading thread would block in open(); the timeout then
# ends the whole test process (xdist starts a new worker) instead of hanging CI.
@pytest.mark.timeout(60, method="thread")
def test_hostile_inputs_each_become_records_or_one_error_line(tmp_path: Path) -> None:
    planted = plant_hostile_inputs(tmp_path / "in", tmp_path / "outside")
    before = tree_digest(tmp_path / "in")
    output = tmp_path / "records"
    started = time.perf_counter()
    result = run_cli(
        "--dataset", "images", "--input", str(tmp_path / "in"), "--output-dir", str(output),
        "--angles", "0,90", "--image-size", "16", "--max-error-fraction", "1", *LOCAL_ONE_WORKER,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    errors = {entry["image_id"]: entry for entry in error_entries(output)}
    records = {record.image_id for record in read_records(output)}
    expected_errors = {item.relative: item.reason for item in planted if item.reason}
    expected_errors[NON_UTF8_PRINTED] = "not valid UTF-8"  # an id must be text: the name is escaped
    assert sorted(errors) == sorted(expected_errors)
    for image_id, phrase in expected_errors.items():
        assert phrase in errors[image_id]["reason"], errors[image_id]
        assert errors[image_id]["stage"] == "read"
    assert records == {"album.jpg/inner.jpg", "good.jpg", "link_to_good.jpg"}  # linked_album: outside
    info = schemas.load_manifest(str(output))
    assert info.num_images_read == len(records) + len(errors) == info.num_errors + len(records)
    assert "cycle" in result.output, "the symlinked directory read twice is reported"
    assert tree_digest(tmp_path / "in") == before
    assert elapsed < 60, f"{elapsed:.0f} s: the 1.5 GB file or /dev/zero was read"


@pytest.mark.timeout(60)
def test_a_file_over_max_file_bytes_is_an_error_line_not_a_read(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "small.jpg").write_bytes(small_jpeg(1))
    (inputs / "large.jpg").write_bytes(small_jpeg(2) + b"\0" * 5000)
    output = tmp_path / "records"
    result = run_cli(
        "--dataset", "images", "--input", str(inputs), "--output-dir", str(output), "--angles", "0",
        "--image-size", "16", "--max-file-bytes", "4000", "--max-error-fraction", "1", *LOCAL_ONE_WORKER,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [entry] = error_entries(output)
    assert entry["image_id"] == "large.jpg" and "over the limit of 4,000" in entry["reason"]
    assert "--max-file-bytes" in entry["reason"]


def street_view_dir_with_duplicates(directory: Path) -> None:
    """part1.zip holding x/dup_1.jpg and y/dup_1.jpg, and a loose dup_1.jpg: three different photos
    that all get the id dup_1; plus one unique image."""
    directory.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x/dup_1.jpg", small_jpeg(1))
        archive.writestr("y/dup_1.jpg", small_jpeg(2))
        archive.writestr("y/unique_2.jpg", small_jpeg(3))
    (directory / "part1.zip").write_bytes(buffer.getvalue())
    (directory / "dup_1.jpg").write_bytes(small_jpeg(4))


def test_duplicate_image_ids_fail_the_job_listing_them_or_get_a_stable_suffix(tmp_path: Path) -> None:
    """Finding 7: three photos all became id dup_1 (6 records, no warning)."""
    source = tmp_path / "street_view"
    street_view_dir_with_duplicates(source)
    arguments = [
        "--dataset", "street_view", "--street-view-dir", str(source), "--angles", "0,180",
        "--image-size", "16", *LOCAL_ONE_WORKER,
    ]  # fmt: skip
    failed = run_cli(*arguments, "--output-dir", str(tmp_path / "failed"))
    assert failed.exit_code == 1, failed.output
    assert "Traceback" not in failed.output
    message = failed.output[failed.output.index("Error:") :]
    assert "1 image id is shared by several source images" in message, message
    assert "dup_1 (3 sources: dup_1.jpg, part1.zip:x/dup_1.jpg, part1.zip:y/dup_1.jpg)" in message, message
    assert "--duplicate-ids suffix" in message
    assert not (tmp_path / "failed" / schemas.MANIFEST_NAME).exists()

    output = tmp_path / "suffixed"
    result = run_cli(*arguments, "--output-dir", str(output), "--duplicate-ids", "suffix")
    assert result.exit_code == 0, result.output
    ids = sorted({record.image_id for record in read_records(output)})
    suffix = {
        name: hashlib.sha256(name.encode()).hexdigest()[:8]
        for name in ("dup_1.jpg", "part1.zip:x/dup_1.jpg", "part1.zip:y/dup_1.jpg")
    }
    assert ids == sorted([f"dup_1~{value}" for value in suffix.values()] + ["unique_2"])
    assert schemas.load_manifest(str(output)).num_records == 4 * 2


@pytest.mark.timeout(120)  # before: still rendering after 300 s
def test_an_image_size_far_above_the_sources_is_refused_in_one_line(
    tmp_path: Path, shared_data: Path
) -> None:
    """Issue 32, item 8: `--dataset mnist --image-size 4096` on 12 digits x 2 angles still ran after
    300 s (664 MB). Over 4x the 28-px digits (112 px) is refused before anything is read or written."""
    arguments = [
        "--dataset", "mnist", "--mnist-dir", str(shared_data / "mnist-5k"), "--angles", "0,90",
        "--subset-fraction", "0.0025", *LOCAL_ONE_WORKER,
    ]  # fmt: skip
    refused = run_cli(*arguments, "--output-dir", str(tmp_path / "big"), "--image-size", "4096")
    assert refused.exit_code == 2, refused.output
    assert "Traceback" not in refused.output
    [line] = [line for line in refused.output.splitlines() if line.startswith("Error:")]
    assert "--image-size 4096 is over 4x the 28-px side of every mnist source image" in line, line
    assert "choose --image-size 112 or less" in line
    assert not (tmp_path / "big").exists()
    largest = run_cli(*arguments, "--output-dir", str(tmp_path / "ok"), "--image-size", "112")
    assert largest.exit_code == 0, largest.output


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--angles", "0-300000000"], "goes past 359"),
        (["--angles", "0-99999999999999999999"], "cannot read angles"),
        (["--image-size", "1"], "--image-size"),
        (["--image-size", "7"], "--image-size"),
    ],
)
def test_pipeline_usage_errors_are_one_line_and_cheap(
    tmp_path: Path, arguments: list[str], expected: str
) -> None:
    """Finding 8: --angles 0-300000000 allocated 9 GB; --image-size 1 was accepted."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jpg").write_bytes(small_jpeg(1))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = run_cli(
            "--dataset", "images", "--input", str(inputs), "--output-dir", str(tmp_path / "out"), *arguments
        )  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert expected in line and "Traceback" not in result.output, result.output
    assert peak < 64 * 2**20 and time.perf_counter() - started < 10
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("learning_rate", ["nan", "inf", "-0.001", "0"])
def test_train_refuses_a_learning_rate_that_is_not_a_positive_number(
    tmp_path: Path, learning_rate: str
) -> None:
    """Finding 8: rotnet-train --lr nan trained NaN and exited 0."""
    from tests.factories import write_records_dir
    from trainer.cli import main as train_main

    records = tmp_path / "records"
    write_records_dir(records, images_per_split={"train": 2, "validation": 1}, angles=(0, 90))
    result = CliRunner().invoke(
        train_main, ["--records", str(records), "--output", str(tmp_path / "run"), "--lr", learning_rate]
    )
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert f"--lr must be a positive, finite number (e.g. 1e-3), not {float(learning_rate)}" in line, line
    assert not (tmp_path / "run").exists()
