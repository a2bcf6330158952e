"""trainer.robustness: every rotation code turns counter-clockwise by the angle, the report scores each
code on the same angles, and the split's original images are found as the pipeline chose them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

import schemas
from pipeline import codec, geometry, local_writer
from schemas import tfrecord_file
from schemas.record import example_key
from schemas.splits import assign_split
from trainer import robustness


def _marked_image(side: int, channels: int) -> np.ndarray:
    """Grey background, one bright blob right of the center: its direction from the center is the angle."""
    image = np.full((side, side + side // 5, channels), 40, np.uint8)  # wider than tall: the square is cut
    center_y, center_x = side / 2, (side + side // 5) / 2
    cv2.circle(
        image, (round(center_x + 0.3 * side), round(center_y)), max(2, side // 10), (255,) * channels, -1
    )
    return image


def _blob_angle(image: np.ndarray) -> float:
    """Counter-clockwise angle (degrees) of the bright blob's centroid seen from the image center."""
    grey = image[:, :, 0].astype(np.float64)
    rows, cols = np.nonzero(grey > 120)
    height, width = grey.shape
    dx, dy = cols.mean() + 0.5 - width / 2, rows.mean() + 0.5 - height / 2
    return math.degrees(math.atan2(-dy, dx)) % 360  # y points down: up is counter-clockwise


@pytest.mark.parametrize("code", robustness.ROTATION_CODES)
@pytest.mark.parametrize(("side", "image_size", "crop", "channels"), [(28, 28, False, 1), (300, 64, True, 3)])
def test_codes_turn_counter_clockwise_by_the_angle(code, side, image_size, crop, channels) -> None:
    image = _marked_image(side, channels)
    for angle in (0, 30, 90, 135, 200, 317):
        turned = robustness.render(code, image, angle, image_size, crop, key=f"k/{angle}")
        assert turned.shape == (image_size, image_size, channels) and turned.dtype == np.uint8
        difference = abs((_blob_angle(turned) - angle + 180) % 360 - 180)
        # The blob's centroid is a coarse protractor at 28 px (a few pixels of blob).
        assert difference < (5 if image_size < 64 else 2), (
            f"{code} at {angle}: blob at {_blob_angle(turned):.1f}"
        )


def test_codes_differ_from_each_other() -> None:
    image = _marked_image(28, 1)
    rendered = {
        code: robustness.render(code, image, 37, 28, False, key="k") for code in robustness.ROTATION_CODES
    }
    # skimage's rotate(order=1) and cv2's bilinear warp are the same arithmetic about the same center:
    # at the output resolution (MNIST) they agree to rounding; every other pair differs.
    assert np.abs(rendered["skimage"].astype(int) - rendered["cv2-bilinear"].astype(int)).max() <= 1
    for first in robustness.ROTATION_CODES:
        for second in robustness.ROTATION_CODES:
            if first < second and {first, second} != {"skimage", "cv2-bilinear"}:
                assert not np.array_equal(rendered[first], rendered[second]), (first, second)
    with pytest.raises(ValueError, match="rotation code"):
        robustness.render("nearest", image, 10, 28, False)


@dataclass
class _Head:
    bin_angles: tuple[int, ...] = tuple(range(360))


@dataclass
class _Prediction:
    angles_degrees: np.ndarray


class _BlobPredictor:
    """Reads the angle from the blob: an oracle for marked images, blind to the rendering."""

    image_size = (28, 28)
    head = _Head()

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def predict(self, images, batch_size: int = 64, tta: int = 1) -> _Prediction:
        self.calls.append((len(images), tta))
        return _Prediction(np.array([round(_blob_angle(image)) % 360 for image in images]))


class _ConstantPredictor(_BlobPredictor):
    def predict(self, images, batch_size: int = 64, tta: int = 1) -> _Prediction:
        return _Prediction(np.zeros(len(images), np.int64))


