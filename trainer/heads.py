"""Output heads: how an angle becomes a training target, and how model outputs become angles.

Angles are degrees, counter-clockwise, integers 0..359. A model predicts over `bin_angles` (all 360
angles, or a subset such as 0/90/180/270 with labels remapped to bin indices 0..3):

* classification      softmax over the bins, one-hot targets (RotNet);
* circular-gaussian   softmax over the bins, soft targets exp(-d^2 / 2 sigma^2) with d the circular
                      distance in degrees from the true angle (normalized);
* regression          two linear outputs (cos, sin) of the angle, mean squared error.

Every head turns its outputs into a probability vector over the bins (regression: a von Mises
density around the predicted direction whose concentration follows the vector's length), so
prediction, test-time augmentation and evaluation are the same for all heads.

The predicted angle is the bin with the least expected angle error under that vector (`least_error_bins`:
argmin over bins b of sum_j p_j |b - bin_j| on the circle), the decision that minimizes the mean
absolute angle error every evaluation reports. For a peaked, symmetric vector it is the most probable
bin; where the model is torn between nearby angles it is their circular median, not whichever single
bin is a little higher (on the MNIST recipe's validation digits: 0.1-0.2 degrees less mean error than
the argmax, under every rotation code; docs/ablations.md). Quarter turns stay the most probable sector.

The NumPy functions here are the reference. The keras.ops methods (`*_ops`, `predicted_bins`,
`true_bins`, the metrics) do the same on tensors of any Keras backend (TensorFlow, JAX, torch) inside
the model's metrics; the `*_tf` functions are for TensorFlow-only code: the tf.data chain's targets and
the exported SavedModel's endpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Regression: the output vector is shrunk by ambiguity; turn its length into a von Mises concentration
# with Banerjee et al.'s (2005) approximation of the inverse of I1(k)/I0(k), capped to stay finite.
MAX_RESULTANT_LENGTH = 0.999
# The confidence of a free-angle prediction is the probability mass within a window around the
# predicted angle (Head.confidence_window_degrees): +-5 degrees for classification (one 360-way bin is
# too narrow: a sure model spreads over its neighbours), +-2 sigma for circular-gaussian, +-10 for
# regression. A quarter turn's confidence is the mass of its +-45 degree sector (decode_quarter_turns).
CLASSIFICATION_CONFIDENCE_WINDOW_DEGREES = 5.0
REGRESSION_CONFIDENCE_WINDOW_DEGREES = 10.0
QUARTER_TURNS = (0, 90, 180, 270)


# --- Pure NumPy -----------------------------------------------------------------------------------


def circular_difference_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| on the circle, in [0, 180] degrees (element-wise, broadcasting)."""
    difference = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) % 360.0
    return np.minimum(difference, 360.0 - difference)


def bin_distances(bin_angles: Sequence[int]) -> np.ndarray:
    """(bins, bins) float64, read-only: the circular distance in degrees between every pair of bins."""
    return _bin_distances(tuple(int(angle) for angle in bin_angles))


@functools.lru_cache(maxsize=8)
def _bin_distances(bin_angles: tuple[int, ...]) -> np.ndarray:
    # Made once per set of bins: every predicted batch (rotnet-serve, rotnet-evaluate) needs it.
    bins = np.asarray(bin_angles, np.float64)
    distances = circular_difference_degrees(bins[:, np.newaxis], bins[np.newaxis, :])
    distances.flags.writeable = False
    return distances


def least_error_bins(probabilities: np.ndarray, bin_angles: Sequence[int]) -> np.ndarray:
    """(N,) int: for each row of `probabilities` (N, bins), the bin whose angle has the least expected
    circular error, sum_j p_j * distance(bin, bin_j) (module docstring); the lowest index on a tie, so a
    one-hot row gives its bin."""
    expected_errors = np.asarray(probabilities, np.float64) @ bin_distances(bin_angles)
    return np.argmin(expected_errors, axis=1)


