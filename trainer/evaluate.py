"""Evaluate a trained model on every record of a split: how far off are the predicted angles?

    rotnet-evaluate --model runs/mnist --records data/mnist-records --split validation --tta 4

Reports the mean (RotNet's angle_error), median and 95th percentile of the absolute circular error in
degrees, the share of records within 2/5/10 degrees, the error per true angle, and the 180-degree
flips - predictions about upside down (error >= 170 degrees), the heavy tail the literature reports
(for MNIST also per digit: 6 and 9 are each other's flips). Writes evaluation.json, a per-angle plot
and an error histogram to --output. The summary statistics are pure NumPy (`summarize`).

`quarter_turns=True` (rotnet-evaluate --quarter-turns) scores what rotnet-correct --quarter-turns does:
only the records at 0/90/180/270 degrees, each snapped to the quarter turn whose +-45 degree sector holds
the most probability; reported are the accuracy of the snapped turn, the 4x4 confusion of the turns,
and at a few --min-confidence thresholds the share of records kept and their accuracy
(`summarize_quarter_turns`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from schemas.angles import describe_angles
from trainer.heads import circular_difference_degrees

WITHIN_DEGREES = (2, 5, 10)
# An error this large is the model reading the image (about) upside down.
FLIP_ERROR_DEGREES = 170.0
# --quarter-turns: the --min-confidence thresholds the report shows coverage and accuracy for.
CONFIDENCE_THRESHOLDS = (0.5, 0.7, 0.9, 0.99)
RESULT_FILE = "evaluation.json"
PER_ANGLE_PLOT = "per_angle_error.png"
HISTOGRAM_PLOT = "error_histogram.png"
OUTPUT_LEDGER = ".rotnet-evaluate.json"  # in --output: the files rotnet-evaluate wrote, with SHA-256s


@dataclass
class Evaluation:
    model: str
    records: str
    split: str
    tta: int
    num_records: int
    mean_error_degrees: float
    median_error_degrees: float
    p95_error_degrees: float
    within_degrees: dict[str, float]  # "2" -> share of records with error <= 2 degrees
    flip_share: float  # share of records with error >= FLIP_ERROR_DEGREES
    per_angle: dict[str, dict[str, float]] = field(default_factory=dict)  # true angle -> mean, flips, n
    flips_by_label: dict[str, dict[str, float]] = field(default_factory=dict)  # MNIST digit -> share, n
    # --rotation-codes: trainer.robustness.RobustnessReport.to_dict() (rows per code and tta), or empty
    rotation_codes: dict[str, Any] = field(default_factory=dict)
    # --quarter-turns: summarize_quarter_turns (accuracy, 4x4 confusion, coverage by confidence), or empty
    quarter_turns: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """A small plain-text table for the terminal."""
        rows = [
            ("records", f"{self.num_records:,}"),
            ("mean error", f"{self.mean_error_degrees:.2f} deg"),
            ("median error", f"{self.median_error_degrees:.2f} deg"),
            ("p95 error", f"{self.p95_error_degrees:.2f} deg"),
            *((f"within {limit} deg", f"{share:.1%}") for limit, share in self.within_degrees.items()),
            (f"180-degree flips (error >= {FLIP_ERROR_DEGREES:.0f})", f"{self.flip_share:.2%}"),
        ]
        if self.flips_by_label:
            worst = sorted(self.flips_by_label.items(), key=lambda item: -item[1]["flip_share"])[:3]
            rows.append(
                (
                    "most flipped labels",
                    ", ".join(f"{label}: {item['flip_share']:.1%}" for label, item in worst),
                )
            )
        quarter = self.quarter_turns
        if quarter:
            rows.append(("quarter-turn accuracy", f"{quarter['accuracy']:.2%} of {quarter['num_records']:,}"))
            rows += [
                (
                    f"  confidence >= {item['min_confidence']:g}",
                    f"{item['kept_share']:.1%} kept, "
                    + (f"{item['accuracy']:.2%} right" if item["accuracy"] is not None else "none"),
                )
                for item in quarter["by_confidence"]
            ]
        width = max(len(name) for name, _ in rows)
        title = f"{self.model} on {self.records} [{self.split}], tta {self.tta}"
        lines = [title, *(f"  {name:<{width}}  {value}" for name, value in rows)]
        if quarter:
            lines.append("  quarter turns, true (rows) x predicted (columns), records:")
            lines.append("          " + "".join(f"{angle:>9}" for angle in quarter["turn_degrees"]))
            lines += [
                f"    {angle:>4}  " + "".join(f"{count:>9,}" for count in row)
                for angle, row in zip(quarter["turn_degrees"], quarter["confusion"], strict=True)
            ]
        return "\n".join(lines)


def summarize_quarter_turns(
    true_angles: np.ndarray, predicted_turns: np.ndarray, confidence: np.ndarray
) -> dict[str, Any]:
    """Accuracy of snapped quarter turns (records at multiples of 90 degrees), the 4x4 confusion
    (rows: true turn, columns: predicted) and, per CONFIDENCE_THRESHOLDS, the share of records at or
    above the threshold and their accuracy (None when no record is)."""
    true_angles = np.asarray(true_angles)
    if np.any(true_angles % 90):
        raise ValueError("quarter turns are scored on records at 0/90/180/270 degrees only")
    true_turns = (true_angles // 90).astype(np.int64) % 4
    predicted_turns = np.asarray(predicted_turns, np.int64)
    confidence = np.asarray(confidence, np.float64)
    right = true_turns == predicted_turns
    confusion = np.zeros((4, 4), np.int64)
    np.add.at(confusion, (true_turns, predicted_turns), 1)
    by_confidence = []
    for threshold in CONFIDENCE_THRESHOLDS:
        kept = confidence >= threshold
        by_confidence.append(
            {
                "min_confidence": threshold,
                "kept_share": float(kept.mean()) if kept.size else 0.0,
                "accuracy": float(right[kept].mean()) if kept.any() else None,
            }
        )
    return {
        "num_records": int(true_turns.size),
        "accuracy": float(right.mean()) if right.size else 0.0,
        "turn_degrees": [0, 90, 180, 270],
        "confusion": confusion.tolist(),
        "mean_confidence": float(confidence.mean()) if confidence.size else 0.0,
        "by_confidence": by_confidence,
    }


def summarize(
    true_angles: np.ndarray,
    predicted_angles: np.ndarray,
    labels: np.ndarray | None = None,
    **identity: Any,
) -> Evaluation:
    """The statistics of rotnet-evaluate from true and predicted angles (pure NumPy)."""
    true_angles = np.asarray(true_angles)
    errors = circular_difference_degrees(true_angles, predicted_angles)
    if errors.size == 0:
        raise ValueError("no records to evaluate")
    flips = errors >= FLIP_ERROR_DEGREES
    per_angle = {}
    for angle in np.unique(true_angles):
        selected = true_angles == angle
        per_angle[str(int(angle))] = {
            "mean_error_degrees": float(errors[selected].mean()),
            "flip_share": float(flips[selected].mean()),
            "num_records": int(selected.sum()),
        }
    flips_by_label = {}
    if labels is not None:
        labels = np.asarray(labels)
        for label in np.unique(labels[labels >= 0]):
            selected = labels == label
            flips_by_label[str(int(label))] = {
                "flip_share": float(flips[selected].mean()),
                "mean_error_degrees": float(errors[selected].mean()),
                "num_records": int(selected.sum()),
            }
    return Evaluation(
        num_records=int(errors.size),
        mean_error_degrees=float(errors.mean()),
        median_error_degrees=float(np.median(errors)),
        p95_error_degrees=float(np.percentile(errors, 95)),
        within_degrees={str(limit): float(np.mean(errors <= limit)) for limit in WITHIN_DEGREES},
        flip_share=float(flips.mean()),
        per_angle=per_angle,
        flips_by_label=flips_by_label,
        **identity,
    )


class EvaluationError(Exception):
    """A problem the user can fix (records that do not fit the model, damaged shards); one line."""


MAX_MODEL_FILE_BYTES = 4 * 2**30  # a model.keras or train_config.json larger than this is refused


def load_predictor(model: str, predictor_class: Any) -> Any:
    """`predictor_class.load(model)` after checking that the files it opens are regular files under
    MAX_MODEL_FILE_BYTES (a FIFO would block, a device never end); a file Keras or TensorFlow cannot
    load is one EvaluationError naming it, not a traceback."""
    from pipeline.inputs import InputFileError, check_regular_file

    candidates = [model] if not os.path.isdir(model) else []
    if os.path.isdir(model):
        candidates = [os.path.join(model, name) for name in ("model.keras", "train_config.json")]
    if model.endswith(".keras"):
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(model)), "train_config.json"))
    for path in candidates:
        if not os.path.lexists(path):
            continue
        try:
            status = check_regular_file(path)
        except InputFileError as error:
            raise EvaluationError(f"{path} is not read: {error}") from None
        if status.st_size > MAX_MODEL_FILE_BYTES:
            raise EvaluationError(
                f"{path} is {status.st_size:,} bytes, over {MAX_MODEL_FILE_BYTES:,}: not a model"
            )
    try:
        return predictor_class.load(model)
    except FileNotFoundError:
        raise
    except Exception as error:  # Keras, h5py, zipfile, json and TensorFlow each raise their own
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise EvaluationError(
            f"cannot load the model {model} ({type(error).__name__}: {reason}): it is damaged or not a "
            "rotnet-train output; retrain it or give the run's saved_model/ directory"
        ) from None


def evaluate(
    model: str,
    records: str,
    split: str = "validation",
    tta: int = 1,
    batch_size: int = 256,
    max_records: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    angles: Sequence[int] | None = None,
    quarter_turns: bool = False,
) -> tuple[Evaluation, np.ndarray]:
    """Predict every record of `split` whose angle the model knows (and is in `angles`, degrees, when
    given); returns the Evaluation and the absolute errors in record order. `max_records` stops after
    that many (in shard order); `on_total` hears the number of records to expect, `progress` each
    batch's count. `quarter_turns` scores only the records at multiples of 90 degrees and adds the
    snapped turns' accuracy and confusion (Evaluation.quarter_turns)."""
    import schemas

    info = schemas.load_manifest(records)
    if split not in info.splits:
        raise EvaluationError(f"split {split!r} is not in {records}; it has {', '.join(sorted(info.splits))}")
    predictor, config = _predictor_for_records(model, records, info, split)
    wanted = _wanted_angles(config.bin_angles, info.angles_degrees, angles)
    if quarter_turns:
        if angles is not None and any(angle % 90 for angle in angles):
            raise EvaluationError(
                "--quarter-turns scores records at 0/90/180/270 degrees: give --angles among them"
            )
        wanted[np.arange(len(wanted)) % 90 != 0] = False
        if not wanted.any():
            raise EvaluationError(
                f"--quarter-turns scores records at 0/90/180/270 degrees, and {records} with this model has "
                "none; rerun the pipeline with those angles (--angles 0,90,180,270)"
            )
    total = info.splits[split].num_images * int(wanted.sum())
    if on_total:
        on_total(total if max_records is None else min(total, max_records))
    true_angles, predicted, labels, turns, turn_confidence = _predict_split(
        predictor, config, info.shard_paths(records, split), wanted, batch_size, tta, max_records, progress
    )
    if not len(true_angles):
        raise EvaluationError(f"split {split!r} of {records} holds no records with the model's angles")
    result = summarize(
        true_angles, predicted, labels, model=str(model), records=str(records), split=split, tta=tta
    )
    if quarter_turns:
        result.quarter_turns = summarize_quarter_turns(true_angles, turns, turn_confidence)
    return result, circular_difference_degrees(true_angles, predicted)


