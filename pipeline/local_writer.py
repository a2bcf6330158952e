"""A records directory written in-process, without Beam: for test fixtures and benchmarks.

    write_rotations(directory, {"train": [(image_id, image, label), ...]}, dataset="mnist",
                    angles=range(360), image_size=28, image_format="png", crop_largest_rect=False,
                    rendering="angle-independent", resampling="fixed", crop_scale="largest")

Same format as `rotnet-pipeline` (its shard names, a manifest written last) and the same bytes per
record (`rotations.prepare` + `rotations.encode_rotations`, as the pipeline's sink), but all in memory
on one core: fine for a few thousand records (a 5,000-digit MNIST subset x 360 angles takes ~2
minutes), not for a dataset. Use `rotnet-pipeline` for real data.

`rendering` defaults to "legacy", the chain `rotnet-pipeline` runs today, so fixtures hold the
pipeline's bytes; "angle-independent" is the rendering of issue 13 (pipeline.geometry.render). The
manifest's `config` records `rendering`, `resampling` and `crop_scale`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import schemas
from pipeline import codec, rotations
from schemas import sharding, tfrecord_file

# (image id, HWC uint8 image, label: the MNIST digit or -1)
SourceTuple = tuple[str, np.ndarray, int]


def rotation_examples(
    image_id: str,
    image: np.ndarray,
    label: int,
    *,
    dataset: str,
    split: str,
    angles: Sequence[int],
    image_size: int,
    image_format: str,
    crop_largest_rect: bool,
    rendering: str = "legacy",
    resampling: str = "fixed",
    crop_scale: str = "largest",
    jpeg_quality: int = codec.DEFAULT_JPEG_QUALITY,
) -> list[bytes]:
    """Serialized tf.train.Examples of `image` (HWC uint8) turned by each angle (degrees counter-clockwise).

    Center square, prepared once (`rotations.prepare`), then the pipeline's own `rotations.encode_rotations`.
    """
    source = rotations.prepare(
        image,
        image_size,
        angles,
        crop_largest_rect=crop_largest_rect,
        rendering=rendering,
        crop_scale=crop_scale,
    )
    template = schemas.Record(
        image_encoded=b"",
        image_format=image_format,
        height=image_size,
        width=image_size,
        channels=image.shape[2],
        angle_degrees=0,
        dataset=dataset,
        split=split,
        image_id=image_id,
        label=label,
    )
    return rotations.encode_rotations(source, template, angles, image_size, jpeg_quality, resampling)


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
    shuffle_seed: int | None = None,
    config: Mapping[str, Any] | None = None,
    rendering: str = "legacy",
    resampling: str = "fixed",
    crop_scale: str = "largest",
    jpeg_quality: int = codec.DEFAULT_JPEG_QUALITY,
) -> schemas.DatasetInfo:
    """Write every angle of every image, per split, into `num_shards` shards, then the manifest.

    Records go to shards round-robin in image-then-angle order, or, with `shuffle_seed`, in a seeded
    random order (like the pipeline, whose shards mix the records of many images). `config` is stored
    in the manifest's `config` (say who wrote the directory), with the rendering options added.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    angles = [int(angle) for angle in angles]
    channel_counts = {image.shape[2] for images in images_by_split.values() for _, image, _ in images}
    if not channel_counts:
        raise ValueError("write_rotations needs at least one image")
    if len(channel_counts) > 1:
        raise ValueError(f"all images need the same channel count; got {sorted(channel_counts)}")
    (channels,) = channel_counts
    splits = {}
    num_images_read = 0
    for split, images in images_by_split.items():
        examples = [
            example
            for image_id, image, label in images
            for example in rotation_examples(
                image_id,
                image,
                label,
                dataset=dataset,
                split=split,
                angles=angles,
                image_size=image_size,
                image_format=image_format,
                crop_largest_rect=crop_largest_rect,
                rendering=rendering,
                resampling=resampling,
                crop_scale=crop_scale,
                jpeg_quality=jpeg_quality,
            )
        ]
        order = (
            np.arange(len(examples))
            if shuffle_seed is None
            else np.random.default_rng(shuffle_seed).permutation(len(examples))
        )
        shards = []
        for index in range(num_shards):
            name = sharding.shard_name(split, index, num_shards, compression)
            count = tfrecord_file.write_records(
                str(directory / name), (examples[i] for i in order[index::num_shards])
            )
            shards.append(schemas.ShardInfo(name, count, (directory / name).stat().st_size))
        splits[split] = schemas.SplitInfo(num_images=len(images), num_records=len(examples), shards=shards)
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
    from pipeline import mnist
    from schemas.splits import assign_split, in_subset

    sources: dict[str, list[SourceTuple]] = {}
    for file_split, paths in sorted(mnist.find_offline_files(mnist_dir).items()):
        images, labels = mnist.read_offline_split(paths)
        for index in range(len(images)):
            image_id = mnist.image_id(index)
            if subset_fraction < 1.0 and not in_subset(image_id, subset_fraction):
                continue
            split = assign_split(image_id, validation_fraction) if file_split == "train" else file_split
            sources.setdefault(split, []).append(
                (image_id, images[index][:, :, np.newaxis], int(labels[index]))
            )
    return sources
