"""What every dataset module shares: the element type, the plan, error lines, counting and file reading.

A dataset module (see pipeline/datasets/__init__.py) turns its source into `SourceImage` elements; the
shared transforms in pipeline/transforms.py take it from there. Nothing here knows about a particular
dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio

from pipeline import codec, inputs, progress
from pipeline.config import PipelineConfig
from pipeline.inputs import DirectoryEntry
from schemas import paths
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
    source: str = ""  # where it came from ("part1.zip:x/a_1.jpg", "2020/a.jpg"): named if ids collide


@dataclass
class SourcePlan:
    """What the launcher knows about a dataset's source before the job runs (graph-time facts only)."""

    source: beam.PTransform  # PBegin -> {"images": SourceImage, ERRORS: error lines}
    expected_images: dict[str, float]  # per output split, in manifest order: shard counts, progress bar
    notes: list[str] = field(default_factory=list)  # what was found, printed before the run
    # The source applies --duplicate-ids suffix itself, on names before any bytes are read
    # (image_ids.UniqueIdsFromNames), or its ids cannot collide: CheckIds groups no image bytes.
    renames_duplicate_ids: bool = False

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


def manifest_setting(config: Mapping[str, Any], name: str) -> Any:
    """A setting of a run's (manifest) config, or PipelineConfig's default when the config lacks it."""
    return config[name] if name in config else _CONFIG_DEFAULTS[name]


_CONFIG_DEFAULTS = {field.name: field.default for field in dataclasses.fields(PipelineConfig)}


def load_image_files(
    base: str | None,
    split: str,
    config: Mapping[str, Any],
    channels: int,
    identify: Callable[[str, str], tuple[str | None, str | None]],
) -> list[tuple[str, np.ndarray]]:
    """The loose image files below the local directory `base` that a run with this (manifest) `config`
    put in `split`: ids from the dataset's `identify(path, relative)` (as its ReadFiles read them), the
    stable subset, train/validation by the hash of the id; each read as an input file (regular, size
    cap), decoded (EXIF applied, `channels`) and cut to the square the run turned. FileNotFoundError
    when `base` is no directory."""
    from pipeline import geometry

    if not base or not os.path.isdir(base):
        raise FileNotFoundError(f"the source images are not at {base}")
    subset_fraction = manifest_setting(config, "subset_fraction")
    validation_fraction = manifest_setting(config, "validation_fraction")
    found = []
    for entry in inputs.walk_directory(base):
        image_id = None if entry.problem else identify(entry.path, entry.relative)[0]
        if image_id is None or (subset_fraction < 1.0 and not in_subset(image_id, subset_fraction)):
            continue
        if assign_split(image_id, validation_fraction) != split:
            continue
        try:  # a regular file under the run's cap (a FIFO would block): else the run refused it too
            data = inputs.read_input_file(entry.path, manifest_setting(config, "max_file_bytes"))
        except inputs.InputFileError:
            continue  # an errors-file line of the run, no records: not a source of the split
        image = codec.decode_source_image(data, channels, manifest_setting(config, "max_pixels"))
        if manifest_setting(config, "center_crop"):
            image = geometry.crop_square(image, manifest_setting(config, "crop_position"))
        found.append((image_id, np.ascontiguousarray(image)))
    return found


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


@dataclass(frozen=True)
class FileSource:
    """The files a dataset reads, as the plan found them.

    Local files are listed at plan time (`list_local_files`): every entry, whatever it is, becomes an
    element, so FIFOs, links and unreadable names are read (refused) one by one and counted, never left
    out by a listing that skips them. Remote (gs://) files are matched inside the job by `pattern`,
    which holds user paths only through `schemas.paths.literal_pattern`.
    """

    base: str
    entries: tuple[DirectoryEntry, ...] = ()
    pattern: str | None = None

    def listed(self) -> list[str]:
        """Paths below the base of the files to read (remote: matched now, for the plan's counts)."""
        if self.pattern is not None:
            return [relative_id(item.path, self.base) for item in match(self.pattern)]
        return [entry.relative for entry in self.entries if entry.problem is None]

    @property
    def problems(self) -> list[DirectoryEntry]:
        """Local entries that stand for something that could not be listed (reported, counted)."""
        return [entry for entry in self.entries if entry.problem]


