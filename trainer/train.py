"""Training: resolve the config, pick strategy and precision, stream the shards, fit, write outputs.

    rotnet-train --records data/mnist-records --output runs/mnist            # (trainer/cli.py)

Outputs in --output (see docs/trainer.md):

    model.keras            the best model by validation angle error (ModelCheckpoint)
    saved_model/           SavedModel, `serve`: uint8 images -> angle_degrees, confidence, probabilities
    train_config.json      the resolved TrainConfig (Predictor reads it)
    metrics.json           best and final metrics, per-epoch history, throughput, skipped shards
    training_curves.png    loss and angle error per epoch, training and validation
    history.csv            CSVLogger; tensorboard/ TensorBoard logs
    backup/                BackupAndRestore state while a run is unfinished: rerun the same command
                           after a crash, a SIGKILL or a SIGTERM and it resumes from there
"""

from __future__ import annotations

import contextlib
import csv
import gc
import importlib.util
import json
import math
import os
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

import schemas
from schemas import paths as schema_paths
from schemas import verify
from schemas.manifest import manifest_path
from trainer.config import CONFIG_FILE, MODEL_FILE, SAVED_MODEL_DIR, TrainConfig, TrainingError, resolve

# What to do about a damaged shard, in every message that names one.
DAMAGED_SHARD_FIX = "re-run the pipeline, or pass --skip-corrupt-shards to train without the damaged shards"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
BACKUP_DIR = "backup"
BACKUP_METADATA = "training_metadata.json"
# Fields that must match for a rerun to resume an interrupted run from its backup.
RESUME_FIELDS = (
    "records",
    "model",
    "head",
    "sigma_degrees",
    "width",
    "bin_angles",
    "image_size",
    "channels",
    "preprocessing",
    "batch_size",
    "resolved_precision",
    "num_replicas",
)


class OutputWriteError(TrainingError):
    """Writing in --output failed (a full disk, a read-only directory). `hdf5_left_open`: the failed
    write left HDF5 objects open, which can crash the interpreter as it exits (the CLI exits at once)."""

    def __init__(self, message: str, hdf5_left_open: bool = False):
        super().__init__(message)
        self.hdf5_left_open = hdf5_left_open


class TrainingInterruptedError(Exception):
    """SIGTERM arrived: a backup was written; rerunning the same command resumes."""


# --- Pure decisions (unit-tested without GPUs) ----------------------------------------------------


def resolve_precision(requested: str, num_gpus: int) -> str:
    """auto -> mixed_float16 on a GPU (tensor cores), float32 on CPU (float16 is slow there)."""
    if requested == "auto":
        return "mixed_float16" if num_gpus > 0 else "float32"
    return requested


def choose_strategy_kind(num_gpus: int, tf_config: str | None) -> str:
    """multi_worker when TF_CONFIG describes a cluster, mirrored for several local GPUs, else default."""
    if tf_config:
        try:
            cluster = json.loads(tf_config).get("cluster", {})
        except (json.JSONDecodeError, AttributeError):
            raise TrainingError("TF_CONFIG is not valid JSON; unset it or fix it") from None
        if any(cluster.get(role) for role in ("worker", "chief")):
            return "multi_worker"
    return "mirrored" if num_gpus > 1 else "default"


def is_chief(tf_config: str | None) -> bool:
    """Only the chief (or worker 0 without a chief) writes the outputs in multi-worker training."""
    if not tf_config:
        return True
    data = json.loads(tf_config)
    task = data.get("task", {})
    if task.get("type") == "chief":
        return True
    has_chief = bool(data.get("cluster", {}).get("chief"))
    return not has_chief and task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


# --- Shards -----------------------------------------------------------------------------------------


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


# --- Resume bookkeeping ---------------------------------------------------------------------------


