"""Duplicate image ids: found, reported, or made unique by a stable suffix -- never silent (a
duplicate id would put two photos under one key and, with it, one split).

An image id names a source image in every record and decides its split and shard. Street View ids
are file stems, so zip members `x/dup_1.jpg`, `y/dup_1.jpg` and a loose `dup_1.jpg` (three different
photos) all get id `dup_1`; TFDS fails a build on duplicate keys, and so does rotnet-pipeline:

* `FindDuplicateIds`: (split, id) -> how many source images have it and where they came from (the
  first few `SourceImage.source`s), written as JSON for the launcher, which fails the run with
  `duplicates_message` before writing the manifest.
* `UniqueIdsFromNames` (`--duplicate-ids suffix`): every source of a shared id gets
  `suffixed_id(id, source)` = `id~` + 8 hex digits of its source's SHA-256, the same on every run and
  machine; its split is drawn again from the new id when its bytes are read. It groups *names* (id,
  source, where to read it: a few hundred bytes per source image), before any image's bytes are read,
  so the flag keeps the memory bound of a run without it (the file-reading datasets, street_view and
  images, apply it in their read: `SourcePlan.renames_duplicate_ids`).
* `MakeIdsUnique`: the same on SourceImages, for a registered dataset whose source does not rename
  names itself. It groups the images by id, a shuffle of the images' bytes (memory grows with them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam

from pipeline.config import JobError, PipelineConfig
from pipeline.datasets.common import SourceImage, train_split

_SOURCES_KEPT = 3  # sources named per duplicate id in the message
_IDS_SHOWN = 5


def suffixed_id(image_id: str, source: str) -> str:
    """The unique id of one of several images sharing `image_id`: stable, derived from its source."""
    return f"{image_id}~{hashlib.sha256(source.encode('utf-8')).hexdigest()[:8]}"


def check_unique(duplicates_path: str) -> None:
    """Fail the run (JobError listing them) when FindDuplicateIds found source images sharing an id."""
    from schemas import paths

    if not paths.exists(duplicates_path):
        raise JobError(f"the job finished without writing its id check ({duplicates_path}); rerun it")
    with paths.open_binary(duplicates_path) as handle:
        duplicates = json.loads(handle.read().decode("utf-8"))
    if duplicates:
        raise JobError(duplicates_message(duplicates))


def duplicates_message(duplicates: list[dict[str, Any]]) -> str:
    """One line: which ids are shared, by how many images from where, and the two ways out."""
    duplicates = sorted(duplicates, key=lambda item: item["image_id"])
    shown = "; ".join(
        f"{item['image_id']} ({item['count']} sources: {', '.join(item['sources'])}"
        + (", ..." if item["count"] > len(item["sources"]) else "")
        + ")"
        for item in duplicates[:_IDS_SHOWN]
    )
    more = f"; and {len(duplicates) - _IDS_SHOWN} more" if len(duplicates) > _IDS_SHOWN else ""
    count = len(duplicates)
    return (
        f"{count} image id{' is' if count == 1 else 's are'} shared by several source images: {shown}{more}. "
        "The records were written but the manifest was not: rename or remove the duplicates, or pass "
        "--duplicate-ids suffix to give each a stable unique id (id~ + 8 hex digits of its source's SHA-256)"
    )


class _CountSources(beam.CombineFn):
    """(number of images, the first sources in sorted order) of one id."""

    def create_accumulator(self) -> tuple[int, list[str]]:
        return 0, []

    def add_input(self, accumulator: tuple[int, list[str]], source: str) -> tuple[int, list[str]]:
        count, sources = accumulator
        return count + 1, sorted([*sources, source])[:_SOURCES_KEPT]

    def merge_accumulators(self, accumulators: Iterable[tuple[int, list[str]]]) -> tuple[int, list[str]]:
        total, merged = 0, []
        for count, sources in accumulators:
            total += count
            merged = sorted([*merged, *sources])[:_SOURCES_KEPT]
        return total, merged

    def extract_output(self, accumulator: tuple[int, list[str]]) -> tuple[int, list[str]]:
        return accumulator


def _write_duplicates(found: list[dict[str, Any]], path: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as handle:
        handle.write(json.dumps(sorted(found, key=lambda item: item["image_id"])).encode("utf-8"))


class FindDuplicateIds(beam.PTransform):
    """SourceImage -> a JSON file at `path` listing every (split, id) held by more than one image
    (an empty list when ids are unique). Only ids and source names travel, not the images."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def expand(self, images: beam.PCollection) -> beam.PCollection:
        return (
            images
            | "IdAndSource" >> beam.Map(lambda image: (_id_key(image), image.source))
            | "CountPerId" >> beam.CombinePerKey(_CountSources())
            | "Shared" >> beam.Filter(lambda item: item[1][0] > 1)
            | "Describe"
            >> beam.Map(lambda item: {"image_id": item[0][1], "count": item[1][0], "sources": item[1][1]})
            | "OneList" >> beam.combiners.ToList()
            | "Write" >> beam.Map(_write_duplicates, self.path)
        )


