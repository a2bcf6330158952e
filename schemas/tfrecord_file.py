"""TFRecord file framing without TensorFlow: read (with CRC checks), count and write records.

Each record on disk is

    uint64 length | uint32 masked_crc32c(length) | byte data[length] | uint32 masked_crc32c(data)

(little-endian). tfrecord-lite parses records fast but checks no CRC; this module is what
`rotnet-inspect --verify` and the tests use to prove a shard is intact, and it names the shard and the
byte offset of the first damage it finds. `ShardWriter` writes a shard and measures what it wrote (records,
bytes and the SHA-256 of the file's bytes, which the manifest registers); gzip shards are written
without a timestamp or file name in their header, so the same records give the same file bytes.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import stat
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

import google_crc32c

from schemas.paths import is_remote, local_path, open_binary

# A record longer than this is damage, not data (rotnet's largest records are a few MB): its length
# is refused before a buffer of that size is asked for.
MAX_RECORD_BYTES = 1 << 30

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


class CorruptShardError(IOError):
    """A shard that is truncated or fails a CRC check."""

    def __init__(self, path: str, offset: int, reason: str):
        super().__init__(f"corrupt shard {path}: {reason} at byte offset {offset}")
        self.path = path
        self.offset = offset
        self.reason = reason


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file_problem(path: str) -> str | None:
    """Why the local `path` is not a shard to read (a FIFO would block the reader, a device never end,
    a directory fail), or None for a regular file (also through a symlink) and for remote paths."""
    if is_remote(path):
        return None
    try:
        mode = os.stat(local_path(path)).st_mode
    except FileNotFoundError:
        return None  # "missing" is said by the caller
    except OSError as error:
        return f"cannot be looked at ({error.strerror})"
    return None if stat.S_ISREG(mode) else f"{_kind(mode)}, not a regular file"


def open_shard(path: str) -> IO[bytes]:
    """Open a shard for reading: local files without blocking on a FIFO (O_NONBLOCK, then checked on
    the descriptor itself, so a FIFO swapped in after a check is refused too): CorruptShardError for
    anything but a regular file."""
    if is_remote(path):
        return open_binary(path, "rb")
    descriptor = os.open(local_path(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise CorruptShardError(path, 0, f"{_kind(mode)}, not a regular file")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def _open(path: str, mode: str) -> IO[bytes]:
    handle = open_shard(path) if mode == "rb" else open_binary(path, mode)
    if not path.endswith(".gz"):
        return handle
    # mtime=0 and no name: the gzip header then depends on nothing but the data.
    return _ClosingGzip(handle, gzip.GzipFile(fileobj=handle, mode=mode, mtime=0, filename=""))


class _ClosingGzip:
    """A GzipFile that also closes the file under it (GzipFile leaves a passed fileobj open)."""

    def __init__(self, raw: IO[bytes], stream: gzip.GzipFile) -> None:
        self.raw, self.stream = raw, stream

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)

    def write(self, data: bytes) -> int:
        return self.stream.write(data)

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            self.raw.close()

    def __enter__(self) -> _ClosingGzip:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _HashingWriter:
    """A writable file that counts and hashes every byte on its way to the real file."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.num_bytes, self.digest = raw, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.num_bytes += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()


# Bytes of records ShardWriter.write_many frames and writes in one piece.
WRITE_CHUNK_BYTES = 256 << 10


