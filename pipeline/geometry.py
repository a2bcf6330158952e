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
* `prepare_source` + `fast_rotation`: rotnet 0.1's chain, kept as `--rendering legacy`: downscale the
  center crop once per image, then one `cv2.warpAffine` per angle whose matrix composes rotation, crop
  and scale; >= 30 dB PSNR against the reference on real photos (tests/test_geometry.py). It copies
  pixels at right angles and blurs them at 45 degrees, a cue a network can learn instead of the image.
* `prepare_render_source` + `render`: what the pipeline runs by default. The same picture with no
  angle cue: every angle, right angles included, resampled alike (isotropic low-pass, supersampled
  level, per-record sub-pixel offset and optional random kernel from the record key), cropped at one
  constant scale for every angle by default. See "Angle-independent rendering" below; >= 30 dB PSNR
  against a supersampled reference on the Street View samples (tests/test_geometry.py).

`View` + `prepare_view` + `upright_view` (at the end): the one preparation the records writer and
every serving path share, so a model is served the picture its records show at 0 degrees.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
import threading
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


# --- Angle-independent rendering ------------------------------------------------------------
#
# The fast chain samples a source only 1.5x finer than the output (28 px digits: the source itself)
# with bilinear interpolation. At 0/90/180/270 degrees the output grid then sits on the source grid
# and copies pixels (sharp); at 45 degrees every output pixel blends neighbours (blurred). A network
# learns that sharpness as a cue for `angle mod 90` instead of reading the image (a model that scores
# well on its own records and worse on the same images turned by any other code). The rendering below
# removes it:
#
# 1. `prepare_render_source` (once per image): low-pass the square with an isotropic Gaussian and
#    resample it to a "level" SUPERSAMPLE times finer than the output pixel spacing. An isotropic
#    filter commutes with rotation: filtering then rotating equals rotating then filtering, so the
#    output's blur is the same at every angle. The level is fine enough, relative to the blur, that
#    bilinear sampling of it is close to point-sampling the filtered image, whatever the angle.
# 2. `render` (once per record): one warpAffine of the level, its grid shifted by a per-record sub-pixel
#    offset (`record_jitter`, from a hash of the record key), so that 0 degrees is not a grid-aligned
#    copy either. With resampling "random" a per-record resampling kernel (bilinear, bicubic, area,
#    lanczos or none, at a random sub-pixel phase) is then applied in the *output* frame: that frame is
#    the same at every angle, so the kernel's signature varies from record to record but says nothing
#    about the angle.
#
# Crops (`crop_scale`): "largest" is RotNet's, each angle's own largest fill-free rectangle (a 45-degree
# record is zoomed by up to sqrt(2) relative to 0: a scale cue); "constant" crops every angle at the
# scale of the tightest angle of the set, so the field of view is identical at 0 and 45 degrees.

RESAMPLINGS = ("fixed", "random")
CROP_SCALES = ("largest", "constant")
# Per-record kernels of resampling "random"; "lowpass" adds nothing to the level's Gaussian.
KERNELS = ("lowpass", "bilinear", "bicubic", "area", "lanczos")

# Standard deviation of the isotropic low-pass, in output pixels. 0.4 attenuates the output's Nyquist
# frequency to 0.45 and the diagonal one (sqrt 2 higher: what a 45-degree turn brings onto the axes) to
# 0.2; a box (area) filter of one output pixel has a spread of 0.29 px on its own.
# Against a supersampled reference (4x bicubic grid over the same rectangle, area-downsampled) on the
# Street View samples, 10 angles per image: minimum PSNR 31.8 dB (constant crop) / 30.6 dB (largest)
# at 0.4; 36.3 / 32.4 dB at 0.3; 29.0 / 28.2 dB at 0.5.
LOWPASS_SIGMA_OUTPUT_PX = 0.4
# ... and at least this many *source* pixels: where the output is as fine as the source (28 px MNIST at
# 28 px), the source's own pixel grid (stroke edges at pixel boundaries, its anti-aliasing) sits at the
# output's Nyquist frequency and would turn with the angle; 0.8 px attenuates it to 0.04 (0.6: 0.17).
# Measured with the level-pixel offset (Jitter), cue audit of 400 pre-rotated MNIST digits every 5
# degrees, excess over chance of the paired statistics: 4.4 points at 0.6, 2.4 at 0.8, 0.7 at 1.0; a
# 15-epoch screening run of the documented recipe: worst rotation code 9.91 degrees at 0.6, 10.17 at 0.8
# (worst/best 1.043 both), one run each.
MIN_SIGMA_SOURCE_PX = 0.8
# Level pixels per output pixel. Bilinear interpolation of the level blurs a little more or less with
# the sub-pixel phase; at exact right angles every output pixel has the same phase (the record's
# offset), elsewhere the phases mix. Measured on 200 MNIST digits (each statistic minus the same digit's
# mean over angles, tools/cue_audit.py): at 2x, the energy above a 0.7 px Gaussian is 8 standard errors
# lower at 0 degrees than at the other angles (the legacy chain: 450 higher); at 4x it is within noise.
# 4x costs nothing at small outputs (the warp's cost follows the output size; a 28 px digit's level is
# 128 px) but a 224 px photo's level would be larger than the photo itself; there 2x: a 634 px level,
# ~335 us per warp (951 px: 436 us). The Laplacian variance ratio (rendering over the same digit at 37
# degrees) is 1.000-1.004 on average at 0, 1, 5, 22, 45, 89 and 90 degrees at 2x, 3x and 4x alike
# (the legacy chain: 1.81 at 0 and 90 degrees, 0.84 at 5).
SUPERSAMPLE = 2.0
SUPERSAMPLE_SMALL = 4.0
SMALL_OUTPUT_PX = 64  # outputs up to this size (height and width) get SUPERSAMPLE_SMALL
# Crop "largest": one level per LEVEL_RATIO of output pixel spacing (a sqrt 2 range: 5 levels), the
# nearest used at each angle, so the low-pass in output pixels stays within +-4.4% across angles.
LEVEL_RATIO = 2.0**0.125
# OpenCV's warp resolves sub-pixel positions to 1/32 pixel; crops stay this much further from the edge.
_WARP_PRECISION_PX = 1.0 / 32.0
# Kernel phases are quantized to this many steps per pixel, so the taps come from a small cache.
_PHASE_STEPS = 64