def soft_labels(bin_angles: Sequence[int], true_angles: np.ndarray, sigma_degrees: float) -> np.ndarray:
    """Circular-gaussian targets (N, bins): exp(-d^2 / 2 sigma^2) over the bins, rows summing to 1."""
    distances = circular_difference_degrees(
        np.asarray(bin_angles)[np.newaxis, :], np.asarray(true_angles)[:, np.newaxis]
    )
    weights = np.exp(-0.5 * (distances / sigma_degrees) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def concentration_from_length(length: np.ndarray) -> np.ndarray:
    """von Mises concentration kappa whose mean resultant length is `length` (0 -> 0, 1 -> large)."""
    r = np.clip(np.asarray(length, np.float64), 0.0, MAX_RESULTANT_LENGTH)
    return r * (2.0 - r * r) / (1.0 - r * r)


def probabilities_from_vectors(vectors: np.ndarray, bin_angles: Sequence[int]) -> np.ndarray:
    """Regression outputs (N, 2) = (cos, sin) -> von Mises probabilities over the bins (N, bins)."""
    vectors = np.asarray(vectors, np.float64)
    direction = np.arctan2(vectors[:, 1], vectors[:, 0])
    kappa = concentration_from_length(np.hypot(vectors[:, 0], vectors[:, 1]))
    bins = np.radians(np.asarray(bin_angles, np.float64))
    logits = kappa[:, np.newaxis] * np.cos(bins[np.newaxis, :] - direction[:, np.newaxis])
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def undo_rotation_permutation(bin_angles: Sequence[int], rotation_degrees: int) -> np.ndarray:
    """Index map for test-time augmentation: bin i (angle a) of an image turned a further `rotation`
    counter-clockwise holds the evidence for angle a - rotation of the original, i.e. bin result[i].

    Exact when the bins are closed under the rotation (all 360 angles, or 0/90/180/270); otherwise the
    nearest bin on the circle.
    """
    bins = np.asarray(bin_angles, np.float64)
    targets = (bins - rotation_degrees) % 360.0
    return np.argmin(circular_difference_degrees(targets[:, np.newaxis], bins[np.newaxis, :]), axis=1)


def combine_rotations(
    probabilities_by_rotation: Sequence[np.ndarray],
    rotations_degrees: Sequence[int],
    bin_angles: Sequence[int],
) -> np.ndarray:
    """Average on the circle the probabilities predicted for an image turned by each rotation.

    `probabilities_by_rotation[k]` (N, bins) was predicted on the images turned a further
    `rotations_degrees[k]` counter-clockwise (np.rot90, exact); each is shifted back by its rotation
    and the shifted vectors are averaged. Used by Predictor (tta) and rotnet-evaluate alike.
    """
    combined = np.zeros_like(np.asarray(probabilities_by_rotation[0], np.float64))
    for probabilities, rotation in zip(probabilities_by_rotation, rotations_degrees, strict=True):
        permutation = undo_rotation_permutation(bin_angles, rotation)
        shifted = np.zeros_like(combined)
        np.add.at(shifted, (slice(None), permutation), np.asarray(probabilities, np.float64))
        combined += shifted
    return (combined / len(rotations_degrees)).astype(np.float32)


def decode_probabilities(
    probabilities: np.ndarray, bin_angles: Sequence[int], confidence_window_degrees: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(angles (N,) int, confidence (N,) in 0..1): the angle of the least expected error
    (`least_error_bins`), and the probability mass within `confidence_window_degrees` of it (0 = that
    bin alone)."""
    probabilities = np.asarray(probabilities, np.float64)
    bins = np.asarray(bin_angles)
    best = least_error_bins(probabilities, bins)
    angles = bins[best].astype(np.int64)
    near = circular_difference_degrees(bins[np.newaxis, :], angles[:, np.newaxis]) <= (
        confidence_window_degrees + 1e-9
    )
    confidence = np.clip(np.sum(probabilities * near, axis=1), 0.0, 1.0)
    return angles, confidence.astype(np.float32)


def quarter_turn_masses(probabilities: np.ndarray, bin_angles: Sequence[int]) -> np.ndarray:
    """(N, 4): the probability mass of the +-45 degree sector around 0, 90, 180 and 270 degrees.

    A bin strictly inside a sector counts for it; a bin exactly on a border (45, 135, ...) counts half
    for each neighbour, so the four masses of a row sum to the row's total (1 for probabilities).
    """
    bins = np.asarray(bin_angles, np.float64)
    distances = circular_difference_degrees(bins[:, np.newaxis], np.asarray(QUARTER_TURNS)[np.newaxis, :])
    weights = np.where(np.isclose(distances, 45.0), 0.5, (distances < 45.0).astype(np.float64))
    return np.asarray(probabilities, np.float64) @ weights


def decode_quarter_turns(
    probabilities: np.ndarray, bin_angles: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(turns (N,) int 0..3, confidence (N,) in 0..1): the sector with the most mass (turn k: the image
    shows a counter-clockwise rotation of 90k degrees) and that mass. Ties go to the lower turn."""
    masses = quarter_turn_masses(probabilities, bin_angles)
    turns = np.argmax(masses, axis=1).astype(np.int64)
    confidence = np.clip(masses[np.arange(len(turns)), turns], 0.0, 1.0)
    return turns, confidence.astype(np.float32)


def rotate_images_90(images: np.ndarray, rotation_degrees: int) -> np.ndarray:
    """Turn a batch (N, H, W, C) counter-clockwise by a multiple of 90 degrees, exactly."""
    if rotation_degrees % 90:
        raise ValueError(f"test-time rotations must be multiples of 90 degrees, got {rotation_degrees}")
    return np.ascontiguousarray(np.rot90(images, k=rotation_degrees // 90 % 4, axes=(1, 2)))


def tta_rotations(tta: int) -> list[int]:
    """The test-time rotations for --tta 1 (none), 2 (0/180) or 4 (0/90/180/270)."""
    if tta not in (1, 2, 4):
        raise ValueError(f"tta must be 1, 2 or 4, got {tta}")
    return list(range(0, 360, 360 // tta))


# --- The head object: targets, losses, metrics -----------------------------------------------------


@dataclass(frozen=True)
class Head:
    """A head over `bin_angles`; `name` is one of trainer.config.HEADS."""

    name: str
    bin_angles: tuple[int, ...]
    sigma_degrees: float = 3.0

    @property
    def num_bins(self) -> int:
        return len(self.bin_angles)

    @property
    def num_outputs(self) -> int:
        return 2 if self.name == "regression" else self.num_bins

    @property
    def activation(self) -> str:
        return "linear" if self.name == "regression" else "softmax"

    @property
    def confidence_window_degrees(self) -> float:
        """The free-angle confidence is the probability mass within this many degrees of the prediction."""
        if self.name == "circular-gaussian":
            return 2.0 * self.sigma_degrees
        if self.name == "regression":
            return REGRESSION_CONFIDENCE_WINDOW_DEGREES
        return CLASSIFICATION_CONFIDENCE_WINDOW_DEGREES

    # --- NumPy ---

    def targets(self, bin_indices: np.ndarray) -> np.ndarray:
        """Training targets for label bin indices, as the tf.data chain makes them."""
        angles = np.asarray(self.bin_angles)[np.asarray(bin_indices)]
        if self.name == "classification":
            return np.asarray(bin_indices, np.int32)
        if self.name == "circular-gaussian":
            return soft_labels(self.bin_angles, angles, self.sigma_degrees)
        radians = np.radians(angles.astype(np.float64))
        return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Model outputs -> probabilities over the bins (N, bins)."""
        if self.name == "regression":
            return probabilities_from_vectors(outputs, self.bin_angles)
        return np.asarray(outputs, np.float32)

    def decode(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return decode_probabilities(probabilities, self.bin_angles, self.confidence_window_degrees)

    # --- TensorFlow ---

    def targets_tf(self, bin_indices):
        """The same as `targets`, on a batch tensor of int bin indices."""
        import tensorflow as tf

        if self.name == "classification":
            return tf.cast(bin_indices, tf.int32)
        angles = tf.gather(tf.constant(self.bin_angles, tf.float32), bin_indices)
        if self.name == "circular-gaussian":
            bins = tf.constant(self.bin_angles, tf.float32)
            distances = circular_difference_tf(bins[tf.newaxis, :], angles[:, tf.newaxis])
            weights = tf.exp(-0.5 * tf.square(distances / self.sigma_degrees))
            return weights / tf.reduce_sum(weights, axis=1, keepdims=True)
        radians = angles * (np.pi / 180.0)
        return tf.stack([tf.cos(radians), tf.sin(radians)], axis=1)

    def probabilities_tf(self, outputs):
        """Model outputs -> probabilities over the bins, in TensorFlow (for the SavedModel)."""
        import tensorflow as tf

        outputs = tf.cast(outputs, tf.float32)
        if self.name != "regression":
            return outputs
        direction = tf.atan2(outputs[:, 1], outputs[:, 0])
        length = tf.clip_by_value(tf.norm(outputs, axis=1), 0.0, MAX_RESULTANT_LENGTH)
        kappa = length * (2.0 - length * length) / (1.0 - length * length)
        bins = tf.constant(np.radians(self.bin_angles), tf.float32)
        return tf.nn.softmax(kappa[:, tf.newaxis] * tf.cos(bins[tf.newaxis, :] - direction[:, tf.newaxis]))

    # --- keras.ops: the model's metrics, on every Keras backend ---

    def probabilities_ops(self, outputs):
        """Model outputs -> probabilities over the bins, in keras.ops (`probabilities`' arithmetic)."""
        from keras import ops

        outputs = ops.cast(outputs, "float32")
        if self.name != "regression":
            return outputs
        direction = ops.arctan2(outputs[:, 1], outputs[:, 0])
        length = ops.clip(ops.sqrt(ops.sum(ops.square(outputs), axis=1)), 0.0, MAX_RESULTANT_LENGTH)
        kappa = length * (2.0 - length * length) / (1.0 - length * length)
        bins = ops.convert_to_tensor(np.radians(self.bin_angles).astype(np.float32))
        return ops.softmax(kappa[:, None] * ops.cos(bins[None, :] - direction[:, None]), axis=-1)

    def predicted_bins(self, outputs):
        """Index of the predicted bin for each row of model outputs: the least expected error's, as
        `least_error_bins` (int32 tensor, keras.ops)."""
        from keras import ops

        distances = ops.convert_to_tensor(bin_distances(self.bin_angles).astype(np.float32))
        expected_errors = ops.matmul(self.probabilities_ops(outputs), distances)
        return ops.cast(ops.argmin(expected_errors, axis=1), "int32")

    def true_bins(self, targets):
        """Index of the true bin from the targets `targets` made (exact for every head; keras.ops)."""
        from keras import ops

        if self.name == "classification":
            return ops.reshape(ops.cast(targets, "int32"), (-1,))
        if self.name == "circular-gaussian":
            return ops.cast(ops.argmax(targets, axis=1), "int32")
        # the unit vector of the true angle points at its bin: the most probable one of its density
        return ops.cast(ops.argmax(self.probabilities_ops(targets), axis=1), "int32")

    def loss(self):
        import keras

        if self.name == "classification":
            return keras.losses.SparseCategoricalCrossentropy()
        if self.name == "circular-gaussian":
            return keras.losses.CategoricalCrossentropy()
        return keras.losses.MeanSquaredError()

    def metric_functions(self) -> dict:
        """Per-example metrics of (targets, outputs) tensors, in keras.ops (every backend): angle_error
        (absolute circular difference between the true and the predicted bin's angle, degrees) and
        accuracy (1.0 for the right bin)."""
        from keras import ops

        bins = np.asarray(self.bin_angles, np.float32)

        def angle_error(y_true, y_pred):
            table = ops.convert_to_tensor(bins)
            true_angles = ops.take(table, self.true_bins(y_true))
            predicted_angles = ops.take(table, self.predicted_bins(y_pred))
            return circular_difference_ops(true_angles, predicted_angles)

        def accuracy(y_true, y_pred):
            return ops.cast(ops.equal(self.true_bins(y_true), self.predicted_bins(y_pred)), "float32")

        return {"angle_error": angle_error, "accuracy": accuracy}

    def metrics(self) -> list:
        """angle_error (mean absolute circular difference, degrees, RotNet's metric) and accuracy."""
        import keras

        return [
            keras.metrics.MeanMetricWrapper(fn, name=name) for name, fn in self.metric_functions().items()
        ]


def circular_difference_ops(a, b):
    """|a - b| on the circle in [0, 180] degrees, for float tensors of any Keras backend."""
    from keras import ops

    difference = ops.mod(ops.abs(a - b), 360.0)
    return ops.minimum(difference, 360.0 - difference)


def circular_difference_tf(a, b):
    """|a - b| on the circle in [0, 180] degrees, for float tensors."""
    import tensorflow as tf

    difference = tf.math.floormod(tf.abs(a - b), 360.0)
    return tf.minimum(difference, 360.0 - difference)
