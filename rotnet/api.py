"""`rotnet.load(model)` -> Model: `detect` and `correct` photos given as paths, bytes, arrays or PIL images.

A thin layer over trainer.predict.Predictor and rotnet-correct's own pieces (tools/correct.py,
tools/lossless.py), so the API, the command and rotnet-serve give the same answers:

* an input is decoded as rotnet-correct decodes it (regular files only, at most `max_file_bytes`, the
  pixel cap checked from the header, EXIF orientation applied: the picture as it is shown);
* it is prepared the way the model was trained (Predictor.prepare) and predicted in batches of
  `batch_size` (several inputs: one model call per batch);
* `angle_degrees` is the counter-clockwise rotation the model sees (free angle), or 90 x the quarter
  turn with `quarter_turns=True`; `confidence` is the probability mass within a few degrees of that
  angle (+-5 for classification models), or the mass of the quarter turn's +-45 degree sector;
* `needs_rotation` is False for an upright image and for one below `min_confidence` (`kept` says why).

    model = rotnet.load("runs/mnist")
    model.detect(np.zeros((28, 28), np.uint8))          # one input -> one Detection
    model.detect(["a.png", pil_image, array])            # a list (or an (N, H, W, C) array) -> a list
    model.correct("a.jpg", lossless="transpose")         # .data: the file's bytes, upright, losslessly

Errors: an unreadable input raises pipeline.codec.BadImageError naming it; a model that cannot be loaded
raises trainer.evaluate.EvaluationError or FileNotFoundError (one line each).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from pipeline import codec
from pipeline import inputs as input_files
from tools import correct as correct_tool
from tools import lossless as lossless_tool

ImageInput = Any  # str | os.PathLike | bytes | np.ndarray | PIL.Image.Image


@dataclass(frozen=True)
class Detection:
    """What the model sees in one input. Angles are degrees, counter-clockwise as the image shows them;
    to correct it, turn it clockwise by `angle_degrees`."""

    source: str  # the path, or "<array 2>", "<PIL image 0>", "<bytes 1>": the input's place in the call
    angle_degrees: int  # free angle 0..359, or 90 * quarter_turn with quarter_turns=True
    confidence: float  # 0..1, as the module docstring says
    quarter_turn: int  # 0..3: the nearest quarter turn (its sector has the most probability mass)
    quarter_confidence: float  # that sector's mass
    needs_rotation: bool  # not upright, and confidence >= min_confidence
    kept: str | None = None  # why it is left as it was (below min_confidence), else None


@dataclass(frozen=True)
class Correction:
    """One input turned upright. `image` has the input's kind (an array for an array, a PIL image for a
    PIL image, a path or bytes); `data` is the corrected file's bytes (in the input file's format; None
    for arrays and PIL images); `action` says what was done."""

    detection: Detection
    image: np.ndarray | Image.Image
    data: bytes | None
    action: str
    suffix: str = field(default=".png")  # the file format of `data` (the input's)

    def save(self, path: str | os.PathLike) -> None:
        """Write the corrected image to `path` (a new file: an existing one is never replaced)."""
        data = self.data
        if data is None:
            picture = self.image if isinstance(self.image, Image.Image) else Image.fromarray(self.image)
            buffer = io.BytesIO()
            suffix = os.path.splitext(os.fspath(path))[1].lower() or ".png"
            picture.save(buffer, format=Image.registered_extensions().get(suffix, "PNG"))
            data = buffer.getvalue()
        with open(path, "xb") as handle:
            handle.write(data)


@dataclass
class _Loaded:
    """An input read and decoded: its place in the call, its kind, the pixels the model judges."""

    source: str
    kind: str  # "file" (path or bytes), "array" or "pil"
    pixels: np.ndarray  # HWC uint8, EXIF applied
    original: Any = None  # the array or PIL image given
    data: bytes | None = None  # a file's bytes
    suffix: str = ".png"


class Model:
    """A trained rotnet model with the options of rotnet-correct; see the module docstring."""

    def __init__(
        self,
        predictor: Any,
        quarter_turns: bool = False,
        min_confidence: float = 0.0,
        tta: int = 1,
        batch_size: int = 32,
        max_file_bytes: int = input_files.DEFAULT_MAX_FILE_BYTES,
        max_pixels: int = codec.DEFAULT_MAX_PIXELS,
    ) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in 0..1, got {min_confidence}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.predictor = predictor
        self.quarter_turns, self.min_confidence = quarter_turns, min_confidence
        self.tta, self.batch_size = tta, batch_size
        self.max_file_bytes, self.max_pixels = max_file_bytes, max_pixels

    def __repr__(self) -> str:
        mode = "quarter turns" if self.quarter_turns else "free angle"
        return f"rotnet.Model({getattr(self.predictor, 'source', '?')!r}, {mode}, tta {self.tta})"

    # --- the two calls --------------------------------------------------------------------------------

    def detect(self, images: ImageInput | Iterable[ImageInput]) -> Detection | list[Detection]:
        """The Detection of one input, or a list of them for a list (or an (N, H, W, C) array)."""
        single, items = _as_list(images)
        found = [detection for _, detection in self._detect(items)]
        return found[0] if single else found

    def correct(
        self,
        images: ImageInput | Iterable[ImageInput],
        lossless: str | None = None,
        partial_mcu: str = "exif",
        crop: bool = False,
        keep_size: bool = False,
    ) -> Correction | list[Correction]:
        """Each input turned upright (a Correction), one or a list as `detect`. Files (paths, bytes)
        keep their format; `lossless` ("exif" or "transpose", with quarter_turns=True) turns them
        without re-encoding (tools/lossless.py). Arrays and PIL images turned by quarter turns are
        exact (np.rot90 / Image.transpose); other angles are resampled as rotnet-correct does
        (`crop`, `keep_size` as its options)."""
        options = self._options(lossless, partial_mcu, crop, keep_size)
        single, items = _as_list(images)
        done = [self._correct_one(loaded, detection, options) for loaded, detection in self._detect(items)]
        return done[0] if single else done

    # --- the work -------------------------------------------------------------------------------------

    def _options(self, lossless, partial_mcu, crop, keep_size) -> correct_tool.Options:
        options = correct_tool.Options(
            crop, keep_size, self.quarter_turns, lossless, partial_mcu, self.min_confidence
        )
        problem = options.problem()
        if problem:
            raise ValueError(problem.replace("--quarter-turns", "rotnet.load(..., quarter_turns=True)"))
        return options

    def _detect(self, items: Sequence[ImageInput]) -> Iterator[tuple[_Loaded, Detection]]:
        options = correct_tool.Options(quarter_turns=self.quarter_turns, min_confidence=self.min_confidence)
        for start in range(0, len(items), self.batch_size):
            loaded = [
                self._load(item, start + index)
                for index, item in enumerate(items[start : start + self.batch_size])
            ]
            prepared = [self.predictor.prepare(entry.pixels) for entry in loaded]
            prediction = self.predictor.predict(prepared, batch_size=len(prepared), tta=self.tta)
            decisions = correct_tool.decisions(prediction, options)
            for index, (entry, decision) in enumerate(zip(loaded, decisions, strict=True)):
                yield (
                    entry,
                    Detection(
                        source=entry.source,
                        angle_degrees=decision.angle_degrees,
                        confidence=round(decision.confidence, 6),
                        quarter_turn=int(prediction.quarter_turns[index]),
                        quarter_confidence=round(float(prediction.quarter_confidence[index]), 6),
                        needs_rotation=decision.needs_rotation,
                        kept=decision.keep,
                    ),
                )

    def _load(self, item: ImageInput, index: int) -> _Loaded:
        if isinstance(item, Image.Image):
            shown = ImageOps.exif_transpose(item)
            return _Loaded(f"<PIL image {index}>", "pil", _pixels_of(shown), original=item)
        if isinstance(item, np.ndarray):
            return _Loaded(f"<array {index}>", "array", _array_pixels(item, index), original=item)
        if isinstance(item, bytes | bytearray | memoryview):
            data, source = bytes(item), f"<bytes {index}>"
        elif isinstance(item, str | os.PathLike):
            source = input_files.printable_name(os.fspath(item))
            try:
                data = input_files.read_input_file(os.fspath(item), self.max_file_bytes, self.max_pixels)
            except codec.BadImageError as error:
                raise codec.BadImageError(f"{source}: {error}") from None
        else:
            raise TypeError(
                f"input {index} is a {type(item).__name__}: give a path, bytes, an HWC uint8 array or a PIL image"
            )
        try:
            grey = correct_tool._is_grey(data)
            pixels = codec.decode_source_image(data, channels=1 if grey else 3, max_pixels=self.max_pixels)
        except codec.BadImageError as error:
            raise codec.BadImageError(f"{source}: {error}") from None
        return _Loaded(source, "file", pixels, data=data, suffix=file_suffix(data, source))

    def _correct_one(
        self, loaded: _Loaded, detection: Detection, options: correct_tool.Options
    ) -> Correction:
        decision = correct_tool.Decision(
            detection.angle_degrees, detection.confidence, detection.quarter_turn if self.quarter_turns else None,
            detection.kept,
        )  # fmt: skip
        if loaded.kind == "file":
            data, action = correct_tool.output_file(
                loaded.data, loaded.pixels, loaded.suffix, decision, options
            )
            return Correction(detection, _decoded(data), data, action, loaded.suffix)
        if detection.kept:
            return Correction(detection, loaded.original, None, f"left as it was: {detection.kept}")
        if self.quarter_turns:  # exact, in the input's own mode
            turn = detection.quarter_turn
            if loaded.kind == "pil":
                shown = ImageOps.exif_transpose(loaded.original)
                transform = lossless_tool.undo_turn(turn)
                image = shown.transpose(transform) if transform is not None else shown.copy()
            else:
                image = np.ascontiguousarray(np.rot90(loaded.original, -turn))
            return Correction(detection, image, None, f"turned {90 * turn} degrees clockwise (exact)")
        rotated = correct_tool.corrected(
            loaded.pixels, detection.angle_degrees, options.crop, options.keep_size
        )
        if loaded.kind == "pil":
            image = Image.fromarray(rotated[:, :, 0] if rotated.shape[2] == 1 else rotated)
        else:
            image = rotated[:, :, 0] if loaded.original.ndim == 2 else rotated
        return Correction(detection, image, None, f"rotated {detection.angle_degrees} degrees clockwise")


def load(
    model: str | os.PathLike,
    quarter_turns: bool = False,
    min_confidence: float = 0.0,
    tta: int = 1,
    batch_size: int = 32,
) -> Model:
    """The model at `model` (a rotnet-train --output directory, its model.keras, its saved_model/, or a
    .tflite / .onnx file from rotnet-export) with rotnet-correct's options; starts TensorFlow."""
    path = os.fspath(model)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: give a rotnet-train --output directory or model file"
        )
    return Model(correct_tool.load_predictor(path), quarter_turns, min_confidence, tta, batch_size)