@dataclass(frozen=True)
class Jitter:
    """What `render` varies from record to record, independently of the angle.

    `offset_x`/`offset_y`: shift of the output sampling grid in *level* pixels, in [-0.5, 0.5): a
    random phase of the level's grid, so that 0 degrees is not sampled at one fixed phase while 37
    degrees mixes them all. `kernel`: one of KERNELS, applied in the output frame at sub-pixel phase
    (`phase_x`, `phase_y`) in [0, 1); `box_width`: the area kernel's box, output pixels in [1, 2).

    Why level pixels, measured (MNIST, 15-epoch screening runs, docs/benchmarks.md mnist_quality): an
    offset of +-0.5 *output* pixels acts as translation noise and cost a model trained on such records
    4 degrees on them (13.5 mean against 9.6 on the same digits rendered without it; worst/best over
    the rotation codes 1.42), while +-0.5 level pixels (1/8 output pixel at 4x) kept every code within
    1.07 of the best (9.5-10.2). What it leaves: content at the source's own Nyquist frequency maps onto
    the output grid only at exact right angles: in the cue audit of pre-rotated digits sampled every 5
    degrees, +4.4 points over chance with MIN_SIGMA_SOURCE_PX 0.6, +2.4 with 0.8 (the default); a
    low-pass steeper than a Gaussian near the source's Nyquist would remove it.
    """

    offset_x: float = 0.0
    offset_y: float = 0.0
    kernel: str = "lowpass"
    phase_x: float = 0.0
    phase_y: float = 0.0
    box_width: float = 1.0


NO_JITTER = Jitter()
_JITTER_WORDS = struct.Struct("<6I")


def record_jitter(key: str, resampling: str = "fixed") -> Jitter:
    """The jitter of the record with this key (schemas.record.example_key): a pure function of the key.

    BLAKE2b of the key gives uniform numbers, the same on every machine and run, and distributed the
    same way at every angle. "fixed" draws only the grid offset (kernel "lowpass"); "random" also draws
    a kernel from KERNELS, its phases and box width.
    """
    if resampling not in RESAMPLINGS:
        raise ValueError(f"resampling {resampling!r} is not one of {', '.join(RESAMPLINGS)}")
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=24, person=b"rotnet-jitter-v1").digest()
    words = _JITTER_WORDS.unpack(digest)
    scale = 1.0 / 2.0**32
    offset_x, offset_y = words[0] * scale - 0.5, words[1] * scale - 0.5
    if resampling == "fixed":
        return Jitter(offset_x, offset_y)
    kernel = KERNELS[words[2] * len(KERNELS) >> 32]
    return Jitter(offset_x, offset_y, kernel, words[3] * scale, words[4] * scale, 1.0 + words[5] * scale)


@dataclass(frozen=True)
class RenderLevel:
    """The low-passed square at `scale_x`/`scale_y` level pixels per source pixel (RGBA for RGB
    sources), padded by `margin` black pixels on each side (sources rendered without a crop), built for
    an output pixel spacing of `output_pixel_px` source pixels."""

    pixels: np.ndarray
    scale_x: float
    scale_y: float
    margin: int
    output_pixel_px: float


@dataclass(frozen=True)
class RenderSource:
    """A source image prepared once for `render` at every angle (see `prepare_render_source`).

    `width`/`height`: the (center-cropped) source, pixels. `crop`: "none" (the whole square, corners
    black), "largest" or "constant". `constant_crop`: (width, height) in source pixels for "constant",
    valid for `angles_degrees` only. `edge_margin`: source pixels the crops keep clear of the edge (the
    outermost level pixel centers, plus warp precision).
    """

    levels: tuple[RenderLevel, ...]
    width: int
    height: int
    channels: int
    crop: str
    constant_crop: tuple[float, float] | None
    edge_margin: float
    angles_degrees: frozenset[float]


