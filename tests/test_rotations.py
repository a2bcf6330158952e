"""pipeline.rotations: both renderings become the records the writers store, keyed per record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import schemas
from pipeline import codec, geometry, local_writer, rotations
from schemas import tfrecord_file
from schemas.record import example_key
from tests.factories import synthetic_image


def _image(source: rotations.PreparedSource, dataset: str = "mnist") -> rotations.PreparedImage:
    return rotations.PreparedImage(dataset, "train", "00042", 3, source)


@pytest.mark.parametrize("resampling", geometry.RESAMPLINGS)
def test_angle_independent_records_show_the_image_turned_and_depend_only_on_their_key(
    resampling: str,
) -> None:
    image = synthetic_image(5, 28)
    angles = (0, 37, 90, 180, 270, 359)

    def encode(image_id: str, angles: tuple[int, ...]) -> list[bytes]:
        source = rotations.prepare(image, 28, angles, crop_largest_rect=False)
        assert isinstance(source, geometry.RenderSource)
        prepared = rotations.PreparedImage("mnist", "train", image_id, 3, source)
        return rotations.encode_rotations(prepared, angles, 28, "raw", resampling=resampling)

    records = encode("00042", angles)
    for data, angle in zip(records, angles, strict=True):
        record = schemas.decode_example(data)
        assert (record.image_id, record.angle_degrees) == ("00042", angle)
        if angle % 90 == 0:  # counter-clockwise quarter turns of the image, up to the low-pass and jitter
            pixels = codec.decode_record_image(record).astype(float)
            error = np.abs(pixels - np.rot90(image, angle // 90)).mean()
            assert error < 25, (angle, error)
            if angle in (90, 270):
                assert np.abs(pixels - np.rot90(image, -angle // 90)).mean() > 2 * error
    # Each record is a pure function of the image and its own key: the same bytes when encoded alone
    # or again, other bytes under another image id (the key draws the record's jitter).
    for data, angle in zip(records, angles, strict=True):
        assert encode("00042", (angle,)) == [data], angle
    assert encode("00042", angles) == records
    others = encode("00043", angles)
    assert all(
        codec.decode_record_image(schemas.decode_example(other)).tobytes()
        != codec.decode_record_image(schemas.decode_example(data)).tobytes()
        for other, data, angle in zip(others, records, angles, strict=True)
        if angle == 37
    )


def test_legacy_rendering_is_the_reference_chain_with_right_angles_copied() -> None:
    image = synthetic_image(2, 40, channels=3)
    angles = (0, 17, 90, 180)
    source = rotations.prepare(image, 20, angles, crop_largest_rect=True, rendering="legacy")
    assert isinstance(source, geometry.Source)
    records = rotations.encode_rotations(_image(source, "street_view"), angles, 20, "raw")
    pixels = {
        angle: codec.decode_record_image(schemas.decode_example(data))
        for data, angle in zip(records, angles, strict=True)
    }
    # RotNet's chain at full resolution (rotate, crop the largest rectangle, area downscale).
    for angle, picture in pixels.items():
        difference = np.abs(picture.astype(float) - geometry.reference_chain(image, angle, 20))
        assert difference.mean() < (6 if angle % 90 else 0.01) and (angle % 90 or difference.max() <= 1)
    assert np.array_equal(pixels[90], np.rot90(pixels[0])) and np.array_equal(
        pixels[180], np.rot90(pixels[0], 2)
    )


def test_prepare_refuses_unknown_options() -> None:
    image = synthetic_image(0, 28)
    with pytest.raises(ValueError, match="rendering"):
        rotations.prepare(image, 28, (0,), crop_largest_rect=False, rendering="nearest")
    with pytest.raises(ValueError, match="crop scale"):
        rotations.prepare(image, 28, (0,), crop_largest_rect=True, rendering="legacy", crop_scale="constant")
    source = rotations.prepare(image, 28, (0,), crop_largest_rect=False)
    with pytest.raises(ValueError, match="resampling"):
        rotations.encode_rotations(_image(source), (0,), 28, "png", resampling="cubic")


def test_local_writer_writes_angle_independent_records_and_says_so(tmp_path: Path) -> None:
    images = [(f"{index:05d}", synthetic_image(index, 28), index % 10) for index in range(3)]
    angles = range(0, 360, 45)
    info = local_writer.write_rotations(
        tmp_path,
        {"train": images},
        dataset="mnist",
        angles=angles,
        image_size=28,
        crop_largest_rect=False,
        rendering="angle-independent",
        resampling="random",
    )
    manifest = json.loads((tmp_path / "dataset_info.json").read_text())
    assert manifest["config"]["rendering"] == "angle-independent"
    assert manifest["config"]["resampling"] == "random"
    assert info.splits["train"].num_records == 3 * 8
    found = {}
    for path in info.shard_paths(str(tmp_path), "train"):
        for data in tfrecord_file.iter_records(path):
            record = schemas.decode_example(data)
            found[(record.image_id, record.angle_degrees)] = codec.decode_record_image(record)
    image_id, image, _ = images[1]
    source = geometry.prepare_render_source(image, 28, angles, crop_largest_rect=False)
    for angle in angles:
        jitter = geometry.record_jitter(example_key("mnist", "train", image_id, angle), "random")
        assert np.array_equal(found[(image_id, angle)], geometry.render(source, angle, 28, jitter))


def test_shard_records_are_the_shard_order_whatever_the_render_window(monkeypatch) -> None:
    angles = range(0, 360, 30)
    images = [
        rotations.PreparedImage(
            "mnist", "train", f"{index:05d}", index, rotations.prepare(synthetic_image(index, 28), 28, angles, crop_largest_rect=False)
        )
        for index in range(5)
    ]  # fmt: skip
    by_key = {
        (image.image_id, angle): data
        for image in images
        for angle, data in zip(angles, rotations.encode_rotations(image, angles, 28, "png"), strict=True)
    }
    ordered = sorted(images, key=lambda image: image.image_id)
    expected = [
        by_key[ordered[index].image_id, angle] for index, angle in rotations.record_order(ordered, angles)
    ]
    assert len(set(expected)) == 60
    whole = list(rotations.shard_records(images[::-1], angles, 28, "png"))  # one window: 1,024 records
    monkeypatch.setattr(rotations, "RENDER_WINDOW_RECORDS", 7)
    monkeypatch.setattr(rotations, "RENDER_WINDOW_RECORDS_PER_IMAGE", 1)
    monkeypatch.setattr(rotations, "RENDER_WINDOW_PIXEL_BYTES", 0)
    windowed = list(rotations.shard_records(images, angles, 28, "png"))  # 9 windows, the last one short
    windows = list(rotations.shard_windows(images, angles, 28, "png"))
    assert [len(window) for window in windows] == [7] * 8 + [4]
    assert whole == windowed == [data for window in windows for data in window] == expected
