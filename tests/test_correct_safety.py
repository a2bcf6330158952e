"""rotnet-correct never touches what it did not write.

Every test proves the user's files untouched with a SHA-256 of the whole tree before and after
(`tree_digest`), with the stand-in predictor of tests/test_correct.py (a fixed 90 degree answer).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.hostile_inputs import NON_UTF8_NAME, NON_UTF8_PRINTED, plant_hostile_inputs, tree_digest
from tests.test_correct import FixedAnglePredictor, upright_photo
from tools import correct


def run_correct(tmp_path: Path, monkeypatch, *args: str, predictor=None):
    monkeypatch.setattr(correct, "load_predictor", lambda model: predictor or FixedAnglePredictor(90))
    model = tmp_path / "model.keras"
    model.write_bytes(b"stand-in")
    return CliRunner().invoke(correct.main, [str(model), *args, "--no-progress"])


def photos(folder: Path, names: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    """Turned copies of one photo under `folder` (relative names may hold directories)."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rot90(upright_photo(), k=1)).save(folder / name)
    return folder


def report_rows(out: Path) -> dict[str, dict]:
    return {Path(row["path"]).name: row for row in json.loads((out / "predictions.json").read_text())}


@pytest.mark.parametrize(
    "where", ["the input dir", "inside the input", "a symlink to the input", "around the input"]
)
def test_output_overlapping_an_input_is_refused_and_the_inputs_stay_identical(
    tmp_path: Path, monkeypatch, where: str
) -> None:
    album = photos(tmp_path / "album", ("a.png", "sub/b.png"))
    os.symlink(album, tmp_path / "album-link")
    output = {
        "the input dir": album,
        "inside the input": album / "sub",
        "a symlink to the input": tmp_path / "album-link",
        "around the input": tmp_path,
    }[where]
    (tmp_path / "model.keras").write_bytes(b"stand-in")  # what run_correct writes, before the digest
    before = tree_digest(tmp_path)
    result = run_correct(tmp_path, monkeypatch, str(album), "-o", str(output))
    assert result.exit_code == 2, result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error.endswith("choose an output directory outside every input"), result.output
    assert "Traceback" not in result.output
    assert tree_digest(tmp_path) == before


def test_an_input_file_inside_the_output_dir_is_refused(tmp_path: Path, monkeypatch) -> None:
    folder = photos(tmp_path / "photos")
    before = tree_digest(folder)
    result = run_correct(tmp_path, monkeypatch, str(folder / "a.png"), "-o", str(folder))
    assert result.exit_code == 2 and "is inside -o" in result.output, result.output
    assert tree_digest(folder) == before


