"""A records directory written in-process, without Beam: for test fixtures and benchmarks.

    write_rotations(directory, {"train": [(image_id, image, label), ...]}, dataset="mnist",
                    angles=range(360), image_size=28, image_format="png", crop_largest_rect=False)

Same format as `rotnet-pipeline` (its shard names, membership and order, a manifest written last) and
the same bytes (`geometry.prepare_source` + `rotations.shard_records`, as the pipeline's shard writer),
but on one core in this process: fine for a few thousand images, not for a dataset. Use
`rotnet-pipeline` for real data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import schemas
from pipeline import codec, geometry, rotations
from schemas import sharding, tfrecord_file

# (image id, HWC uint8 image, label: the MNIST digit or -1)
SourceTuple = tuple[str, np.ndarray, int]


def prepared_image(
    image_id: str,
    image: np.ndarray,
    label: int,
    *,
    dataset: str,
    split: str,
    angles: Sequence[int],
    image_size: int,
    crop_largest_rect: bool,
) -> rotations.PreparedImage:
    """An HWC uint8 image prepared as the pipeline prepares it: center square, one downscale."""
    source = geometry.prepare_source(
        image, image_size, angles, center_crop_square=True, crop_largest_rect=crop_largest_rect
    )
    return rotations.PreparedImage(dataset, split, image_id, label, source)


def write_rotations(
    directory: Path | str,
    images_by_split: Mapping[str, Sequence[SourceTuple]],
    *,
    dataset: str,
    angles: Sequence[int],
    image_size: int,
    image_format: str = "png",
    crop_largest_rect: bool,
    num_shards: int = 2,
    compression: str = "none",
    jpeg_quality: int = codec.DEFAULT_JPEG_QUALITY,
    config: Mapping[str, Any] | None = None,
) -> schemas.DatasetInfo:
    """Write every angle of every image, per split, into `num_shards` shards, then the manifest.

    Each image's records go to the shard `schemas.sharding.shard_index` names, in the pipeline's order
    (rotations.shard_records): the same bytes rotnet-pipeline writes for these pictures. `config` is
    stored in the manifest's `config` (say who wrote the directory).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    angles = sorted({int(angle) for angle in angles})
    channel_counts = {image.shape[2] for images in images_by_split.values() for _, image, _ in images}
    if not channel_counts:
        raise ValueError("write_rotations needs at least one image")
    if len(channel_counts) > 1:
        raise ValueError(f"all images need the same channel count; got {sorted(channel_counts)}")
    (channels,) = channel_counts
    splits = {}
    num_images_read = 0
    for split, images in images_by_split.items():
        by_shard: list[list[rotations.PreparedImage]] = [[] for _ in range(num_shards)]
        for image_id, image, label in images:
            prepared = prepared_image(
                image_id,
                image,
                label,
                dataset=dataset,
                split=split,
                angles=angles,
                image_size=image_size,
                crop_largest_rect=crop_largest_rect,
            )
            by_shard[sharding.shard_index(dataset, image_id, num_shards)].append(prepared)
        shards = []
        for index, shard_images in enumerate(by_shard):
            name = sharding.shard_name(split, index, num_shards, compression)
            with tfrecord_file.ShardWriter(str(directory / name)) as writer:
                for record in rotations.shard_records(
                    shard_images, angles, image_size, image_format, jpeg_quality
                ):
                    writer.write(record)
            shards.append(schemas.ShardInfo(name, writer.num_records, writer.num_bytes, writer.sha256))
        num_records = len(images) * len(angles)
        splits[split] = schemas.SplitInfo(num_images=len(images), num_records=num_records, shards=shards)
        num_images_read += len(images)
    info = schemas.DatasetInfo(
        dataset=dataset,
        image=schemas.ImageSpec(height=image_size, width=image_size, channels=channels, format=image_format),
        angles_degrees=angles,
        splits=splits,
        num_images_read=num_images_read,
        compression=compression,
        config=dict(config or {}),
    )
    schemas.write_manifest(str(directory), info)
    return info
