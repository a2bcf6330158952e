"""Predict the rotation of images with a trained model (the API `rotnet-correct` builds on).

    from trainer.predict import Predictor
    predictor = Predictor.load("runs/mnist")          # a rotnet-train --output dir,
    # ... or "runs/mnist/model.keras", or "runs/mnist/saved_model"
    images = [predictor.prepare(photo) for photo in photos]     # HWC uint8 -> model size
    prediction = predictor.predict(images, tta=4)
    prediction.angles_degrees  # (N,) ints 0..359: the counter-clockwise rotation each image shows;
                               # rotate it clockwise by that much (geometry.undo_rotation) to correct it
    prediction.quarter_turns   # (N,) ints 0..3: the nearest quarter turn (its +-45 degree sector's mass
                               # is prediction.quarter_confidence)

The higher-level API (`import rotnet`; rotnet/api.py) takes paths, arrays or PIL images and does the
preparing and batching itself.

Preprocessing (binarize / scale / caffe) is the models' first layer, exactly as in training, so callers
pass plain uint8 pixels. A model.keras file needs the run's train_config.json beside it (for the head
and angles); the exported SavedModel carries its own copy in assets.extra/.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import geometry
from trainer import runtimes
from trainer.config import CONFIG_FILE, MODEL_FILE, SAVED_MODEL_DIR
from trainer.heads import Head, combine_rotations, decode_quarter_turns, rotate_images_90, tta_rotations

SAVED_MODEL_CONFIG = os.path.join("assets.extra", CONFIG_FILE)
SERVING_ENDPOINT = "serve"


@dataclass(frozen=True)
class Prediction:
    angles_degrees: np.ndarray  # (N,) int in 0..359: the counter-clockwise rotation the model sees
    confidence: np.ndarray  # (N,) float in 0..1: mass within Head.confidence_window_degrees of the angle
    probabilities: np.ndarray  # (N, num_bins) float32 (num_bins 360, or len(angles) for subsets)
    quarter_turns: np.ndarray | None = None  # (N,) int 0..3: the +-45 degree sector with the most mass
    quarter_confidence: np.ndarray | None = None  # (N,) float in 0..1: that sector's mass


class Predictor:
    """A trained model with its training config; `load` it, `prepare` photos, `predict` angles."""

    def __init__(self, config: dict[str, Any], infer: Callable[[np.ndarray], np.ndarray], source: str):
        self.config = config
        self.source = source
        self.image_size: tuple[int, int] = (int(config["image_size"][0]), int(config["image_size"][1]))
        self.channels: int = int(config["channels"])
        self.head = Head(config["head"], tuple(config["bin_angles"]), float(config["sigma_degrees"]))
        self._infer = infer  # uint8 (B, H, W, C) -> probabilities (B, num_bins)
        self.view = _view_of(config, source)

    # --- loading --------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str) -> Predictor:
        """A rotnet-train --output dir, a model.keras file, an exported SavedModel dir, or a .tflite /
        .onnx file from rotnet-export (with its FILE.json; trainer.runtimes)."""
        path = str(path)
        if runtimes.format_of(path) and not os.path.isdir(path):  # rotnet-export's .tflite / .onnx
            config, runtime = runtimes.load(path)
            return cls(config, runtime.predict, path)
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
            return cls._load_saved_model(path)
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, MODEL_FILE)):
                return cls._load_keras(os.path.join(path, MODEL_FILE))
            if os.path.exists(os.path.join(path, SAVED_MODEL_DIR, "saved_model.pb")):
                return cls._load_saved_model(os.path.join(path, SAVED_MODEL_DIR))
            raise FileNotFoundError(
                f"{path} holds neither {MODEL_FILE} nor {SAVED_MODEL_DIR}/: not a rotnet model"
            )
        if path.endswith(".keras") and os.path.exists(path):
            return cls._load_keras(path)
        raise FileNotFoundError(
            f"{path} is not a model: give a rotnet-train --output directory, a .keras file or a SavedModel dir"
        )

    @classmethod
    def _load_keras(cls, path: str) -> Predictor:
        import keras
        import tensorflow as tf

        import trainer.models  # noqa: F401  (registers the Preprocess layer for loading)

        config_path = os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG_FILE)
        if not os.path.exists(config_path):
            raise FileNotFoundError(
                f"{path} needs its training config {CONFIG_FILE} beside it (written by rotnet-train); "
                "or load the exported saved_model/ directory, which carries its own"
            )
        with open(config_path) as handle:
            config = json.load(handle)
        model = keras.saving.load_model(path, compile=False)
        head = Head(config["head"], tuple(config["bin_angles"]), float(config["sigma_degrees"]))
        height, width = config["image_size"]
        signature = [tf.TensorSpec([None, height, width, config["channels"]], tf.uint8)]

        @tf.function(input_signature=signature)
        def forward(images):
            return head.probabilities_tf(model(images, training=False))

        return cls(config, lambda images: forward(images).numpy(), path)

    @classmethod
    def _load_saved_model(cls, path: str) -> Predictor:
        import tensorflow as tf

        config_path = os.path.join(path, SAVED_MODEL_CONFIG)
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{path} lacks {SAVED_MODEL_CONFIG}: it was not exported by rotnet-train")
        with open(config_path) as handle:
            config = json.load(handle)
        loaded = tf.saved_model.load(path)
        endpoint = getattr(loaded, SERVING_ENDPOINT)

        def infer(images: np.ndarray) -> np.ndarray:
            return endpoint(tf.constant(images, tf.uint8))["probabilities"].numpy()

        predictor = cls(config, infer, path)
        predictor._loaded = loaded  # keep the restored variables alive
        return predictor

    # --- prediction -----------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Any HWC (or HW) uint8 grey/RGB/RGBA photo -> what the model was trained on: the record its
        pipeline would write of it at 0 degrees (pipeline.geometry.upright_view: the records' channels,
        square, crop scale and low-pass), at the model's size. A model saved without its records' view
        (before rotnet 0.3) gets the centered square resized, as it was served then."""
        if self.view is not None:
            return geometry.upright_view(image, self.view)
        image = geometry.to_channels(image, self.channels)
        square = geometry.center_crop(image) if image.shape[0] != image.shape[1] else image
        return np.ascontiguousarray(geometry.resize(np.ascontiguousarray(square), self.image_size))

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 64, tta: int = 1) -> Prediction:
        """Angles for prepared images (HWC uint8 at image_size). `tta` 2 or 4 also predicts on the
        images turned by 180 (and 90, 270) degrees and averages on the circle (heads.combine_rotations)."""
        height, width = self.image_size
        batch = (
            np.asarray(images, dtype=np.uint8) if len(images) else np.zeros((0, height, width, self.channels))
        )
        if batch.ndim == 3 and self.channels == 1:
            batch = batch[..., np.newaxis]
        if batch.shape[1:] != (height, width, self.channels):
            raise ValueError(
                f"images must be prepared to {height}x{width}x{self.channels} (Predictor.prepare), "
                f"got {batch.shape[1:]}"
            )
        rotations = tta_rotations(tta)
        if tta > 1 and height != width:
            raise ValueError("test-time augmentation turns images by 90 degrees: it needs square images")
        probabilities = combine_rotations(
            [self._probabilities(rotate_images_90(batch, rotation), batch_size) for rotation in rotations],
            rotations,
            self.head.bin_angles,
        )
        angles, confidence = self.head.decode(probabilities)
        turns, turn_confidence = decode_quarter_turns(probabilities, self.head.bin_angles)
        return Prediction(angles, confidence, probabilities, turns, turn_confidence)

    def _probabilities(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.head.num_bins), np.float32)
        parts = [
            self._infer(np.ascontiguousarray(batch[start : start + batch_size]))
            for start in range(0, len(batch), batch_size)
        ]
        return np.concatenate(parts).astype(np.float32)


