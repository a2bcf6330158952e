"""MNIST: four IDX files (gzip) with official MD5s, downloaded inside the job or read from an offline copy.

    rotnet-pipeline --dataset mnist --output-dir data/records/mnist                          # download
    rotnet-pipeline --dataset mnist --mnist-dir ../shared/data/mnist-5k --output-dir data/records/mnist5k

Everything about MNIST lives here: the files, checksums and mirrors; the pure IDX reader (`read_idx`,
`load_split`); where the files come from (`download_file` inside the job, `find_offline_files` for
an offline copy); which digits a run keeps (`select_digits`, shared by the Beam read, the in-process
writer and `source_images`); the plan (`plan`: splits and expected counts), the Beam read (`ReadMnist`)
and the source images of a split for the robustness evaluation (`source_images`).

* Splits are MNIST's own: train (60,000 images) and test (10,000). Train is split into train and
  validation by a stable hash of the image id, never by position (an offline subset may be sorted by
  label, as ../shared/data/mnist-5k is); t10k becomes test.
* Images are (N, 28, 28) uint8, 0 = background (black), 255 = ink; labels are (N,) uint8 digits 0-9.
* Image ids are the index within the split file, zero-padded ("00042"): stable on every machine.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np

from pipeline import progress
from pipeline.config import JobError, PipelineConfig
from pipeline.datasets import Setting
from pipeline.datasets.common import (
    ERRORS,
    CountingDoFn,
    SourceImage,
    SourcePlan,
    manifest_setting,
    read_bounded_file,
    train_and_validation,
)
from pipeline.inputs import InputFileError, read_input_file
from schemas.splits import assign_split, in_subset

# RotNet's setup: 28 px grey, lossless PNG, no largest-rect crop (the black background hides the
# rotated corners; cropping and resizing back to 28 px would zoom a 45-degree digit by sqrt(2)).
DEFAULTS = {"image_size": 28, "image_format": "png", "channels": 1, "crop_largest_rect": False}

logger = logging.getLogger(__name__)

# The official file names and MD5 checksums (as in torchvision.datasets.MNIST.resources). The files
# themselves are identical on every mirror; SHA-256 is not published, so MD5 is what is verified.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# MNIST's own splits: (images file, labels file).
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Image counts of the full release, for progress bars and sanity messages (an offline subset has fewer).
SPLIT_SIZES: dict[str, int] = {"train": 60_000, "test": 10_000}

# Tried in order. PyTorch's S3 copy (torchvision's mirror since yann.lecun.com began refusing
# automated downloads), the CVDF copy on GCS (TensorFlow Datasets' source), then the original site.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

IMAGE_SIZE = 28
SOURCE_SIDE = IMAGE_SIZE  # every source digit's side: --image-size is capped at MAX_UPSCALE times it
NUM_CLASSES = 10

# A checksums file is a few hundred bytes; anything far larger is not one.
MAX_CHECKSUMS_FILE_BYTES = 64 << 10
_HEX_DIGEST = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{64})$")


def read_checksums(path: str) -> dict[str, str]:
    """--mnist-checksums: a JSON file {"train-images-idx3-ubyte.gz": "<md5 or sha256 hex>", ...}
    (official file names only), as {name: lower-case digest}; ValueError saying what is wrong."""
    if not os.path.lexists(path):
        raise ValueError(f"{path} does not exist")
    try:
        data = json.loads(read_input_file(path, MAX_CHECKSUMS_FILE_BYTES))
    except (OSError, InputFileError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected {{"file name": "md5 or sha256 hex"}}')
    for name, digest in data.items():
        if name not in MNIST_FILES:
            raise ValueError(f"{path}: {name!r} is not an MNIST file ({', '.join(MNIST_FILES)})")
        if not isinstance(digest, str) or not _HEX_DIGEST.match(digest.lower()):
            raise ValueError(f"{path}: the digest of {name} must be 32 (md5) or 64 (sha256) hex digits")
    return {name: digest.lower() for name, digest in data.items()}


SETTINGS = (
    Setting(
        "mnist_dir",
        "--mnist-dir",
        "Local directory with MNIST's IDX files (.gz or not); only the splits whose two files are "
        "there are written. Default: download them inside the job.",
        metavar="DIR",
        envvar="ROTNET_MNIST_DIR",
        location="directory",
        launcher_only=True,  # plan() reads it here to count the images
        remote_hint="leave it out so that the workers download MNIST (--mnist-mirror for another source)",
    ),
    Setting(
        "mnist_mirrors",
        "--mnist-mirror",
        "Base URL holding the four MNIST .gz files, tried in order (repeatable); replaces the built-in list.",
        default=(),
        metavar="URL",
        multiple=True,
    ),
    Setting(
        "mnist_checksums",
        "--mnist-checksums",
        'JSON file {"train-images-idx3-ubyte.gz": "<md5 or sha256>", ...} replacing the official '
        "digests (for a mirror serving other files under the same names).",
        metavar="FILE",
        parse=read_checksums,
    ),
)

# IDX magic numbers: two zero bytes, a type byte (0x08 = unsigned byte) and the number of dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_UNSIGNED_BYTE = 0x08
_GZIP_SIGNATURE = b"\x1f\x8b"


def read_idx(data: bytes) -> np.ndarray:
    """Parse an IDX file's bytes (gzip-compressed or raw) into a uint8 array.

    Accepts the two layouts MNIST uses: images (magic 0x00000803, shape (N, rows, cols)) and labels
    (magic 0x00000801, shape (N,)). Raises ValueError saying what is wrong: bad gzip stream, unknown
    magic, a type other than unsigned byte, or a payload whose length does not match the header.
    """
    if data[:2] == _GZIP_SIGNATURE:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"corrupt or truncated gzip stream ({error})") from None
    if len(data) < 4:
        raise ValueError(f"not an IDX file: {len(data)} bytes, shorter than the 4-byte magic number")
    (magic,) = struct.unpack(">I", data[:4])
    if magic >> 16 != 0:
        raise ValueError(f"not an IDX file: magic number 0x{magic:08x} does not start with two zero bytes")
    type_code, num_dims = (magic >> 8) & 0xFF, magic & 0xFF
    if type_code != _UNSIGNED_BYTE:
        raise ValueError(f"IDX data type 0x{type_code:02x} is not unsigned byte (0x08), as MNIST uses")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise ValueError(
            f"IDX file has {num_dims} dimensions (magic 0x{magic:08x}); expected images "
            f"(0x{IMAGES_MAGIC:08x}, 3 dims) or labels (0x{LABELS_MAGIC:08x}, 1 dim)"
        )
    header_bytes = 4 + 4 * num_dims
    if len(data) < header_bytes:
        raise ValueError(f"truncated IDX header: {len(data)} bytes, the header needs {header_bytes}")
    shape = struct.unpack(f">{num_dims}I", data[4:header_bytes])
    expected = int(np.prod(shape, dtype=np.int64))
    payload = len(data) - header_bytes
    if payload != expected:
        problem = "truncated" if payload < expected else "has trailing bytes"
        raise ValueError(
            f"IDX payload {problem}: header says {'x'.join(map(str, shape))} = {expected:,} bytes, "
            f"file holds {payload:,}"
        )
    # A copy makes the array writable and independent of the (possibly large) decompressed buffer.
    return np.frombuffer(data, dtype=np.uint8, offset=header_bytes).reshape(shape).copy()


def load_split(images_bytes: bytes, labels_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) from one split's two IDX files' bytes.

    Raises ValueError when a file is of the wrong kind, images are not 28x28, the counts differ or a
    label is not a digit.
    """
    images = read_idx(images_bytes)
    labels = read_idx(labels_bytes)
    if images.ndim != 3:
        raise ValueError(f"the images file holds a {images.ndim}-dimensional array; expected (N, 28, 28)")
    if labels.ndim != 1:
        raise ValueError(f"the labels file holds a {labels.ndim}-dimensional array; expected (N,)")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"MNIST images are 28x28, these are {images.shape[1]}x{images.shape[2]}")
    if len(images) != len(labels):
        raise ValueError(
            f"{len(images):,} images but {len(labels):,} labels; the files are from different sets"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"label {int(labels.max())} is not a digit 0-9")
    return images, labels


