"""A records directory written in-process, without Beam: for test fixtures and benchmarks.

    write_rotations(directory, {"train": [(image_id, image, label), ...]}, dataset="mnist",
                    angles=range(360), image_size=28, image_format="png", crop_largest_rect=False)

Same format as `rotnet-pipeline` (its shard names, membership and order, a manifest written last) and
the same bytes (`rotations.prepare` + `rotations.shard_windows`, as the pipeline's shard writer), but
on one core in this process: fine for a few thousand images (a 5,000-digit MNIST subset x 360 angles
takes minutes), not for a dataset. Use `rotnet-pipeline` for real data. The rendering options are the
pipeline's (`rendering`, `resampling`, `crop_scale`, pipeline/config.py) and go into the manifest's
`config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import schemas
from pipeline import codec, rotations
from pipeline.config import PipelineConfig
from schemas import sharding, tfrecord_file

# The pipeline's own defaults (spelled once, in PipelineConfig).
_DEFAULT = {field.name: field.default for field in dataclasses.fields(PipelineConfig)}

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
    rendering: str = _DEFAULT["rendering"],
    crop_scale: str = _DEFAULT["crop_scale"],
) -> rotations.PreparedImage:
    """An HWC uint8 image prepared as the pipeline prepares it: center square, then `rotations.prepare`."""
    source = rotations.prepare(
        image,
        image_size,
        angles,
        crop_largest_rect=crop_largest_rect,
        rendering=rendering,
        crop_scale=crop_scale,
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
    rendering: str = _DEFAULT["rendering"],
    resampling: str = _DEFAULT["resampling"],
    crop_scale: str = _DEFAULT["crop_scale"],
    config: Mapping[str, Any] | None = None,
) -> schemas.DatasetInfo:
    """Write every angle of every image, per split, into `num_shards` shards, then the manifest.

    Each image's records go to the shard `schemas.sharding.shard_index` names, in the pipeline's order
    (rotations.shard_records): the same bytes rotnet-pipeline writes for these pictures. `config` is
    stored in the manifest's `config` (say who wrote the directory), with the rendering options added.
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
                rendering=rendering,
                crop_scale=crop_scale,
            )
            by_shard[sharding.shard_index(dataset, image_id, num_shards)].append(prepared)
        shards = []
        for index, shard_images in enumerate(by_shard):
            name = sharding.shard_name(split, index, num_shards, compression)
            windows = rotations.shard_windows(
                shard_images, angles, image_size, image_format, jpeg_quality, resampling
            )
            with tfrecord_file.ShardWriter(str(directory / name)) as writer:
                for window in windows:
                    writer.write_many(window)
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
        config={
            **(config or {}),
            "rendering": rendering,
            "resampling": resampling,
            "crop_scale": crop_scale,
            "crop_largest_rect": crop_largest_rect,
        },
    )
    schemas.write_manifest(str(directory), info)
    return info


def mnist_sources(
    mnist_dir: Path | str, validation_fraction: float = 0.1, subset_fraction: float = 1.0
) -> dict[str, list[SourceTuple]]:
    """MNIST's IDX files in `mnist_dir` as `write_rotations` input, split exactly as rotnet-pipeline
    splits them: ids are the index in their file (mnist.image_id), the stable `subset_fraction` by
    schemas.splits.in_subset, the train file into train/validation by schemas.splits.assign_split,
    t10k into test. Images are 28 x 28 x 1 uint8; labels are the digits."""
    from pipeline.datasets import mnist

    sources: dict[str, list[SourceTuple]] = {}
    for split, image_id, pixels, label in mnist.offline_digits(
        mnist_dir, validation_fraction, subset_fraction
    ):
        sources.setdefault(split, []).append((image_id, pixels, label))
    return sources
