"""Every rotation of one prepared image as serialized records: pure (geometry + codec + schema).

    source = prepare(image, 28, range(360), crop_largest_rect=False)       # once per image
    encode_rotations(source, template, angles_degrees=(0, 90), image_size=28) -> [bytes, bytes]
    encode_rotation(source, encode, key, angle, image_size, image_format)  -> bytes   # one record

The one place a source image becomes records. The Beam sink (`pipeline.transforms.rotation_records`)
and the in-process writer for fixtures and benchmarks (`pipeline.local_writer`) both call it, so a
test directory holds exactly the bytes the pipeline would write. No Beam, TensorFlow or IO here.

Two renderings (RENDERINGS), chosen by the prepared source's type:

* "legacy": `geometry.prepare_source` + `geometry.fast_rotation`, today's chain (the benchmarks' "before");
* "angle-independent": `geometry.prepare_render_source` + `geometry.render` with the record's jitter,
  a pure function of its key `schemas.record.example_key(dataset, split, image_id, angle)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

import schemas
from pipeline import codec, geometry
from schemas.record import example_encoder, example_key

RENDERINGS = ("legacy", "angle-independent")

# fast_matrix depends only on sizes (every MNIST digit, every Street View photo shares them) and costs
# more than the warp itself; bounded, since a directory of odd-sized photos has many sizes.
_MATRICES: dict[tuple, np.ndarray] = {}
_MAX_MATRICES = 100_000

PreparedSource = geometry.Source | geometry.RenderSource


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
    """Prepare an HWC uint8 image once for all its rotations with the given rendering (RENDERINGS).

    `crop_scale` ("largest" | "constant", geometry.CROP_SCALES) applies to the angle-independent
    rendering; the legacy chain always crops each angle's largest rectangle.
    """
    if rendering == "legacy":
        if crop_largest_rect and crop_scale != "largest":
            raise ValueError(
                "the legacy rendering crops each angle's largest rectangle: crop scale 'largest'"
            )
        return geometry.prepare_source(
            image, image_size, angles_degrees, center_crop_square, crop_largest_rect
        )
    if rendering == "angle-independent":
        return geometry.prepare_render_source(
            image, image_size, angles_degrees, center_crop_square, crop_largest_rect, crop_scale
        )
    raise ValueError(f"rendering {rendering!r} is not one of {', '.join(RENDERINGS)}")


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


def encode_rotation(
    source: PreparedSource,
    encode: Callable[[bytes, int], bytes],
    key: str,
    angle_degrees: int,
    image_size: int,
    image_format: str,
    jpeg_quality: int = codec.DEFAULT_JPEG_QUALITY,
    resampling: str = "fixed",
) -> bytes:
    """One serialized record: render (`rotation_image`), encode as `image_format`, serialize with
    `encode` (schemas.record.example_encoder of the image's template). For writers that emit the
    records of many images in a mixed order; `key` is example_key(dataset, split, image_id, angle)."""
    pixels = rotation_image(source, key, angle_degrees, image_size, resampling)
    return encode(codec.encode_image(pixels, image_format, jpeg_quality), int(angle_degrees))


def encode_rotations(
    source: PreparedSource,
    template: schemas.Record,
    angles_degrees: Sequence[int],
    image_size: int,
    jpeg_quality: int = codec.DEFAULT_JPEG_QUALITY,
    resampling: str = "fixed",
) -> list[bytes]:
    """Serialized records of `source` turned by each angle (degrees counter-clockwise), in that order.

    `template` gives every field but the image bytes and the angle (dataset, split, image id, label,
    format, size, channels); one warpAffine per angle, then encode as `template.image_format`.
    `resampling` ("fixed" | "random", geometry.RESAMPLINGS) applies to the angle-independent rendering.
    """
    if resampling not in geometry.RESAMPLINGS:
        raise ValueError(f"resampling {resampling!r} is not one of {', '.join(geometry.RESAMPLINGS)}")
    encode = example_encoder(template)
    return [
        encode_rotation(
            source,
            encode,
            example_key(template.dataset, template.split, template.image_id, int(angle)),
            int(angle),
            image_size,
            template.image_format,
            jpeg_quality,
            resampling,
        )
        for angle in angles_degrees
    ]
