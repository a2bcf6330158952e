"""Image encoding and decoding: pure functions over bytes and HWC uint8 arrays (RGB order, never BGR).

* `encode_image` / `decode_image`: the three record formats (png, jpeg, raw).
* `decode_source_image`: any input photo or scan a user might have (EXIF orientation applied, CMYK,
  16-bit, alpha and palette images converted), with a decompression-bomb guard. Every failure is a
  `BadImageError` whose message is the reason written to the pipeline's errors file.
* `check_image_header`: the same format and pixel-cap checks from a file's header alone, so that
  `pipeline.inputs` can refuse a bomb before reading the rest of the file.
"""

from __future__ import annotations

import functools
import io
import struct
import threading
import warnings
import zlib
from typing import IO

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Larger inputs are refused before their pixels are decoded (a 1 KB PNG can claim 10^10 pixels).
DEFAULT_MAX_PIXELS = 64_000_000
# File name extensions read as images (case-insensitive), by the pipeline and by rotnet-correct.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_JPEG_QUALITY = 95  # photo records (README: jpeg q95): ~27 KB per 224 px image
# PNG compression 1 is ~4x faster than OpenCV's default 3 and within a few % of its size at 28-224 px.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
# Grey images up to this side (MNIST's 28 px digits) are written as PNG here (_small_grey_png) instead
# of by OpenCV: every row unfiltered (filter type 0), the data deflated by zlib at level 1. Measured on
# 2,000 rendered 28 px MNIST records (one core, CPU time): 27 us and 442 bytes per image against
# OpenCV's 33 us and 469 bytes (libpng's adaptive row filters only cost bytes on a digit's smooth
# strokes over black). Larger images keep libpng's filters, which photos need. Both encoders are
# deterministic for a given zlib (Python's zlib module here, OpenCV's bundled one there).
SMALL_PNG_MAX_SIDE = 64
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BadImageError(ValueError):
    """An input that cannot become records; `str(error)` is the reason recorded in the errors file."""


