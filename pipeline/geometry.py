"""Geometry core: center crop, rotation, largest-axis-aligned-rectangle crop and resize.

Pure NumPy/OpenCV; no Beam, TensorFlow or file I/O. Conventions:

* images are HWC uint8 arrays (H x W x 1 for grey, H x W x 3 for RGB); functions keep the channel axis;
* angles are degrees, counter-clockwise as seen on screen (the y axis points down);
* pixel `i` covers the continuous interval [i, i + 1); its center is at i + 0.5;
* sizes are `(height, width)` tuples or one int for a square.

Two chains make the same picture of an image rotated by an angle, cropped to the largest axis-aligned
rectangle that holds no fill pixel, and resized:

* `reference_chain`: as the RotNet post describes it - rotate at full resolution onto a canvas that holds
  the whole rotated image, crop the largest rectangle, resize. Slow; kept for tests and benchmarks.
* `prepare_source` + `fast_rotation`: downscale the center crop once per image, then make each angle
  with one `cv2.warpAffine` whose matrix composes rotation, crop and scale. This is what the pipeline
  runs; its output matches the reference to at least 30 dB PSNR on real photos (the test's threshold,
  tests/test_geometry.py; 35.8 dB measured, docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

Size = int | tuple[int, int]
# Where the square sits in crop_square: Street View's overlay icon is in the top-left corner.
CROP_POSITIONS = ("center", "right")
CropPosition = Literal["center", "right"]

# RotNet's MNIST binarization threshold, as a fraction of full scale (255).
BINARIZE_THRESHOLD = 0.1

# The fast chain keeps its downscaled source this much finer than one source pixel per output pixel
# at the tightest crop. Bilinear sampling at exactly one pixel spacing blurs (PSNR vs the reference
# fell to 30.9 dB at 45 degrees on the Street View samples); 1.5 lifted the minimum to 35.8 dB, while
# 2.0 starts to alias at 0 degrees (31.9 dB). Measured with tests/test_geometry.py's PSNR check.
OVERSAMPLE = 1.5


def as_size(size: Size) -> tuple[int, int]:
    """(height, width) from an int (square) or a pair."""
    height, width = (size, size) if isinstance(size, int | np.integer) else size
    if height <= 0 or width <= 0:
        raise ValueError(f"size {size} must be positive")
    return int(height), int(width)


def _with_channels(image: np.ndarray) -> np.ndarray:
    """OpenCV drops a single channel axis; put it back so images stay HWC."""
    return image[:, :, np.newaxis] if image.ndim == 2 else image


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.dtype != np.uint8 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an HWC uint8 image with 1 or 3 channels, got {image.dtype} {image.shape}")


# --- Building blocks --------------------------------------------------------------------------


def center_crop(image: np.ndarray, size: Size | None = None) -> np.ndarray:
    """The centered `size` window; by default the largest centered square. Returns a view."""
    height, width = image.shape[:2]
    crop_height, crop_width = (min(height, width),) * 2 if size is None else as_size(size)
    if crop_height > height or crop_width > width:
        raise ValueError(f"crop {crop_height}x{crop_width} is larger than the image {height}x{width}")
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return image[top : top + crop_height, left : left + crop_width]


def crop_square(image: np.ndarray, position: CropPosition = "center") -> np.ndarray:
    """The largest square of an HWC image: centered, or right-aligned (`"right"`) to drop the overlay
    icon in the top-left corner of Street View images. Vertically centered in both cases. Returns a view.
    """
    height, width = image.shape[:2]
    side = min(height, width)
    top = (height - side) // 2
    if position == "center":
        left = (width - side) // 2
    elif position == "right":
        left = width - side
    else:
        raise ValueError(f"crop position {position!r} is not 'center' or 'right'")
    return image[top : top + side, left : left + side]


def largest_rotated_rect(width: float, height: float, angle_degrees: float) -> tuple[float, float]:
    """(width, height) of the largest axis-aligned rectangle inside a width x height rectangle rotated
    by the angle about its center.

    Exact for any aspect ratio (RotNet's version computes gamma as atan2(bb_w, bb_w), which is right only
    for squares). When the short side is short enough, the optimum touches two opposite sides
    ("half-constrained"); otherwise all four corners touch the rotated sides.
    """
    if width <= 0 or height <= 0:
        return 0.0, 0.0
    angle = math.radians(angle_degrees)
    sin_a, cos_a = abs(math.sin(angle)), abs(math.cos(angle))
    width_is_longer = width >= height
    side_long, side_short = (width, height) if width_is_longer else (height, width)
    if side_short <= 2.0 * sin_a * cos_a * side_long or abs(sin_a - cos_a) < 1e-10:
        half = 0.5 * side_short
        crop_width, crop_height = (
            (half / sin_a, half / cos_a) if width_is_longer else (half / cos_a, half / sin_a)
        )
    else:
        cos_2a = cos_a * cos_a - sin_a * sin_a
        crop_width = (width * cos_a - height * sin_a) / cos_2a
        crop_height = (height * cos_a - width * sin_a) / cos_2a
    return crop_width, crop_height


def _rotated_bounds(width: int, height: int, angle_degrees: float) -> tuple[int, int]:
    """(width, height) of the canvas that holds a width x height image rotated by the angle."""
    angle = math.radians(angle_degrees)
    sin_a, cos_a = abs(math.sin(angle)), abs(math.cos(angle))
    return (
        math.ceil(width * cos_a + height * sin_a - 1e-6),
        math.ceil(width * sin_a + height * cos_a - 1e-6),
    )


def _is_right_angle(angle_degrees: float) -> bool:
    return float(angle_degrees) % 90.0 == 0.0


def crop_size(width: int, height: int, angle_degrees: float) -> tuple[int, int]:
    """Integer (width, height) of the crop the chains take from a width x height image rotated by the angle.

    Bilinear interpolation blends in the fill colour for any point outside the rectangle spanned by
    the outermost pixel *centers*, so the rectangle is fitted into (width - 1) x (height - 1). Its
    size is rounded down to the parity of the rotated canvas so the crop sits exactly on the canvas
    center (no half-pixel shift between the reference and the fast chain). Right angles are exact.
    """
    if _is_right_angle(angle_degrees):
        return (height, width) if int(angle_degrees) // 90 % 2 else (width, height)
    fit_width, fit_height = largest_rotated_rect(width - 1, height - 1, angle_degrees)
    canvas_width, canvas_height = _rotated_bounds(width, height, angle_degrees)

    def floor_with_parity(value: float, parity_of: int) -> int:
        size = math.floor(value + 1e-9)
        return max(1, size - 1 if (size - parity_of) % 2 else size)

    return floor_with_parity(fit_width, canvas_width), floor_with_parity(fit_height, canvas_height)


def rotate(image: np.ndarray, angle_degrees: float, expand: bool = True, fill: int = 0) -> np.ndarray:
    """Rotate counter-clockwise about the image center with bilinear interpolation.

    `expand=True` returns a canvas that holds the whole rotated image (RotNet's `rotate`); otherwise
    the canvas keeps the input size and the corners are cut. Uncovered pixels get `fill`. Right angles
    with `expand` are exact (np.rot90).
    """
    _check_image(image)
    height, width = image.shape[:2]
    if expand and _is_right_angle(angle_degrees):
        return np.ascontiguousarray(np.rot90(image, k=int(angle_degrees) // 90 % 4))
    canvas_width, canvas_height = _rotated_bounds(width, height, angle_degrees) if expand else (width, height)
    # cv2's matrix maps source to destination, counter-clockwise for positive angles; shift so that the
    # source center lands on the canvas center, in pixel-center coordinates (index + 0.5).
    matrix = cv2.getRotationMatrix2D((0.0, 0.0), float(angle_degrees), 1.0)
    linear = matrix[:, :2]
    source_center = np.array([width / 2.0 - 0.5, height / 2.0 - 0.5])
    canvas_center = np.array([canvas_width / 2.0 - 0.5, canvas_height / 2.0 - 0.5])
    matrix[:, 2] = canvas_center - linear @ source_center
    border_value = (fill,) * image.shape[2]
    rotated = cv2.warpAffine(
        image,
        matrix,
        (canvas_width, canvas_height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border_value,
    )
    return _with_channels(rotated)


def crop_around_center(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The centered width x height window (clamped to the image). Returns a view."""
    image_height, image_width = image.shape[:2]
    width, height = min(int(width), image_width), min(int(height), image_height)
    left, top = (image_width - width) // 2, (image_height - height) // 2
    return image[top : top + height, left : left + width]


def resize(image: np.ndarray, size: Size) -> np.ndarray:
    """Resize to `size` (height, width): area averaging when shrinking (no aliasing), bilinear otherwise."""
    height, width = as_size(size)
    if image.shape[:2] == (height, width):
        return image
    shrinking = height < image.shape[0] or width < image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return _with_channels(cv2.resize(image, (width, height), interpolation=interpolation))


# --- The reference chain ----------------------------------------------------------------------


def reference_chain(
    image: np.ndarray,
    angle_degrees: float,
    image_size: Size,
    center_crop_square: bool = True,
    crop_largest_rect: bool = True,
) -> np.ndarray:
    """RotNet's chain at full resolution: [center crop] -> rotate -> [largest-rect crop] -> resize."""
    _check_image(image)
    source = center_crop(image) if center_crop_square else image
    height, width = source.shape[:2]
    if not crop_largest_rect:
        # Without the crop the canvas keeps its size (a 45-degree digit is not shrunk to fit).
        return resize(rotate(source, angle_degrees, expand=False), image_size)
    rotated = rotate(source, angle_degrees, expand=True)
    crop_width, crop_height = crop_size(width, height, angle_degrees)
    return resize(crop_around_center(rotated, crop_width, crop_height), image_size)


# --- The fast chain ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A source image prepared once for all its rotations.

    `pixels` is the (center-cropped) image downscaled to OVERSAMPLE source pixels per output pixel at
    the tightest crop; RGB is stored as RGBA because OpenCV's 4-channel warp is vectorized (104 us vs
    267 us for 224 px on one core). `width`/`height` are the full-resolution size the crop rectangles
    are computed in; `channels` is what callers get back (1 or 3).
    """

    pixels: np.ndarray
    width: int
    height: int
    channels: int
    crop_largest_rect: bool


def prepare_source(
    image: np.ndarray,
    image_size: Size,
    angles_degrees: tuple[float, ...] | list[float] | range = range(360),
    center_crop_square: bool = True,
    crop_largest_rect: bool = True,
) -> Source:
    """Center-crop and downscale once; the scale depends on the smallest crop among `angles_degrees`."""
    _check_image(image)
    source = center_crop(image) if center_crop_square else image
    height, width = source.shape[:2]
    out_height, out_width = as_size(image_size)
    if crop_largest_rect:
        crops = [crop_size(width, height, angle) for angle in set(angles_degrees)] or [(width, height)]
        min_crop_width = min(crop[0] for crop in crops)
        min_crop_height = min(crop[1] for crop in crops)
        # Output pixels must be at least one source pixel apart in both directions; since a rotated
        # crop's x and y mix, use the tighter ratio for both axes.
        ratio = OVERSAMPLE * max(out_width / min_crop_width, out_height / min_crop_height)
        target_width, target_height = math.ceil(width * ratio), math.ceil(height * ratio)
    else:
        target_width, target_height = math.ceil(OVERSAMPLE * out_width), math.ceil(OVERSAMPLE * out_height)
    target_width, target_height = min(width, target_width), min(height, target_height)
    pixels = resize(np.ascontiguousarray(source), (target_height, target_width))
    channels = pixels.shape[2]
    if channels == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2RGBA)
    return Source(
        pixels=pixels, width=width, height=height, channels=channels, crop_largest_rect=crop_largest_rect
    )


def fast_matrix(source: Source, angle_degrees: float, image_size: Size) -> np.ndarray:
    """The 2x3 matrix mapping output pixel indices to `source.pixels` indices (cv2.WARP_INVERSE_MAP).

    Output pixel (u, v) has its center at (u + 0.5) / out_width of the crop rectangle; that point,
    rotated back into the unrotated image and scaled into the downscaled pixels, is where it samples.
    """
    out_height, out_width = as_size(image_size)
    if source.crop_largest_rect:
        crop_width, crop_height = crop_size(source.width, source.height, angle_degrees)
    else:
        crop_width, crop_height = source.width, source.height
    # Output index -> rotated-frame coordinates relative to the center (full-resolution pixels).
    to_rotated = np.array(
        [
            [crop_width / out_width, 0.0, 0.5 * crop_width / out_width - crop_width / 2.0],
            [0.0, crop_height / out_height, 0.5 * crop_height / out_height - crop_height / 2.0],
        ]
    )
    # Undo a counter-clockwise rotation: the inverse (transpose) of cv2's rotation matrix.
    angle = math.radians(angle_degrees)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    unrotate = np.array([[cos_a, -sin_a], [sin_a, cos_a]])
    scale = np.diag([source.pixels.shape[1] / source.width, source.pixels.shape[0] / source.height])
    center = np.array([source.width / 2.0, source.height / 2.0])
    linear = scale @ unrotate @ to_rotated[:, :2]
    offset = scale @ (unrotate @ to_rotated[:, 2] + center) - 0.5
    return np.hstack([linear, offset[:, np.newaxis]])


def fast_rotation(
    source: Source, angle_degrees: float, image_size: Size, matrix: np.ndarray | None = None
) -> np.ndarray:
    """One rotated, cropped, resized image from a prepared source: a single warpAffine.

    `matrix` may pass `fast_matrix(source, angle_degrees, image_size)` computed earlier: it depends only
    on the sizes, so the pipeline reuses it for every image of the same size (it costs more than the warp).
    """
    out_height, out_width = as_size(image_size)
    # With the crop, every sample lies inside the image (up to rounding), so replicating the edge only
    # absorbs sub-pixel overshoot; without it, the corners show the black fill like RotNet's MNIST.
    border = cv2.BORDER_REPLICATE if source.crop_largest_rect else cv2.BORDER_CONSTANT
    rotated = cv2.warpAffine(
        source.pixels,
        fast_matrix(source, angle_degrees, image_size) if matrix is None else matrix,
        (out_width, out_height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=border,
        borderValue=(0,) * source.pixels.shape[2],
    )
    return cv2.cvtColor(rotated, cv2.COLOR_RGBA2RGB) if source.channels == 3 else _with_channels(rotated)


def fast_chain(
    image: np.ndarray,
    angle_degrees: float,
    image_size: Size,
    center_crop_square: bool = True,
    crop_largest_rect: bool = True,
) -> np.ndarray:
    """Same signature and picture as `reference_chain`, for one angle (prepares the source each call)."""
    source = prepare_source(image, image_size, [angle_degrees], center_crop_square, crop_largest_rect)
    return fast_rotation(source, angle_degrees, image_size)


# --- Preprocessing ----------------------------------------------------------------------------


def binarize(image: np.ndarray, threshold: float = BINARIZE_THRESHOLD) -> np.ndarray:
    """RotNet's MNIST binarization: 1.0 where value / 255 >= threshold, else 0.0 (float32)."""
    return (image.astype(np.float32) / 255.0 >= threshold).astype(np.float32)


def undo_rotation(image: np.ndarray, angle_degrees: float, crop_largest_rect: bool = False) -> np.ndarray:
    """Rotate an image back by `angle_degrees` (clockwise), keeping its size, optionally cropping the
    largest fill-free rectangle. Used to correct images and to show corrected records."""
    _check_image(image)
    if not crop_largest_rect:
        return rotate(image, -angle_degrees, expand=False)
    height, width = image.shape[:2]
    rotated = rotate(image, -angle_degrees, expand=True)
    crop_width, crop_height = crop_size(width, height, -angle_degrees)
    return crop_around_center(rotated, crop_width, crop_height)
