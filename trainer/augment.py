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

--warp (`warp_batch`, before the above) is NumPy/OpenCV in both loaders (tf.data calls it through
tf.numpy_function with the same (seed, 3, batch index) generator), so both give the same bytes. With
probability WARP_PROBABILITY an image is resampled through a smooth random displacement field:
other handwriting of the same digit, and another interpolation kernel's look, at no angle's cost:

* the field: two independent white-noise planes (x and y displacement) smoothed by a Gaussian of
  WARP_SMOOTH_FRACTION of the image side, scaled to a root-mean-square length uniform in
  0..WARP_MAX_FRACTION of the side (4 px and 0..1.5 px at 28 px: Simard et al.'s elastic distortion
  for MNIST, a little milder). Its law is isotropic, the same at every orientation.
* its rotation removed: the ink-weighted least-squares rotation of the field about the ink's centroid
  (what a reader would call the digit turning) is subtracted, so the warp does not tilt the image and
  the angle label stays true (left in, a 1.5 px field turns a digit by 3 degrees RMS, over half the
  error the recipe reaches);
* the kernel: nearest (staircase edges), bilinear (blur) or bicubic (sharp, overshoot), one third
  each, edges reflected (cv2.remap).
"""

from __future__ import annotations

import cv2
import numpy as np

AUGMENT_BLUR_SIGMA_PX = 1.0
AUGMENT_BLUR_RANGE = (-0.6, 1.0)
AUGMENT_NOISE_MAX = 6.0
AUGMENT_JPEG_QUALITY = (50, 95)
AUGMENT_PROBABILITY = 0.5

WARP_PROBABILITY = 0.5
WARP_SMOOTH_FRACTION = 4.0 / 28.0  # the field's Gaussian smoothing, sigma as a fraction of the side
WARP_MAX_FRACTION = 1.5 / 28.0  # the largest RMS displacement, as a fraction of the side
WARP_KERNELS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC)


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


def random_field(rng: np.random.Generator, height: int, width: int, amplitude_px: float) -> np.ndarray:
    """(2, H, W) float32 x and y displacements in px: white noise smoothed by a Gaussian of
    WARP_SMOOTH_FRACTION of the shorter side, scaled to the root-mean-square length `amplitude_px`."""
    sigma = WARP_SMOOTH_FRACTION * min(height, width)
    noise = rng.standard_normal((2, height, width), dtype=np.float32)
    field = np.stack(
        [cv2.GaussianBlur(plane, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for plane in noise]
    )
    length = float(np.sqrt((field**2).sum(axis=0).mean()))
    return field * (np.float32(amplitude_px / length) if length > 0 else np.float32(0))


def _rotation_free(field: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """`field` (2, H, W) float32 (x, y displacements in px) less its least-squares rotation about the
    centroid of `ink` (H, W, non-negative weights); a field on an empty image is returned as it is."""
    total = float(ink.sum())
    if total <= 0:
        return field
    rows, cols = np.mgrid[0 : ink.shape[0], 0 : ink.shape[1]].astype(np.float32)
    weights = ink / total
    x = cols - float((weights * cols).sum())
    y = rows - float((weights * rows).sum())
    spread = float((weights * (x * x + y * y)).sum())
    if spread <= 0:
        return field
    # A small rotation by theta displaces (x, y) by theta * (-y, x); theta is the weighted fit of that.
    theta = float((weights * (x * field[1] - y * field[0])).sum()) / spread
    return np.stack([field[0] + theta * y, field[1] - theta * x]).astype(np.float32)


def warp_image(image: np.ndarray, rng: np.random.Generator, amplitude_px: float, kernel: int) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 (H, W, C) resampled through a rotation-free random field of RMS length
    `amplitude_px` with OpenCV interpolation `kernel` (module docstring)."""
    height, width = image.shape[:2]
    field = _rotation_free(
        random_field(rng, height, width, amplitude_px), image.astype(np.float32).mean(axis=2)
    )
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    warped = cv2.remap(
        image, cols + field[0], rows + field[1], interpolation=kernel, borderMode=cv2.BORDER_REFLECT
    )
    return warped.reshape(image.shape)  # OpenCV drops a single channel's axis


def warp_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (B, H, W, C) -> uint8, each warped with probability WARP_PROBABILITY (module
    docstring); `rng` makes every draw, the per-image choices first so they do not depend on content."""
    images = np.asarray(images, np.uint8)
    count = len(images)
    use_warp = rng.uniform(size=count) < WARP_PROBABILITY
    side = min(images.shape[1], images.shape[2])
    amplitudes = rng.uniform(0.0, WARP_MAX_FRACTION * side, count)
    kernels = rng.integers(0, len(WARP_KERNELS), count)
    warped = images.copy()
    for index in np.flatnonzero(use_warp):
        warped[index] = warp_image(images[index], rng, float(amplitudes[index]), WARP_KERNELS[kernels[index]])
    return warped


def warp_batch_seeded(images: np.ndarray, seed: int, batch_index: int) -> np.ndarray:
    """`warp_batch` with the generator both loaders use for a batch: (seed, 3, batch index)."""
    return warp_batch(images, np.random.default_rng([int(seed), 3, int(batch_index)]))
