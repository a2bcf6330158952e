"""The manifest: round trip, and clear errors for missing, foreign-version or inconsistent manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import schemas
from schemas import sharding

GOLDEN_SHARDS = [3, 2, 0, 1, 6, 5, 3, 3]
GOLDEN_ORDER_KEY = "ed1043807dc499e8"


def make_info(**overrides) -> schemas.DatasetInfo:
    angles = [0, 90, 180, 270]
    fields = dict(
        dataset="mnist",
        image=schemas.ImageSpec(height=28, width=28, channels=1, format="png"),
        angles_degrees=angles,
        splits={
            "train": schemas.SplitInfo(
                num_images=3,
                num_records=12,
                shards=[
                    schemas.ShardInfo(sharding.shard_name("train", 0, 2), 5, 500, "a" * 64),
                    schemas.ShardInfo(sharding.shard_name("train", 1, 2), 7, 700, "b" * 64),
                ],
            ),
            "validation": schemas.SplitInfo(
                num_images=1,
                num_records=4,
                shards=[schemas.ShardInfo(sharding.shard_name("validation", 0, 1), 4, 40, "c" * 64)],
            ),
        },
        num_images_read=5,
        num_errors=1,
        error_files=["errors-00000-of-00001.jsonl"],
        config={"image_size": 28, "angles": "all"},
    )
    fields.update(overrides)
    return schemas.DatasetInfo(**fields)


def test_round_trip_through_a_directory(tmp_path: Path) -> None:
    info = make_info()
    path = schemas.write_manifest(str(tmp_path), info)
    assert Path(path).name == schemas.MANIFEST_NAME
    assert not list(tmp_path.glob(".tmp-*")), "temporary file left behind"
    umask = os.umask(0o022)
    try:
        schemas.write_manifest(str(tmp_path), info)
    finally:
        os.umask(umask)
    assert Path(path).stat().st_mode & 0o777 == 0o644, "readable by others, like the shards"
    loaded = schemas.load_manifest(str(tmp_path))
    assert loaded == info
    assert loaded.num_records == 16
    assert loaded.splits["train"].num_bytes == 1200
    assert loaded.shard_paths(str(tmp_path), "train")[1] == str(tmp_path / "train-00001-of-00002.tfrecord")
    with pytest.raises(schemas.ManifestError, match="split 'test' not in this dataset"):
        loaded.shard_paths(str(tmp_path), "test")


def test_missing_manifest_says_the_pipeline_did_not_finish(tmp_path: Path) -> None:
    with pytest.raises(schemas.ManifestError, match="did not finish"):
        schemas.load_manifest(str(tmp_path))


def test_schema_version_mismatch_says_what_to_do(tmp_path: Path) -> None:
    data = json.loads(make_info().to_json())
    data["schema_version"] = schemas.SCHEMA_VERSION + 1
    (tmp_path / schemas.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(
        schemas.ManifestError, match=rf"schema_version {schemas.SCHEMA_VERSION + 1} .* re-run rotnet-pipeline"
    ):
        schemas.load_manifest(str(tmp_path))
    data["schema_version"] = 1  # rotnet 0.1's records directories
    (tmp_path / schemas.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(schemas.ManifestError, match=r"written by rotnet 0.1 .* re-run rotnet-pipeline"):
        schemas.load_manifest(str(tmp_path))
    del data["schema_version"]
    (tmp_path / schemas.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(schemas.ManifestError, match="no schema_version"):
        schemas.load_manifest(str(tmp_path))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["splits"]["train"].update(num_records=13), "13 records but 3 images x 4 angles"),
        (lambda d: d["splits"]["train"]["shards"][0].update(num_records=4), "shards hold 11 records"),
        (lambda d: d.update(num_images_read=9), "9 images read but 4 written"),
        (lambda d: d["splits"]["train"]["shards"][0].update(name="x.tfrecord"), "shard names"),
        (lambda d: d.update(angles_degrees=[0, 0, 1, 2]), "duplicates"),
        (lambda d: d.update(angles_degrees=[0, 90, 180, 360]), "0..359"),
        (lambda d: d.update(dataset="CIFAR 10"), "dataset 'CIFAR 10'"),
        (lambda d: d["image"].update(format="gif"), "image format 'gif'"),
        (lambda d: d.pop("splits"), "field splits is missing"),
    ],
)
def test_inconsistent_manifests_are_refused(mutate, message: str) -> None:
    data = json.loads(make_info().to_json())
    mutate(data)
    with pytest.raises(schemas.ManifestError, match=message):
        schemas.DatasetInfo.from_json(json.dumps(data))


def test_not_json_is_refused() -> None:
    with pytest.raises(schemas.ManifestError, match="not valid JSON"):
        schemas.DatasetInfo.from_json("{oops")


def test_write_refuses_an_inconsistent_manifest(tmp_path: Path) -> None:
    with pytest.raises(schemas.ManifestError):
        schemas.write_manifest(str(tmp_path), make_info(num_images_read=1))
    assert not (tmp_path / schemas.MANIFEST_NAME).exists()


def test_shard_names_have_one_spelling() -> None:
    assert sharding.shard_name("train", 3, 10) == "train-00003-of-00010.tfrecord"
    assert sharding.shard_name("train", 3, 10, "gzip") == "train-00003-of-00010.tfrecord.gz"
    parsed = sharding.parse_shard_name("validation-00001-of-00002.tfrecord.gz")
    assert parsed == sharding.ShardName("validation", 1, 2, "gzip")
    assert sharding.parse_shard_name("dataset_info.json") is None
    with pytest.raises(ValueError, match="out of range"):
        sharding.shard_name("train", 10, 10)
    with pytest.raises(ValueError, match="compression"):
        sharding.shard_name("train", 0, 1, "zstd")
    assert sharding.errors_name() == "errors-00000-of-00001.jsonl"


def test_shard_membership_and_record_order_are_stable_hashes() -> None:
    # Golden values pin the hashes: changing them would make reruns write other shards than old runs.
    assert [sharding.shard_index("mnist", f"{i:05d}", 8) for i in range(8)] == GOLDEN_SHARDS
    assert sharding.record_order_key("mnist/train/00042/007").hex() == GOLDEN_ORDER_KEY
    # Spread: 10,000 ids over 8 shards, each shard within 15% of the mean.
    counts = [0] * 8
    for index in range(10_000):
        counts[sharding.shard_index("street_view", f"{index}_1", 8)] += 1
    assert max(counts) < 1.15 * 1250 and min(counts) > 0.85 * 1250
    # The order key depends on the record alone, so any two records keep their order in every shard.
    keys = [f"mnist/train/{i:05d}/{a:03d}" for i in range(50) for a in (0, 90, 180)]
    order = sorted(keys, key=sharding.record_order_key)
    assert order == sorted(reversed(keys), key=sharding.record_order_key)
    assert order != keys and order[:3] != keys[:3]
    # The shard writer's batch forms: the same keys and order keys, one call per image.
    assert sharding.record_order_keys(keys) == [sharding.record_order_key(key) for key in keys]
    angles = [0, 7, 90, 359, 360, 1234]  # past 359: example_key's own spelling
    assert schemas.example_keys("mnist", "train", "00042", angles) == [
        schemas.example_key("mnist", "train", "00042", angle) for angle in angles
    ]
