"""Training, top to bottom: read the manifest, fit the machine, claim --output, resume, fit, publish.

    rotnet-train --records data/mnist-records --output runs/mnist            # (trainer/cli.py)

`run` checks the records, chooses the strategy and precision (trainer/machine.py), claims and locks
--output (trainer/run_dir.py: its files, its marker, the backups a rerun resumes from) and checks the
shards; `_fit` builds the model, its datasets (trainer/data.py) and callbacks (trainer/callbacks.py),
trains, and publishes the best epoch's model with its metrics and curves (trainer/publish.py). The model
replaces an earlier one only at the very end, and only when the records were not replaced meanwhile.
A failed write in --output is one line (trainer/write_errors.py). Outputs: docs/trainer.md.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras

import schemas
from schemas import output_rules, verify
from schemas import paths as schema_paths
from schemas.manifest import manifest_path
from trainer import machine, publish, run_dir, write_errors
from trainer.callbacks import BackupOnSignal, RunCallbacks
from trainer.config import CONFIG_FILE, MODEL_FILE, TrainConfig, TrainingError

# What to do about a damaged shard, in every message that names one.
DAMAGED_SHARD_FIX = "re-run the pipeline, or pass --skip-corrupt-shards to train without the damaged shards"


@dataclass
class TrainResult:
    config: TrainConfig
    metrics: dict[str, Any]


def run(
    config: TrainConfig,
    callbacks: Sequence[Any] = (),
    echo: Callable[[str], None] = print,
    overwrite: bool = False,
) -> TrainResult:
    """Train as configured; raises TrainingError for user-fixable problems. `overwrite`: train into an
    --output that holds a finished run (its model is replaced only once the new best exists)."""
    started = time.perf_counter()
    info = schemas.load_manifest(config.records)  # ManifestError says what is wrong
    digest_at_start = manifest_digest(config.records)
    strategy = machine.resolve_for_machine(config, info)
    run_dir.claim_output(config, overwrite)
    with run_dir.locked(config.output), write_errors.in_one_line(config.output):
        initial_epoch = run_dir.prepare_resume(config, echo)
        if not initial_epoch:  # a fresh run: an earlier run's best aside must not be mistaken for ours
            aside = os.path.join(config.output, run_dir.BEST_MODEL_ASIDE)
            if os.path.lexists(aside):
                os.remove(aside)  # ours (RUN_MARKER), and never the finished model itself
        shards, skipped = usable_shards(config, info, echo)
        output_rules.write_aside(os.path.join(config.output, CONFIG_FILE), config.to_json())
        echo(
            f"training {config.model} ({config.head}, {config.num_bins} bins, {config.resolved_precision}, "
            f"{config.strategy} x{config.num_replicas}) on {config.num_train_images:,} images from "
            f"{config.records}: {config.epochs} epochs x {config.steps_per_epoch} steps x "
            f"{config.global_batch_size} images"
            + (f"; resuming at epoch {initial_epoch + 1}" if initial_epoch else "")
        )
        result = _fit(config, info, strategy, shards, skipped, initial_epoch, callbacks, echo)
        if manifest_digest(config.records) != digest_at_start:
            raise TrainingError(
                f"the records in {config.records} were replaced during training (its {schemas.MANIFEST_NAME} "
                "changed): the model is not published; rerun rotnet-train on the new records"
            )
        publish.model_into_place(config, result.metrics, started)
        return result


def usable_shards(
    config: TrainConfig, info: schemas.DatasetInfo, echo: Callable[[str], None]
) -> tuple[dict[str, list[str]], list[str]]:
    """Shard paths per split (train, validation), and the damaged shards left out (as sentences).

    Every shard's size is checked against the manifest (one stat each); a damaged shard stops the run
    with its name, unless --skip-corrupt-shards, which also CRC-checks every record of every shard.
    """
    from tqdm import tqdm

    shards, skipped = {}, []
    for split in ("train", "validation"):
        if split not in info.splits or not info.splits[split].shards:
            continue
        paths = info.shard_paths(config.records, split)
        if not config.skip_corrupt_shards:
            problems = verify.check_shards(info, config.records, [split])
            if problems:
                raise TrainingError(verify.damaged_shard_message(problems, DAMAGED_SHARD_FIX))
        else:
            with tqdm(total=len(paths), desc=f"checking {split} shards", unit="shard", leave=False) as bar:
                problems = verify.check_shards(
                    info, config.records, [split], read_records=True, on_shard=lambda _path: bar.update(1)
                )
        bad = {problem.path for problem in problems}
        for problem in problems:
            echo(f"skipping damaged shard {problem}")
            skipped.append(str(problem))
        shards[split] = [path for path in paths if path not in bad]
    if not shards.get("train"):
        raise TrainingError("no usable training shards left")
    if "validation" in shards and not shards["validation"]:  # the checkpoint would be chosen on train error
        raise TrainingError(
            "every validation shard is damaged, so the best model cannot be chosen on validation error: "
            "re-run the pipeline to repair the records"
        )
    return shards, skipped


def _fit(
    config: TrainConfig,
    info: schemas.DatasetInfo,
    strategy: Any,
    shards: dict[str, list[str]],
    skipped: list[str],
    initial_epoch: int,
    extra_callbacks: Sequence[Any],
    echo: Callable[[str], None],
) -> TrainResult:
    """Build, train and publish: the model under the strategy, its datasets, the callbacks, fit (or the
    distributed loop), then the best epoch's model exported with its metrics and curves."""
    from trainer.heads import Head

    head = Head(config.head, tuple(config.bin_angles), config.sigma_degrees)
    model = _compiled_model(config, head, strategy)
    train_data, validation_data = _datasets(config, info, strategy, head, shards)
    monitor = "val_angle_error" if validation_data is not None else "angle_error"
    watch = RunCallbacks(config, monitor, initial_epoch, echo)
    callbacks = [*watch.all, *extra_callbacks]
    _train(model, strategy, config, head, (train_data, validation_data), callbacks, shards, initial_epoch)
    if watch.non_finite.where is not None:
        raise TrainingError(
            f"the {watch.non_finite.where} became NaN or infinite; training "
            f"stopped and {MODEL_FILE} was not replaced: lower --lr and rerun with --overwrite"
        )
    metrics = publish.publish_best(model, config, monitor, initial_epoch, watch, skipped, echo)
    return TrainResult(config=config, metrics=metrics)


