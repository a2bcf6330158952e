"""The manifest `dataset_info.json`: what a records directory holds, written last by the pipeline.

A directory whose manifest is missing was not finished (the pipeline writes it only after every shard
was renamed into place), so readers refuse it. Counts obey

    splits[s].num_records == splits[s].num_images * len(angles_degrees)
    splits[s].num_records == sum(shard.num_records for shard in splits[s].shards)
    num_images_read == sum(splits[s].num_images) + num_errors

Example (abridged):

    {"schema_version": 2, "package_version": "0.2.0", "dataset": "mnist",
     "image": {"height": 28, "width": 28, "channels": 1, "format": "png"},
     "angles_degrees": [0, 1, ..., 359], "compression": "none",
     "splits": {"train": {"num_images": 4512, "num_records": 1624320,
                          "shards": [{"name": "train-00000-of-00004.tfrecord", "num_records": 406080,
                                      "num_bytes": 128000000, "sha256": "9f86d0..."}, ...]}},
     "num_images_read": 5000, "num_errors": 0, "error_files": [], "config": {...}}
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from schemas import output_rules, paths
from schemas.record import IMAGE_FORMATS, NAME_PATTERN, NUM_ANGLES
from schemas.sharding import COMPRESSION_SUFFIXES, MANIFEST_NAME, shard_name
from schemas.version import PACKAGE_VERSION, SCHEMA_VERSION

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable, of another schema version, or inconsistent."""


# A manifest lists a few thousand shards at most (~200 bytes each); anything far larger is not one.
MAX_MANIFEST_BYTES = 64 * 2**20
_DAMAGED_FIX = (
    "the manifest is damaged or was edited by hand: restore it, or write the records again with "
    "rotnet-pipeline into a new --output-dir"
)

# The manifest's fields and their JSON types, checked before any of them is used (a string where a
# count should be would otherwise surface as a TypeError deep inside a reader). "count" = an integer
# >= 0, "positive" = an integer >= 1; a trailing "?" marks a field that may be missing.
_TOP_FIELDS = {
    "dataset": "string",
    "image": "object",
    "angles_degrees": "list",
    "splits": "object",
    "num_images_read": "count",
    "num_errors": "count?",
    "error_files": "list?",
    "compression": "string?",
    "config": "object?",
    "package_version": "string?",
}
# The largest image side a manifest may claim (pipeline.config.MAX_IMAGE_SIZE: what rotnet-pipeline
# writes); a larger claim would make the trainer allocate for it.
MAX_IMAGE_SIDE = 4096
IMAGE_CHANNELS = (1, 3)  # grey or RGB: a record's image has these (schemas.record)
_IMAGE_FIELDS = {"height": "positive", "width": "positive", "channels": "positive", "format": "string"}
_SPLIT_FIELDS = {"num_images": "count", "num_records": "count", "shards": "list"}
_SHARD_FIELDS = {"name": "string", "num_records": "count", "num_bytes": "count", "sha256": "string"}
_TYPE_WORDS = {
    "string": "a string",
    "object": "a JSON object",
    "list": "a list",
    "count": "an integer >= 0",
    "positive": "an integer >= 1",
}


def _type_problem(value: Any, kind: str) -> bool:
    """True when `value` is not of the schema `kind` (JSON booleans are not integers here)."""
    if kind == "string":
        return not isinstance(value, str)
    if kind == "object":
        return not isinstance(value, dict)
    if kind == "list":
        return not isinstance(value, list)
    if isinstance(value, bool) or not isinstance(value, int):
        return True
    return value < (1 if kind == "positive" else 0)


def _describe(value: Any) -> str:
    shown = json.dumps(value)
    return f"{shown[:40]}{'...' if len(shown) > 40 else ''} ({type(value).__name__})"


def _check_fields(data: Any, fields: dict[str, str], where: str, found: list[str]) -> None:
    for name, kind in fields.items():
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        label = f"{where}{name}"
        if name not in data:
            if not optional:
                found.append(f"field {label} is missing")
            continue
        if _type_problem(data[name], kind):
            found.append(f"field {label} must be {_TYPE_WORDS[kind]}, not {_describe(data[name])}")