def _largest_crop(width: int, height: int, margin: float, angle_degrees: float) -> tuple[float, float]:
    """The largest fill-free (width, height) at the angle, inside the outermost level pixel centers."""
    return largest_rotated_rect(width - margin, height - margin, angle_degrees)


def _level_spacings(spacings: list[float]) -> list[float]:
    """Output pixel spacings (source px) to build levels for, finest first: geometric steps <= LEVEL_RATIO."""
    low, high = min(spacings), max(spacings)
    if high <= low * (1 + 1e-9):
        return [low]
    steps = math.ceil(math.log(high / low) / math.log(LEVEL_RATIO) - 1e-9)
    return [low * (high / low) ** (k / steps) for k in range(steps + 1)]


def _blur(pixels: np.ndarray, sigma: float, border: int) -> np.ndarray:
    return (
        pixels
        if sigma <= 0.05
        else _with_channels(cv2.GaussianBlur(pixels, (0, 0), sigma, borderType=border))
    )


def _build_levels(
    source: np.ndarray,
    spacings: list[float],
    padded: bool,
    sigma_output_px: float,
    min_sigma_source_px: float,
    supersample: float,
) -> tuple[RenderLevel, ...]:
    """One RenderLevel per output pixel spacing (source px, finest first), each made from the previous."""
    margin = 0
    if padded:
        # Without a crop the rotated corners show black: blur the image's edge against black (it then
        # has the same profile at every angle), with room for the blur's spread inside the array.
        margin = math.ceil(3.0 * max(sigma_output_px * max(spacings), min_sigma_source_px)) + 2
        source = _with_channels(
            cv2.copyMakeBorder(source, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=0)
        )
    border = cv2.BORDER_CONSTANT if padded else cv2.BORDER_REFLECT_101
    height, width = source.shape[:2]
    current, current_scale, current_sigma = source, 1.0, 0.0  # sigma: source px of blur already applied
    levels = []
    for spacing in spacings:
        sigma = max(sigma_output_px * spacing, min_sigma_source_px)
        size = (max(1, round(width * supersample / spacing)), max(1, round(height * supersample / spacing)))
        scale_x, scale_y = size[0] / width, size[1] / height
        add = math.sqrt(max(sigma**2 - current_sigma**2, 0.0))
        if size[0] > current.shape[1]:
            # Upsampling (small sources): cubic, then the blur on the finer grid.
            pixels = _with_channels(cv2.resize(current, size, interpolation=cv2.INTER_CUBIC))
            pixels = _blur(pixels, add * min(scale_x, scale_y), border)
        else:
            # Downsampling: blur first, so that the bilinear decimation aliases nothing (the Gaussian
            # leaves 4% at the level's Nyquist frequency); several times faster than INTER_AREA.
            pixels = _blur(current, add * current_scale, border)
            if size[0] < current.shape[1]:
                pixels = _with_channels(cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR))
        current, current_scale, current_sigma = pixels, min(scale_x, scale_y), sigma
        stored = cv2.cvtColor(pixels, cv2.COLOR_RGB2RGBA) if pixels.shape[2] == 3 else pixels
        levels.append(RenderLevel(np.ascontiguousarray(stored), scale_x, scale_y, margin, spacing))
    return tuple(levels)


def prepare_render_source(
    image: np.ndarray,
    image_size: Size,
    angles_degrees: tuple[float, ...] | list[float] | range = range(360),
    center_crop_square: bool = True,
    crop_largest_rect: bool = True,
    crop_scale: str = "largest",
    sigma_output_px: float = LOWPASS_SIGMA_OUTPUT_PX,
    min_sigma_source_px: float = MIN_SIGMA_SOURCE_PX,
    supersample: float | None = None,
) -> RenderSource:
    """Center-crop an HWC uint8 image and build its low-passed level(s) for `render` at `angles_degrees`.

    Without `crop_largest_rect` the output shows the whole square (corners black, like MNIST's). With
    it, `crop_scale` "largest" crops each angle's own largest rectangle (one level per LEVEL_RATIO of
    output pixel spacing), "constant" every angle at the tightest angle's rectangle (one level).
    `supersample` (level pixels per output pixel) defaults to SUPERSAMPLE_SMALL for outputs up to
    SMALL_OUTPUT_PX, SUPERSAMPLE above. Costs a few milliseconds per photo (a Gaussian at full
    resolution, one resize per level), ~0.2 ms per 28 px digit.
    """
    _check_image(image)
    if crop_scale not in CROP_SCALES:
        raise ValueError(f"crop scale {crop_scale!r} is not one of {', '.join(CROP_SCALES)}")
    source = np.ascontiguousarray(center_crop(image) if center_crop_square else image)
    height, width = source.shape[:2]
    out_height, out_width = as_size(image_size)
    angles = _angle_set(tuple(angles_degrees))
    if not angles:
        raise ValueError("angles_degrees must not be empty")
    if supersample is None:
        small = max(out_height, out_width) <= SMALL_OUTPUT_PX
        supersample = SUPERSAMPLE_SMALL if small else SUPERSAMPLE
    build = {
        "sigma_output_px": sigma_output_px,
        "min_sigma_source_px": min_sigma_source_px,
        "supersample": supersample,
    }

    def spacing(crop: tuple[float, float]) -> float:
        # A rotated crop mixes x and y: the finer of the two spacings sets the level for both axes.
        return min(crop[0] / out_width, crop[1] / out_height)

    if not crop_largest_rect:
        levels = _build_levels(source, [spacing((width, height))], True, **build)
        return RenderSource(levels, width, height, source.shape[2], "none", None, 0.0, angles)

    def crops(margin: float) -> list[tuple[float, float]]:
        found = [_largest_crop(width, height, margin, angle) for angle in sorted(angles)]
        if crop_scale == "constant":
            # No larger than any angle's largest rectangle on either side: fill-free at every angle.
            return [(min(crop[0] for crop in found), min(crop[1] for crop in found))]
        return found

    # The edge margin depends on the coarsest level's pixel size, which depends on the crops: a second
    # pass only shrinks the crops, so the margin found in the first still holds.
    margin = 1.0
    coarsest = max(_level_spacings([spacing(crop) for crop in crops(margin)]))
    margin = max(1.0, coarsest / supersample) * (1.0 + _WARP_PRECISION_PX) + _WARP_PRECISION_PX
    final_crops = crops(margin)
    levels = _build_levels(source, _level_spacings([spacing(crop) for crop in final_crops]), False, **build)
    constant = final_crops[0] if crop_scale == "constant" else None
    return RenderSource(levels, width, height, source.shape[2], crop_scale, constant, margin, angles)


