"""Quarter turns: sector masses from the 360-way output, rotnet-correct --quarter-turns / --lossless /
--min-confidence (with a stand-in predictor whose output is known), and rotnet-evaluate --quarter-turns
on a real trained model."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from pipeline import geometry
from tests.hostile_inputs import tree_digest
from tests.system_programs import require_program
from tools import correct, lossless
from trainer import evaluate, heads
from trainer.evaluate_cli import main as evaluate_main

ALL_BINS = tuple(range(360))


def test_sector_masses_sum_to_one_and_split_borders_in_half() -> None:
    probabilities = np.zeros((3, 360))
    probabilities[0, [80, 100, 10]] = [0.3, 0.3, 0.4]  # sector 90 holds 0.6
    probabilities[1, 45] = 1.0  # exactly on the 0/90 border: half each
    probabilities[2] = 1 / 360
    masses = heads.quarter_turn_masses(probabilities, ALL_BINS)
    np.testing.assert_allclose(masses.sum(axis=1), 1.0)
    np.testing.assert_allclose(masses[0], [0.4, 0.6, 0, 0])
    np.testing.assert_allclose(masses[1], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(masses[2], 0.25)
    turns, confidence = heads.decode_quarter_turns(probabilities, ALL_BINS)
    assert turns.tolist() == [1, 0, 0] and confidence[0] == pytest.approx(0.6)
    # A model over the four quarter turns only: each bin is its own sector.
    turns, confidence = heads.decode_quarter_turns(np.array([[0.1, 0.2, 0.6, 0.1]]), (0, 90, 180, 270))
    assert turns.tolist() == [2] and confidence[0] == pytest.approx(0.6)
    # The 359/0 wrap: 350..359 and 0..44 are the same sector.
    wrapped = np.zeros((1, 360))
    wrapped[0, [350, 5, 180]] = [0.35, 0.35, 0.3]
    assert heads.decode_quarter_turns(wrapped, ALL_BINS)[0].tolist() == [0]


def test_free_angle_confidence_is_the_mass_within_five_degrees() -> None:
    head = heads.Head("classification", ALL_BINS)
    probabilities = np.zeros((1, 360))
    probabilities[0, [28, 30, 35, 36]] = [0.2, 0.4, 0.3, 0.1]
    angles, confidence = head.decode(probabilities)
    assert angles.tolist() == [30] and confidence[0] == pytest.approx(0.9)  # 36 is 6 degrees away


def test_summarize_quarter_turns_confusion_and_coverage() -> None:
    true = np.array([0, 90, 180, 270, 90, 90])
    predicted = np.array([0, 1, 2, 3, 3, 1])
    confidence = np.array([0.95, 0.8, 0.6, 0.99, 0.55, 0.3])
    summary = evaluate.summarize_quarter_turns(true, predicted, confidence)
    assert summary["accuracy"] == pytest.approx(5 / 6) and summary["num_records"] == 6
    assert summary["confusion"][1] == [0, 2, 0, 1] and summary["confusion"][3] == [0, 0, 0, 1]
    at_07 = next(item for item in summary["by_confidence"] if item["min_confidence"] == 0.7)
    assert at_07 == {"min_confidence": 0.7, "kept_share": pytest.approx(0.5), "accuracy": 1.0}
    with pytest.raises(ValueError, match="0/90/180/270"):
        evaluate.summarize_quarter_turns(np.array([45]), np.array([0]), np.array([1.0]))


# --- rotnet-correct with a stand-in predictor -----------------------------------------------------


@dataclass
class QuarterPredictor:
    """Puts `mass` of every image's probability in the +-45 sector of `turn`, the rest on 0 degrees."""

    turn: int
    mass: float
    image_size: tuple[int, int] = (28, 28)
    channels: int = 1

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return geometry.resize(geometry.center_crop(image[:, :, :1]), self.image_size)

    def predict(self, images, batch_size: int = 64, tta: int = 1):
        from trainer.predict import Prediction

        probabilities = np.zeros((len(images), 360), np.float32)
        probabilities[:, (90 * self.turn + 3) % 360] += self.mass  # 3 degrees off the quarter turn
        probabilities[:, 0] += 1.0 - self.mass
        angles, confidence = heads.Head("classification", ALL_BINS).decode(probabilities)
        turns, turn_confidence = heads.decode_quarter_turns(probabilities, ALL_BINS)
        return Prediction(angles, confidence, probabilities, turns, turn_confidence)