def _view_of(config: dict[str, Any], source: str) -> geometry.View | None:
    """The records' view a model was trained on (train_config.json), or None with a one-line note."""
    view = config.get("view")
    if not view:
        print(
            f"note: {source} was trained before rotnet recorded how its records were drawn; photos are "
            "served as its centered square, resized (retrain to serve the records' exact view)",
            file=sys.stderr,
        )
        return None
    view = geometry.View.from_dict(view)
    if (view.image_size, view.image_size) != (int(config["image_size"][0]), int(config["image_size"][1])):
        raise ValueError(
            f"{source}: its view is {view.image_size} px but the model takes {config['image_size']}"
        )
    return view


# --- Export -------------------------------------------------------------------------------------


def export_saved_model(model, config: dict[str, Any], path: str) -> str:
    """Write a SavedModel whose `serve` endpoint (also the serving_default signature) maps a uint8
    image batch (B, H, W, C) to {angle_degrees (B,) int32 (the bin of least expected error),
    confidence (B,), probabilities (B, bins)},
    (the model's first layer preprocesses); the config goes to assets.extra/train_config.json."""
    import keras
    import tensorflow as tf

    from trainer.heads import bin_distances, circular_difference_tf

    head = Head(config["head"], tuple(config["bin_angles"]), float(config["sigma_degrees"]))
    height, width = config["image_size"]
    bins = tf.constant(config["bin_angles"], tf.int32)
    distances_between_bins = tf.constant(bin_distances(config["bin_angles"]), tf.float32)

    def serve(images):
        probabilities = head.probabilities_tf(model(images, training=False))
        # the bin of the least expected angle error, as trainer.heads.least_error_bins
        expected_errors = tf.matmul(probabilities, distances_between_bins)
        angles = tf.gather(bins, tf.argmin(expected_errors, axis=1, output_type=tf.int32))
        distances = circular_difference_tf(
            tf.cast(bins, tf.float32)[tf.newaxis, :], tf.cast(angles, tf.float32)[:, tf.newaxis]
        )
        near = tf.cast(distances <= head.confidence_window_degrees + 1e-6, tf.float32)
        confidence = tf.reduce_sum(probabilities * near, axis=1)
        return {"angle_degrees": angles, "confidence": confidence, "probabilities": probabilities}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_ENDPOINT,
        serve,
        input_signature=[tf.TensorSpec([None, height, width, config["channels"]], tf.uint8, name="images")],
    )
    archive.write_out(path, verbose=False)
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    with open(os.path.join(path, SAVED_MODEL_CONFIG), "w") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
    return path