@functools.lru_cache(maxsize=64)
def _angle_set(angles_degrees: tuple[float, ...]) -> frozenset[float]:
    """The angles as a set of floats: one object for every source of a run (360 floats per 28 px digit
    cost a third of its preparation)."""
    return frozenset(float(angle) for angle in angles_degrees)


def render_crop(source: RenderSource, angle_degrees: float) -> tuple[float, float]:
    """(width, height) in source pixels of the rectangle `render` shows at the angle."""
    if source.crop == "none":
        return float(source.width), float(source.height)
    if source.crop == "constant":
        if float(angle_degrees) not in source.angles_degrees:
            raise ValueError(
                f"crop scale constant was prepared for other angles than {angle_degrees}: prepare the "
                "source with every angle it will be rendered at"
            )
        return source.constant_crop
    return _largest_crop(source.width, source.height, source.edge_margin, angle_degrees)


def _level_for(source: RenderSource, output_pixel_px: float) -> RenderLevel:
    levels = source.levels
    if len(levels) == 1:
        return levels[0]
    return min(levels, key=lambda level: abs(math.log(level.output_pixel_px / output_pixel_px)))


def render_matrix(
    source: RenderSource, angle_degrees: float, image_size: Size, jitter: Jitter = NO_JITTER
) -> tuple[RenderLevel, list[list[float]]]:
    """The level `render` samples and the 2x3 matrix from output pixel indices to its pixel indices
    (cv2.WARP_INVERSE_MAP). Output pixel (u, v) samples the point (u + 0.5, v + 0.5) of the crop
    rectangle's output grid shifted by (offset_x, offset_y) level pixels, turned back by the angle into
    the source."""
    out_height, out_width = as_size(image_size)
    crop_width, crop_height = render_crop(source, angle_degrees)
    step_x, step_y = crop_width / out_width, crop_height / out_height
    level = _level_for(source, min(step_x, step_y))
    # Output index -> rotated-frame coordinates about the crop center (source pixels); the record's
    # offset is a phase of the level's grid (level pixels), not a shift of the content.
    x0 = 0.5 * step_x + jitter.offset_x / level.scale_x - crop_width / 2.0
    y0 = 0.5 * step_y + jitter.offset_y / level.scale_y - crop_height / 2.0
    # Undo the counter-clockwise turn (the transpose of cv2's rotation matrix), then into level pixels
    # (level pixel i is centered on source coordinate (i + 0.5) / scale - margin).
    angle = math.radians(angle_degrees)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    sx, sy = level.scale_x, level.scale_y
    center_x, center_y = source.width / 2.0 + level.margin, source.height / 2.0 + level.margin
    return level, [
        [sx * cos_a * step_x, -sx * sin_a * step_y, sx * (cos_a * x0 - sin_a * y0 + center_x) - 0.5],
        [sy * sin_a * step_x, sy * cos_a * step_y, sy * (sin_a * x0 + cos_a * y0 + center_y) - 0.5],
    ]


def _keys_cubic(x: float, a: float = -0.5) -> float:
    """Keys' cubic convolution kernel (a = -0.5: PIL's bicubic; OpenCV's uses -0.75)."""
    x = abs(x)
    if x <= 1.0:
        return (a + 2.0) * x**3 - (a + 3.0) * x**2 + 1.0
    return a * x**3 - 5.0 * a * x**2 + 8.0 * a * x - 4.0 * a if x < 2.0 else 0.0


