"""`import rotnet`: load, detect and correct on a real (tiny) trained model, one test per call, and the
answers equal what Predictor and rotnet-correct give for the same pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import rotnet
from pipeline.codec import BadImageError
from tests.factories import synthetic_image
from tools import lossless

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tiny_model: dict[str, Path]) -> rotnet.Model:
    return rotnet.load(tiny_model["run"], quarter_turns=True, batch_size=3)


def digit(index: int, turn: int = 0) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(synthetic_image(index, size=28)[:, :, 0], turn))


def jpeg_of(pixels: np.ndarray, orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return lossless.with_orientation(buffer.getvalue(), orientation)


def test_load_reads_a_run_directory_and_refuses_what_is_not_a_model(tiny_model, tmp_path: Path) -> None:
    model = rotnet.load(tiny_model["run"])
    assert not model.quarter_turns and "free angle" in repr(model)
    assert model.predictor.image_size == (28, 28)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rotnet.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="min_confidence"):
        rotnet.Model(model.predictor, min_confidence=2.0)


def test_detect_takes_paths_bytes_arrays_and_pil_images_in_batches(
    model: rotnet.Model, tmp_path: Path
) -> None:
    pixels = [digit(k, turn=k) for k in range(4)]
    Image.fromarray(pixels[0]).save(tmp_path / "zero.png")
    inputs = [str(tmp_path / "zero.png"), tmp_path / "zero.png", Image.fromarray(pixels[1]), pixels[2]]
    inputs += [(tmp_path / "zero.png").read_bytes(), pixels[3][:, :, np.newaxis]]
    found = model.detect(inputs)  # 6 inputs in batches of 3
    assert [item.source for item in found] == [
        str(tmp_path / "zero.png"), str(tmp_path / "zero.png"), "<PIL image 2>", "<array 3>", "<bytes 4>",
        "<array 5>",
    ]  # fmt: skip
    # The same pixels give the same answer whatever form they came in, and it is Predictor's.
    prepared = [model.predictor.prepare(p[:, :, np.newaxis]) for p in pixels]
    expected = model.predictor.predict(prepared)
    order = [0, 0, 1, 2, 0, 3]
    for item, index in zip(found, order, strict=True):
        assert item.quarter_turn == expected.quarter_turns[index]
        assert item.angle_degrees == 90 * item.quarter_turn
        assert item.confidence == pytest.approx(float(expected.quarter_confidence[index]), abs=1e-5)
        assert item.needs_rotation == (item.quarter_turn != 0) and item.kept is None
    single = model.detect(pixels[1])  # one input -> one Detection
    assert isinstance(single, rotnet.Detection) and single.quarter_turn == found[2].quarter_turn
    assert len(model.detect(np.stack(pixels)[..., np.newaxis])) == 4  # (N, H, W, C): N images
    with pytest.raises(BadImageError, match=r"broken\.png: not an image file"):
        (tmp_path / "broken.png").write_bytes(b"not an image")
        model.detect([str(tmp_path / "broken.png")])
    with pytest.raises(ValueError, match="float64"):
        model.detect(np.zeros((28, 28)))


def test_correct_turns_files_losslessly_and_pixels_exactly(model: rotnet.Model, tmp_path: Path) -> None:
    photo = np.repeat(digit(5)[:, :, np.newaxis], 3, axis=2)
    data = jpeg_of(np.kron(photo, np.ones((2, 2, 1), np.uint8)), orientation=6)  # 56x56, shown turned
    (tmp_path / "photo.jpg").write_bytes(data)
    fixed = model.correct(str(tmp_path / "photo.jpg"), lossless="exif")
    turn = fixed.detection.quarter_turn
    assert lossless.scan_data(fixed.data) == lossless.scan_data(data)  # only the tag changed
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(np.asarray(fixed.image), np.rot90(shown, -turn))
    assert fixed.action.startswith("lossless: EXIF orientation 6 ->") or turn == 0
    # Arrays and PIL images: exact quarter turns, in their own kind and mode.
    array = digit(2, turn=1)
    [from_array, from_pil] = model.correct([array, Image.fromarray(array)])
    np.testing.assert_array_equal(from_array.image, np.rot90(array, -from_array.detection.quarter_turn))
    assert isinstance(from_pil.image, Image.Image) and from_pil.image.mode == "L"
    np.testing.assert_array_equal(np.asarray(from_pil.image), from_array.image)
    # save() writes a new file, never over one.
    fixed.save(tmp_path / "upright.jpg")
    assert (tmp_path / "upright.jpg").read_bytes() == fixed.data
    with pytest.raises(FileExistsError):
        fixed.save(tmp_path / "photo.jpg")
    assert (tmp_path / "photo.jpg").read_bytes() == data
    with pytest.raises(ValueError, match="cannot be combined with --crop"):
        model.correct(array, lossless="exif", crop=True)


def test_correct_leaves_unsure_images_and_free_angles_resample(tiny_model) -> None:
    unsure = rotnet.load(tiny_model["run"], quarter_turns=True, min_confidence=1.0)
    kept = unsure.correct(digit(1))
    assert kept.detection.kept.startswith("confidence") and not kept.detection.needs_rotation
    assert kept.action.startswith("left as it was") and kept.image is not None
    free = rotnet.load(tiny_model["run"])
    result = free.correct(digit(1), keep_size=True)
    assert result.image.shape == (28, 28) and result.detection.angle_degrees in range(360)
    with pytest.raises(ValueError, match=r"quarter_turns=True"):
        free.correct(digit(1), lossless="exif")
