"""What every dataset module shares: the element type, the plan, error lines, counting and file reading.

A dataset module (see pipeline/datasets/__init__.py) turns its source into `SourceImage` elements; the
shared transforms in pipeline/transforms.py take it from there. Nothing here knows about a particular
dataset.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio

from pipeline import progress
from pipeline.config import PipelineConfig
from schemas.splits import assign_split, in_subset

ERRORS = "errors"  # the tag of every transform's error output: one JSON line per failed source image


@dataclass(frozen=True)
class SourceImage:
    """One source image on its way through the pipeline.

    Exactly one of `encoded` (the file's bytes, photos) and `pixels` (HWC uint8, MNIST or decoded) is
    set. `split` is final: assigned from the image id by a stable hash, never by order.
    """

    dataset: str
    split: str
    image_id: str
    label: int = -1
    encoded: bytes | None = None
    pixels: np.ndarray | None = None


@dataclass
class SourcePlan:
    """What the launcher knows about a dataset's source before the job runs (graph-time facts only)."""

    source: beam.PTransform  # PBegin -> {"images": SourceImage, ERRORS: error lines}
    expected_images: dict[str, float]  # per output split, in manifest order: shard counts, progress bar
    notes: list[str] = field(default_factory=list)  # what was found, printed before the run

    @property
    def splits(self) -> list[str]:
        return list(self.expected_images)


def error_entry(dataset: str, split: str, image_id: str, stage: str, reason: str) -> str:
    """One errors-file line (JSON, sorted keys): which image failed, where and why."""
    return json.dumps(
        {"dataset": dataset, "split": split, "image_id": image_id, "stage": stage, "reason": reason},
        sort_keys=True,
    )


def train_split(image_id: str, config: PipelineConfig) -> str:
    """train or validation for an image of a dataset's train set, by a stable hash of its id."""
    return assign_split(image_id, config.validation_fraction)


def train_and_validation(config: PipelineConfig, num_images: float) -> dict[str, float]:
    """Expected images per output split when a source's images are split train/validation by hash."""
    fraction = config.validation_fraction
    expected = {"train": num_images * (1 - fraction)}
    if fraction > 0:
        expected["validation"] = num_images * fraction
    return expected


def match(pattern: str) -> list[Any]:
    """Beam FileSystems metadata of the files matching `pattern` (local or remote); [] for none."""
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception:  # Beam raises BeamIOError for a pattern that matches nothing on some filesystems
        return []


class CountingDoFn(beam.DoFn):
    """A DoFn with StageCounters (Beam metrics + local progress files) set up per instance."""

    def __init__(self, config: PipelineConfig, progress_dir: str | None) -> None:
        self.config = config
        self.progress_dir = progress_dir

    def setup(self) -> None:
        self.counters = progress.StageCounters(self.progress_dir)

    def finish_bundle(self) -> None:
        self.counters.flush()

    def teardown(self) -> None:
        self.counters.flush()


# (path, id below the base directory) -> (image id, None) to read the file, or (None, counter name) to
# skip it and count it under that name.
Identify = Callable[[str, str], tuple[str | None, str | None]]


class _ReadFileFn(CountingDoFn):
    """fileio.ReadableFile -> SourceImage with the file's bytes; `identify` names it (or skips it)."""

    def __init__(
        self, config: PipelineConfig, base: str, identify: Identify, progress_dir: str | None
    ) -> None:
        super().__init__(config, progress_dir)
        self.base = base.rstrip("/")
        self.identify = identify

    def process(self, readable: fileio.ReadableFile) -> Iterator[Any]:
        config = self.config
        path = readable.metadata.path
        image_id, skipped = self.identify(path, relative_id(path, self.base))
        if image_id is None:
            if skipped:
                self.counters.add(**{skipped: 1})
            return
        if config.subset_fraction < 1.0 and not in_subset(image_id, config.subset_fraction):
            return
        split = train_split(image_id, config)
        self.counters.add(**{progress.IMAGES_READ: 1})
        try:
            data = readable.read()
        except Exception as error:  # any filesystem's read failure becomes an errors-file line
            self.counters.add(**{progress.IMAGE_ERRORS: 1})
            reason = f"unreadable file ({type(error).__name__}: {error})"
            yield beam.pvalue.TaggedOutput(
                ERRORS, error_entry(config.dataset, split, image_id, "read", reason)
            )
            return
        yield SourceImage(config.dataset, split, image_id, encoded=data)


def relative_id(path: str, base: str) -> str:
    """`path` below the directory `base`, with '/' separators (the image id of a user's file)."""
    path = path.replace("\\", "/")
    base = base.replace("\\", "/").rstrip("/")
    if base and path.startswith(base + "/"):
        return path[len(base) + 1 :]
    return posixpath.basename(path)


class ReadFiles(beam.PTransform):
    """Files matching `pattern` (local or gs://, `**` recurses) -> SourceImage, split by a hash of the id
    that `identify` gives each file. Returns {"images": ..., ERRORS: ...}."""

    def __init__(
        self,
        config: PipelineConfig,
        pattern: str,
        base: str,
        identify: Identify,
        progress_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.config, self.pattern, self.base, self.progress_dir = config, pattern, base, progress_dir
        self.identify = identify

    def expand(self, pbegin: beam.pvalue.PBegin):
        read = (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self.pattern)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadMatches" >> fileio.ReadMatches(skip_directories=True)
            | "ReadBytes"
            >> beam.ParDo(_ReadFileFn(self.config, self.base, self.identify, self.progress_dir)).with_outputs(
                ERRORS, main="images"
            )
        )
        return {"images": read.images, ERRORS: read[ERRORS]}
