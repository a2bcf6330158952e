"""Street View (UCF GMCP): 10 zip parts of `<placemark>_<view>.jpg` files, downloaded inside the job or
read from an offline directory of parts and/or loose files.

    rotnet-pipeline --dataset street_view --output-dir gs://BUCKET/records/street_view --crop right
    rotnet-pipeline --dataset street_view --street-view-dir ../shared/data/street-view-samples --output-dir d

Everything about Street View lives here: the parts and where they come from (`download_part`), the
pure zip reader (`iter_zip_images`, `parse_member_name`), the plan (`plan`) and the Beam read
(`ReadStreetView`).

* Views: 0 is the side view with markers drawn on it, 1-4 are the side views, 5 points upward. RotNet
  trains on views 1-4 only (`KEEP_VIEWS`); the dropped members are counted, never lost silently.
* Image ids are the member's base name without extension ("008922_1"): unique in the dataset and the
  same on every machine, so train/validation is split by a stable hash of them (RotNet split by
  directory listing order, which differs between machines).
* Memory: a part's central directory is listed first and only member names cross the shuffle; each
  member is then read on its own (`_ReadZipMemberFn`, in READ_CHUNK_BYTES chunks, never past
  MAX_MEMBER_BYTES), so a worker holds one member at a time whatever the number of members.
* Integrity: the dataset publishes no checksums. A downloaded part is accepted when its zip central
  directory reads (a truncated file fails there), and every member's CRC-32 is checked by zipfile as
  the member is read; a corrupt member raises `CorruptMemberError` naming it.
* The Street View overlay icon sits in the top-left corner: `--crop right` (geometry.crop_square)
  keeps the right-most square and drops it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import zipfile
import zlib
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import apache_beam as beam
import numpy as np

from pipeline import inputs, progress
from pipeline.config import JobError, PipelineConfig
from pipeline.datasets import Setting
from pipeline.datasets.common import (
    ERRORS,
    CountingDoFn,
    FileSource,
    ReadFiles,
    SourceImage,
    SourcePlan,
    error_entry,
    list_files,
    load_image_files,
    match,
    train_and_validation,
    train_split,
)
from schemas import paths
from schemas.splits import in_subset

DEFAULTS = {"image_size": 224, "image_format": "jpeg", "channels": 3, "crop_largest_rect": True}

logger = logging.getLogger(__name__)

# Where RotNet's data/street_view.py downloads the parts from (d4nst/RotNet).
STREET_VIEW_BASE_URL = "http://www.cs.ucf.edu/~aroshan/index_files/Dataset_PitOrlManh/zipped%20images/"
NUM_PARTS = 10


class StreetViewPart(NamedTuple):
    name: str  # "part1.zip" .. "part10.zip"
    url: str


# No checksums are published for these files (see the module docstring for what is verified instead).
STREET_VIEW_PARTS: tuple[StreetViewPart, ...] = tuple(
    StreetViewPart(f"part{number}.zip", f"{STREET_VIEW_BASE_URL}part{number}.zip")
    for number in range(1, NUM_PARTS + 1)
)

# Side views 1-4; 0 (with markers) and 5 (upward) are dropped, as RotNet does.
KEEP_VIEWS: tuple[int, ...] = (1, 2, 3, 4)

# A member claiming more bytes than this is refused before it is read (the samples are ~200-400 KB).
MAX_MEMBER_BYTES = 64 << 20

_MEMBER_NAME = re.compile(r"^(?P<placemark>.+)_(?P<view>\d+)\.jpe?g$", re.IGNORECASE)


class CorruptMemberError(ValueError):
    """A zip member that cannot be read (bad CRC, bad compressed data, too large, encrypted).

    `str(error)` names the member and the reason; `image_id` is set when the name parsed as an image.
    """

    def __init__(self, member_name: str, reason: str, image_id: str | None = None) -> None:
        super().__init__(f"zip member {member_name!r}: {reason}")
        self.member_name = member_name
        self.reason = reason
        self.image_id = image_id


@dataclass(frozen=True)
class ZipImage:
    """One kept image: id "008922_1", view 1-4, the encoded JPEG bytes as stored in the zip, and the
    member's name (two members of one id, in different folders, are told apart by it)."""

    image_id: str
    view: int
    data: bytes
    member: str = ""


