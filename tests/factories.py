"""Tiny records directories for tests, written with the schema's own encoder (no Beam).

The pipeline's end-to-end tests prove that `rotnet-pipeline` writes the same kind of directory; tests
of the trainer and the tools use this to stay fast and independent of Beam.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

import schemas
from pipeline import geometry
from pipeline.codec import encode_image
from schemas import sharding, tfrecord_file


def synthetic_image(index: int, size: int = 28, channels: int = 1) -> np.ndarray:
    """A deterministic, orientation-revealing picture: an 'L'-shaped bar pair with a dot, jittered by index."""
    rng = np.random.default_rng(index)
    image = np.zeros((size, size, channels), np.uint8)
    unit = max(1, size // 7)
    offset = int(rng.integers(0, unit + 1))
    image[unit + offset : size - unit, 2 * unit : 3 * unit] = 255  # vertical bar
    image[size - 2 * unit : size - unit, 2 * unit : size - 2 * unit + offset] = 255  # foot to the right
    image[unit : 2 * unit, size - 3 * unit : size - 2 * unit] = 180  # dot top right
    if channels == 3:
        image[..., 1] //= 2  # colour, so channel mix-ups show
    return image


def write_records_dir(
    directory: Path | str,
    *,
    dataset: str = "mnist",
    images_per_split: Mapping[str, int] | None = None,
    angles: Sequence[int] = (0, 90, 180, 270),
    image_size: int = 28,
    channels: int = 1,
    image_format: str = "png",
    num_shards: int = 2,
    compression: str = "none",
    crop_largest_rect: bool | None = None,
) -> schemas.DatasetInfo:
    """Write every rotation of a few synthetic images per split, shards round-robin, then the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images_per_split = dict(images_per_split or {"train": 6, "validation": 2})
    crop = (dataset != "mnist") if crop_largest_rect is None else crop_largest_rect
    splits = {}
    image_index = 0
    for split, num_images in images_per_split.items():
        shards: list[list[bytes]] = [[] for _ in range(num_shards)]
        position = 0
        for _ in range(num_images):
            image = synthetic_image(
                image_index, size=max(image_size, 28) * (1 if dataset == "mnist" else 2), channels=channels
            )
            source = geometry.prepare_source(
                image, image_size, angles, center_crop_square=True, crop_largest_rect=crop
            )
            for angle in angles:
                pixels = geometry.fast_rotation(source, angle, image_size)
                record = schemas.Record(
                    image_encoded=encode_image(pixels, image_format),
                    image_format=image_format,
                    height=image_size,
                    width=image_size,
                    channels=channels,
                    angle_degrees=int(angle),
                    dataset=dataset,
                    split=split,
                    image_id=f"{image_index:05d}",
                    label=image_index % 10 if dataset == "mnist" else -1,
                )
                shards[position % num_shards].append(schemas.encode_example(record))
                position += 1
            image_index += 1
        shard_infos = []
        for index, records in enumerate(shards):
            name = sharding.shard_name(split, index, num_shards, compression)
            tfrecord_file.write_records(str(directory / name), records)
            shard_infos.append(schemas.ShardInfo(name, len(records), (directory / name).stat().st_size))
        splits[split] = schemas.SplitInfo(
            num_images=num_images, num_records=num_images * len(angles), shards=shard_infos
        )
    info = schemas.DatasetInfo(
        dataset=dataset,
        image=schemas.ImageSpec(height=image_size, width=image_size, channels=channels, format=image_format),
        angles_degrees=[int(angle) for angle in angles],
        splits=splits,
        num_images_read=image_index,
        compression=compression,
        config={"writer": "tests.factories", "image_size": image_size, "crop_largest_rect": crop},
    )
    schemas.write_manifest(str(directory), info)
    return info