def image_id(index: int) -> str:
    """Stable id of the image at `index` within its split file: zero-padded to 5 digits ("00042")."""
    if index < 0:
        raise ValueError(f"image index {index} is negative")
    return f"{index:05d}"


def mnist_urls(file_name: str, mirrors: Sequence[str] = MNIST_MIRRORS) -> list[str]:
    """The url of `file_name` on each mirror, in order (mirrors are base urls ending with or without '/')."""
    if file_name not in MNIST_FILES:
        raise ValueError(f"{file_name!r} is not an MNIST file; expected one of {sorted(MNIST_FILES)}")
    return [mirror.rstrip("/") + "/" + file_name for mirror in mirrors]


def download_file(
    file_name: str,
    directory: str | os.PathLike,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    checksums: Mapping[str, str] | None = None,
    **fetch_options,
) -> Path:
    """Fetch one MNIST file into `directory` (cached, resumable, verified) and return its path.

    The digest is `checksums[file_name]` when given (32 hex digits = MD5, 64 = SHA-256: for a mirror
    serving other files under the same names, as the tests do), else the official MD5.
    `fetch_options` go to pipeline.download.fetch.
    """
    from pipeline.download import fetch

    digest = (checksums or {}).get(file_name) or MNIST_FILES[file_name]
    algorithm = "sha256" if len(digest) == 64 else "md5"
    urls = mnist_urls(file_name, mirrors)
    return fetch(urls, Path(directory) / file_name, **{algorithm: digest}, **fetch_options)


