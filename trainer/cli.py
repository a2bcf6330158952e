"""`rotnet-train`: train a rotation model on the records written by rotnet-pipeline.

    rotnet-train --records data/mnist-records --output runs/mnist                  # RotNet's MNIST CNN
    rotnet-train --records gs://bucket/street-view --output runs/sv --model resnet50 --batch-size 64
    rotnet-train --records data/mnist-records --output runs/four --angles 0,90,180,270   # 4-way task

Expected result: runs/mnist/ holds model.keras, saved_model/, train_config.json, metrics.json and
training_curves.png; the last line printed is the best validation angle error. See docs/trainer.md.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from pipeline import interrupts
from schemas import ManifestError, angles, gcs, paths
from schemas.angles import EXAMPLES as ANGLE_EXAMPLES
from trainer import backends
from trainer.backends import BACKENDS
from trainer.config import (
    HEADS,
    JIT_COMPILES,
    KEEP_MODELS,
    LR_SCHEDULES,
    MAX_DROPOUT,
    MAX_WIDTH,
    MIN_VALIDATION_RECORDS,
    MODELS,
    POOLINGS,
    PRECISIONS,
    TrainConfig,
    TrainingError,
    check,
)

# What an interrupted run keeps: its backups (SIGTERM during training writes one at once).
RESUME = "the last backup is kept; rerun the same command to resume from it"

# Every option's default is TrainConfig's: spelled once, there.
DEFAULT = {field.name: field.default for field in dataclasses.fields(TrainConfig)}


def _removed(value: object, option: str) -> None:
    """An option of older rotnet versions: a clear usage error instead of click's 'no such option'."""
    if value is not None:
        raise click.BadParameter(
            "is gone: since schema_version 2 the pipeline writes every shard fully mixed, so the trainer "
            "reads each shard in order from a random start and steps over nothing; drop the option",
            param_hint=option,
        )


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of every Keras .h5 weights file


def weights_file_problem(path: str) -> str | None:
    """Why a local --weights file is not a Keras HDF5 weights file (a FIFO, a device, /etc/passwd), or
    None. Only its first 8 bytes are read, from a regular file."""
    from pipeline.inputs import InputFileError, check_regular_file

    try:
        check_regular_file(path)
        with open(path, "rb") as handle:
            head = handle.read(len(HDF5_SIGNATURE))
    except (InputFileError, OSError) as error:
        return f"is not read: {error}"
    if head != HDF5_SIGNATURE:
        return "is not an HDF5 weights file (.h5, as Keras saves them)"
    return None


