"""Input pipeline alone: images/s delivered to the model, tf.data on shards vs RotNet's Python generator.

    rotnet-bench input_pipeline            # rotnet-bench input_pipeline --quick --print-only: a smoke run

Two cases, each measured side by side in one run on this machine's cores:

* 224 px JPEG (Street View, ResNet50 input): records of the 10 real Street View samples at every angle
  (written here with the fast chain, JPEG q95, as rotnet-pipeline does), read by
  `trainer.data.training_dataset` (interleave, shuffle, batch 64, parse, decode, caffe preprocessing,
  labels). RotNet's `RotNetDataGenerator` reads each full-resolution JPEG (1281x1025), picks a random
  angle, rotates at full resolution, crops the largest rectangle and resizes (`geometry.reference_chain`),
  then applies `preprocess_input` and one-hot labels - run on as many threads as there are cores (Keras'
  `workers`; OpenCV releases the GIL), and on one.
* 28 px MNIST (the MNIST CNN's input): records of 500 real digits from ../shared/data/mnist-5k at every
  angle (PNG), batch 128, binarized; RotNet's generator rotates the in-memory 28 px digits
  (no crop, as RotNet's MNIST run) and binarizes.

Targets (issue 3): tf.data >= 20x the generator and >= 3,500 images/s at 224 px on 2 cores.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

import schemas
from benchmarks.common import shared_data_dir, street_view_samples
from pipeline import geometry
from pipeline.codec import encode_image
from schemas import sharding, tfrecord_file

STREET_VIEW_SIZE = 224
STREET_VIEW_BATCH = 64
MNIST_BATCH = 128
MNIST_DIGITS = 500


# --- Records to read (the pipeline's format, written without Beam) --------------------------------


def write_records(
    directory: Path,
    images: list[tuple[str, np.ndarray, int]],
    dataset: str,
    image_size: int,
    image_format: str,
    crop_largest_rect: bool,
    num_shards: int = 8,
) -> schemas.DatasetInfo:
    """Every angle of each (image_id, HWC uint8 image, label), spread over shards in a shuffled order
    (like the pipeline's Reshuffle), as one `train` split with a manifest."""
    angles = list(range(schemas.NUM_ANGLES))
    channels = images[0][1].shape[2]
    records = []
    for image_id, image, label in images:
        source = geometry.prepare_source(image, image_size, angles, crop_largest_rect=crop_largest_rect)
        for angle in angles:
            pixels = geometry.fast_rotation(source, angle, image_size)
            record = schemas.Record(
                image_encoded=encode_image(pixels, image_format),
                image_format=image_format,
                height=image_size,
                width=image_size,
                channels=channels,
                angle_degrees=angle,
                dataset=dataset,
                split="train",
                image_id=image_id,
                label=label,
            )
            records.append(schemas.encode_example(record))
    order = np.random.default_rng(0).permutation(len(records))
    shards = []
    for index in range(num_shards):
        name = sharding.shard_name("train", index, num_shards)
        count = tfrecord_file.write_records(
            str(directory / name), (records[i] for i in order[index::num_shards])
        )
        shards.append(schemas.ShardInfo(name, count, (directory / name).stat().st_size))
    info = schemas.DatasetInfo(
        dataset=dataset,
        image=schemas.ImageSpec(image_size, image_size, channels, image_format),
        angles_degrees=angles,
        splits={"train": schemas.SplitInfo(len(images), len(records), shards)},
        num_images_read=len(images),
        config={"writer": "benchmarks.input_pipeline"},
    )
    schemas.write_manifest(str(directory), info)
    return info


def mnist_digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    from pipeline import mnist

    directory = shared_data_dir() / "mnist-5k"
    images, labels = mnist.load_split(
        (directory / "train-images-idx3-ubyte.gz").read_bytes(),
        (directory / "train-labels-idx1-ubyte.gz").read_bytes(),
    )
    # The file is sorted by label: take an even spread so every digit is in.
    picked = np.linspace(0, len(images) - 1, count).astype(int)
    return images[picked][:, :, :, np.newaxis], labels[picked]


# --- The two contenders ----------------------------------------------------------------------------


def tf_data_rate(records: Path, model: str, batch_size: int, batches: int) -> float:
    """Images/s out of trainer.data.training_dataset (after a warm-up that fills the shuffle buffer)."""
    from trainer import train
    from trainer.config import TrainConfig
    from trainer.data import training_dataset
    from trainer.heads import Head

    config = TrainConfig(records=str(records), output="", model=model, batch_size=batch_size, weights="none")
    info = schemas.load_manifest(str(records))
    train.resolve(config, info)
    head = Head(config.head, tuple(config.bin_angles))
    iterator = iter(training_dataset(info.shard_paths(str(records), "train"), config, head))
    for _ in range(max(3, batches // 5)):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def rotnet_generator(
    load: Callable[[int], np.ndarray],
    count: int,
    batch_size: int,
    rotate: Callable[[np.ndarray, int], np.ndarray],
    preprocess: Callable[[np.ndarray], np.ndarray],
    workers: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """RotNet's RotNetDataGenerator: per batch, random images and random angles, rotated on the fly,
    preprocessed, one-hot labels; `workers` threads fill a batch (Keras' workers, OpenCV drops the GIL)."""
    rng = np.random.default_rng(0)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while True:
            indices = rng.integers(0, count, batch_size)
            angles = rng.integers(0, 360, batch_size)
            rotated = list(
                pool.map(lambda pair: rotate(load(pair[0]), pair[1]), zip(indices, angles, strict=True))
            )
            labels = np.zeros((batch_size, 360), np.float32)
            labels[np.arange(batch_size), angles] = 1.0
            yield preprocess(np.stack(rotated).astype(np.float32)), labels


def generator_rate(generator: Iterator, batch_size: int, batches: int) -> float:
    next(generator)
    start = time.perf_counter()
    for _ in range(batches):
        next(generator)
    return batches * batch_size / (time.perf_counter() - start)


def _caffe(images: np.ndarray) -> np.ndarray:
    """keras.applications.resnet50.preprocess_input, in NumPy (RGB -> BGR, minus the channel means)."""
    return images[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)


def _read_rgb(path: Path) -> np.ndarray:
    """RotNet reads the file each time: cv2.imread, BGR -> RGB."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# --- The benchmark ---------------------------------------------------------------------------------


def run(quick: bool = False) -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="rotnet-input-bench-") as scratch:
        # 224 px JPEG, Street View
        paths = street_view_samples()
        photos = [(path.stem, _read_rgb(path), -1) for path in paths]
        records = Path(scratch) / "street_view"
        records.mkdir()
        write_records(records, photos, "street_view", STREET_VIEW_SIZE, "jpeg", crop_largest_rect=True)
        tf_rate = tf_data_rate(records, "resnet50", STREET_VIEW_BATCH, 20 if quick else 120)

        def rotate_photo(image: np.ndarray, angle: int) -> np.ndarray:
            return geometry.reference_chain(image, angle, STREET_VIEW_SIZE)

        generator_batches = 1 if quick else 4
        generator_rates = {
            workers: generator_rate(
                rotnet_generator(
                    lambda index: _read_rgb(paths[index]),
                    len(paths),
                    STREET_VIEW_BATCH,
                    rotate_photo,
                    _caffe,
                    workers,
                ),
                STREET_VIEW_BATCH,
                generator_batches,
            )
            for workers in sorted({1, cores})
        }
        rows.append(("224 px JPEG (Street View, ResNet50)", STREET_VIEW_BATCH, tf_rate, generator_rates))

        # 28 px MNIST
        digits, labels = mnist_digits(MNIST_DIGITS // (5 if quick else 1))
        records = Path(scratch) / "mnist"
        records.mkdir()
        write_records(
            records,
            [
                (f"{index:05d}", digit, int(label))
                for index, (digit, label) in enumerate(zip(digits, labels, strict=True))
            ],
            "mnist",
            28,
            "png",
            crop_largest_rect=False,
        )
        tf_rate = tf_data_rate(records, "mnist-cnn", MNIST_BATCH, 50 if quick else 400)

        def rotate_digit(image: np.ndarray, angle: int) -> np.ndarray:
            return geometry.reference_chain(
                image, angle, 28, center_crop_square=False, crop_largest_rect=False
            )

        generator_rates = {
            workers: generator_rate(
                rotnet_generator(
                    lambda index: digits[index],
                    len(digits),
                    MNIST_BATCH,
                    rotate_digit,
                    geometry.binarize,
                    workers,
                ),
                MNIST_BATCH,
                10 if quick else 60,
            )
            for workers in sorted({1, cores})
        }
        rows.append(("28 px MNIST (MNIST CNN)", MNIST_BATCH, tf_rate, generator_rates))

    lines = [
        f"Images/s leaving the input pipeline (no model), {cores} cores. tf.data: trainer.data.training_dataset "
        "on shards of every angle; RotNet: its Python generator rotating the source images on the fly "
        "(geometry.reference_chain), with 1 and with "
        f"{cores} worker threads.",
        "",
        "| input | batch | tf.data images/s | RotNet generator images/s (1 / "
        f"{cores} workers) | tf.data vs best generator |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, batch, tf_rate, generator_rates in rows:
        best = max(generator_rates.values())
        rates = " / ".join(f"{rate:,.0f}" for _, rate in sorted(generator_rates.items()))
        lines.append(f"| {name} | {batch} | {tf_rate:,.0f} | {rates} | {tf_rate / best:.1f}x |")
    street_rate = rows[0][2]
    street_ratio = street_rate / max(rows[0][3].values())
    lines += [
        "",
        f"Targets at 224 px: >= 20x the generator ({street_ratio:.0f}x: "
        f"{'met' if street_ratio >= 20 else 'not met'}) and >= 3,500 images/s ({street_rate:,.0f}: "
        f"{'met' if street_rate >= 3500 else 'not met'}). At 28 px RotNet's rotation is cheap (a 28x28 warp); "
        "the ratio there shows what streaming stored rotations costs or saves when rotating is not the "
        "bottleneck. The Street View generator reads and decodes each 1281x1025 JPEG as RotNet does.",
    ]
    return "\n".join(lines)
