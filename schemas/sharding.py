"""Shard naming, membership and order: the one place a file name in a records directory is spelled, and
the one rule for which shard holds an image and in which order a shard holds its records.

A records directory holds

    dataset_info.json                              the manifest (schemas.manifest)
    {split}-{index:05d}-of-{num_shards:05d}.tfrecord[.gz]
    errors-{index:05d}-of-{num_shards:05d}.jsonl   one JSON object per rejected source image, sorted

Membership and order depend only on the records' identities, never on workers, runners or listing
order, so the same inputs and config give byte-identical shards (as TFDS orders examples by a hash of
their keys):

* an image's records all go to shard `shard_index(dataset, image_id, num_shards)` of its split;
* inside a shard, records are sorted by `record_order_key(example key)`: a salted hash, so every prefix
  of a shard is a uniform sample of its images and angles (a run may stop reading anywhere).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

MANIFEST_NAME = "dataset_info.json"
TFRECORD_SUFFIX = ".tfrecord"
ERRORS_PREFIX = "errors"
ERRORS_SUFFIX = ".jsonl"
COMPRESSION_SUFFIXES = {"none": "", "gzip": ".gz"}

_SHARD_RE = re.compile(
    r"^(?P<split>[a-z][a-z0-9_]*)-(?P<index>\d{5})-of-(?P<num>\d{5})\.tfrecord(?P<comp>\.gz)?$"
)


# Changing a salt moves every image to another shard or every record to another place: old shards
# would no longer be reproducible. Bump SCHEMA_VERSION with it.
_SHARD_SALT = b"rotnet-shard-v1"
_ORDER_SALT = b"rotnet-order-v1"


def shard_index(dataset: str, image_id: str, num_shards: int) -> int:
    """The shard (0 .. num_shards - 1) of its split that holds every record of an image."""
    digest = hashlib.blake2b(f"{dataset}/{image_id}".encode(), digest_size=8, key=_SHARD_SALT).digest()
    return int.from_bytes(digest, "big") % num_shards


def record_order_key(example_key: str) -> bytes:
    """Sort key of a record inside its shard (schemas.record.example_key in, 8 bytes out)."""
    return hashlib.blake2b(example_key.encode(), digest_size=8, key=_ORDER_SALT).digest()


def record_order_keys(example_keys: list[str]) -> list[bytes]:
    """`record_order_key` of each key (one call per shard image instead of one per record)."""
    blake2b, salt = hashlib.blake2b, _ORDER_SALT
    return [blake2b(key.encode(), digest_size=8, key=salt).digest() for key in example_keys]


def _compression_suffix(compression: str) -> str:
    if compression not in COMPRESSION_SUFFIXES:
        raise ValueError(f"compression {compression!r} must be one of {sorted(COMPRESSION_SUFFIXES)}")
    return COMPRESSION_SUFFIXES[compression]


def shard_name(split: str, index: int, num_shards: int, compression: str = "none") -> str:
    """`train-00003-of-00010.tfrecord` (+ `.gz` for gzip)."""
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} out of range for {num_shards} shards")
    return f"{split}-{index:05d}-of-{num_shards:05d}{TFRECORD_SUFFIX}{_compression_suffix(compression)}"


def shard_names(split: str, num_shards: int, compression: str = "none") -> list[str]:
    return [shard_name(split, index, num_shards, compression) for index in range(num_shards)]


@dataclass(frozen=True)
class ShardName:
    split: str
    index: int
    num_shards: int
    compression: str


def parse_shard_name(name: str) -> ShardName | None:
    """Inverse of `shard_name` for a base name; None when the name is not a shard."""
    match = _SHARD_RE.match(name)
    if not match:
        return None
    return ShardName(
        split=match["split"],
        index=int(match["index"]),
        num_shards=int(match["num"]),
        compression="gzip" if match["comp"] else "none",
    )


def errors_name() -> str:
    """The errors file of a run: one file, its lines sorted (so reruns write the same bytes)."""
    return f"{ERRORS_PREFIX}-00000-of-00001{ERRORS_SUFFIX}"
