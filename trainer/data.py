"""The tf.data input pipeline: shards of rotated records -> (uint8 images, head targets) batches.

The training chain, top to bottom (`training_dataset`):

    shard paths (manifest), shuffled       file order reshuffled every pass (list_files without a glob)
    .repeat()                              an endless stream; Keras counts steps_per_epoch
    .interleave(one pass over a shard, cycle_length, AUTOTUNE, deterministic=--deterministic)
                                           several shards at once, each read in order from a random
                                           start record to its end and round to the start: the
                                           pipeline writes every shard in a fixed, fully mixed order
                                           (schemas.sharding), so any stretch of it is a uniform
                                           sample of its images and angles and nothing is stepped over
    .shuffle(shuffle_buffer)               mixes the interleaved shards' records further
    .batch(batch_size, drop_remainder)     then everything below works on whole batches
    .map(parse_batch)                      vectorized tf.io.parse_example, keys from schemas.record
    [.map(keep) .unbatch() .batch()]       only with --angles / --max-images: drop other records
    .map(decode, targets)                  PNG/JPEG per image inside the batch map, raw vectorized;
                                           angle -> bin index -> the head's targets
    [.enumerate() .map(augment_images)]    only with --augment: blur/sharpen, noise, (RGB) JPEG,
                                           stateless random from (seed, batch index), not the angle
    .prefetch(AUTOTUNE)

Preprocessing (binarize / scale / caffe, `preprocess_images`) is the model's first layer
(trainer.models.Preprocess), not a step here: batches travel as uint8, a quarter of the bytes of
float32 (converting 224 px batches to float32 on the CPU cut the 2-core input rate from ~2,000 to
~1,300 images/s; the flip to BGR alone to ~800), the accelerator does the arithmetic, and every saved
model carries its own preprocessing, so training, Predictor and the SavedModel cannot disagree.

Validation (`validation_dataset`) reads the shards in order, without shuffling, and takes the same
hash-sampled records (spread over every image) every epoch. `evaluation_dataset` yields uint8 images, true angles and labels for
rotnet-evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

import schemas
from pipeline.geometry import BINARIZE_THRESHOLD
from schemas import splits, verify
from trainer.config import TrainConfig
from trainer.heads import Head

AUTOTUNE = tf.data.AUTOTUNE
# keras.applications.resnet50.preprocess_input ("caffe"): BGR order minus these channel means.
IMAGENET_MEANS_BGR = (103.939, 116.779, 123.68)
# libjpeg's fast integer IDCT: ~10% faster than the default on 224 px q95 records, pixels within a
# level or two of it (far below the JPEG error itself).
JPEG_DCT_METHOD = "INTEGER_FAST"
SAMPLE_BLOCK = 1024  # records per block when hash-sampling validation records (see _hash_sample)
HASH_BUCKETS = 1 << 24


# --- Damage found while reading ---------------------------------------------------------------


def damaged_record_message(shard_paths: Sequence[str], error: Exception, fix: str) -> str:
    """The damaged-shard message for a tf.errors.DataLossError, which names no file: the shard is
    found by CRC-checking the shards that were being read (schemas.verify)."""
    found = verify.first_damaged_shard(shard_paths)
    if found is None:
        return f"damaged record ({str(error).splitlines()[0]}); {fix}"
    return verify.damaged_shard_message([found], fix)


# --- Labels and filters ---------------------------------------------------------------------------


def label_table(bin_angles: Sequence[int]) -> np.ndarray:
    """(360,) int32: the bin index of each angle, -1 for angles outside the bins."""
    table = np.full(schemas.NUM_ANGLES, -1, np.int32)
    table[np.asarray(bin_angles, np.int64)] = np.arange(len(bin_angles), dtype=np.int32)
    return table


def subset_mask_function(fraction: float) -> Callable[[np.ndarray], np.ndarray]:
    """NumPy function for tf.numpy_function: which image ids are in the stable --max-images subset.

    schemas.splits.in_subset hashes with SHA-256, which TensorFlow has no op for; each image id is
    hashed once and remembered (an image has up to 360 records).
    """
    cache: dict[bytes, bool] = {}

    def mask(image_ids: np.ndarray) -> np.ndarray:
        keep = np.empty(len(image_ids), bool)
        for index, image_id in enumerate(image_ids):
            if image_id not in cache:
                cache[image_id] = splits.in_subset(image_id.decode("utf-8"), fraction)
            keep[index] = cache[image_id]
        return keep

    return mask


# --- Decoding and preprocessing --------------------------------------------------------------------


def decode_images(encoded, image_format: str, height: int, width: int, channels: int):
    """A batch of encoded images (B,) string -> (B, height, width, channels) uint8."""
    if image_format == "raw":
        pixels = tf.io.decode_raw(encoded, tf.uint8)  # vectorized: every record has the same length
        return tf.reshape(pixels, [-1, height, width, channels])

    def decode_one(data):
        if image_format == "png":
            image = tf.io.decode_png(data, channels=channels)
        else:
            image = tf.io.decode_jpeg(data, channels=channels, dct_method=JPEG_DCT_METHOD)
        return tf.ensure_shape(image, [height, width, channels])

    # PNG/JPEG decoders take one image; map_fn runs them inside the batch's map (parallel across batches).
    return tf.map_fn(
        decode_one, encoded, fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8)
    )


def preprocess_images(images, preprocessing: str):
    """uint8 pixels (B, H, W, C) -> float32, as named in trainer.config.PREPROCESSINGS (the computation
    of the models' Preprocess layer)."""
    if preprocessing == "caffe" and images.shape[-1] == 3:
        images = tf.reverse(images, axis=[-1])  # RGB -> BGR on bytes: cheaper than on floats
    pixels = tf.cast(images, tf.float32)
    if preprocessing == "binarize":
        # The same float32 arithmetic as pipeline.geometry.binarize (value / 255 >= threshold).
        return tf.cast(pixels / 255.0 >= BINARIZE_THRESHOLD, tf.float32)
    if preprocessing == "scale":
        return pixels / 255.0
    if preprocessing == "caffe":
        if pixels.shape[-1] == 3:
            return pixels - tf.constant(IMAGENET_MEANS_BGR, tf.float32)
        return pixels - float(np.mean(IMAGENET_MEANS_BGR))  # grey: the mean of the channel means
    if preprocessing == "raw":
        return pixels
    raise ValueError(f"unknown preprocessing {preprocessing!r}")


# --- Augmentation ---------------------------------------------------------------------------------

# --augment, per image: with probability 1/2 a blur or sharpening (the image moved towards, or away
# from, a Gaussian blur of AUGMENT_BLUR_SIGMA_PX by a factor in AUGMENT_BLUR_RANGE: negative sharpens,
# covering rotation code sharper than the records' low-pass as well as blurrier); with probability 1/2
# Gaussian noise of a standard deviation up to AUGMENT_NOISE_MAX levels; RGB images with probability 1/2
# re-encoded as JPEG at a quality in AUGMENT_JPEG_QUALITY. None of it depends on the angle.
AUGMENT_BLUR_SIGMA_PX = 1.0
AUGMENT_BLUR_RANGE = (-0.6, 1.0)
AUGMENT_NOISE_MAX = 6.0
AUGMENT_JPEG_QUALITY = (50, 95)
AUGMENT_PROBABILITY = 0.5


def _gaussian_kernel(sigma: float, channels: int) -> tuple[tf.Tensor, int]:
    """A depthwise 2-D Gaussian (isotropic: the same at every orientation) and its radius."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    kernel = np.outer(taps, taps).astype(np.float32)[:, :, np.newaxis, np.newaxis]
    return tf.constant(np.repeat(kernel, channels, axis=2)), radius


def augment_images(images, seed):
    """uint8 images (B, H, W, C) -> uint8, randomly blurred or sharpened, noised and (C = 3) re-encoded
    as JPEG (see AUGMENT_*). `seed` (2,) int: stateless, so the same seed gives the same batch; every
    draw is per image and never looks at a label or an angle."""
    images = tf.convert_to_tensor(images)
    channels = images.shape[-1]
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
    pixels = tf.cast(images, tf.float32)
    kernel, radius = _gaussian_kernel(AUGMENT_BLUR_SIGMA_PX, channels)
    blurred = tf.nn.depthwise_conv2d(
        tf.pad(pixels, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC"),
        kernel,
        strides=[1, 1, 1, 1],
        padding="VALID",
    )
    low, high = AUGMENT_BLUR_RANGE
    amount = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[0], low, high)
    use_blur = tf.cast(
        tf.random.stateless_uniform([batch, 1, 1, 1], seeds[1]) < AUGMENT_PROBABILITY, tf.float32
    )
    pixels = pixels + use_blur * amount * (blurred - pixels)
    noise_std = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[2], 0.0, AUGMENT_NOISE_MAX)
    use_noise = tf.cast(
        tf.random.stateless_uniform([batch, 1, 1, 1], seeds[3]) < AUGMENT_PROBABILITY, tf.float32
    )
    pixels = pixels + use_noise * noise_std * tf.random.stateless_normal(tf.shape(pixels), seeds[4])
    augmented = tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)
    if channels == 3:
        qualities = tf.random.stateless_uniform(
            [batch], seeds[5], AUGMENT_JPEG_QUALITY[0], AUGMENT_JPEG_QUALITY[1] + 1, dtype=tf.int32
        )
        use_jpeg = tf.random.stateless_uniform([batch], tf.reverse(seeds[5], [0])) < AUGMENT_PROBABILITY

        def recode(item):
            image, quality, recode_it = item
            return tf.cond(
                recode_it,
                lambda: tf.ensure_shape(
                    tf.image.decode_jpeg(tf.image.encode_jpeg(image, quality=quality), channels=3),
                    image.shape,
                ),
                lambda: image,
            )

        augmented = tf.map_fn(
            recode,
            (augmented, qualities, use_jpeg),
            fn_output_signature=tf.TensorSpec(augmented.shape[1:], tf.uint8),
        )
    return augmented


# --- The datasets ---------------------------------------------------------------------------------


def _hash_sample(records: tf.data.Dataset, fraction: float) -> tf.data.Dataset:
    """Keep about `fraction` of the records, chosen by a hash of each record's bytes: the same records
    whatever the read order (validation)."""
    if fraction >= 1.0:
        return records

    def keep(serialized):
        buckets = tf.strings.to_hash_bucket_fast(serialized, HASH_BUCKETS)
        return tf.boolean_mask(serialized, tf.cast(buckets, tf.float32) / HASH_BUCKETS < fraction)

    # A filter per record costs ~20 us; a mask over a block of records ~1 us per record.
    return records.batch(SAMPLE_BLOCK).map(keep, num_parallel_calls=AUTOTUNE).unbatch()


def _shard_pass(path, num_records, compression: str, seed) -> tf.data.Dataset:
    """One pass over a shard, in order, from a random start record round to the one before it.

    The start comes from a stateless generator keyed by (seed, the pass's position in the file stream),
    so that a --deterministic run gets the same starts whatever the parallelism.
    """
    start = tf.random.stateless_uniform([], seed, 0, tf.maximum(num_records, 1), dtype=tf.int64)
    records = tf.data.TFRecordDataset(path, compression_type=compression)
    return records.skip(start).concatenate(
        tf.data.TFRecordDataset(path, compression_type=compression).take(start)
    )


def _read_records(
    paths: Sequence[str], config: TrainConfig, shuffle: bool, num_records: Sequence[int] | None = None
) -> tf.data.Dataset:
    """The records of the shards: in order (validation, evaluation), or endlessly in shuffled shard
    passes from random starts (training; `num_records` per shard, from the manifest)."""
    compression = "GZIP" if config.compression == "gzip" else ""
    # The manifest lists the shards: no glob (one stat per shard on GCS, and a directory named like
    # "runs[1]" would be read as a pattern).
    if not shuffle:
        files = tf.data.Dataset.from_tensor_slices(list(paths))
        return files.interleave(
            lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
            cycle_length=max(1, min(config.cycle_length, len(paths))),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    counts = list(num_records) if num_records is not None else [0] * len(paths)
    files = (
        tf.data.Dataset.from_tensor_slices((list(paths), tf.constant(counts, tf.int64)))
        .shuffle(len(paths), seed=config.seed, reshuffle_each_iteration=True)
        .repeat()
        .enumerate()
    )
    return files.interleave(
        lambda position, shard: _shard_pass(
            shard[0], shard[1], compression, tf.stack([tf.constant(config.seed, tf.int64), position])
        ),
        cycle_length=max(1, min(config.cycle_length, len(paths))),
        num_parallel_calls=AUTOTUNE,
        deterministic=config.deterministic,
    )


def _batched_records(
    paths: Sequence[str],
    config: TrainConfig,
    batch_size: int,
    shuffle: bool,
    subset: float = 1.0,
    fields: tuple[str, ...] = ("image_encoded", "angle_degrees"),
    num_records: Sequence[int] | None = None,
    fraction: float = 1.0,
) -> tf.data.Dataset:
    """Batches of the record `fields` (schemas.record names) for records whose angle is in the bins
    (and whose image is in the --max-images subset): an endless shuffled stream (training) or the
    shards in order, optionally a `fraction` hash sample of them (validation)."""
    records = _hash_sample(_read_records(paths, config, shuffle, num_records), fraction)
    if shuffle:
        records = records.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    kept_fields = fields
    if subset < 1.0 and "image_id" not in fields:
        fields = (*fields, "image_id")
    batches = records.batch(batch_size, drop_remainder=shuffle).map(
        lambda serialized: schemas.parse_batch(serialized, fields), num_parallel_calls=AUTOTUNE
    )
    table = tf.constant(label_table(config.bin_angles))
    # Evaluating a 4-way model on 360-angle records, say, needs the filter; the usual run does not.
    every_angle = set(config.bin_angles) >= set(config.record_angles or range(schemas.NUM_ANGLES))
    if every_angle and subset >= 1.0:
        return batches

    subset_mask = subset_mask_function(subset)

    def keep(batch):
        mask = tf.gather(table, batch["angle_degrees"]) >= 0
        if subset < 1.0:
            in_subset = tf.numpy_function(subset_mask, [batch["image_id"]], tf.bool, stateful=False)
            mask = tf.logical_and(mask, tf.ensure_shape(in_subset, [None]))
        return {name: tf.boolean_mask(batch[name], mask) for name in kept_fields}

    # Filtering leaves ragged batches; re-batching restores the batch size (cheap: encoded bytes only).
    return batches.map(keep, num_parallel_calls=AUTOTUNE).unbatch().batch(batch_size, drop_remainder=shuffle)


def _to_model_inputs(config: TrainConfig, head: Head):
    table = tf.constant(label_table(config.bin_angles))
    height, width = config.image_size

    def convert(batch):
        images = decode_images(batch["image_encoded"], config.image_format, height, width, config.channels)
        return images, head.targets_tf(tf.gather(table, batch["angle_degrees"]))

    return convert


def training_dataset(
    paths: Sequence[str], config: TrainConfig, head: Head, num_records: Sequence[int]
) -> tf.data.Dataset:
    """Endless shuffled (uint8 images, targets) batches of config.global_batch_size; `num_records` is
    each shard's record count (the manifest's)."""
    batches = _batched_records(
        paths,
        config,
        config.global_batch_size,
        shuffle=True,
        subset=config.train_fraction,
        num_records=num_records,
    )
    batches = batches.map(_to_model_inputs(config, head), num_parallel_calls=AUTOTUNE)
    if config.augment:
        # The batch index and the run's seed make each batch's draws: stateless, angle-blind.
        batches = batches.enumerate().map(
            lambda index, batch: (
                augment_images(batch[0], tf.stack([tf.cast(config.seed, tf.int64), index])),
                batch[1],
            ),
            num_parallel_calls=AUTOTUNE,
        )
    options = tf.data.Options()
    options.deterministic = config.deterministic  # off: parallel steps hand on whatever is ready first
    return batches.prefetch(AUTOTUNE).with_options(options)


def validation_dataset(paths: Sequence[str], config: TrainConfig, head: Head, steps: int) -> tf.data.Dataset:
    """The same `steps` batches every epoch: a hash sample spread over the whole split (shards in order,
    no shuffling; wrapping around if it falls short), kept in memory after the first epoch, with a known
    length so Keras restarts it at each validation."""
    batches = _batched_records(
        paths, config, config.global_batch_size, shuffle=False, fraction=config.validation_fraction
    )
    return (
        batches.repeat()
        .take(steps)
        .cache()
        .apply(tf.data.experimental.assert_cardinality(steps))
        .map(_to_model_inputs(config, head), num_parallel_calls=AUTOTUNE)
        .prefetch(AUTOTUNE)
    )


def evaluation_dataset(paths: Sequence[str], config: TrainConfig, batch_size: int) -> tf.data.Dataset:
    """Every record of the shards whose angle is in the model's bins, in shard order:
    (uint8 images, angles int32, source labels int32 (the digit for MNIST, else -1))."""
    height, width = config.image_size

    def convert(batch):
        images = decode_images(batch["image_encoded"], config.image_format, height, width, config.channels)
        return images, tf.cast(batch["angle_degrees"], tf.int32), tf.cast(batch["label"], tf.int32)

    batches = _batched_records(
        paths, config, batch_size, shuffle=False, fields=("image_encoded", "angle_degrees", "label")
    )
    return batches.map(convert, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
