"""What one `rotnet-pipeline` run does: a flat, typed dataclass; the dataset modules add their defaults.

Pure Python: the CLI fills a `PipelineConfig` from its options (their defaults are this class's),
`resolved()` puts in the dataset's own defaults (`pipeline/datasets/NAME.py` DEFAULTS: MNIST 28 px grey
PNG without the largest-rect crop; photos 224 px RGB JPEG q95 with it; this imports the dataset module),
and the manifest records `to_dict()` so that every records directory says how it was made.

    >>> config = PipelineConfig(dataset="mnist", output_dir="data/records/mnist").resolved()
    >>> config.image_size, config.image_format, config.crop_largest_rect, len(config.angles_degrees)
    (28, 'png', False, 360)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pipeline import datasets, geometry
from pipeline.codec import DEFAULT_JPEG_QUALITY, DEFAULT_MAX_PIXELS
from pipeline.geometry import CROP_POSITIONS, CROP_SCALES, RESAMPLINGS
from pipeline.inputs import DEFAULT_MAX_FILE_BYTES
from pipeline.rotations import RENDERINGS
from schemas.angles import NUM_ANGLES
from schemas.record import IMAGE_FORMATS
from schemas.sharding import COMPRESSION_SUFFIXES

# Shards of ~128-256 MB stream well from GCS and shuffle well across files; aim for the middle.
TARGET_SHARD_BYTES = 192 * 2**20
# Below this a split is not worth spreading over more workers.
MIN_SHARD_BYTES = 16 * 2**20
# Bytes per record, measured on the real samples (tests data): the encoded image as a fraction of its
# raw pixel bytes (PNG level 1 of a 28 px digit ~0.6, JPEG q95 of a 224 px street photo ~0.18) plus the
# record's keys and TFRecord framing. Only used to choose the number of shards.
ENCODED_FRACTION = {"png": 0.6, "jpeg": 0.18, "raw": 1.0}
RECORD_OVERHEAD_BYTES = 220

# An image whose short side is below this cannot give a meaningful rotation (a 1x1 image is an error).
DEFAULT_MIN_IMAGE_SIDE = 16
# Records smaller than this are not images a model can learn a rotation from (and --image-size 1 was
# accepted); larger than MAX_IMAGE_SIZE is far beyond any model's input.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096
# A dataset whose every source image has one known side (its module's SOURCE_SIDE: MNIST's 28 px)
# refuses an --image-size over this many times that side: such records are the same pixels blown up,
# and rendering them costs the square of the factor (MNIST at 4096 px: 21,400x the pixels, minutes for
# a dozen digits and 664 MB). Photos' sides are known only when each is read: --image-size <= 4096.
MAX_UPSCALE = 4
# What a run does when two source images get the same id: fail (listing them), or add a stable suffix.
DUPLICATE_ID_POLICIES = ("fail", "suffix")


class ConfigError(ValueError):
    """A configuration that cannot run; the message says which option to change."""


class JobError(RuntimeError):
    """The run cannot start or did not produce a valid dataset; the message says what to do."""


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of a pipeline run. None means "the dataset's default" (its module's DEFAULTS)."""

    # --- what to read ------------------------------------------------------------------------
    dataset: str  # a module of pipeline/datasets: mnist | street_view | images
    output_dir: str  # records directory, local path or gs://
    # The dataset's own settings, by name (its module's SETTINGS declare them and their options);
    # resolved() fills in their defaults and refuses another dataset's.
    dataset_settings: dict[str, Any] = field(default_factory=dict)
    download_dir: str = "data/downloads"  # download cache (a rerun downloads nothing)
    subset_fraction: float = 1.0  # keep this stable fraction of source images (by hash of the id)

    # --- geometry ----------------------------------------------------------------------------
    image_size: int | None = None  # output side in pixels (square)
    angles_degrees: tuple[int, ...] = tuple(range(NUM_ANGLES))  # counter-clockwise rotations to write
    center_crop: bool = True  # crop the source to a square before rotating
    crop_position: str = "center"  # where the square sits: center | right (Street View icon is top-left)
    crop_largest_rect: bool | None = None  # crop the largest fill-free rectangle after rotating
    # How each record is drawn (pipeline/rotations.py). angle-independent: every angle, right angles
    # included, resampled alike with a sub-pixel offset keyed by the record, so the pictures carry no
    # interpolation cue to their angle; legacy: rotnet 0.1's warp (exact copies at right angles).
    rendering: str = "angle-independent"
    resampling: str = "fixed"  # fixed: one low-pass kernel; random: a kernel per record (from its key)
    # With the crop: constant = every angle at the tightest angle's scale (the same field of view at 0
    # and 45 degrees, no zoom cue); largest = each angle's own largest rectangle (RotNet's).
    crop_scale: str = "constant"
    min_image_side: int = DEFAULT_MIN_IMAGE_SIDE  # smaller sources are errors, not records
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard for source images
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # larger input files are errors, never read
    duplicate_ids: str = "fail"  # fail | suffix: two source images with one id (DUPLICATE_ID_POLICIES)

    # --- encoding and output ---------------------------------------------------------------
    image_format: str | None = None  # png | jpeg | raw
    channels: int | None = None  # 1 (grey) or 3 (RGB): the dataset's; not an option
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    validation_fraction: float = 0.1  # of the train images, by a stable hash of the image id
    num_shards: int = 0  # per split; 0 = about TARGET_SHARD_BYTES per shard
    compression: str = "none"  # none | gzip
    max_error_fraction: float = 0.01  # fail the run when more source images than this are bad
    overwrite: bool = False  # replace a finished dataset already in output_dir

    # --- derived -----------------------------------------------------------------------------

    def resolved(self) -> PipelineConfig:
        """A copy with the dataset defaults filled in, validated (raises ConfigError)."""
        if self.dataset not in datasets.names():
            raise ConfigError(f"dataset {self.dataset!r} is not one of {', '.join(datasets.names())}")
        defaults = datasets.get(self.dataset).DEFAULTS
        config = dataclasses.replace(
            self,
            dataset_settings=self._resolved_settings(),
            image_size=self.image_size or defaults["image_size"],
            image_format=self.image_format or defaults["image_format"],
            channels=defaults["channels"],
            crop_largest_rect=(
                defaults["crop_largest_rect"] if self.crop_largest_rect is None else self.crop_largest_rect
            ),
            angles_degrees=tuple(sorted({int(angle) for angle in self.angles_degrees})),
        )
        config.validate()
        return config

    def _resolved_settings(self) -> dict[str, Any]:
        declared = {setting.name: setting for setting in datasets.settings(self.dataset)}
        clash = set(declared) & {field.name for field in dataclasses.fields(PipelineConfig)}
        if clash:  # the manifest keeps both under one name: a dataset module's mistake
            raise ValueError(f"dataset {self.dataset} declares settings named like config fields: {clash}")
        unknown = sorted(set(self.dataset_settings) - set(declared))
        if unknown:
            own = ", ".join(declared) or "none"
            raise ConfigError(
                f"{', '.join(unknown)}: not a setting of --dataset {self.dataset} (its settings: {own})"
            )
        resolved = {}
        for name, setting in declared.items():
            value = self.dataset_settings.get(name, setting.default)
            resolved[name] = tuple(value) if setting.multiple and value is not None else value
        return resolved

    def setting(self, name: str) -> Any:
        """The value of the dataset's setting `name` (its declared default where not given)."""
        if name in self.dataset_settings:
            return self.dataset_settings[name]
        for setting in datasets.settings(self.dataset):
            if setting.name == name:
                return setting.default
        raise KeyError(f"dataset {self.dataset} has no setting {name!r}")

    def locations(self) -> list[tuple[datasets.Setting, str]]:
        """(setting, value) of every dataset setting given that names what the job reads."""
        return [
            (setting, self.setting(setting.name))
            for setting in datasets.settings(self.dataset)
            if setting.location and self.setting(setting.name)
        ]

    def validate(self) -> None:
        check = getattr(datasets.get(self.dataset), "check", None)  # optional in a dataset module
        problems = check(self) if check else []
        if not self.output_dir:
            problems.append("an output directory is required (--output-dir)")
        if self.image_size is not None and not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            problems.append(f"image size {self.image_size} must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}")
        source_side = getattr(datasets.get(self.dataset), "SOURCE_SIDE", None)
        if source_side and self.image_size is not None and self.image_size > MAX_UPSCALE * source_side:
            problems.append(
                f"--image-size {self.image_size} is over {MAX_UPSCALE}x the {source_side}-px side of every "
                f"{self.dataset} source image: its records would be the same pixels blown up "
                f"{(self.image_size / source_side) ** 2:,.0f}x, slow to render; choose --image-size "
                f"{MAX_UPSCALE * source_side} or less"
            )
        if not self.angles_degrees or any(not 0 <= a < NUM_ANGLES for a in self.angles_degrees):
            problems.append("angles must be a non-empty set of integers in 0..359")
        if self.rendering not in RENDERINGS:
            problems.append(f"rendering {self.rendering!r} is not one of {', '.join(RENDERINGS)}")
        if self.resampling not in RESAMPLINGS:
            problems.append(f"resampling {self.resampling!r} is not one of {', '.join(RESAMPLINGS)}")
        if self.crop_scale not in CROP_SCALES:
            problems.append(f"crop scale {self.crop_scale!r} is not one of {', '.join(CROP_SCALES)}")
        if self.rendering == "legacy" and self.crop_largest_rect and self.crop_scale != "largest":
            problems.append(
                "--rendering legacy crops each angle's largest rectangle: add --crop-scale largest"
            )
        if self.crop_position not in CROP_POSITIONS:
            problems.append(f"crop position {self.crop_position!r} is not one of {CROP_POSITIONS}")
        if self.image_format is not None and self.image_format not in IMAGE_FORMATS:
            problems.append(f"image format {self.image_format!r} is not one of {IMAGE_FORMATS}")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"JPEG quality {self.jpeg_quality} must be in 1..100")
        if not 0.0 <= self.validation_fraction < 1.0:
            problems.append(f"validation fraction {self.validation_fraction} must be in [0, 1)")
        if not 0.0 < self.subset_fraction <= 1.0:
            problems.append(f"subset fraction {self.subset_fraction} must be in (0, 1]")
        if self.num_shards < 0:
            problems.append(f"number of shards {self.num_shards} must be >= 0 (0 = automatic)")
        if self.compression not in COMPRESSION_SUFFIXES:
            problems.append(f"compression {self.compression!r} is not one of {sorted(COMPRESSION_SUFFIXES)}")
        if not 0.0 <= self.max_error_fraction <= 1.0:
            problems.append(f"max error fraction {self.max_error_fraction} must be in [0, 1]")
        if self.min_image_side < 1 or self.max_pixels < 1 or self.max_file_bytes < 1:
            problems.append(
                "the minimum image side, the pixel limit and the file size limit must be positive"
            )
        if self.duplicate_ids not in DUPLICATE_ID_POLICIES:
            problems.append(f"duplicate ids {self.duplicate_ids!r} is not one of {DUPLICATE_ID_POLICIES}")
        if problems:
            raise ConfigError("; ".join(problems))

    def view(self) -> geometry.View:
        """How this (resolved) run draws its records: the facts a model trained on them is served with."""
        return geometry.View(
            image_size=self.image_size,
            channels=self.channels,
            center_crop=self.center_crop,
            crop_position=self.crop_position,
            crop_largest_rect=self.crop_largest_rect,
            crop_scale=self.crop_scale,
            rendering=self.rendering,
            angles_degrees=self.angles_degrees,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings for the manifest (tuples become lists). The dataset's settings sit
        beside the others, under the names their module's SETTINGS give them."""
        settings = dataclasses.asdict(self)
        settings.update(settings.pop("dataset_settings"))
        return json.loads(json.dumps(settings))

    def estimated_record_bytes(self) -> int:
        """Expected size of one record on disk of a resolved config, for choosing the number of shards."""
        raw = self.image_size * self.image_size * self.channels
        return math.ceil(raw * ENCODED_FRACTION[self.image_format]) + RECORD_OVERHEAD_BYTES

    def shards_for(self, num_images: float, parallelism: int = 1) -> int:
        """Shards for a split of about `num_images` source images: --num-shards, or ~192 MB each.

        One worker writes (and rotates) each shard, so when the split is big enough a run on
        `parallelism` workers gets at least one shard per worker.
        """
        if self.num_shards:
            return self.num_shards
        total = num_images * len(self.angles_degrees) * self.estimated_record_bytes()
        by_size = math.ceil(total / TARGET_SHARD_BYTES)
        by_workers = min(parallelism, math.ceil(total / MIN_SHARD_BYTES))
        return max(1, by_size, by_workers)
