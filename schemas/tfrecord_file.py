"""TFRecord file framing without TensorFlow: read (with CRC checks), count and write records.

Each record on disk is

    uint64 length | uint32 masked_crc32c(length) | byte data[length] | uint32 masked_crc32c(data)

(little-endian). tfrecord-lite parses records fast but checks no CRC; this module is what
`rotnet-inspect --verify` and the tests use to prove a shard is intact, and it names the shard and the
byte offset of the first damage it finds.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable, Iterator
from typing import IO

import google_crc32c

from schemas.paths import open_binary

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


def _open(path: str, mode: str) -> IO[bytes]:
    handle = open_binary(path, mode)
    return gzip.GzipFile(fileobj=handle, mode=mode) if path.endswith(".gz") else handle


def iter_records(path: str, verify: bool = True) -> Iterator[bytes]:
    """Yield the serialized records of one shard (gzip when the name ends in .gz).

    With `verify`, both CRCs of every record are checked; any damage raises CorruptShardError naming
    the shard and offset. Without it, a truncated tail still raises, but flipped bits go unnoticed.
    """
    with _open(path, "rb") as handle:
        offset = 0
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


def count_records(path: str, verify: bool = False) -> int:
    """Number of records in a shard (reads every record; with `verify`, checks the CRCs too)."""
    return sum(1 for _ in iter_records(path, verify=verify))


def frame_record(data: bytes) -> bytes:
    """One record in TFRecord framing."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def write_records(path: str, records: Iterable[bytes]) -> int:
    """Write records to a shard (gzip when the name ends in .gz); returns the number written."""
    count = 0
    with _open(path, "wb") as handle:
        for data in records:
            handle.write(frame_record(data))
            count += 1
    return count