def test_evaluate_codes_scores_every_code_on_the_same_angles() -> None:
    images = [(f"{index:05d}", _marked_image(28, 1)) for index in range(12)]
    options = {
        "dataset": "mnist",
        "split": "validation",
        "crop_largest_rect": False,
        "seed": 3,
        "angles_per_image": 5,
    }
    predictor = _BlobPredictor()
    report = robustness.evaluate_codes(predictor, images, tta=(1, 4), **options)
    assert [(row.code, row.tta) for row in report.rows] == [
        (code, tta) for code in robustness.ROTATION_CODES for tta in (1, 4)
    ]
    assert predictor.calls == [(60, 1), (60, 4)] * len(robustness.ROTATION_CODES)
    for row in report.rows:
        assert row.num_predictions == 60 and row.mean_error_degrees < 4, row
    assert report.worst_over_best["tta 1"] >= 1.0
    # A predictor that ignores the image: 90 degrees off on average, the same under every code.
    blind = robustness.evaluate_codes(_ConstantPredictor(), images, **options)
    means = [row.mean_error_degrees for row in blind.rows]
    assert len(set(means)) == 1 and 60 < means[0] < 120
    assert blind.worst_over_best["tta 1"] == 1.0
    assert "worst/best" in blind.table()
    assert np.array_equal(
        robustness.draw_angles(12, 5, 3, range(360)), robustness.draw_angles(12, 5, 3, range(360))
    )


class _RecordingPredictor(_BlobPredictor):
    """A served model: the records' view (MNIST: 28 px grey, no crop), Predictor.prepare's preparation,
    and every batch it is given kept."""

    view = geometry.View(28, 1)

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[np.ndarray] = []

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return geometry.upright_view(image, self.view)  # what trainer.predict.Predictor.prepare runs

    def predict(self, images, batch_size: int = 64, tta: int = 1) -> _Prediction:
        self.batches.append(np.asarray(images).copy())
        return super().predict(images, batch_size, tta)


def test_each_codes_image_is_served_as_a_photo_pixel_for_pixel() -> None:
    """--codes-input served: every independent code's turned digit reaches the model exactly as
    Predictor.prepare serves that photo (the supersampled code's photo is its 4x turn); the pipeline code's images are records and are not prepared
    again; raw gives the turned digits themselves, as before."""
    images = [(f"{index:05d}", _marked_image(28, 1)) for index in range(4)]
    options = {"dataset": "mnist", "split": "validation", "crop_largest_rect": False, "seed": 5}
    served, raw = _RecordingPredictor(), _RecordingPredictor()
    served_report = robustness.evaluate_codes(served, images, angles_per_image=3, **options)
    raw_report = robustness.evaluate_codes(raw, images, angles_per_image=3, served=False, **options)
    assert served_report.served and not raw_report.served
    assert "served as a photo" in served_report.table() and "raw" in raw_report.table()
    assert served_report.to_dict()["served"] is True
    for code, served_batch, raw_batch in zip(
        robustness.ROTATION_CODES, served.batches, raw.batches, strict=True
    ):
        if code == "pipeline":
            assert np.array_equal(served_batch, raw_batch)
            continue
        prepared = np.stack([served.prepare(photo) for photo in raw_batch])
        if code == "supersampled":
            # Its photo is the 4x turn (112 px), served from that resolution: close to, not equal to,
            # serving its 28 px reduction.
            assert np.abs(served_batch.astype(int) - prepared.astype(int)).mean() < 3, code
        else:  # the codes that turn at 28 px, as RotNet turns digits: the photo is their image
            assert np.array_equal(served_batch, prepared), code
        assert not np.array_equal(served_batch, raw_batch), code  # the records' low-pass was applied
    for row in served_report.rows:  # still read at the right angles by an oracle
        assert row.mean_error_degrees < 4, row


def test_a_model_without_a_view_is_given_the_codes_images_resized() -> None:
    images = [(f"{index:05d}", _marked_image(28, 1)) for index in range(3)]
    options = {"dataset": "mnist", "split": "validation", "crop_largest_rect": False, "angles_per_image": 2}
    viewless, raw = _BlobPredictor(), _RecordingPredictor()
    viewless.batches, viewless_predict = [], viewless.predict

    def keep(images, batch_size: int = 64, tta: int = 1):
        viewless.batches.append(np.asarray(images).copy())
        return viewless_predict(images, batch_size, tta)

    viewless.predict = keep
    robustness.evaluate_codes(viewless, images, **options)
    robustness.evaluate_codes(raw, images, served=False, **options)
    assert all(np.array_equal(a, b) for a, b in zip(viewless.batches, raw.batches, strict=True))