# --- helpers ------------------------------------------------------------------------------------------


def _as_list(images: Any) -> tuple[bool, list]:
    """(single?, inputs): one path/bytes/array/PIL image, or a list of them, or an (N, H, W, C) array."""
    if isinstance(images, str | os.PathLike | bytes | bytearray | memoryview | Image.Image):
        return True, [images]
    if isinstance(images, np.ndarray):
        return (False, list(images)) if images.ndim == 4 else (True, [images])
    return False, list(images)


def _array_pixels(array: np.ndarray, index: int) -> np.ndarray:
    """An HW / HWC uint8 array (1, 3 or 4 channels) as HWC; a one-line ValueError for anything else."""
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] not in (1, 3, 4))
    ):
        raise ValueError(
            f"array {index} is {array.dtype} {array.shape}: give HW or HWC uint8 with 1, 3 or 4 channels"
        )
    pixels = array[:, :, np.newaxis] if array.ndim == 2 else array
    return np.ascontiguousarray(pixels[:, :, :3])


def _pixels_of(image: Image.Image) -> np.ndarray:
    mode = "L" if image.mode in correct_tool.GREY_MODES else "RGB"
    pixels = np.asarray(image.convert(mode), np.uint8)
    return pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels


def file_suffix(data: bytes, source: str = "") -> str:
    """The file name extension for the format of `data` (.jpg, .png, ...), as rotnet-correct keeps it."""
    suffix = os.path.splitext(source)[1].lower() if not source.startswith("<") else ""
    if suffix in codec.IMAGE_EXTENSIONS:
        return suffix
    with Image.open(io.BytesIO(data)) as image:
        file_format = image.format or "PNG"
    known = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif"}
    return known.get(file_format, ".png")


def _decoded(data: bytes) -> Image.Image:
    """A corrected file's picture as it is shown (EXIF applied)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return ImageOps.exif_transpose(image)
