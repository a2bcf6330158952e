"""Input pipeline alone: images/s delivered to the model, tf.data on shards vs RotNet's Python generator.

    rotnet-bench input_pipeline            # rotnet-bench input_pipeline --quick --print-only: a smoke run

Two cases, each measured side by side in one run on this machine's cores:

* 224 px JPEG (Street View, ResNet50 input): records of the 10 real Street View samples at every angle
  (written here with the pipeline's default rendering, JPEG q95, as rotnet-pipeline does), read by
  `trainer.data.training_dataset` (interleave, shuffle, batch 64, parse, decode, labels; the caffe
  preprocessing is the model's first layer, so it is not part of the input rate). RotNet's
  `RotNetDataGenerator` reads each full-resolution JPEG (1281x1025), picks a random
  angle, rotates at full resolution, crops the largest rectangle and resizes (`geometry.reference_chain`),
  then applies `preprocess_input` and one-hot labels - run on as many threads as there are cores (Keras'
  `workers`; OpenCV releases the GIL), and on one.
* 28 px MNIST (the MNIST CNN's input): records of 500 real digits from ../shared/data/mnist-5k at every
  angle (PNG), batch 128, uint8 (binarizing is the model's first layer); RotNet's generator rotates
  the in-memory 28 px digits (no crop, as RotNet's MNIST run) and binarizes.

Rows beside them: the TF-free loader that feeds JAX and torch (trainer.numpy_data: the same stream
read on one thread, PNG/JPEG decoded by one process per core, batches pickled back), the shards read
in order with no interleave or shuffle (the floor of any chain on these records), rotnet 0.1's strided stream (its shards were not fully mixed), decoding alone on
records held in memory (the most the chain could deliver), and the two libjpeg IDCTs.

Targets: at 224 px on 2 cores, the training stream >= 90% of decoding alone, >= 3,500 images/s and
>= 20x RotNet's generator; at 28 px, >= 90% of decoding alone (issue 22). Figures are medians of
several windows taken in turn, with their spread.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
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
REPEATS = 5  # timing windows per contestant; the median counts, the spread is reported


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
    """Every angle of each (image_id, HWC uint8 image, label) in shards as rotnet-pipeline writes them
    (pipeline.local_writer: the same bytes), as one `train` split with a manifest."""
    return local_writer.write_rotations(
        directory,
        {"train": images},
        dataset=dataset,
        angles=range(schemas.NUM_ANGLES),
        image_size=image_size,
        image_format=image_format,
        crop_largest_rect=crop_largest_rect,
        num_shards=num_shards,
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
    shuffle buffers and thread pools); every contestant is timed the same way."""
    return interleaved_rates({"": batches_iterator}, batch_size, batches, warm_up)[""]


def interleaved_rates(
    iterators: dict[str, Iterator], batch_size: int, batches: int, warm_up: int
) -> dict[str, list[float]]:
    """`stream_rates` of several iterators, their windows taken in turn (A B C A B C ...), so that a
    slow spell of the machine falls on all of them rather than on one. Before each window `warm_up`
    batches are drawn untimed: while the others ran, an iterator's background threads filled its
    buffers (prefetch, parallel maps, shuffle), and a window that began by emptying them would time
    work done in someone else's window (the deeper the chain's buffers, the larger its flattery)."""
    rates: dict[str, list[float]] = {name: [] for name in iterators}
    for _ in range(REPEATS):
        for name, iterator in iterators.items():
            for _ in range(warm_up):
                next(iterator)
            start = time.perf_counter()
            for _ in range(batches):
                next(iterator)
            rates[name].append(batches * batch_size / (time.perf_counter() - start))
    return rates


# rotnet 0.1's stream (schema_version 1 shards held a few hundred images at a time): each shard pass
# kept one record in this many, from a random offset; a default 50-epoch run on a full-size dataset got 8.
OLD_STREAM_STRIDE = 8


def _resolved(records: Path, model: str, batch_size: int, **overrides: object):
    """(TrainConfig resolved against the records' manifest, the manifest, the model's head), as
    rotnet-train builds them; `overrides` set TrainConfig fields."""
    from trainer.config import TrainConfig, resolve
    from trainer.heads import Head

    config = TrainConfig(records=str(records), output="", model=model, batch_size=batch_size, weights="none")
    for name, value in overrides.items():
        setattr(config, name, value)
    info = schemas.load_manifest(str(records))
    resolve(config, info)
    return config, info, Head(config.head, tuple(config.bin_angles))


