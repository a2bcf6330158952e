"""Record image formats round-trip; source decoding turns odd inputs into RGB or a clear reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline import codec


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image_format", ["png", "raw"])
def test_lossless_formats_round_trip(image_format: str, channels: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, (9, 13, channels), dtype=np.uint8)
    data = codec.encode_image(image, image_format)
    assert np.array_equal(codec.decode_image(data, image_format, 9, 13, channels), image)


@pytest.mark.parametrize("shape", [(1, 1), (28, 28), (64, 3), (5, 64), (65, 65)])
def test_grey_png_is_a_standard_png_other_decoders_read(shape: tuple[int, int]) -> None:
    # Small grey images take rotnet's own PNG writer, larger ones OpenCV's: both must be plain PNGs.
    image = np.random.default_rng(1).integers(0, 256, (*shape, 1), dtype=np.uint8)
    image[: shape[0] // 2] = 0  # a black half, as around a digit
    data = codec.encode_image(image, "png")
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    with Image.open(io.BytesIO(data)) as decoded:  # Pillow checks every chunk's CRC
        decoded.load()
        assert decoded.mode == "L" and decoded.size == (shape[1], shape[0])
        assert np.array_equal(np.asarray(decoded), image[:, :, 0])
    assert codec.encode_image(image.copy(), "png") == data  # deterministic


def test_jpeg_round_trip_keeps_rgb_order() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = 250  # pure red must not come back blue (BGR mix-up)
    decoded = codec.decode_image(codec.encode_image(image, "jpeg", 95), "jpeg", 32, 32, 3)
    assert decoded[..., 0].min() > 240 and decoded[..., 2].max() < 10


def test_decode_checks_shape_and_format() -> None:
    with pytest.raises(ValueError, match="raw image has 3 bytes"):
        codec.decode_image(b"abc", "raw", 2, 2, 1)
    with pytest.raises(ValueError, match="record says"):
        codec.decode_image(codec.encode_image(np.zeros((4, 4, 1), np.uint8), "png"), "png", 5, 4, 1)
    with pytest.raises(ValueError, match="unknown image format"):
        codec.encode_image(np.zeros((4, 4, 1), np.uint8), "gif")


def _pil_bytes(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_source_decoding_applies_exif_orientation() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = codec.decode_source_image(_pil_bytes(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.shape == (40, 20, 3)
    assert decoded[:10].mean() > 200 and decoded[-10:].mean() < 50  # the stripe is now on top


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG"),
        (Image.new("I;16", (8, 6), 65535), "PNG"),
        (Image.new("RGBA", (8, 6), (255, 0, 0, 255)), "PNG"),
        (Image.new("P", (8, 6), 3), "GIF"),
        (Image.new("1", (8, 6), 1), "PNG"),
    ],
)
def test_source_decoding_converts_modes_to_rgb(image: Image.Image, fmt: str) -> None:
    decoded = codec.decode_source_image(_pil_bytes(image, fmt))
    assert decoded.shape == (6, 8, 3) and decoded.dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    grey = codec.decode_source_image(_pil_bytes(Image.new("I;16", (4, 4), 32768), "PNG"), channels=1)
    assert grey.shape == (4, 4, 1) and abs(int(grey[0, 0, 0]) - 128) <= 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image", "not an image file"),
        (_pil_bytes(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:1500], "truncated or corrupt"),
    ],
)
def test_bad_sources_give_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(codec.BadImageError, match=reason):
        codec.decode_source_image(data)


def test_huge_header_is_refused_before_decoding() -> None:
    data = _pil_bytes(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(codec.BadImageError, match="over the limit"):
        codec.decode_source_image(data, max_pixels=1_000_000)


@pytest.mark.parametrize(
    ("image_format", "size", "channels"),
    [("png", 28, 1), ("png", 80, 1), ("png", 20, 3), ("jpeg", 32, 3), ("jpeg", 32, 1), ("raw", 16, 3)],
)
def test_encode_images_is_encode_image_of_each(image_format: str, size: int, channels: int) -> None:
    rng = np.random.default_rng(size + channels)
    images = rng.integers(0, 256, (5, size, size, channels), dtype=np.uint8)
    images[1] = 0  # a blank record compresses differently
    expected = [codec.encode_image(image, image_format) for image in images]
    assert codec.encode_images(images, image_format) == expected


def test_encode_images_refuses_other_arrays() -> None:
    with pytest.raises(ValueError, match="NHWC uint8"):
        codec.encode_images(np.zeros((2, 28, 28), np.uint8), "png")
