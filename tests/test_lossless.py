"""Lossless quarter turns (tools/lossless.py): the EXIF tag, jpegtran's DCT-domain turn, pixel transposes.

What is proven, exactly:
* the eight EXIF orientations are the transforms PIL's exif_transpose applies, and they compose as a group;
* `exif`: every byte outside the Exif APP1 segment is unchanged (the scan data above all) and an
  EXIF-aware reader shows the picture upright, whatever tag the file had;
* `transpose`: decoded with a rotation-symmetric decoder (djpeg -dct float -nosmooth) the output is
  exactly np.rot90 of the input; with PIL's default decoder it is exact for DC-only blocks and within a
  few levels otherwise (libjpeg's integer IDCT rounds asymmetrically), and a turn and its inverse give
  back the input's pixels exactly (no re-quantisation);
* partial MCUs: -perfect refuses; the choices exif / trim / reencode do what they say;
* PNG, palette, 16-bit, BMP, TIFF, GIF, WebP: pixels transposed exactly in their own mode.
"""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.system_programs import require_program
from tools import lossless
from tools.lossless import EXIF_TRANSFORMS, apply, compose, undo_turn


def jpeg_bytes(pixels: np.ndarray, subsampling: int = 2, exif: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    options = {"subsampling": subsampling} if pixels.ndim == 3 else {}
    Image.fromarray(pixels).save(
        buffer, format="JPEG", quality=90, **options, **({"exif": exif} if exif else {})
    )
    return buffer.getvalue()


def smooth_photo(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Photo-like pixels: a blurred random field plus noise (every DCT frequency is used)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    pixels = np.clip(field + rng.integers(-25, 25, field.shape), 0, 255).astype(np.uint8)
    return pixels[:, :, 0] if channels == 1 else pixels


def pil_pixels(data: bytes, displayed: bool = False) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.asarray(ImageOps.exif_transpose(image) if displayed else image)


def symmetric_decode(data: bytes) -> np.ndarray:
    """Stored pixels by libjpeg's float IDCT without fancy upsampling: both commute with quarter turns."""
    djpeg = require_program("djpeg", "libjpeg-turbo-progs")
    finished = subprocess.run(
        [djpeg, "-dct", "float", "-nosmooth", "-pnm"], input=data, capture_output=True, check=True
    )
    return np.asarray(Image.open(io.BytesIO(finished.stdout)))


def not_exif(data: bytes) -> bytes:
    """The file without its Exif APP1 segment (what `exif` mode must leave byte for byte)."""
    segment = lossless._exif_segment(data)
    return data if segment is None else data[: segment[0]] + data[segment[1] :]


# --- The group ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", sorted(EXIF_TRANSFORMS))
def test_exif_table_is_what_pillow_applies(tag: int) -> None:
    data = lossless.with_orientation(jpeg_bytes(smooth_photo(16, 24)), tag)
    assert lossless.exif_orientation(data) == tag
    stored = pil_pixels(data)
    np.testing.assert_array_equal(pil_pixels(data, displayed=True), apply(EXIF_TRANSFORMS[tag], stored))
    if EXIF_TRANSFORMS[tag] is not None:  # and our array version is PIL's Image.transpose
        transposed = Image.fromarray(stored).transpose(EXIF_TRANSFORMS[tag])
        np.testing.assert_array_equal(np.asarray(transposed), apply(EXIF_TRANSFORMS[tag], stored))


def test_orientations_compose_as_a_group() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 5))
    elements = list(EXIF_TRANSFORMS.values())
    for first in elements:
        for then in elements:
            np.testing.assert_array_equal(
                apply(compose(first, then), pixels), apply(then, apply(first, pixels))
            )
    for turn in range(4):  # the correction of a counter-clockwise quarter turn is its inverse
        np.testing.assert_array_equal(apply(undo_turn(turn), np.rot90(pixels, turn)), pixels)


# --- exif ------------------------------------------------------------------------------------------


