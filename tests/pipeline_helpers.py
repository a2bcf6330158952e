"""Helpers shared by the pipeline tests: build inputs (IDX files, zip parts, bad images), read outputs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from click.testing import CliRunner, Result
from PIL import Image

import schemas
from pipeline import codec, geometry
from pipeline.config import PipelineConfig
from pipeline.datasets import mnist
from schemas import sharding, tfrecord_file

# A tiny, fast local run: one in-process worker (no worker processes to start).
LOCAL_ONE_WORKER = ["--direct_num_workers", "1", "--no-progress"]


def run_cli(*args: str) -> Result:
    """rotnet-pipeline in this process (CliRunner); exceptions propagate unless they are click's."""
    from pipeline.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def in_process_pipeline() -> BeamTestPipeline:
    """A Beam test pipeline on the FnApiRunner in this process (the DirectRunner would first try to
    download the Prism runner)."""
    return BeamTestPipeline(runner=fn_runner.FnApiRunner())


def digit(index: int) -> np.ndarray:
    """A small synthetic 28 x 28 x 1 'digit' (two strokes), different for each index mod 15."""
    image = np.zeros((28, 28, 1), np.uint8)
    image[4 + index % 5 : 22, 12:16] = 255
    image[18:22, 6 + index % 3 : 22] = 180
    return image


def read_records(directory: Path | str) -> list[schemas.Record]:
    """Every record of every shard the manifest lists, CRC-checked."""
    info = schemas.load_manifest(str(directory))
    records = []
    for split in info.splits:
        for path in info.shard_paths(str(directory), split):
            records += [
                schemas.decode_example(data) for data in tfrecord_file.iter_records(path, verify=True)
            ]
    return records


def serialized_records(directory: Path | str) -> list[bytes]:
    info = schemas.load_manifest(str(directory))
    return [
        data
        for split in info.splits
        for path in info.shard_paths(str(directory), split)
        for data in tfrecord_file.iter_records(path, verify=True)
    ]


def content_hash(serialized: Iterable[bytes]) -> str:
    """Order-independent hash of a set of serialized records (the bytes are deterministic)."""
    digest = hashlib.sha256()
    for data in sorted(serialized):
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def error_entries(directory: Path | str) -> list[dict]:
    entries = []
    path = Path(directory) / sharding.errors_name()
    if path.exists():
        entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return entries


def expected_picture(pixels: np.ndarray, key: str, angle: int, config: PipelineConfig) -> np.ndarray:
    """The picture of one record, straight from the geometry core (not the code under test): the square
    the pipeline crops, the angle-independent rendering prepared for the whole angle set, the record's
    jitter from its key; rotnet 0.1's warp for --rendering legacy."""
    square = geometry.crop_square(pixels, config.crop_position) if config.center_crop else pixels
    square = np.ascontiguousarray(square)
    if config.rendering == "legacy":
        source = geometry.prepare_source(
            square, config.image_size, config.angles_degrees, False, config.crop_largest_rect
        )
        return geometry.fast_rotation(source, angle, config.image_size)
    source = geometry.prepare_render_source(
        square, config.image_size, config.angles_degrees, False, config.crop_largest_rect, config.crop_scale
    )
    return geometry.render(source, angle, config.image_size, geometry.record_jitter(key, config.resampling))


def expected_records(images: dict[str, tuple[np.ndarray, str, int]], config: PipelineConfig) -> list[bytes]:
    """What the pipeline must write for {image_id: (HWC pixels, split, label)}, built without the code
    under test (transforms, rotations, the fast example encoder): `expected_picture` of each angle,
    encoded by codec and serialized by the reference `schemas.encode_example`."""
    config = config.resolved()
    out = []
    for image_id, (pixels, split, label) in images.items():
        for angle in config.angles_degrees:
            key = schemas.example_key(config.dataset, split, image_id, angle)
            picture = expected_picture(pixels, key, angle, config)
            record = schemas.Record(
                image_encoded=codec.encode_image(picture, config.image_format, config.jpeg_quality),
                image_format=config.image_format,
                height=config.image_size,
                width=config.image_size,
                channels=config.channels,
                angle_degrees=angle,
                dataset=config.dataset,
                split=split,
                image_id=image_id,
                label=label,
            )
            out.append(schemas.encode_example(record))
    return out