def tf_data_iterator(
    records: Path,
    model: str,
    batch_size: int,
    old_stride: int = 0,
    parallel_reads: bool = False,
    **overrides: object,
) -> Iterator:
    """trainer.data.training_dataset's batches; `old_stride` > 0 swaps each shard pass for rotnet 0.1's
    strided one (`skip(random offset).shard(stride, 0)`), the comparison row; `parallel_reads` reads
    these local shards on AUTOTUNE threads, as the chain reads gs:// shards; `overrides` set
    TrainConfig fields (e.g. shuffle_buffer)."""
    import tensorflow as tf

    from trainer import data

    config, info, head = _resolved(records, model, batch_size, **overrides)
    counts = [shard.num_records for shard in info.splits["train"].shards]
    in_order, local_reads = data._shard_pass, data._parallel_reads
    if parallel_reads:
        data._parallel_reads = lambda paths, deterministic: {
            "num_parallel_calls": tf.data.AUTOTUNE,
            "deterministic": deterministic,
        }
    if old_stride:

        def strided_pass(path, num_records, compression, seed):
            offset = tf.random.stateless_uniform([], seed, 0, old_stride, dtype=tf.int64)
            return (
                tf.data.TFRecordDataset(path, compression_type=compression).skip(offset).shard(old_stride, 0)
            )

        data._shard_pass = strided_pass  # only while the graph is built: the dataset keeps its function
    try:
        dataset = data.training_dataset(info.shard_paths(str(records), "train"), config, head, counts)
    finally:
        data._shard_pass, data._parallel_reads = in_order, local_reads
    return iter(dataset)


def numpy_loader_iterator(records: Path, model: str, batch_size: int, workers: int, stack) -> Iterator:
    """The TF-free loader's training batches (trainer.numpy_data: the JAX/torch path): the records read
    in stream order on one thread, decoded by `workers` processes; `stack` (contextlib.ExitStack) stops
    them when the benchmark ends."""
    from trainer.numpy_data import NumpyInput

    config, info, head = _resolved(records, model, batch_size)
    counts = [shard.num_records for shard in info.splits["train"].shards]
    shards = {"train": info.shard_paths(str(records), "train")}
    loader = stack.enter_context(NumpyInput(config, head, shards, counts, workers))
    return (loader.training[index] for index in itertools.count())


