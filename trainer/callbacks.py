"""The callbacks of a rotnet-train run (`RunCallbacks`), and those of rotnet's own among them: the backup
written aside (`Backup`), the backup on SIGTERM, the NaN stop and the throughput count.

The backup is the last callback of an epoch: an epoch is backed up only once its history row, its best
model and the learning-rate change are written (trainer/run_dir.py resumes from it).
"""

from __future__ import annotations

import errno
import importlib.util
import math
import os
import shutil
import threading
import time
from collections.abc import Callable

import keras
import numpy as np

from schemas import output_rules
from trainer import run_dir
from trainer.config import TrainConfig


class TrainingInterruptedError(Exception):
    """SIGTERM arrived: a backup was written; rerunning the same command resumes."""


class RunCallbacks:
    """The run's callbacks: backup (and on SIGTERM), the best (or last) model aside, early stopping, the CSV log,
    throughput, the NaN stop, the learning-rate plateau and TensorBoard where installed."""

    def __init__(self, config: TrainConfig, monitor: str, initial_epoch: int, echo: Callable[[str], None]):
        self.history_path = os.path.join(config.output, run_dir.HISTORY_FILE)
        self.model_path = os.path.join(config.output, run_dir.BEST_MODEL_ASIDE)
        best_so_far = [
            row[monitor]
            for row in run_dir.read_history(self.history_path)
            if run_dir.is_number(row.get(monitor))
        ]
        backup = Backup(
            os.path.join(config.output, run_dir.BACKUP_DIR), save_freq=config.backup_every_steps or "epoch"
        )
        self.throughput = Throughput(config.global_batch_size)
        self.on_signal = BackupOnSignal(backup)
        self.non_finite = StopOnNonFiniteLoss()
        self.all = [
            # --keep-model last: every epoch's model over the last, so the final one is published.
            keras.callbacks.ModelCheckpoint(
                self.model_path,
                monitor=monitor,
                mode="min",
                save_best_only=config.keep_model == "best",
                initial_value_threshold=min(best_so_far) if best_so_far and initial_epoch else None,
            ),
            keras.callbacks.EarlyStopping(
                monitor=monitor, mode="min", patience=config.early_stopping_patience
            ),
            keras.callbacks.CSVLogger(self.history_path, append=initial_epoch > 0),
            self.throughput,
            self.on_signal,
            self.non_finite,
        ]
        if config.lr_schedule == "plateau":
            self.all.append(
                keras.callbacks.ReduceLROnPlateau(
                    monitor=monitor,
                    mode="min",
                    factor=config.reduce_lr_factor,
                    patience=config.reduce_lr_patience,
                    min_lr=config.min_learning_rate,
                )
            )
        self.all += _tensorboard(config, echo)
        # The backup last: an epoch is backed up only once its history row, its best model and the
        # learning-rate change are written, so a run killed in between (a lost peer, SIGKILL) redoes the
        # epoch and logs it again instead of resuming after it without its row (run_dir.prepare_resume
        # keeps the rows of the epochs before the backup's).
        self.all.append(backup)


def _tensorboard(config: TrainConfig, echo: Callable[[str], None]) -> list[keras.callbacks.Callback]:
    """TensorBoard's callback where asked for and possible, else one line saying why not."""
    if not config.tensorboard:
        return []
    if keras.backend.backend() != "tensorflow":  # trainer.backends says why
        echo(
            f"no TensorBoard logs: rotnet-train writes them on TensorFlow only, not {keras.backend.backend()}"
        )
        return []
    if importlib.util.find_spec("tensorboard") is None:  # tf.summary needs it; TensorFlow does not pull it in
        echo("no TensorBoard logs: the tensorboard package is not installed (pip install tensorboard)")
        return []
    return [keras.callbacks.TensorBoard(os.path.join(config.output, "tensorboard"))]


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """NaN or inf loss, in training or in validation: stop at once (the caller then fails;
    TerminateOnNaN alone exits 0). A finite training loss of 1e37 can still give an infinite
    validation loss: the model's outputs have overflowed and it is as broken as with a NaN."""

    def __init__(self):
        super().__init__()
        self.where: str | None = None  # "training loss (epoch batch N)" / "validation loss (epoch N)"

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = f"training loss (epoch batch {batch + 1})"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if self.where is None and loss is not None and not math.isfinite(float(loss)):
            self.where = f"validation loss (epoch {epoch + 1})"
            self.model.stop_training = True