def _lanczos(x: float, lobes: int = 3) -> float:
    if x == 0.0:
        return 1.0
    if abs(x) >= lobes:
        return 0.0
    return lobes * math.sin(math.pi * x) * math.sin(math.pi * x / lobes) / (math.pi * x) ** 2


@functools.lru_cache(maxsize=4096)
def _taps(kernel: str, phase_step: int, box_step: int) -> np.ndarray:
    phase, box_width = phase_step / _PHASE_STEPS, 1.0 + box_step / _PHASE_STEPS
    if kernel == "lowpass":
        weights = {0: 1.0}
    elif kernel == "bilinear":
        weights = {0: 1.0 - phase, 1: phase}
    elif kernel == "bicubic":
        weights = {k: _keys_cubic(k - phase) for k in range(-1, 3)}
    elif kernel == "lanczos":
        weights = {k: _lanczos(k - phase) for k in range(-2, 4)}
    elif kernel == "area":
        # A box of box_width pixels centered at the phase, integrated over each pixel [k - 0.5, k + 0.5].
        left, right = phase - box_width / 2.0, phase + box_width / 2.0
        weights = {k: max(0.0, min(right, k + 0.5) - max(left, k - 0.5)) for k in range(-2, 4)}
    else:
        raise ValueError(f"kernel {kernel!r} is not one of {', '.join(KERNELS)}")
    radius = max(abs(k) for k in weights)
    taps = np.zeros(2 * radius + 1, np.float32)
    for k, weight in weights.items():
        taps[radius + k] = weight
    taps /= taps.sum()
    taps.flags.writeable = False
    return taps


def kernel_taps(kernel: str, phase: float, box_width: float = 1.0) -> np.ndarray:
    """1-D taps (float32, odd length, anchored at the center, summing to 1) that resample a row at
    `phase` in [0, 1) of a pixel to the right with `kernel` (one of KERNELS; "lowpass": identity).
    Phases and box widths are quantized to 1/64 pixel."""
    phase_step = min(round(phase * _PHASE_STEPS), _PHASE_STEPS - 1)
    box_step = min(max(round((box_width - 1.0) * _PHASE_STEPS), 0), _PHASE_STEPS)
    return _taps(kernel, phase_step, box_step)


