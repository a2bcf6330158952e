"""Train/serve parity: a model is served the picture its records show at 0 degrees.

Each case writes an image's records the way the pipeline does (pipeline.transforms.prepare +
pipeline.rotations.encode_rotations, from a resolved PipelineConfig), takes the 0-degree record, and
compares it with what `trainer.predict.Predictor.prepare` makes of the original photo, the Predictor's
view coming from the records' manifest through the trainer's own `resolve` path (records_view). Every
crop mode the pipeline offers, grey and RGB, 28 and 224 px.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

import schemas
from pipeline import codec, geometry, rotations, transforms
from pipeline.config import PipelineConfig
from pipeline.datasets.common import SourceImage
from schemas.record import decode_example
from trainer.config import records_view
from trainer.predict import Predictor

MIN_PSNR_DB = 28.0


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    error = np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10.0 * np.log10(255.0**2 / error)


def _manifest(config: PipelineConfig) -> schemas.DatasetInfo:
    """The manifest the pipeline writes for `config` (header + its config), without shards."""
    return schemas.DatasetInfo(
        dataset=config.dataset,
        image=schemas.ImageSpec(config.image_size, config.image_size, config.channels, config.image_format),
        angles_degrees=list(config.angles_degrees),
        splits={},
        num_images_read=0,
        config=config.to_dict(),
    )


def _predictor(info: schemas.DatasetInfo) -> Predictor:
    """A Predictor with the train_config.json rotnet-train writes for these records (the model is unused)."""
    config = {
        "image_size": [info.image.height, info.image.width],
        "channels": info.image.channels,
        "head": "classification",
        "bin_angles": list(info.angles_degrees),
        "sigma_degrees": 3.0,
        "view": records_view(info),
    }
    # Through JSON, as the run directory stores it.
    return Predictor(json.loads(json.dumps(config)), lambda batch: batch, "test-run")


def _record_at_zero(config: PipelineConfig, photo_bytes: bytes) -> np.ndarray:
    """The pipeline's 0-degree record of a photo file, decoded (HWC uint8)."""
    pixels = codec.decode_source_image(photo_bytes, config.channels)
    source = SourceImage(config.dataset, "train", "photo-1", -1, pixels=pixels)
    prepared = transforms.prepare(source, config)
    (record,) = rotations.encode_rotations(
        prepared, [0], config.image_size, config.image_format, config.jpeg_quality, config.resampling
    )
    return codec.decode_record_image(decode_example(record))


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# (name, PipelineConfig overrides): every crop mode the pipeline offers.
CROP_MODES = [
    ("constant", {"crop_largest_rect": True, "crop_scale": "constant"}),
    ("largest", {"crop_largest_rect": True, "crop_scale": "largest"}),
    ("no-crop", {"crop_largest_rect": False}),
    ("no-center-crop", {"crop_largest_rect": True, "crop_scale": "constant", "center_crop": False}),
    ("right-square", {"crop_largest_rect": True, "crop_scale": "constant", "crop_position": "right"}),
    ("legacy", {"crop_largest_rect": True, "crop_scale": "largest", "rendering": "legacy"}),
]


@pytest.mark.parametrize("image_size", [28, 224])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", [name for name, _ in CROP_MODES])
def test_served_photo_is_its_own_zero_degree_record(street_view_images, tmp_path, mode, channels, image_size):
    overrides = dict(CROP_MODES)[mode]
    config = PipelineConfig(
        dataset="images",
        output_dir=str(tmp_path / "records"),
        dataset_settings={"input_pattern": str(tmp_path)},
        image_size=image_size,
        angles_degrees=(0, 30, 45, 90, 135, 200),
        image_format="png" if channels == 1 else "jpeg",
        **overrides,
    ).resolved()
    config = dataclasses.replace(config, channels=channels)
    photo = street_view_images[3]  # 1281 x 1025, non-square: the no-center-crop case is a real one
    if mode == "no-center-crop":
        photo = photo[:, :900]  # a little wider than high: the square crop would cut it, this view does not
    photo_bytes = _jpeg(photo)
    record = _record_at_zero(config, photo_bytes)
    predictor = _predictor(_manifest(config))
    served = predictor.prepare(codec.decode_source_image(photo_bytes, 3))  # a user's RGB photo, any model
    assert served.shape == record.shape == (image_size, image_size, channels)
    assert psnr(served, record) >= MIN_PSNR_DB