@dataclass
class MemberCounts:
    """What `iter_zip_images` saw in an archive; kept + every other field = members read."""

    kept: int = 0
    dropped_view0: int = 0
    dropped_view5: int = 0
    dropped_other_view: int = 0  # a view number outside 0-5 (none in the published dataset)
    not_an_image: int = 0  # directories, __MACOSX entries, anything not <placemark>_<view>.jpg
    corrupt: int = 0
    corrupt_members: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            self.kept
            + self.dropped_view0
            + self.dropped_view5
            + self.dropped_other_view
            + self.not_an_image
            + self.corrupt
        )


def part_urls(part_name: str, base_urls: Sequence[str] = (STREET_VIEW_BASE_URL,)) -> list[str]:
    """The url of a part ("part3.zip") under each base url, in order."""
    if part_name not in {part.name for part in STREET_VIEW_PARTS}:
        raise ValueError(
            f"{part_name!r} is not a Street View part; expected part1.zip .. part{NUM_PARTS}.zip"
        )
    return [base.rstrip("/") + "/" + part_name for base in base_urls]


def parse_member_name(name: str) -> tuple[str, int] | None:
    """(placemark, view) for a member named `[any/dir/]<placemark>_<view>.jpg`; None for anything else.

    Directories, macOS resource forks (`__MACOSX/`, `._name`) and non-JPEG names give None.
    """
    if name.endswith(("/", "\\")):
        return None
    base_name = re.split(r"[/\\]", name)[-1]
    if base_name.startswith("._") or name.startswith("__MACOSX"):
        return None
    match = _MEMBER_NAME.match(base_name)
    if match is None:
        return None
    return match.group("placemark"), int(match.group("view"))


def _member_image_id(name: str) -> str:
    return os.path.splitext(re.split(r"[/\\]", name)[-1])[0]


def check_zip(path_or_fileobj: str | os.PathLike | IO[bytes]) -> int:
    """Number of members in the archive; ValueError naming it when its central directory is unreadable.

    This is the integrity check of a downloaded part (the dataset publishes no checksums): a truncated
    or non-zip file fails here, before any worker starts on it.
    """
    try:
        with zipfile.ZipFile(path_or_fileobj) as archive:
            return len(archive.infolist())
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{_describe(path_or_fileobj)} is not a readable zip archive ({error})") from None


def _describe(path_or_fileobj) -> str:
    if isinstance(path_or_fileobj, str | os.PathLike):
        return os.fspath(path_or_fileobj)
    return getattr(path_or_fileobj, "name", None) or "zip stream"


# Members are read in chunks of this size into one buffer that stops at MAX_MEMBER_BYTES.
READ_CHUNK_BYTES = 1 << 20


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, image_id: str | None) -> bytes:
    """One member's bytes, read in READ_CHUNK_BYTES chunks and never more than MAX_MEMBER_BYTES (a
    member whose header claims less but that decompresses to more stops at the cap)."""
    if info.file_size > MAX_MEMBER_BYTES:
        raise CorruptMemberError(
            info.filename, f"claims {info.file_size:,} bytes, over the {MAX_MEMBER_BYTES:,} limit", image_id
        )
    data = bytearray()
    try:
        with archive.open(info) as member:  # zipfile checks the CRC-32 when the member's end is read
            while chunk := member.read(min(READ_CHUNK_BYTES, MAX_MEMBER_BYTES + 1 - len(data))):
                data += chunk
                if len(data) > MAX_MEMBER_BYTES:
                    raise CorruptMemberError(
                        info.filename, f"holds over the {MAX_MEMBER_BYTES:,} byte limit", image_id
                    )
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, OSError) as error:
        raise CorruptMemberError(info.filename, f"{type(error).__name__}: {error}", image_id) from None
    return bytes(data)


def _open_archive(stack: contextlib.ExitStack, path_or_fileobj) -> zipfile.ZipFile:
    source = path_or_fileobj
    if isinstance(source, str) and "://" in source:
        from schemas.paths import open_binary

        source = stack.enter_context(open_binary(source))
    try:
        return stack.enter_context(zipfile.ZipFile(source))
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{_describe(path_or_fileobj)} is not a readable zip archive ({error})") from None


