"""Reading a user's input files without trusting them: bounded, regular files only, every name printable.

Pure functions over local paths and open streams (no Beam, no TensorFlow), shared by the pipeline's file
readers and `rotnet-correct`, so both refuse the same files with the same reasons:

* `read_input_file(path, max_bytes, max_pixels)`: `lstat` first; only a regular file (or a symlink to
  one) is opened, with O_NONBLOCK so a FIFO swapped in after the check cannot block, and checked again
  on the open descriptor. FIFOs, devices, sockets and directories, symlink loops and dangling links are
  `InputFileError`s with the reason. The size cap is checked before reading and enforced while reading
  (a file may grow); an image header claiming more than `max_pixels` is refused before the rest of the
  file is read.
* `read_bounded(stream, max_bytes, size)`: the same cap for streams that have no `lstat` (gs://).
* `walk_directory(root)`: every non-directory entry below `root`, in a stable order, following each
  symlinked directory once (cycle-safe) and reporting what cannot be listed, so nothing is left out.
* `literal_or_glob(path)`: how a user's path is read: literally when anything has that name, as a glob
  only when nothing does (the one rule of rotnet-correct's INPUTS and the pipeline's --input).
* `printable_name(path)`: a name that is not UTF-8 (bytes the OS gave us, held as surrogate escapes)
  with its undecodable bytes written as `\\xNN`, so it can go into an errors file or a report.

Why a module of its own and not `pipeline/codec.py`: codec is about bytes and pixels and never touches
a filesystem; these checks are about files and paths, and rotnet-correct needs them without codec's
record formats.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from pipeline import codec
from schemas import paths

# Larger files are refused before they are read (a full-size photo is 2-20 MB; a TIFF scan up to ~200).
DEFAULT_MAX_FILE_BYTES = 256 * 2**20
_CHUNK_BYTES = 1 << 20


class InputFileError(codec.BadImageError):
    """A path that is not read as an input; `str(error)` is the reason for the errors file or report.

    A BadImageError, so that every reader already turning BadImageError into an error line keeps doing so.
    """


def literal_or_glob(given: str) -> str:
    """How a user's local path is read: "directory" (an existing directory, walked), "file" (anything else
    that exists, a dangling link included: that entry, glob characters and all) or "glob" (nothing has that
    name: a pattern). Paths from users are literal: a directory `photos[2020]` is read, not `photos2`."""
    if os.path.isdir(given):
        return "directory"
    return "file" if os.path.lexists(given) else "glob"


def printable_name(path: str | bytes) -> str:
    """`path` as valid UTF-8 text: bytes of a non-UTF-8 name (surrogate escapes in Python) become `\\xNN`."""
    text = os.fsdecode(path) if isinstance(path, bytes) else path
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from undecodable bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8_name(path: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (it cannot be an image id or a JSON string)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _not_regular(mode: int, via_link: bool) -> InputFileError:
    what = f"a symlink to {_kind(mode)}" if via_link else _kind(mode)
    return InputFileError(f"{what}, not a regular file: only regular files are read")


def _os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def check_regular_file(path: str) -> os.stat_result:
    """The status of the regular file `path` names (through a symlink if it is one), from lstat first.

    Raises InputFileError saying why anything else is not read: vanished, a FIFO/device/socket/directory,
    a symlink loop, a dangling symlink, a symlink to a non-regular file, no permission.
    """
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        raise InputFileError("the file disappeared before it was read") from None
    except OSError as error:
        raise InputFileError(f"cannot look at the file ({_os_reason(error)})") from None
    if not stat.S_ISLNK(status.st_mode):
        if not stat.S_ISREG(status.st_mode):
            raise _not_regular(status.st_mode, via_link=False)
        return status
    try:
        target = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InputFileError(
                "symlink loop (the link leads back to itself): fix or remove the link"
            ) from None
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            try:
                destination = printable_name(os.readlink(path))
            except OSError:
                destination = "?"
            raise InputFileError(
                f"dangling symlink (its target {destination!r} does not exist): fix or remove the link"
            ) from None
        raise InputFileError(f"unreadable symlink ({_os_reason(error)})") from None
    if not stat.S_ISREG(target.st_mode):
        raise _not_regular(target.st_mode, via_link=True)
    return target


def _over_limit(size: int, max_bytes: int) -> InputFileError:
    return InputFileError(
        f"file is {size:,} bytes, over the limit of {max_bytes:,} (raise --max-file-bytes if it is genuine)"
    )


def read_bounded(stream: IO[bytes], max_bytes: int, size: int | None = None) -> bytes:
    """Everything in `stream`, refusing more than `max_bytes`: checked on `size` (the file's size as
    listed) before reading, and while reading, since a file can grow after it was listed."""
    if size is not None and size > max_bytes:
        raise _over_limit(size, max_bytes)
    chunks, total = [], 0
    while True:
        chunk = stream.read(min(_CHUNK_BYTES, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise InputFileError(
                f"file grew past the limit of {max_bytes:,} bytes while it was read "
                "(raise --max-file-bytes if it is genuine)"
            )


def read_input_file(
    path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES, max_pixels: int | None = None
) -> bytes:
    """The bytes of the regular file `path`, or InputFileError / codec.BadImageError saying why not.

    With `max_pixels`, the image header is read first and a file that is no image, or claims more
    pixels, is refused with decode_source_image's reason before its pixels are read.
    """
    listed = check_regular_file(path)
    if listed.st_size > max_bytes:
        raise _over_limit(listed.st_size, max_bytes)
    # O_NONBLOCK: if a FIFO replaced the file since lstat, open() returns at once instead of waiting
    # for a writer forever; fstat below then refuses it. O_NOCTTY: a terminal never becomes ours.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        raise InputFileError(f"cannot open the file ({_os_reason(error)})") from None
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        opened = os.fstat(descriptor)
        if not stat.S_ISREG(opened.st_mode):
            raise _not_regular(opened.st_mode, via_link=False)
        try:
            if max_pixels is not None and opened.st_size > 0:  # an empty file: decode says "empty"
                codec.check_image_header(handle, max_pixels)
                handle.seek(0)
            return read_bounded(handle, max_bytes, opened.st_size)
        except OSError as error:
            raise InputFileError(f"read failed ({_os_reason(error)})") from None


@dataclass(frozen=True)
class DirectoryEntry:
    """A non-directory entry found below a walked root.

    `path` is the path to read (through any symlinked directories, as the user sees it), `relative` the
    part below the root with '/' separators. `problem` is set when the entry stands for something that
    cannot be listed (an unreadable directory, a symlinked directory already walked); such entries are
    reported, not read.
    """

    path: str
    relative: str
    problem: str | None = None


# Words in the `problem` of an entry that is skipped (counted, reported), not an error: a directory
# already read under another path, and a symlink leaving the input (never followed).
ALREADY_READ = "already read"
NOT_FOLLOWED = "not followed"


def is_skipped_link(problem: str | None) -> bool:
    """True for a walk problem that is a skip (ALREADY_READ, NOT_FOLLOWED), not a read error."""
    return bool(problem) and (ALREADY_READ in problem or NOT_FOLLOWED in problem)


def walk_directory(root: str) -> Iterator[DirectoryEntry]:
    """Every non-directory entry below `root` (files, FIFOs, devices, symlinks that do not lead to a
    directory), in a stable order, recursing into every directory and into symlinked directories once.

    Real directories are walked first (depth first, by name), symlinked ones after, so a file reachable
    both ways keeps its real path. A directory reached a second time (a symlink cycle, or two links to
    one directory) and a directory that cannot be listed come out as entries with a `problem`, so a
    caller can count them. A symlinked directory whose target is outside `root` (`ln -s / root`, a
    `..` link that loops back above it) is an entry with a NOT_FOLLOWED problem: never walked.
    Whether a yielded entry is readable is read_input_file's question.
    """
    root_status = os.stat(root)
    root_real = os.path.realpath(root)
    visited = {(root_status.st_dev, root_status.st_ino)}
    real_directories = [(root, "")]  # a stack: depth first
    linked_directories: list[tuple[str, str]] = []  # a queue, walked once the real tree is done
    while real_directories or linked_directories:
        if real_directories:
            directory, prefix = real_directories.pop()
        else:
            directory, prefix = linked_directories.pop(0)
            try:
                status = os.stat(directory)
            except OSError as error:
                yield DirectoryEntry(
                    directory, prefix.rstrip("/"), f"cannot look at directory ({_os_reason(error)})"
                )
                continue
            if (status.st_dev, status.st_ino) in visited:
                yield DirectoryEntry(
                    directory,
                    prefix.rstrip("/"),
                    f"symlink to a directory that is {ALREADY_READ} (a cycle, or a second link to it): "
                    "its files are read once, under their first path",
                )
                continue
            target = os.path.realpath(directory)
            if not paths.inside(target, root_real):
                where = (
                    "above the input (a loop back)"
                    if paths.inside(root_real, target)
                    else "outside the input"
                )
                yield DirectoryEntry(
                    directory,
                    prefix.rstrip("/"),
                    f"symlink to the directory {printable_name(target)}, {where}: {NOT_FOLLOWED}",
                )
                continue
            visited.add((status.st_dev, status.st_ino))
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            yield DirectoryEntry(
                directory, prefix.rstrip("/") or ".", f"cannot list directory ({_os_reason(error)})"
            )
            continue
        subdirectories = []
        for entry in entries:
            relative = prefix + entry.name
            try:
                is_directory = entry.is_dir(follow_symlinks=True)
            except OSError:  # e.g. a symlink loop: not a directory; read_input_file gives the reason
                is_directory = False
            if not is_directory:
                yield DirectoryEntry(entry.path, relative)
            elif entry.is_symlink():
                linked_directories.append((entry.path, relative + "/"))
            else:
                status = entry.stat(follow_symlinks=False)
                if (status.st_dev, status.st_ino) in visited:  # a bind mount of an ancestor
                    yield DirectoryEntry(entry.path, relative, "directory already read (a mount loop)")
                    continue
                visited.add((status.st_dev, status.st_ino))
                subdirectories.append((entry.path, relative + "/"))
        real_directories.extend(reversed(subdirectories))