def _read_history(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _number(value: str) -> float | int | str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def _prepare_resume(config: TrainConfig, echo: Callable[[str], None] = print) -> int:
    """The epoch an interrupted run in --output resumes at (0 for a fresh run); refuses a backup
    made with another config, sets a damaged backup aside (one line; the previous good one is used, or
    the run starts over), and trims the CSV log to the backed-up epochs."""
    backup_dir = os.path.join(config.output, BACKUP_DIR)
    saved_config = os.path.join(config.output, CONFIG_FILE)
    if not has_backup(config.output):
        return 0
    if os.path.exists(saved_config):
        try:
            with open(saved_config) as handle:
                previous = json.load(handle)
        except (OSError, ValueError):
            previous = {}
        current = json.loads(config.to_json())
        # A field newer than the interrupted run (e.g. width) had its default's meaning when it ran.
        defaults = json.loads(TrainConfig(records="", output="").to_json())
        changed = [
            field for field in RESUME_FIELDS if previous.get(field, defaults.get(field)) != current.get(field)
        ]
        if changed:
            raise TrainingError(
                f"{config.output} holds an interrupted run with a different {', '.join(changed)}; "
                f"rerun it with the same options, use another --output, or delete {BACKUP_DIR}/ to restart"
            )
    epoch = good_backup_epoch(backup_dir, echo)
    history_path = os.path.join(config.output, HISTORY_FILE)
    rows = [row for row in _read_history(history_path) if int(row.get("epoch", 0)) < epoch]
    fieldnames: list[str] = []
    if os.path.exists(history_path):
        with open(history_path, newline="") as handle:
            fieldnames = next(csv.reader(handle), [])
        if not fieldnames:  # killed before CSVLogger's first row: rewritten header-less, CSVLogger would
            os.remove(history_path)  # append rows without a header; removed, it starts it again
    if fieldnames:
        _write_text_aside(history_path, _csv_text(fieldnames, rows))
    return epoch


def _csv_text(fieldnames: list[str], rows: list[dict[str, Any]]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- Backups: written aside and renamed; checked (SHA-256) before a resume trusts them ---------------

BACKUP_WEIGHTS = "latest.weights.h5"  # the names Keras's BackupAndRestore loads at the start of fit
PREVIOUS_WEIGHTS = "previous.weights.h5"  # the backup before the latest, kept until a newer one exists
PREVIOUS_METADATA = "previous_training_metadata.json"
_BACKUP_PAIRS = ((BACKUP_WEIGHTS, BACKUP_METADATA), (PREVIOUS_WEIGHTS, PREVIOUS_METADATA))


def has_backup(output: str) -> bool:
    """True when --output holds an interrupted run's backup (whole or damaged)."""
    backup_dir = os.path.join(output, BACKUP_DIR)
    return any(os.path.lexists(os.path.join(backup_dir, name)) for pair in _BACKUP_PAIRS for name in pair)


def _sha256_of(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _backup_problem(backup_dir: str, weights: str, metadata: str) -> str | None:
    """Why the backup pair (weights, metadata) cannot be resumed from, or None when it is whole: the
    metadata is JSON with an integer epoch, the weights a regular file whose SHA-256 it records."""
    weights_path, metadata_path = os.path.join(backup_dir, weights), os.path.join(backup_dir, metadata)
    for path in (metadata_path, weights_path):
        if not os.path.lexists(path):
            return f"{os.path.basename(path)} is missing"
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return f"{os.path.basename(path)} is not a regular file"
    try:
        with open(metadata_path, "rb") as handle:
            data = json.loads(handle.read(1 << 16))
        epoch = data["epoch"]
    except (OSError, ValueError, TypeError, KeyError):
        return f"{metadata} is not a backup's metadata"
    if not isinstance(epoch, int) or epoch < 0:
        return f"{metadata} holds no epoch"
    expected = data.get("sha256")
    if expected is None:  # a backup written before the digest was recorded: open it as HDF5 at least
        try:
            import h5py

            with h5py.File(weights_path, "r"):
                pass
        except Exception as error:  # h5py raises OSError, ValueError or its own errors
            return f"{weights} cannot be read ({str(error).splitlines()[0][:80]})"
        return None
    if _sha256_of(weights_path) != expected:
        return f"{weights} does not match the SHA-256 its metadata recorded (cut short or damaged)"
    return None


def good_backup_epoch(backup_dir: str, echo: Callable[[str], None]) -> int:
    """The epoch to resume at from the newest whole backup in `backup_dir` (left as latest.* for
    Keras to load); damaged ones are renamed to damaged-* with one line each; 0 when none is whole
    (the run starts over)."""
    for weights, metadata in _BACKUP_PAIRS:
        if not any(os.path.lexists(os.path.join(backup_dir, name)) for name in (weights, metadata)):
            continue
        problem = _backup_problem(backup_dir, weights, metadata)
        if problem is None:
            if weights != BACKUP_WEIGHTS:  # the previous one becomes the one Keras loads
                os.replace(os.path.join(backup_dir, weights), os.path.join(backup_dir, BACKUP_WEIGHTS))
                os.replace(os.path.join(backup_dir, metadata), os.path.join(backup_dir, BACKUP_METADATA))
            with open(os.path.join(backup_dir, BACKUP_METADATA)) as handle:
                return int(json.load(handle)["epoch"])
        for name in (weights, metadata):
            if os.path.lexists(os.path.join(backup_dir, name)):
                os.replace(os.path.join(backup_dir, name), os.path.join(backup_dir, f"damaged-{name}"))
        later = "trying the previous backup" if weights == BACKUP_WEIGHTS else "no whole backup is left"
        echo(f"the backup in {backup_dir} is damaged ({problem}): set aside as damaged-*; {later}")
    echo(f"no whole backup in {backup_dir}: training starts over at epoch 1")
    return 0


# --- The output directory: ours only ----------------------------------------------------------------

RUN_MARKER = ".rotnet-run.json"
BEST_MODEL_ASIDE = (
    ".rotnet-best-model.keras"  # ModelCheckpoint writes here; renamed over MODEL_FILE at the end
)
# Every name rotnet-train writes in --output (none may be a symlink: it would be written through).
OUTPUT_NAMES = (
    MODEL_FILE,
    BEST_MODEL_ASIDE,
    SAVED_MODEL_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    BACKUP_DIR,
    "tensorboard",
    RUN_MARKER,
)


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def claim_output(config: TrainConfig, overwrite: bool = False) -> None:
    """Make --output ours, or refuse with TrainingError (one line): never `/`, the records directory
    (or one inside or around it), a pipeline's output, a directory with files rotnet-train did not
    write (no RUN_MARKER), a finished run (unless `overwrite`), or a symlink at any output name."""
    output = os.path.realpath(config.output)
    if output == os.path.realpath(os.sep):
        raise TrainingError("--output / is refused: choose a directory of its own for the run")
    if not schema_paths.is_remote(config.records):
        records = os.path.realpath(schema_paths.local_path(config.records))
        if records.endswith(".json"):
            records = os.path.dirname(records)
        if _inside(output, records) or _inside(records, output):
            raise TrainingError(
                f"--output {config.output} is (inside or around) the records directory {config.records}: "
                "choose a directory of its own for the run"
            )
    try:
        os.makedirs(config.output, exist_ok=True)
        names = set(os.listdir(config.output))
    except OSError as error:
        raise TrainingError(
            f"cannot use {config.output} as --output ({error.strerror}): choose a writable directory"
        ) from None
    if schemas.MANIFEST_NAME in names:
        raise TrainingError(
            f"{config.output} holds a dataset ({schemas.MANIFEST_NAME}), not a training run: choose another --output"
        )
    for name in OUTPUT_NAMES:
        if os.path.islink(os.path.join(config.output, name)):
            raise TrainingError(
                f"{os.path.join(config.output, name)} is a symlink: rotnet-train never writes through "
                "links; remove it or choose another --output"
            )
    marker = os.path.join(config.output, RUN_MARKER)
    # A run interrupted before the marker existed: only rotnet-train's names, its config and a backup.
    legacy = (
        RUN_MARKER not in names
        and {CONFIG_FILE, BACKUP_DIR} <= names
        and names <= {*OUTPUT_NAMES, ".rotnet-lock"}
        and has_backup(config.output)
    )
    if names - {".rotnet-lock"} and RUN_MARKER not in names and not legacy:
        raise TrainingError(
            f"{config.output} holds files rotnet-train did not write ({RUN_MARKER} is missing): they are "
            "left as they are; choose an empty or new --output"
        )
    finished = RUN_MARKER in names and METRICS_FILE in names and not has_backup(config.output)
    if finished and not overwrite:
        raise TrainingError(
            f"{config.output} holds a finished run (its model.keras is kept): pass --overwrite to train "
            "a new one there (the old model stays until the new best exists), or choose another --output"
        )
    if RUN_MARKER not in names:
        _write_json(marker, {"tool": "rotnet-train", "files": list(OUTPUT_NAMES)})


def manifest_digest(records: str) -> str:
    """SHA-256 of the records' manifest bytes (a pipeline --overwrite during training changes it)."""
    import hashlib

    with schema_paths.open_binary(manifest_path(records)) as handle:
        return hashlib.sha256(handle.read()).hexdigest()


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


# --- Callbacks of our own -------------------------------------------------------------------------


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
    metadata (good_backup_epoch checks it before a resume), and, when saving every N steps, also saves at
    each epoch end."""

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
        temporary = join(f".rotnet-tmp-{os.getpid()}.weights.h5")  # Keras wants the .weights.h5 suffix
        _check_free_space(self.backup_dir, self._expected_bytes(join(BACKUP_WEIGHTS)))
        try:
            self.model.save_weights(filepath=temporary, overwrite=True)
            metadata = {
                "epoch": self._current_epoch,
                "batch": self._last_batch_seen,
                "sha256": _sha256_of(temporary),
            }
            if os.path.exists(join(BACKUP_WEIGHTS)) and os.path.exists(join(BACKUP_METADATA)):
                os.replace(join(BACKUP_WEIGHTS), join(PREVIOUS_WEIGHTS))  # the last whole pair is kept
                os.replace(join(BACKUP_METADATA), join(PREVIOUS_METADATA))
            os.replace(temporary, join(BACKUP_WEIGHTS))
        except BaseException:
            if os.path.lexists(temporary):
                os.remove(temporary)
            raise
        _write_json(join(BACKUP_METADATA), metadata)  # last: until then the pair does not check out

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
    import errno
    import shutil

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


# --- The run ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    config: TrainConfig
    metrics: dict[str, Any]


def _make_strategy(kind: str, cluster_timeout: float = 300.0):
    import tensorflow as tf

    if kind == "multi_worker":  # waits for every peer first: one line after cluster_timeout seconds
        from trainer import distributed

        return distributed.make_strategy(os.environ["TF_CONFIG"], cluster_timeout)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _resolve_for_machine(config: TrainConfig, info: schemas.DatasetInfo) -> Any:
    """Check that TensorFlow can read gs:// records, choose the strategy (before other TensorFlow work:
    multi-worker needs that) and precision, resolve the config from the manifest, and move a
    non-chief worker's output beside --output; returns the strategy. JAX and torch: trainer.backends."""
    from trainer import backends

    if not backends.is_tensorflow():
        return backends.resolve_for_machine(config, info)
    import tensorflow as tf

    if "://" in config.records:  # TensorFlow's own GCS client reads the shards: fail now if it cannot
        from schemas.gcs import tensorflow_emulator_problem

        if problem := tensorflow_emulator_problem(config.records):
            raise TrainingError(problem)
        first_split = next(iter(info.splits))
        tf.io.gfile.stat(info.shard_paths(config.records, first_split)[0])
    tf_config = os.environ.get("TF_CONFIG")
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    config.backend, config.strategy = "tensorflow", choose_strategy_kind(num_gpus, tf_config)
    strategy = _make_strategy(config.strategy, config.cluster_timeout)
    config.resolved_precision = resolve_precision(config.precision, num_gpus)
    resolve(config, info, strategy.num_replicas_in_sync)
    if not is_chief(tf_config):  # workers train too but write their files aside, beside --output
        from trainer.distributed import worker_output

        config.output = worker_output(config.output, tf_config)
    return strategy


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

    strategy = _resolve_for_machine(config, info)
    claim_output(config, overwrite)
    from pipeline.output_lock import LocalLock, LockHeldError

    lock = LocalLock(config.output)  # one writer per directory, as for the pipeline
    try:
        lock.acquire()
    except LockHeldError as error:
        raise TrainingError(str(error).replace("--output-dir", "--output")) from None
    failure, hdf5_at_start = None, hdf5_objects_open()
    # h5py objects of a failed write complain as they are freed (Cython prints through excepthook,
    # then unraisablehook): the one line below says it.
    hook, excepthook = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = lambda raised: None if _write_failure(raised.exc_value) else hook(raised)
    sys.excepthook = lambda kind, value, tb: None if _write_failure(value) else excepthook(kind, value, tb)
    try:
        try:
            return _run_locked(config, info, strategy, callbacks, echo, started, digest_at_start)
        except (OSError, RuntimeError) as error:  # a full disk, a read-only directory (h5py, Keras)
            failure = _write_failure(error)
            if failure is None:
                raise
        finally:
            lock.release()
        gc.collect()  # the failed write's h5py objects go now, while their complaints are muted
        _close_hdf5_files()
    finally:
        sys.unraisablehook, sys.excepthook = hook, excepthook
    raise OutputWriteError(
        f"cannot write in {config.output} ({failure}): free space or choose another --output, then rerun "
        "the same command to resume",
        hdf5_left_open=hdf5_objects_open() > hdf5_at_start,
    )


def _close_hdf5_files() -> None:
    """Close the HDF5 files a failed write left open (HDF5 would flush them at exit, and crash)."""
    try:
        import h5py
    except ImportError:
        return
    for identifier in h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE):
        with contextlib.suppress(Exception):  # the disk is still full: nothing more to save
            identifier.close()


def hdf5_objects_open() -> int:
    """How many HDF5 objects are still open (after a failed write: its datasets and groups keep the
    file open inside HDF5 even once _close_hdf5_files closed the file's handle)."""
    try:
        import h5py
    except ImportError:
        return 0
    return int(h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_ALL))