def _exif_with_other_tags(orientation: int | None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "RotNet Phone"  # Make
    exif[0x0110] = "Model 1"
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 12:00:00"  # DateTimeOriginal in the Exif IFD
    if orientation is not None:
        exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("existing", ["none", "no-tag", *range(1, 9)])
@pytest.mark.parametrize("turn", [1, 2, 3])
def test_exif_mode_keeps_the_scan_data_and_shows_the_photo_upright(existing, turn: int) -> None:
    if existing == "none":
        data = jpeg_bytes(smooth_photo(40, 56))
    else:
        data = jpeg_bytes(
            smooth_photo(40, 56), exif=_exif_with_other_tags(None if existing == "no-tag" else existing)
        )
    shown = pil_pixels(data, displayed=True)  # what a viewer shows, and what the model judged
    result = lossless.turn_file(data, ".jpg", turn, "exif")
    assert lossless.scan_data(result.data) == lossless.scan_data(data)
    assert not_exif(result.data) == not_exif(data), "only the Exif segment may change"
    np.testing.assert_array_equal(pil_pixels(result.data, displayed=True), np.rot90(shown, -turn))
    assert result.action.startswith("lossless: EXIF orientation")
    if existing != "none":  # the other tags survive
        exif = Image.open(io.BytesIO(result.data)).getexif()
        assert exif[0x010F] == "RotNet Phone" and exif[0x0110] == "Model 1"
        assert exif.get_ifd(0x8769)[0x9003] == "2024:05:01 12:00:00"


def test_upright_file_is_returned_byte_for_byte() -> None:
    data = jpeg_bytes(smooth_photo(24, 24), exif=_exif_with_other_tags(6))
    for mode in lossless.LOSSLESS_MODES:
        result = lossless.turn_file(data, ".JPG", 0, mode)
        assert result.data == data and result.action == "unchanged: upright"


def test_damaged_jpeg_is_one_error_line() -> None:
    with pytest.raises(lossless.LosslessError, match="not a JPEG"):
        lossless.turn_file(b"GIF89a", ".jpg", 1, "exif")
    truncated = jpeg_bytes(smooth_photo(16, 16))[:20]
    with pytest.raises(lossless.LosslessError, match="damaged JPEG"):
        lossless.turn_file(truncated, ".jpg", 1, "exif")


# --- transpose (jpegtran) ------------------------------------------------------------------------------


@pytest.mark.parametrize("subsampling", [0, 1, 2, "grey"])
@pytest.mark.parametrize("existing", [1, 6, 5])
@pytest.mark.parametrize("turn", [1, 2, 3])
def test_transpose_gives_exactly_rot90_of_the_pixels(subsampling, existing: int, turn: int) -> None:
    require_program("jpegtran", "libjpeg-turbo-progs")
    pixels = smooth_photo(48, 64, channels=1 if subsampling == "grey" else 3)  # whole 16x16 MCUs
    data = jpeg_bytes(pixels, 2 if subsampling == "grey" else subsampling)
    data = lossless.with_orientation(data, existing)
    shown = apply(EXIF_TRANSFORMS[existing], symmetric_decode(data))  # djpeg ignores the tag
    result = lossless.turn_file(data, ".jpeg", turn, "transpose")
    assert result.action == "lossless: jpegtran -perfect"
    assert lossless.exif_orientation(result.data) == 1
    np.testing.assert_array_equal(symmetric_decode(result.data), np.rot90(shown, -turn))
    # PIL (libjpeg's integer IDCT, fancy upsampling) reads the same coefficients a few levels apart.
    difference = np.abs(pil_pixels(result.data).astype(int) - np.rot90(pil_pixels(data, True), -turn))
    assert difference.max() <= 6 and difference.mean() < 0.5


def test_transpose_is_lossless_for_pillows_decoder_too() -> None:
    require_program("jpegtran", "libjpeg-turbo-progs")
    # Blocks of one colour hold only DC coefficients: every decoder turns them exactly.
    blocks = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    data = jpeg_bytes(np.kron(blocks, np.ones((8, 8, 1), np.uint8)), subsampling=0)
    turned = lossless.turn_file(data, ".jpg", 1, "transpose").data
    np.testing.assert_array_equal(pil_pixels(turned), np.rot90(pil_pixels(data), -1))
    # A turn and its inverse give back the very coefficients: PIL decodes the input's pixels exactly.
    photo = jpeg_bytes(smooth_photo(64, 80))
    back = lossless.turn_file(lossless.turn_file(photo, ".jpg", 1, "transpose").data, ".jpg", 3, "transpose")
    np.testing.assert_array_equal(pil_pixels(back.data), pil_pixels(photo))


def test_partial_mcu_edges_exif_trim_or_reencode() -> None:
    require_program("jpegtran", "libjpeg-turbo-progs")
    data = jpeg_bytes(smooth_photo(50, 70), subsampling=2)  # 4:2:0: 16x16 MCUs, partial on both edges
    shown = symmetric_decode(data)
    with pytest.raises(lossless.NotPerfectError, match="70x50 px is not a whole number of MCUs"):
        lossless.transpose_jpeg(data, undo_turn(1))
    default = lossless.turn_file(data, ".jpg", 1, "transpose")  # partial_mcu="exif"
    assert "jpegtran -perfect refused" in default.action and "EXIF orientation 1 -> 6" in default.action
    assert lossless.scan_data(default.data) == lossless.scan_data(data)
    np.testing.assert_array_equal(pil_pixels(default.data, True), np.rot90(pil_pixels(data), -1))
    # trim: the partial MCU row at the bottom (it would become the left edge) is cut, the rest turned.
    trimmed = lossless.turn_file(data, ".jpg", 1, "transpose", partial_mcu="trim")
    assert "70x50 -> 48x70 px" in trimmed.action
    # (the float IDCT's order of operations can still tip a value lying on .5: 3 of 10,080 values by 1)
    difference = np.abs(symmetric_decode(trimmed.data).astype(int) - np.rot90(shown[:48], -1))
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.001
    reencoded = lossless.turn_file(data, ".jpg", 1, "transpose", partial_mcu="reencode")
    assert reencoded.action.startswith("re-encoded as JPEG q95")
    difference = np.abs(pil_pixels(reencoded.data).astype(int) - np.rot90(pil_pixels(data), -1))
    assert pil_pixels(reencoded.data).shape == (70, 50, 3) and difference.mean() < 8  # q95 of noise


def test_transpose_without_jpegtran_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lossless, "jpegtran_path", lambda: None)
    with pytest.raises(lossless.LosslessError, match="libjpeg-turbo-progs"):
        lossless.turn_file(jpeg_bytes(smooth_photo(16, 16)), ".jpg", 1, "transpose")


