"""The records pipeline through Beam: Street View rotations per core vs the naive chain, MNIST 5k x 360.

    rotnet-bench pipeline            # full size (~5-10 minutes on 2 cores)
    rotnet-bench pipeline --quick    # smoke run

* Street View: the 10 real samples (each copied under 20 placemark names in full mode, so that Beam's
  fixed start-up cost is spread over 200 images) through `rotnet-pipeline`'s job with one in-process
  worker (one core), 224 px JPEG q95, all 360 angles: records/s/core from decoding to renamed shards.
  In the same run, the naive chain on one core: decode, rotate at full resolution, crop, resize, encode,
  serialize (RotNet's approach), per rotation. Targets: >= 10x and >= 2,000 records/s/core.
* MNIST: the 5,000-digit subset x 360 angles through the local runner with 2 worker processes:
  records/s and the time extrapolated to the full 70,000 digits (target <= 15 minutes on 2 cores).
* Shard sizes and bytes per record for both, from the manifests.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import cv2

import schemas
from benchmarks.common import best_of, shared_data_dir, street_view_samples
from pipeline import codec, geometry, job, transforms
from pipeline.config import PipelineConfig
from pipeline.datasets.common import SourceImage
from schemas import tfrecord_file

IMAGE_SIZE = 224
JPEG_QUALITY = 95
FULL_MNIST_IMAGES = 70_000


def run(quick: bool = False) -> str:
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    cv2.setNumThreads(1)
    scratch = Path(tempfile.mkdtemp(prefix="rotnet-bench-pipeline-"))
    try:
        street = _street_view(scratch, quick)
        mnist = _mnist(scratch, quick)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    note = ["_Quick run: few images, so Beam's start-up (~3-6 s) dominates every rate below._", ""]
    return "\n".join([*(note if quick else []), *street, "", *mnist])


def _street_view(scratch: Path, quick: bool) -> list[str]:
    samples = street_view_samples()
    copies = 1 if quick else 20
    source_dir = scratch / "street_view"
    source_dir.mkdir()
    for copy in range(copies):
        for sample in samples:
            placemark, view = sample.stem.split("_")
            shutil.copy(sample, source_dir / f"{placemark}c{copy}_{view}.jpg")
    angles = tuple(range(0, 360, 8 if quick else 1))
    config = PipelineConfig(
        dataset="street_view",
        output_dir=str(scratch / "street_view_records"),
        street_view_dir=str(source_dir),
        angles_degrees=angles,
    )
    summary = job.run(config, ["--direct_num_workers", "1"], show_progress=False, log=lambda line: None)
    beam_rate = summary.num_records / summary.wall_seconds

    # The naive chain on the same photos, per rotation, on this one core.
    reference_angles = list(range(0, 360, 90 if quick else 15))
    encoded = [path.read_bytes() for path in samples]
    template = schemas.Record(b"", "jpeg", IMAGE_SIZE, IMAGE_SIZE, 3, 0, "street_view", "train", "x")

    def reference() -> None:
        for data in encoded:
            image = codec.decode_source_image(data)  # once per image, as the pipeline does
            for angle in reference_angles:
                rotated = geometry.reference_chain(image, angle, IMAGE_SIZE)
                image_bytes = codec.encode_image(rotated, "jpeg", JPEG_QUALITY)
                schemas.encode_example(
                    dataclasses.replace(template, image_encoded=image_bytes, angle_degrees=angle)
                )

    reference_rate = len(encoded) * len(reference_angles) / best_of(1, reference)

    # The pipeline's own per-image work without Beam: decode, prepare, every angle, serialize, frame.
    resolved = config.resolved()

    def without_beam() -> None:
        for index, data in enumerate(encoded):
            pixels = codec.decode_source_image(data)
            image = SourceImage("street_view", "train", f"{index}_1", pixels=pixels)
            for record in transforms.rotation_records(transforms.prepare(image, resolved), resolved):
                tfrecord_file.frame_record(record)

    core_rate = len(encoded) * len(angles) / best_of(1, without_beam)
    return [
        f"Street View: {summary.info.num_images_read} images ({len(samples)} real samples"
        + (f" x {copies} names" if copies > 1 else "")
        + f"), {len(angles)} angles, {IMAGE_SIZE} px JPEG q{JPEG_QUALITY}, one in-process Beam worker (one core).",
        "",
        "| chain | records/s/core | vs naive |",
        "|---|---:|---:|",
        f"| naive: decode once, then per angle rotate full-res, crop, resize, encode, serialize | "
        f"{reference_rate:,.0f} | 1.0x |",
        f"| the pipeline's chain without Beam (decode, prepare once, warp + encode + serialize per angle) | "
        f"{core_rate:,.0f} | {core_rate / reference_rate:.1f}x |",
        f"| rotnet-pipeline through Beam (decode .. renamed shards, wall incl. start-up) | {beam_rate:,.0f} | "
        f"{beam_rate / reference_rate:.1f}x |",
        "",
        "Targets: >= 10x and >= 2,000 records/s/core. " + _shards_line(summary.info, summary.output_dir),
    ]


def _mnist(scratch: Path, quick: bool) -> list[str]:
    mnist_dir = shared_data_dir() / "mnist-5k"
    angles = tuple(range(0, 360, 10 if quick else 1))
    config = PipelineConfig(
        dataset="mnist",
        output_dir=str(scratch / "mnist_records"),
        mnist_dir=str(mnist_dir),
        angles_degrees=angles,
        subset_fraction=0.2 if quick else 1.0,
    )
    started = time.perf_counter()
    summary = job.run(config, ["--direct_num_workers", "2"], show_progress=False, log=lambda line: None)
    wall = time.perf_counter() - started
    rate = summary.num_records / summary.wall_seconds
    full_minutes = FULL_MNIST_IMAGES * 360 / rate / 60
    info = summary.info
    return [
        f"MNIST: {info.num_images_read:,} digits of the 5k subset x {len(angles)} angles, 28 px PNG, "
        "local runner with 2 worker processes.",
        "",
        "| records | wall (job) | records/s | full MNIST (70,000 x 360) extrapolated |",
        "|---:|---:|---:|---:|",
        f"| {info.num_records:,} | {summary.wall_seconds:.1f} s (launcher {wall:.1f} s) | {rate:,.0f} | "
        f"{full_minutes:.1f} min |",
        "",
        "Target: full MNIST in <= 15 minutes on 2 cores. " + _shards_line(info, summary.output_dir),
    ]


def _shards_line(info: schemas.DatasetInfo, directory: str) -> str:
    sizes = [shard.num_bytes for split in info.splits.values() for shard in split.shards]
    per_record = sum(sizes) / max(info.num_records, 1)
    return (
        f"Shards: {len(sizes)}, {min(sizes) / 1e6:.1f}-{max(sizes) / 1e6:.1f} MB each "
        f"({sum(sizes) / 1e6:.1f} MB in all), {per_record:,.0f} bytes/record."
    )