def _write_failure(error: BaseException) -> str | None:
    """What failed a write, in a few words (h5py puts 'errno = 28' in a multi-line RuntimeError), or None
    for an error that is not a write failure."""
    text = str(error)
    found = re.search(r"errno = (\d+)", text)
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    if found:
        return os.strerror(int(found.group(1)))
    if isinstance(error, OSError):
        return (text.strip().splitlines() or [type(error).__name__])[0][:200]
    return None


def _run_locked(config, info, strategy, callbacks, echo, started, digest_at_start) -> TrainResult:
    initial_epoch = _prepare_resume(config, echo)
    if not initial_epoch:  # a fresh run: an earlier run's best aside must not be mistaken for ours
        aside = os.path.join(config.output, BEST_MODEL_ASIDE)
        if os.path.lexists(aside):
            os.remove(aside)  # ours (RUN_MARKER), and never the finished model itself
    shards, skipped = usable_shards(config, info, echo)
    _write_text_aside(os.path.join(config.output, CONFIG_FILE), config.to_json())
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
    aside = os.path.join(config.output, BEST_MODEL_ASIDE)
    os.replace(aside, os.path.join(config.output, MODEL_FILE))  # the old model stays until now
    result.metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
    _write_json(os.path.join(config.output, METRICS_FILE), result.metrics)
    return result


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
    watch = _Callbacks(config, monitor, initial_epoch, echo)
    callbacks = [*watch.all, *extra_callbacks]
    _train(model, strategy, config, head, (train_data, validation_data), callbacks, shards, initial_epoch)
    if watch.non_finite.where is not None:
        raise TrainingError(
            f"the {watch.non_finite.where} became NaN or infinite; training "
            f"stopped and {MODEL_FILE} was not replaced: lower --lr and rerun with --overwrite"
        )
    return _publish_best(model, config, monitor, initial_epoch, watch, skipped, echo)


