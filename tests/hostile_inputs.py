"""Input files no reader may trust: the collection the reader, rotnet-correct and the pipeline
tests plant, each with what must become of it.

Everything is cheap to make: the 1.5 GB file is sparse (`truncate`), so it costs no disk and no time
unless something reads it, which is exactly what must not happen.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# A name that is not UTF-8 ("caf\xe9.jpg" in Latin-1): Python holds it with a surrogate escape.
NON_UTF8_NAME = os.fsdecode(b"caf\xe9.jpg")
NON_UTF8_PRINTED = "caf\\xe9.jpg"
SPARSE_BYTES = 1_500_000_000


def small_jpeg(seed: int = 0, size: tuple[int, int] = (40, 32)) -> bytes:
    """A small, valid, distinct JPEG (random pixels from `seed`)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass(frozen=True)
class Planted:
    """One planted entry: its path below the root ('/' separators, printable) and its fate when read.

    `reason` is None for a file that must be read (and become records), else a phrase the reason must
    contain. `walk_problem` is a phrase the directory walk reports instead of a file to read.
    """

    relative: str
    reason: str | None = None
    walk_problem: str | None = None


def plant_hostile_inputs(root: Path, outside: Path) -> list[Planted]:
    """Plant the collection in `root` (created); `outside` (created) holds a directory linked from it.

    Images: good.jpg, link_to_good.jpg (symlink to it), album.jpg/inner.jpg (a directory named like an
    image), linked_album (a symlink to a directory outside the root: reported, not followed),
    caf\\xe9.jpg (a non-UTF-8 name). Refused: fifo.jpg, zero.jpg (symlink to /dev/zero), loop.jpg (a
    symlink to itself), dangling.jpg, huge.jpg (1.5 GB, sparse). Reported by the walk: cycle (a symlink
    to the root itself).
    """
    root.mkdir(parents=True, exist_ok=True)
    (outside / "album").mkdir(parents=True, exist_ok=True)
    (root / "good.jpg").write_bytes(small_jpeg(1))
    os.symlink("good.jpg", root / "link_to_good.jpg")
    (root / "album.jpg").mkdir()
    (root / "album.jpg" / "inner.jpg").write_bytes(small_jpeg(2))
    (outside / "album" / "outside.jpg").write_bytes(small_jpeg(3))
    os.symlink(outside / "album", root / "linked_album")
    (root / NON_UTF8_NAME).write_bytes(small_jpeg(4))
    os.mkfifo(root / "fifo.jpg")
    os.symlink("/dev/zero", root / "zero.jpg")
    os.symlink("loop.jpg", root / "loop.jpg")
    os.symlink("missing.jpg", root / "dangling.jpg")
    with open(root / "huge.jpg", "wb") as handle:
        handle.truncate(SPARSE_BYTES)
    os.symlink(".", root / "cycle")
    return [
        Planted("album.jpg/inner.jpg"),
        Planted(NON_UTF8_PRINTED),
        Planted("cycle", walk_problem="already read"),
        Planted("dangling.jpg", "dangling symlink"),
        Planted("fifo.jpg", "FIFO"),
        Planted("good.jpg"),
        Planted("huge.jpg", "over the limit"),
        Planted("link_to_good.jpg"),
        Planted("linked_album", walk_problem="outside the input: not followed"),
        Planted("loop.jpg", "symlink loop"),
        Planted("zero.jpg", "symlink to a character device"),
    ]


def tree_digest(root: Path) -> dict[str, tuple]:
    """Every entry below `root` (links not followed) -> what it is: ("file", sha256, mode) for a regular
    file, ("link", target) for a symlink, ("dir", mode), or its kind for a FIFO/device/socket (never
    opened). Equal digests before and after a run mean the tree is byte-identical.

    A regular file over 64 MB (the sparse 1.5 GB input) is hashed on its first and last MiB plus its
    size and mtime, so proving it untouched does not cost reading 1.5 GB.
    """
    import hashlib
    import stat

    found: dict[str, tuple] = {}
    for directory, names, files in os.walk(root):
        for name in sorted(names + files):
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            status = os.lstat(path)
            if stat.S_ISLNK(status.st_mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(status.st_mode):
                found[relative] = ("dir", stat.S_IMODE(status.st_mode))
            elif stat.S_ISREG(status.st_mode):
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    if status.st_size <= 64 * 2**20:
                        digest.update(handle.read())
                    else:
                        digest.update(handle.read(2**20))
                        handle.seek(-(2**20), os.SEEK_END)
                        digest.update(handle.read())
                        digest.update(f"{status.st_size} {status.st_mtime_ns}".encode())
                found[relative] = ("file", digest.hexdigest(), stat.S_IMODE(status.st_mode))
            else:
                found[relative] = ("special", stat.S_IFMT(status.st_mode))
    return found
