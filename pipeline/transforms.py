"""The records pipeline's composite Beam transforms: thin shells over the pure core.

    ReadMnist | ReadStreetView | ReadImages  -> SourceImage, one per source image (+ errors)
      | DecodeImages                         -> SourceImage with HWC uint8 pixels (+ errors)
      | PrepareRotations                     -> PreparedImage per split: square crop, one downscale (+ errors)
      | WriteRotations                       -> all angles of every image in {split}-SSSSS-of-NNNNN.tfrecord
    errors | WriteErrors                     -> errors-00000-of-00001.jsonl (image id, stage, reason)
    written files | CountShards              -> one JSON list of every file's record count and bytes

Sources fan out (one MNIST file or Street View zip part holds thousands of images), so each ends with a
Reshuffle: decoding and rotating then spread over all workers. The rotations of an image are made in one
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
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

import schemas
from pipeline import codec, geometry, progress, rotations
from pipeline.config import PipelineConfig
from schemas import sharding, tfrecord_file
from schemas.splits import assign_split, in_subset

ERRORS = "errors"
# File name extensions read as images by --dataset images (case-insensitive); others are skipped, counted.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


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


def error_entry(dataset: str, split: str, image_id: str, stage: str, reason: str) -> str:
    """One errors-file line (JSON, sorted keys): which image failed, where and why."""
    return json.dumps(
        {"dataset": dataset, "split": split, "image_id": image_id, "stage": stage, "reason": reason},
        sort_keys=True,
    )


def train_split(image_id: str, config: PipelineConfig) -> str:
    return assign_split(image_id, config.validation_fraction)


class _CountingDoFn(beam.DoFn):
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


# --- MNIST ------------------------------------------------------------------------------------


def _digest_options(file_name: str, checksums: Mapping[str, str]) -> dict[str, str]:
    """fetch() keyword for a file's expected digest: an override (32 hex = md5, 64 = sha256) or MNIST's."""
    from pipeline import mnist

    digest = checksums.get(file_name) or mnist.MNIST_FILES[file_name]
    return {"sha256": digest} if len(digest) == 64 else {"md5": digest}


class _LoadMnistSplitFn(_CountingDoFn):
    """(split, images path, labels path) -> one SourceImage per digit; paths None = download them here."""

    def process(self, element: tuple[str, str | None, str | None]) -> Iterator[SourceImage]:
        from pipeline import download, mnist

        source_split, images_path, labels_path = element
        config = self.config
        if images_path is None or labels_path is None:
            mirrors = config.mnist_mirrors or mnist.MNIST_MIRRORS
            images_path, labels_path = (
                str(
                    download.fetch(
                        mnist.mnist_urls(name, mirrors),
                        posixpath.join(config.download_dir, name),
                        **_digest_options(name, config.mnist_checksums),
                    )
                )
                for name in mnist.SPLIT_FILES[source_split]
            )
        with schemas.paths.open_binary(images_path) as images_file:
            images_bytes = images_file.read()
        with schemas.paths.open_binary(labels_path) as labels_file:
            labels_bytes = labels_file.read()
        images, labels = mnist.load_split(images_bytes, labels_bytes)
        read = 0
        for index in range(len(images)):
            image_id = mnist.image_id(index)
            if config.subset_fraction < 1.0 and not in_subset(image_id, config.subset_fraction):
                continue
            split = train_split(image_id, config) if source_split == "train" else source_split
            read += 1
            yield SourceImage("mnist", split, image_id, int(labels[index]), pixels=images[index][:, :, None])
        self.counters.add(**{progress.IMAGES_READ: read})


class ReadMnist(beam.PTransform):
    """MNIST's IDX files -> SourceImage per digit: train -> train/validation by hash, t10k -> test.

    `offline_files` maps MNIST splits to local (images, labels) paths (pipeline.mnist.find_offline_files);
    None downloads the files inside the job, each split on its own worker, into config.download_dir.
    """

    def __init__(
        self,
        config: PipelineConfig,
        offline_files: Mapping[str, tuple[str, str]] | None,
        progress_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.offline_files = offline_files
        self.progress_dir = progress_dir

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        from pipeline import mnist

        if self.offline_files is not None:
            files = [(split, str(a), str(b)) for split, (a, b) in sorted(self.offline_files.items())]
        else:
            files = [(split, None, None) for split in mnist.SPLIT_FILES]
        images = (
            pbegin
            | "ListFiles" >> beam.Create(files)
            | "OneSplitPerWorker" >> beam.Reshuffle()
            | "LoadSplit" >> beam.ParDo(_LoadMnistSplitFn(self.config, self.progress_dir))
            | "SpreadImages" >> beam.Reshuffle()
        )
        # A bad MNIST file fails the job (its checksum is known); single digits cannot be bad.
        return {"images": images, ERRORS: pbegin | "NoErrors" >> beam.Create([])}


# --- Street View ------------------------------------------------------------------------------


class _ReadZipPartFn(_CountingDoFn):
    """(part name, local or gs:// path or None) -> SourceImage per kept view; None = download it here."""

    def process(self, element: tuple[str, str | None]) -> Iterator[Any]:
        from pipeline import street_view

        part_name, path = element
        config = self.config
        if path is None:
            mirrors = config.street_view_mirrors or (street_view.STREET_VIEW_BASE_URL,)
            path = str(street_view.download_part(part_name, config.download_dir, mirrors))
        counts = street_view.MemberCounts()
        read = 0
        for item in street_view.iter_zip_images(path, counts, yield_errors=True):
            corrupt = isinstance(item, street_view.CorruptMemberError)
            image_id = (item.image_id or item.member_name) if corrupt else item.image_id
            if config.subset_fraction < 1.0 and not in_subset(image_id, config.subset_fraction):
                continue
            read += 1
            split = train_split(image_id, config)
            if corrupt:
                yield beam.pvalue.TaggedOutput(
                    ERRORS, error_entry("street_view", split, image_id, "read", str(item))
                )
                self.counters.add(**{progress.IMAGE_ERRORS: 1})
            else:
                yield SourceImage("street_view", split, image_id, encoded=item.data)
        self.counters.add(
            **{
                progress.IMAGES_READ: read,
                progress.VIEWS_DROPPED: counts.dropped_view0
                + counts.dropped_view5
                + counts.dropped_other_view,
                progress.FILES_SKIPPED: counts.not_an_image,
            }
        )


class _ReadFileFn(_CountingDoFn):
    """fileio.ReadableFile -> SourceImage with the file's bytes; the id is its path below `base`.

    For Street View, the id is the file name without extension and views 0/5 are dropped (counted).
    """

    def __init__(self, config: PipelineConfig, base: str, progress_dir: str | None) -> None:
        super().__init__(config, progress_dir)
        self.base = base.rstrip("/")

    def process(self, readable: fileio.ReadableFile) -> Iterator[Any]:
        config = self.config
        path = readable.metadata.path
        image_id = relative_id(path, self.base)
        if config.dataset == "street_view":
            from pipeline import street_view

            if path.lower().endswith(".zip"):
                return  # a zip part beside loose files: ReadStreetView reads it as a part
            parsed = street_view.parse_member_name(posixpath.basename(image_id))
            if parsed is None:
                self.counters.add(**{progress.FILES_SKIPPED: 1})
                return
            if parsed[1] not in street_view.KEEP_VIEWS:
                self.counters.add(**{progress.VIEWS_DROPPED: 1})
                return
            image_id = posixpath.splitext(posixpath.basename(image_id))[0]
        elif not path.lower().endswith(IMAGE_EXTENSIONS):
            self.counters.add(**{progress.FILES_SKIPPED: 1})
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
    """Files matching `pattern` (local or gs://, `**` recurses) -> SourceImage; used by --dataset images
    and by --street-view-dir holding loose JPEGs. Returns {"images": ..., ERRORS: ...}."""

    def __init__(
        self, config: PipelineConfig, pattern: str, base: str, progress_dir: str | None = None
    ) -> None:
        super().__init__()
        self.config, self.pattern, self.base, self.progress_dir = config, pattern, base, progress_dir

    def expand(self, pbegin: beam.pvalue.PBegin):
        read = (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self.pattern)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadMatches" >> fileio.ReadMatches(skip_directories=True)
            | "ReadBytes"
            >> beam.ParDo(_ReadFileFn(self.config, self.base, self.progress_dir)).with_outputs(
                ERRORS, main="images"
            )
        )
        return {"images": read.images, ERRORS: read[ERRORS]}


