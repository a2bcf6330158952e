"""`rotnet-pipeline` end to end on the real sample data, without internet.

MNIST through the download path (the IDX files served from 127.0.0.1) and through an offline
directory, one and two workers, must write the same records; Street View from zip parts served over
HTTP drops views 0 and 5. Every record is compared with the geometry core.

    .venv/bin/python -m pytest tests/test_pipeline_e2e.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import schemas
from pipeline import codec, geometry, local_writer
from pipeline.config import PipelineConfig
from pipeline.datasets import mnist
from schemas import sharding, splits
from tests.helpers import file_sha256
from tests.pipeline_helpers import (
    LOCAL_ONE_WORKER,
    build_street_view_parts,
    content_hash,
    expected_picture,
    expected_records,
    md5,
    mnist_subset,
    read_records,
    run_cli,
    serialized_records,
    write_idx,
)

pytestmark = pytest.mark.slow

ANGLES = "0,90,180,270"
SUBSET = 0.04  # ~200 of the 5,000 digits


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def test_mnist_download_and_offline_dir_write_the_same_records(
    tmp_path: Path, shared_data: Path, http_server: tuple[str, Path]
) -> None:
    base_url, www = http_server
    offline = shared_data / "mnist-5k"
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(offline / name, www / name)
    # The 5k subset has no t10k files: serve the first 100 digits as the test split.
    images, labels = mnist.load_split(
        (offline / "train-images-idx3-ubyte.gz").read_bytes(),
        (offline / "train-labels-idx1-ubyte.gz").read_bytes(),
    )
    write_idx(www / "t10k-images-idx3-ubyte.gz", images[:100])
    write_idx(www / "t10k-labels-idx1-ubyte.gz", labels[:100])
    checksums = tmp_path / "checksums.json"
    checksums.write_text(json.dumps({name: md5(www / name) for name in mnist.MNIST_FILES}))

    downloaded = tmp_path / "downloaded"
    result = run_cli(
        "--dataset", "mnist", "--output-dir", str(downloaded), "--mnist-mirror", f"{base_url}/",
        "--mnist-checksums", str(checksums), "--download-dir", str(tmp_path / "cache"),
        "--subset-fraction", str(SUBSET), "--angles", ANGLES, *LOCAL_ONE_WORKER,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (tmp_path / "cache").glob("*.gz")) == sorted(mnist.MNIST_FILES)

    train = mnist_subset(
        offline / "train-images-idx3-ubyte.gz", offline / "train-labels-idx1-ubyte.gz", SUBSET
    )
    test = mnist_subset(
        www / "t10k-images-idx3-ubyte.gz", www / "t10k-labels-idx1-ubyte.gz", SUBSET, split="test"
    )
    info = schemas.load_manifest(str(downloaded))
    counts = {split: sum(1 for _, s, _ in train.values() if s == split) for split in ("train", "validation")}
    counts["test"] = len(test)
    assert {name: split.num_images for name, split in info.splits.items()} == counts
    assert counts["train"] > 150 and counts["validation"] > 5 and counts["test"] >= 1
    assert info.num_images_read == len(train) + len(test) and info.num_errors == 0
    assert info.image == schemas.ImageSpec(28, 28, 1, "png")
    assert info.angles_degrees == [0, 90, 180, 270]
    assert "images read" in result.output and "records/s" in result.output

    # Every record is what the geometry core makes of its digit and key (PNG: exactly), with its label.
    config = PipelineConfig(dataset="mnist", output_dir="-", angles_degrees=(0, 90, 180, 270)).resolved()
    records = read_records(downloaded)
    assert len(records) == info.num_records == 4 * (len(train) + len(test))
    sources = {("test" if r.split == "test" else "train", r.image_id) for r in records}
    assert len(sources) == len(train) + len(test)
    for record in records:
        pixels, split, label = (test if record.split == "test" else train)[record.image_id]
        assert (record.split, record.label, record.dataset) == (split, label, "mnist")
        expected = expected_picture(pixels, record.key, record.angle_degrees, config)
        np.testing.assert_array_equal(codec.decode_record_image(record), expected)
        # Angle-independent: a right angle is resampled like any other, not an exact turned copy.
        picture = codec.decode_record_image(record).astype(float).ravel()
        turned = np.rot90(pixels, record.angle_degrees // 90).astype(float).ravel()
        assert not np.array_equal(picture, turned)
        assert np.corrcoef(picture, turned)[0, 1] > 0.75  # but the same digit, turned (measured >= 0.83)
    expected = expected_records(train, config) + expected_records(test, config)
    assert content_hash(serialized_records(downloaded)) == content_hash(expected)

    # The offline copy (train only) with two worker processes writes the same train/validation records.
    offline_out = tmp_path / "offline"
    result = run_cli(
        "--dataset", "mnist", "--output-dir", str(offline_out), "--mnist-dir", str(offline),
        "--subset-fraction", str(SUBSET), "--angles", ANGLES, "--direct_num_workers", "2", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "found train (5,000 images); missing test" in result.output
    offline_info = schemas.load_manifest(str(offline_out))
    assert sorted(offline_info.splits) == ["train", "validation"]
    assert offline_info.config["mnist_dir"] == str(offline)
    downloaded_train = [
        r for r in serialized_records(downloaded) if schemas.decode_example(r).split != "test"
    ]
    assert content_hash(serialized_records(offline_out)) == content_hash(downloaded_train)


def test_street_view_parts_over_http_drop_views_0_and_5(
    tmp_path: Path, shared_data: Path, http_server: tuple[str, Path]
) -> None:
    base_url, www = http_server
    samples = sorted((shared_data / "street-view-samples").glob("*.jpg"))
    expected = build_street_view_parts(samples, www)
    angles = (0, 45, 90, 180)
    output = tmp_path / "street_view"
    result = run_cli(
        "--dataset", "street_view", "--output-dir", str(output), "--street-view-mirror", base_url,
        "--download-dir", str(tmp_path / "cache"), "--angles", ",".join(map(str, angles)),
        "--image-size", "48", *LOCAL_ONE_WORKER,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "cache").glob("part*.zip"))) == 10
    assert f"views dropped {expected['views_dropped']}" in result.output
    assert f"non-image files skipped {expected['skipped']}" in result.output

    info = schemas.load_manifest(str(output))
    assert info.num_images_read == expected["kept"] == 10 and info.num_errors == 0
    assert info.image == schemas.ImageSpec(48, 48, 3, "jpeg")
    assert info.config["crop_largest_rect"] is True
    records = read_records(output)
    assert len(records) == 10 * len(angles)
    assert {r.image_id for r in records} == {path.stem for path in samples}  # no _0 / _5 view
    assert all(r.split == splits.assign_split(r.image_id, 0.1) and r.label == -1 for r in records)
    assert {name for name in info.splits} <= {"train", "validation"}
    for name, split in info.splits.items():
        assert [shard.name for shard in split.shards] == sharding.shard_names(name, len(split.shards))
    pixels = {path.stem: codec.decode_source_image(path.read_bytes()) for path in samples}
    config = PipelineConfig(
        dataset="street_view", output_dir="-", image_size=48, angles_degrees=angles
    ).resolved()
    for record in records:
        expected_image = expected_picture(pixels[record.image_id], record.key, record.angle_degrees, config)
        # The same picture, JPEG q95: close to the geometry output, and byte-identical to encoding it.
        assert psnr(codec.decode_record_image(record), expected_image) > 30
        assert record.image_encoded == codec.encode_image(expected_image, "jpeg", 95)
        # ... and to rotnet's reference chain (full resolution, the constant crop scale's rectangle).
        reference = geometry.reference_chain(pixels[record.image_id], record.angle_degrees, 48)
        if record.angle_degrees in (0, 90, 180, 270):
            continue  # the constant scale crops 0 degrees tighter than its own largest rectangle
        assert psnr(expected_image, reference) > 20


def test_one_and_two_workers_and_the_local_writer_write_byte_identical_shards(
    tmp_path: Path, shared_data: Path
) -> None:
    """Shard membership and order are stable hashes: reruns give the same files, whatever the workers."""
    offline = shared_data / "mnist-5k"
    arguments = [
        "--dataset", "mnist", "--mnist-dir", str(offline), "--subset-fraction", "0.02",
        "--angles", "0-359:45", "--num-shards", "3", "--no-progress",
    ]  # fmt: skip
    runs = {"one": ["--direct_num_workers", "1"], "two": ["--direct_num_workers", "2"]}
    for name, workers in runs.items():
        result = run_cli(*arguments, "--output-dir", str(tmp_path / name), *workers)
        assert result.exit_code == 0, result.output
    one, two = (schemas.load_manifest(str(tmp_path / name)) for name in runs)
    assert one.splits == two.splits  # names, counts, sizes and SHA-256s
    for split in one.splits.values():
        for shard in split.shards:
            assert (tmp_path / "one" / shard.name).read_bytes() == (
                tmp_path / "two" / shard.name
            ).read_bytes()
            assert file_sha256(str(tmp_path / "one" / shard.name)) == shard.sha256
    assert (tmp_path / "one" / one.error_files[0]).read_bytes() == (
        tmp_path / "two" / two.error_files[0]
    ).read_bytes()

    # The in-process writer of fixtures and benchmarks writes the same files for the same digits.
    digits = mnist_subset(
        offline / "train-images-idx3-ubyte.gz", offline / "train-labels-idx1-ubyte.gz", 0.02
    )
    by_split: dict[str, list] = {}
    for image_id, (pixels, split, label) in sorted(digits.items()):
        by_split.setdefault(split, []).append((image_id, pixels, label))
    local = local_writer.write_rotations(
        tmp_path / "local", by_split, dataset="mnist", angles=range(0, 360, 45), image_size=28,
        crop_largest_rect=False, num_shards=3,
    )  # fmt: skip
    assert {name: split.shards for name, split in local.splits.items()} == {
        name: split.shards for name, split in one.splits.items()
    }
