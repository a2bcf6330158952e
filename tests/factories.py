"""Tiny records directories for tests, written with the schema's own encoder (no Beam).

The pipeline's end-to-end tests prove that `rotnet-pipeline` writes the same kind of directory; tests
of the trainer and the tools use this to stay fast and independent of Beam.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

import schemas
from pipeline import local_writer


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
    images_per_split = dict(images_per_split or {"train": 6, "validation": 2})
    crop = (dataset != "mnist") if crop_largest_rect is None else crop_largest_rect
    source_size = max(image_size, 28) * (1 if dataset == "mnist" else 2)
    images_by_split = {}
    image_index = 0
    for split, num_images in images_per_split.items():
        images_by_split[split] = [
            (
                f"{index:05d}",
                synthetic_image(index, size=source_size, channels=channels),
                index % 10 if dataset == "mnist" else -1,
            )
            for index in range(image_index, image_index + num_images)
        ]
        image_index += num_images
    return local_writer.write_rotations(
        directory,
        images_by_split,
        dataset=dataset,
        angles=angles,
        image_size=image_size,
        image_format=image_format,
        crop_largest_rect=crop,
        num_shards=num_shards,
        compression=compression,
        config={"writer": "tests.factories", "image_size": image_size, "crop_largest_rect": crop},
    )


def resolved_training(records: Path, **overrides):
    """(TrainConfig, DatasetInfo, Head) for tiny test records, resolved as rotnet-train resolves them:
    batch 8, a 64-record shuffle buffer, and `overrides` for any other TrainConfig field."""
    from trainer.config import TrainConfig, resolve
    from trainer.heads import Head

    settings = {"batch_size": 8, "shuffle_buffer": 64, **overrides}
    config = TrainConfig(records=str(records), output="unused", **settings)
    info = schemas.load_manifest(str(records))
    resolve(config, info)
    return config, info, Head(config.head, tuple(config.bin_angles), config.sigma_degrees)