class ReadImages(ReadFiles):
    """--dataset images: the user's own upright images, split train/validation by hash of the path."""


class ReadStreetView(beam.PTransform):
    """The GMCP zip parts -> SourceImage per side view (views 1-4), split by hash of the file name.

    `parts` are (part name, path) pairs with path None to download the part inside the job (each part
    on its own worker); `loose_pattern` reads unzipped `<placemark>_<view>.jpg` files instead.
    Returns {"images": ..., ERRORS: ...} (errors: corrupt zip members).
    """

    def __init__(
        self,
        config: PipelineConfig,
        parts: Sequence[tuple[str, str | None]] = (),
        loose_pattern: str | None = None,
        loose_base: str = "",
        progress_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.config, self.parts, self.progress_dir = config, list(parts), progress_dir
        self.loose_pattern, self.loose_base = loose_pattern, loose_base

    def expand(self, pbegin: beam.pvalue.PBegin):
        images, errors = [], []
        if self.parts:
            from_zips = (
                pbegin
                | "ListParts" >> beam.Create(self.parts)
                | "OnePartPerWorker" >> beam.Reshuffle()
                | "ReadPart"
                >> beam.ParDo(_ReadZipPartFn(self.config, self.progress_dir)).with_outputs(
                    ERRORS, main="images"
                )
            )
            images.append(from_zips.images | "SpreadImages" >> beam.Reshuffle())
            errors.append(from_zips[ERRORS])
        if self.loose_pattern:
            loose = pbegin | "ReadLooseFiles" >> ReadFiles(
                self.config, self.loose_pattern, self.loose_base, self.progress_dir
            )
            images.append(loose["images"])
            errors.append(loose[ERRORS])
        return {
            "images": images | "FlattenImages" >> beam.Flatten(pipeline=pbegin.pipeline),
            ERRORS: errors | "FlattenErrors" >> beam.Flatten(pipeline=pbegin.pipeline),
        }


# --- Decode and rotate --------------------------------------------------------------------------


class _DecodeFn(_CountingDoFn):
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
    from pipeline.street_view import crop_square

    square = crop_square(image.pixels, config.crop_position) if config.center_crop else image.pixels
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


class _PrepareFn(_CountingDoFn):
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
                f"{progress.RECORDS}_{value.split}": len(records),
                progress.RECORD_BYTES: size,
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
