"""Rotation cues: the cue audit of records drawn by rotnet 0.1's chain and by the angle-independent one.

    rotnet-bench cue_audit            # ~10 minutes on 2 cores; --quick: a smoke run

The records are written with the pipeline's own code (pipeline.local_writer, the bytes rotnet-pipeline
writes), every angle 0-359, and audited by tools/cue_audit.py (what `rotnet-inspect --audit-cues`
prints): a classifier on statistics that carry no orientation content predicts angle mod 90 in 9 bins;
balanced accuracy against chance (1/9) with its 95% interval, on images split by hash.

* MNIST, upright: 1,000 digits of the 5k subset, 28 px PNG, no largest-rect crop (the pipeline's
  defaults).
* MNIST, pre-rotated: the same digits each turned first by a random angle with a careful supersampled
  rotation, a source with no preferred orientation: whatever the audit finds there is the rendering's.
  On upright digits, part of what it finds is the content (upright strokes and their ends near the
  frame alias differently at 0 and at 45 degrees: tools/cue_audit.py explains).
* Street View: 40 upright photos made from the 10 real samples (the left and right 1025 px squares of
  each 1281x1025 image, and their mirror images), 224 px JPEG q95 with the largest-rect crop; rotnet
  0.1 crops each angle's own rectangle (`--crop-scale largest`), rotnet 0.2 one scale for all
  (`constant`, the default).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import shared_data_dir, street_view_samples
from pipeline import local_writer
from pipeline.codec import decode_source_image
from tools import cue_audit

MNIST_DIGITS = 1000
MNIST_ANGLES_PER_IMAGE = 18  # sampled records per digit: 18,000 per audit
STREET_VIEW_ANGLES_PER_IMAGE = 90  # only 40 photos: 3,600 sampled records per audit
RENDERINGS = {
    "rotnet 0.1 (--rendering legacy)": {"rendering": "legacy", "crop_scale": "largest"},
    "rotnet 0.2 (default)": {"rendering": "angle-independent", "crop_scale": "constant"},
}


def prerotated_digit(digit: np.ndarray, seed: int) -> np.ndarray:
    """The digit (28 x 28 x 1 uint8) turned by a random angle from `seed` with a careful supersampled
    rotation (8x cubic up, rotate, area down): a source whose content has no preferred orientation
    relative to its pixel grid (upright digits do: tools/cue_audit.py). tests/test_cue_audit.py uses it."""
    angle = float(np.random.default_rng(seed).uniform(0, 360))
    big = cv2.resize(digit[:, :, 0], (224, 224), interpolation=cv2.INTER_CUBIC)
    turned = cv2.warpAffine(big, cv2.getRotationMatrix2D((111.5, 111.5), angle, 1.0), (224, 224))
    return cv2.resize(turned, (28, 28), interpolation=cv2.INTER_AREA)[:, :, np.newaxis]


def _street_view_photos() -> list[tuple[str, np.ndarray, int]]:
    photos = []
    for path in street_view_samples():
        image = decode_source_image(path.read_bytes())
        side = min(image.shape[:2])
        for name, square in (("left", image[:side, :side]), ("right", image[:side, -side:])):
            photos.append((f"{path.stem}-{name}", np.ascontiguousarray(square), -1))
            photos.append((f"{path.stem}-{name}-mirror", np.ascontiguousarray(square[:, ::-1]), -1))
    return photos


def _audit(sources, angles_per_image: int, **write) -> cue_audit.CueAudit:
    """Write the records into a temporary directory of this run's own, audit them, remove them."""
    with tempfile.TemporaryDirectory(prefix="rotnet-cue-audit-") as directory:
        local_writer.write_rotations(Path(directory), {"train": sources}, num_shards=1, **write)
        return cue_audit.audit(directory, max_records=20_000, angles_per_image=angles_per_image)


def _cell(score: cue_audit.Score) -> str:
    return f"{score.accuracy:.1%} [{score.ci_low:.1%}, {score.ci_high:.1%}]"


def run(quick: bool = False) -> str:
    cv2.setNumThreads(1)
    angles = range(0, 360, 5) if quick else range(360)
    digits = local_writer.mnist_sources(shared_data_dir() / "mnist-5k")["train"][
        : 100 if quick else MNIST_DIGITS
    ]
    prerotated = [
        (image_id, prerotated_digit(image, index), label)
        for index, (image_id, image, label) in enumerate(digits)
    ]
    photos = _street_view_photos()[: 8 if quick else None]
    inputs = {
        "MNIST, upright": (digits, MNIST_ANGLES_PER_IMAGE, {"dataset": "mnist", "image_size": 28, "crop_largest_rect": False}),
        "MNIST, pre-rotated (rendering alone)": (prerotated, MNIST_ANGLES_PER_IMAGE, {"dataset": "mnist", "image_size": 28, "crop_largest_rect": False}),
        "Street View, upright": (photos, STREET_VIEW_ANGLES_PER_IMAGE, {"dataset": "images", "image_size": 224, "image_format": "jpeg", "crop_largest_rect": True}),
    }  # fmt: skip
    lines = [
        "Balanced accuracy of the angle-mod-90 classifier (9 bins, chance 11.1%), 95% interval; "
        "excess: the larger of raw and paired minus chance, points. Every statistic / the isotropic "
        "ones alone (tools/cue_audit.py).",
        "",
        "| records | rendering | sampled records | every statistic, paired | isotropic, paired | excess: every / isotropic |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, (sources, per_image, write) in inputs.items():
        for label, options in RENDERINGS.items():
            result = _audit(sources, per_image, angles=angles, **write, **options)
            lines.append(
                f"| {name} | {label} | {result.num_records:,} | {_cell(result.paired)} | "
                f"{_cell(result.isotropic_paired)} | {result.excess_points():+.1f} / {result.excess_points(True):+.1f} |"
            )
    lines += [
        "",
        "Target: within 2 points of chance on the new shards. The pre-rotated rows show what "
        "the rendering alone leaves; on upright sources the content's own orientation adds to it.",
    ]
    return "\n".join(lines)
