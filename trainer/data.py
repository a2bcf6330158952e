"""The tf.data input pipeline: shards of rotated records -> (uint8 images, head targets) batches.

The training chain, top to bottom (`training_dataset`):

    endless_shard_passes:
      shard paths (manifest), shuffled     file order reshuffled every pass (the manifest's list, no glob)
      .repeat()                            an endless stream; Keras counts steps_per_epoch
      .interleave(one pass over a shard, cycle_length, parallel for gs:// only, --deterministic)
                                           several shards at once, each read in order from a random
                                           start record to its end and round to the start: the
                                           pipeline writes every shard in a fixed, fully mixed order
                                           (schemas.sharding), so any stretch of it is a uniform
                                           sample of its images and angles and nothing is stepped over
    .shuffle(shuffle_buffer)               mixes the interleaved shards' records further
    .batch(batch_size, drop_remainder)     then everything below works on whole batches
    .map(parse_batch)                      vectorized tf.io.parse_example, keys from schemas.record
    .apply(keep_records)                   only with --angles / --max-images: drop other records,
                                           .unbatch() .batch() to full batches again
    .map(decode, targets)                  PNG/JPEG per image inside the batch map, raw vectorized;
                                           angle -> bin index -> the head's targets
    .apply(_augment)                       only with --warp: a rotation-free elastic resampling with a
                                           random kernel (trainer.augment, NumPy in both loaders);
                                           only with --augment: blur/sharpen, noise, (RGB) JPEG;
                                           random from (seed, batch index), never the angle
    .prefetch(AUTOTUNE)

Preprocessing (binarize / scale / caffe, trainer.preprocessing, keras.ops) is the model's first layer
(trainer.models.Preprocess), not a step here: batches travel as uint8, a quarter of the bytes of
float32 (converting 224 px batches to float32 on the CPU cut the 2-core input rate from ~2,000 to
~1,300 images/s; the flip to BGR alone to ~800), the accelerator does the arithmetic, and every saved
model carries its own preprocessing, so training, Predictor and the SavedModel cannot disagree.

Validation (`validation_dataset`) reads the shards in order, without shuffling, and takes the same
records every epoch, sampled by a hash of each record's key (schemas.splits.in_validation_sample, spread
over every image): the records the TF-free loader (trainer.record_stream, for JAX and torch) picks too. `evaluation_dataset` yields uint8 images, true angles and labels for
rotnet-evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

import schemas
from schemas import paths as schemas_paths
from schemas import verify
from trainer.augment import (
    AUGMENT_BLUR_RANGE,
    AUGMENT_BLUR_SIGMA_PX,
    AUGMENT_JPEG_QUALITY,
    AUGMENT_NOISE_MAX,
    AUGMENT_PROBABILITY,
    blur_radius,
    warp_batch_seeded,
)
from trainer.config import TrainConfig
from trainer.heads import Head
from trainer.preprocessing import IMAGENET_MEANS_BGR, preprocess_images  # noqa: F401  (the model's layer)
from trainer.record_stream import label_table, subset_mask_function, validation_sample_function

AUTOTUNE = tf.data.AUTOTUNE
# libjpeg's default IDCT, as PIL and OpenCV decode at serving. INTEGER_FAST is not worth its picture
# difference: 0.93-1.03x as fast on 224 px q95 records, pixels up to 19 levels apart (docs/benchmarks.md,
# input_pipeline; an earlier ~10% came from a benchmark that timed work buffered in others' windows).
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
SAMPLE_BLOCK = 1024  # records per block when sampling validation records (see _validation_sample)


# --- Damage found while reading ---------------------------------------------------------------


def damaged_record_message(shard_paths: Sequence[str], error: Exception, fix: str) -> str:
    """The damaged-shard message for a tf.errors.DataLossError, which names no file: the shard is
    found by CRC-checking the shards that were being read (schemas.verify)."""
    found = verify.first_damaged_shard(shard_paths)
    if found is None:
        return f"damaged record ({str(error).splitlines()[0]}); {fix}"
    return verify.damaged_shard_message([found], fix)


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


# --- Augmentation ---------------------------------------------------------------------------------


# --augment, per image (trainer/augment.py describes it and holds the numbers; its NumPy/OpenCV twin
# serves the TF-free loader): a blur or sharpening, Gaussian noise, (RGB) a JPEG re-encoding, each
# with probability 1/2, none of it depending on the angle.
def _gaussian_kernel(sigma: float, channels: int) -> tuple[tf.Tensor, int]:
    """A depthwise 2-D Gaussian (isotropic: the same at every orientation) and its radius."""
    radius = blur_radius(sigma)
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


def _validation_sample(records: tf.data.Dataset, fraction: float) -> tf.data.Dataset:
    """Keep about `fraction` of the records, chosen by a hash of each record's key (image id, angle:
    schemas.splits.in_validation_sample): the same records whatever the read order, and the same as
    the TF-free loader picks (trainer.record_stream.validation_records)."""
    if fraction >= 1.0:
        return records
    in_sample = validation_sample_function(fraction)

    def keep(serialized):
        keys = schemas.parse_batch(serialized, ("image_id", "angle_degrees"))
        mask = tf.numpy_function(
            in_sample, [keys["image_id"], keys["angle_degrees"]], tf.bool, stateful=False
        )
        return tf.boolean_mask(serialized, tf.ensure_shape(mask, [None]))

    # Blocks of records: one parse and one Python call per block rather than per record.
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


def _cycle_length(paths: Sequence[str], config: TrainConfig) -> int:
    return max(1, min(config.cycle_length, len(paths)))


def _parallel_reads(paths: Sequence[str], deterministic: bool) -> dict[str, object]:
    """The interleave's parallelism: AUTOTUNE threads for shards in object storage (gs://, where each
    read waits on the network and parallel reads hide it), one thread reading the shards round robin
    for local files: handing each record between threads costs 4-7 us of CPU, a quarter to a third of
    decoding a 28 px PNG (docs/benchmarks.md, input_pipeline)."""
    if any(schemas_paths.is_remote(path) for path in paths):
        return {"num_parallel_calls": AUTOTUNE, "deterministic": deterministic}
    return {}  # one thread: deterministic by construction


def _compression(config: TrainConfig) -> str:
    return "GZIP" if config.compression == "gzip" else ""


def records_in_order(paths: Sequence[str], config: TrainConfig) -> tf.data.Dataset:
    """Every record of the shards, each shard in its written order (validation, evaluation)."""
    # The manifest lists the shards: no glob (one stat per shard on GCS, and a directory named like
    # "runs[1]" would be read as a pattern).
    return tf.data.Dataset.from_tensor_slices(list(paths)).interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=_compression(config)),
        cycle_length=_cycle_length(paths, config),
        **_parallel_reads(paths, deterministic=True),
    )


def endless_shard_passes(
    paths: Sequence[str], config: TrainConfig, num_records: Sequence[int]
) -> tf.data.Dataset:
    """Records for ever: the shard list reshuffled every pass, each shard read once per pass from a
    random start record (`_shard_pass`; `num_records` per shard, from the manifest)."""
    seed = tf.constant(config.seed, tf.int64)
    return (
        tf.data.Dataset.from_tensor_slices((list(paths), tf.constant(list(num_records), tf.int64)))
        .shuffle(len(paths), seed=config.seed, reshuffle_each_iteration=True)
        .repeat()
        .enumerate()  # the pass's position in the file stream keys its random start
        .interleave(
            lambda position, shard: _shard_pass(
                shard[0], shard[1], _compression(config), tf.stack([seed, position])
            ),
            cycle_length=_cycle_length(paths, config),
            **_parallel_reads(paths, config.deterministic),
        )
    )


def _parse(fields: tuple[str, ...]) -> Callable:
    """Batch map: serialized records (B,) -> {field: (B,) tensor}, the schema's own parser."""
    return lambda serialized: schemas.parse_batch(serialized, fields)