def _id_key(image: SourceImage) -> tuple[str, str]:
    """Images that share this key share an id. A train/validation split is drawn from the id, so it is
    left out of the key (the renamed images draw theirs again); a source's own split (MNIST test) is
    kept, since its ids are counted apart from train's."""
    return ("" if image.split in ("train", "validation") else image.split, image.image_id)


def _unique(
    keyed: tuple[tuple[str, str], Iterable[SourceImage]], config: PipelineConfig
) -> Iterator[SourceImage]:
    (_, image_id), group = keyed
    images = list(group)
    if len(images) == 1:
        yield images[0]
        return
    for image in sorted(images, key=lambda item: item.source):
        new_id = suffixed_id(image_id, image.source)
        # A split drawn by hash (train/validation) follows the id; a source's own split (MNIST test) stays.
        split = train_split(new_id, config) if image.split in ("train", "validation") else image.split
        yield dataclasses.replace(image, image_id=new_id, split=split)


def _renamed_names(
    keyed: tuple[str | None, Iterable[tuple[str | None, str, Any]]], rebuild: Callable[[Any, str], Any]
) -> Iterator[Any]:
    image_id, group = keyed
    names = list(group)  # (id, source, payload): names only, never an image's bytes
    if image_id is None or len(names) == 1:
        yield from (payload for _, _, payload in names)
        return
    for _, source, payload in sorted(names, key=lambda name: name[1]):
        yield rebuild(payload, suffixed_id(image_id, source))


class UniqueIdsFromNames(beam.PTransform):
    """(image id or None, source, payload) -> payload, or `rebuild(payload, suffixed_id(id, source))`
    for every payload whose id several sources share (`--duplicate-ids suffix`, applied by a dataset's
    read before the bytes are read: the payload says where to read them, e.g. a zip member's name).

    Memory: the group of one id holds its names (a few hundred bytes each), never image bytes; a
    payload without an id (None: not an image, read only to be counted) passes unchanged."""

    def __init__(self, rebuild: Callable[[Any, str], Any]) -> None:
        super().__init__()
        self.rebuild = rebuild

    def expand(self, names: beam.PCollection) -> beam.PCollection:
        return (
            names
            | "ById" >> beam.Map(lambda name: (name[0], name))
            | "GroupById" >> beam.GroupByKey()
            | "Rename" >> beam.FlatMap(_renamed_names, self.rebuild)
        )


class MakeIdsUnique(beam.PTransform):
    """SourceImage -> the same images, those sharing an id renamed by `suffixed_id` (--duplicate-ids
    suffix), for a dataset whose read does not apply UniqueIdsFromNames: it groups the images' bytes."""

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, images: beam.PCollection) -> beam.PCollection:
        return (
            images
            | "ById" >> beam.Map(lambda image: (_id_key(image), image))
            | "GroupById" >> beam.GroupByKey()
            | "Rename" >> beam.FlatMap(_unique, self.config)
        )


class CheckIds(beam.PTransform):
    """SourceImage -> the same images, their ids made unique first with `--duplicate-ids suffix` (unless
    the source did so on names: `renamed`), and the ids that are still shared written to
    `duplicates_path` (for `check_unique`)."""

    def __init__(self, config: PipelineConfig, duplicates_path: str, renamed: bool = False) -> None:
        super().__init__()
        self.config, self.duplicates_path, self.renamed = config, duplicates_path, renamed

    def expand(self, images: beam.PCollection) -> beam.PCollection:
        if self.config.duplicate_ids == "suffix" and not self.renamed:
            images = images | "MakeIdsUnique" >> MakeIdsUnique(self.config)
        images | "FindDuplicateIds" >> FindDuplicateIds(self.duplicates_path)
        return images
