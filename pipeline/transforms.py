"""The records pipeline's shared Beam transforms: thin shells over the pure core.

    datasets.NAME.plan(...).source           -> SourceImage, one per source image (+ errors)
      | DecodeImages                         -> SourceImage with HWC uint8 pixels (+ errors)
      | PrepareRotations                     -> PreparedImage per split: square crop, one downscale (+ errors)
      | WriteRotations                       -> all angles of every image in {split}-SSSSS-of-NNNNN.tfrecord
    errors | WriteErrors                     -> errors-00000-of-00001.jsonl (image id, stage, reason)
    written files | CountShards              -> one JSON list of every file's record count and bytes

The dataset modules (pipeline/datasets/) read their sources; sources fan out (one MNIST file or Street
View zip part holds thousands of images), so each ends with a Reshuffle: decoding and rotating then
spread over all workers. The rotations of an image are made in one
call (Beam costs ~45 us per element, a 28 px rotation + PNG ~40 us), inside the TFRecord sink: the
GroupByKey in front of a fixed-shard-count write then moves one small prepared image instead of its 360
records, which keeps the local runner's memory and Dataflow's shuffle ~300x smaller. Records of a few
hundred images are mixed before they are written, so consecutive records in a shard come from different
images. Shards are written by Beam's FileBasedSink: temporary files, renamed into place when all are done.

Nothing is lost silently: every source image is counted as read and ends either as records or as one
errors-file line; Street View views 0/5 and non-image files are counted separately.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import random
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

import schemas
from pipeline import codec, geometry, progress, rotations
from pipeline.config import PipelineConfig
from pipeline.datasets.common import ERRORS, CountingDoFn, SourceImage, error_entry
from schemas import sharding, tfrecord_file

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


@dataclass(frozen=True)
class PreparedImage:
    """A decoded image, cropped square and downscaled once (geometry.Source): ready for every angle."""

    dataset: str
    split: str
    image_id: str
    label: int
    source: geometry.Source


def prepare(image: SourceImage, config: PipelineConfig) -> PreparedImage:
    """Crop the square (center, or right for Street View's icon) and downscale once for all angles."""
    square = geometry.crop_square(image.pixels, config.crop_position) if config.center_crop else image.pixels
    source = geometry.prepare_source(
        square,
        config.image_size,
        config.angles_degrees,
        center_crop_square=False,
        crop_largest_rect=config.crop_largest_rect,
    )
    return PreparedImage(image.dataset, image.split, image.image_id, image.label, source)


def rotation_records(image: PreparedImage, config: PipelineConfig) -> list[bytes]:
    """Every configured rotation of one prepared image as a serialized record, in angle order.

    Pure (no Beam): `pipeline.rotations.encode_rotations`, the code fixtures and benchmarks use too.
    """
    template = schemas.Record(
        image_encoded=b"",
        image_format=config.image_format,
        height=config.image_size,
        width=config.image_size,
        channels=config.channels,
        angle_degrees=0,
        dataset=image.dataset,
        split=image.split,
        image_id=image.image_id,
        label=image.label,
    )
    return rotations.encode_rotations(
        image.source, template, config.angles_degrees, config.image_size, config.jpeg_quality
    )


class _PrepareFn(CountingDoFn):
    def setup(self) -> None:
        super().setup()
        import cv2

        # Beam already runs one DoFn per core: OpenCV's own thread pool would oversubscribe them.
        cv2.setNumThreads(1)

    def process(self, image: SourceImage) -> Iterator[Any]:
        try:
            prepared = prepare(image, self.config)
        except ValueError as error:
            self.counters.add(**{progress.IMAGE_ERRORS: 1})
            entry = error_entry(image.dataset, image.split, image.image_id, "prepare", str(error))
            yield beam.pvalue.TaggedOutput(ERRORS, entry)
            return
        yield beam.pvalue.TaggedOutput(image.split, prepared)


class PrepareRotations(beam.PTransform):
    """Decoded SourceImage -> PreparedImage, one PCollection per name in `splits`, plus ERRORS."""

    def __init__(
        self, config: PipelineConfig, splits: Sequence[str], progress_dir: str | None = None
    ) -> None:
        super().__init__()
        self.config, self.splits, self.progress_dir = config, list(splits), progress_dir

    def expand(self, images: beam.PCollection):
        return images | "Prepare" >> beam.ParDo(_PrepareFn(self.config, self.progress_dir)).with_outputs(
            ERRORS, *self.splits, main="unused"
        )


# Records of this many bytes are mixed before they are written, so that consecutive records of a shard
# come from different images (~260 MNIST images or ~7 Street View images at 224 px).
MIX_BYTES = 64 * 2**20


class RotationRecordsSink(FileBasedSink):
    """A TFRecord file sink whose elements are PreparedImages, each written as all its rotations.

    Expanding in the sink means the shuffle in front of it moves one small prepared image instead of
    360 records (MNIST: 0.8 KB instead of 245 KB), and Beam's per-element cost is paid per image. The
    file handling is Beam's FileBasedSink: shards go to a temporary directory and are renamed to their
    final `{split}-SSSSS-of-NNNNN.tfrecord` names only after every shard is complete.
    """

    def __init__(
        self,
        file_path_prefix: str,
        file_name_suffix: str,
        num_shards: int,
        shard_name_template: str,
        compression: str,
        config: PipelineConfig,
        progress_dir: str | None = None,
        mix_bytes: int = MIX_BYTES,
    ) -> None:
        super().__init__(
            file_path_prefix,
            coder=None,
            file_name_suffix=file_name_suffix,
            num_shards=num_shards,
            shard_name_template=shard_name_template,
            compression_type=CompressionTypes.GZIP
            if compression == "gzip"
            else CompressionTypes.UNCOMPRESSED,
        )
        self.config, self.progress_dir, self.mix_bytes = config, progress_dir, mix_bytes
        self._pending: dict[int, tuple[list[bytes], list[int]]] = {}
        self._counters: progress.StageCounters | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pending"], state["_counters"] = {}, None
        return state

    def open(self, temp_path: str) -> Any:
        handle = super().open(temp_path)
        self._pending[id(handle)] = ([], [0])
        return handle

    def write_record(self, file_handle: Any, value: PreparedImage) -> None:
        if self._counters is None:
            self._counters = progress.StageCounters(self.progress_dir)
        records = rotation_records(value, self.config)
        size = sum(len(record) for record in records)
        pending, pending_bytes = self._pending[id(file_handle)]
        pending.extend(records)
        pending_bytes[0] += size
        self._counters.add(
            **{
                progress.IMAGES_EXPANDED: 1,
                progress.RECORDS: len(records),
            }
        )
        if pending_bytes[0] >= self.mix_bytes:
            self._flush(file_handle)

    def _flush(self, file_handle: Any) -> None:
        pending, pending_bytes = self._pending[id(file_handle)]
        # Seeded by content, so the same images in the same order give the same file.
        random.Random(zlib.crc32(pending[0]) if pending else 0).shuffle(pending)
        for record in pending:
            file_handle.write(tfrecord_file.frame_record(record))
        pending.clear()
        pending_bytes[0] = 0

    def close(self, file_handle: Any) -> None:
        self._flush(file_handle)
        del self._pending[id(file_handle)]
        if self._counters is not None:
            self._counters.flush()
        super().close(file_handle)


class WriteRotations(beam.PTransform):
    """{split: PreparedImage} -> every rotation as records in TFRecord shards named by schemas.sharding.

    A fixed shard count per split: Beam keys the images round-robin over the shards and groups them
    (the fusion break after the source's fan-out), then each shard's images are expanded and written.
    Returns {split: final shard paths}.
    """

    def __init__(
        self,
        config: PipelineConfig,
        num_shards: Mapping[str, int],
        progress_dir: str | None = None,
        mix_bytes: int = MIX_BYTES,
    ) -> None:
        super().__init__()
        self.config, self.num_shards, self.progress_dir = config, dict(num_shards), progress_dir
        self.mix_bytes = mix_bytes

    def expand(self, images_by_split: Mapping[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        written = {}
        for split, images in images_by_split.items():
            naming = sharding.beam_shard_naming(self.config.output_dir, split, self.config.compression)
            sink = RotationRecordsSink(
                naming.file_path_prefix,
                naming.file_name_suffix,
                self.num_shards[split],
                naming.shard_name_template,
                self.config.compression,
                self.config,
                self.progress_dir,
                self.mix_bytes,
            )
            written[split] = images | f"Write_{split}" >> beam.io.Write(sink)
        return written


class WriteErrors(beam.PTransform):
    """Error lines -> one errors-00000-of-00001.jsonl (empty when nothing failed). Returns its path."""

    def __init__(self, output_dir: str) -> None:
        super().__init__()
        self.output_dir = output_dir

    def expand(self, errors: beam.PCollection) -> beam.PCollection:
        naming = sharding.beam_errors_naming(self.output_dir)
        return errors | "WriteErrors" >> beam.io.WriteToText(
            naming.file_path_prefix,
            file_name_suffix=naming.file_name_suffix,
            num_shards=1,
            shard_name_template=naming.shard_name_template,
        )


def file_stats(path: str, kind: str) -> dict[str, Any]:
    """Records (shards) or lines (errors files) and bytes of one written file, read back from storage."""
    if kind == ERRORS:
        with schemas.paths.open_binary(path) as handle:
            count = sum(1 for line in handle.read().splitlines() if line.strip())
    else:
        count = tfrecord_file.count_records(path)
    [match] = FileSystems.match([path])
    size = match.metadata_list[0].size_in_bytes
    return {
        "kind": kind,
        "name": posixpath.basename(path.replace("\\", "/")),
        "num_records": count,
        "num_bytes": size,
    }


def _write_stats(stats: list[dict[str, Any]], stats_path: str) -> str:
    with FileSystems.create(stats_path) as handle:
        handle.write(json.dumps(sorted(stats, key=lambda item: item["name"])).encode("utf-8"))
    return stats_path


class CountShards(beam.PTransform):
    """{kind: final paths} -> every written file's record (or line) count and size, as one JSON file.

    The workers read the files back after Beam renamed them into place, in parallel (a launcher reading
    hundreds of GB from gs:// would not), and the launcher turns the list into the manifest.
    """

    def __init__(self, stats_path: str) -> None:
        super().__init__()
        self.stats_path = stats_path

    def expand(self, paths_by_kind: Mapping[str, beam.PCollection]) -> beam.PCollection:
        stats = [
            paths | f"Count_{kind}" >> beam.Map(file_stats, kind)
            for kind, paths in sorted(paths_by_kind.items())
        ]
        return (
            stats
            | "FlattenStats" >> beam.Flatten()
            | "OneList" >> beam.combiners.ToList()
            | "WriteStats" >> beam.Map(_write_stats, self.stats_path)
        )
