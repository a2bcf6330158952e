"""Shard and side-file naming: the one place a file name in a records directory is spelled.

A records directory holds

    dataset_info.json                              the manifest (schemas.manifest)
    {split}-{index:05d}-of-{num_shards:05d}.tfrecord[.gz]
    errors-{index:05d}-of-{num_shards:05d}.jsonl   one JSON object per rejected source image
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MANIFEST_NAME = "dataset_info.json"
TFRECORD_SUFFIX = ".tfrecord"
ERRORS_PREFIX = "errors"
ERRORS_SUFFIX = ".jsonl"
COMPRESSION_SUFFIXES = {"none": "", "gzip": ".gz"}
# Beam spells "-00003-of-00010" as this template (S = shard index, N = number of shards).
BEAM_SHARD_TEMPLATE = "-SSSSS-of-NNNNN"

_SHARD_RE = re.compile(
    r"^(?P<split>[a-z][a-z0-9_]*)-(?P<index>\d{5})-of-(?P<num>\d{5})\.tfrecord(?P<comp>\.gz)?$"
)


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


def shard_glob(split: str = "*", compression: str = "none") -> str:
    return f"{split}-*-of-*{TFRECORD_SUFFIX}{_compression_suffix(compression)}"


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


@dataclass(frozen=True)
class BeamNaming:
    """Arguments for Beam's file sinks so that their output names equal `shard_name`."""

    file_path_prefix: str
    shard_name_template: str
    file_name_suffix: str


def beam_shard_naming(directory: str, split: str, compression: str = "none") -> BeamNaming:
    from schemas.paths import join

    return BeamNaming(
        join(directory, split), BEAM_SHARD_TEMPLATE, TFRECORD_SUFFIX + _compression_suffix(compression)
    )


def beam_errors_naming(directory: str) -> BeamNaming:
    from schemas.paths import join

    return BeamNaming(join(directory, ERRORS_PREFIX), BEAM_SHARD_TEMPLATE, ERRORS_SUFFIX)


def errors_glob() -> str:
    return f"{ERRORS_PREFIX}-*-of-*{ERRORS_SUFFIX}"
