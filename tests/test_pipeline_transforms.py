"""The pipeline's pure pieces and its Beam transforms on tiny inputs (in-process runner, no workers).

.venv/bin/python -m pytest tests/test_pipeline_transforms.py -q
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

import schemas
from pipeline import codec, geometry, progress, rotations, transforms
from pipeline.config import ConfigError, PipelineConfig
from pipeline.datasets.common import SourceImage
from pipeline.geometry import crop_square
from schemas import sharding, tfrecord_file
from schemas.record import example_encoder
from tests.helpers import file_sha256, legacy_chain
from tests.pipeline_helpers import digit, expected_picture, in_process_pipeline

# --- Pure pieces -----------------------------------------------------------------------------


def test_dataset_defaults_mnist_grey_png_without_largest_rect_photos_jpeg_with_it() -> None:
    mnist = PipelineConfig(dataset="mnist", output_dir="out").resolved()
    assert (mnist.image_size, mnist.image_format, mnist.channels, mnist.crop_largest_rect) == (
        28,
        "png",
        1,
        False,
    )
    assert mnist.angles_degrees == tuple(range(360))
    photos = PipelineConfig(dataset="street_view", output_dir="out").resolved()
    assert (photos.image_size, photos.image_format, photos.channels, photos.crop_largest_rect) == (
        224,
        "jpeg",
        3,
        True,
    )
    assert photos.jpeg_quality == 95
    overridden = PipelineConfig(
        dataset="mnist",
        output_dir="out",
        crop_largest_rect=True,
        image_format="raw",
        angles_degrees=(90, 0, 90),
    ).resolved()
    assert (overridden.crop_largest_rect, overridden.image_format, overridden.angles_degrees) == (
        True,
        "raw",
        (0, 90),
    )
    assert json.loads(json.dumps(mnist.to_dict()))["angles_degrees"][:3] == [0, 1, 2]


@pytest.mark.parametrize(
    "changes",
    [
        {"dataset": "cifar"},
        {"dataset": "images"},  # no --input
        {"validation_fraction": 1.0},
        {"angles_degrees": ()},
        {"crop_position": "left"},
        {"compression": "zip"},
    ],
)
def test_config_refuses_what_cannot_run(changes: dict) -> None:
    with pytest.raises(ConfigError):
        PipelineConfig(**{"dataset": "mnist", "output_dir": "out", **changes}).resolved()


def test_shard_count_aims_at_about_192_mb_per_shard() -> None:
    config = PipelineConfig(dataset="mnist", output_dir="out").resolved()
    per_record = config.estimated_record_bytes()
    assert 500 < per_record < 900  # the measured MNIST record is ~680 bytes
    assert config.shards_for(54_000) == pytest.approx(54_000 * 360 * per_record / (192 * 2**20), abs=1)
    assert config.shards_for(10) == 1
    assert config.shards_for(10, parallelism=4) == 1  # 2.4 MB: not worth spreading
    assert config.shards_for(1_000, parallelism=4) == 4  # 245 MB on 4 workers: one shard each
    assert config.shards_for(54_000, parallelism=4) == config.shards_for(54_000)
    assert dataclasses.replace(config, num_shards=7).shards_for(10) == 7
    street = PipelineConfig(dataset="street_view", output_dir="out").resolved()
    assert 20_000 < street.estimated_record_bytes() < 40_000  # measured ~26.5 KB at 224 px q95


def test_example_encoder_writes_the_bytes_of_encode_example() -> None:
    template = schemas.Record(b"", "jpeg", 224, 224, 3, 0, "street_view", "validation", "008922_1")
    encode = example_encoder(template)
    for angle in (0, 1, 127, 128, 359):
        for image in (
            b"",
            b"\xff" * 300,
            b"x" * 70_000,
            *(b"y" * size for size in (127, 128, 16_383, 16_384)),
        ):
            expected = schemas.encode_example(
                dataclasses.replace(template, image_encoded=image, angle_degrees=angle)
            )
            assert encode(image, angle) == expected
    with pytest.raises(schemas.SchemaError):
        encode(b"", 360)


def test_rotation_records_match_the_geometry_core_exactly_for_mnist() -> None:
    config = PipelineConfig(dataset="mnist", output_dir="out", angles_degrees=(0, 33, 90, 200)).resolved()
    image = digit(3)
    prepared = transforms.prepare(SourceImage("mnist", "train", "00003", 7, pixels=image), config)
    records = [schemas.decode_example(data) for data in transforms.rotation_records(prepared, config)]
    assert [record.angle_degrees for record in records] == [0, 33, 90, 200]
    for record in records:
        assert (record.dataset, record.split, record.image_id, record.label) == ("mnist", "train", "00003", 7)
        assert (record.height, record.width, record.channels, record.image_format) == (28, 28, 1, "png")
        expected = expected_picture(image, record.key, record.angle_degrees, config)
        np.testing.assert_array_equal(codec.decode_record_image(record), expected)
    # Angle-independent: 90 degrees is resampled like 33 (no exact copy to give the angle away) ...
    assert not np.array_equal(codec.decode_record_image(records[2]), np.rot90(image))
    # ... while --rendering legacy keeps rotnet 0.1's exact copy at right angles (PNG is lossless).
    legacy = dataclasses.replace(config, rendering="legacy")
    prepared = transforms.prepare(SourceImage("mnist", "train", "00003", 7, pixels=image), legacy)
    legacy_records = [schemas.decode_example(data) for data in transforms.rotation_records(prepared, legacy)]
    np.testing.assert_array_equal(codec.decode_record_image(legacy_records[2]), np.rot90(image))
    for record in legacy_records:
        expected = legacy_chain(image, record.angle_degrees, 28, crop_largest_rect=False)
        np.testing.assert_array_equal(codec.decode_record_image(record), expected)


def test_cached_rotation_matrix_is_the_fast_matrix() -> None:
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    source = geometry.prepare_source(image, 24, [0, 17, 45])
    for angle in (0, 17, 45):
        matrix = rotations.rotation_matrix(source, angle, 24)
        np.testing.assert_array_equal(matrix, geometry.fast_matrix(source, angle, 24))
        np.testing.assert_array_equal(
            geometry.fast_rotation(source, angle, 24, matrix), geometry.fast_rotation(source, angle, 24)
        )


def test_crop_right_keeps_the_right_square() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :20] = 255  # the left third (where Street View's icon sits) is white
    angles = (0,)
    right = PipelineConfig(
        dataset="street_view", output_dir="o", image_size=16, angles_degrees=angles, crop_position="right"
    )
    center = dataclasses.replace(right, crop_position="center")

    def first_image(config: PipelineConfig) -> np.ndarray:
        config = config.resolved()
        prepared = transforms.prepare(SourceImage("street_view", "train", "1_1", pixels=image), config)
        return codec.decode_record_image(
            schemas.decode_example(transforms.rotation_records(prepared, config)[0])
        )

    assert first_image(right).max() < 10  # no white at all
    assert first_image(center).max() > 200
    np.testing.assert_array_equal(crop_square(image, "right"), image[:, 20:])


# --- Beam transforms -----------------------------------------------------------------------------


def test_write_shards_writes_every_shard_in_its_fixed_mixed_order_with_its_stats(tmp_path: Path) -> None:
    config = PipelineConfig(
        dataset="mnist", output_dir=str(tmp_path), angles_degrees=tuple(range(0, 360, 30))
    ).resolved()
    prepared = [
        transforms.prepare(
            SourceImage("mnist", "train", f"{index:05d}", index % 10, pixels=digit(index)), config
        )
        for index in range(12)
    ]
    temp_dir = tmp_path / "temp"
    pipeline = in_process_pipeline()
    # Seven shards for 12 images: shard 0 gets no image and must still be written, empty.
    stats = {"train": pipeline | beam.Create(prepared)} | transforms.WriteShards(
        config, {"train": 7}, str(temp_dir)
    )
    assert_that(stats | beam.Map(lambda item: item["name"]), equal_to(sharding.shard_names("train", 7)))
    stats | transforms.WriteStats(str(tmp_path / "stats.json"))
    pipeline.run().wait_until_finish()
    written = json.loads((tmp_path / "stats.json").read_text())

    by_shard: dict[int, list] = {index: [] for index in range(7)}
    for image in prepared:
        by_shard[sharding.shard_index("mnist", image.image_id, 7)].append(image)
    assert any(not images for images in by_shard.values())  # the empty-shard case is covered
    for index, images in by_shard.items():
        path = temp_dir / sharding.shard_name("train", index, 7)
        # Exactly the pure function's bytes, in the shard's order (rotations.shard_records).
        expected = list(rotations.shard_records(images, config.angles_degrees, 28, "png"))
        assert list(tfrecord_file.iter_records(str(path))) == expected
        [item] = [item for item in written if item["name"] == path.name]
        assert item["num_records"] == len(expected) == 12 * len(images)
        assert item["num_bytes"] == path.stat().st_size
        assert item["sha256"] == file_sha256(str(path))
    # Mixing: consecutive records of a shard rarely come from the same image or the same angle.
    fullest = max(by_shard, key=lambda index: len(by_shard[index]))
    keys = [
        schemas.decode_example(data).key
        for data in tfrecord_file.iter_records(str(temp_dir / sharding.shard_name("train", fullest, 7)))
    ]
    same_image = sum(a.split("/")[2] == b.split("/")[2] for a, b in itertools.pairwise(keys))
    assert same_image < len(keys) / 2
    assert keys == sorted(keys, key=sharding.record_order_key)


def test_progress_counters_are_summed_from_files(tmp_path: Path) -> None:
    first = progress.StageCounters(str(tmp_path))
    second = progress.StageCounters(str(tmp_path))
    first.add(images_read=3, records=1080)
    second.add(images_read=2)
    first.flush()
    second.flush()
    assert progress.read_progress(tmp_path) == {"images_read": 5, "records": 1080}


def test_images_expanded_counts_as_the_records_are_written(tmp_path: Path, monkeypatch) -> None:
    config = PipelineConfig(
        dataset="mnist", output_dir=str(tmp_path), angles_degrees=(0, 90, 180, 270)
    ).resolved()
    images = [
        transforms.prepare(SourceImage("mnist", "train", f"{index:05d}", 1, pixels=digit(index)), config)
        for index in range(5)
    ]
    monkeypatch.setattr(transforms, "PROGRESS_RECORDS", 6)  # 20 records: updates at 6, 12, 18 and the end
    # ... as the render windows end: windows of 6 records here
    monkeypatch.setattr(rotations, "RENDER_WINDOW_RECORDS", 6)
    monkeypatch.setattr(rotations, "RENDER_WINDOW_RECORDS_PER_IMAGE", 1)
    monkeypatch.setattr(rotations, "RENDER_WINDOW_PIXEL_BYTES", 0)
    seen = []

    class Recorder:
        def add(self, **counts: int) -> None:
            seen.append((counts[progress.RECORDS], counts[progress.IMAGES_EXPANDED]))

    write = transforms._WriteShardFn(config, "train", 1, str(tmp_path / "temp"), None)
    write.setup()
    write.counters = Recorder()
    [stats] = list(write.process((0, images)))
    assert stats["num_records"] == 20
    # (records, images' worth of records) per update: 6 // 4 = 1, 12 // 4 = 3, 18 // 4 = 4, then the rest.
    assert seen == [(6, 1), (6, 2), (6, 1), (2, 1)]


@pytest.mark.parametrize("rendering", ["angle-independent", "legacy"])
def test_shard_writer_prepares_squares_as_the_images_they_were_cut_from(
    tmp_path: Path, rendering: str
) -> None:
    # PrepareRotations sends each image's square through the GroupByKey (not its render levels) and
    # the shard writer prepares it: the same bytes as preparing the whole photo (Street View's
    # right-aligned square, RGB, a crop per angle).
    config = PipelineConfig(
        dataset="street_view",
        output_dir=str(tmp_path),
        angles_degrees=(0, 37, 90, 211),
        image_size=24,
        rendering=rendering,
        crop_scale="largest" if rendering == "legacy" else "constant",
    ).resolved()
    rng = np.random.default_rng(5)
    photos = [
        SourceImage("street_view", "train", f"{index:03d}_1", pixels=rng.integers(0, 256, (40 + index, 57, 3), np.uint8))
        for index in range(3)
    ]  # fmt: skip
    prepare_fn = transforms._PrepareFn(config, None)
    prepare_fn.setup()
    squares = [output.value for photo in photos for output in prepare_fn.process(photo)]
    if rendering == "legacy":  # geometry.min_prepared_bytes: always prepared before the shuffle
        assert all(isinstance(square, rotations.PreparedImage) for square in squares)
    else:
        assert [square.pixels.shape for square in squares] == [(40 + index,) * 2 + (3,) for index in range(3)]
    # A photo larger than its preparation goes prepared.
    large = SourceImage(
        "street_view", "train", "large_1", pixels=rng.integers(0, 256, (300, 320, 3), np.uint8)
    )
    assert all(isinstance(output.value, rotations.PreparedImage) for output in prepare_fn.process(large))

    def shard_bytes(images: list, name: str) -> bytes:
        write = transforms._WriteShardFn(config, "train", 1, str(tmp_path / name), None)
        write.setup()
        [stats] = list(write.process((0, images)))
        return (tmp_path / name / stats["name"]).read_bytes()

    prepared = [transforms.prepare(photo, config) for photo in photos]
    assert shard_bytes(squares, "squares") == shard_bytes(prepared, "prepared")