def test_every_street_view_sample_at_the_default_view(street_view_images, tmp_path):
    """The issue's steering check: the default photo records (constant crop), 96 px, 4 angles."""
    config = PipelineConfig(
        dataset="images",
        output_dir=str(tmp_path / "records"),
        dataset_settings={"input_pattern": str(tmp_path)},
        image_size=96,
        angles_degrees=(0, 45, 90, 135),
    ).resolved()
    assert (config.crop_largest_rect, config.crop_scale) == (True, "constant")  # the defaults under test
    predictor = _predictor(_manifest(config))
    values = []
    for photo in street_view_images:
        photo_bytes = _jpeg(photo)
        record = _record_at_zero(config, photo_bytes)
        values.append(psnr(predictor.prepare(codec.decode_source_image(photo_bytes, 3)), record))
    assert len(values) == 10
    assert min(values) >= MIN_PSNR_DB, values


def test_the_view_is_not_the_whole_square(street_view_images, tmp_path):
    """A constant crop shows the central 1/sqrt(2): serving the whole square (rotnet 0.2) is far off."""
    config = PipelineConfig(
        dataset="images",
        output_dir=str(tmp_path / "r"),
        dataset_settings={"input_pattern": str(tmp_path)},
        image_size=96,
    ).resolved()
    photo = street_view_images[0]
    record = _record_at_zero(config, _jpeg(photo))
    whole_square = geometry.resize(np.ascontiguousarray(geometry.center_crop(photo)), 96)
    assert psnr(whole_square, record) < 20.0


def test_grey_conversion_is_the_decoders(street_view_images):
    """to_channels turns RGB into grey exactly as the pipeline's decoder (PIL 'L') does."""
    photo = street_view_images[1][:200, :300]
    expected = np.asarray(Image.fromarray(photo).convert("L"))[:, :, np.newaxis]
    assert np.array_equal(geometry.to_channels(photo, 1), expected)
    rgba = np.dstack([photo, np.linspace(0, 255, photo.shape[1], dtype=np.uint8)[None, :].repeat(200, 0)])
    composited = Image.alpha_composite(Image.new("RGBA", (300, 200), (0, 0, 0, 255)), Image.fromarray(rgba))
    assert np.abs(geometry.to_channels(rgba, 3).astype(int) - np.asarray(composited)[:, :, :3]).max() <= 1


def test_a_model_without_a_view_is_served_as_before_with_a_note(capsys):
    config = {"image_size": [28, 28], "channels": 1, "head": "classification", "bin_angles": [0, 90],
              "sigma_degrees": 3.0}  # fmt: skip
    predictor = Predictor(config, lambda batch: batch, "old-run")
    assert predictor.view is None
    assert capsys.readouterr().err.count("\n") == 1  # one line
    image = np.arange(40 * 60, dtype=np.uint8).reshape(40, 60, 1)
    expected = geometry.resize(np.ascontiguousarray(image[:, 10:50]), 28)
    assert np.array_equal(predictor.prepare(image), expected)


@pytest.mark.parametrize("crop_scale", ["constant", "largest"])
def test_every_rotation_code_crops_as_the_records(street_view_images, crop_scale):
    """rotnet-evaluate --rotation-codes: each independent code shows the rectangle the records show
    (with a constant crop the central 1/sqrt(2) at every angle, not each angle's largest rectangle)."""
    from trainer import robustness

    photo = street_view_images[2]
    for angle in (0, 45, 120):
        pipeline = robustness.render("pipeline", photo, angle, 96, True, key="k", crop_scale=crop_scale)
        for code in robustness.ROTATION_CODES[1:]:
            turned = robustness.render(code, photo, angle, 96, True, crop_scale=crop_scale)
            assert psnr(turned, pipeline) >= 24.0, (code, angle)


def test_training_copies_the_records_view_into_its_config(tmp_path):
    """rotnet-train's resolve puts the manifest's view into train_config.json (so a run dir serves alone)."""
    from tests.factories import write_records_dir
    from trainer.config import TrainConfig, resolve

    info = write_records_dir(tmp_path / "records", dataset="street_view", image_size=32, channels=3)
    config = resolve(TrainConfig(records=str(tmp_path / "records")), info)
    view = geometry.View.from_dict(json.loads(config.to_json())["view"])
    assert view == geometry.View(
        image_size=32,
        channels=3,
        crop_largest_rect=True,
        crop_scale="constant",
        angles_degrees=(0, 90, 180, 270),
    )
