"""Cue audit: can statistics that carry no orientation *content* predict a record's angle mod 90?

    from tools import cue_audit
    result = cue_audit.audit("data/records/mnist")          # TF-free: NumPy, OpenCV, the schemas readers
    print(result.table())
    cue_audit.plot(result, "cues.png")                      # each statistic by angle

A picture turned by 45 degrees should look, to a statistic that ignores what the picture shows, like
the same picture turned by 0: as sharp, as many bytes, the same borders. Rendering can break that
(the legacy chain, `--rendering legacy`, copies pixels at right angles and blurs them elsewhere; RotNet's largest-rectangle crop
zooms 45-degree records by sqrt 2), and a network then reads the angle from the rendering instead of
from the content, and scores worse on the same images turned by any other code. The audit:

1. samples records stably (by a hash of the image id, then of the record key: the same (image,
   angle) pairs in any two record directories of the same images, so an old and a new rendering are
   compared on the same records), several angles per image;
2. computes per record the statistics of FEATURES (grey images also the ink share after RotNet's
   binarization at 0.1);
3. fits a small classifier - multinomial logistic regression on the standardized statistics and their
   squares - to predict `angle mod 90` in 9 bins of 10 degrees, trained and tested on images split by a
   hash of the image id (no image on both sides), on the raw statistics and "paired": each statistic
   minus the mean of the same image's sampled records (log scale for sizes and energies), which
   removes what differs between images and keeps what differs between the angles of one image;
4. reports the balanced accuracy (mean recall of the 9 bins: chance is exactly 1/9 for anything that
   ignores the statistics) with a 95% interval, for every statistic and for the isotropic ones alone,
   the same per single statistic, and the mean of each statistic by angle (`plot`).

What is a shortcut and what is content. The isotropic statistics are computed over the inscribed disc
with isotropic operators (Gaussians), so turning the content inside the disc leaves them unchanged up
to the pixel grid. The others - the 4-neighbour Laplacian, the codec's bytes (PNG and JPEG code
axis-aligned edges in fewer bytes), the frame's rows and columns - also follow the orientation of the
content. And even isotropic statistics see the content's orientation through the sampling grid: an
upright digit's vertical strokes alias differently from the same strokes at 45 degrees. Measured on
200 MNIST digits rendered angle-independently: the statistics follow smooth profiles in angle mod 90
(band energy 0.7-1.4 px +-10 standard errors, frame statistics +-13) that vanish when the digits are
turned at random *before* rendering (a source without a preferred orientation), while the legacy chain
keeps its cue on such sources (tests/test_cue_audit.py). Audit pre-rotated sources to see the
rendering alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

import schemas
from pipeline.codec import decode_image
from pipeline.geometry import BINARIZE_THRESHOLD
from schemas import tfrecord_file
from schemas.record import decode_fields, example_key
from schemas.splits import stable_fraction

NUM_BINS = 9  # angle mod 90 in bins of 10 degrees
BIN_DEGREES = 10
DEFAULT_MAX_RECORDS = 20_000
DEFAULT_ANGLES_PER_IMAGE = 18  # sampled records per image (of 360): enough for the paired statistics
IMAGE_SALT = "rotnet-cue-audit-images-v1"
RECORD_SALT = "rotnet-cue-audit-records-v1"
SPLIT_SALT = "rotnet-cue-audit-split-v1"
TEST_SHARE = 0.5
Z_95 = 1.959964

# (name, log scale for the paired statistics, isotropic, description). "Isotropic" statistics are
# computed inside the inscribed disc, with isotropic operators: a turn of the content inside the disc
# leaves them unchanged (up to the pixel grid), so only the rendering can make them depend on the
# angle. The others (4-neighbour Laplacian, codec bytes, the frame's rows and columns) also respond to
# the orientation of edges in the content (PNG and JPEG code axis-aligned edges in fewer bytes).
FEATURES: tuple[tuple[str, bool, bool, str], ...] = (
    ("laplacian_variance", True, False, "variance of the 4-neighbour Laplacian inside the disc (sharpness)"),
    ("band_energy_mid", True, True, "energy between Gaussians of 0.7 and 1.4 px over that below 2.8 px"),
    ("band_energy_high", True, True, "energy above a Gaussian of 0.7 px over that below 2.8 px"),
    ("encoded_bytes", True, False, "size of the encoded image"),
    ("disc_mean", False, True, "mean pixel value over the disc (radial Hann weights)"),
    ("disc_std", True, True, "standard deviation of the pixel values over the disc (same weights)"),
    ("border_mean", False, False, "mean of the outermost rows and columns"),
    ("border_std", True, False, "standard deviation of the outermost rows and columns"),
    ("corner_mean", False, False, "mean of the four 3x3 corners (where fill pixels show first)"),
)
INK_FEATURE = (
    "ink_share",
    False,
    True,
    f"share of the disc (same weights) >= {BINARIZE_THRESHOLD:.1f} of full scale (grey records only)",
)


def feature_table(channels: int) -> tuple[tuple[str, bool, bool, str], ...]:
    return (*FEATURES, INK_FEATURE) if channels == 1 else FEATURES


# --- Statistics of one record -------------------------------------------------------------------


def _grey(image: np.ndarray) -> np.ndarray:
    pixels = image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return pixels.astype(np.float32)


@dataclass(frozen=True)
class _Masks:
    window: np.ndarray  # radial Hann weights over the inscribed disc, summing to 1 (isotropic)
    disc: np.ndarray  # pixels whose center is inside the disc (for the Laplacian)


_MASKS: dict[tuple[int, int], _Masks] = {}
# Band-pass by differences of Gaussians: a Gaussian is isotropic (the separable one too), so these band
# energies do not change when the content turns. (A 28 px FFT was not: its few frequencies per band
# made the band sums follow the content's orientation, +-0.2% between 0 and 45 degrees on MNIST.)
BAND_SIGMAS_PX = (0.7, 1.4, 2.8)


def _masks(height: int, width: int) -> _Masks:
    if (height, width) not in _MASKS:
        yy, xx = np.mgrid[0:height, 0:width]
        radius = np.hypot(xx - (width - 1) / 2.0, yy - (height - 1) / 2.0)
        outer = min(height, width) / 2.0
        window = np.where(radius < outer, np.cos(0.5 * np.pi * radius / outer) ** 2, 0.0)
        _MASKS[(height, width)] = _Masks(window=window / window.sum(), disc=radius <= outer - 1.5)
    return _MASKS[(height, width)]


def record_statistics(image: np.ndarray, encoded_bytes: int) -> np.ndarray:
    """The audit's statistics (feature_table order) of one record: HWC uint8 pixels + encoded size."""
    grey = _grey(image)
    masks = _masks(*grey.shape)
    weights = masks.window
    mean = float((grey * weights).sum())
    std = math.sqrt(max(float(((grey - mean) ** 2 * weights).sum()), 0.0))
    laplacian = cv2.Laplacian(grey, cv2.CV_32F)[masks.disc]
    fine, middle, coarse = (
        cv2.GaussianBlur(grey, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101) for sigma in BAND_SIGMAS_PX
    )
    total = float(((grey - coarse) ** 2 * weights).sum())
    high = float(((grey - fine) ** 2 * weights).sum()) / total if total > 0 else 0.0
    mid = float(((fine - middle) ** 2 * weights).sum()) / total if total > 0 else 0.0
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    corners = np.concatenate(
        [grey[:3, :3].ravel(), grey[:3, -3:].ravel(), grey[-3:, :3].ravel(), grey[-3:, -3:].ravel()]
    )
    values = [
        float(laplacian.var()),
        mid,
        high,
        float(encoded_bytes),
        mean,
        std,
        float(border.mean()),
        float(border.std()),
        float(corners.mean()),
    ]
    if image.shape[2] == 1:
        values.append(float(((grey / 255.0 >= BINARIZE_THRESHOLD) * weights).sum()))
    return np.array(values, np.float64)