def render(
    source: RenderSource,
    angle_degrees: float,
    image_size: Size,
    jitter: Jitter = NO_JITTER,
    fill: int | None = None,
) -> np.ndarray:
    """One record's picture: `source` turned counter-clockwise by the angle (degrees), cropped, at
    `image_size`, with the record's `jitter` (`record_jitter` of its key); HWC uint8, source channels.

    One warpAffine of the prepared level (+ one small separable filter for a "random" kernel). `fill`
    (tests) paints samples outside the level in that value, which with a crop must never show; by
    default crops replicate the edge (it only absorbs sub-pixel rounding).
    """
    out_height, out_width = as_size(image_size)
    level, matrix = render_matrix(source, angle_degrees, image_size, jitter)
    if fill is not None:
        border, value = cv2.BORDER_CONSTANT, fill
    elif source.crop == "none":
        border, value = cv2.BORDER_CONSTANT, 0
    else:
        border, value = cv2.BORDER_REPLICATE, 0
    rotated = cv2.warpAffine(
        level.pixels,
        np.array(matrix),
        (out_width, out_height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=border,
        borderValue=(value,) * level.pixels.shape[2],
    )
    if source.channels == 3:
        rotated = cv2.cvtColor(rotated, cv2.COLOR_RGBA2RGB)  # before the filter: 3 channels, not 4
    if jitter.kernel != "lowpass":
        rotated = cv2.sepFilter2D(
            rotated,
            -1,
            kernel_taps(jitter.kernel, jitter.phase_x, jitter.box_width),
            kernel_taps(jitter.kernel, jitter.phase_y, jitter.box_width),
            borderType=cv2.BORDER_REFLECT_101,
        )
    return _with_channels(rotated)


# --- Many records of one source at once (the shard writer's hot loop) ----------------------------
#
# A 28 px record costs ~45 us of CPU, ~8 of them in Python around the one warp: the Jitter dataclass,
# render_matrix's float arithmetic, the matrix list turned into an array. `render_records` computes the
# jitter words of a batch with one BLAKE2b call per key (the digest is the definition of the jitter: it
# cannot be shared between keys), the matrices as NumPy columns with the very float operations of
# render_matrix (elementwise IEEE arithmetic, so the same bits), and warps each record into one array.
# One remap of a whole batch was measured too and was slower: computing its maps costs more than the
# warpAffine calls it saves.

_JITTER_SCALE = 1.0 / 2.0**32


class _AngleTable:
    """render_matrix's jitter-independent numbers for every angle rendered so far, one row per angle, for
    every source of one geometry (_angle_table); each computed by `_angle_row` exactly as render_matrix
    computes it, in Python floats. Columns (COLUMNS): the matrix's first two columns (4), 0.5 * step
    (x, y), crop / 2.0 (x, y), the level's scale (x, y), (cos, sin), (-sin, cos), the center (x, y)."""

    COLUMNS = 16

    def __init__(self) -> None:
        self.rows: dict[float, int] = {}  # angle -> row
        self.level = np.zeros(0, np.intp)  # index into source.levels
        self.data = np.zeros((0, self.COLUMNS))
        # Beam's SDK workers run bundles in threads (on Flink: two WriteShards stages of one worker at
        # once), and the table is shared: rows are added under the lock, and an angle's row is
        # published only once `data` and `level` hold it (they only ever grow), so a reader without
        # the lock never sees a row past their end (seen on Flink before: "index 61 is out of bounds
        # for axis 0 with size 60").
        self._lock = threading.Lock()

    def lookup(
        self, source: RenderSource, angles_degrees: list[float], out_height: int, out_width: int
    ) -> np.ndarray:
        """The row of each angle, adding the ones not seen yet."""
        rows = self.rows
        try:
            return np.array([rows[angle] for angle in angles_degrees], np.intp)
        except KeyError:
            pass
        with self._lock:
            missing = [angle for angle in dict.fromkeys(angles_degrees) if angle not in rows]
            if not missing:  # another thread added them while this one waited for the lock
                return np.array([rows[angle] for angle in angles_degrees], np.intp)
            new = [_angle_row(source, angle, out_height, out_width) for angle in missing]
            first = len(self.data)
            self.level = np.concatenate([self.level, [index for index, _ in new]]).astype(np.intp)
            self.data = np.concatenate([self.data, [values for _, values in new]])
            for offset, angle in enumerate(missing):
                rows[angle] = first + offset
        return np.array([rows[angle] for angle in angles_degrees], np.intp)


# Sources of one geometry (every 28 px MNIST digit, every Street View photo of one size) share a table:
# keyed by everything render_crop and _level_for read. Bounded; a directory of odd-sized photos has many.
_ANGLE_TABLES: dict[tuple, _AngleTable] = {}
_MAX_ANGLE_TABLES = 1024


def _angle_table(source: RenderSource, out_height: int, out_width: int) -> _AngleTable:
    key = (
        source.width,
        source.height,
        source.crop,
        source.constant_crop,
        source.edge_margin,
        tuple((level.output_pixel_px, level.scale_x, level.scale_y, level.margin) for level in source.levels),
        out_height,
        out_width,
        # render_crop refuses an angle a constant crop was not prepared for: the set is part of the key.
        source.angles_degrees if source.crop == "constant" else None,
    )
    table = _ANGLE_TABLES.get(key)
    if table is None:
        if len(_ANGLE_TABLES) >= _MAX_ANGLE_TABLES:
            _ANGLE_TABLES.clear()
        table = _ANGLE_TABLES[key] = _AngleTable()
    return table


def _angle_row(source: RenderSource, angle_degrees: float, out_height: int, out_width: int) -> tuple:
    """render_matrix's jitter-independent part at one angle, with its very operations: (level index,
    the row of _AngleTable.COLUMNS)."""
    crop_width, crop_height = render_crop(source, angle_degrees)
    step_x, step_y = crop_width / out_width, crop_height / out_height
    level = _level_for(source, min(step_x, step_y))
    angle = math.radians(angle_degrees)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    sx, sy = level.scale_x, level.scale_y
    index = next(i for i, candidate in enumerate(source.levels) if candidate is level)
    center_x, center_y = source.width / 2.0 + level.margin, source.height / 2.0 + level.margin
    return index, (
        sx * cos_a * step_x, -sx * sin_a * step_y, sy * sin_a * step_x, sy * cos_a * step_y,
        0.5 * step_x, 0.5 * step_y, crop_width / 2.0, crop_height / 2.0, sx, sy,
        cos_a, sin_a, -sin_a, cos_a, center_x, center_y,
    )  # fmt: skip


def record_jitter_words(keys: list[str]) -> np.ndarray:
    """The six uint32 words of `record_jitter` for each key, (n, 6): one BLAKE2b call per key."""
    blake2b = hashlib.blake2b
    digests = b"".join(
        [blake2b(key.encode("utf-8"), digest_size=24, person=b"rotnet-jitter-v1").digest() for key in keys]
    )
    return np.frombuffer(digests, dtype="<u4").reshape(len(keys), 6).astype(np.int64)


def render_matrices(
    source: RenderSource, angles_degrees: list[float], image_size: Size, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`render_matrix` of many records of one source: (level index per record, (n, 2, 3) float64
    matrices), bit for bit the same as render_matrix with `Jitter(offsets[i, 0], offsets[i, 1])`.

    `offsets`: (n, 2) level-pixel offsets (x, y). The per-angle part comes from a table shared by every
    source of the same geometry; the rest is render_matrix's arithmetic, in the same order, on (n, 2)
    columns (x and y side by side).
    """
    out_height, out_width = as_size(image_size)
    table = _angle_table(source, out_height, out_width)
    rows = table.lookup(source, angles_degrees, out_height, out_width)
    data = table.data[rows]
    scale = data[:, 8:10]
    # x0, y0 = 0.5 * step + offset / scale - crop / 2.0
    origin = data[:, 4:6] + offsets / scale - data[:, 6:8]
    # (cos x0 - sin y0, sin x0 + cos y0): a - b as a + (-b), which IEEE rounds alike
    turned = data[:, 10:12] * origin[:, :1] + data[:, 12:14] * origin[:, 1:]
    matrices = np.empty((len(rows), 2, 3))
    matrices[:, :, :2] = data[:, :4].reshape(-1, 2, 2)
    matrices[:, :, 2] = scale * (turned + data[:, 14:16]) - 0.5  # scale * (turned + center) - 0.5
    return table.level[rows], matrices


def render_records(
    source: RenderSource,
    angles_degrees: list[float],
    image_size: Size,
    keys: list[str],
    resampling: str = "fixed",
) -> np.ndarray:
    """The pictures of many records of one source, (n, height, width, channels) uint8: record i is
    `render(source, angles_degrees[i], image_size, record_jitter(keys[i], resampling))`, the same bytes."""
    if resampling not in RESAMPLINGS:
        raise ValueError(f"resampling {resampling!r} is not one of {', '.join(RESAMPLINGS)}")
    out_height, out_width = as_size(image_size)
    count = len(keys)
    words = record_jitter_words(keys)
    offsets = words[:, :2] * _JITTER_SCALE - 0.5
    index, matrices = render_matrices(source, angles_degrees, image_size, offsets)
    channels = source.channels
    pictures = np.empty((count, out_height, out_width, channels), np.uint8)
    if source.crop == "none":
        border = cv2.BORDER_CONSTANT
    else:
        border = cv2.BORDER_REPLICATE
    levels, size, warp = source.levels, (out_width, out_height), cv2.warpAffine
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    fill = (0,) * levels[0].pixels.shape[2]
    index = index.tolist()
    if channels == 1:
        for i in range(count):
            warp(levels[index[i]].pixels, matrices[i], size, pictures[i, :, :, 0], flags, border, fill)
    else:
        to_rgb, rgba2rgb = cv2.cvtColor, cv2.COLOR_RGBA2RGB
        for i in range(count):
            to_rgb(
                warp(levels[index[i]].pixels, matrices[i], size, None, flags, border, fill),
                rgba2rgb,
                pictures[i],
            )
    if resampling == "random":
        kernels = (words[:, 2] * len(KERNELS)) >> 32
        phases = words[:, 3:6] * _JITTER_SCALE
        for i in range(count):
            kernel = KERNELS[int(kernels[i])]
            if kernel == "lowpass":
                continue
            phase_x, phase_y, box = (float(value) for value in phases[i])
            box_width = 1.0 + box
            filtered = cv2.sepFilter2D(
                pictures[i],
                -1,
                kernel_taps(kernel, phase_x, box_width),
                kernel_taps(kernel, phase_y, box_width),
                borderType=cv2.BORDER_REFLECT_101,
            )
            pictures[i] = _with_channels(filtered)
    return pictures


# --- The view: what a record shows of its source, for training and serving alike ----------------
#
# A model is served what it was trained on only if a photo is prepared exactly as the records were:
# the same channels, square, crop scale (constant crops show the central 1/sqrt(2) of the square at
# every angle) and low-pass. `View` holds those facts (the manifest's pipeline config has them; the
# trainer copies them into train_config.json), `prepare_view` is the records writer's preparation of a
# source image, and `upright_view` is the record it would write at 0 degrees without the per-record
# jitter: what every serving path (trainer.predict, rotnet-correct, the robustness codes) feeds a model.

RENDERINGS = ("angle-independent", "legacy")


@dataclass(frozen=True)
class View:
    """How records draw a source image (pipeline.config.PipelineConfig's geometry fields).

    `image_size`: output side, pixels (records are square). `channels`: 1 (grey, PIL's luma) or 3 (RGB).
    `center_crop`: the largest square is cut first, at `crop_position` ("center" | "right").
    `crop_largest_rect` / `crop_scale` / `rendering`: see prepare_render_source and the pipeline's
    options. `angles_degrees`: the records' angle set (counter-clockwise), which fixes the constant crop.
    """

    image_size: int
    channels: int
    center_crop: bool = True
    crop_position: str = "center"
    crop_largest_rect: bool = False
    crop_scale: str = "largest"
    rendering: str = "angle-independent"
    angles_degrees: tuple[int, ...] = tuple(range(360))

    def to_dict(self) -> dict:
        """JSON-ready (train_config.json's `view`)."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "center_crop": self.center_crop,
            "crop_position": self.crop_position,
            "crop_largest_rect": self.crop_largest_rect,
            "crop_scale": self.crop_scale,
            "rendering": self.rendering,
            "angles_degrees": list(self.angles_degrees),
        }

    @classmethod
    def from_dict(cls, data: dict) -> View:
        """From `to_dict`'s output or a manifest's pipeline config (other keys are ignored); raises
        ValueError naming a missing or unknown value."""
        try:
            view = cls(
                image_size=int(data["image_size"]),
                channels=int(data["channels"]),
                center_crop=bool(data.get("center_crop", True)),
                crop_position=str(data.get("crop_position", "center")),
                crop_largest_rect=bool(data["crop_largest_rect"]),
                crop_scale=str(data.get("crop_scale", "largest")),
                rendering=str(data.get("rendering", "angle-independent")),
                angles_degrees=tuple(sorted({int(angle) for angle in data["angles_degrees"]})),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"a view needs image_size, channels, crop_largest_rect, angles_degrees: {error}"
            ) from None
        if view.channels not in (1, 3) or view.image_size < 1 or not view.angles_degrees:
            raise ValueError(f"not a view: channels {view.channels}, image size {view.image_size}")
        if view.crop_position not in CROP_POSITIONS or view.crop_scale not in CROP_SCALES:
            raise ValueError(f"unknown crop position {view.crop_position!r} or scale {view.crop_scale!r}")
        if view.rendering not in RENDERINGS:
            raise ValueError(f"rendering {view.rendering!r} is not one of {', '.join(RENDERINGS)}")
        return view


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An HW / HWC uint8 image (grey, RGB or RGBA) as HWC with 1 or 3 channels, converted as the
    pipeline's decoder converts (PIL): alpha composited over black, grey by PIL's integer luma
    (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16, so a served photo matches its records exactly."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HWC image with 1, 3 or 4 channels, got shape {image.shape}")
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.uint32)
        # PIL's alpha_composite over opaque black: round(c * a / 255).
        image = ((image[:, :, :3].astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)
    if channels == 1 and image.shape[2] == 3:
        weighted = image.astype(np.uint32) @ np.array([19595, 38470, 7471], np.uint32)
        return ((weighted + 0x8000) >> 16).astype(np.uint8)[:, :, np.newaxis]
    if channels == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    return np.ascontiguousarray(image)


def view_source(image: np.ndarray, view: View) -> np.ndarray:
    """The part of a decoded source image (HWC uint8) the records turn: the view's channels and square."""
    image = to_channels(image, view.channels)
    if view.center_crop:
        image = crop_square(image, view.crop_position)  # type: ignore[arg-type]
    return np.ascontiguousarray(image)


def prepare_view(
    image: np.ndarray, view: View, angles_degrees: tuple[int, ...] | list[int] | range | None = None
) -> Source | RenderSource:
    """The records writer's preparation of one source image (HWC uint8, any channels) for every angle of
    the view (or `angles_degrees`): channels, square, then the view's rendering's source
    (prepare_render_source, or the legacy chain's prepare_source)."""
    square = view_source(image, view)
    angles = view.angles_degrees if angles_degrees is None else angles_degrees
    if view.rendering == "legacy":
        if view.crop_largest_rect and view.crop_scale != "largest":
            raise ValueError(
                "the legacy rendering crops each angle's largest rectangle: crop scale 'largest'"
            )
        return prepare_source(square, view.image_size, angles, False, view.crop_largest_rect)
    return prepare_render_source(
        square, view.image_size, angles, False, view.crop_largest_rect, view.crop_scale
    )


def min_prepared_bytes(view: View) -> int:
    """A lower bound on the bytes of `prepare_view`'s pixels for this view, whatever the source: one
    level of at least the output side times the supersampling, RGBA for RGB; 0 for the legacy chain,
    whose source can be smaller than its square. The pipeline sends a square smaller than this through
    its shuffle and prepares it after."""
    if view.rendering == "legacy":
        return 0
    factor = SUPERSAMPLE_SMALL if view.image_size <= SMALL_OUTPUT_PX else SUPERSAMPLE
    side = math.floor(view.image_size * factor)
    return side * side * (4 if view.channels == 3 else 1)


def upright_view(image: np.ndarray, view: View) -> np.ndarray:
    """What a model trained on the view's records is served: the record the pipeline would write of
    `image` at 0 degrees, without the record's sub-pixel jitter (image_size x image_size x channels).

    The angle set is the view's plus 0, which changes no crop: 0 degrees' largest rectangle is the
    whole square, so a constant crop stays the tightest angle's.
    """
    angles = tuple(sorted(set(view.angles_degrees) | {0}))
    source = prepare_view(image, view, angles)
    if isinstance(source, Source):
        return fast_rotation(source, 0, view.image_size)
    return render(source, 0, view.image_size, NO_JITTER)


def view_crop(width: int, height: int, view: View, angle_degrees: float) -> tuple[int, int] | None:
    """(width, height) in pixels of the rectangle the view's records show of a width x height square
    turned by the angle: each angle's own largest rectangle, the tightest one of the view's angles
    (constant scale), or None (no crop: the whole square, corners black). For rotation code
    written elsewhere (trainer.robustness) that must crop as the records do."""
    if not view.crop_largest_rect:
        return None
    if view.crop_scale == "largest":
        return crop_size(width, height, angle_degrees)
    return _constant_crop(width, height, view.angles_degrees)


@functools.lru_cache(maxsize=1024)
def _constant_crop(width: int, height: int, angles_degrees: tuple[int, ...]) -> tuple[int, int]:
    sizes = [crop_size(width, height, angle) for angle in angles_degrees]
    return min(size[0] for size in sizes), min(size[1] for size in sizes)
