"""Input pipeline alone: images/s delivered to the model, tf.data on shards vs RotNet's Python generator.

    rotnet-bench input_pipeline            # rotnet-bench input_pipeline --quick --print-only: a smoke run

Two cases, each measured side by side in one run on this machine's cores:

* 224 px JPEG (Street View, ResNet50 input): records of the 10 real Street View samples at every angle
  (written here with the fast chain, JPEG q95, as rotnet-pipeline does), read by
  `trainer.data.training_dataset` (interleave, shuffle, batch 64, parse, decode, labels; the caffe
  preprocessing is the model's first layer, so it is not part of the input rate). RotNet's `RotNetDataGenerator` reads each full-resolution JPEG (1281x1025), picks a random
  angle, rotates at full resolution, crops the largest rectangle and resizes (`geometry.reference_chain`),
  then applies `preprocess_input` and one-hot labels - run on as many threads as there are cores (Keras'
  `workers`; OpenCV releases the GIL), and on one.
* 28 px MNIST (the MNIST CNN's input): records of 500 real digits from ../shared/data/mnist-5k at every
  angle (PNG), batch 128, uint8 (binarizing is the model's first layer); RotNet's generator rotates
  the in-memory 28 px digits (no crop, as RotNet's MNIST run) and binarizes.

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
from pipeline import geometry, local_writer

STREET_VIEW_SIZE = 224
STREET_VIEW_BATCH = 64
MNIST_BATCH = 128
MNIST_DIGITS = 500
REPEATS = 3  # timing windows per contestant; the best one counts


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
    (like the pipeline, whose shards mix many images), as one `train` split with a manifest."""
    return local_writer.write_rotations(
        directory,
        {"train": images},
        dataset=dataset,
        angles=range(schemas.NUM_ANGLES),
        image_size=image_size,
        image_format=image_format,
        crop_largest_rect=crop_largest_rect,
        num_shards=num_shards,
        shuffle_seed=0,
        config={"writer": "benchmarks.input_pipeline"},
    )


def mnist_digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    from pipeline.datasets import mnist

    directory = shared_data_dir() / "mnist-5k"
    images, labels = mnist.load_split(
        (directory / "train-images-idx3-ubyte.gz").read_bytes(),
        (directory / "train-labels-idx1-ubyte.gz").read_bytes(),
    )
    # The file is sorted by label: take an even spread so every digit is in.
    picked = np.linspace(0, len(images) - 1, count).astype(int)
    return images[picked][:, :, :, np.newaxis], labels[picked]


# --- The two contenders ----------------------------------------------------------------------------


def stream_rates(batches_iterator: Iterator, batch_size: int, batches: int, warm_up: int) -> list[float]:
    """Images/s in each of REPEATS windows of `batches` batches, after `warm_up` batches (which fill
    shuffle buffers and thread pools). The best window, the least disturbed on a shared machine, is
    the figure; every contestant is timed the same way."""
    return interleaved_rates({"": batches_iterator}, batch_size, batches, warm_up)[""]


def interleaved_rates(
    iterators: dict[str, Iterator], batch_size: int, batches: int, warm_up: int
) -> dict[str, list[float]]:
    """`stream_rates` of several iterators, their windows taken in turn (A B C A B C ...), so that a
    slow spell of the machine falls on all of them rather than on one."""
    for iterator in iterators.values():
        for _ in range(warm_up):
            next(iterator)
    rates: dict[str, list[float]] = {name: [] for name in iterators}
    for _ in range(REPEATS):
        for name, iterator in iterators.items():
            start = time.perf_counter()
            for _ in range(batches):
                next(iterator)
            rates[name].append(batches * batch_size / (time.perf_counter() - start))
    return rates


def full_size_stream_stride() -> int:
    """The stream stride of a default run (TrainConfig's epochs and sweeps) on a full-size dataset,
    where an epoch is one pass over the source images: one record in ~360 x sweeps / epochs is read.
    The few benchmark images would give a stride of 1 and hide the cost of stepping over records."""
    from trainer.config import TrainConfig, sampling_stride

    defaults = TrainConfig()
    return sampling_stride(defaults.epochs, schemas.NUM_ANGLES * defaults.stream_sweeps)


def tf_data_iterator(records: Path, model: str, batch_size: int, stride: int) -> Iterator:
    """trainer.data.training_dataset's batches, the stream keeping one record in `stride`."""
    from trainer.config import TrainConfig, resolve
    from trainer.data import training_dataset
    from trainer.heads import Head

    config = TrainConfig(records=str(records), output="", model=model, batch_size=batch_size, weights="none")
    info = schemas.load_manifest(str(records))
    resolve(config, info)
    config.stream_stride, config.stream_fraction = stride, 1.0 / stride
    head = Head(config.head, tuple(config.bin_angles))
    return iter(training_dataset(info.shard_paths(str(records), "train"), config, head))