def test_symlinks_directories_and_foreign_files_at_output_names_are_left_alone(
    tmp_path: Path, monkeypatch
) -> None:
    album = photos(tmp_path / "album", ("a.png", "b.png", "c.png", "d.png", "sub/e.png", "f.png"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target.png").write_bytes(b"the user's file a link points to")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere / "target.png", out / "a.png")  # a link at an output name
    (out / "b.png").mkdir()  # a directory in the way
    (out / "c.png").write_bytes(b"the user's own c.png")  # a file rotnet-correct did not write
    os.symlink(elsewhere, out / "sub")  # a symlinked parent directory inside OUT
    (out / "unrelated.txt").write_text("next to the outputs")
    before_out, before_elsewhere, before_album = tree_digest(out), tree_digest(elsewhere), tree_digest(album)
    result = run_correct(tmp_path, monkeypatch, str(album), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "corrected 2 of 6 images, 4 skipped" in result.output
    rows = report_rows(out)
    assert "is a symlink: rotnet-correct never writes through or over links" in rows["a.png"]["error"]
    assert "is not a regular file" in rows["b.png"]["error"]
    assert "already exists and was not written by rotnet-correct" in rows["c.png"]["error"]
    assert "sub is a symlink: rotnet-correct does not write through or over it" in rows["e.png"]["error"]
    assert rows["d.png"]["error"] == rows["f.png"]["error"] == ""
    np.testing.assert_array_equal(np.asarray(Image.open(out / "d.png")), upright_photo())
    assert tree_digest(elsewhere) == before_elsewhere, "nothing written through a link"
    assert tree_digest(album) == before_album
    after_out = tree_digest(out)
    assert {name: after_out[name] for name in before_out} == before_out, "every user entry identical"
    assert sorted(set(after_out) - set(before_out)) == [
        ".rotnet-correct.json",
        "d.png",
        "f.png",
        "predictions.csv",
        "predictions.json",
    ], "no temporary file left"


def test_a_rerun_replaces_its_own_outputs_but_not_ones_the_user_changed(tmp_path: Path, monkeypatch) -> None:
    album = photos(tmp_path / "album", ("a.png", "b.png"))
    out = tmp_path / "out"
    assert run_correct(tmp_path, monkeypatch, str(album), "-o", str(out)).exit_code == 0
    (out / "b.png").write_bytes(b"edited by the user after the first run")
    edited = tree_digest(out)["b.png"]
    result = run_correct(
        tmp_path, monkeypatch, str(album), "-o", str(out), predictor=FixedAnglePredictor(270)
    )
    assert result.exit_code == 0, result.output
    rows = report_rows(out)
    assert rows["a.png"]["error"] == "" and rows["a.png"]["angle_degrees"] == 270
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), np.rot90(upright_photo(), k=2))
    assert "was not written by rotnet-correct (or was changed since)" in rows["b.png"]["error"]
    assert tree_digest(out)["b.png"] == edited


def test_a_foreign_report_or_ledger_in_the_output_dir_stops_the_run_before_anything_is_written(
    tmp_path: Path, monkeypatch
) -> None:
    album = photos(tmp_path / "album", ("a.png",))
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("the user's own spreadsheet\n")
    before = tree_digest(out)
    result = run_correct(tmp_path, monkeypatch, str(album), "-o", str(out))
    assert result.exit_code == 2 and "predictions.csv already exists and was not written" in result.output
    assert tree_digest(out) == before
    (out / "predictions.csv").unlink()
    (out / correct.LEDGER_NAME).write_text('{"files": {"a.png": "0"}}')
    before = tree_digest(out)
    result = run_correct(tmp_path, monkeypatch, str(album), "-o", str(out))
    assert result.exit_code == 2 and "is not a rotnet-correct ledger" in result.output, result.output
    assert tree_digest(out) == before


def _permissions_apply(directory: Path) -> bool:
    """False for a user who writes into read-only directories anyway (root with CAP_DAC_OVERRIDE)."""
    probe = directory / "probe"
    probe.mkdir(mode=0o500)
    try:
        (probe / "x").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o700)
    return False


def test_an_unwritable_subdirectory_is_a_per_file_error(tmp_path: Path, monkeypatch) -> None:
    if not _permissions_apply(tmp_path):
        pytest.skip("this user writes into read-only directories anyway (root); run without CAP_DAC_OVERRIDE")
    album = photos(tmp_path / "album", ("a.png", "locked/b.png"))
    out = tmp_path / "out"
    (out / "locked").mkdir(parents=True)
    (out / "locked").chmod(0o500)
    try:
        result = run_correct(tmp_path, monkeypatch, str(album), "-o", str(out))
    finally:
        (out / "locked").chmod(0o700)
    assert result.exit_code == 0 and "corrected 1 of 2 images, 1 skipped" in result.output
    assert "Permission denied" in report_rows(out)["b.png"]["error"]