def _kept_members(
    archive: zipfile.ZipFile, counts: MemberCounts
) -> Iterator[tuple[zipfile.ZipInfo, str, int]]:
    """(member, image id, view) of every side view 1-4, in the archive's order; the rest counted."""
    for info in archive.infolist():
        parsed = None if info.is_dir() else parse_member_name(info.filename)
        if parsed is None:
            counts.not_an_image += 1
            continue
        _, view = parsed
        if view not in KEEP_VIEWS:
            if view == 0:
                counts.dropped_view0 += 1
            elif view == 5:
                counts.dropped_view5 += 1
            else:
                counts.dropped_other_view += 1
            continue
        yield info, _member_image_id(info.filename), view


def iter_zip_members(
    path_or_fileobj: str | os.PathLike | IO[bytes], counts: MemberCounts | None = None
) -> list[tuple[str, str, int]]:
    """(member name, image id, view) of the kept side views of one zip part, from its central
    directory alone (no member is read); the other members are tallied in `counts`."""
    return [member[:3] for member in _listed_members(path_or_fileobj, counts)]


def _listed_members(
    path_or_fileobj: str | os.PathLike | IO[bytes], counts: MemberCounts | None = None
) -> list[tuple[str, str, int, int, int]]:
    """(member name, image id, view, position in the central directory, occurrence) of the kept side
    views: a zip may hold several members of one name (occurrence 1, 2, ...), each its own image, read
    by its position (zipfile's getinfo(name) gives the last of them only)."""
    counts = MemberCounts() if counts is None else counts
    seen: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        archive = _open_archive(stack, path_or_fileobj)
        positions = {id(info): index for index, info in enumerate(archive.infolist())}
        listed = []
        for info, image_id, view in _kept_members(archive, counts):
            seen[info.filename] = seen.get(info.filename, 0) + 1
            listed.append((info.filename, image_id, view, positions[id(info)], seen[info.filename]))
        return listed


def member_source(part_name: str, member: str, occurrence: int = 1) -> str:
    """Where a zip member came from, as records and messages name it: "part1.zip:x/a_1.jpg", and
    "part1.zip:x/a_1.jpg#2" for the second member of that name in the part."""
    return f"{part_name}:{member}" + (f"#{occurrence}" if occurrence > 1 else "")


def iter_zip_images(
    path_or_fileobj: str | os.PathLike | IO[bytes],
    counts: MemberCounts | None = None,
    *,
    yield_errors: bool = False,
) -> Generator[ZipImage | CorruptMemberError, None, MemberCounts]:
    """Stream the kept images (views 1-4) out of one zip part, one member in memory at a time.

    Members come in the archive's own order. Dropped and skipped members are tallied in `counts` (pass
    your own MemberCounts to read them; the generator also returns it). A corrupt member raises
    CorruptMemberError naming it; with `yield_errors=True` the error is yielded instead and the
    iteration goes on, so a caller can record it (the pipeline's errors file) and keep the rest.
    A `gs://` path is opened through Beam's FileSystems.
    """
    counts = MemberCounts() if counts is None else counts
    with contextlib.ExitStack() as stack:
        archive = _open_archive(stack, path_or_fileobj)
        for info, image_id, view in _kept_members(archive, counts):
            try:
                data = _read_member(archive, info, image_id)
            except CorruptMemberError as error:
                counts.corrupt += 1
                counts.corrupt_members.append(info.filename)
                if not yield_errors:
                    raise
                yield error
                continue
            counts.kept += 1
            yield ZipImage(image_id=image_id, view=view, data=data, member=info.filename)
    return counts


def download_part(
    part_name: str,
    directory: str | os.PathLike,
    base_urls: Sequence[str] = (STREET_VIEW_BASE_URL,),
    **fetch_options,
) -> Path:
    """Fetch one zip part into `directory` (cached, resumable) and check that it is a readable zip.

    A cached or downloaded file that is not a readable zip is deleted and fetched once more; a second
    failure raises pipeline.download.DownloadError. `fetch_options` go to pipeline.download.fetch.
    """
    from pipeline.download import DownloadError, fetch

    urls = part_urls(part_name, base_urls)
    destination = Path(directory) / part_name
    for attempt in range(2):
        path = fetch(urls, destination, **fetch_options)
        try:
            check_zip(path)
            return path
        except ValueError as error:
            path.unlink(missing_ok=True)
            if attempt == 1:
                raise DownloadError(
                    f"{part_name} downloaded from {urls} twice but is not a readable zip: {error}"
                ) from None
            logger.warning("%s; deleted it and downloading again", error)
    raise AssertionError("unreachable")