@click.command(
    cls=interrupts.Command,
    interrupted=RESUME,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
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
    default=DEFAULT["model"],
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
    default=DEFAULT["head"],
    show_default=True,
    help="classification: softmax over the angles (RotNet); circular-gaussian: soft labels of width "
    "--sigma; regression: (cos, sin) of the angle.",
)
@click.option(
    "--sigma",
    "sigma_degrees",
    type=float,
    default=DEFAULT["sigma_degrees"],
    show_default=True,
    help="Circular-gaussian head: standard deviation of the soft labels, degrees.",
)
@click.option(
    "--width",
    type=float,
    default=DEFAULT["width"],
    show_default=True,
    help=f"mnist-cnn-bn only: multiply every layer's filters and units by this (1.5: 48-48 / 96-96 / 192 "
    f"filters, dense 384; compute grows about as its square), above 0 and at most {MAX_WIDTH:g}.",
)
@click.option(
    "--dropout",
    type=float,
    default=None,
    help=f"mnist-cnn and mnist-cnn-bn only: the rate of both dropout layers, 0 to {MAX_DROPOUT:g}. "
    "Default: the model's own (mnist-cnn 0.25 as RotNet, mnist-cnn-bn 0.15).",
)
@click.option(
    "--pool",
    type=click.Choice(POOLINGS),
    default=DEFAULT["pool"],
    show_default=True,
    help="mnist-cnn and mnist-cnn-bn only: how the pooling layers halve the image. max: 2x2 max pooling "
    "(RotNet's); blur: the 2x2 max at stride 1, then a fixed binomial blur at stride 2 (anti-aliased "
    "pooling, Zhang 2019: features that change less with how an image was resampled).",
)
@click.option(
    "--angles",
    default=None,
    callback=angles.click_callback,
    help=f"Train on these angles only (degrees), labels remapped: {ANGLE_EXAMPLES}, the same syntax as "
    "rotnet-pipeline --angles (e.g. 0,90,180,270 for a 4-way task). Default: every angle in the records.",
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
    default=DEFAULT["augment"],
    show_default=True,
    help="Randomly blur or sharpen, add noise and (RGB) re-encode as JPEG the training images, the same "
    "way at every angle, so the model cannot lean on one resampling's look (trainer/data.py).",
)
@click.option(
    "--warp/--no-warp",
    default=DEFAULT["warp"],
    show_default=True,
    help="Resample half the training images through a small random elastic field (its rotation "
    "removed, so the angle stays true) with a random kernel: nearest, bilinear or bicubic. New "
    "handwriting and other rotation code's looks at every angle (trainer/augment.py).",
)
@click.option(
    "--epochs", type=int, default=DEFAULT["epochs"], show_default=True, help="Maximum number of epochs."
)
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
    f"validation image, at least {MIN_VALIDATION_RECORDS:,} records (or the whole split if smaller).",
)
@click.option(
    "--batch-size",
    type=int,
    default=DEFAULT["batch_size"],
    show_default=True,
    help="Images per batch per replica (the global batch is this times the number of GPUs).",
)
@click.option(
    "--lr",
    "learning_rate",
    type=float,
    default=DEFAULT["learning_rate"],
    show_default=True,
    help="Adam learning rate.",
)
@click.option(
    "--weight-decay",
    type=float,
    default=DEFAULT["weight_decay"],
    show_default=True,
    help="Decoupled weight decay (AdamW): each step shrinks every kernel by lr times this fraction of "
    "itself (batch-norm scales and biases are not decayed). 0: plain Adam.",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(LR_SCHEDULES),
    default=DEFAULT["lr_schedule"],
    show_default=True,
    help="plateau: halve the rate when validation angle error stalls; cosine: cosine decay to 1%.",
)
@click.option(
    "--reduce-lr-patience",
    type=int,
    default=DEFAULT["reduce_lr_patience"],
    show_default=True,
    help="Epochs without improvement before the plateau schedule halves the learning rate.",
)
@click.option(
    "--early-stopping-patience",
    type=int,
    default=DEFAULT["early_stopping_patience"],
    show_default=True,
    help="Epochs without improvement of the validation angle error before training stops.",
)
@click.option(
    "--keep-model",
    type=click.Choice(KEEP_MODELS),
    default=DEFAULT["keep_model"],
    show_default=True,
    help="Which epoch's weights become model.keras: best = the lowest validation angle error (a choice "
    "made on the validation split, so scores on it are a little flattered); last = the final epoch's, "
    "chosen on nothing (use it when you report on the validation split).",
)
@click.option(
    "--jit-compile",
    type=click.Choice(JIT_COMPILES),
    default=DEFAULT["jit_compile"],
    show_default=True,
    help="XLA-compile the training step. auto: Keras's choice (on with a GPU, off on a CPU-only "
    "machine); on: also on a CPU (there TensorFlow's own oneDNN kernels are faster: the MNIST recipe's "
    "step ran at 0.37x under XLA on 2 cores, rotnet-bench train_step); off: never.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=DEFAULT["precision"],
    show_default=True,
    help="auto: mixed_float16 on a GPU, float32 on CPU. The output layer always computes in float32.",
)
@click.option(
    "--shuffle-buffer",
    type=int,
    default=DEFAULT["shuffle_buffer"],
    show_default=True,
    help="Records in the shuffle buffer (mixes angles and images from the interleaved shards).",
)
@click.option(
    "--cycle-length",
    type=int,
    default=DEFAULT["cycle_length"],
    show_default=True,
    help="Shards read in parallel (interleaved).",
)
@click.option(
    "--seed",
    type=int,
    default=DEFAULT["seed"],
    show_default=True,
    help="Seed of the file order and shuffling.",
)
@click.option(
    "--deterministic",
    is_flag=True,
    default=DEFAULT["deterministic"],
    help="Make the input stream reproducible: the same --seed and records give the same batches in the "
    "same order (slower: the interleave and the parallel maps keep their order). The jax/torch loader "
    "is always reproducible.",
)
@click.option(
    "--stream-sweeps",
    hidden=True,
    expose_value=False,
    help="Removed in rotnet 0.2 (shards are fully mixed): refused with an explanation.",
    callback=lambda ctx, param, value: _removed(value, "--stream-sweeps"),
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
    "--tensorboard/--no-tensorboard",
    default=DEFAULT["tensorboard"],
    show_default=True,
    help="Write TensorBoard logs.",
)
@click.option(
    "--cluster-timeout",
    type=float,
    default=DEFAULT["cluster_timeout"],
    show_default=True,
    help="Multi-worker training (TF_CONFIG): seconds to wait for every other worker to start before "
    "stopping with an error naming the missing ones (SIGTERM also stops the wait).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Train a new run into an --output that holds a finished run; its model.keras is replaced only "
    "once the new best model exists. Without it a finished run is refused.",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Keras backend: tensorflow (tf.data input, several GPUs, multi-worker), jax or torch (the "
    "TF-free loader, one device). Default: $KERAS_BACKEND, else tensorflow. Multi-worker training "
    "(TF_CONFIG) runs on TensorFlow only.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="jax/torch: processes decoding the records (the TF-free loader). Default: every core.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own start-up and log messages.")
def main(verbose: bool, overwrite: bool, backend: str | None, **options: object) -> None:
    """Train a model to predict the rotation (0-359 degrees) of the images in --records.

    Streams the shards (shuffled, interleaved, all rotations: tf.data on TensorFlow, the TF-free loader
    on JAX and torch), keeps the model with the best validation angle error (or the last: --keep-model),
    and exports model.keras
    and a SavedModel to --output.
    """
    try:
        backend = backends.requested(backend)
    except backends.BackendError as error:
        raise click.UsageError(str(error)) from None
    if problem := backends.multi_worker_problem(backend, os.environ.get("TF_CONFIG")):
        raise click.UsageError(problem)
    if options["angles"] is not None:
        options["angles"] = list(options["angles"])  # type: ignore[call-overload]
    config = TrainConfig(**options)  # type: ignore[arg-type]
    if config.weights not in (None, "imagenet", "none") and not paths.exists(config.weights):
        raise click.BadParameter(f"weights file {config.weights} does not exist", param_hint="--weights")
    if config.weights not in (None, "imagenet", "none") and not paths.is_remote(config.weights):
        problem = weights_file_problem(config.weights)
        if problem:
            raise click.BadParameter(f"{config.weights} {problem}", param_hint="--weights")
    problems = check(config)
    if problems:
        raise click.UsageError("; ".join(problems))
    if not paths.is_remote(config.records) and not paths.exists(config.records):
        raise click.BadParameter(f"{config.records} does not exist", param_hint="--records")
    from trainer.quiet import import_tensorflow

    with gcs.failures_in_one_line([config.records], click.ClickException):  # seconds, not minutes
        if os.environ.get("TF_CONFIG") and not verbose:  # a lost peer: our one line, not TF's ERROR lines
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            backends.select(backend)  # before Keras is imported: it reads KERAS_BACKEND once
        except backends.BackendError as error:
            raise click.UsageError(str(error)) from None
        if backend == backends.TENSORFLOW:
            import_tensorflow(verbose)  # after the cheap checks; its start-up lines only with --verbose
        from trainer import distributed, train
        from trainer.callbacks import TrainingInterruptedError
        from trainer.distributed import PeerWaitInterruptedError
        from trainer.write_errors import OutputWriteError

        try:
            train.run(config, echo=lambda line: click.echo(line, err=True), overwrite=overwrite)
        except ManifestError as error:
            raise click.BadParameter(str(error), param_hint="--records") from None
        except OutputWriteError as error:
            if not error.hdf5_left_open:
                raise click.ClickException(str(error)) from None
            click.echo(f"Error: {error}", err=True)  # and exit now: HDF5's exit handlers would crash
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        except PeerWaitInterruptedError as error:  # SIGTERM while waiting for the other workers
            interrupts.exit_interrupted(interrupts.TerminatedError(), str(error))
        except TrainingError as error:
            raise click.ClickException(str(error)) from None
        except TrainingInterruptedError as error:  # SIGTERM during fit: backed up at once
            interrupts.exit_interrupted(interrupts.TerminatedError(), str(error))
        except Exception as error:  # with TF_CONFIG: a peer died while variables were made or saved
            if not os.environ.get("TF_CONFIG") or not distributed.is_peer_failure(error):
                raise
            raise click.ClickException(distributed.peer_failure_message(error)) from None
        except KeyboardInterrupt as error:  # Ctrl-C; SIGTERM outside of fit (inside it: a backup first)
            interrupts.exit_interrupted(error, RESUME)


if __name__ == "__main__":
    main()
