"""Prepared images become records here, and a shard's records get their order: pure (geometry + codec +
schema), no Beam, TensorFlow or IO.

    image = PreparedImage("mnist", "train", "00042", 7, prepare(pixels, 28, range(360), crop_largest_rect=False))
    shard_records([image, ...], angles_degrees=range(360), image_size=28, image_format="png") -> bytes, ...

The one place a source image becomes records. The Beam shard writer (pipeline.transforms.WriteShards)
and the in-process writer for fixtures and benchmarks (pipeline.local_writer) both call it, so a test
directory holds exactly the bytes the pipeline would write.

A shard is rendered on the fly from its prepared images (memory: the prepared images, never the
records), in the order of `schemas.sharding.record_order_key` over all its (image, angle) pairs, so
consecutive records come from different images and angles and any prefix is a uniform sample.

Two renderings (RENDERINGS), chosen when the image is prepared:

* "angle-independent" (the default): `geometry.prepare_render_source` + `geometry.render` with the
  record's jitter (sub-pixel offset, optionally a random kernel), a pure function of its key
  `schemas.record.example_key(dataset, split, image_id, angle)`: every angle, right angles included,
  is resampled alike, so the records carry no interpolation cue to their angle;
* "legacy": `geometry.prepare_source` + `geometry.fast_rotation`, rotnet 0.1's chain (exact copies at
  right angles, blur elsewhere), kept for ablations and the benchmarks' "before".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

import schemas
from pipeline import codec, geometry
from schemas import sharding
from schemas.record import example_encoder, example_keys

RENDERINGS = geometry.RENDERINGS

PreparedSource = geometry.Source | geometry.RenderSource


@dataclass(frozen=True)
class PreparedImage:
    """A decoded image, prepared once for every angle (square crop, downscale or render levels)."""

    dataset: str
    split: str
    image_id: str
    label: int
    source: PreparedSource


def prepare(
    image: np.ndarray,
    image_size: int,
    angles_degrees: Sequence[int],
    *,
    crop_largest_rect: bool,
    rendering: str = "angle-independent",
    crop_scale: str = "largest",
    center_crop_square: bool = True,
) -> PreparedSource:
    """Prepare an HWC uint8 image once for all its rotations with the given rendering (RENDERINGS):
    `geometry.prepare_view` with a view of the image's own channels and these options.

    `crop_scale` ("largest" | "constant", geometry.CROP_SCALES) applies to the angle-independent
    rendering; the legacy chain always crops each angle's largest rectangle.
    """
    if rendering not in RENDERINGS:
        raise ValueError(f"rendering {rendering!r} is not one of {', '.join(RENDERINGS)}")
    view = geometry.View(
        image_size=image_size,
        channels=image.shape[2],
        center_crop=center_crop_square,
        crop_largest_rect=crop_largest_rect,
        crop_scale=crop_scale,
        rendering=rendering,
        angles_degrees=tuple(angles_degrees),
    )
    return geometry.prepare_view(image, view)


# fast_matrix depends only on sizes (every MNIST digit, every Street View photo shares them) and costs
# more than the warp itself; bounded, since a directory of odd-sized photos has many sizes.
_MATRICES: dict[tuple, np.ndarray] = {}
_MAX_MATRICES = 100_000


def rotation_matrix(source: geometry.Source, angle_degrees: int, image_size: int) -> np.ndarray:
    """`geometry.fast_matrix(source, angle_degrees, image_size)`, cached by the sizes it depends on."""
    key = (
        source.pixels.shape,
        source.width,
        source.height,
        source.crop_largest_rect,
        angle_degrees,
        image_size,
    )
    matrix = _MATRICES.get(key)
    if matrix is None:
        if len(_MATRICES) >= _MAX_MATRICES:
            _MATRICES.clear()
        matrix = _MATRICES[key] = geometry.fast_matrix(source, angle_degrees, image_size)
    return matrix


def rotation_image(
    source: PreparedSource, key: str, angle_degrees: int, image_size: int, resampling: str = "fixed"
) -> np.ndarray:
    """The pixels (HWC uint8) of the record with this key: `source` turned by the angle (degrees,
    counter-clockwise). The legacy chain ignores the key and `resampling`."""
    if isinstance(source, geometry.RenderSource):
        return geometry.render(source, angle_degrees, image_size, geometry.record_jitter(key, resampling))
    return geometry.fast_rotation(
        source, angle_degrees, image_size, rotation_matrix(source, angle_degrees, image_size)
    )


def record_encoder(
    image: PreparedImage,
    image_format: str,
    image_size: int,
    jpeg_quality: int = codec.DEFAULT_JPEG_QUALITY,
    resampling: str = "fixed",
) -> Callable[[Sequence[int], Sequence[str]], list[bytes]]:
    """`encode(angles_degrees, keys) -> serialized records` of one prepared image, many at a time (its
    fixed fields serialized once; `resampling` is "fixed" or "random", geometry.RESAMPLINGS). `keys[i]`
    is the `example_key` of the record at `angles_degrees[i]` (shard_records has them already).

    A batch is rendered by `geometry.render_records` (one NumPy pass for the jitters and matrices, a warp
    per record) and encoded by `codec.encode_images`: per record, the same bytes as rendering, encoding
    and serializing it alone, with less Python around each of them.
    """
    if resampling not in geometry.RESAMPLINGS:
        raise ValueError(f"resampling {resampling!r} is not one of {', '.join(geometry.RESAMPLINGS)}")
    template = schemas.Record(
        image_encoded=b"",
        image_format=image_format,
        height=image_size,
        width=image_size,
        channels=image.source.channels,
        angle_degrees=0,
        dataset=image.dataset,
        split=image.split,
        image_id=image.image_id,
        label=image.label,
    )
    serialize = example_encoder(template)
    source, encode_images = image.source, codec.encode_images

    # Pictures rendered and encoded together: as many as fit in BATCH_PIXEL_BYTES, so that each is still
    # in the cache when it is encoded (one 224 px photo record at a time; hundreds of 28 px digits).
    batch = max(1, BATCH_PIXEL_BYTES // (image_size * image_size * image.source.channels))

    def encode(angles_degrees: Sequence[int], keys: Sequence[str]) -> list[bytes]:
        angles, keys = [int(angle) for angle in angles_degrees], list(keys)
        records: list[bytes] = []
        for start in range(0, len(angles), batch):
            some_angles, some_keys = angles[start : start + batch], keys[start : start + batch]
            if isinstance(source, geometry.RenderSource):
                pictures = geometry.render_records(source, some_angles, image_size, some_keys, resampling)
            else:
                pictures = np.stack(
                    [
                        rotation_image(source, key, angle, image_size)
                        for angle, key in zip(some_angles, some_keys, strict=True)
                    ]
                )
            encoded = encode_images(pictures, image_format, jpeg_quality)
            records += [serialize(data, angle) for data, angle in zip(encoded, some_angles, strict=True)]
        return records

    return encode


# Raw pixels of one batch of record_encoder: within a core's L2 cache. With 100-record batches of 224 px
# photos (15 MB of pictures rendered before the first was encoded) the shard writer's chain took ~20%
# more CPU per record than one record at a time (medians of 2 x 3 runs on a shared machine).
BATCH_PIXEL_BYTES = 512 << 10


def encode_rotations(
    image: PreparedImage,
    angles_degrees: Sequence[int],
    image_size: int,
    image_format: str,
    jpeg_quality: int = codec.DEFAULT_JPEG_QUALITY,
    resampling: str = "fixed",
) -> list[bytes]:
    """Serialized records of one image turned by each angle, in the order of `angles_degrees`."""
    encode = record_encoder(image, image_format, image_size, jpeg_quality, resampling)
    angles = [int(angle) for angle in angles_degrees]
    if not angles:
        return []
    return encode(angles, example_keys(image.dataset, image.split, image.image_id, angles))


def record_order(images: Sequence[PreparedImage], angles_degrees: Sequence[int]) -> list[tuple[int, int]]:
    """(index into `images`, angle) of every record of a shard, in the shard's order."""
    return [(index, angle) for _, index, angle, _ in _keyed_order(images, angles_degrees)]