def _predictor_for_records(model: str, records: str, info, split: str) -> tuple[Any, Any]:
    """The model's Predictor and its TrainConfig pointed at these records, after checking that their
    images fit the model and the split's shards are whole (EvaluationError saying what to do)."""
    from schemas import verify
    from trainer.config import TrainConfig
    from trainer.predict import Predictor

    predictor = load_predictor(model, Predictor)
    config = TrainConfig.from_dict(predictor.config)
    image = info.image
    if [image.height, image.width] != list(predictor.image_size) or image.channels != predictor.channels:
        raise EvaluationError(
            f"records hold {image.height}x{image.width}x{image.channels} images but the model "
            f"expects {predictor.image_size[0]}x{predictor.image_size[1]}x{predictor.channels}"
        )
    config.records, config.image_format, config.compression = records, image.format, info.compression
    config.record_angles = sorted(info.angles_degrees)
    problems = verify.check_shards(info, records, [split])
    if problems:
        raise EvaluationError(verify.damaged_shard_message(problems, "re-run the pipeline"))
    return predictor, config


def _wanted_angles(bin_angles: Sequence[int], record_angles: Sequence[int], angles: Sequence[int] | None):
    """(360,) bool: the angles to score, those both in the records and the model's bins (and in
    `angles` when given; EvaluationError naming any that are not)."""
    import schemas

    known_angles = set(bin_angles) & set(record_angles)
    if angles is not None:
        unknown = sorted(set(angles) - known_angles)
        if unknown:
            raise EvaluationError(
                f"--angles {describe_angles(unknown)} are not both in the records and in the model's bins "
                f"(both hold {describe_angles(sorted(known_angles))})"
            )
        known_angles = set(angles)
    wanted = np.zeros(schemas.NUM_ANGLES, bool)
    wanted[sorted(known_angles)] = True
    return wanted


