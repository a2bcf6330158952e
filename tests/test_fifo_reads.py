"""Only regular files are read (issue 17, item 6): a FIFO or a directory at a shard name, or a FIFO in
place of an original image, is named and never opened for a blocking read: rotnet-inspect (with and
without --verify), rotnet-train (with and without --skip-corrupt-shards) and rotnet-evaluate
--rotation-codes' source images. Each test ends in its pytest timeout if a read blocks."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from schemas import tfrecord_file, verify
from tests.factories import write_records_dir
from tests.hostile_inputs import small_jpeg
from tools.inspect import main as inspect_main

pytestmark = pytest.mark.timeout(120)


def _records_with(tmp_path: Path, what: str) -> tuple[Path, Path]:
    records = tmp_path / "records"
    info = write_records_dir(records, images_per_split={"train": 8, "validation": 2}, num_shards=2)
    shard = records / info.splits["train"].shards[0].name
    shard.unlink()
    if what == "fifo":
        os.mkfifo(shard)
    else:
        shard.mkdir()
    return records, shard


@pytest.mark.parametrize("what", ["fifo", "directory"])
@pytest.mark.parametrize("verify_flag", [[], ["--verify"]])
def test_inspect_names_a_fifo_or_directory_at_a_shard_name(tmp_path: Path, what: str, verify_flag) -> None:
    records, shard = _records_with(tmp_path, what)
    result = CliRunner().invoke(inspect_main, [str(records), "--no-progress", *verify_flag])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    kind = "a FIFO (named pipe)" if what == "fifo" else "a directory"
    problems = [
        line for line in result.output.splitlines() if line.startswith("PROBLEM") and shard.name in line
    ]
    assert problems and all(f"{kind}, not a regular file" in line for line in problems), result.output


def test_open_shard_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "train-00000-of-00001.tfrecord"
    os.mkfifo(fifo)
    with pytest.raises(tfrecord_file.CorruptShardError, match="FIFO"):
        list(tfrecord_file.iter_records(str(fifo)))
    assert (
        verify.check_shard(str(fifo), read_records=True).reason == "a FIFO (named pipe), not a regular file"
    )


def test_a_record_length_over_the_cap_is_damage_not_an_allocation(tmp_path: Path) -> None:
    shard = tmp_path / "train-00000-of-00001.tfrecord"
    header = (1 << 40).to_bytes(8, "little")
    shard.write_bytes(header + tfrecord_file.masked_crc32c(header).to_bytes(4, "little") + b"x" * 16)
    with pytest.raises(tfrecord_file.CorruptShardError, match="over 1,073,741,824 bytes"):
        list(tfrecord_file.iter_records(str(shard), verify=True))


@pytest.mark.slow
@pytest.mark.parametrize("skip", [False, True])
def test_train_names_a_fifo_shard_or_skips_it(tmp_path: Path, skip: bool) -> None:
    from trainer.cli import main as train_main

    records, shard = _records_with(tmp_path, "fifo")
    arguments = ["--records", str(records), "--output", str(tmp_path / "run"), "--epochs", "1"]
    arguments += ["--steps-per-epoch", "1", "--batch-size", "4", "--no-tensorboard"]
    result = CliRunner().invoke(train_main, arguments + (["--skip-corrupt-shards"] if skip else []))
    assert "Traceback" not in result.output
    if skip:
        assert result.exit_code == 0, result.output
        assert f"skipping damaged shard {shard}: a FIFO (named pipe), not a regular file" in result.output
        metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert metrics["num_skipped_shards"] == 1
    else:
        assert result.exit_code == 1, result.output
        assert f"damaged shard {shard}: a FIFO (named pipe), not a regular file" in result.output


def test_rotation_codes_skip_a_fifo_original(tmp_path: Path) -> None:
    from schemas.splits import assign_split
    from trainer import robustness

    originals = tmp_path / "photos"
    originals.mkdir()
    (originals / "real.jpg").write_bytes(small_jpeg(0))
    for index in range(6):  # some land in each split
        os.mkfifo(originals / f"pipe{index}.jpg")
    info = types.SimpleNamespace(
        dataset="images",
        config={"input_pattern": str(originals), "validation_fraction": 0.5, "center_crop": True},
        image=types.SimpleNamespace(channels=3),
    )
    split = assign_split("real.jpg", 0.5)
    images = robustness.load_source_images(info, split)
    assert [image_id for image_id, _ in images] == ["real.jpg"]
