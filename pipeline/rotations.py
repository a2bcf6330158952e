"""Every rotation of one prepared image as serialized records: pure (geometry + codec + schema).

    encode_rotations(source, template, angles_degrees=(0, 90), image_size=28) -> [bytes, bytes]

The one place a source image becomes records. The Beam sink (`pipeline.transforms.rotation_records`)
and the in-process writer for fixtures and benchmarks (`pipeline.local_writer`) both call it, so a
test directory holds exactly the bytes the pipeline would write. No Beam, TensorFlow or IO here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import schemas
from pipeline import codec, geometry
from schemas.record import example_encoder

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


def encode_rotations(
    source: geometry.Source,
    template: schemas.Record,
    angles_degrees: Sequence[int],
    image_size: int,
    jpeg_quality: int = codec.DEFAULT_JPEG_QUALITY,
) -> list[bytes]:
    """Serialized records of `source` turned by each angle (degrees counter-clockwise), in that order.

    `template` gives every field but the image bytes and the angle (dataset, split, image id, label,
    format, size, channels); one warpAffine per angle, then encode as `template.image_format`.
    """
    encode = example_encoder(template)
    return [
        encode(
            codec.encode_image(
                geometry.fast_rotation(source, angle, image_size, rotation_matrix(source, angle, image_size)),
                template.image_format,
                jpeg_quality,
            ),
            int(angle),
        )
        for angle in angles_degrees
    ]