class ShardWriter:
    """Write one shard (gzip when the name ends in .gz); after `close`, `num_records`, `num_bytes`
    and `sha256` describe the file exactly as stored.

        with ShardWriter(path) as writer:
            for record in records:
                writer.write(record)
        writer.sha256
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._raw = _HashingWriter(open_binary(path, "wb"))
        compressed = path.endswith(".gz")
        self._out: Any = (
            gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0, filename="") if compressed else self._raw
        )
        self.num_records = 0
        self.num_bytes = 0
        self.sha256 = ""

    def write(self, record: bytes) -> None:
        self._out.write(frame_record(record))
        self.num_records += 1

    def write_many(self, records: Sequence[bytes]) -> None:
        """`write` each record, the same bytes: framed and joined first, about WRITE_CHUNK_BYTES at a
        time, so the file and the SHA-256 see few large writes (a write call per 28 px record cost ~1 us
        of the ~40 us each takes) of data still in the cache (a window of 224 px photo records joined
        at once, 28 MB, cost them more than the calls it saved)."""
        start, size = 0, 0
        for end, data in enumerate(records, 1):
            size += len(data)
            if size >= WRITE_CHUNK_BYTES or end == len(records):
                self._out.write(frame_records(records[start:end]))
                start, size = end, 0
        self.num_records += len(records)

    def close(self) -> None:
        if self._out is not self._raw:
            self._out.close()  # writes the gzip trailer through the hashing writer
        self._raw.close()
        self.num_bytes, self.sha256 = self._raw.num_bytes, self._raw.digest.hexdigest()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.close()


class _HashingReader:
    """A readable file that hashes every byte read from the real file (gzip reads through it)."""

    def __init__(self, raw: IO[bytes], digest: Any) -> None:
        self.raw, self.digest = raw, digest

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data

    def drain(self) -> None:
        while self.read(8 << 20):
            pass

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> _HashingReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def iter_records(path: str, verify: bool = True, digest: Any = None, skip: int = 0) -> Iterator[bytes]:
    """Yield the serialized records of one shard (gzip when the name ends in .gz).

    With `verify`, both CRCs of every record are checked; any damage raises CorruptShardError naming
    the shard and offset. Without it, a truncated tail still raises, but flipped bits go unnoticed.
    A `digest` (hashlib object) is fed the file's bytes as stored, all of them once the shard is read.
    `skip` records are stepped over first (their length CRC checked, their data not: a local
    uncompressed shard seeks over them instead of reading them).
    """
    if digest is None:
        with _open(path, "rb") as handle:
            yield from _records(path, handle, verify, skip)
        return
    with _HashingReader(open_shard(path), digest) as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
        yield from _records(path, stream, verify, skip)
        raw.drain()


def _step_over(path: str, handle: Any, verify: bool, count: int) -> int:
    """Step over `count` records from the start of `handle`; returns the byte offset reached. A local
    file seeks over the data (its size bounds every jump); other streams read it."""
    seekable = isinstance(handle, io.BufferedReader) and not is_remote(path)  # a local shard, not gzip
    file_size = os.fstat(handle.fileno()).st_size if seekable else None
    offset = 0
    for _ in range(count):
        header = handle.read(_HEADER.size)
        if len(header) < _HEADER.size:
            reason = "truncated record header" if header else "fewer records than skipped"
            raise CorruptShardError(path, offset, reason)
        length, length_crc = _HEADER.unpack(header)
        if verify and masked_crc32c(header[:8]) != length_crc:
            raise CorruptShardError(path, offset, "length CRC mismatch")
        following = offset + _HEADER.size + length + _FOOTER.size
        if file_size is not None:
            if following > file_size:
                raise CorruptShardError(path, offset, "truncated record")
            handle.seek(following)
        elif len(handle.read(length + _FOOTER.size)) < length + _FOOTER.size:
            raise CorruptShardError(path, offset, "truncated record")
        offset = following
    return offset


def _records(path: str, handle: Any, verify: bool, skip: int = 0) -> Iterator[bytes]:
    offset = _step_over(path, handle, verify, skip) if skip else 0
    while True:
        try:
            header = handle.read(_HEADER.size)
        except (OSError, EOFError) as error:  # gzip stream cut short
            raise CorruptShardError(path, offset, f"unreadable ({error})") from error
        if not header:
            return
        if len(header) < _HEADER.size:
            raise CorruptShardError(path, offset, "truncated record header")
        length, length_crc = _HEADER.unpack(header)
        if verify and masked_crc32c(header[:8]) != length_crc:
            raise CorruptShardError(path, offset, "length CRC mismatch")
        if length > MAX_RECORD_BYTES:
            raise CorruptShardError(path, offset, f"record length {length:,} over {MAX_RECORD_BYTES:,} bytes")
        try:
            data = handle.read(length)
            footer = handle.read(_FOOTER.size)
        except (OSError, EOFError) as error:
            raise CorruptShardError(path, offset, f"unreadable ({error})") from error
        if len(data) < length or len(footer) < _FOOTER.size:
            raise CorruptShardError(path, offset, "truncated record")
        if verify and masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
            raise CorruptShardError(path, offset, "data CRC mismatch")
        yield data
        offset += _HEADER.size + length + _FOOTER.size


def frame_record(data: bytes) -> bytes:
    """One record in TFRecord framing."""
    return b"".join((_frame_head(len(data)), data, struct.pack("<I", masked_crc32c(data))))


@functools.lru_cache(maxsize=1 << 16)
def _frame_head(length: int) -> bytes:
    """The length and its masked CRC: the same 12 bytes for every record of that length (records of a
    dataset have a few thousand lengths; 28 px MNIST records a few hundred)."""
    encoded = struct.pack("<Q", length)
    return encoded + struct.pack("<I", masked_crc32c(encoded))


def frame_records(records: Iterable[bytes]) -> bytes:
    """The records in TFRecord framing, one after the other: `frame_record` of each, joined."""
    head, crc32c, pack, delta = _frame_head, google_crc32c.value, struct.Struct("<I").pack, _MASK_DELTA
    parts = []
    for data in records:
        crc = crc32c(data)
        parts += (head(len(data)), data, pack((((crc >> 15) | (crc << 17)) + delta) & 0xFFFFFFFF))
    return b"".join(parts)


def write_records(path: str, records: Iterable[bytes]) -> int:
    """Write records to a shard (gzip when the name ends in .gz); returns the number written."""
    with ShardWriter(path) as writer:
        for data in records:
            writer.write(data)
    return writer.num_records
