"""Path helpers that work for local paths and `gs://` (or any scheme Beam/TF know) without importing them
unless a remote path is actually used."""

from __future__ import annotations

import contextlib
import os
import posixpath
import warnings
from typing import IO


def is_remote(path: str) -> bool:
    """True for URLs such as gs://bucket/dir (anything with a scheme other than file://)."""
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def inside(path: str, directory: str) -> bool:
    """True when the local `path` is `directory` or below it (compared as given: resolve links first
    where they count)."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def join(directory: str, *names: str) -> str:
    """Join path parts with '/', for local directories and gs:// prefixes alike."""
    if is_remote(directory):
        return "/".join([directory.rstrip("/"), *names])
    return os.path.join(local_path(directory), *names)


def open_binary(path: str, mode: str = "rb") -> IO[bytes]:
    """Open a local or remote file. Remote paths use Beam's FileSystems, else tf.io.gfile."""
    if not is_remote(path):
        return open(local_path(path), mode)
    try:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        # Raw bytes: Beam would otherwise gunzip/gzip *.gz paths itself, under tfrecord_file's own gzip.
        raw = CompressionTypes.UNCOMPRESSED
        return (
            FileSystems.open(path, compression_type=raw)
            if "r" in mode
            else FileSystems.create(path, compression_type=raw)
        )
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.io.gfile.GFile(path, mode)
    except ImportError:
        raise RuntimeError(
            f"cannot open {path}: remote paths need apache-beam[gcp] or tensorflow; "
            "install one with `pip install 'rotnet[gcp]'` or copy the files locally"
        ) from None


def make_dirs(directory: str) -> None:
    """Create a local directory and its parents (object stores such as gs:// need none)."""
    if not is_remote(directory):
        os.makedirs(local_path(directory), exist_ok=True)


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(local_path(path))
    try:
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.exists(path)
    except ImportError:
        import tensorflow as tf

        return tf.io.gfile.exists(path)


def size(path: str) -> int | None:
    """Size in bytes of a local or remote file; None when it does not exist."""
    if not is_remote(path):
        try:
            return os.stat(local_path(path)).st_size
        except FileNotFoundError:
            return None
    try:
        from apache_beam.io.filesystems import FileSystems

        # An exact lookup: FileSystems.match would read a '[' or '*' in the path as a pattern.
        return FileSystems.get_filesystem(path).metadata(path).size_in_bytes
    except ImportError:
        import tensorflow as tf

        return tf.io.gfile.stat(path).length if tf.io.gfile.exists(path) else None
    except Exception:  # Beam raises BeamIOError for a path that matches nothing on some filesystems
        return None


_PATTERN_CHARACTERS = {"*": "[*]", "?": "[?]", "[": "[[]"}
# Python's re warns that `[[]` might one day read as a nested set; today (3.11-3.13) it is the class
# holding '[', which Beam's pattern translation produces from it.
warnings.filterwarnings("ignore", message="Possible nested set", category=FutureWarning)


def literal_pattern(path: str) -> str:
    """`path` as a Beam FileSystems.match pattern that matches exactly `path`.

    Paths from users are literal: a directory named `photos[2020]` is that directory, not a glob that
    also matches `photos2`. Beam's match has no quoting, but a one-character class is literal:
    `[*]`, `[?]`, `[[]` (a `]` outside a class is already literal).
    """
    return "".join(_PATTERN_CHARACTERS.get(character, character) for character in path)


def has_pattern_characters(path: str) -> bool:
    return any(character in path for character in _PATTERN_CHARACTERS)


def pattern_base(pattern: str) -> str:
    """The directory every match of a glob pattern lies below (local or gs://): the directory part of
    what comes before its first `*`, `?` or `[` ("." for a local pattern with none)."""
    fixed = pattern[
        : min((pattern.index(c) for c in _PATTERN_CHARACTERS if c in pattern), default=len(pattern))
    ]
    return posixpath.dirname(fixed) or "."


def delete(path: str) -> None:
    """Delete exactly the file `path` (nothing if it is missing).

    Not FileSystems.delete(path): Beam matches the path as a pattern, local and gs:// alike, so
    deleting `od/ds[1]/x` would delete `od/ds1/x`.
    """
    if not is_remote(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local_path(path))
        return
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.exists(path):
        FileSystems.delete([literal_pattern(path)])