def find_offline_files(directory: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """{split: (images path, labels path)} for each split whose two files are both in `directory`.

    Accepts the official `.gz` names and the same names un-gzipped (gzip preferred when both exist). A
    directory holding only some files yields only those splits, and a split with one of its two files
    is logged as skipped. Raises FileNotFoundError, listing what was found and what is expected, when
    no split is complete.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST directory {root} does not exist or is not a directory")

    def present(gz_name: str) -> Path | None:
        for name in (gz_name, gz_name.removesuffix(".gz")):
            if (root / name).is_file():
                return root / name
        return None

    found: dict[str, tuple[Path, Path]] = {}
    for split, (images_name, labels_name) in SPLIT_FILES.items():
        images_path, labels_path = present(images_name), present(labels_name)
        if images_path and labels_path:
            found[split] = (images_path, labels_path)
        elif images_path or labels_path:
            missing = labels_name if images_path else images_name
            logger.warning("MNIST %s split skipped: %s has no %s", split, root, missing)
    if not found:
        listing = sorted(path.name for path in root.iterdir())
        expected = "; ".join(f"{split}: {' + '.join(names)}" for split, names in SPLIT_FILES.items())
        raise FileNotFoundError(
            f"no complete MNIST split in {root} (found: {', '.join(listing) or 'nothing'}); "
            f"expected both files of a split, gzipped or not - {expected}"
        )
    return found


def read_offline_split(paths: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    """load_split over the two files `find_offline_files` returned for a split."""
    images_path, labels_path = paths
    return load_split(images_path.read_bytes(), labels_path.read_bytes())


def select_digits(
    images: np.ndarray,
    labels: np.ndarray,
    file_split: str,
    subset_fraction: float,
    validation_fraction: float,
) -> Iterator[tuple[str, str, np.ndarray, int]]:
    """(split, image id, 28 x 28 x 1 uint8 digit, label) of every digit of one MNIST split file that a
    run keeps: ids are the index in the file (`image_id`), the stable `subset_fraction` by
    schemas.splits.in_subset, the train file into train/validation by assign_split, t10k into test."""
    for index in range(len(images)):
        id_ = image_id(index)
        if subset_fraction < 1.0 and not in_subset(id_, subset_fraction):
            continue
        split = assign_split(id_, validation_fraction) if file_split == "train" else file_split
        yield split, id_, images[index][:, :, np.newaxis], int(labels[index])


def offline_digits(
    directory: str | os.PathLike, validation_fraction: float, subset_fraction: float = 1.0
) -> Iterator[tuple[str, str, np.ndarray, int]]:
    """`select_digits` over every complete split of an offline copy (`find_offline_files`)."""
    for file_split, paths in sorted(find_offline_files(directory).items()):
        images, labels = read_offline_split(paths)
        yield from select_digits(images, labels, file_split, subset_fraction, validation_fraction)


def source_images(
    config: Mapping[str, Any], split: str, source_dir: str | None = None, channels: int = 1
) -> list[tuple[str, np.ndarray]]:
    """The digits of `split` that a run with this (manifest) `config` wrote, in file order, from the IDX
    files in `source_dir`, else the config's mnist_dir, else its download_dir. FileNotFoundError says
    where it looked."""
    candidates = [source_dir, config.get("mnist_dir"), config.get("download_dir")]
    directory = next((path for path in candidates if path and os.path.isdir(path)), None)
    if directory is None:
        raise FileNotFoundError(f"the MNIST IDX files are not at {candidates[1] or candidates[2]}")
    digits = offline_digits(
        directory,
        manifest_setting(config, "validation_fraction"),
        manifest_setting(config, "subset_fraction"),
    )
    return [(id_, pixels) for digit_split, id_, pixels, _ in digits if digit_split == split]


# --- The plan and the Beam read -------------------------------------------------------------------


def plan(config: PipelineConfig, progress_dir: str | None) -> SourcePlan:
    """Which MNIST splits will be written and how many images each: an offline copy says what it holds
    (a split missing there is not written, and the note says so); a download has the full release."""
    notes = []
    offline = None
    mnist_dir = config.setting("mnist_dir")
    if mnist_dir:
        try:
            found = find_offline_files(mnist_dir)
        except FileNotFoundError as error:
            raise JobError(str(error)) from None
        offline = {split: (str(images), str(labels)) for split, (images, labels) in found.items()}
        try:
            sizes = {
                split: len(read_idx(read_bounded_file(str(labels), config.max_file_bytes)))
                for split, (_, labels) in found.items()
            }
        except InputFileError as error:
            raise JobError(f"--mnist-dir {mnist_dir}: {error}") from None
        missing = [split for split in SPLIT_FILES if split not in found]
        notes.append(
            f"MNIST offline copy {mnist_dir}: found "
            + ", ".join(f"{split} ({sizes[split]:,} images)" for split in sorted(found))
            + (
                "; missing "
                + ", ".join(f"{split} ({' + '.join(SPLIT_FILES[split])})" for split in missing)
                + ": those splits are not written"
                if missing
                else ""
            )
        )
    else:
        sizes = dict(SPLIT_SIZES)
        mirrors = config.setting("mnist_mirrors") or MNIST_MIRRORS
        notes.append(
            f"MNIST: downloading {len(MNIST_FILES)} IDX files inside the job into {config.download_dir} "
            f"(mirrors: {', '.join(mirrors)})"
        )
    expected: dict[str, float] = {}
    if "train" in sizes:
        expected.update(train_and_validation(config, sizes["train"] * config.subset_fraction))
    if "test" in sizes:
        expected["test"] = sizes["test"] * config.subset_fraction
    # Ids are indices within their split's file (test counted apart): they cannot collide, so
    # --duplicate-ids suffix has nothing to rename and groups no pixels.
    return SourcePlan(ReadMnist(config, offline, progress_dir), expected, notes, renames_duplicate_ids=True)


class _LoadMnistSplitFn(CountingDoFn):
    """(split, images path, labels path) -> one SourceImage per digit; paths None = download them here."""

    def process(self, element: tuple[str, str | None, str | None]) -> Iterator[SourceImage]:
        source_split, images_path, labels_path = element
        config = self.config
        if images_path is None or labels_path is None:
            mirrors = config.setting("mnist_mirrors") or MNIST_MIRRORS
            checksums = config.setting("mnist_checksums") or {}
            images_path, labels_path = (
                str(download_file(name, config.download_dir, mirrors, checksums))
                for name in SPLIT_FILES[source_split]
            )
        # Bounded reads of regular files only: a FIFO or a device named like an IDX file fails the job
        # with the reason instead of blocking it or filling the memory.
        images_bytes = read_bounded_file(images_path, config.max_file_bytes)
        labels_bytes = read_bounded_file(labels_path, config.max_file_bytes)
        images, labels = load_split(images_bytes, labels_bytes)
        read = 0
        digits = select_digits(
            images, labels, source_split, config.subset_fraction, config.validation_fraction
        )
        for split, id_, pixels, label in digits:
            read += 1
            yield SourceImage("mnist", split, id_, label, pixels=pixels)
        self.counters.add(**{progress.IMAGES_READ: read})


class ReadMnist(beam.PTransform):
    """MNIST's IDX files -> SourceImage per digit: train -> train/validation by hash, t10k -> test.

    `offline_files` maps MNIST splits to local (images, labels) paths (`find_offline_files`); None
    downloads the files inside the job, each split on its own worker, into config.download_dir.
    """

    def __init__(
        self,
        config: PipelineConfig,
        offline_files: Mapping[str, tuple[str, str]] | None,
        progress_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.offline_files = offline_files
        self.progress_dir = progress_dir

    def expand(self, pbegin: beam.pvalue.PBegin):
        if self.offline_files is not None:
            files = [(split, str(a), str(b)) for split, (a, b) in sorted(self.offline_files.items())]
        else:
            files = [(split, None, None) for split in SPLIT_FILES]
        images = (
            pbegin
            | "ListFiles" >> beam.Create(files)
            | "OneSplitPerWorker" >> beam.Reshuffle()
            | "LoadSplit" >> beam.ParDo(_LoadMnistSplitFn(self.config, self.progress_dir))
            | "SpreadImages" >> beam.Reshuffle()
        )
        # A bad MNIST file fails the job (its checksum is known); single digits cannot be bad.
        return {"images": images, ERRORS: pbegin | "NoErrors" >> beam.Create([])}