def keep_records(
    table: tf.Tensor,
    config: TrainConfig,
    subset: float,
    fields: tuple[str, ...],
    batch_size: int,
    drop_remainder: bool,
) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """For `.apply`: parsed batches -> batches of `fields` of the records whose angle has a bin in
    `table` (label_table) and, for `subset` < 1, whose image is in the stable --max-images subset;
    re-batched to `batch_size`. The identity when every record qualifies (the usual run)."""
    every_angle = set(config.bin_angles) >= set(config.record_angles or range(schemas.NUM_ANGLES))
    if every_angle and subset >= 1.0:
        return lambda batches: batches
    subset_mask = subset_mask_function(subset)

    def keep(batch):
        mask = tf.gather(table, batch["angle_degrees"]) >= 0
        if subset < 1.0:
            in_subset = tf.numpy_function(subset_mask, [batch["image_id"]], tf.bool, stateful=False)
            mask = tf.logical_and(mask, tf.ensure_shape(in_subset, [None]))
        return {name: tf.boolean_mask(batch[name], mask) for name in fields}

    # Filtering leaves ragged batches; re-batching restores the batch size (cheap: encoded bytes only).
    return lambda batches: (
        batches.map(keep, num_parallel_calls=AUTOTUNE)
        .unbatch()
        .batch(batch_size, drop_remainder=drop_remainder)
    )


def _with_image_id(fields: tuple[str, ...], subset: float) -> tuple[str, ...]:
    """The fields to parse: the subset filter also needs each record's image id."""
    return (*fields, "image_id") if subset < 1.0 and "image_id" not in fields else fields