def _predict_split(predictor, config, paths, wanted, batch_size, tta, max_records, progress):
    """(true angles, predicted angles, labels, quarter turns, their confidence) of the records of `paths`
    whose angle is `wanted`, in shard order, at most `max_records`; `progress` hears each batch's count."""
    import tensorflow as tf

    from trainer import data

    true_parts, predicted_parts, label_parts = (
        [np.zeros(0, np.int32)],
        [np.zeros(0, np.int64)],
        [np.zeros(0, np.int32)],
    )
    turn_parts, turn_confidence_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    seen = 0
    try:
        for images, true, labels in data.evaluation_dataset(paths, config, batch_size):
            if max_records is not None and seen >= max_records:
                break
            selected = wanted[true.numpy()]
            keep = len(selected) if max_records is None else max_records - seen
            images, true, labels = (part.numpy()[selected][:keep] for part in (images, true, labels))
            if not len(true):
                continue
            true_parts.append(true)
            prediction = predictor.predict(images, batch_size=batch_size, tta=tta)
            predicted_parts.append(prediction.angles_degrees)
            turn_parts.append(prediction.quarter_turns)
            turn_confidence_parts.append(prediction.quarter_confidence)
            label_parts.append(labels)
            seen += len(true)
            if progress:
                progress(len(true))
    except tf.errors.DataLossError as error:
        raise EvaluationError(data.damaged_record_message(paths, error, "re-run the pipeline")) from None
    parts = (true_parts, predicted_parts, label_parts, turn_parts, turn_confidence_parts)
    return tuple(np.concatenate(part) for part in parts)