def decode_only_iterator(records: Path, batch_size: int) -> Iterator:
    """The chain's decode step alone (trainer.data.decode_images on parallel batches) over the same
    records held in memory: no reading, parsing or shuffling, so the most the chain could deliver."""
    import tensorflow as tf

    from schemas import tfrecord_file
    from trainer.data import decode_images

    info = schemas.load_manifest(str(records))
    encoded = [
        schemas.decode_example(data).image_encoded
        for path in info.shard_paths(str(records), "train")
        for data in tfrecord_file.iter_records(path)
    ]
    image = info.image
    dataset = (
        tf.data.Dataset.from_tensor_slices(encoded)
        .repeat()
        .batch(batch_size)
        .map(
            lambda batch: decode_images(batch, image.format, image.height, image.width, image.channels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .prefetch(tf.data.AUTOTUNE)
    )
    return iter(dataset)


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
    return max(stream_rates(generator, batch_size, batches, warm_up=1))


def _caffe(images: np.ndarray) -> np.ndarray:
    """keras.applications.resnet50.preprocess_input, in NumPy (RGB -> BGR, minus the channel means)."""
    return images[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)


def _read_rgb(path: Path) -> np.ndarray:
    """RotNet reads the file each time: cv2.imread, BGR -> RGB."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _decode_bound_sentence(strided: float, every_record: float, decode_only: float) -> str:
    """What the breakdown says, in words that follow the measured figures."""
    if every_record >= 0.8 * decode_only:
        bound = (
            f"JPEG decoding bounds the chain: reading every record it delivers {every_record / decode_only:.0%} "
            "of what decoding alone allows on these cores"
        )
    else:
        bound = (
            f"Reading, parsing and shuffling cost as much as decoding here: reading every record the chain "
            f"delivers only {every_record / decode_only:.0%} of what decoding alone allows"
        )
    return (
        f"{bound}; stepping over the records a long run does not keep costs "
        f"{max(0.0, 1 - strided / every_record):.0%} more."
    )


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
        stride = full_size_stream_stride()
        batches = 20 if quick else 120
        breakdown = interleaved_rates(
            {
                f"training_dataset, one record in {stride} kept (the table's figure)": tf_data_iterator(
                    records, "resnet50", STREET_VIEW_BATCH, stride
                ),
                "training_dataset, every record kept": tf_data_iterator(
                    records, "resnet50", STREET_VIEW_BATCH, 1
                ),
                "decode_images alone on the records in memory": decode_only_iterator(
                    records, STREET_VIEW_BATCH
                ),
            },
            STREET_VIEW_BATCH,
            batches,
            warm_up=max(3, batches // 5),
        )
        tf_rates = next(iter(breakdown.values()))

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
        rows.append(("224 px JPEG (Street View, ResNet50)", STREET_VIEW_BATCH, tf_rates, generator_rates))
        breakdown_names, breakdown_rates = list(breakdown), list(breakdown.values())

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
        batches = 50 if quick else 400
        tf_rates = stream_rates(
            tf_data_iterator(records, "mnist-cnn", MNIST_BATCH, full_size_stream_stride()),
            MNIST_BATCH,
            batches,
            warm_up=max(3, batches // 5),
        )

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
        rows.append(("28 px MNIST (MNIST CNN)", MNIST_BATCH, tf_rates, generator_rates))

    from trainer.config import TrainConfig

    defaults = TrainConfig()
    lines = [
        f"Images/s leaving the input pipeline (no model), {cores} cores. tf.data: trainer.data.training_dataset "
        "on shards of every angle; RotNet: its Python generator rotating the source images on the fly "
        "(geometry.reference_chain), with 1 and with "
        f"{cores} worker threads. Each rate is the best of {REPEATS} timing windows after a warm-up. "
        f"The tf.data stream keeps one record in {full_size_stream_stride()} of each shard pass, as a "
        f"default run ({defaults.epochs} epochs, --stream-sweeps {defaults.stream_sweeps}) on a full-size "
        "dataset does.",
        "",
        "| input | batch | tf.data images/s | RotNet generator images/s (1 / "
        f"{cores} workers) | tf.data vs best generator |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, batch, tf_rates, generator_rates in rows:
        tf_rate = max(tf_rates)
        best = max(generator_rates.values())
        rates = " / ".join(f"{rate:,.0f}" for _, rate in sorted(generator_rates.items()))
        lines.append(f"| {name} | {batch} | {tf_rate:,.0f} | {rates} | {tf_rate / best:.1f}x |")
    street_windows = rows[0][2]
    street_rate = max(street_windows)
    street_ratio = street_rate / max(rows[0][3].values())
    lines += [
        "",
        f"Targets at 224 px: >= 20x the generator ({street_ratio:.0f}x: "
        f"{'met' if street_ratio >= 20 else 'not met'}) and >= 3,500 images/s ({street_rate:,.0f}: "
        f"{'met' if street_rate >= 3500 else 'not met'}; its {REPEATS} windows gave "
        f"{min(street_windows):,.0f}-{street_rate:,.0f}, the spread of this machine). "
        "At 28 px RotNet's rotation is cheap (a 28x28 warp); "
        "the ratio there shows what streaming stored rotations costs or saves when rotating is not the "
        "bottleneck. The Street View generator reads and decodes each 1281x1025 JPEG as RotNet does.",
        "",
        f"Where the 224 px time goes (windows taken in turn, batch {STREET_VIEW_BATCH}, best of {REPEATS}):",
        "",
        "| tf.data variant | images/s | share of decode alone |",
        "|---|---:|---:|",
        *(
            f"| {name} | {max(rates):,.0f} | {max(rates) / max(breakdown_rates[-1]):.0%} |"
            for name, rates in zip(breakdown_names, breakdown_rates, strict=True)
        ),
        "",
        _decode_bound_sentence(max(breakdown_rates[0]), max(breakdown_rates[1]), max(breakdown_rates[-1])),
    ]
    return "\n".join(lines)