# --- The plan and the Beam read -------------------------------------------------------------------

# GMCP holds 10,343 placemarks x 6 views; views 1-4 are kept. Only used to choose the number of shards.
KEPT_IMAGES = 10_343 * 4

SETTINGS = (
    Setting(
        "street_view_dir",
        "--street-view-dir",
        "Offline copy of Street View: a directory (local or gs://) with the zip parts and/or loose "
        "<placemark>_<view>.jpg files. Default: download the 10 parts inside the job, one per worker.",
        metavar="DIR",
        location="directory",
    ),
    Setting(
        "street_view_mirrors",
        "--street-view-mirror",
        "Base URL holding part1.zip .. part10.zip (repeatable); replaces the UCF site.",
        default=(),
        metavar="URL",
        multiple=True,
    ),
)


def plan(config: PipelineConfig, progress_dir: str | None) -> SourcePlan:
    """The parts to download inside the job, or what an offline directory holds (zip parts and loose
    `<placemark>_<view>.jpg` files), with the expected number of kept views for the shard counts."""
    notes = []
    if config.setting("street_view_dir") is None:
        parts = [(part.name, None) for part in STREET_VIEW_PARTS]
        mirrors = config.setting("street_view_mirrors") or (STREET_VIEW_BASE_URL,)
        notes.append(
            f"Street View: downloading {len(parts)} zip parts inside the job, one per worker, into "
            f"{config.download_dir} (from {', '.join(mirrors)})"
        )
        source = ReadStreetView(config, parts, progress_dir=progress_dir)
        expected = train_and_validation(config, KEPT_IMAGES * config.subset_fraction)
        return SourcePlan(source, expected, notes, renames_duplicate_ids=True)
    directory = config.setting("street_view_dir").rstrip("/")
    if not paths.is_remote(directory) and not os.path.isdir(directory):
        raise JobError(f"--street-view-dir {directory} is not a directory")
    files = list_files(directory)  # the literal directory: every file below it, links followed once
    if paths.is_remote(directory):
        zips = sorted(item.path for item in match(paths.literal_pattern(directory) + "/*.zip"))
    else:
        zips = [paths.join(directory, name) for name in files.listed() if _is_part(name)]
        for path in zips:
            try:  # zipfile would block on a FIFO named part1.zip, or read a device forever
                inputs.check_regular_file(path)
            except inputs.InputFileError as error:
                raise JobError(f"--street-view-dir: {path} is not read: {error}") from None
    loose = [
        name
        for name in files.listed()
        if not name.endswith(".zip") and parse_member_name(posixpath.basename(name))
    ]
    if not zips and not loose:
        raise JobError(
            f"--street-view-dir {directory} holds no zip parts (*.zip) and no <placemark>_<view>.jpg files"
        )
    kept = _kept_views(loose)
    for path in zips:
        if paths.is_remote(path):  # not worth reading remote central directories for a shard estimate
            kept += KEPT_IMAGES / NUM_PARTS
        else:
            try:
                with zipfile.ZipFile(path) as archive:
                    kept += _kept_views(archive.namelist())
            except (zipfile.BadZipFile, OSError):  # the job's read of the part says what is wrong
                kept += KEPT_IMAGES / NUM_PARTS
    notes.append(
        f"Street View offline copy {directory}: {len(zips)} zip part(s), {len(loose)} loose image file(s)"
    )
    source = ReadStreetView(
        config, [(os.path.basename(path), path) for path in zips], files if loose else None, progress_dir
    )
    expected = train_and_validation(config, kept * config.subset_fraction)
    return SourcePlan(source, expected, notes, renames_duplicate_ids=True)


def _kept_views(names: Sequence[str]) -> int:
    """How many of these file names are Street View side views (1-4)."""
    parsed = (parse_member_name(os.path.basename(name)) for name in names)
    return sum(1 for item in parsed if item and item[1] in KEEP_VIEWS)


def _is_part(relative: str) -> bool:
    """A zip part is a `.zip` directly in --street-view-dir (deeper ones are not parts)."""
    return "/" not in relative and relative.lower().endswith(".zip")