def photo_jpeg(width: int = 64, height: int = 48, orientation: int = 1) -> bytes:
    coarse = np.random.default_rng(width).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return lossless.with_orientation(buffer.getvalue(), orientation)


def run_correct(tmp_path: Path, monkeypatch, predictor, *args: str):
    monkeypatch.setattr(correct, "load_predictor", lambda model: predictor)
    model = tmp_path / "model.keras"
    model.write_bytes(b"stand-in")
    return CliRunner().invoke(correct.main, [str(model), *args, "--no-progress"])


def rows_of(out: Path) -> dict[str, dict]:
    return {Path(row["path"]).name: row for row in json.loads((out / "predictions.json").read_text())}


def test_lossless_exif_and_transpose_with_quarter_turns(tmp_path: Path, monkeypatch) -> None:
    require_program("jpegtran", "libjpeg-turbo-progs")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "phone.jpg").write_bytes(photo_jpeg())
    (inputs / "tagged.jpg").write_bytes(photo_jpeg(orientation=6))
    (inputs / "odd.jpg").write_bytes(photo_jpeg(70, 50))  # partial MCUs
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), np.uint8)).save(
        inputs / "scan.png"
    )
    before = tree_digest(inputs)
    originals = {path.name: path.read_bytes() for path in inputs.iterdir()}
    for mode in ("exif", "transpose"):
        out = tmp_path / f"out-{mode}"
        result = run_correct(
            tmp_path, monkeypatch, QuarterPredictor(1, 0.8), str(inputs), "-o", str(out),
            "--quarter-turns", "--lossless", mode,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "corrected 4 of 4 images, 0 skipped" in result.output
        rows = rows_of(out)
        for name, data in originals.items():
            assert rows[name]["quarter_turn"] == 1 and rows[name]["angle_degrees"] == 90
            assert rows[name]["confidence"] == pytest.approx(0.8)
            shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
            written = (out / name).read_bytes()
            upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(written))))
            expected = np.rot90(shown, -1)
            if mode == "transpose" and name in ("phone.jpg", "tagged.jpg"):
                # jpegtran moved the coefficients; PIL's decoder rounds a few of them differently
                # (test_lossless.py: exact with a rotation-symmetric decoder)
                assert lossless.exif_orientation(written) == 1 and upright.shape == expected.shape
                assert np.abs(upright.astype(int) - expected).mean() < 1
                continue
            if name.endswith(".jpg"):  # the EXIF tag (odd.jpg under transpose: the partial-MCU fallback)
                assert lossless.scan_data(written) == lossless.scan_data(data), name
            np.testing.assert_array_equal(upright, expected)
        assert rows["phone.jpg"]["action"] == (
            "lossless: jpegtran -perfect" if mode == "transpose" else "lossless: EXIF orientation 1 -> 6"
        )
        assert rows["tagged.jpg"]["action"] in (
            "lossless: jpegtran -perfect",
            "lossless: EXIF orientation 6 -> 3",
        )
        assert rows["scan.png"]["action"] == "lossless: pixels transposed"
        if mode == "transpose":
            assert "jpegtran -perfect refused: 70x50 px" in rows["odd.jpg"]["action"]
    assert tree_digest(inputs) == before, "inputs are never written"