def schema_problems(data: dict[str, Any]) -> list[str]:
    """Every field of a parsed manifest that is missing or of the wrong type, by its dotted name."""
    found: list[str] = []
    _check_fields(data, _TOP_FIELDS, "", found)
    if isinstance(data.get("image"), dict):
        _check_fields(data["image"], _IMAGE_FIELDS, "image.", found)
    angles = data.get("angles_degrees")
    if isinstance(angles, list):
        for index, angle in enumerate(angles):
            if _type_problem(angle, "count"):
                found.append(f"field angles_degrees[{index}] must be an integer >= 0, not {_describe(angle)}")
                break
    if isinstance(data.get("error_files"), list) and not all(isinstance(n, str) for n in data["error_files"]):
        found.append("field error_files must be a list of file names (strings)")
    splits = data.get("splits")
    for split_name, split in splits.items() if isinstance(splits, dict) else ():
        where = f"splits.{split_name}."
        if not isinstance(split, dict):
            found.append(f"field splits.{split_name} must be a JSON object, not {_describe(split)}")
            continue
        _check_fields(split, _SPLIT_FIELDS, where, found)
        shards = split.get("shards")
        for index, shard in enumerate(shards if isinstance(shards, list) else ()):
            if not isinstance(shard, dict):
                found.append(f"field {where}shards[{index}] must be a JSON object, not {_describe(shard)}")
            else:
                _check_fields(shard, _SHARD_FIELDS, f"{where}shards[{index}].", found)
    return found


@dataclass
class ShardInfo:
    name: str
    num_records: int
    num_bytes: int
    sha256: str  # of the file's bytes as stored: reruns of the same inputs and config write the same


@dataclass
class SplitInfo:
    num_images: int
    num_records: int
    shards: list[ShardInfo]

    @property
    def num_bytes(self) -> int:
        return sum(shard.num_bytes for shard in self.shards)


@dataclass
class ImageSpec:
    height: int
    width: int
    channels: int
    format: str