def list_files(given: str) -> FileSource:
    """The files a path names, local (`list_local_files`) or gs:// (`remote_files`)."""
    return remote_files(given) if paths.is_remote(given) else list_local_files(given)


def list_local_files(given: str) -> FileSource:
    """The local directory (walked, symlinked directories once), file, or glob (when no such path
    exists: Beam's pattern syntax, `**` recursing) that --input or --street-view-dir names."""
    from apache_beam.io.filesystem import FileSystem

    kind = inputs.literal_or_glob(given)
    if kind == "directory":
        return FileSource(given, tuple(inputs.walk_directory(given)))
    if kind == "file":
        return FileSource(os.path.dirname(given) or ".", (DirectoryEntry(given, os.path.basename(given)),))
    base = paths.pattern_base(given)
    if not os.path.isdir(base):
        return FileSource(base)
    matches = re.compile(FileSystem.translate_pattern(given)).match
    entries = []
    for entry in inputs.walk_directory(base):
        path = entry.path if base != "." else entry.relative
        if matches(path):
            entries.append(entry)
    return FileSource(base, tuple(entries))


def remote_files(given: str) -> FileSource:
    """A gs:// directory prefix (every object below it), object, or glob (when neither exists)."""
    prefix = given.rstrip("/")
    if given.endswith("/") or match(paths.literal_pattern(prefix) + "/*"):
        return FileSource(prefix, pattern=paths.literal_pattern(prefix) + "/**")
    if paths.exists(given):
        return FileSource(prefix.rsplit("/", 1)[0], pattern=paths.literal_pattern(given))
    return FileSource(paths.pattern_base(given), pattern=given)


def read_bounded_file(path: str, max_bytes: int) -> bytes:
    """A whole local (regular, pipeline.inputs) or remote file of at most `max_bytes`."""
    if not paths.is_remote(path):
        return inputs.read_input_file(paths.local_path(path), max_bytes)
    with paths.open_binary(path) as handle:
        return inputs.read_bounded(handle, max_bytes, paths.size(path))


_NOT_UTF8 = (
    "file name is not valid UTF-8 (shown with \\x escapes), so it cannot be an image id: rename the "
    "file (e.g. `convmv -f latin1 -t utf-8 --notest NAME`)"
)


@dataclass(frozen=True)
class RenamedFile:
    """A file to read under the id --duplicate-ids suffix gave it (image_ids.UniqueIdsFromNames)."""

    file: Any  # a DirectoryEntry or a fileio.ReadableFile
    image_id: str


def _file_names(element: Any, base: str) -> tuple[str, str, str | None]:
    """(path, path below `base`, problem) of a local DirectoryEntry or a remote fileio.ReadableFile."""
    if isinstance(element, DirectoryEntry):
        return element.path, element.relative, element.problem
    return element.metadata.path, relative_id(element.metadata.path, base.rstrip("/")), None


def file_name(element: Any, base: str, identify: Identify) -> tuple[str | None, str, Any]:
    """(image id or None, source, element): a file's names for image_ids.UniqueIdsFromNames, the id
    and source `_ReadFileFn` gives it (None: skipped, not an image)."""
    path, relative, problem = _file_names(element, base)
    if inputs.is_skipped_link(problem):
        return None, relative, element
    image_id = relative if problem else identify(path, relative)[0]
    return (None if image_id is None else inputs.printable_name(image_id)), relative, element