def test_min_confidence_copies_unsure_images_unchanged(tmp_path: Path, monkeypatch) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jpg").write_bytes(photo_jpeg())
    out = tmp_path / "out"
    result = run_correct(
        tmp_path, monkeypatch, QuarterPredictor(3, 0.55), str(inputs), "-o", str(out),
        "--quarter-turns", "--min-confidence", "0.6",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "corrected 0 of 1 images, 0 skipped, 1 left as they were (below --min-confidence)" in result.output
    assert (out / "a.jpg").read_bytes() == (inputs / "a.jpg").read_bytes()
    row = rows_of(out)["a.jpg"]
    assert row["action"] == "left as it was: confidence 0.5500 below --min-confidence 0.6"
    assert row["quarter_turn"] == 3 and row["error"] == ""
    csv_text = (out / "predictions.csv").read_text()
    assert "quarter_turn" in csv_text.splitlines()[0] and "below --min-confidence" in csv_text
    # Free-angle mode: the confidence is the mass within 5 degrees of the angle (0.55 at 273 degrees).
    out = tmp_path / "free"
    result = run_correct(
        tmp_path,
        monkeypatch,
        QuarterPredictor(3, 0.55),
        str(inputs),
        "-o",
        str(out),
        "--min-confidence",
        "0.5",
    )
    assert result.exit_code == 0, result.output
    row = rows_of(out)["a.jpg"]
    assert row["angle_degrees"] == 273 and row["quarter_turn"] is None
    assert row["action"] == "rotated 273 degrees clockwise, re-encoded"


def test_lossless_needs_quarter_turns_and_no_crop(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a.jpg").write_bytes(photo_jpeg())
    predictor = QuarterPredictor(1, 0.9)
    result = run_correct(
        tmp_path,
        monkeypatch,
        predictor,
        str(tmp_path / "a.jpg"),
        "-o",
        str(tmp_path / "o"),
        "--lossless",
        "exif",
    )
    assert result.exit_code == 2 and "add --quarter-turns" in result.output
    result = run_correct(
        tmp_path, monkeypatch, predictor, str(tmp_path / "a.jpg"), "-o", str(tmp_path / "o"),
        "--quarter-turns", "--lossless", "transpose", "--crop",
    )  # fmt: skip
    assert result.exit_code == 2 and "cannot be combined with --crop" in result.output


# --- Real model ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_quarter_turns_on_a_trained_model(tiny_model: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "evaluation"
    arguments = ["--model", str(tiny_model["run"]), "--records", str(tiny_model["records"])]
    result = CliRunner().invoke(evaluate_main, [*arguments, "--output", str(output), "--quarter-turns"])
    assert result.exit_code == 0, result.output
    assert "quarter-turn accuracy" in result.output and "true (rows) x predicted (columns)" in result.output
    summary = json.loads((output / "evaluation.json").read_text())["quarter_turns"]
    confusion = np.array(summary["confusion"])
    assert confusion.shape == (4, 4) and confusion.sum() == summary["num_records"] == 2 * 4
    assert confusion.sum(axis=1).tolist() == [2, 2, 2, 2]  # two validation images at each turn
    assert summary["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    result = CliRunner().invoke(
        evaluate_main, [*arguments, "--output", str(tmp_path / "e2"), "--quarter-turns", "--angles", "45"]
    )
    assert result.exit_code != 0


# --- Issue 33's acceptance check: a JPEG turned by 90 degrees comes back as exactly np.rot90 ------------


def _turned_jpeg(path: Path) -> np.ndarray:
    """Write a photo turned 90 degrees counter-clockwise (48x64 px: whole MCUs) to `path`."""
    from tests.test_lossless import smooth_photo

    upright = smooth_photo(48, 64, seed=3)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(buffer, format="JPEG", quality=92)
    path.write_bytes(buffer.getvalue())
    return upright


def test_acceptance_lossless_transpose_gives_exactly_rot90(tmp_path: Path, monkeypatch) -> None:
    from tests.test_lossless import symmetric_decode

    require_program("jpegtran", "libjpeg-turbo-progs")
    (tmp_path / "in").mkdir()
    _turned_jpeg(tmp_path / "in" / "turned.jpg")
    out = tmp_path / "out"
    result = run_correct(
        tmp_path, monkeypatch, QuarterPredictor(1, 0.9), str(tmp_path / "in"), "-o", str(out),
        "--quarter-turns", "--lossless", "transpose",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert rows_of(out)["turned.jpg"]["action"] == "lossless: jpegtran -perfect"
    source = symmetric_decode((tmp_path / "in" / "turned.jpg").read_bytes())
    np.testing.assert_array_equal(symmetric_decode((out / "turned.jpg").read_bytes()), np.rot90(source, -1))


@pytest.mark.slow
def test_real_model_turns_by_its_predicted_quarter_turn_losslessly(tiny_model, tmp_path: Path) -> None:
    from tests.test_lossless import symmetric_decode

    require_program("jpegtran", "libjpeg-turbo-progs")
    (tmp_path / "in").mkdir()
    _turned_jpeg(tmp_path / "in" / "turned.jpg")
    out = tmp_path / "out"
    arguments = [str(tiny_model["run"]), str(tmp_path / "in"), "-o", str(out), "--no-progress"]
    result = CliRunner().invoke(correct.main, [*arguments, "--quarter-turns", "--lossless", "transpose"])
    assert result.exit_code == 0, result.output
    row = rows_of(out)["turned.jpg"]
    turn = row["quarter_turn"]
    assert turn in (0, 1, 2, 3) and row["angle_degrees"] == 90 * turn and 0.25 <= row["confidence"] <= 1
    source = symmetric_decode((tmp_path / "in" / "turned.jpg").read_bytes())
    np.testing.assert_array_equal(
        symmetric_decode((out / "turned.jpg").read_bytes()), np.rot90(source, -turn)
    )
