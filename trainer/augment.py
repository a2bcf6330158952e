"""--augment in NumPy/OpenCV: the TF-free loader's twin of trainer.data.augment_images.

    augment_batch(images, np.random.default_rng([seed, batch_index]))   # uint8 (B, H, W, C) -> uint8

Per image, drawn independently and never from a label or an angle (the same numbers as the tf.data
chain's, so both draw from one distribution; tests/test_numpy_data.py compares their statistics):

* with probability AUGMENT_PROBABILITY a blur or sharpening: the image moved towards (factor > 0) or
  away from (< 0) its Gaussian blur of AUGMENT_BLUR_SIGMA_PX, by a factor uniform in
  AUGMENT_BLUR_RANGE; the blur pads by reflection including the edge pixel (TensorFlow's SYMMETRIC,
  OpenCV's BORDER_REFLECT) and is isotropic, so it is the same operation at every angle;
* with probability AUGMENT_PROBABILITY Gaussian noise whose standard deviation is uniform in
  0..AUGMENT_NOISE_MAX levels;
* rounded (half to even, as tf.round) and clipped to 0..255;
* RGB only, with probability AUGMENT_PROBABILITY: re-encoded as JPEG at a quality uniform in
  AUGMENT_JPEG_QUALITY (inclusive), libjpeg with 4:2:0 chroma, as tf.image.encode_jpeg.

The random streams differ from TensorFlow's stateless ones (the same seed gives other draws), so a
batch is not the tf.data chain's batch pixel for pixel; the distribution is the same.
"""

from __future__ import annotations

import cv2
import numpy as np

AUGMENT_BLUR_SIGMA_PX = 1.0
AUGMENT_BLUR_RANGE = (-0.6, 1.0)
AUGMENT_NOISE_MAX = 6.0
AUGMENT_JPEG_QUALITY = (50, 95)
AUGMENT_PROBABILITY = 0.5


def blur_radius(sigma: float = AUGMENT_BLUR_SIGMA_PX) -> int:
    """The Gaussian's radius in pixels (3 sigma, at least 1): both chains' kernel size is 2 r + 1."""
    return max(1, int(np.ceil(3 * sigma)))


def gaussian_blur(image: np.ndarray, sigma: float = AUGMENT_BLUR_SIGMA_PX) -> np.ndarray:
    """float32 (H, W, C) -> its Gaussian blur (same shape), edges reflected including the edge pixel."""
    size = 2 * blur_radius(sigma) + 1
    blurred = cv2.GaussianBlur(image, (size, size), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    return blurred.reshape(image.shape)  # OpenCV drops a single channel's axis


def _recode_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """An RGB uint8 image through a JPEG encode and decode at `quality` (OpenCV's libjpeg, BGR order)."""
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("OpenCV could not encode a JPEG")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]


def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (B, H, W, C) -> uint8, each randomly blurred or sharpened, noised and (C = 3)
    re-encoded as JPEG (module docstring); `rng` makes every draw."""
    images = np.asarray(images, np.uint8)
    count, channels = len(images), images.shape[-1]
    low, high = AUGMENT_BLUR_RANGE
    amounts = rng.uniform(low, high, count)
    use_blur = rng.uniform(size=count) < AUGMENT_PROBABILITY
    noise_std = rng.uniform(0.0, AUGMENT_NOISE_MAX, count)
    use_noise = rng.uniform(size=count) < AUGMENT_PROBABILITY
    qualities = rng.integers(AUGMENT_JPEG_QUALITY[0], AUGMENT_JPEG_QUALITY[1] + 1, count)
    use_jpeg = rng.uniform(size=count) < AUGMENT_PROBABILITY
    augmented = images.copy()
    for index in range(count):
        if not (use_blur[index] or use_noise[index]):
            continue  # rounding and clipping leave uint8 pixels as they are
        pixels = images[index].astype(np.float32)
        if use_blur[index]:
            pixels += np.float32(amounts[index]) * (gaussian_blur(pixels) - pixels)
        if use_noise[index]:
            pixels += np.float32(noise_std[index]) * rng.standard_normal(pixels.shape, dtype=np.float32)
        augmented[index] = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    if channels == 3:
        for index in np.flatnonzero(use_jpeg):
            augmented[index] = _recode_jpeg(augmented[index], qualities[index])
    return augmented