def _compiled_model(config: TrainConfig, head: Any, strategy: Any) -> keras.Model:
    """The configured model with Adam at --lr (cosine-decayed over every step, or constant for the
    plateau schedule's callback), the head's loss and metrics, built in the strategy's scope."""
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
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate), loss=head.loss(), metrics=head.metrics()
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


class _Callbacks:
    """The run's callbacks: backup (and on SIGTERM), the best model aside, early stopping, the CSV log,
    throughput, the NaN stop, the learning-rate plateau and TensorBoard where installed."""

    def __init__(self, config: TrainConfig, monitor: str, initial_epoch: int, echo: Callable[[str], None]):
        self.history_path = os.path.join(config.output, HISTORY_FILE)
        self.model_path = os.path.join(config.output, BEST_MODEL_ASIDE)
        best_so_far = [
            row[monitor] for row in _read_history(self.history_path) if _is_number(row.get(monitor))
        ]
        backup = Backup(
            os.path.join(config.output, BACKUP_DIR), save_freq=config.backup_every_steps or "epoch"
        )
        self.throughput = Throughput(config.global_batch_size)
        self.on_signal = BackupOnSignal(backup)
        self.non_finite = StopOnNonFiniteLoss()
        self.all = [
            keras.callbacks.ModelCheckpoint(
                self.model_path,
                monitor=monitor,
                mode="min",
                save_best_only=True,
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
        if config.tensorboard and keras.backend.backend() != "tensorflow":  # trainer.backends says why
            echo(
                f"no TensorBoard logs: rotnet-train writes them on TensorFlow only, not {keras.backend.backend()}"
            )
        elif config.tensorboard and importlib.util.find_spec("tensorboard") is not None:
            self.all.append(keras.callbacks.TensorBoard(os.path.join(config.output, "tensorboard")))
        elif (
            config.tensorboard
        ):  # tf.summary needs the tensorboard package, which TensorFlow does not pull in
            echo("no TensorBoard logs: the tensorboard package is not installed (pip install tensorboard)")
        # The backup last: an epoch is backed up only once its history row, its best model and the
        # learning-rate change are written, so a run killed in between (a lost peer, SIGKILL) redoes the
        # epoch and logs it again instead of resuming after it without its row (_prepare_resume keeps
        # the rows of the epochs before the backup's).
        self.all.append(backup)


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


def _publish_best(model, config, monitor, initial_epoch, watch: _Callbacks, skipped, echo) -> TrainResult:
    """The best epoch's model (ModelCheckpoint's, aside) exported as a SavedModel, with the run's metrics
    and training curves; model.keras itself is renamed into place by the caller once all is written."""
    from trainer import backends

    if os.path.exists(watch.model_path):
        model = keras.saving.load_model(watch.model_path, compile=False)
    else:
        model.save(watch.model_path)
    saved_model = os.path.join(config.output, SAVED_MODEL_DIR)
    backends.export_saved_model(model, watch.model_path, json.loads(config.to_json()), saved_model, echo)
    history = _read_history(watch.history_path)
    metrics = _summarize(history, monitor, initial_epoch, watch.throughput.images_per_second(), skipped)
    _plot_curves(
        history, os.path.join(config.output, CURVES_FILE), title=f"{config.model} on {config.dataset}"
    )
    echo(
        f"best {monitor} {metrics['best'].get(monitor, float('nan')):.2f} degrees at epoch "
        f"{metrics['best_epoch']}; outputs in {config.output}"
    )
    return TrainResult(config=config, metrics=metrics)


def _summarize(
    history: list[dict[str, Any]],
    monitor: str,
    initial_epoch: int,
    images_per_second: float | None,
    skipped: list[str],
) -> dict[str, Any]:
    scored = [row for row in history if _is_number(row.get(monitor))]
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


def _is_number(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def _write_json(path: str, value: dict[str, Any]) -> None:
    _write_text_aside(path, json.dumps(_finite(value), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _write_text_aside(path: str, text: str) -> None:
    """Write to a new temporary name beside `path` (O_EXCL | O_NOFOLLOW), then rename it over `path`:
    never through a link, and a crash leaves the old file whole."""
    temporary = os.path.join(os.path.dirname(path), f".rotnet-tmp-{os.getpid()}-{os.path.basename(path)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.remove(temporary)
        raise


def _finite(value: Any) -> Any:
    """NaN/inf -> null, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plot_curves(history: list[dict[str, Any]], path: str, title: str) -> None:
    """Loss and angle error per epoch (training and validation), as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) + 1 for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, label in ((axes[0], "loss", "loss"), (axes[1], "angle_error", "angle error (degrees)")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [row.get(prefix + metric) for row in history]
            if any(_is_number(value) for value in values):
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
