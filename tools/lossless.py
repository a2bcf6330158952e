"""Quarter turns without loss: the EXIF Orientation tag, jpegtran's DCT-domain transforms, pixel transposes.

    from tools import lossless
    result = lossless.turn_file(data, ".jpg", turn=1, mode="exif")        # photo shows a 90 deg CCW turn
    result.data, result.action   # the file's bytes, upright; what was done ("exif orientation 6", ...)

A photo's *displayed* picture is its stored pixels with its EXIF Orientation applied (PIL's
`ImageOps.exif_transpose`, what phones and browsers show and what rotnet's models see). A quarter turn
`k` (the model saw the displayed picture turned 90k degrees counter-clockwise) is undone by turning it
90k degrees clockwise. The eight orientations form a group (rotations and mirror images of a rectangle);
`Orientation` is one element, named by the `PIL.Image.Transpose` that performs it (None: identity).

* `mode="exif"` (JPEG): the Orientation tag becomes the composition of the correction with the tag the
  file already had; every other byte of the file (the compressed scan data, quantisation and Huffman
  tables, ICC profile, other metadata) is left as it was. `with_orientation` patches the tag's 2 bytes
  in place where it exists, adds it to a copy of IFD0 appended to the Exif block where it does not
  (nothing else moves, so maker notes' absolute offsets stay valid), or inserts a minimal Exif APP1
  segment after SOI/APP0 when the file has none.
* `mode="transpose"` (JPEG): `jpegtran -perfect -copy all` (Debian's libjpeg-turbo-progs, installed by
  scripts/install-system.sh) moves the DCT coefficients: no re-quantisation, so nothing is lost, and the
  Orientation tag it copied is then set to 1 (the composed transform is applied to the stored pixels in
  one step). Partial MCUs: jpegtran can only move whole MCUs (8x8 px, or 16x16 / 16x8 with chroma
  subsampling). When the image's width or height is not a multiple of the MCU and that edge would move,
  `-perfect` refuses; `partial_mcu` then says what happens: "exif" (default: the lossless tag instead,
  nothing cut), "trim" (`jpegtran -trim`: drops the partial edge, up to 15 px per edge, and says how
  much) or "reencode" (decode, turn exactly, JPEG q95: the one lossy choice).
* PNG, BMP, TIFF, GIF, WebP (either mode): the pixels are transposed exactly in their own mode
  (palette, 16-bit and alpha kept) and written losslessly (WebP as lossless WebP); an EXIF tag there is
  applied and dropped. A multi-frame file keeps its first frame (as rotnet-correct reads it).

Decoded pixels: a JPEG turned by jpegtran holds exactly the turned coefficients. A decoder whose IDCT
and chroma upsampling are symmetric (`djpeg -dct float -nosmooth`) gives exactly `np.rot90` of the
input's pixels; libjpeg's default integer IDCT and "fancy" upsampling round asymmetrically, so PIL's
decode of the turned file can differ from `np.rot90` of PIL's decode of the input by a few levels
(tests/test_lossless.py shows both).
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

Orientation = Image.Transpose | None  # None: identity
T = Image.Transpose
# EXIF Orientation value -> the transform from stored to displayed pixels (as ImageOps.exif_transpose).
EXIF_TRANSFORMS: dict[int, Orientation] = {
    1: None,
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_270,
    7: T.TRANSVERSE,
    8: T.ROTATE_90,
}
# jpegtran's switch for each transform (its -rotate turns clockwise, PIL's ROTATE_* counter-clockwise).
JPEGTRAN_ARGUMENTS: dict[Image.Transpose, list[str]] = {
    T.FLIP_LEFT_RIGHT: ["-flip", "horizontal"],
    T.FLIP_TOP_BOTTOM: ["-flip", "vertical"],
    T.ROTATE_90: ["-rotate", "270"],
    T.ROTATE_180: ["-rotate", "180"],
    T.ROTATE_270: ["-rotate", "90"],
    T.TRANSPOSE: ["-transpose"],
    T.TRANSVERSE: ["-transverse"],
}
LOSSLESS_MODES = ("exif", "transpose")
PARTIAL_MCU_CHOICES = ("exif", "trim", "reencode")
JPEG_SUFFIXES = (".jpg", ".jpeg")
JPEGTRAN_TIMEOUT_S = 120.0
JPEGTRAN_HINT = "install Debian's libjpeg-turbo-progs (scripts/install-system.sh) or use --lossless exif"
ORIENTATION_TAG = 0x0112
_EXIF_HEADER = b"Exif\x00\x00"


class LosslessError(ValueError):
    """A file that cannot be turned losslessly; `str(error)` is the reason (one line)."""


class NotPerfectError(LosslessError):
    """jpegtran -perfect refused: a partial MCU lies on an edge the transform would move."""


# --- The group of orientations ------------------------------------------------------------------------


def apply(transform: Orientation, pixels: np.ndarray) -> np.ndarray:
    """`transform` on an (H, W, ...) array, as PIL's Image.transpose does it on an image."""
    if transform is None:
        return pixels
    return {
        T.FLIP_LEFT_RIGHT: lambda a: a[:, ::-1],
        T.FLIP_TOP_BOTTOM: lambda a: a[::-1],
        T.ROTATE_90: lambda a: np.rot90(a, 1),
        T.ROTATE_180: lambda a: np.rot90(a, 2),
        T.ROTATE_270: lambda a: np.rot90(a, 3),
        T.TRANSPOSE: lambda a: np.swapaxes(a, 0, 1),
        T.TRANSVERSE: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),
    }[transform](pixels)