class Throughput(keras.callbacks.Callback):
    """Training images per second, validation excluded, first epoch (tracing) excluded if possible."""

    def __init__(self, global_batch_size: int):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.epochs: list[tuple[int, float]] = []  # (steps, seconds)

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps, self._end = time.perf_counter(), 0, None

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        self._end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self._end is not None:
            self.epochs.append((self._steps, self._end - self._start))

    def images_per_second(self) -> float | None:
        timed = self.epochs[1:] or self.epochs
        seconds = sum(duration for _, duration in timed)
        return sum(steps for steps, _ in timed) * self.global_batch_size / seconds if seconds else None


class Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that writes each backup aside and renames it into place (a kill mid-write leaves
    the previous backup whole), keeps the one before as previous.*, records the weights' SHA-256 in the
    metadata (run_dir.good_backup_epoch checks it before a resume), and, when saving every N steps, also
    saves at each epoch end."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":
            self._save_model()

    def save_now(self) -> None:
        """Back up at once (SIGTERM: BackupOnSignal)."""
        self._save_model()

    # BackupAndRestore's own save hook (Keras has no public one): every save, at epoch ends and every N
    # steps, goes through here, so overriding it is what makes each backup atomic.
    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        join = lambda name: os.path.join(self.backup_dir, name)  # noqa: E731
        _check_free_space(self.backup_dir, self._expected_bytes(join(run_dir.BACKUP_WEIGHTS)))
        # Keras wants the .weights.h5 suffix; the weights replace latest.* only once whole.
        with output_rules.aside(join(run_dir.BACKUP_WEIGHTS), suffix=".weights.h5") as temporary:
            self.model.save_weights(filepath=temporary.name, overwrite=True)
            metadata = {
                "epoch": self._current_epoch,
                "batch": self._last_batch_seen,
                "sha256": output_rules.sha256_of(temporary.name),
            }
            if os.path.exists(join(run_dir.BACKUP_WEIGHTS)) and os.path.exists(join(run_dir.BACKUP_METADATA)):
                # the last whole pair is kept
                output_rules.move_into_place(join(run_dir.BACKUP_WEIGHTS), join(run_dir.PREVIOUS_WEIGHTS))
                output_rules.move_into_place(join(run_dir.BACKUP_METADATA), join(run_dir.PREVIOUS_METADATA))
        run_dir.write_json(
            join(run_dir.BACKUP_METADATA), metadata
        )  # last: until then the pair does not check out

    def _expected_bytes(self, latest: str) -> int:
        """About the size of the next backup: the last one's, else the weights and optimizer state."""
        if os.path.isfile(latest):
            return os.path.getsize(latest)
        optimizer = getattr(self.model, "optimizer", None)
        variables = [*self.model.weights, *(getattr(optimizer, "variables", None) or [])]
        return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables)


def _check_free_space(directory: str, expected_bytes: int) -> None:
    """OSError(ENOSPC) before a write that would not fit: h5py, stopped by a full disk in the middle of
    a file, leaves HDF5 objects open that crash the interpreter at exit (SIGSEGV)."""
    needed = int(expected_bytes * 1.1) + (1 << 20)
    if shutil.disk_usage(directory).free < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), directory)


class BackupOnSignal(keras.callbacks.Callback):
    """SIGTERM (preemption, `kill`): back up at the next batch end, then stop with TrainingInterruptedError."""

    def __init__(self, backup: Backup):
        super().__init__()
        self.backup = backup
        self.signalled = threading.Event()

    def on_train_batch_end(self, batch, logs=None):
        if self.signalled.is_set():
            self.backup.save_now()  # the callback's own save; fit's on_train_end would delete it
            raise TrainingInterruptedError(
                f"backup written to {self.backup.backup_dir}; rerun the same command to resume"
            )
