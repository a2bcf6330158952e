"""Preprocessing of uint8 pixels, the computation of the models' first layer (trainer.models.Preprocess).

    preprocess_images(images, "caffe")          # keras.ops: runs on TensorFlow, JAX and torch alike
    preprocess_images_numpy(images, "caffe")    # the NumPy reference it is tested against

Modes (trainer.config.PREPROCESSINGS), all computed in float32:

    binarize  RotNet's MNIST binarization: pixel / 255 >= 0.1 -> 1.0, else 0.0
    scale     pixel / 255
    caffe     keras.applications.resnet50.preprocess_input: RGB -> BGR, minus the ImageNet channel means
              (grey images: minus the mean of the three means)
    raw       float pixels 0..255 (MobileNetV3 rescales inside the model)

No TensorFlow here: the model's own layer must run under every Keras backend, and the TF-free loader
(trainer.numpy_data) and the GPU machine import this module without TensorFlow installed.
"""

from __future__ import annotations

import numpy as np

from pipeline.geometry import BINARIZE_THRESHOLD

# keras.applications.resnet50.preprocess_input ("caffe"): BGR order minus these channel means.
IMAGENET_MEANS_BGR = (103.939, 116.779, 123.68)
GREY_MEAN = float(np.mean(IMAGENET_MEANS_BGR))  # a grey image's one channel: the mean of the means
MODES = ("binarize", "scale", "caffe", "raw")


def _check(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing {mode!r}; one of {', '.join(MODES)}")


def preprocess_images(images, mode: str):
    """uint8 pixels (B, H, W, C) -> float32 tensor of the same shape, in keras.ops (any backend)."""
    from keras import ops

    _check(mode)
    if mode == "caffe" and images.shape[-1] == 3:
        images = ops.flip(images, axis=-1)  # RGB -> BGR on bytes: cheaper than on floats
    pixels = ops.cast(images, "float32")
    if mode == "binarize":
        # The same float32 arithmetic as pipeline.geometry.binarize (value / 255 >= threshold).
        return ops.cast(ops.greater_equal(pixels / 255.0, BINARIZE_THRESHOLD), "float32")
    if mode == "scale":
        return pixels / 255.0
    if mode == "caffe":
        if pixels.shape[-1] == 3:
            return pixels - ops.convert_to_tensor(np.asarray(IMAGENET_MEANS_BGR, np.float32))
        return pixels - GREY_MEAN
    return pixels


def preprocess_images_numpy(images: np.ndarray, mode: str) -> np.ndarray:
    """The NumPy reference of `preprocess_images`: uint8 (B, H, W, C) -> float32."""
    _check(mode)
    images = np.asarray(images)
    if mode == "caffe" and images.shape[-1] == 3:
        images = images[..., ::-1]
    pixels = images.astype(np.float32)
    if mode == "binarize":
        return (pixels / np.float32(255.0) >= np.float32(BINARIZE_THRESHOLD)).astype(np.float32)
    if mode == "scale":
        return pixels / np.float32(255.0)
    if mode == "caffe":
        means = np.asarray(IMAGENET_MEANS_BGR, np.float32) if pixels.shape[-1] == 3 else np.float32(GREY_MEAN)
        return pixels - means
    return pixels