def _to_model_inputs(config: TrainConfig, head: Head, table: tf.Tensor) -> Callable:
    """Batch map: {image_encoded, angle_degrees} -> (uint8 images, the head's targets of the bins)."""
    height, width = config.image_size

    def convert(batch):
        images = decode_images(batch["image_encoded"], config.image_format, height, width, config.channels)
        return images, head.targets_tf(tf.gather(table, batch["angle_degrees"]))

    return convert


def warp_images(images, seed: int, index):
    """--warp in the graph: trainer.augment.warp_batch_seeded through tf.numpy_function (OpenCV's
    remap has no TensorFlow twin with nearest, bilinear and bicubic), so tf.data and the TF-free
    loader warp a batch into the same bytes."""
    warped = tf.numpy_function(
        lambda pixels, batch_index: warp_batch_seeded(pixels, seed, int(batch_index)),
        [images, index],
        tf.uint8,
        stateful=False,
    )
    return tf.ensure_shape(warped, images.shape)


def _augment(config: TrainConfig) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """For `.apply`: --warp's then --augment's draws for each batch, from the run's seed and the batch
    index (angle-blind); the identity without either."""
    if not (config.augment or config.warp):
        return lambda batches: batches
    seed = tf.constant(config.seed, tf.int64)

    def augment_batch(index, batch):
        images = batch[0]
        if config.warp:
            images = warp_images(images, int(config.seed), index)
        if config.augment:
            images = augment_images(images, tf.stack([seed, index]))
        return images, batch[1]

    return lambda batches: batches.enumerate().map(augment_batch, num_parallel_calls=AUTOTUNE)


FIELDS = ("image_encoded", "angle_degrees")  # what training and validation read of a record


def training_dataset(
    paths: Sequence[str], config: TrainConfig, head: Head, num_records: Sequence[int]
) -> tf.data.Dataset:
    """Endless shuffled (uint8 images, targets) batches of config.global_batch_size; `num_records` is
    each shard's record count (the manifest's)."""
    table = tf.constant(label_table(config.bin_angles))
    fields = _with_image_id(FIELDS, config.train_fraction)
    options = tf.data.Options()
    options.deterministic = config.deterministic  # off: parallel steps hand on whatever is ready first
    return (
        endless_shard_passes(paths, config, num_records)
        .shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.global_batch_size, drop_remainder=True)
        .map(_parse(fields), num_parallel_calls=AUTOTUNE)
        .apply(keep_records(table, config, config.train_fraction, FIELDS, config.global_batch_size, True))
        .map(_to_model_inputs(config, head, table), num_parallel_calls=AUTOTUNE)
        .apply(_augment(config))
        .prefetch(AUTOTUNE)
        .with_options(options)
    )


def validation_batches(
    paths: Sequence[str], config: TrainConfig, steps: int, fields: tuple[str, ...] = FIELDS
) -> tf.data.Dataset:
    """The `steps` validation batches, parsed to `fields` (which include angle_degrees): a hash sample
    spread over the whole split (shards in order, no shuffling; wrapping round if it falls short), the
    records trainer.record_stream.validation_records picks too."""
    table = tf.constant(label_table(config.bin_angles))
    batch_size = config.global_batch_size
    return (
        _validation_sample(records_in_order(paths, config), config.validation_fraction)
        .batch(batch_size)
        .map(_parse(fields), num_parallel_calls=AUTOTUNE)
        .apply(keep_records(table, config, 1.0, fields, batch_size, False))
        .repeat()
        .take(steps)
    )


def validation_dataset(paths: Sequence[str], config: TrainConfig, head: Head, steps: int) -> tf.data.Dataset:
    """The same `steps` batches every epoch (`validation_batches`), kept in memory after the first
    epoch, with a known length so Keras restarts it at each validation."""
    table = tf.constant(label_table(config.bin_angles))
    return (
        validation_batches(paths, config, steps)
        .cache()
        .apply(tf.data.experimental.assert_cardinality(steps))
        .map(_to_model_inputs(config, head, table), num_parallel_calls=AUTOTUNE)
        .prefetch(AUTOTUNE)
    )


def evaluation_dataset(paths: Sequence[str], config: TrainConfig, batch_size: int) -> tf.data.Dataset:
    """Every record of the shards whose angle is in the model's bins, in shard order:
    (uint8 images, angles int32, source labels int32 (the digit for MNIST, else -1))."""
    height, width = config.image_size
    table = tf.constant(label_table(config.bin_angles))
    fields = ("image_encoded", "angle_degrees", "label")

    def convert(batch):
        images = decode_images(batch["image_encoded"], config.image_format, height, width, config.channels)
        return images, tf.cast(batch["angle_degrees"], tf.int32), tf.cast(batch["label"], tf.int32)

    return (
        records_in_order(paths, config)
        .batch(batch_size)
        .map(_parse(fields), num_parallel_calls=AUTOTUNE)
        .apply(keep_records(table, config, 1.0, fields, batch_size, False))
        .map(convert, num_parallel_calls=AUTOTUNE)
        .prefetch(AUTOTUNE)
    )
