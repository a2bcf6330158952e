"""rotnet-correct: inputs are collected without loss, images come back upright, bad files are reported.

The command's file handling is tested with a stand-in predictor that reports a fixed angle (so the
expected output is known exactly); tests/test_correct_e2e.py runs it with a real trained model.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline import geometry
from tests.factories import synthetic_image
from tools import correct


@dataclass
class FixedAnglePredictor:
    """Says every image is rotated `angle` degrees counter-clockwise, with confidence 0.75."""

    angle: int
    image_size: tuple[int, int] = (28, 28)
    channels: int = 1

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return geometry.resize(geometry.center_crop(image[:, :, :1]), self.image_size)

    def predict(self, images, batch_size: int = 64, tta: int = 1):
        assert all(image.shape == (*self.image_size, self.channels) for image in images)
        count = len(images)
        return StandInPrediction(np.full(count, self.angle), np.full(count, 0.75))


@dataclass
class StandInPrediction:
    """The fields of trainer.predict.Prediction that rotnet-correct reads."""

    angles_degrees: np.ndarray
    confidence: np.ndarray


def upright_photo() -> np.ndarray:
    return synthetic_image(3, size=40, channels=3)[:, :36]  # not square: width 36, height 40


def test_right_angle_correction_is_exact() -> None:
    upright = upright_photo()
    turned = np.rot90(upright, k=1)  # 90 degrees counter-clockwise
    np.testing.assert_array_equal(correct.corrected(turned, 90), upright)
    np.testing.assert_array_equal(correct.corrected(np.rot90(upright, k=3), 270), upright)


@pytest.mark.parametrize("angle", [7, 30, 45, 133, 301])
def test_crop_leaves_no_border_and_keep_size_keeps_the_size(angle: int) -> None:
    # A tilted photo fills its frame; undoing the tilt must not bring in black corners with --crop.
    photo = np.full((90, 120, 3), 200, np.uint8)
    cropped = correct.corrected(photo, angle, crop=True)
    assert cropped.min() >= 199, f"fill pixels at {angle} degrees"
    assert cropped.shape[0] < 90 and cropped.shape[1] < 120
    assert correct.corrected(photo, angle, crop=True, keep_size=True).shape == photo.shape
    assert correct.corrected(photo, angle, keep_size=True).shape == photo.shape
    expanded = correct.corrected(photo, angle)
    assert expanded.shape[0] > 90 or expanded.shape[1] > 120  # nothing cut by default


def test_inputs_from_dirs_files_and_globs_never_collide(tmp_path: Path) -> None:
    (tmp_path / "album" / "sub").mkdir(parents=True)
    for name in ("album/a.jpg", "album/sub/b.PNG", "album/notes.txt", "loose/a.jpg", "c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = correct.collect_inputs(
        [str(tmp_path / "album"), str(tmp_path / "loose" / "a.jpg"), str(tmp_path / "*.png")]
    )
    assert [(str(item.file.relative_to(tmp_path)), str(item.relative)) for item in found] == [
        ("album/a.jpg", "a.jpg"),
        ("album/sub/b.PNG", "sub/b.PNG"),
        ("loose/a.jpg", "a-1.jpg"),
        ("c.png", "c.png"),
    ]
    with pytest.raises(click.BadParameter, match="no file, directory or matching glob"):
        correct.collect_inputs([str(tmp_path / "missing" / "*.jpg")])


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.rot90(upright_photo(), k=1)).save(folder / "turned.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_bytes(b"this is not a picture")
    return folder


def run(tmp_path: Path, monkeypatch, *args: str, angle: int = 90):
    monkeypatch.setattr(correct, "load_predictor", lambda model: FixedAnglePredictor(angle))
    model = tmp_path / "model.keras"
    model.write_bytes(b"stand-in")
    return CliRunner().invoke(correct.main, [str(model), *args, "--no-progress"])


def test_command_corrects_good_images_and_reports_bad_ones(tmp_path: Path, inputs: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    result = run(tmp_path, monkeypatch, str(inputs), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "corrected 1 of 3 images, 2 skipped" in result.output
    np.testing.assert_array_equal(np.asarray(Image.open(out / "turned.png")), upright_photo())
    assert sorted(p.name for p in out.iterdir()) == [
        ".rotnet-correct.json",
        "predictions.csv",
        "predictions.json",
        "turned.png",
    ]
    rows = {
        Path(row["path"]).name: row
        for row in csv.DictReader((out / "predictions.csv").read_text().splitlines())
    }
    assert rows["turned.png"]["angle_degrees"] == "90" and rows["turned.png"]["confidence"] == "0.75"
    assert rows["empty.jpg"]["error"] == "empty file (0 bytes)"
    assert rows["text.png"]["error"] == "not an image file (unknown format)"
    assert json.loads((out / "predictions.json").read_text())[2]["output"] == str(out / "turned.png")


def test_dry_run_writes_only_the_report(tmp_path: Path, inputs: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    result = run(tmp_path, monkeypatch, str(inputs / "turned.png"), "-o", str(out), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "predicted 1 of 1 images, 0 skipped" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        ".rotnet-correct.json",
        "predictions.csv",
        "predictions.json",
    ]


def test_every_input_failing_exits_1_and_usage_errors_exit_2(
    tmp_path: Path, inputs: Path, monkeypatch
) -> None:
    result = run(tmp_path, monkeypatch, str(inputs / "empty.jpg"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "corrected 0 of 1 images, 1 skipped" in result.output
    missing_model = CliRunner().invoke(
        correct.main, ["nowhere.keras", str(inputs), "-o", str(tmp_path / "o")]
    )
    assert missing_model.exit_code == 2 and "nowhere.keras does not exist" in missing_model.output
    no_output = CliRunner().invoke(correct.main, [str(inputs), str(inputs)])
    assert no_output.exit_code == 2 and "Missing option '-o'" in no_output.output


def test_an_animated_gif_is_corrected_from_its_first_frame_and_the_report_says_so(
    tmp_path: Path, monkeypatch
) -> None:
    """Issue 32, item 7: a 5-frame animated GIF was written as a 1-frame GIF with no note."""
    folder = tmp_path / "in"
    folder.mkdir()
    turned = np.rot90(upright_photo(), k=1)
    frames = [
        Image.fromarray(np.where(turned > 0, turned, 10 * k).astype(np.uint8)).convert("P") for k in range(5)
    ]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(folder / "anim.gif").n_frames == 5
    Image.fromarray(np.rot90(upright_photo(), k=1)).save(folder / "still.png")
    out = tmp_path / "out"
    result = run(tmp_path, monkeypatch, str(folder), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "corrected 2 of 2 images, 0 skipped; 1 of them with several frames, only the first corrected" in (
        result.output
    )
    note = "5 frames (animated or multi-page): only the first was corrected and written (a still image); "
    note += "the other 4 are not"
    rows = {
        Path(row["path"]).name: row
        for row in csv.DictReader((out / "predictions.csv").read_text().splitlines())
    }
    assert rows["anim.gif"]["note"] == note and rows["anim.gif"]["error"] == ""
    assert rows["still.png"]["note"] == ""
    assert json.loads((out / "predictions.json").read_text())[0]["note"] == note
    assert getattr(Image.open(out / "anim.gif"), "n_frames", 1) == 1  # what the note says
    dry = run(tmp_path, monkeypatch, str(folder / "anim.gif"), "-o", str(tmp_path / "dry"), "--dry-run")
    assert "only the first predicted" in dry.output