def _keyed_order(
    images: Sequence[PreparedImage], angles_degrees: Sequence[int]
) -> list[tuple[bytes, int, int, str]]:
    """(order key, index into `images`, angle, example key) of every record of a shard, sorted."""
    angles = [int(angle) for angle in angles_degrees]
    keyed: list[tuple[bytes, int, int, str]] = []
    for index, image in enumerate(images):
        keys = example_keys(image.dataset, image.split, image.image_id, angles)
        keyed += zip(sharding.record_order_keys(keys), itertools.repeat(index), angles, keys, strict=False)
    keyed.sort()
    return keyed


def shard_records(
    images: Sequence[PreparedImage],
    angles_degrees: Sequence[int],
    image_size: int,
    image_format: str,
    jpeg_quality: int = codec.DEFAULT_JPEG_QUALITY,
    resampling: str = "fixed",
) -> Iterator[bytes]:
    """Every record of a shard holding `images` (any order), in the shard's order (shard_windows' records,
    one at a time)."""
    for window in shard_windows(images, angles_degrees, image_size, image_format, jpeg_quality, resampling):
        yield from window


def shard_windows(
    images: Sequence[PreparedImage],
    angles_degrees: Sequence[int],
    image_size: int,
    image_format: str,
    jpeg_quality: int = codec.DEFAULT_JPEG_QUALITY,
    resampling: str = "fixed",
) -> Iterator[list[bytes]]:
    """Every record of a shard holding `images` (any order) in the shard's order, a window (list) at a
    time: what the shard writers write (ShardWriter.write_many), rendered window by window."""
    images = sorted(images, key=lambda image: image.image_id)  # ties of the order key: never arrival order
    encoders = [record_encoder(image, image_format, image_size, jpeg_quality, resampling) for image in images]
    order = _keyed_order(images, angles_degrees)
    # Rendering in the shard's order jumps from image to image at every record, and a 224 px photo's
    # render level (~1.6 MB) falls out of the cache each time: half the rate (measured 1,235 against
    # 2,299 records/s on one core). So each window of the order is rendered image by image, each image's
    # records of the window in one batch (record_encoder), then yielded in order: the same bytes, memory
    # for one window of encoded records.
    channels = images[0].source.channels if images else 1
    window = max(
        RENDER_WINDOW_RECORDS,
        RENDER_WINDOW_RECORDS_PER_IMAGE * len(images),
        RENDER_WINDOW_PIXEL_BYTES // (image_size * image_size * channels),
    )
    # The order as columns, so that a window is grouped by image with NumPy and C-level lookups.
    image_column = np.array([entry[1] for entry in order], np.intp)
    angle_column = [entry[2] for entry in order]
    key_column = [entry[3] for entry in order]
    for start in range(0, len(order), window):
        stop = min(start + window, len(order))
        encoded = np.empty(stop - start, dtype=object)
        by_image = np.argsort(image_column[start:stop], kind="stable")
        sorted_images = image_column[start:stop][by_image]
        bounds = [0, *(np.flatnonzero(sorted_images[1:] != sorted_images[:-1]) + 1).tolist(), stop - start]
        for first, last in itertools.pairwise(bounds):
            positions = by_image[first:last]
            window_positions = (positions + start).tolist()
            angles = [angle_column[position] for position in window_positions]
            keys = [key_column[position] for position in window_positions]
            encoded[positions] = encoders[sorted_images[first]](angles, keys)
        yield encoded.tolist()


# Records rendered together by shard_records: at least this many, and this many per image of the shard
# (so that each image's level is read a few times per window). Street View: 1,024 records ~ 27 MB.
RENDER_WINDOW_RECORDS = 1024
RENDER_WINDOW_RECORDS_PER_IMAGE = 8
# ... and at least as many as hold this many bytes of raw pixels, so that small records come in batches
# large enough for record_encoder's NumPy passes to pay (28 px MNIST: ~42,800 records, ~19 per image of
# a 2,250-digit shard, ~26 MB of encoded records; a 224 px photo's record: the two bounds above rule).
RENDER_WINDOW_PIXEL_BYTES = 32 << 20