def identify_loose_file(path: str, relative: str) -> tuple[str | None, str | None]:
    """A loose file's image id (its stem), or why it is skipped: zip parts are read as parts, views
    0/5 are dropped by design and other names are not Street View images (both counted)."""
    if _is_part(relative):
        return None, None
    parsed = parse_member_name(posixpath.basename(relative))
    if parsed is None:
        return None, progress.FILES_SKIPPED
    if parsed[1] not in KEEP_VIEWS:
        return None, progress.VIEWS_DROPPED
    return posixpath.splitext(posixpath.basename(relative))[0], None


def _part_path(config: PipelineConfig, part_name: str, path: str | None) -> str:
    """The part's path on this worker: downloaded here (cached) when the job downloads the parts."""
    if path is None or (not paths.is_remote(path) and not os.path.exists(path)):
        mirrors = config.setting("street_view_mirrors") or (STREET_VIEW_BASE_URL,)
        return str(download_part(part_name, config.download_dir, mirrors))
    return path


class _ListZipPartFn(CountingDoFn):
    """(part name, local or gs:// path or None) -> (part name, path, member name, image id, position,
    source) per kept view (None = download the part here). Only names cross the shuffle that follows:
    each member's bytes are read after it (_ReadZipMemberFn), one member at a time per worker, so the
    memory a part takes does not grow with its number of members."""

    def process(self, element: tuple[str, str | None]) -> Iterator[Any]:
        part_name, given = element
        config = self.config
        path = _part_path(config, part_name, given)
        counts = MemberCounts()
        read = 0
        for member, image_id, _view, position, occurrence in _listed_members(path, counts):
            if config.subset_fraction < 1.0 and not in_subset(image_id, config.subset_fraction):
                continue
            read += 1
            source = member_source(part_name, member, occurrence)
            yield part_name, given if given is not None else path, member, image_id, position, source
        self.counters.add(
            **{
                progress.IMAGES_READ: read,
                progress.VIEWS_DROPPED: counts.dropped_view0
                + counts.dropped_view5
                + counts.dropped_other_view,
                progress.FILES_SKIPPED: counts.not_an_image,
            }
        )


class _ReadZipMemberFn(CountingDoFn):
    """(part name, path, member name, image id[, position, source]) -> SourceImage, or one errors-file
    line (bad CRC, bad compressed data, over MAX_MEMBER_BYTES). The member is the one at `position` in
    the central directory (a part may hold several of one name), else the one of that name. The last
    part opened stays open for the next member."""

    def setup(self) -> None:
        super().setup()
        self._open: tuple[str, contextlib.ExitStack, zipfile.ZipFile] | None = None

    def _archive(self, part_name: str, path: str) -> zipfile.ZipFile:
        if self._open is None or self._open[0] != path:
            self._close()
            stack = contextlib.ExitStack()
            try:
                archive = _open_archive(stack, _part_path(self.config, part_name, path))
            except BaseException:
                stack.close()
                raise
            self._open = (path, stack, archive)
        return self._open[2]

    def _close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def process(self, element: tuple) -> Iterator[Any]:
        part_name, path, member, image_id = element[:4]
        position, source = (*element[4:], None, None)[:2]
        split = train_split(image_id, self.config)
        try:
            archive = self._archive(part_name, path)
            info = archive.getinfo(member) if position is None else archive.infolist()[position]
            if info.filename != member:
                raise ValueError(
                    f"the part changed since it was listed (member {position} is {info.filename!r})"
                )
            data = _read_member(archive, info, image_id)
        except (CorruptMemberError, ValueError, KeyError, IndexError) as error:
            reason = (
                str(error) if isinstance(error, CorruptMemberError) else f"zip member {member!r}: {error}"
            )
            yield beam.pvalue.TaggedOutput(
                ERRORS, error_entry("street_view", split, image_id, "read", reason)
            )
            self.counters.add(**{progress.IMAGE_ERRORS: 1})
            return
        source = source or member_source(part_name, member)
        yield SourceImage("street_view", split, image_id, encoded=data, source=source)

    def finish_bundle(self) -> None:
        self._close()
        super().finish_bundle()

    def teardown(self) -> None:
        self._close()
        super().teardown()