def test_one_image_crashing_is_its_own_error_line_and_the_report_is_still_written(
    tmp_path: Path, monkeypatch
) -> None:
    album = photos(tmp_path / "album", ("a.png", "b.png", "c.png"))
    original = correct.corrected
    calls = []

    def crash_on_the_second(image, angle, crop=False, keep_size=False):
        calls.append(angle)
        if len(calls) == 2:
            raise MemoryError("stand-in for one image that cannot be processed")
        return original(image, angle, crop, keep_size)

    monkeypatch.setattr(correct, "corrected", crash_on_the_second)
    out = tmp_path / "out"
    result = run_correct(tmp_path, monkeypatch, str(album), "-o", str(out), "--batch-size", "1")
    assert result.exit_code == 0, result.output
    rows = report_rows(out)
    assert (
        rows["b.png"]["error"] == "not written: MemoryError: stand-in for one image that cannot be processed"
    )
    assert rows["a.png"]["output"] and rows["c.png"]["output"]


def test_a_run_stopped_midway_still_writes_the_report_with_every_input(tmp_path: Path, monkeypatch) -> None:
    album = photos(tmp_path / "album", ("a.png", "b.png", "c.png"))

    class StopsOnTheSecondBatch(FixedAnglePredictor):
        batches = 0

        def predict(self, images, batch_size=64, tta=1):
            StopsOnTheSecondBatch.batches += 1
            if StopsOnTheSecondBatch.batches == 2:
                raise KeyboardInterrupt
            return super().predict(images, batch_size, tta)

    out = tmp_path / "out"
    result = run_correct(
        tmp_path,
        monkeypatch,
        str(album),
        "-o",
        str(out),
        "--batch-size",
        "1",
        predictor=StopsOnTheSecondBatch(90),
    )
    assert result.exit_code != 0
    rows = report_rows(out)
    assert rows["a.png"]["error"] == "" and rows["a.png"]["output"]
    assert (
        rows["b.png"]["error"] == rows["c.png"]["error"] == "not processed: the run stopped before this image"
    )
    # The ledger was saved after the first batch: a rerun may replace a.png, the one output it wrote.
    assert "a.png" in json.loads((out / correct.LEDGER_NAME).read_text())["files"]


@pytest.mark.timeout(60)  # a FIFO input that is opened would block forever
def test_hostile_inputs_each_get_a_report_line_and_are_never_read_unbounded(
    tmp_path: Path, monkeypatch
) -> None:
    planted = plant_hostile_inputs(tmp_path / "in", tmp_path / "outside")
    before = tree_digest(tmp_path / "in")
    out = tmp_path / "out"
    result = run_correct(tmp_path, monkeypatch, str(tmp_path / "in"), "-o", str(out))
    assert result.exit_code == 0, result.output
    rows = {row["path"]: row for row in json.loads((out / "predictions.json").read_text())}
    root = str(tmp_path / "in") + "/"
    assert sorted(path.removeprefix(root) for path in rows) == sorted(item.relative for item in planted)
    for item in planted:
        row = rows[root + item.relative]
        expected = item.walk_problem or item.reason
        if expected:
            assert expected in row["error"] and not row["output"], (item.relative, row)
        else:
            assert row["error"] == "" and row["angle_degrees"] == 90, (item.relative, row)
    # The non-UTF-8 name is corrected under its own name and reported with its bytes escaped.
    assert rows[root + NON_UTF8_PRINTED]["output"] == str(out / NON_UTF8_PRINTED)
    assert (out / NON_UTF8_NAME).is_file()
    assert (out / "album.jpg" / "inner.jpg").is_file() and not (out / "linked_album").exists()
    assert tree_digest(tmp_path / "in") == before
    (out / "predictions.csv").read_text(encoding="utf-8")  # valid UTF-8 throughout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", ["garbage", "fifo"])
def test_a_broken_model_file_is_one_line_and_nothing_is_written(tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text("{}")
    if damage == "fifo":
        os.mkfifo(run / "model.keras")  # would block a plain open() for ever
    else:
        (run / "model.keras").write_bytes(b"not a zip file")
    out = tmp_path / "out"
    result = CliRunner().invoke(correct.main, [str(run), str(photos(tmp_path / "in")), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert str(run) in result.output
    assert "Traceback" not in result.output and not out.exists()