# --- Other formats: pixels in their own mode ---------------------------------------------------------


def _encoded(image: Image.Image, file_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=file_format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("suffix", "mode"),
    [(".png", "RGB"), (".png", "P"), (".png", "I;16"), (".png", "LA"), (".bmp", "RGB"), (".tif", "RGB"),
     (".gif", "P"), (".webp", "RGB")],
)  # fmt: skip
@pytest.mark.parametrize("mode_option", lossless.LOSSLESS_MODES)
def test_other_formats_are_transposed_exactly_in_their_own_mode(
    suffix: str, mode: str, mode_option: str
) -> None:
    rng = np.random.default_rng(2)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    elif mode == "LA":
        image = Image.fromarray(rng.integers(0, 256, (20, 30, 2), dtype=np.uint8), mode="LA")
    else:
        image = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
        image = image.quantize(64) if mode == "P" else image
    file_format = Image.registered_extensions()[suffix]
    data = _encoded(image, file_format, **({"lossless": True} if file_format == "WEBP" else {}))
    with Image.open(io.BytesIO(data)) as original:
        original_pixels, original_mode = np.asarray(original), original.mode
    result = lossless.turn_file(data, suffix, 3, mode_option)
    assert result.action == "lossless: pixels transposed"
    with Image.open(io.BytesIO(result.data)) as turned:
        assert turned.format == file_format and turned.mode == original_mode
        np.testing.assert_array_equal(np.asarray(turned), np.rot90(original_pixels, -3))
