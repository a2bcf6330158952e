"""`rotnet-train`: train a rotation model on the records written by rotnet-pipeline.

    rotnet-train --records data/mnist-records --output runs/mnist                  # RotNet's MNIST CNN
    rotnet-train --records gs://bucket/street-view --output runs/sv --model resnet50 --batch-size 64
    rotnet-train --records data/mnist-records --output runs/four --angles 0,90,180,270   # 4-way task

Expected result: runs/mnist/ holds model.keras, saved_model/, train_config.json, metrics.json and
training_curves.png; the last line printed is the best validation angle error. See docs/trainer.md.
"""

from __future__ import annotations

import sys

import click

from schemas import ManifestError, paths
from trainer.config import HEADS, LR_SCHEDULES, MODELS, PRECISIONS, TrainConfig, check


def parse_angles(value: str | None) -> list[int] | None:
    """`0,90,180,270`, or `START:STOP:STEP` (Python range, e.g. `0:360:10`); None/`all` = every angle."""
    if value is None or value.strip().lower() in ("", "all"):
        return None
    try:
        if ":" in value:
            return list(range(*(int(part) for part in value.split(":"))))
        return [int(part) for part in value.split(",") if part.strip()]
    except (TypeError, ValueError):
        raise click.BadParameter(
            f"{value!r}: give comma-separated degrees (0,90,180,270) or START:STOP:STEP (0:360:10)",
            param_hint="--angles",
        ) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--records",
    required=True,
    help="Records directory written by rotnet-pipeline (local path or gs://...), holding dataset_info.json.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Local directory for the model and logs. Rerunning with the same --output resumes an interrupted run.",
)
@click.option(
    "--model",
    type=click.Choice(MODELS),
    default="mnist-cnn",
    show_default=True,
    help="mnist-cnn: RotNet's MNIST CNN; mnist-cnn-bn: batch-normalized variant; resnet50 and "
    "mobilenet-v3-small: keras.applications backbones.",
)
@click.option(
    "--weights",
    default=None,
    help="Backbone initialization for resnet50/mobilenet-v3-small: imagenet (downloads; the default), "
    "none (random), or a path to a weights file.",
)
@click.option(
    "--head",
    type=click.Choice(HEADS),
    default="classification",
    show_default=True,
    help="classification: softmax over the angles (RotNet); circular-gaussian: soft labels of width "
    "--sigma; regression: (cos, sin) of the angle.",
)
@click.option(
    "--sigma",
    "sigma_degrees",
    type=float,
    default=3.0,
    show_default=True,
    help="Circular-gaussian head: standard deviation of the soft labels, degrees.",
)
@click.option(
    "--angles",
    default=None,
    help="Train on these angles only, labels remapped (e.g. 0,90,180,270 for a 4-way task, or 0:360:10). "
    "Default: every angle in the records.",
)
@click.option(
    "--max-images",
    type=float,
    default=None,
    help="Train on about this many source images (or this fraction, if <= 1), chosen by a stable hash "
    "of the image id; the shards stay as they are.",
)
@click.option(
    "--binarize/--no-binarize",
    default=None,
    help="Binarize pixels as RotNet does for MNIST (pixel/255 >= 0.1). Default: on for MNIST records with "
    "the MNIST CNNs, off otherwise (ResNet50 always uses ImageNet preprocessing).",
)
@click.option(
    "--augment/--no-augment",
    default=False,
    show_default=True,
    help="Randomly blur or sharpen, add noise and (RGB) re-encode as JPEG the training images, the same "
    "way at every angle, so the model cannot lean on one resampling's look (trainer/data.py).",
)
@click.option("--epochs", type=int, default=50, show_default=True, help="Maximum number of epochs.")
@click.option(
    "--steps-per-epoch",
    type=int,
    default=None,
    help="Training batches per epoch. Default: one pass over the source images (training images / "
    "batch size), not over all their rotations, which would be 360 times longer.",
)
@click.option(
    "--validation-steps",
    type=int,
    default=None,
    help="Validation batches per epoch, the same records every epoch. Default: about one record per "
    "validation image, at least 2,048 records (or the whole split if smaller).",
)
@click.option(
    "--batch-size",
    type=int,
    default=128,
    show_default=True,
    help="Images per batch per replica (the global batch is this times the number of GPUs).",
)
@click.option(
    "--lr", "learning_rate", type=float, default=1e-3, show_default=True, help="Adam learning rate."
)
@click.option(
    "--lr-schedule",
    type=click.Choice(LR_SCHEDULES),
    default="plateau",
    show_default=True,
    help="plateau: halve the rate when validation angle error stalls; cosine: cosine decay to 1%.",
)
@click.option(
    "--reduce-lr-patience",
    type=int,
    default=3,
    show_default=True,
    help="Epochs without improvement before the plateau schedule halves the learning rate.",
)
@click.option(
    "--early-stopping-patience",
    type=int,
    default=10,
    show_default=True,
    help="Epochs without improvement of the validation angle error before training stops.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="auto: mixed_float16 on a GPU, float32 on CPU. The output layer always computes in float32.",
)
@click.option(
    "--shuffle-buffer",
    type=int,
    default=10_000,
    show_default=True,
    help="Records in the shuffle buffer (mixes angles and images from the interleaved shards).",
)
@click.option(
    "--cycle-length", type=int, default=16, show_default=True, help="Shards read in parallel (interleaved)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the file order and shuffling.")
@click.option(
    "--stream-sweeps",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Read every shard end to end at least this many times over the run, keeping one record in N of "
    "each pass from a random offset (a run trains on part of all the rotations, and a shard may keep an "
    "image's rotations together: in order, it would see only some images). The records stepped over "
    "are still read from storage, not decoded; 0 reads every record in order.",
)
@click.option(
    "--skip-corrupt-shards",
    is_flag=True,
    help="CRC-check every shard first and train without damaged ones (counted in metrics.json) instead "
    "of stopping with an error that names the shard.",
)
@click.option(
    "--backup-every-steps",
    type=int,
    default=None,
    help="Also back up the training state every N steps (default: at each epoch end), so a killed run "
    "loses at most N steps.",
)
@click.option(
    "--tensorboard/--no-tensorboard", default=True, show_default=True, help="Write TensorBoard logs."
)
def main(**options: object) -> None:
    """Train a model to predict the rotation (0-359 degrees) of the images in --records.

    Streams the shards with tf.data (shuffled, interleaved, all rotations), keeps the model with the
    best validation angle error, and exports model.keras and a SavedModel to --output.
    """
    options["angles"] = parse_angles(options["angles"])  # type: ignore[arg-type]
    config = TrainConfig(**options)  # type: ignore[arg-type]
    if config.weights not in (None, "imagenet", "none") and not paths.exists(config.weights):
        raise click.BadParameter(f"weights file {config.weights} does not exist", param_hint="--weights")
    problems = check(config)
    if problems:
        raise click.UsageError("; ".join(problems))
    if not paths.is_remote(config.records) and not paths.exists(config.records):
        raise click.BadParameter(f"{config.records} does not exist", param_hint="--records")

    from trainer import train  # imports TensorFlow: after the cheap checks

    try:
        train.run(config, echo=lambda line: click.echo(line, err=True))
    except ManifestError as error:
        raise click.BadParameter(str(error), param_hint="--records") from None
    except train.TrainingError as error:
        raise click.ClickException(str(error)) from None
    except train.TrainingInterruptedError as error:
        click.echo(str(error), err=True)
        sys.exit(143)


if __name__ == "__main__":
    main()