_PROBE = np.arange(6).reshape(2, 3)  # no symmetry: each of the eight transforms moves it differently
_ELEMENTS: tuple[Orientation, ...] = (None, *T)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def compose(first: Orientation, then: Orientation) -> Orientation:
    """The one transform that does `first`, then `then`."""
    target = apply(then, apply(first, _PROBE))
    return next(element for element in _ELEMENTS if _same(apply(element, _PROBE), target))


def exif_tag_for(transform: Orientation) -> int:
    """The EXIF Orientation value whose stored-to-displayed transform is `transform`."""
    return next(tag for tag, element in EXIF_TRANSFORMS.items() if element == transform)


def undo_turn(turn: int) -> Orientation:
    """The transform undoing a counter-clockwise quarter turn `turn` (0..3): clockwise by 90*turn."""
    return (None, T.ROTATE_270, T.ROTATE_180, T.ROTATE_90)[turn % 4]


# --- JPEG segments and the Exif Orientation tag -------------------------------------------------------


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every segment before the first scan (SOS excluded); LosslessError for a
    file that is not a well-formed JPEG up to there."""
    if data[:2] != b"\xff\xd8":
        raise LosslessError("not a JPEG file (no SOI marker)")
    segments, position = [], 2
    while True:
        while (
            position < len(data) and data[position] == 0xFF and data[position + 1 : position + 2] == b"\xff"
        ):
            position += 1  # fill bytes before a marker
        if position + 4 > len(data) or data[position] != 0xFF:
            raise LosslessError("damaged JPEG: no marker where one must be")
        marker = data[position + 1]
        if marker == 0xDA:  # start of scan: the compressed data follows
            return segments
        if marker in (0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:
            raise LosslessError("damaged JPEG: an unexpected marker before the first scan")
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        end = position + 2 + length
        if length < 2 or end > len(data):
            raise LosslessError("damaged JPEG: a segment runs past the end of the file")
        segments.append((marker, position, end))
        position = end


def _exif_segment(data: bytes) -> tuple[int, int] | None:
    """(start, end) of the first APP1 segment holding Exif, or None."""
    for marker, start, end in jpeg_segments(data):
        if marker == 0xE1 and data[start + 4 : start + 10] == _EXIF_HEADER:
            return start, end
    return None


def scan_data(data: bytes) -> bytes:
    """The JPEG's bytes from its first scan (SOS) on: the compressed image itself."""
    segments = jpeg_segments(data)
    return data[segments[-1][2] if segments else 2 :]