class ReadStreetView(beam.PTransform):
    """The GMCP zip parts -> SourceImage per side view (views 1-4), split by hash of the file name.

    `parts` are (part name, path) pairs with path None to download the part inside the job (each part
    on its own worker); `loose_files` also reads unzipped `<placemark>_<view>.jpg` files beside them.
    Returns {"images": ..., ERRORS: ...} (errors: corrupt zip members, unreadable files).
    """

    def __init__(
        self,
        config: PipelineConfig,
        parts: Sequence[tuple[str, str | None]] = (),
        loose_files: FileSource | None = None,
        progress_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.config, self.parts, self.progress_dir = config, list(parts), progress_dir
        self.loose_files = loose_files

    def expand(self, pbegin: beam.pvalue.PBegin):
        images, errors = [], []
        members = loose = None
        if self.parts:
            members = (
                pbegin
                | "ListParts" >> beam.Create(self.parts)
                | "OnePartPerWorker" >> beam.Reshuffle()
                | "ListMembers" >> beam.ParDo(_ListZipPartFn(self.config, self.progress_dir))
            )
        reader = None
        if self.loose_files is not None:
            reader = ReadFiles(self.config, self.loose_files, identify_loose_file, self.progress_dir)
            loose = reader.list_files(pbegin)
        if self.config.duplicate_ids == "suffix":
            members, loose = _unique_ids_from_names(members, loose, self.loose_files, pbegin.pipeline)
        if members is not None:
            from_zips = (
                members
                | "SpreadMembers" >> beam.Reshuffle()  # names only: the bytes are read after it
                | "ReadMembers"
                >> beam.ParDo(_ReadZipMemberFn(self.config, self.progress_dir)).with_outputs(
                    ERRORS, main="images"
                )
            )
            images.append(from_zips.images)
            errors.append(from_zips[ERRORS])
        if loose is not None and reader is not None:
            from_files = loose | "ReadLooseFiles" >> _ReadListedFiles(reader)
            images.append(from_files["images"])
            errors.append(from_files[ERRORS])
        return {
            "images": images | "FlattenImages" >> beam.Flatten(pipeline=pbegin.pipeline),
            ERRORS: errors | "FlattenErrors" >> beam.Flatten(pipeline=pbegin.pipeline),
        }


class _ReadListedFiles(beam.PTransform):
    """Listed loose files (maybe renamed) -> {"images", ERRORS}: `reader`'s read step."""

    def __init__(self, reader: ReadFiles) -> None:
        super().__init__()
        self.reader = reader

    def expand(self, listed: beam.PCollection):
        return self.reader.read_files(listed)


def _unique_ids_from_names(members, loose, loose_files: FileSource | None, pipeline):
    """--duplicate-ids suffix across zip members and loose files, on their names (ids, sources and
    where to read them; never the images' bytes): (members, loose files) with shared ids suffixed."""
    from pipeline.datasets.common import RenamedFile, file_name
    from pipeline.image_ids import UniqueIdsFromNames

    names = []
    if members is not None:
        names.append(
            members | "MemberNames" >> beam.Map(lambda member: (member[3], member[5], ("zip", member)))
        )
    if loose is not None and loose_files is not None:
        names.append(
            loose
            | "FileNames" >> beam.Map(file_name, loose_files.base, identify_loose_file)
            | "TagFiles" >> beam.MapTuple(lambda image_id, source, file: (image_id, source, ("file", file)))
        )

    def rebuild(payload: tuple[str, Any], image_id: str) -> tuple[str, Any]:
        kind, item = payload
        return (
            (kind, (*item[:3], image_id, *item[4:])) if kind == "zip" else (kind, RenamedFile(item, image_id))
        )

    renamed = (
        names
        | "AllNames" >> beam.Flatten(pipeline=pipeline)
        | "UniqueIds" >> UniqueIdsFromNames(rebuild)
        | "ByKind" >> beam.Partition(lambda payload, _: 0 if payload[0] == "zip" else 1, 2)
    )
    unwrap = lambda payload: payload[1]  # noqa: E731
    return (
        (renamed[0] | "RenamedMembers" >> beam.Map(unwrap)) if members is not None else None,
        (renamed[1] | "RenamedFiles" >> beam.Map(unwrap)) if loose is not None else None,
    )


def source_images(
    config: Mapping[str, Any], split: str, source_dir: str | None = None, channels: int = DEFAULTS["channels"]
) -> list[tuple[str, np.ndarray]]:
    """The loose Street View files of `split` below `source_dir`, else the run's --street-view-dir, as
    the run selected them (views 1-4, ids: file stems; common.load_image_files). Zip parts are not read."""
    return load_image_files(
        source_dir or config.get("street_view_dir"), split, config, channels, identify_loose_file
    )
