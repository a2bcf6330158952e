"""Plain helpers only the tests use (no Beam, no TensorFlow): reading shards back, the legacy chain for
one angle, the NumPy angle error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline import geometry
from schemas import sharding, tfrecord_file
from schemas.paths import open_binary


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes as stored (local or remote)."""
    digest = hashlib.sha256()
    with open_binary(str(path), "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def count_records(path: str | Path, verify: bool = False) -> int:
    """Number of records in a shard (reads every record; with `verify`, checks the CRCs too)."""
    return sum(1 for _ in tfrecord_file.iter_records(str(path), verify=verify))


def final_shards(directory: str | Path) -> list[Path]:
    """The files of `directory` that carry a final shard name (schemas.sharding.shard_name)."""
    return sorted(path for path in Path(directory).iterdir() if sharding.parse_shard_name(path.name))


def legacy_chain(
    image: np.ndarray,
    angle_degrees: float,
    image_size: geometry.Size,
    center_crop_square: bool = True,
    crop_largest_rect: bool = True,
) -> np.ndarray:
    """rotnet 0.1's warp ("legacy" rendering) for one angle: the source prepared for that angle alone,
    then one warp; the same signature and picture as geometry.reference_chain."""
    source = geometry.prepare_source(
        image, image_size, [angle_degrees], center_crop_square, crop_largest_rect
    )
    return geometry.fast_rotation(source, angle_degrees, image_size)


def angle_error_degrees(true_angles: np.ndarray, predicted_angles: np.ndarray) -> float:
    """RotNet's angle_error in NumPy: mean absolute circular difference, degrees."""
    difference = np.abs(np.asarray(true_angles, np.float64) - np.asarray(predicted_angles, np.float64)) % 360
    return float(np.mean(np.minimum(difference, 360 - difference)))