# --- Sampling records ---------------------------------------------------------------------------


@dataclass
class Sample:
    """Sampled records' statistics: (N, F) values with their angles and image ids."""

    features: np.ndarray
    angles: np.ndarray
    image_ids: list[str]
    feature_names: list[str]
    log_scale: list[bool]
    isotropic: list[bool]


def _sampled_records(
    records: str, info: schemas.DatasetInfo, splits: list[str], image_fraction: float, record_fraction: float
) -> Iterator[tuple[str, int, bytes]]:
    for split in splits:
        for path in info.shard_paths(records, split):
            for data in tfrecord_file.iter_records(path, verify=False):
                fields = decode_fields(data, ("dataset", "split", "image_id", "angle_degrees"))
                image_id = fields["image_id"]
                if image_fraction < 1.0 and stable_fraction(image_id, IMAGE_SALT) >= image_fraction:
                    continue
                key = example_key(fields["dataset"], fields["split"], image_id, fields["angle_degrees"])
                if record_fraction < 1.0 and stable_fraction(key, RECORD_SALT) >= record_fraction:
                    continue
                yield f"{fields['split']}/{image_id}", fields["angle_degrees"], data


def sample_statistics(
    records: str,
    split: str | None = None,
    max_records: int = DEFAULT_MAX_RECORDS,
    angles_per_image: int = DEFAULT_ANGLES_PER_IMAGE,
) -> Sample:
    """Statistics of a stable sample of about `max_records` records of `split` (None: every split),
    about `angles_per_image` per sampled image."""
    info = schemas.load_manifest(records)
    splits = sorted(info.splits) if split is None else [split]
    if split is not None and split not in info.splits:
        raise ValueError(f"split {split!r} is not in {records}; it has {', '.join(sorted(info.splits))}")
    num_images = sum(info.splits[name].num_images for name in splits)
    num_angles = len(info.angles_degrees)
    record_fraction = min(1.0, angles_per_image / max(1, num_angles))
    image_fraction = min(1.0, max_records / max(1.0, num_images * num_angles * record_fraction))
    channels, image_format = info.image.channels, info.image.format
    table = feature_table(channels)
    rows, angles, image_ids = [], [], []
    for image_id, angle, data in _sampled_records(records, info, splits, image_fraction, record_fraction):
        record = schemas.decode_example(data)
        pixels = decode_image(record.image_encoded, image_format, record.height, record.width, channels)
        rows.append(record_statistics(pixels, len(record.image_encoded)))
        angles.append(angle)
        image_ids.append(image_id)
    if not rows:
        raise ValueError(f"no records sampled from {records}")
    return Sample(
        features=np.vstack(rows),
        angles=np.asarray(angles, np.int64),
        image_ids=image_ids,
        feature_names=[name for name, _, _, _ in table],
        log_scale=[log for _, log, _, _ in table],
        isotropic=[isotropic for _, _, isotropic, _ in table],
    )