class _ReadFileFn(CountingDoFn):
    """A local DirectoryEntry or a remote fileio.ReadableFile -> SourceImage with the file's bytes, or
    one errors-file line; `identify` names it (or skips it, counted)."""

    def __init__(
        self, config: PipelineConfig, base: str, identify: Identify, progress_dir: str | None
    ) -> None:
        super().__init__(config, progress_dir)
        self.base = base.rstrip("/")
        self.identify = identify

    def process(self, element: DirectoryEntry | fileio.ReadableFile | RenamedFile) -> Iterator[Any]:
        config = self.config
        renamed = element.image_id if isinstance(element, RenamedFile) else None
        element = element.file if isinstance(element, RenamedFile) else element
        path, relative, problem = _file_names(element, self.base)
        if inputs.is_skipped_link(problem):  # read under its first path, or a link leaving the input
            self.counters.add(**{progress.FILES_SKIPPED: 1})
            return
        image_id, skipped = (relative, None) if problem else self.identify(path, relative)
        if image_id is None:
            if skipped:
                self.counters.add(**{skipped: 1})
            return
        reason = problem or (None if inputs.is_utf8_name(image_id) else _NOT_UTF8)
        image_id = inputs.printable_name(image_id)
        if config.subset_fraction < 1.0 and not in_subset(image_id, config.subset_fraction):
            return  # by the id the file has, as zip members are chosen (before --duplicate-ids suffix)
        image_id = renamed or image_id
        split = train_split(image_id, config)
        self.counters.add(**{progress.IMAGES_READ: 1})
        stage = "read"
        if reason is None:
            try:
                if isinstance(element, DirectoryEntry):
                    data = inputs.read_input_file(path, config.max_file_bytes, config.max_pixels)
                else:
                    with element.open() as handle:
                        data = inputs.read_bounded(
                            handle, config.max_file_bytes, element.metadata.size_in_bytes
                        )
            except inputs.InputFileError as error:
                reason = str(error)
            except codec.BadImageError as error:  # from the header: not an image, or too many pixels
                reason, stage = str(error), "decode"
            except Exception as error:  # any filesystem's read failure becomes an errors-file line
                reason = f"unreadable file ({type(error).__name__}: {error})"
            else:
                yield SourceImage(config.dataset, split, image_id, encoded=data, source=relative)
                return
        self.counters.add(**{progress.IMAGE_ERRORS: 1})
        yield beam.pvalue.TaggedOutput(ERRORS, error_entry(config.dataset, split, image_id, stage, reason))


def relative_id(path: str, base: str) -> str:
    """`path` below the directory `base`, with '/' separators (the image id of a user's file)."""
    path = path.replace("\\", "/")
    base = base.replace("\\", "/").rstrip("/")
    if base and path.startswith(base + "/"):
        return path[len(base) + 1 :]
    return posixpath.basename(path)


class ReadFiles(beam.PTransform):
    """The files of a FileSource -> SourceImage, split by a hash of the id that `identify` gives each
    file. Returns {"images": ..., ERRORS: ...}."""

    def __init__(
        self,
        config: PipelineConfig,
        files: FileSource,
        identify: Identify,
        progress_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.config, self.files, self.progress_dir = config, files, progress_dir
        self.identify = identify

    def expand(self, pbegin: beam.pvalue.PBegin):
        listed = self.list_files(pbegin)
        if self.config.duplicate_ids == "suffix":  # on names, before any bytes are read
            from pipeline.image_ids import UniqueIdsFromNames

            listed = (
                listed
                | "FileNames" >> beam.Map(file_name, self.files.base, self.identify)
                | "UniqueIds" >> UniqueIdsFromNames(lambda file, image_id: RenamedFile(file, image_id))
            )
        return self.read_files(listed)

    def list_files(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        """The files to read: local DirectoryEntry elements, or remote fileio.ReadableFile (no bytes yet)."""
        if self.files.pattern is None:
            return pbegin | "ListFiles" >> beam.Create(list(self.files.entries))
        return (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self.files.pattern)
            | "ReadMatches" >> fileio.ReadMatches(skip_directories=True)
        )

    def read_files(self, listed: beam.PCollection) -> dict[str, beam.PCollection]:
        """Files (list_files, maybe RenamedFile) -> {"images": SourceImage, ERRORS: error lines}."""
        read = (
            listed
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadBytes"
            >> beam.ParDo(
                _ReadFileFn(self.config, self.files.base, self.identify, self.progress_dir)
            ).with_outputs(ERRORS, main="images")
        )
        return {"images": read.images, ERRORS: read[ERRORS]}