def evaluate_rotation_codes(
    model: str,
    records: str,
    split: str,
    codes: Sequence[str],
    tta: Sequence[int] = (1,),
    seed: int = 0,
    angles_per_image: int = 4,
    source_dir: str | None = None,
    batch_size: int = 256,
    predictor: Any = None,
    served: bool = True,
) -> Any:
    """trainer.robustness.evaluate_codes on the original images of `split` (trainer.robustness.
    load_source_images), with the records' crop, crop scale, resampling and angles (their manifest);
    returns the RobustnessReport. Raises EvaluationError when the source images cannot be found."""
    import schemas
    from trainer import robustness
    from trainer.predict import Predictor

    info = schemas.load_manifest(records)
    config = info.config or {}
    try:
        images = robustness.load_source_images(info, split, source_dir)
    except robustness.SourceImagesError as error:
        raise EvaluationError(str(error)) from None
    predictor = predictor or Predictor.load(model)
    crop = config.get("crop_largest_rect")
    if crop is None:  # the dataset's own default, as the pipeline resolved it
        from pipeline import datasets

        crop = datasets.get(info.dataset).DEFAULTS["crop_largest_rect"]
    return robustness.evaluate_codes(
        predictor,
        images,
        dataset=info.dataset,
        split=split,
        crop_largest_rect=bool(crop),
        codes=codes,
        seed=seed,
        angles_per_image=angles_per_image,
        tta=tta,
        resampling=config.get("resampling", "fixed"),
        crop_scale=config.get("crop_scale", "largest"),
        angles_degrees=info.angles_degrees,
        batch_size=batch_size,
        rendering=config.get("rendering", "angle-independent"),
        served=served,
    )


