"""The UCF GMCP Google Street View dataset as published: 10 zip parts of `<placemark>_<view>.jpg` files.

No Beam or TensorFlow here: the pipeline downloads each part on its own worker (`download_part`), streams
the images out of it with `iter_zip_images` and crops them square with `crop_square`.

* Views: 0 is the side view with markers drawn on it, 1-4 are the side views, 5 points upward. RotNet
  trains on views 1-4 only (`KEEP_VIEWS`); the dropped members are counted, never lost silently.
* Image ids are the member's base name without extension ("008922_1"): unique in the dataset and the
  same on every machine, so the pipeline splits train/validation by a stable hash of them (RotNet split
  by directory listing order, which differs between machines).
* Integrity: the dataset publishes no checksums. A downloaded part is accepted when its zip central
  directory reads (a truncated file fails there), and every member's CRC-32 is checked by zipfile as
  the member is read; a corrupt member raises `CorruptMemberError` naming it.
* The Street View overlay icon sits in the top-left corner: `crop_square(..., "center")` (default) cuts
  128 px off each side of a 1281x1025 image, `"right"` keeps the right-most square and drops the icon.

Run the tests: `.venv/bin/python -m pytest tests/test_street_view_source.py -q`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import zipfile
import zlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, NamedTuple

import numpy as np

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
DROPPED_VIEWS: tuple[int, ...] = (0, 5)

# A member claiming more bytes than this is refused before it is read (the samples are ~200-400 KB).
MAX_MEMBER_BYTES = 64 << 20

_MEMBER_NAME = re.compile(r"^(?P<placemark>.+)_(?P<view>\d+)\.jpe?g$", re.IGNORECASE)

CropPosition = Literal["center", "right"]


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
    """One kept image: id "008922_1", view 1-4 and the encoded JPEG bytes as stored in the zip."""

    image_id: str
    view: int
    data: bytes


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


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, image_id: str | None) -> bytes:
    if info.file_size > MAX_MEMBER_BYTES:
        raise CorruptMemberError(
            info.filename, f"claims {info.file_size:,} bytes, over the {MAX_MEMBER_BYTES:,} limit", image_id
        )
    try:
        with archive.open(info) as member:  # zipfile checks the CRC-32 when the member's end is read
            return member.read()
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, OSError) as error:
        raise CorruptMemberError(info.filename, f"{type(error).__name__}: {error}", image_id) from None


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
        source = path_or_fileobj
        if isinstance(source, str) and "://" in source:
            from schemas.paths import open_binary

            source = stack.enter_context(open_binary(source))
        try:
            archive = stack.enter_context(zipfile.ZipFile(source))
        except (zipfile.BadZipFile, EOFError, OSError) as error:
            raise ValueError(
                f"{_describe(path_or_fileobj)} is not a readable zip archive ({error})"
            ) from None
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
            image_id = _member_image_id(info.filename)
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
            yield ZipImage(image_id=image_id, view=view, data=data)
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


def crop_square(image: np.ndarray, position: CropPosition = "center") -> np.ndarray:
    """The largest square of an HWC image: centered, or right-aligned (`"right"`) to drop the overlay
    icon in the top-left corner of Street View images. Vertically centered in both cases. Returns a view.
    """
    height, width = image.shape[:2]
    side = min(height, width)
    top = (height - side) // 2
    if position == "center":
        left = (width - side) // 2
    elif position == "right":
        left = width - side
    else:
        raise ValueError(f"crop position {position!r} is not 'center' or 'right'")
    return image[top : top + side, left : left + side]
