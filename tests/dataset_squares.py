"""A dataset outside pipeline/datasets/, registered at test time: adding a dataset is one module plus its
registry line (`datasets.register("squares", "tests.dataset_squares")`).

Synthetic photos made in the job itself (no input files): --squares-count (default NUM_IMAGES) RGB images of SIDE x SIDE + 8
pixels (tests.factories.synthetic_image, then 8 rows more so the square crop matters), ids "sq000".."sq011",
split train/validation by the hash of the id like every dataset, label = index % 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import apache_beam as beam
import numpy as np

from pipeline import geometry
from pipeline.config import PipelineConfig
from pipeline.datasets import Setting
from pipeline.datasets.common import (
    ERRORS,
    SourceImage,
    SourcePlan,
    manifest_setting,
    train_and_validation,
    train_split,
)
from schemas.splits import assign_split, in_subset
from tests.factories import synthetic_image

DEFAULTS = {"image_size": 16, "image_format": "png", "channels": 3, "crop_largest_rect": True}
NUM_IMAGES = 12
SIDE = 32


def _images(subset_fraction: float, count: int) -> list[tuple[str, int, np.ndarray]]:
    """(image id, label, HWC uint8 source) of every image a run with this subset and count keeps."""
    found = []
    for index in range(count):
        image_id = f"sq{index:03d}"
        if subset_fraction < 1.0 and not in_subset(image_id, subset_fraction):
            continue
        image = np.concatenate([synthetic_image(index, SIDE, channels=3), np.zeros((8, SIDE, 3), np.uint8)])
        found.append((image_id, index % 3, image))
    return found


# Its own option, declared here only: rotnet-pipeline --dataset squares --squares-count N.
SETTINGS = (
    Setting("squares_count", "--squares-count", "How many squares to make.", default=NUM_IMAGES, type=int),
)


def check(config: PipelineConfig) -> list[str]:
    count = config.setting("squares_count")
    return [] if 1 <= count <= 100 else [f"--squares-count {count} must be in 1..100"]


class _MakeSquares(beam.PTransform):
    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict:
        config = self.config
        images = [
            SourceImage("squares", train_split(image_id, config), image_id, label, pixels=image)
            for image_id, label, image in _images(config.subset_fraction, config.setting("squares_count"))
        ]
        return {
            "images": pbegin | "Create" >> beam.Create(images),
            ERRORS: pbegin | "NoErrors" >> beam.Create([]),
        }


def plan(config: PipelineConfig, progress_dir: str | None) -> SourcePlan:
    del progress_dir  # nothing to count while reading: the images are made here
    num_images = len(_images(config.subset_fraction, config.setting("squares_count")))
    return SourcePlan(
        _MakeSquares(config), train_and_validation(config, num_images), [f"squares: {num_images}"]
    )


def source_images(
    config: Mapping[str, Any], split: str, source_dir: str | None = None, channels: int = 3
) -> list[tuple[str, np.ndarray]]:
    del source_dir, channels  # made, not read; always RGB
    validation_fraction = manifest_setting(config, "validation_fraction")
    return [
        (image_id, geometry.crop_square(image, manifest_setting(config, "crop_position")))
        for image_id, _, image in _images(
            manifest_setting(config, "subset_fraction"), config["squares_count"]
        )
        if assign_split(image_id, validation_fraction) == split
    ]