def check_output(output: str) -> None:
    """Refuse (EvaluationError, one line) an --output that `open_output` would refuse, creating nothing:
    called before the evaluation, so that a refused or failed run leaves no directory behind (the
    directory is made only when the results are written)."""
    if os.path.isdir(output):
        open_output(output).close()  # it exists: open_output creates nothing in it
        return
    if os.path.lexists(output):
        raise EvaluationError(f"{output} is not a directory: choose another --output")
    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise EvaluationError(
            f"--output {output} lies below {parent}, which is not a directory: choose another"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EvaluationError(
            f"cannot create --output {output} in {parent} (permission denied): choose another"
        )


def open_output(output: str):
    """--output as a schemas.output_rules.OutputTree, or EvaluationError (one line): a directory
    rotnet-evaluate created or that holds its ledger; none of its three names a user's file, a file
    changed since, a symlink or a directory. Creates the directory: called to write the results
    (`check_output` checks the same before the evaluation, creating nothing)."""
    from schemas.output_rules import OutputRefusedError, OutputTree

    try:
        names = set(os.listdir(output)) if os.path.isdir(output) else set()
        if names and OUTPUT_LEDGER not in names:
            raise EvaluationError(
                f"{output} holds files rotnet-evaluate did not write ({OUTPUT_LEDGER} is missing): they are "
                "left as they are; choose an empty or new --output"
            )
        tree = OutputTree(output, "rotnet-evaluate", OUTPUT_LEDGER, option="--output")
        try:
            for name in (RESULT_FILE, PER_ANGLE_PLOT, HISTOGRAM_PLOT):
                tree.check_replaceable(name)
        except BaseException:
            tree.close()
            raise
    except OSError as error:
        raise EvaluationError(f"cannot use {output} as --output ({error.strerror}): choose another") from None
    except OutputRefusedError as error:
        raise EvaluationError(str(error)) from None
    return tree


def _png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_outputs(result: Evaluation, errors: np.ndarray, output: str) -> list[str]:
    """evaluation.json, the per-angle plot and the error histogram (each written aside and renamed, never
    through a link or over a file rotnet-evaluate did not write: open_output); returns their paths."""
    from schemas.output_rules import OutputRefusedError

    try:
        with open_output(output) as tree:
            written = _write_outputs(tree, result, errors)
            tree.save_ledger()
    except OutputRefusedError as error:
        raise EvaluationError(str(error)) from None
    return [os.path.join(output, name) for name in written]


def _write_outputs(tree, result: Evaluation, errors: np.ndarray) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = json.dumps(asdict(result), indent=2) + "\n"
    tree.write(RESULT_FILE, text.encode("utf-8"))

    angles = np.array([int(angle) for angle in result.per_angle])
    means = np.array([item["mean_error_degrees"] for item in result.per_angle.values()])
    flips = np.array([item["flip_share"] for item in result.per_angle.values()])
    figure, axis = plt.subplots(figsize=(9, 4))
    axis.plot(angles, means, marker="." if len(angles) > 36 else "o", label="mean error")
    axis.set_xlabel("true rotation (degrees, counter-clockwise)")
    axis.set_ylabel("mean absolute error (degrees)")
    axis.grid(alpha=0.3)
    flip_axis = axis.twinx()
    flip_axis.plot(angles, 100 * flips, color="tab:red", alpha=0.6, label="180-degree flips")
    flip_axis.set_ylabel("flips (% of records)", color="tab:red")
    axis.set_title(
        f"{os.path.basename(os.path.normpath(result.model))} [{result.split}, tta {result.tta}]: "
        f"mean {result.mean_error_degrees:.2f} deg over {result.num_records:,} records"
    )
    figure.tight_layout()
    tree.write(PER_ANGLE_PLOT, _png(figure))
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.hist(errors, bins=np.arange(0, 181, 2), log=True)
    axis.set_xlabel("absolute error (degrees)")
    axis.set_ylabel("records (log scale)")
    axis.set_title("error distribution: the tail near 180 degrees is upside-down readings")
    figure.tight_layout()
    tree.write(HISTOGRAM_PLOT, _png(figure))
    plt.close(figure)
    return [RESULT_FILE, PER_ANGLE_PLOT, HISTOGRAM_PLOT]
