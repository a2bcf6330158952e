"""rotnet-inspect: a sound directory passes; every kind of mismatch is named, with exit status 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import schemas
from pipeline.codec import decode_record_image
from schemas import tfrecord_file
from tests.factories import write_records_dir
from tools.inspect import main


@pytest.fixture
def records(tmp_path: Path) -> Path:
    directory = tmp_path / "records"
    write_records_dir(directory, angles=(0, 90, 180, 270), images_per_split={"train": 5, "validation": 2})
    return directory


def run(*args: str):
    return CliRunner().invoke(main, [*args, "--no-progress"])


def test_sound_directory_passes_and_is_summarized(records: Path) -> None:
    result = run(str(records), "--verify")
    assert result.exit_code == 0, result.output
    assert "train                5            20       2" in result.output
    assert "validation           2             8       2" in result.output
    assert "per angle      min 7  max 7 records over 4 angles" in result.output
    assert "OK: the files match the manifest and every record was read back" in result.output


def test_json_output_counts_every_angle(records: Path) -> None:
    result = run(str(records), "--verify", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["records_by_angle"] == {"0": 7, "90": 7, "180": 7, "270": 7}
    assert data["problems"] == [] and data["verified"] is True


def _sheet_cells(sheet: Path, count: int) -> list[np.ndarray]:
    """The first `count` image cells of a contact sheet (RGB), from the layout of tools.figures: a title
    line, cells of 128 px every 132 px across and every 150 px down, 8 columns."""
    pixels = np.asarray(Image.open(sheet).convert("RGB"))
    cells = []
    for index in range(count):
        row, column = divmod(index, 8)
        x, y = 4 + column * 132, 24 + row * 150
        cells.append(pixels[y : y + 128, x : x + 128])
    return cells


def test_contact_sheet_pairs_each_record_with_it_turned_back_upright(tmp_path: Path) -> None:
    directory = tmp_path / "records"
    write_records_dir(directory, angles=(0, 90, 180, 270), images_per_split={"train": 4})
    # Each record's cell as the sheet draws a 28 px image: scaled to 128 px with nearest neighbour
    # (which commutes with quarter turns, so a turned cell is the cell of the turned image).
    cell_of = {}
    for shard in sorted(directory.glob("train-*.tfrecord")):
        for data in tfrecord_file.iter_records(str(shard)):
            record = schemas.decode_example(data)
            grey = Image.fromarray(decode_record_image(record)[:, :, 0]).convert("RGB")
            cell = np.asarray(grey.resize((128, 128), Image.NEAREST))
            cell_of[(record.image_id, record.angle_degrees)] = cell
    sheet = tmp_path / "sheet.png"
    result = run(str(directory), "--sheet", str(sheet), "--num-samples", "6")
    assert result.exit_code == 0, result.output
    with Image.open(sheet) as image:
        assert image.size == (8 * 132 + 4, 20 + 2 * 150 + 4)  # 12 cells: 6 records, each with its correction
    cells = _sheet_cells(sheet, 12)
    shown = []
    for stored, corrected in zip(cells[0::2], cells[1::2], strict=True):
        matches = [key for key, cell in cell_of.items() if np.array_equal(cell, stored)]
        assert len(matches) == 1, "a sheet cell is not exactly one record"
        angle = matches[0][1]
        shown.append(angle)
        # Turned back: clockwise by the record's (counter-clockwise) angle.
        assert np.array_equal(corrected, np.rot90(stored, -angle // 90)), matches[0]
    assert {90, 270} & set(shown), shown  # a quarter turn, which a correction the wrong way gets wrong


def _last_record_middle(data: bytes) -> tuple[int, int]:
    """(records in the shard, byte offset of the middle of its last record's payload), from the TFRecord
    framing: 8-byte length, 4-byte CRC, payload, 4-byte CRC."""
    offset, count, middle = 0, 0, 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 8], "little")
        middle = offset + 12 + length // 2
        offset += 16 + length
        count += 1
    return count, middle


def test_flipped_bit_is_found_only_with_verify(records: Path) -> None:
    # A bit flipped in a record that the quick check does not decode (it decodes the first 4 of each
    # shard): only the CRCs of --verify can find it.
    shard = max(records.glob("train-*.tfrecord"), key=lambda path: _last_record_middle(path.read_bytes())[0])
    data = bytearray(shard.read_bytes())
    count, middle = _last_record_middle(bytes(data))
    assert count > 4
    data[middle] ^= 0x40
    shard.write_bytes(bytes(data))
    assert run(str(records)).exit_code == 0
    result = run(str(records), "--verify")
    assert result.exit_code == 1
    assert f"PROBLEM  {shard}: " in result.output and "CRC mismatch at byte offset" in result.output


def test_truncated_missing_and_stray_shards_are_named(records: Path) -> None:
    truncated = records / "train-00000-of-00002.tfrecord"
    truncated.write_bytes(truncated.read_bytes()[:-7])
    (records / "validation-00001-of-00002.tfrecord").unlink()
    (records / "train-00000-of-00005.tfrecord").write_bytes(b"")
    (records / "beam-temp-train-123").mkdir()
    result = run(str(records), "--verify")
    assert result.exit_code == 1
    assert f"{truncated}: {len(truncated.read_bytes()):,} bytes but the manifest says" in result.output
    assert f"{records / 'validation-00001-of-00002.tfrecord'}: missing" in result.output
    assert "train-00000-of-00005.tfrecord: a shard not listed in the manifest" in result.output
    assert "beam-temp-train-123: temporary files of an interrupted pipeline run" in result.output
    assert "truncated record" in result.output


def test_unfinished_directory_and_bad_arguments(tmp_path: Path) -> None:
    result = run(str(tmp_path))
    assert result.exit_code == 1
    assert "did not finish" in result.output and "Traceback" not in result.output
    result = run(str(tmp_path / "nope"))
    assert result.exit_code == 2 and "is not a directory" in result.output


def test_reordered_records_are_found_by_their_sha256_only_with_verify(records: Path) -> None:
    """Every CRC intact, the same count and size: only the shard's registered SHA-256 tells."""
    from schemas import tfrecord_file

    shard = records / "train-00000-of-00002.tfrecord"
    stored = list(tfrecord_file.iter_records(str(shard)))
    assert len(stored) > 1
    tfrecord_file.write_records(str(shard), list(reversed(stored)))
    assert run(str(records)).exit_code == 0
    result = run(str(records), "--verify")
    assert result.exit_code == 1
    assert f"PROBLEM  {shard}: SHA-256 " in result.output and "but the manifest says" in result.output


def test_cue_audit_reports_accuracy_against_chance_and_plots(tmp_path: Path) -> None:
    directory = tmp_path / "records"
    write_records_dir(directory, angles=range(0, 360, 5), images_per_split={"train": 16, "validation": 4})
    plot = tmp_path / "cues.png"
    result = run(str(directory), "--json", "--audit-cues", "--audit-plot", str(plot))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    audit = report["cue_audit"]
    assert audit["chance"] == pytest.approx(1 / 9)  # angle mod 90 in ten-degree bins
    # The audit of the whole directory with the default sample, as the library computes it.
    from tools import cue_audit

    expected = json.loads(json.dumps(cue_audit.audit(str(directory)).to_dict()))
    assert audit == expected
    assert audit["num_images"] == 20 and set(audit["angles"]) <= set(range(0, 360, 5))
    assert audit["paired"]["ci_low"] < audit["paired"]["accuracy"] < audit["paired"]["ci_high"]
    # The plot: one panel per statistic (10 for grey records), 3 across, at 90 dpi; not blank.
    assert report["cue_audit_plot"] == str(plot)
    with Image.open(plot) as picture:
        assert picture.format == "PNG" and picture.size == (3 * 5 * 90, round(4 * 2.6 * 90))
        assert len(picture.convert("RGB").getcolors(1 << 20) or ()) > 50
    again = tmp_path / "cues-again.png"  # an existing plot is never replaced
    text = run(str(directory), "--audit-cues", "--audit-plot", str(again))
    assert text.exit_code == 0 and "chance" in text.output and str(again) in text.output, text.output


def test_cue_audit_options_need_the_audit_and_enough_images(records: Path, tmp_path: Path) -> None:
    result = run(str(records), "--audit-plot", str(tmp_path / "cues.png"))
    assert result.exit_code == 2 and "go with --audit-cues" in result.output
    assert not (tmp_path / "cues.png").exists()
    few = tmp_path / "few"
    write_records_dir(few, angles=(0, 45), images_per_split={"train": 1})
    result = run(str(few), "--audit-cues", "--audit-plot", str(tmp_path / "cues.png"))
    assert result.exit_code == 1 and "cue audit:" in result.output, result.output


def test_figures_never_replace_or_write_through_what_is_there(records: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"the user's own picture")
    link = tmp_path / "link.png"
    link.symlink_to(mine)
    for option in ("--sheet", "--audit-plot"):
        for path in (mine, link):
            extra = ["--audit-cues"] if option == "--audit-plot" else []
            result = run(str(records), option, str(path), *extra)
            assert result.exit_code == 2 and "already exists" in result.output, result.output
    assert mine.read_bytes() == b"the user's own picture" and link.is_symlink()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link.png", "mine.png", "records"]