# --- The classifier -----------------------------------------------------------------------------


def angle_bins(angles: np.ndarray) -> np.ndarray:
    """angle mod 90 in bins of 10 degrees: 0..8."""
    return (np.asarray(angles) % 90) // BIN_DEGREES


def paired(features: np.ndarray, image_ids: list[str], log_scale: list[bool]) -> np.ndarray:
    """Each statistic minus the mean of the same image's records (log1p first where `log_scale`)."""
    values = features.copy()
    for column, use_log in enumerate(log_scale):
        if use_log:
            values[:, column] = np.log1p(np.maximum(values[:, column], 0.0))
    _, groups = np.unique(np.asarray(image_ids), return_inverse=True)
    counts = np.bincount(groups)
    for column in range(values.shape[1]):
        means = np.bincount(groups, weights=values[:, column]) / counts
        values[:, column] -= means[groups]
    return values


def _expand(features: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    standard = (features - mean) / scale
    return np.hstack([standard, standard**2 - 1.0])


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    sample_weights: np.ndarray | None = None,
    l2: float = 1e-3,
    steps: int = 400,
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch gradient descent with momentum (convex: the
    iterations only need to be enough). Returns (weights (F, C), bias (C,))."""
    count, dimension = features.shape
    weights_of_samples = np.ones(count) if sample_weights is None else np.asarray(sample_weights, np.float64)
    weights_of_samples = weights_of_samples / weights_of_samples.sum()
    weights, bias = np.zeros((dimension, num_classes)), np.zeros(num_classes)
    velocity_w, velocity_b = np.zeros_like(weights), np.zeros_like(bias)
    onehot = np.eye(num_classes)[labels]
    rate, momentum = 0.5, 0.9
    for _ in range(steps):
        logits = features @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        error = (probabilities - onehot) * weights_of_samples[:, np.newaxis]
        velocity_w = momentum * velocity_w - rate * (features.T @ error + l2 * weights)
        velocity_b = momentum * velocity_b - rate * error.sum(axis=0)
        weights += velocity_w
        bias += velocity_b
    return weights, bias


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if trials == 0:
        return 0.0, 1.0
    share = successes / trials
    denominator = 1 + z * z / trials
    center = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def balanced_accuracy(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Mean recall over the classes present, and its standard error (binomial per class).

    Its chance level is 1/num_classes for *any* prediction that ignores the input, however unequal the
    classes: the sampled angles of each image are a hash sample, so the 9 bins are near, not exactly,
    equal, and plain accuracy would put chance at an unknown point between 1/9 and the largest share.
    """
    recalls, variances = [], []
    for label in range(num_classes):
        selected = true == label
        count = int(selected.sum())
        if count == 0:
            continue
        recall = float((predicted[selected] == label).mean())
        recalls.append(recall)
        variances.append(recall * (1 - recall) / count)
    return float(np.mean(recalls)), math.sqrt(float(np.sum(variances))) / len(recalls)


@dataclass
class Score:
    """Balanced accuracy on the test images (chance 1/9) with its 95% interval."""

    accuracy: float
    ci_low: float
    ci_high: float
    num_test: int


def classify(features: np.ndarray, bins: np.ndarray, is_test: np.ndarray) -> Score:
    """Train on ~is_test (bins weighted equally), score on is_test: balanced accuracy, 95% interval."""
    train, test = ~is_test, is_test
    if train.sum() == 0 or test.sum() == 0:
        raise ValueError("the image split left no training or no test records: sample more images")
    mean = features[train].mean(axis=0)
    scale = features[train].std(axis=0)
    scale[scale == 0] = 1.0
    expanded_train = _expand(features[train], mean, scale)
    # The squares are standardized as well, so that one learning rate suits every column.
    square_mean, square_scale = expanded_train.mean(axis=0), expanded_train.std(axis=0)
    square_scale[square_scale == 0] = 1.0
    counts = np.bincount(bins[train], minlength=NUM_BINS).astype(np.float64)
    sample_weights = 1.0 / np.maximum(counts, 1.0)[bins[train]]
    weights, bias = fit_logistic(
        (expanded_train - square_mean) / square_scale, bins[train], NUM_BINS, sample_weights
    )
    expanded_test = (_expand(features[test], mean, scale) - square_mean) / square_scale
    predicted = np.argmax(expanded_test @ weights + bias, axis=1)
    accuracy, error = balanced_accuracy(bins[test], predicted, NUM_BINS)
    return Score(
        accuracy, max(0.0, accuracy - Z_95 * error), min(1.0, accuracy + Z_95 * error), int(test.sum())
    )


# --- The audit ----------------------------------------------------------------------------------


@dataclass
class CueAudit:
    records: str
    split: str | None
    num_records: int
    num_images: int
    chance: float  # 1/9: balanced accuracy of any prediction that ignores the statistics
    raw: Score  # every statistic
    paired: Score  # every statistic, minus the same image's mean
    isotropic_raw: Score  # the isotropic statistics only
    isotropic_paired: Score
    per_feature: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> raw / paired accuracy
    feature_names: list[str] = field(default_factory=list)
    isotropic: list[bool] = field(default_factory=list)
    angles: list[int] = field(default_factory=list)
    by_angle: dict[str, list[float]] = field(default_factory=dict)  # name -> mean per angle (raw)
    paired_by_angle: dict[str, list[float]] = field(default_factory=dict)  # name -> mean per angle (paired)
    paired_sem_by_angle: dict[str, list[float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the manifest's config (rendering options)

    def excess_points(self, isotropic_only: bool = False) -> float:
        """The larger of the raw and paired accuracies above chance, in percentage points."""
        scores = (self.isotropic_raw, self.isotropic_paired) if isotropic_only else (self.raw, self.paired)
        return 100 * (max(score.accuracy for score in scores) - self.chance)

    def table(self) -> str:
        def score(item: Score) -> str:
            return f"{item.accuracy:6.1%} [{item.ci_low:.1%}, {item.ci_high:.1%}]"

        rendering = ", ".join(
            f"{name} {self.config[name]}"
            for name in ("rendering", "resampling", "crop_scale")
            if name in self.config
        )
        title = f"cue audit of {self.records}" + (f" [{self.split}]" if self.split else "")
        lines = [
            title + (f" ({rendering})" if rendering else ""),
            f"  {self.num_records:,} records of {self.num_images:,} images; angle mod 90 in {NUM_BINS} bins; "
            f"{self.raw.num_test:,} test records (images split by hash); balanced accuracy, 95% interval",
            f"  chance                                  {self.chance:6.1%}",
            f"  every statistic, raw                    {score(self.raw)}",
            f"  every statistic, paired                 {score(self.paired)}  (minus the image's mean)",
            f"  isotropic statistics, raw               {score(self.isotropic_raw)}",
            f"  isotropic statistics, paired            {score(self.isotropic_paired)}",
            f"  excess over chance: every {self.excess_points():+.1f} points, "
            f"isotropic {self.excess_points(True):+.1f} points",
            "  single statistic (* isotropic)          raw / paired",
        ]
        for (name, item), isotropic in zip(self.per_feature.items(), self.isotropic, strict=True):
            lines.append(
                f"    {name + (' *' if isotropic else ''):<37} {item['raw']:.1%} / {item['paired']:.1%}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def audit(
    records: str,
    split: str | None = None,
    max_records: int = DEFAULT_MAX_RECORDS,
    angles_per_image: int = DEFAULT_ANGLES_PER_IMAGE,
) -> CueAudit:
    """Audit a records directory (see the module docstring); `split` None takes every split."""
    sample = sample_statistics(records, split, max_records, angles_per_image)
    return audit_sample(sample, records=records, split=split, config=schemas.load_manifest(records).config)


def audit_sample(
    sample: Sample, records: str = "", split: str | None = None, config: dict | None = None
) -> CueAudit:
    """The audit of already computed statistics (tests feed synthetic ones)."""
    bins = angle_bins(sample.angles)
    unique_ids = sorted(set(sample.image_ids))
    test_ids = {image_id for image_id in unique_ids if stable_fraction(image_id, SPLIT_SALT) < TEST_SHARE}
    is_test = np.array([image_id in test_ids for image_id in sample.image_ids])
    centered = paired(sample.features, sample.image_ids, sample.log_scale)
    isotropic = [column for column, flag in enumerate(sample.isotropic) if flag]
    per_feature = {}
    for column, name in enumerate(sample.feature_names):
        per_feature[name] = {
            "raw": classify(sample.features[:, [column]], bins, is_test).accuracy,
            "paired": classify(centered[:, [column]], bins, is_test).accuracy,
        }
    angles = sorted({int(angle) for angle in sample.angles})
    by_angle, paired_by_angle, paired_sem = {}, {}, {}
    for column, name in enumerate(sample.feature_names):
        by_angle[name], paired_by_angle[name], paired_sem[name] = [], [], []
        for angle in angles:
            selected = sample.angles == angle
            by_angle[name].append(float(sample.features[selected, column].mean()))
            values = centered[selected, column]
            paired_by_angle[name].append(float(values.mean()))
            paired_sem[name].append(float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0)
    return CueAudit(
        records=str(records),
        split=split,
        num_records=len(sample.angles),
        num_images=len(unique_ids),
        chance=1.0 / NUM_BINS,
        raw=classify(sample.features, bins, is_test),
        paired=classify(centered, bins, is_test),
        isotropic_raw=classify(sample.features[:, isotropic], bins, is_test),
        isotropic_paired=classify(centered[:, isotropic], bins, is_test),
        per_feature=per_feature,
        feature_names=list(sample.feature_names),
        isotropic=list(sample.isotropic),
        angles=angles,
        by_angle=by_angle,
        paired_by_angle=paired_by_angle,
        paired_sem_by_angle=paired_sem,
        config=dict(config or {}),
    )


def plot(result: CueAudit, path: str) -> str:
    """Each statistic by angle (paired: minus the image's mean, with +-2 standard errors); right angles
    marked. A flat line is what shards without a rendering cue give."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result.feature_names
    columns = 3
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 2.6 * rows), squeeze=False)
    angles = np.array(result.angles)
    for axis, name in zip(axes.ravel(), names, strict=False):
        means = np.array(result.paired_by_angle[name])
        sems = np.array(result.paired_sem_by_angle[name])
        axis.fill_between(angles, means - 2 * sems, means + 2 * sems, alpha=0.3, linewidth=0)
        axis.plot(angles, means, linewidth=0.8)
        for right in range(0, 360, 90):
            axis.axvline(right, color="tab:red", alpha=0.3, linewidth=0.8)
        item = result.per_feature[name]
        axis.set_title(f"{name}: {item['raw']:.1%} / {item['paired']:.1%} (raw / paired)", fontsize=9)
        axis.set_xlim(0, 359)
        axis.tick_params(labelsize=7)
    for axis in axes.ravel()[len(names) :]:
        axis.axis("off")
    figure.suptitle(
        f"{os.path.basename(os.path.normpath(result.records))}: statistic by angle (minus each image's mean); "
        f"balanced accuracy vs chance {result.chance:.1%}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