class _Tiff:
    """The TIFF structure inside an Exif block: byte order, IFD0's position and entries."""

    def __init__(self, tiff: bytes) -> None:
        if tiff[:4] not in (b"II*\x00", b"MM\x00*") or len(tiff) < 8:
            raise LosslessError("damaged Exif block (no TIFF header)")
        self.order = "<" if tiff[:2] == b"II" else ">"
        self.tiff = tiff
        self.ifd0 = self._unpack("I", 4)
        count = self._unpack("H", self.ifd0) if self.ifd0 + 2 <= len(tiff) else -1
        if count < 0 or self.ifd0 + 2 + 12 * count + 4 > len(tiff):
            raise LosslessError("damaged Exif block (IFD0 runs past its end)")
        self.entries = [tiff[self.ifd0 + 2 + 12 * i : self.ifd0 + 14 + 12 * i] for i in range(count)]
        self.next_ifd = tiff[self.ifd0 + 2 + 12 * count : self.ifd0 + 6 + 12 * count]

    def _unpack(self, kind: str, offset: int) -> int:
        return struct.unpack(self.order + kind, self.tiff[offset : offset + struct.calcsize(kind)])[0]

    def tag_of(self, entry: bytes) -> int:
        return struct.unpack(self.order + "H", entry[:2])[0]

    def orientation_entry(self, value: int) -> bytes:
        return struct.pack(self.order + "HHIHH", ORIENTATION_TAG, 3, 1, value, 0)  # SHORT, count 1


def exif_orientation(data: bytes) -> int:
    """The JPEG's EXIF Orientation (1 when it has none or an unknown value)."""
    segment = _exif_segment(data)
    if segment is None:
        return 1
    tiff = _Tiff(data[segment[0] + 10 : segment[1]])
    for entry in tiff.entries:
        if tiff.tag_of(entry) == ORIENTATION_TAG:
            value = struct.unpack(tiff.order + "H", entry[8:10])[0]
            return value if value in EXIF_TRANSFORMS else 1
    return 1


def _minimal_exif(value: int) -> bytes:
    """An APP1 segment holding only IFD0 with the Orientation tag (big-endian TIFF)."""
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", ORIENTATION_TAG, 3, 1, value, 0) + struct.pack(">I", 0)
    payload = _EXIF_HEADER + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_orientation(data: bytes, value: int) -> bytes:
    """The JPEG `data` with EXIF Orientation `value` (1-8); only the Exif APP1 segment changes."""
    if value not in EXIF_TRANSFORMS:
        raise ValueError(f"EXIF orientation must be 1..8, got {value}")
    segment = _exif_segment(data)
    if segment is None:
        if value == 1:
            return data
        # After SOI and any APP0 (JFIF / JFXX wants to come first); before everything else.
        position = 2
        for marker, _, end in jpeg_segments(data):
            if marker != 0xE0:
                break
            position = end
        return data[:position] + _minimal_exif(value) + data[position:]
    start, end = segment
    tiff = _Tiff(data[start + 10 : end])
    for index, entry in enumerate(tiff.entries):
        if tiff.tag_of(entry) == ORIENTATION_TAG:  # patch the entry in place: nothing moves
            offset = start + 10 + tiff.ifd0 + 2 + 12 * index
            return data[:offset] + tiff.orientation_entry(value) + data[offset + 12 :]
    # No tag yet: a copy of IFD0 with it, appended to the block (word-aligned), and the header's IFD0
    # offset pointed at the copy. Every other offset in the block stays valid.
    entries = sorted([*tiff.entries, tiff.orientation_entry(value)], key=tiff.tag_of)
    padding = b"\x00" * (len(tiff.tiff) % 2)
    new_offset = len(tiff.tiff) + len(padding)
    ifd = struct.pack(tiff.order + "H", len(entries)) + b"".join(entries) + tiff.next_ifd
    block = tiff.tiff[:4] + struct.pack(tiff.order + "I", new_offset) + tiff.tiff[8:] + padding + ifd
    payload = _EXIF_HEADER + block
    if len(payload) + 2 > 0xFFFF:
        raise LosslessError("the Exif block is full (64 KiB): no room for an Orientation tag")
    return data[:start] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[end:]


# --- jpegtran -----------------------------------------------------------------------------------------


def jpegtran_path() -> str | None:
    return shutil.which("jpegtran")


