"""The records pipeline's shared Beam transforms: thin shells over the pure core.

    datasets.NAME.plan(...).source    -> SourceImage, one per source image (+ errors)
      | DecodeImages                  -> SourceImage with HWC uint8 pixels (+ errors)
      | PrepareRotations              -> per split: the view's square, or its render level(s) (+ errors)
      | WriteShards                   -> {split}-SSSSS-of-NNNNN.tfrecord in the run's temporary directory
    errors | WriteErrors              -> errors-00000-of-00001.jsonl there (image id, stage, reason), sorted
    every file's stats | WriteStats   -> one JSON list: records, bytes and SHA-256 of every file

The dataset modules (pipeline/datasets/) read their sources; sources fan out (one MNIST file or Street
View zip part holds thousands of images), so each ends with a Reshuffle: decoding and rotating then
spread over all workers. The 360x fan-out happens inside the shard writer, behind a GroupByKey on the
shard index: the shuffle moves one small element per image instead of its 360 records (Beam costs ~45
us per element, a 28 px rotation + PNG ~40 us; the local runner's memory and Dataflow's shuffle stay
~300x smaller), and each shard is rendered in its fixed, fully mixed order (pipeline.rotations). Small
images go as their square, prepared by the writer: a 28 px digit's 4x supersampled level pickles to
~27 KB against its 0.8 KB square, and the local runner's process spent ~1 ms of CPU per MNIST image
moving the levels (issue 22); a photo goes prepared (its 224 px level, 1.6 MB, is half its square).
The launcher renames the files into place only after checking them (pipeline/job.py).

Nothing is lost silently: every source image is counted as read and ends either as records or as one
errors-file line; Street View views 0/5 and non-image files are counted separately.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import codec, geometry, progress, rotations
from pipeline.config import PipelineConfig
from pipeline.datasets.common import ERRORS, CountingDoFn, SourceImage, error_entry
from pipeline.rotations import PreparedImage
from schemas import paths, sharding, tfrecord_file

# --- Decode and rotate --------------------------------------------------------------------------


class _DecodeFn(CountingDoFn):
    def process(self, image: SourceImage) -> Iterator[Any]:
        config = self.config
        try:
            if image.pixels is not None:
                pixels = image.pixels
            else:
                pixels = codec.decode_source_image(image.encoded, config.channels, config.max_pixels)
            height, width = pixels.shape[:2]
            if min(height, width) < config.min_image_side:
                raise codec.BadImageError(
                    f"image is {width}x{height} pixels, smaller than the minimum side of "
                    f"{config.min_image_side} px"
                )
        except codec.BadImageError as error:
            reason = str(error)
        except Exception as error:  # an undiagnosed decoder failure still becomes an errors-file line
            reason = f"cannot decode ({type(error).__name__}: {error})"
        else:
            yield dataclasses.replace(image, encoded=None, pixels=pixels)
            return
        self.counters.add(**{progress.IMAGE_ERRORS: 1})
        yield beam.pvalue.TaggedOutput(
            ERRORS, error_entry(image.dataset, image.split, image.image_id, "decode", reason)
        )


class DecodeImages(beam.PTransform):
    """SourceImage with file bytes -> with HWC uint8 pixels (EXIF applied, RGB or grey by dataset).

    Undecodable, too-small, bomb-sized or otherwise bad files go to the ERRORS output with the reason.
    """

    def __init__(self, config: PipelineConfig, progress_dir: str | None = None) -> None:
        super().__init__()
        self.config, self.progress_dir = config, progress_dir

    def expand(self, images: beam.PCollection):
        return images | "Decode" >> beam.ParDo(_DecodeFn(self.config, self.progress_dir)).with_outputs(
            ERRORS, main="images"
        )


def prepare(image: SourceImage, config: PipelineConfig) -> PreparedImage:
    """Crop the square (center, or right for Street View's icon) and prepare it once for all angles
    with the configured rendering: `geometry.prepare_view`, the preparation every serving path shares."""
    source = geometry.prepare_view(image.pixels, config.view())
    return PreparedImage(image.dataset, image.split, image.image_id, image.label, source)


def rotation_records(image: PreparedImage, config: PipelineConfig) -> list[bytes]:
    """Every configured rotation of one prepared image as a serialized record, in angle order (pure)."""
    return rotations.encode_rotations(
        image,
        config.angles_degrees,
        config.image_size,
        config.image_format,
        config.jpeg_quality,
        config.resampling,
    )


class _PrepareFn(CountingDoFn):
    def setup(self) -> None:
        super().setup()
        import cv2

        # Beam already runs one DoFn per core: OpenCV's own thread pool would oversubscribe them.
        cv2.setNumThreads(1)

    def process(self, image: SourceImage) -> Iterator[Any]:
        view = self.config.view()
        try:
            square = dataclasses.replace(image, pixels=geometry.view_source(image.pixels, view))
            # Whichever is smaller goes through the shuffle: a 28 px digit's 0.8 KB square (its 4x
            # level: ~23 KB), a photo's prepared level (1.6 MB; its square: ~3 MB).
            small = square.pixels.nbytes < geometry.min_prepared_bytes(view)
            element = square if small else prepare(square, self.config)
        except ValueError as error:
            self.counters.add(**{progress.IMAGE_ERRORS: 1})
            entry = error_entry(image.dataset, image.split, image.image_id, "prepare", str(error))
            yield beam.pvalue.TaggedOutput(ERRORS, entry)
            return
        yield beam.pvalue.TaggedOutput(image.split, element)


class PrepareRotations(beam.PTransform):
    """Decoded SourceImage -> its view's square (`geometry.view_source`: channels, crop) when that is
    smaller than any preparation of it, else the PreparedImage (`prepare`): one PCollection per name in
    `splits`, plus ERRORS. The shard writer prepares the squares (a square gives the same levels as the
    image it was cut from)."""

    def __init__(
        self, config: PipelineConfig, splits: Sequence[str], progress_dir: str | None = None
    ) -> None:
        super().__init__()
        self.config, self.splits, self.progress_dir = config, list(splits), progress_dir

    def expand(self, images: beam.PCollection):
        return images | "Prepare" >> beam.ParDo(_PrepareFn(self.config, self.progress_dir)).with_outputs(
            ERRORS, *self.splits, main="unused"
        )


class _WriteShardFn(CountingDoFn):
    """(shard index, images or None) -> the shard written to the run's temporary directory, and its
    stats: the images prepared (PrepareRotations' squares; PreparedImage as they are), every record of
    the shard's images rendered on the fly in the shard's order
    (rotations.shard_windows), with its record count, bytes and SHA-256 as written."""

    def __init__(
        self, config: PipelineConfig, split: str, num_shards: int, temp_dir: str, progress_dir: str | None
    ) -> None:
        super().__init__(config, progress_dir)
        self.split, self.num_shards, self.temp_dir = split, num_shards, temp_dir

    def setup(self) -> None:
        super().setup()
        import cv2

        cv2.setNumThreads(1)  # Beam already runs one DoFn per core

    def process(
        self, element: tuple[int, Iterable[SourceImage | PreparedImage | None]]
    ) -> Iterator[dict[str, Any]]:
        index, grouped = element
        config = self.config
        images = [
            prepare(image, config) if isinstance(image, SourceImage) else image
            for image in grouped
            if image is not None
        ]
        name = sharding.shard_name(self.split, index, self.num_shards, config.compression)
        windows = rotations.shard_windows(
            images,
            config.angles_degrees,
            config.image_size,
            config.image_format,
            config.jpeg_quality,
            config.resampling,
        )
        paths.make_dirs(self.temp_dir)
        num_angles, expanded = len(config.angles_degrees), 0  # images' worth of records counted so far
        counted = 0  # records counted so far
        with tfrecord_file.ShardWriter(paths.join(self.temp_dir, name)) as writer:
            for window in windows:
                writer.write_many(window)
                if writer.num_records - counted >= PROGRESS_RECORDS:
                    now = min(len(images), writer.num_records // num_angles)
                    self.counters.add(
                        **{
                            progress.RECORDS: writer.num_records - counted,
                            progress.IMAGES_EXPANDED: now - expanded,
                        }
                    )
                    counted, expanded = writer.num_records, now
        self.counters.add(
            **{
                progress.RECORDS: writer.num_records - counted,
                progress.IMAGES_EXPANDED: len(images) - expanded,
            }
        )
        yield shard_stats("shard", name, writer)


# Records between progress-counter updates, at most (a counter update per record would cost more than a
# warp); one update per render window (rotations.shard_windows) when the windows are larger.
PROGRESS_RECORDS = 1024


def shard_stats(
    kind: str, name: str, writer: tfrecord_file.ShardWriter | None, **counts: int
) -> dict[str, Any]:
    """What the launcher learns about one written file: its kind, name, records, bytes and SHA-256."""
    return {
        "kind": kind,
        "name": name,
        "num_records": counts.get("num_records", writer.num_records if writer else 0),
        "num_bytes": counts.get("num_bytes", writer.num_bytes if writer else 0),
        "sha256": writer.sha256 if writer else "",
    }


class WriteShards(beam.PTransform):
    """{split: SourceImage squares (PrepareRotations) or PreparedImage} -> every rotation as records in
    `num_shards[split]` shards per split, in the run's temporary directory (the launcher renames them
    into place once every file is verified).

    Each image goes to shard `sharding.shard_index(dataset, image id, num_shards)`; the GroupByKey is the
    fusion break after the source's fan-out and moves one small element per source image (MNIST: a
    ~0.8 KB square instead of its 360 records, 245 KB), and each shard's squares are prepared and its
    records rendered by the worker that writes it. Shards no image hashed into are written too (empty),
    so a split always has all its
    shards. Returns the stats of the written shards (shard_stats).
    """

    def __init__(
        self,
        config: PipelineConfig,
        num_shards: Mapping[str, int],
        temp_dir: str,
        progress_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.config, self.num_shards, self.temp_dir, self.progress_dir = (
            config,
            dict(num_shards),
            temp_dir,
            progress_dir,
        )

    def expand(self, images_by_split: Mapping[str, beam.PCollection]) -> beam.PCollection:
        stats = []
        for split, images in images_by_split.items():
            num_shards = self.num_shards[split]
            keyed = images | f"KeyByShard_{split}" >> beam.Map(
                lambda image, n=num_shards: (sharding.shard_index(image.dataset, image.image_id, n), image)
            )
            every_shard = images.pipeline | f"ShardIndices_{split}" >> beam.Create(
                [(index, None) for index in range(num_shards)]
            )
            stats.append(
                (keyed, every_shard)
                | f"AllShards_{split}" >> beam.Flatten()
                | f"GroupByShard_{split}" >> beam.GroupByKey()
                | f"Write_{split}"
                >> beam.ParDo(_WriteShardFn(self.config, split, num_shards, self.temp_dir, self.progress_dir))
            )
        return stats | "FlattenShardStats" >> beam.Flatten(pipeline=self.pipeline)


def _write_errors(lines: list[str], temp_dir: str) -> dict[str, Any]:
    name = sharding.errors_name()
    data = b"".join(line.encode("utf-8") + b"\n" for line in sorted(lines))
    with FileSystems.create(paths.join(temp_dir, name)) as handle:
        handle.write(data)
    return {
        "kind": ERRORS,
        "name": name,
        "num_records": len(lines),
        "num_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


class WriteErrors(beam.PTransform):
    """Error lines -> one errors file in the temporary directory, lines sorted (empty when nothing
    failed: the file says so). Returns its stats."""

    def __init__(self, temp_dir: str) -> None:
        super().__init__()
        self.temp_dir = temp_dir

    def expand(self, errors: beam.PCollection) -> beam.PCollection:
        return (
            errors
            | "OneList" >> beam.combiners.ToList()
            | "WriteSorted" >> beam.Map(_write_errors, self.temp_dir)
        )


def _write_stats(stats: list[dict[str, Any]], stats_path: str) -> str:
    with FileSystems.create(stats_path) as handle:
        handle.write(json.dumps(sorted(stats, key=lambda item: item["name"])).encode("utf-8"))
    return stats_path


class WriteStats(beam.PTransform):
    """Every written file's stats -> one JSON list at `stats_path`, written once all files are done."""

    def __init__(self, stats_path: str) -> None:
        super().__init__()
        self.stats_path = stats_path

    def expand(self, stats: beam.PCollection) -> beam.PCollection:
        return (
            stats
            | "OneList" >> beam.combiners.ToList()
            | "WriteStats" >> beam.Map(_write_stats, self.stats_path)
        )
