"""The test records writer produces a directory that validates and decodes back to the right images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import schemas
from pipeline import local_writer, rotations
from pipeline.codec import decode_record_image
from schemas import sharding, tfrecord_file
from tests.factories import write_records_dir
from tests.helpers import file_sha256


def test_written_directory_validates_and_decodes(tmp_path: Path) -> None:
    info = write_records_dir(tmp_path, angles=(0, 90), images_per_split={"train": 3, "validation": 1})
    loaded = schemas.load_manifest(str(tmp_path))
    assert loaded == info
    records = [
        schemas.decode_example(data)
        for path in loaded.shard_paths(str(tmp_path), "train")
        for data in tfrecord_file.iter_records(path)
    ]
    assert len(records) == 6 == loaded.splits["train"].num_records
    by_key = {record.key: record for record in records}
    upright = decode_record_image(by_key["mnist/train/00000/000"]).astype(int)
    turned = decode_record_image(by_key["mnist/train/00000/090"]).astype(int)
    # The same picture turned by 90 degrees (each record with its own sub-pixel offset, so not equal).
    assert np.abs(np.rot90(upright) - turned).mean() < 0.4 * np.abs(upright - turned).mean()


def _shard_keys(directory: Path) -> list[list[str]]:
    info = schemas.load_manifest(str(directory))
    return [
        [schemas.decode_example(data).key for data in tfrecord_file.iter_records(path)]
        for path in info.shard_paths(str(directory), "train")
    ]


def test_local_writer_places_and_orders_records_by_the_sharding_rules(tmp_path: Path) -> None:
    digits = [(f"{index:05d}", np.full((28, 28, 1), index * 20, np.uint8), index) for index in range(9)]
    options = dict(dataset="mnist", angles=(0, 90, 180), image_size=28, crop_largest_rect=False, num_shards=3)
    first = local_writer.write_rotations(tmp_path / "a", {"train": digits}, **options)
    again = local_writer.write_rotations(tmp_path / "b", {"train": list(reversed(digits))}, **options)
    # Byte-identical whatever the order the images came in: the SHA-256s match, and so do the files.
    assert [s.sha256 for s in first.splits["train"].shards] == [
        s.sha256 for s in again.splits["train"].shards
    ]
    for shard in first.splits["train"].shards:
        assert (tmp_path / "a" / shard.name).read_bytes() == (tmp_path / "b" / shard.name).read_bytes()
        assert file_sha256(str(tmp_path / "a" / shard.name)) == shard.sha256
    for index, keys in enumerate(_shard_keys(tmp_path / "a")):
        image_ids = {key.split("/")[2] for key in keys}
        assert all(sharding.shard_index("mnist", image_id, 3) == index for image_id in image_ids)
        assert keys == sorted(keys, key=sharding.record_order_key)  # the shard's fixed mixed order
        assert len(keys) == 3 * len(image_ids)
    assert sum(len(keys) for keys in _shard_keys(tmp_path / "a")) == 27


def test_local_writer_rejects_mixed_channels_and_empty_input(tmp_path: Path) -> None:
    grey, colour = np.zeros((28, 28, 1), np.uint8), np.zeros((28, 28, 3), np.uint8)
    options = dict(dataset="street_view", angles=(0,), image_size=28, crop_largest_rect=False)
    with pytest.raises(ValueError, match="same channel count"):
        local_writer.write_rotations(tmp_path, {"train": [("a", grey, -1), ("b", colour, -1)]}, **options)
    with pytest.raises(ValueError, match="at least one image"):
        local_writer.write_rotations(tmp_path, {"train": []}, **options)


@pytest.mark.parametrize(
    ("dataset", "shape", "image_format", "crop_largest_rect"),
    [("mnist", (28, 28, 1), "png", False), ("street_view", (40, 60, 3), "jpeg", True)],
)
def test_local_writer_records_are_the_pipelines_bytes(
    dataset: str, shape: tuple[int, int, int], image_format: str, crop_largest_rect: bool
) -> None:
    from pipeline import transforms
    from pipeline.config import PipelineConfig
    from pipeline.datasets.common import SourceImage

    image = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    angles = (0, 17, 90, 271)
    config = PipelineConfig(
        dataset=dataset,
        output_dir="unused",
        image_size=20,
        angles_degrees=angles,
        image_format=image_format,
        crop_largest_rect=crop_largest_rect,
    ).resolved()
    prepared = transforms.prepare(SourceImage(dataset, "train", "7_1", 4, pixels=image), config)
    local = local_writer.prepared_image(
        "7_1",
        image,
        4,
        dataset=dataset,
        split="train",
        angles=angles,
        image_size=20,
        crop_largest_rect=crop_largest_rect,
    )
    local = rotations.encode_rotations(local, angles, 20, image_format)
    assert local == transforms.rotation_records(prepared, config)
    assert [schemas.decode_example(data).angle_degrees for data in local] == list(angles)