def _compiled_model(config: TrainConfig, head: Any, strategy: Any) -> keras.Model:
    """The configured model with Adam at --lr (AdamW under --weight-decay; cosine-decayed over every
    step, or constant for the plateau schedule's callback), the head's loss and metrics, XLA per
    --jit-compile, built in the strategy's scope."""
    from trainer.models import build_model

    with strategy.scope():
        model = build_model(config, head)
        learning_rate = config.learning_rate
        if config.lr_schedule == "cosine":
            learning_rate = keras.optimizers.schedules.CosineDecay(
                config.learning_rate,
                decay_steps=config.epochs * config.steps_per_epoch,
                alpha=config.cosine_final_fraction,
            )
        if config.weight_decay:
            optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
            # Decay the kernels only: a batch-norm scale or a bias pulled towards 0 is no simpler model.
            optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        else:
            optimizer = keras.optimizers.Adam(learning_rate)
        model.compile(
            optimizer=optimizer,
            loss=head.loss(),
            metrics=head.metrics(),
            jit_compile={"auto": "auto", "on": True, "off": False}[config.jit_compile],
        )
    return model


def _datasets(config: TrainConfig, info: schemas.DatasetInfo, strategy: Any, head: Any, shards: dict):
    """(training batches, validation batches or None): trainer.data's chains over the usable shards;
    with several workers one input pipeline per worker (trainer/distributed.py); on JAX and torch the
    TF-free loader's PyDatasets (trainer.numpy_data)."""
    from trainer import backends

    num_records = {
        path: shard.num_records
        for split in info.splits
        for shard, path in zip(
            info.splits[split].shards, info.shard_paths(config.records, split), strict=True
        )
    }
    if not backends.is_tensorflow():
        return backends.numpy_input(config, head, shards, num_records)
    from trainer import data

    train_counts = [num_records[path] for path in shards["train"]]
    if config.strategy == "multi_worker":
        from trainer import distributed

        train_data = distributed.distribute_training(strategy, config, head, shards["train"], train_counts)
    else:
        train_data = data.training_dataset(shards["train"], config, head, train_counts)
    if not (shards.get("validation") and config.validation_steps):
        return train_data, None
    return train_data, data.validation_dataset(shards["validation"], config, head, config.validation_steps)


def _train(model, strategy, config, head, datasets, callbacks, shards, initial_epoch: int) -> None:
    """model.fit (the distributed loop with several workers: model.fit fails there, keras-team/keras
    #20585), SIGTERM turned into a backup and a stop; a damaged record is one TrainingError."""
    from trainer import backends

    train_data, validation_data = datasets
    on_signal = next(callback for callback in callbacks if isinstance(callback, BackupOnSignal))
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: on_signal.signalled.set())
    try:
        if config.strategy == "multi_worker":
            from trainer import distributed

            distributed.fit(
                model, strategy, config, head, train_data, validation_data, callbacks, initial_epoch
            )
        else:
            model.fit(
                train_data,
                epochs=config.epochs,
                steps_per_epoch=config.steps_per_epoch,
                validation_data=validation_data,
                shuffle=False,  # the dataset shuffles itself
                callbacks=callbacks,
                verbose=1 if os.isatty(1) else 2,
            )
    except backends.damaged_input_errors() as error:
        paths = [path for split_paths in shards.values() for path in split_paths]
        raise TrainingError(backends.damaged_input_message(error, paths, DAMAGED_SHARD_FIX)) from None
    finally:
        backends.close_inputs(datasets)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def manifest_digest(records: str) -> str:
    """SHA-256 of the records' manifest bytes (a pipeline --overwrite during training changes it)."""
    with schema_paths.open_binary(manifest_path(records)) as handle:
        return hashlib.sha256(handle.read()).hexdigest()