def mnist_subset(
    images_path: Path,
    labels_path: Path,
    fraction: float,
    validation_fraction: float = 0.1,
    split: str = "train",
) -> dict[str, tuple[np.ndarray, str, int]]:
    """The images a run with --subset-fraction keeps from one IDX split, with their output split."""
    images, labels = mnist.load_split(images_path.read_bytes(), labels_path.read_bytes())
    kept = {}
    for index in range(len(images)):
        image_id = mnist.image_id(index)
        if fraction < 1.0 and not schemas.in_subset(image_id, fraction):
            continue
        out_split = schemas.assign_split(image_id, validation_fraction) if split == "train" else split
        kept[image_id] = (images[index][:, :, None], out_split, int(labels[index]))
    return kept


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file (gzip) as MNIST publishes them: images (N, 28, 28) or labels (N,), uint8."""
    magic = mnist.IMAGES_MAGIC if array.ndim == 3 else mnist.LABELS_MAGIC
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, np.uint8).tobytes()))
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def build_street_view_parts(samples: list[Path], directory: Path) -> dict[str, int]:
    """part1.zip .. part10.zip from the real samples (one or two per part) plus members to drop.

    part1 also holds a view-0 and a view-5 copy of its sample, a text file and a macOS resource fork.
    Returns the expected tallies.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(1, 11):
        with zipfile.ZipFile(directory / f"part{number}.zip", "w", zipfile.ZIP_STORED) as archive:
            for sample in samples[number - 1 :: 10]:
                archive.write(sample, f"images/{sample.name}")
            if number == 1:
                placemark = samples[0].name.split("_")[0]
                archive.write(samples[0], f"images/{placemark}_0.jpg")
                archive.write(samples[0], f"images/{placemark}_5.jpg")
                archive.writestr("images/readme.txt", "not an image")
                archive.writestr(f"__MACOSX/images/._{samples[0].name}", b"\x00\x05\x16\x07")
    return {"kept": len(samples), "views_dropped": 2, "skipped": 2}


# --- Bad and unusual inputs --------------------------------------------


def _encode(image: Image.Image, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid ~100-byte PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def reliability_inputs(directory: Path, photo: Path) -> dict[str, str | None]:
    """Write the bad and unusual inputs into `directory`.

    Returns {file name: None if it must become records, else a word its error reason must contain}.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(photo).convert("RGB").resize((96, 72))
    jpeg = _encode(rgb, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    files: dict[str, tuple[bytes, str | None]] = {
        "good.jpg": (jpeg, None),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "zero_bytes.jpg": (b"", "empty"),
        "not_an_image.png": (b"this is a text file, not a PNG\n" * 10, "not an image"),
        "cmyk.jpg": (_encode(rgb.convert("CMYK"), "JPEG", quality=90), None),
        "sixteen_bit.png": (
            _encode(Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257), "PNG"),
            None,
        ),
        "rgba.png": (_encode(rgb.convert("RGBA"), "PNG"), None),
        "palette.gif": (_encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), None),
        "one_pixel.png": (
            _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
            "smaller than the minimum",
        ),
        "bomb.png": (bomb_png(), "bomb"),
        "exif_rotated.jpg": (_encode(rgb, "JPEG", quality=90, exif=exif), None),
        "grey.jpg": (_encode(rgb.convert("L"), "JPEG", quality=90), None),
    }
    for name, (data, _) in files.items():
        (directory / name).write_bytes(data)
    (directory / "notes.txt").write_text("not an image by name: skipped and counted")
    return {name: reason for name, (_, reason) in files.items()}
