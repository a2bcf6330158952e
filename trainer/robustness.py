"""Robustness to the rotation code: the validation split's original images, turned by independent code.

    from trainer import robustness
    images = robustness.load_source_images(schemas.load_manifest(records), "validation")
    report = robustness.evaluate_codes(predictor, images, seed=0, tta=(1, 4))
    print(report.table())

A model that learnt how *this* pipeline resamples (an angle cue of the rendering) scores well on its own records and worse
on the same images turned by any other code. Here each ORIGINAL source image (not a record) is turned
at the same random angles by every code of ROTATION_CODES and predicted; the per-code errors and the
worst/best ratio of their means say whether the model reads the image or the rendering.

Codes (angles in degrees, counter-clockwise; images HWC uint8; `render` returns image_size x image_size):

* pipeline      this pipeline's angle-independent rendering (geometry.render, the record key's jitter)
* cv2-bilinear  cv2.warpAffine, bilinear (the legacy chain's kind of warp)
* pil-bicubic   PIL Image.rotate, bicubic
* skimage       skimage.transform.rotate(order=1), RotNet's generator code (scikit-image: an eval extra);
                at the output resolution the same arithmetic as cv2-bilinear (equal to rounding)
* supersampled  4x bicubic upsampling, bicubic rotation, area downsampling (closest to a picture taken
                at an angle)

Without a crop (MNIST) the codes turn the square at the output resolution, corners black. With the
crop (photos) they turn the full-resolution square and cut the rectangle the records show
(geometry.view_crop: the angle's largest fill-free rectangle, or with crop scale "constant" the
tightest one of the records' angles, as the records).

Served (the default, `served_view`): what a code makes is the photo a user brings, so it reaches the
model the way rotnet-correct, rotnet-serve and the rotnet API serve every photo: through the records'
preparation, geometry.upright_view with the model's view (Predictor.prepare: the records' low-pass and
resampling to the model's size; with a crop, the code has cut the rectangle already, so it is not cut
twice). Raw (`served_view=None`, `--codes-input raw`): the code's image resized to the model's size
(area averaging) and given to the model as it is, as rotnet measured it before; at 28 px that skips the
records' 0.8 px low-pass, so every code looks sharper to the model than any record (PIL's bicubic the
sharpest). Pure NumPy/OpenCV/PIL/scikit-image: importing this module imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

import schemas
from pipeline import geometry, rotations
from schemas.record import example_key
from trainer.heads import circular_difference_degrees

ROTATION_CODES = ("pipeline", "cv2-bilinear", "pil-bicubic", "skimage", "supersampled")
CODES_INPUTS = ("served", "raw")  # how the codes' images reach the model (rotnet-evaluate --codes-input)
WITHIN_DEGREES = (2, 5, 10)
SUPERSAMPLE_FACTOR = 4

# (image id, HWC uint8 image: the square the pipeline rotates)
SourceImage = tuple[str, np.ndarray]


# --- The rotation codes ----------------------------------------------------------------------------


def _square(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    return np.ascontiguousarray(geometry.center_crop(image))


def _hwc(pixels: np.ndarray, channels: int) -> np.ndarray:
    pixels = np.asarray(pixels)
    return pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels[:, :, :channels]


def _cv2_turn(square: np.ndarray, angle_degrees: float, expand: bool, interpolation: int) -> np.ndarray:
    """cv2.warpAffine about the center (pixel centers at index + 0.5), black outside."""
    height, width = square.shape[:2]
    if expand:
        sin_a, cos_a = abs(math.sin(math.radians(angle_degrees))), abs(math.cos(math.radians(angle_degrees)))
        out_w = math.ceil(width * cos_a + height * sin_a - 1e-6)
        out_h = math.ceil(width * sin_a + height * cos_a - 1e-6)
    else:
        out_w, out_h = width, height
    matrix = cv2.getRotationMatrix2D((0.0, 0.0), float(angle_degrees), 1.0)
    source_center = np.array([width / 2.0 - 0.5, height / 2.0 - 0.5])
    matrix[:, 2] = np.array([out_w / 2.0 - 0.5, out_h / 2.0 - 0.5]) - matrix[:, :2] @ source_center
    turned = cv2.warpAffine(
        square, matrix, (out_w, out_h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return _hwc(turned, square.shape[2])


def _pil_turn(square: np.ndarray, angle_degrees: float, expand: bool) -> np.ndarray:
    pil = Image.fromarray(square[:, :, 0] if square.shape[2] == 1 else square)
    return _hwc(
        np.asarray(pil.rotate(float(angle_degrees), resample=Image.BICUBIC, expand=expand)), square.shape[2]
    )


def _skimage_turn(square: np.ndarray, angle_degrees: float, expand: bool) -> np.ndarray:
    from skimage.transform import rotate

    turned = rotate(
        square, float(angle_degrees), resize=expand, order=1, preserve_range=True, mode="constant"
    )
    return np.clip(np.rint(turned), 0, 255).astype(np.uint8)


def _crop(
    turned: np.ndarray, width: int, height: int, angle_degrees: float, view: geometry.View
) -> np.ndarray:
    """The rectangle the records show (geometry.view_crop: each angle's largest, or the constant one)."""
    crop_width, crop_height = geometry.view_crop(width, height, view, angle_degrees)
    return np.ascontiguousarray(geometry.crop_around_center(turned, crop_width, crop_height))


def serve(photo: np.ndarray, view: geometry.View) -> np.ndarray:
    """A code's image (HWC uint8, any size) as a model with records' `view` is served it: the
    preparation every inference path runs (geometry.upright_view, what Predictor.prepare calls), the
    view's crop left out because the code cut the records' rectangle already."""
    return geometry.upright_view(photo, dataclasses.replace(view, crop_largest_rect=False))


def _deliver(photo: np.ndarray, image_size: int, served_view: geometry.View | None) -> np.ndarray:
    """The code's image at the model's size: served (module docstring), or raw (resized)."""
    if served_view is None:
        return geometry.resize(photo, image_size)
    if served_view.image_size != image_size:
        raise ValueError(f"the served view is {served_view.image_size} px, the codes render {image_size} px")
    return serve(photo, served_view)


def render(
    code: str,
    image: np.ndarray,
    angle_degrees: float,
    image_size: int,
    crop_largest_rect: bool,
    *,
    key: str = "",
    resampling: str = "fixed",
    crop_scale: str = "largest",
    angles_degrees: Sequence[int] = range(360),
    rendering: str = "angle-independent",
    served_view: geometry.View | None = None,
) -> np.ndarray:
    """`image` (an original HWC uint8 source, center-cropped to its square here) turned by the angle
    with rotation code `code`, at image_size x image_size. With the crop, every code shows the
    rectangle the records show: `crop_scale` with `angles_degrees` (the records' angle set) decides it
    (geometry.view_crop). `key`, `resampling` and `rendering` apply to "pipeline" only: the
    pipeline's own rendering (pipeline.rotations) with the records' options; the other codes' images
    are served with `served_view` (the model's view: `serve`), or resized raw without it."""
    square = _square(image)
    side = square.shape[0]
    view = geometry.View(
        image_size, square.shape[2], crop_largest_rect=crop_largest_rect, crop_scale=crop_scale,
        angles_degrees=tuple(sorted({int(angle) for angle in angles_degrees})),
    )  # fmt: skip
    if code == "pipeline":
        return _render_angles(
            code, image, [angle_degrees], image_size, crop_largest_rect, [key], resampling, crop_scale,
            angles_degrees, rendering,
        )[0]  # fmt: skip
    if code == "supersampled":
        factor = max(1.0, SUPERSAMPLE_FACTOR * image_size / side)
        fine = square
        if factor > 1.0:
            size = round(side * factor)
            fine = _hwc(cv2.resize(square, (size, size), interpolation=cv2.INTER_CUBIC), square.shape[2])
        turned = _cv2_turn(fine, angle_degrees, crop_largest_rect, cv2.INTER_CUBIC)
        if crop_largest_rect:
            turned = _crop(turned, fine.shape[1], fine.shape[0], angle_degrees, view)
        return _deliver(turned, image_size, served_view)
    if code not in ROTATION_CODES:
        raise ValueError(f"rotation code {code!r} is not one of {', '.join(ROTATION_CODES)}")
    if not crop_largest_rect:
        # At the output resolution, as RotNet turns MNIST digits.
        small = geometry.resize(square, image_size)
        if code == "cv2-bilinear":
            turned = _cv2_turn(small, angle_degrees, False, cv2.INTER_LINEAR)
        elif code == "pil-bicubic":
            turned = _pil_turn(small, angle_degrees, False)
        else:
            turned = _skimage_turn(small, angle_degrees, False)
        return _deliver(turned, image_size, served_view)
    if code == "cv2-bilinear":
        turned = _cv2_turn(square, angle_degrees, True, cv2.INTER_LINEAR)
    elif code == "pil-bicubic":
        turned = _pil_turn(square, angle_degrees, True)
    else:
        turned = _skimage_turn(square, angle_degrees, True)
    return _deliver(_crop(turned, side, side, angle_degrees, view), image_size, served_view)


# --- Source images of a split ----------------------------------------------------------------------


class SourceImagesError(ValueError):
    """The original images of a records directory cannot be found; the message says what to pass."""


def load_source_images(
    info: schemas.DatasetInfo, split: str, input_dir: str | None = None, max_images: int | None = None
) -> list[SourceImage]:
    """The original source images of `split` as the pipeline selected them, in image-id order: the
    dataset module's `source_images` (pipeline/datasets/NAME.py) with the manifest's config, reading from
    `input_dir` when given. MNIST: the IDX files (ids = index in the file); images / street_view: the
    loose image files (ids = paths below the directory / file stems, views 1-4), each decoded, EXIF
    applied, and cut to the square the pipeline turned. `max_images` keeps the first that many ids.
    """
    from pipeline import datasets

    loader = datasets.get(info.dataset).source_images
    try:
        images = loader(info.config or {}, split, input_dir, info.image.channels)
    except FileNotFoundError as error:
        raise SourceImagesError(f"{error}: pass the directory holding them (--source-dir)") from None
    images.sort(key=lambda item: item[0])
    if not images:
        raise SourceImagesError(f"no source image of split {split!r} found for {info.dataset}")
    return images[:max_images] if max_images else images


# --- Evaluation ------------------------------------------------------------------------------------


@dataclass
class CodeRow:
    """One rotation code's errors (degrees) at one test-time augmentation."""

    code: str
    tta: int
    num_predictions: int
    mean_error_degrees: float
    median_error_degrees: float
    p95_error_degrees: float
    within_degrees: dict[str, float]

    def line(self) -> str:
        within = " / ".join(f"{self.within_degrees[str(limit)]:.1%}" for limit in WITHIN_DEGREES)
        return (
            f"{self.code:<14} tta {self.tta}  {self.mean_error_degrees:6.2f}  {self.median_error_degrees:6.1f}  "
            f"{self.p95_error_degrees:6.1f}  {within}"
        )


@dataclass
class RobustnessReport:
    split: str
    num_images: int
    angles_per_image: int
    seed: int
    rows: list[CodeRow] = field(default_factory=list)
    worst_over_best: dict[str, float] = field(default_factory=dict)  # "tta N" -> worst mean / best mean
    served: bool = True  # each code's image through the records' preparation (module docstring), or raw

    def table(self) -> str:
        how = "served as a photo (Predictor.prepare)" if self.served else "raw (resized, no preparation)"
        lines = [
            f"rotation codes on the {self.split} split's original images: {self.num_images:,} images x "
            f"{self.angles_per_image} random angles (seed {self.seed}), the same for every code; "
            f"the codes' images {how}",
            f"{'code':<14} tta    mean  median     p95  within 2 / 5 / 10 deg",
            *(row.line() for row in self.rows),
        ]
        lines += [f"worst/best mean ({name}): {ratio:.3f}" for name, ratio in self.worst_over_best.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _render_angles(
    code: str,
    image: np.ndarray,
    angles: list[int],
    image_size: int,
    crop_largest_rect: bool,
    keys: list[str],
    resampling: str,
    crop_scale: str,
    angles_degrees: Sequence[int],
    rendering: str = "angle-independent",
    served_view: geometry.View | None = None,
) -> list[np.ndarray]:
    """`render` at several angles; the pipeline code prepares the image once for all of them, with the
    pipeline's own functions (pipeline.rotations) and the records' rendering options (its images are
    records: never served again)."""
    if code == "pipeline":
        source = rotations.prepare(
            _square(image),
            image_size,
            angles_degrees,
            crop_largest_rect=crop_largest_rect,
            rendering=rendering,
            crop_scale=crop_scale,
        )
        return [
            rotations.rotation_image(source, key, angle, image_size, resampling)
            for angle, key in zip(angles, keys, strict=True)
        ]
    return [
        render(
            code,
            image,
            angle,
            image_size,
            crop_largest_rect,
            crop_scale=crop_scale,
            angles_degrees=angles_degrees,
            served_view=served_view,
        )
        for angle in angles
    ]


def code_row(code: str, tta: int, true_angles: np.ndarray, predicted_angles: np.ndarray) -> CodeRow:
    errors = circular_difference_degrees(true_angles, predicted_angles)
    return CodeRow(
        code=code,
        tta=tta,
        num_predictions=int(errors.size),
        mean_error_degrees=float(errors.mean()),
        median_error_degrees=float(np.median(errors)),
        p95_error_degrees=float(np.percentile(errors, 95)),
        within_degrees={str(limit): float(np.mean(errors <= limit)) for limit in WITHIN_DEGREES},
    )


def draw_angles(num_images: int, angles_per_image: int, seed: int, bin_angles: Sequence[int]) -> np.ndarray:
    """(num_images, angles_per_image) random angles among the model's bins: the same for every code."""
    return np.random.default_rng(seed).choice(np.asarray(bin_angles), size=(num_images, angles_per_image))


def evaluate_codes(
    predictor: Any,
    images: Sequence[SourceImage],
    *,
    dataset: str,
    split: str,
    crop_largest_rect: bool,
    codes: Sequence[str] = ROTATION_CODES,
    seed: int = 0,
    angles_per_image: int = 4,
    tta: Sequence[int] = (1,),
    resampling: str = "fixed",
    crop_scale: str = "largest",
    angles_degrees: Sequence[int] = range(360),
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    rendering: str = "angle-independent",
    served: bool = True,
) -> RobustnessReport:
    """Turn every image by the same random angles with each code, predict (`predictor.predict(images,
    batch_size, tta)`, trainer.predict.Predictor), and score each code and tta.

    "pipeline" uses the record key example_key(dataset, split, image_id, angle), as the records did.
    `served`: the other codes' images reach the model through its own view's preparation (`serve`,
    what Predictor.prepare runs); a model saved without a view (before rotnet 0.3) is served them
    resized, as Predictor.prepare serves it.
    """
    unknown = [code for code in codes if code not in ROTATION_CODES]
    if unknown:
        raise ValueError(f"unknown rotation codes {unknown}; known: {', '.join(ROTATION_CODES)}")
    image_size = int(predictor.image_size[0])
    angles = draw_angles(len(images), angles_per_image, seed, predictor.head.bin_angles)
    true_angles = angles.ravel()
    served_view = getattr(predictor, "view", None) if served else None
    rows = []
    for code in codes:
        batch = np.stack(
            [
                pixels
                for (image_id, image), image_angles in zip(images, angles, strict=True)
                for pixels in _render_angles(
                    code,
                    image,
                    [int(angle) for angle in image_angles],
                    image_size,
                    crop_largest_rect,
                    [example_key(dataset, split, image_id, int(angle)) for angle in image_angles],
                    resampling,
                    crop_scale,
                    angles_degrees,
                    rendering,
                    served_view,
                )
            ]
        )
        for augmentation in tta:
            predicted = predictor.predict(batch, batch_size=batch_size, tta=augmentation).angles_degrees
            rows.append(code_row(code, augmentation, true_angles, predicted))
        if progress:
            progress(1)
    ratios = {}
    for augmentation in tta:
        means = [row.mean_error_degrees for row in rows if row.tta == augmentation]
        ratios[f"tta {augmentation}"] = max(means) / min(means) if min(means) > 0 else math.inf
    return RobustnessReport(split, len(images), angles_per_image, seed, rows, ratios, served)