@pytest.mark.parametrize("crop_scale", ["largest", "constant"])
def test_with_a_crop_the_served_image_is_the_codes_rectangle_prepared_once(crop_scale: str) -> None:
    """Photos: the code cuts the records' rectangle from its full-resolution turn; serving it is the
    records' low-pass and resampling of that rectangle, not a second crop."""
    photo = _marked_image(300, 3)
    view = geometry.View(64, 3, crop_largest_rect=True, crop_scale=crop_scale)
    for angle in (0, 30, 135):
        served = robustness.render(
            "cv2-bilinear", photo, angle, 64, True, crop_scale=crop_scale, served_view=view
        )
        raw = robustness.render("cv2-bilinear", photo, angle, 64, True, crop_scale=crop_scale)
        assert served.shape == raw.shape == (64, 64, 3)
        difference = abs((_blob_angle(served) - angle + 180) % 360 - 180)
        assert difference < 2, (angle, _blob_angle(served))
        # The same field of view (a second constant crop would zoom in by sqrt 2 and push the blob out).
        assert np.abs(served.astype(int) - raw.astype(int)).mean() < 6
    with pytest.raises(ValueError, match="served view is 32 px"):
        robustness.render(
            "pil-bicubic", photo, 10, 64, True, served_view=geometry.View(32, 3, crop_largest_rect=True)
        )


def test_mnist_source_images_are_the_pipelines_split_and_the_pipeline_code_is_the_record(
    tmp_path: Path, shared_data: Path
) -> None:
    mnist_dir = shared_data / "mnist-5k"
    sources = local_writer.mnist_sources(mnist_dir, validation_fraction=0.1, subset_fraction=0.05)
    angles = (0, 33, 90)
    local_writer.write_rotations(
        tmp_path,
        sources,
        dataset="mnist",
        angles=angles,
        image_size=28,
        crop_largest_rect=False,
        rendering="angle-independent",
        config={"mnist_dir": str(mnist_dir), "validation_fraction": 0.1, "subset_fraction": 0.05},
    )
    info = schemas.load_manifest(str(tmp_path))
    loaded = robustness.load_source_images(info, "validation")
    records = {}
    for path in info.shard_paths(str(tmp_path), "validation"):
        for data in tfrecord_file.iter_records(path):
            record = schemas.decode_example(data)
            records[(record.image_id, record.angle_degrees)] = codec.decode_record_image(record)
    assert sorted({image_id for image_id, _ in records}) == [image_id for image_id, _ in loaded]
    assert all(assign_split(image_id, 0.1) == "validation" for image_id, _ in loaded)
    image_id, image = loaded[0]
    for angle in angles:
        key = example_key("mnist", "validation", image_id, angle)
        rendered = robustness.render("pipeline", image, angle, 28, False, key=key, angles_degrees=angles)
        assert np.array_equal(rendered, records[(image_id, angle)])


def test_image_files_are_found_by_split_and_cropped_like_the_pipeline(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    (inputs / "sub").mkdir(parents=True)
    for index in range(30):
        image = np.full((40, 60, 3), index, np.uint8)
        cv2.imwrite(str(inputs / "sub" / f"photo{index}.png"), image)
    (inputs / "notes.txt").write_text("not an image")
    info = schemas.DatasetInfo(
        dataset="images",
        image=schemas.ImageSpec(height=16, width=16, channels=3, format="jpeg"),
        angles_degrees=[0],
        splits={},
        num_images_read=30,
        config={"input_pattern": str(inputs), "validation_fraction": 0.3, "crop_position": "right"},
    )
    loaded = robustness.load_source_images(info, "validation")
    expected = sorted(
        f"sub/photo{i}.png" for i in range(30) if assign_split(f"sub/photo{i}.png", 0.3) == "validation"
    )
    assert [image_id for image_id, _ in loaded] == expected
    assert all(image.shape == (40, 40, 3) for _, image in loaded)
    with pytest.raises(robustness.SourceImagesError, match="--source-dir"):
        robustness.load_source_images(
            schemas.DatasetInfo(
                dataset="images",
                image=info.image,
                angles_degrees=[0],
                splits={},
                num_images_read=0,
                config={},
            ),
            "validation",
        )


def test_imports_neither_tensorflow_nor_beam() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    script = (
        "import sys\n"
        "for name in ('tensorflow', 'keras', 'apache_beam'):\n"
        "    sys.modules[name] = None\n"
        "import trainer.robustness, tools.cue_audit, pipeline.rotations, pipeline.local_writer\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == "ok", result.stderr
