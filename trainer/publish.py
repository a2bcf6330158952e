"""What a finished rotnet-train run publishes in --output: the best epoch's model as a SavedModel, its
metrics (metrics.json) and training curves (training_curves.png), and last the model itself, renamed
from aside over model.keras, so that an earlier model survives anything that fails before.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import keras

from schemas import output_rules

# Loaded with the trainer, not when a run ends: a package upgraded during a long run must not meet the
# publish step as a mix of old modules (loaded at the start) and new ones (loaded at the end).
from trainer import backends, predict, run_dir  # noqa: F401 (predict: the SavedModel export)
from trainer.config import MODEL_FILE, SAVED_MODEL_DIR, TrainConfig


def publish_best(
    model: keras.Model,
    config: TrainConfig,
    monitor: str,
    initial_epoch: int,
    watch: Any,
    skipped: list[str],
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """The best (--keep-model last: the final) epoch's model (ModelCheckpoint's, aside) exported as a SavedModel, with the run's curves;
    returns its metrics. `watch`: the run's trainer.callbacks.RunCallbacks. model.keras itself is renamed
    into place by `model_into_place` once all is written."""
    if os.path.exists(watch.model_path):
        model = keras.saving.load_model(watch.model_path, compile=False)
    else:
        model.save(watch.model_path)
    saved_model = os.path.join(config.output, SAVED_MODEL_DIR)
    backends.export_saved_model(model, watch.model_path, json.loads(config.to_json()), saved_model, echo)
    history = run_dir.read_history(watch.history_path)
    metrics = summarize(history, monitor, initial_epoch, watch.throughput.images_per_second(), skipped)
    # The epoch whose weights model.keras holds: the best one, or with --keep-model last the final one.
    metrics["keep_model"] = config.keep_model
    last_epoch = int(history[-1]["epoch"]) + 1 if history else None  # 1-based, as Keras prints epochs
    metrics["kept_epoch"] = metrics["best_epoch"] if config.keep_model == "best" else last_epoch
    plot_curves(
        history, os.path.join(config.output, run_dir.CURVES_FILE), title=f"{config.model} on {config.dataset}"
    )
    best = f"best {monitor} {metrics['best'].get(monitor, float('nan')):.2f} degrees at epoch {metrics['best_epoch']}"
    if config.keep_model == "last":
        last = metrics["final"].get(monitor, float("nan"))
        best = f"kept the last epoch ({metrics['kept_epoch']}, {monitor} {last:.2f} degrees; {best})"
    echo(f"{best}; outputs in {config.output}")
    return metrics


def model_into_place(config: TrainConfig, metrics: dict[str, Any], started: float) -> None:
    """The new best model over model.keras (the old one stays until now), then metrics.json with the
    run's wall time since `started` (time.perf_counter())."""
    aside = os.path.join(config.output, run_dir.BEST_MODEL_ASIDE)
    output_rules.move_into_place(aside, os.path.join(config.output, MODEL_FILE))
    metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
    run_dir.write_json(os.path.join(config.output, run_dir.METRICS_FILE), metrics)


def summarize(
    history: list[dict[str, Any]],
    monitor: str,
    initial_epoch: int,
    images_per_second: float | None,
    skipped: list[str],
) -> dict[str, Any]:
    """metrics.json: the best and final epochs' metrics, the history, throughput and skipped shards."""
    scored = [row for row in history if run_dir.is_number(row.get(monitor))]
    best = min(scored, key=lambda row: row[monitor]) if scored else {}
    return {
        "monitor": monitor,
        "best_epoch": int(best["epoch"]) + 1 if best else None,  # 1-based, as Keras prints epochs
        "best": best,
        "final": history[-1] if history else {},
        "epochs_run": len(history),
        "resumed_from_epoch": initial_epoch,
        "train_images_per_second": round(images_per_second, 1) if images_per_second else None,
        "skipped_shards": skipped,
        "num_skipped_shards": len(skipped),
        "history": history,
    }


def plot_curves(history: list[dict[str, Any]], path: str, title: str) -> None:
    """Loss and angle error per epoch (training and validation), as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) + 1 for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, label in ((axes[0], "loss", "loss"), (axes[1], "angle_error", "angle error (degrees)")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [row.get(prefix + metric) for row in history]
            if any(run_dir.is_number(value) for value in values):
                axis.plot(
                    epochs,
                    values,
                    style,
                    marker="o",
                    label=("validation " if prefix else "training ") + metric,
                )
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