def in_order_iterator(records: Path, model: str, batch_size: int) -> Iterator:
    """The floor of any chain on these records: the shards read one after another, in order (no
    interleave, random start or shuffle), batched, parsed and decoded with the training chain's own
    maps (trainer.data)."""
    import tensorflow as tf

    from trainer import data

    config, info, head = _resolved(records, model, batch_size)
    table = tf.constant(data.label_table(config.bin_angles))
    dataset = (
        tf.data.TFRecordDataset(info.shard_paths(str(records), "train"))
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .map(data._parse(data.FIELDS), num_parallel_calls=tf.data.AUTOTUNE)
        .map(data._to_model_inputs(config, head, table), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return iter(dataset)


def decode_only_iterator(records: Path, batch_size: int, dct_method: str | None = None) -> Iterator:
    """The chain's decode step alone (trainer.data.decode_images on parallel batches) over the same
    records held in memory: no reading, parsing or shuffling, so the most the chain could deliver.
    `dct_method` replaces trainer.data.JPEG_DCT_METHOD (libjpeg's IDCT) for this iterator."""
    import tensorflow as tf

    from schemas import tfrecord_file
    from trainer import data
    from trainer.data import decode_images

    info = schemas.load_manifest(str(records))
    encoded = [
        schemas.decode_example(data).image_encoded
        for path in info.shard_paths(str(records), "train")
        for data in tfrecord_file.iter_records(path)
    ]
    image = info.image
    chosen = data.JPEG_DCT_METHOD
    data.JPEG_DCT_METHOD = chosen if dct_method is None else dct_method  # read while tracing the map
    try:
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
        iterator = iter(dataset)
        next(iterator)  # traced now, with this IDCT
    finally:
        data.JPEG_DCT_METHOD = chosen
    return iterator


def idct_difference(records: Path, count: int = 200) -> tuple[int, float]:
    """(largest pixel difference, PSNR dB) between the fast integer IDCT and libjpeg's accurate one on
    the first `count` records: what INTEGER_FAST costs in picture."""
    import tensorflow as tf

    from schemas import tfrecord_file

    info = schemas.load_manifest(str(records))
    path = info.shard_paths(str(records), "train")[0]
    worst, squared, pixels = 0, 0.0, 0
    for index, data_bytes in enumerate(tfrecord_file.iter_records(path)):
        if index >= count:
            break
        encoded = schemas.decode_example(data_bytes).image_encoded
        fast = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_FAST").numpy().astype(np.int32)
        exact = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE").numpy().astype(np.int32)
        worst = max(worst, int(np.abs(fast - exact).max()))
        squared += float(((fast - exact) ** 2).sum())
        pixels += fast.size
    mse = squared / max(pixels, 1)
    return worst, (10 * np.log10(255.0**2 / mse) if mse else float("inf"))


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


def _caffe(images: np.ndarray) -> np.ndarray:
    """keras.applications.resnet50.preprocess_input, in NumPy (RGB -> BGR, minus the channel means)."""
    return images[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)


def _read_rgb(path: Path) -> np.ndarray:
    """RotNet reads the file each time: cv2.imread, BGR -> RGB."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# --- The benchmark ---------------------------------------------------------------------------------


def median_spread(rates: list[float]) -> str:
    """'median (min-max)' of a contestant's windows: the figure and how much the machine moved it."""
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def run(quick: bool = False) -> str:
    from trainer.quiet import import_tensorflow

    import_tensorflow()  # without its oneDNN/CUDA start-up lines, as the tools do
    from trainer import data

    trainer_idct = data.JPEG_DCT_METHOD  # libjpeg's IDCT the trainer decodes with; the other beside it
    other_idct = "INTEGER_ACCURATE" if trainer_idct == "INTEGER_FAST" else "INTEGER_FAST"
    cores = os.cpu_count() or 1
    with (
        tempfile.TemporaryDirectory(prefix="rotnet-input-bench-") as scratch,
        contextlib.ExitStack() as stack,
    ):
        # 224 px JPEG, Street View: the stream, rotnet 0.1's strided stream and decoding alone, in turn
        paths = street_view_samples()
        photos = [(path.stem, _read_rgb(path), -1) for path in paths]
        street = Path(scratch) / "street_view"
        street.mkdir()
        write_records(street, photos, "street_view", STREET_VIEW_SIZE, "jpeg", crop_largest_rect=True)
        batches = 20 if quick else 100
        street_rates = interleaved_rates(
            {
                "stream": tf_data_iterator(street, "resnet50", STREET_VIEW_BATCH),
                "parallel": tf_data_iterator(street, "resnet50", STREET_VIEW_BATCH, parallel_reads=True),
                "in_order": in_order_iterator(street, "resnet50", STREET_VIEW_BATCH),
                "old": tf_data_iterator(street, "resnet50", STREET_VIEW_BATCH, old_stride=OLD_STREAM_STRIDE),
                "numpy": numpy_loader_iterator(street, "resnet50", STREET_VIEW_BATCH, cores, stack),
                "decode": decode_only_iterator(street, STREET_VIEW_BATCH),  # the trainer's IDCT
                "other_idct": decode_only_iterator(street, STREET_VIEW_BATCH, dct_method=other_idct),
            },
            STREET_VIEW_BATCH,
            batches,
            warm_up=max(3, batches // 5),
        )
        worst_difference, idct_psnr = idct_difference(street)

        def rotate_photo(image: np.ndarray, angle: int) -> np.ndarray:
            return geometry.reference_chain(image, angle, STREET_VIEW_SIZE)

        street_generator = {
            workers: stream_rates(
                rotnet_generator(
                    lambda index: _read_rgb(paths[index]),
                    len(paths),
                    STREET_VIEW_BATCH,
                    rotate_photo,
                    _caffe,
                    workers,
                ),
                STREET_VIEW_BATCH,
                1 if quick else 3,
                warm_up=1,
            )
            for workers in sorted({1, cores})
        }

        # 28 px MNIST
        digits, labels = mnist_digits(MNIST_DIGITS // (5 if quick else 1))
        mnist_records = Path(scratch) / "mnist"
        mnist_records.mkdir()
        write_records(
            mnist_records,
            [
                (f"{index:05d}", digit, int(label))
                for index, (digit, label) in enumerate(zip(digits, labels, strict=True))
            ],
            "mnist",
            28,
            "png",
            crop_largest_rect=False,
        )
        batches = 50 if quick else 300
        mnist_rates = interleaved_rates(
            {
                "stream": tf_data_iterator(mnist_records, "mnist-cnn", MNIST_BATCH),
                "parallel": tf_data_iterator(mnist_records, "mnist-cnn", MNIST_BATCH, parallel_reads=True),
                "in_order": in_order_iterator(mnist_records, "mnist-cnn", MNIST_BATCH),
                "old": tf_data_iterator(
                    mnist_records, "mnist-cnn", MNIST_BATCH, old_stride=OLD_STREAM_STRIDE
                ),
                "numpy": numpy_loader_iterator(mnist_records, "mnist-cnn", MNIST_BATCH, cores, stack),
                "decode": decode_only_iterator(mnist_records, MNIST_BATCH),
            },
            MNIST_BATCH,
            batches,
            warm_up=max(3, batches // 5),
        )

        def rotate_digit(image: np.ndarray, angle: int) -> np.ndarray:
            return geometry.reference_chain(
                image, angle, 28, center_crop_square=False, crop_largest_rect=False
            )

        mnist_generator = {
            workers: stream_rates(
                rotnet_generator(
                    lambda index: digits[index],
                    len(digits),
                    MNIST_BATCH,
                    rotate_digit,
                    geometry.binarize,
                    workers,
                ),
                MNIST_BATCH,
                10 if quick else 40,
                warm_up=1,
            )
            for workers in sorted({1, cores})
        }

    median = statistics.median
    lines = [
        f"Images/s leaving the input pipeline (no model), {cores} cores. Each figure is the median of "
        f"{REPEATS} timing windows (min-max in brackets), the contestants of a table taking their windows "
        "in turn (A B C A B C ...), so that a slow spell of the machine falls on all of "
        "them; each window begins after untimed batches, which empty what the contestant's buffers "
        "filled while the others ran. tf.data: `trainer.data.training_dataset` on shards of every angle "
        "written as rotnet-pipeline writes them (fully mixed, schema_version 2), each shard read in order "
        "from a random start, the shards round robin on one thread (local files; the parallel row reads "
        "them on AUTOTUNE threads, as the chain reads gs:// shards). "
        f"rotnet 0.1's stream: the same chain with each shard pass kept one record in {OLD_STREAM_STRIDE} "
        "(`skip(offset).shard(8, 0)`, what a default 50-epoch run on a full-size dataset used). Decode "
        "alone: `trainer.data.decode_images` on the same records held in memory, in parallel batches: the "
        "most the chain could deliver. TF-free loader: trainer.numpy_data's training batches (the JAX and "
        f"torch input): the same stream semantics, records read on one thread, decoded by {cores} processes. RotNet: its Python generator rotating the source images on the fly "
        f"(geometry.reference_chain), 1 and {cores} worker threads.",
        "",
        f"| 224 px JPEG q95, batch {STREET_VIEW_BATCH} (ResNet50 input) | images/s | share of decode alone |",
        "|---|---:|---:|",
    ]
    decode = median(street_rates["decode"])
    for name, key in (
        ("training stream (rotnet 0.2)", "stream"),
        ("training stream, shards read on parallel threads (as for gs:// shards)", "parallel"),
        ("shards read in order, parsed, decoded (no interleave or shuffle: the floor)", "in_order"),
        (f"rotnet 0.1's strided stream (1 in {OLD_STREAM_STRIDE})", "old"),
        (f"TF-free loader (trainer.numpy_data, JAX/torch), {cores} decoding processes", "numpy"),
        (f"decode alone, {trainer_idct} IDCT (the trainer's)", "decode"),
        (f"decode alone, {other_idct} IDCT", "other_idct"),
    ):
        lines.append(
            f"| {name} | {median_spread(street_rates[key])} | {median(street_rates[key]) / decode:.0%} |"
        )
    generator = " / ".join(f"{median(rates):,.0f}" for _, rates in sorted(street_generator.items()))
    lines.append(f"| RotNet's generator (1 / {cores} workers) | {generator} | |")
    stream = median(street_rates["stream"])
    rates_by_idct = {trainer_idct: street_rates["decode"], other_idct: street_rates["other_idct"]}
    idct_speedup = median(rates_by_idct["INTEGER_FAST"]) / median(rates_by_idct["INTEGER_ACCURATE"])
    fast_pays = idct_speedup >= 1.05 and idct_psnr >= 40  # a clear gain for a small picture difference
    idct_verdict = (
        "the trainer's choice (trainer.data.JPEG_DCT_METHOD) stands"
        if fast_pays == (trainer_idct == "INTEGER_FAST")
        else "the trainer's choice (trainer.data.JPEG_DCT_METHOD) should be revisited"
    )
    best_generator = max(median(rates) for rates in street_generator.values())
    lines += [
        "",
        f"Targets at 224 px: the stream >= 90% of decoding alone ({stream / decode:.0%}: "
        f"{'met' if stream >= 0.9 * decode else 'not met'}), >= 3,500 images/s ({stream:,.0f}: "
        f"{'met' if stream >= 3500 else 'not met'}) and >= 20x RotNet's generator "
        f"({stream / best_generator:.0f}x: {'met' if stream >= 20 * best_generator else 'not met'}). "
        f"rotnet 0.1's strided stream did {median(street_rates['old']) / stream:.0%} of the new one's rate here. "
        f"The TF-free loader (the JAX and torch input) did {median(street_rates['numpy']) / stream:.0%} of the "
        "tf.data stream's rate. "
        f"IDCT: INTEGER_FAST decodes {idct_speedup:.2f}x as fast as INTEGER_ACCURATE, its pixels at most "
        f"{worst_difference} levels from it ({idct_psnr:.1f} dB PSNR over 200 records): the trainer "
        f"decodes with {trainer_idct}, and {idct_verdict}.",
        "",
        f"| 28 px PNG, batch {MNIST_BATCH} (MNIST CNN input) | images/s | share of decode alone |",
        "|---|---:|---:|",
    ]
    decode = median(mnist_rates["decode"])
    for name, key in (
        ("training stream (rotnet 0.2)", "stream"),
        ("training stream, shards read on parallel threads (as for gs:// shards)", "parallel"),
        ("shards read in order, parsed, decoded (no interleave or shuffle: the floor)", "in_order"),
        (f"rotnet 0.1's strided stream (1 in {OLD_STREAM_STRIDE})", "old"),
        (f"TF-free loader (trainer.numpy_data, JAX/torch), {cores} decoding processes", "numpy"),
        ("decode alone", "decode"),
    ):
        lines.append(
            f"| {name} | {median_spread(mnist_rates[key])} | {median(mnist_rates[key]) / decode:.0%} |"
        )
    generator = " / ".join(f"{median(rates):,.0f}" for _, rates in sorted(mnist_generator.items()))
    stream, floor = median(mnist_rates["stream"]), median(mnist_rates["in_order"])
    lines += [
        f"| RotNet's generator (1 / {cores} workers) | {generator} | |",
        "",
        f"Target at 28 px: the stream >= 90% of decoding alone ({stream / decode:.0%}: "
        f"{'met' if stream >= 0.9 * decode else 'not met'}); with the shards read on parallel threads "
        f"{median(mnist_rates['parallel']) / decode:.0%}; reading the shards in order with no "
        f"interleave or shuffle at all did {floor / decode:.0%} (what reading and parsing the records, "
        f"TFRecord frames and tf.train.Example, leave of decoding's rate), and the stream runs at "
        f"{stream / floor:.0%} of that floor. The TF-free loader did {median(mnist_rates['numpy']) / stream:.0%} "
        "of the tf.data stream's rate.",
        "",
        "At 28 px RotNet's rotation is cheap (a 28x28 warp): the comparison shows what streaming stored "
        "rotations costs or saves when rotating is not the bottleneck.",
    ]
    return "\n".join(lines)