def encode_image(image: np.ndarray, image_format: str, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Encode an HWC uint8 image (1 or 3 channels, RGB) as png, jpeg or raw bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected HWC uint8 with 1 or 3 channels, got {image.dtype} {image.shape}")
    if image_format == "raw":
        return np.ascontiguousarray(image).tobytes()
    if image_format == "png" and image.shape[2] == 1 and max(image.shape[:2]) <= SMALL_PNG_MAX_SIDE:
        return _small_grey_png(image)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.shape[2] == 3 else image
    if image_format == "png":
        ok, encoded = cv2.imencode(".png", pixels, _PNG_PARAMS)
    elif image_format == "jpeg":
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise ValueError(f"unknown image format {image_format!r}; use png, jpeg or raw")
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {image_format}")
    return encoded.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data (big-endian)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


@functools.lru_cache(maxsize=256)
def _png_header(height: int, width: int) -> bytes:
    """PNG signature and IHDR of an 8-bit grey image (colour type 0, no interlace)."""
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


_PNG_END = _png_chunk(b"IEND", b"")


def _small_grey_png(image: np.ndarray) -> bytes:
    """A grey HW1 uint8 image as PNG: unfiltered rows, zlib level 1 (see SMALL_PNG_MAX_SIDE)."""
    height, width = image.shape[:2]
    rows = np.zeros((height, width + 1), np.uint8)  # each row: filter type 0, then its pixels
    rows[:, 1:] = image[:, :, 0]
    return _png_header(height, width) + _png_chunk(b"IDAT", zlib.compress(rows, 1)) + _PNG_END


def encode_images(
    images: np.ndarray, image_format: str, jpeg_quality: int = DEFAULT_JPEG_QUALITY
) -> list[bytes]:
    """`encode_image` of each image of an (n, height, width, channels) uint8 array, the same bytes: small
    grey PNGs (_small_grey_png) share one array of filter-prefixed rows and skip the per-image checks."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected NHWC uint8, got {images.dtype} {images.shape}")
    count, height, width, channels = images.shape
    if image_format != "png" or channels != 1 or max(height, width) > SMALL_PNG_MAX_SIDE:
        return [encode_image(image, image_format, jpeg_quality) for image in images]
    rows = np.zeros((count, height, width + 1), np.uint8)  # each row: filter type 0, then its pixels
    rows[:, :, 1:] = images[:, :, :, 0]
    head, compress, crc32, pack = _png_header(height, width), zlib.compress, zlib.crc32, _WORD.pack
    join, encoded = b"".join, []
    for image_rows in rows:
        data = compress(image_rows, 1)
        encoded.append(join((head, pack(len(data)), b"IDAT", data, pack(crc32(data, _IDAT_CRC)), _PNG_END)))
    return encoded


_IDAT_CRC = zlib.crc32(b"IDAT")  # a chunk's CRC covers its type, then its data
_WORD = struct.Struct(">I")


def decode_image(data: bytes, image_format: str, height: int, width: int, channels: int) -> np.ndarray:
    """Decode record bytes back to HWC uint8 RGB; raises ValueError when the bytes do not match."""
    if image_format == "raw":
        expected = height * width * channels
        if len(data) != expected:
            raise ValueError(
                f"raw image has {len(data)} bytes, expected {height}x{width}x{channels}={expected}"
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if decoded is None:
        raise ValueError(f"bytes are not a decodable {image_format} image")
    if decoded.ndim == 2:
        decoded = decoded[:, :, np.newaxis]
    else:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    if decoded.shape != (height, width, channels):
        raise ValueError(f"decoded image is {decoded.shape}, record says {(height, width, channels)}")
    return decoded


def decode_record_image(record) -> np.ndarray:
    """The pixels of a schemas.Record."""
    return decode_image(
        record.image_encoded, record.image_format, record.height, record.width, record.channels
    )


def _to_uint8(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer modes scaled (not clipped) to 8 bits; float modes clipped to 0..255."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        # PIL opens 16-bit PNGs as I;16 or I; both hold 0..65535.
        return Image.fromarray(np.clip(array / 257.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    return image


# Pillow's own decompression-bomb guard (Image.MAX_IMAGE_PIXELS, 89,478,485 pixels) would refuse a
# 100-megapixel image before --max-pixels speaks, with its message and its limit, even when the user
# raised --max-pixels. Every input image is opened here, so the guard is off for this one call and
# rotnet's check, on the same header, right after, decides. The lock keeps the swap of Pillow's global
# to one thread at a time.
_PILLOW_GUARD = threading.Lock()


def _open_header(stream: IO[bytes], max_pixels: int) -> Image.Image:
    """PIL's lazy open: the header only, with the pixel cap checked before any pixel is decoded.

    Callers turn DecompressionBombWarning into an error (warnings.catch_warnings) around this call.
    """
    try:
        with _PILLOW_GUARD:
            pillows_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(stream)
            finally:
                Image.MAX_IMAGE_PIXELS = pillows_limit
    except UnidentifiedImageError:
        raise BadImageError("not an image file (unknown format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImageError(f"decompression bomb guard: {error}") from None
    except Exception as error:
        raise BadImageError(f"unreadable image header ({type(error).__name__}: {error})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImageError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(decompression bomb guard; raise --max-pixels if the image is genuine)"
        )
    return image


def check_image_header(stream: IO[bytes], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from an image file's header, read lazily from `stream` (left at an unknown
    position). Raises BadImageError, with the reason decode_source_image would give, for a file that is
    no image or claims more than `max_pixels`: such a file is refused before the rest of it is read."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _open_header(stream, max_pixels).size


def decode_source_image(
    data: bytes, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS, apply_exif: bool = True
) -> np.ndarray:
    """Decode an input image file's bytes to HWC uint8 (RGB for 3 channels, grey for 1).

    EXIF orientation is applied first, so a phone photo comes out the way it is shown; transparent
    pixels are composited over black (the rotation fill colour). Raises BadImageError with the reason.
    """
    if not data:
        raise BadImageError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open_header(io.BytesIO(data), max_pixels)
        try:
            image.load()
            if apply_exif:
                image = ImageOps.exif_transpose(image)
        except Exception as error:
            raise BadImageError(
                f"truncated or corrupt image data ({type(error).__name__}: {error})"
            ) from None
    image = _to_uint8(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, np.newaxis] if array.ndim == 2 else array