def _jpegtran(data: bytes, arguments: list[str]) -> subprocess.CompletedProcess:
    program = jpegtran_path()
    if program is None:
        raise LosslessError(f"jpegtran is not installed: {JPEGTRAN_HINT}")
    try:
        return subprocess.run(
            [program, *arguments], input=data, capture_output=True, timeout=JPEGTRAN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise LosslessError(f"jpegtran took over {JPEGTRAN_TIMEOUT_S:.0f} s") from None


def _first_line(stderr: bytes) -> str:
    return (stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[0]


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def transpose_jpeg(data: bytes, transform: Orientation, trim: bool = False) -> bytes:
    """`transform` on the JPEG's stored coefficients (jpegtran -perfect, or -trim), Orientation set to 1.

    Raises NotPerfectError when a partial MCU edge would move and `trim` is False."""
    if transform is None:
        return with_orientation(data, 1) if exif_orientation(data) != 1 else data
    arguments = ["-copy", "all", "-trim" if trim else "-perfect", *JPEGTRAN_ARGUMENTS[transform]]
    finished = _jpegtran(data, arguments)
    if finished.returncode != 0 or not finished.stdout:
        message = _first_line(finished.stderr)
        if "not perfect" in message:
            width, height = jpeg_size(data)
            raise NotPerfectError(
                f"jpegtran -perfect refused: {width}x{height} px is not a whole number of MCUs on an edge "
                "that would move"
            )
        raise LosslessError(f"jpegtran failed: {message}")
    return with_orientation(finished.stdout, 1) if exif_orientation(finished.stdout) != 1 else finished.stdout


# --- Any format -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turned:
    """A file turned upright: its bytes and what was done, in words (for reports)."""

    data: bytes
    action: str


def transpose_pixels(data: bytes, transform: Orientation, suffix: str) -> bytes:
    """A non-JPEG file's pixels (EXIF applied) with `transform`, in its own mode and format, lossless."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)  # a copy: the orientation applied, the tag dropped
        if transform is not None:
            image = image.transpose(transform)
        file_format = Image.registered_extensions()[suffix.lower()]
        options: dict = {}
        if file_format == "WEBP":
            options = {"lossless": True, "quality": 100}
        elif file_format == "TIFF" and "compression" in opened.info:
            options = {"compression": opened.info["compression"]}
        if "icc_profile" in opened.info:
            options["icc_profile"] = opened.info["icc_profile"]
        if file_format == "GIF" and "transparency" in opened.info:
            options["transparency"] = opened.info["transparency"]
        buffer = io.BytesIO()
        image.save(buffer, format=file_format, **options)
    return buffer.getvalue()


def reencode_jpeg(data: bytes, transform: Orientation, quality: int = 95) -> bytes:
    """The displayed pixels with `transform`, as a new JPEG (the one lossy path; ICC profile kept)."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        icc = opened.info.get("icc_profile")
        image = ImageOps.exif_transpose(opened)
        if transform is not None:
            image = image.transpose(transform)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, **({"icc_profile": icc} if icc else {}))
    return buffer.getvalue()


def turn_file(data: bytes, suffix: str, turn: int, mode: str, partial_mcu: str = "exif") -> Turned:
    """The file `data` (named with `suffix`) turned so that its displayed picture loses the
    counter-clockwise quarter turn `turn` (0..3), without re-encoding (see the module docstring)."""
    if mode not in LOSSLESS_MODES:
        raise ValueError(f"mode must be one of {LOSSLESS_MODES}, got {mode!r}")
    if partial_mcu not in PARTIAL_MCU_CHOICES:
        raise ValueError(f"partial_mcu must be one of {PARTIAL_MCU_CHOICES}, got {partial_mcu!r}")
    correction = undo_turn(turn)
    if suffix.lower() not in JPEG_SUFFIXES:
        if correction is None:
            return Turned(data, "unchanged: upright")
        return Turned(transpose_pixels(data, correction, suffix), "lossless: pixels transposed")
    current = exif_orientation(data)
    displayed = EXIF_TRANSFORMS[current]
    if correction is None:
        return Turned(data, "unchanged: upright")
    total = compose(displayed, correction)  # stored -> upright
    if mode == "exif":
        tag = exif_tag_for(total)
        return Turned(with_orientation(data, tag), f"lossless: EXIF orientation {current} -> {tag}")
    try:
        return Turned(transpose_jpeg(data, total), "lossless: jpegtran -perfect")
    except NotPerfectError as error:
        refusal = str(error)
    if partial_mcu == "reencode":
        return Turned(reencode_jpeg(data, correction), f"re-encoded as JPEG q95 ({refusal})")
    if partial_mcu == "trim":
        width, height = jpeg_size(data)
        trimmed = transpose_jpeg(data, total, trim=True)
        new_width, new_height = jpeg_size(trimmed)
        return Turned(
            trimmed,
            f"lossless: jpegtran -trim (partial MCU edge cut: {width}x{height} -> {new_width}x{new_height} px)",
        )
    tag = exif_tag_for(total)
    return Turned(with_orientation(data, tag), f"lossless: EXIF orientation {current} -> {tag} ({refusal})")
