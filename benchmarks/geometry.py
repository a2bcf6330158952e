"""Fast single-warp chain vs the reference chain, rotations per second per core, JPEG q95 included.

    rotnet-bench geometry

Both chains make 224 px rotations of the real Street View samples (1281x1025, center crop 1025 px) and
encode them as JPEG q95, on one core (OpenCV single-threaded), in the same process. Decoding the
source JPEG is excluded from both (it happens once per image, not once per rotation).
"""

from __future__ import annotations

import cv2
import numpy as np

from benchmarks.common import best_of, street_view_samples
from pipeline import geometry
from pipeline.codec import decode_source_image, encode_image

IMAGE_SIZE = 224
JPEG_QUALITY = 95


def run(quick: bool = False) -> str:
    cv2.setNumThreads(1)
    images = [decode_source_image(path.read_bytes()) for path in street_view_samples()]
    fast_angles = list(range(0, 360, 4 if quick else 1))
    # The reference chain costs ~10 ms per rotation; a spread of angles gives its rate.
    reference_angles = list(range(0, 360, 45 if quick else 15))

    def fast() -> None:
        for image in images:
            source = geometry.prepare_source(image, IMAGE_SIZE, fast_angles)
            for angle in fast_angles:
                encode_image(geometry.fast_rotation(source, angle, IMAGE_SIZE), "jpeg", JPEG_QUALITY)

    def reference() -> None:
        for image in images:
            for angle in reference_angles:
                encode_image(geometry.reference_chain(image, angle, IMAGE_SIZE), "jpeg", JPEG_QUALITY)

    repeats = 1 if quick else 3
    fast_rate = len(images) * len(fast_angles) / best_of(repeats, fast)
    reference_rate = len(images) * len(reference_angles) / best_of(repeats, reference)
    psnr = _min_psnr(images, reference_angles)
    return "\n".join(
        [
            f"{len(images)} real Street View images, {IMAGE_SIZE} px output, JPEG q{JPEG_QUALITY}, one core.",
            "",
            "| chain | rotations/s/core | vs reference |",
            "|---|---:|---:|",
            f"| reference (rotate full-res, crop, resize) | {reference_rate:,.0f} | 1.0x |",
            f"| fast (one downscale per image, one warpAffine per angle) | {fast_rate:,.0f} | "
            f"{fast_rate / reference_rate:.1f}x |",
            "",
            f"Targets: fast >= 10x reference and >= 2,000 rotations/s/core. "
            f"Picture agreement: minimum PSNR fast vs reference {psnr:.1f} dB over "
            f"{len(reference_angles)} angles x {len(images)} images (test threshold 30 dB).",
        ]
    )


def _min_psnr(images: list[np.ndarray], angles: list[int]) -> float:
    worst = float("inf")
    for image in images:
        source = geometry.prepare_source(image, IMAGE_SIZE)
        for angle in angles:
            fast = geometry.fast_rotation(source, angle, IMAGE_SIZE).astype(np.float64)
            reference = geometry.reference_chain(image, angle, IMAGE_SIZE).astype(np.float64)
            mse = float(np.mean((fast - reference) ** 2))
            worst = min(worst, 10 * np.log10(255.0**2 / max(mse, 1e-12)))
    return worst