@dataclass
class DatasetInfo:
    dataset: str
    image: ImageSpec
    angles_degrees: list[int]
    splits: dict[str, SplitInfo]
    num_images_read: int
    num_errors: int = 0
    error_files: list[str] = field(default_factory=list)
    compression: str = "none"
    config: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    package_version: str = PACKAGE_VERSION

    # --- derived ------------------------------------------------------------------------------

    @property
    def num_records(self) -> int:
        return sum(split.num_records for split in self.splits.values())

    def shard_paths(self, directory: str, split: str) -> list[str]:
        """Full paths of a split's shards, in index order."""
        if split not in self.splits:
            raise ManifestError(f"split {split!r} not in this dataset; it has {sorted(self.splits)}")
        return [paths.join(directory, shard.name) for shard in self.splits[split].shards]

    # --- checks -------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every inconsistency found, as sentences; empty when the manifest is sound."""
        found = []
        if max(self.image.height, self.image.width) > MAX_IMAGE_SIDE:
            found.append(
                f"image {self.image.height}x{self.image.width} px is over {MAX_IMAGE_SIDE} px a side "
                "(rotnet-pipeline writes at most that)"
            )
        if self.image.channels not in IMAGE_CHANNELS:
            found.append(
                f"image channels {self.image.channels} is not one of {IMAGE_CHANNELS} (grey or RGB: what "
                "rotnet-pipeline writes)"
            )
        if not NAME_PATTERN.match(self.dataset):
            found.append(f"dataset {self.dataset!r} must be lower-case letters, digits and '_'")
        if self.image.format not in IMAGE_FORMATS:
            found.append(f"image format {self.image.format!r} is not one of {IMAGE_FORMATS}")
        if self.compression not in COMPRESSION_SUFFIXES:
            found.append(f"compression {self.compression!r} is not one of {sorted(COMPRESSION_SUFFIXES)}")
        if not self.angles_degrees or any(not 0 <= a < NUM_ANGLES for a in self.angles_degrees):
            found.append("angles_degrees must be a non-empty list of integers in 0..359")
        if len(set(self.angles_degrees)) != len(self.angles_degrees):
            found.append("angles_degrees has duplicates")
        for name, split in self.splits.items():
            expected_records = split.num_images * len(self.angles_degrees)
            if split.num_records != expected_records:
                found.append(
                    f"split {name}: {split.num_records} records but {split.num_images} images x "
                    f"{len(self.angles_degrees)} angles = {expected_records}"
                )
            shard_total = sum(shard.num_records for shard in split.shards)
            if shard_total != split.num_records:
                found.append(
                    f"split {name}: shards hold {shard_total} records, split says {split.num_records}"
                )
            expected_names = [
                shard_name(name, i, len(split.shards), self.compression) for i in range(len(split.shards))
            ]
            if [shard.name for shard in split.shards] != expected_names:
                found.append(f"split {name}: shard names are not {expected_names[:1]}... in index order")
            for shard in split.shards:
                if not _SHA256.match(shard.sha256):
                    found.append(f"shard {shard.name}: sha256 {shard.sha256!r} is not 64 hex digits")
        images = sum(split.num_images for split in self.splits.values())
        if images + self.num_errors != self.num_images_read:
            found.append(
                f"{self.num_images_read} images read but {images} written + {self.num_errors} errors = "
                f"{images + self.num_errors}"
            )
        return found

    def validate(self, source: str = MANIFEST_NAME) -> DatasetInfo:
        found = self.problems()
        if found:
            raise ManifestError(f"{source} is inconsistent: " + "; ".join(found))
        return self

    # --- (de)serialization --------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST_NAME) -> DatasetInfo:
        """Parse and validate; ManifestError says what is wrong and how to fix it."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ManifestError(f"{source} is not valid JSON ({error}); re-run the pipeline") from error
        except RecursionError:
            raise ManifestError(
                f"{source} nests JSON too deeply to be a manifest; re-run the pipeline"
            ) from None
        if not isinstance(data, dict):
            raise ManifestError(f"{source} must hold a JSON object")
        version = data.get("schema_version")
        if version is None:
            raise ManifestError(f"{source} has no schema_version: it was not written by rotnet-pipeline")
        if version == 1:
            raise ManifestError(
                f"{source} was written by rotnet 0.1 (schema_version 1: shards whose membership and order "
                f"varied between runs, no checksums); this rotnet {PACKAGE_VERSION} reads schema_version "
                f"{SCHEMA_VERSION}: re-run rotnet-pipeline to rewrite the records directory"
            )
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"{source} has schema_version {version} but this rotnet (package {PACKAGE_VERSION}) reads "
                f"schema_version {SCHEMA_VERSION}: re-run rotnet-pipeline with this version, or install the "
                f"rotnet version that wrote it (package {data.get('package_version', 'unknown')})"
            )
        problems = schema_problems(data)
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise ManifestError(f"{source}: {shown}; {_DAMAGED_FIX}")
        try:
            info = cls(
                dataset=data["dataset"],
                image=ImageSpec(**data["image"]),
                angles_degrees=list(data["angles_degrees"]),
                splits={
                    name: SplitInfo(
                        num_images=split["num_images"],
                        num_records=split["num_records"],
                        shards=[ShardInfo(**shard) for shard in split["shards"]],
                    )
                    for name, split in data["splits"].items()
                },
                num_images_read=data["num_images_read"],
                num_errors=data.get("num_errors", 0),
                error_files=list(data.get("error_files", [])),
                compression=data.get("compression", "none"),
                config=dict(data.get("config", {})),
                schema_version=version,
                package_version=data.get("package_version", "unknown"),
            )
        except (KeyError, TypeError) as error:
            raise ManifestError(f"{source} lacks or mistypes field {error}; re-run the pipeline") from error
        return info.validate(source)


def manifest_path(records: str) -> str:
    """The manifest path for a records directory (or the manifest path itself)."""
    return records if records.endswith(".json") else paths.join(records, MANIFEST_NAME)


def load_manifest(records: str) -> DatasetInfo:
    """Load and validate `dataset_info.json` from a records directory (local or gs://)."""
    path = manifest_path(records)
    if not paths.exists(path):
        raise ManifestError(
            f"no {MANIFEST_NAME} in {records}: either this is not a records directory or the pipeline "
            "did not finish (it writes the manifest last); run rotnet-pipeline --output-dir to (re)create it"
        )
    if not paths.is_remote(path):
        status = os.stat(paths.local_path(path))  # follows a symlink: a linked manifest is fine
        if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"{path} is not a regular file of at most {MAX_MANIFEST_BYTES:,} bytes, so it is not read; "
                + _DAMAGED_FIX
            )
    with paths.open_binary(path) as handle:
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{path} is over {MAX_MANIFEST_BYTES:,} bytes, so it is not read; " + _DAMAGED_FIX
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path} is not UTF-8 text ({error}); {_DAMAGED_FIX}") from None
    return DatasetInfo.from_json(text, source=path)


def write_manifest(records: str, info: DatasetInfo) -> str:
    """Validate and write the manifest atomically (temp file + rename locally; one object write on GCS)."""
    info.validate()
    path = manifest_path(records)
    output_rules.write_aside(path, info.to_json(), prefix=".tmp-", suffix=".json")
    return path
