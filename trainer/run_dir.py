"""The run directory (--output) of rotnet-train: what it holds, when it is rotnet-train's, its lock, and
the backups a rerun resumes from, checked before they are trusted. The rules themselves (aside then
rename, never through a link, one writer) are schemas/output_rules.py's; this module applies them.

    model.keras            the best model by validation angle error, renamed into place at the end
    .rotnet-best-model.keras  ModelCheckpoint's best so far, aside until then
    saved_model/           SavedModel, `serve`: uint8 images -> angle_degrees, confidence, probabilities
    train_config.json      the resolved TrainConfig (Predictor reads it)
    metrics.json           best and final metrics, per-epoch history, throughput, skipped shards
    training_curves.png    loss and angle error per epoch, training and validation
    history.csv            CSVLogger; tensorboard/ TensorBoard logs
    backup/                BackupAndRestore state while a run is unfinished: rerun the same command
                           after a crash, a SIGKILL or a SIGTERM and it resumes from there
    .rotnet-run.json       the marker: rotnet-train made this directory (it writes nowhere else)
    .rotnet-lock           one writer at a time

Pure Python (no Keras): rotnet-ablate reads the same names.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import schemas
from schemas import output_rules
from schemas import paths as schema_paths
from trainer.config import CONFIG_FILE, MODEL_FILE, SAVED_MODEL_DIR, TrainConfig, TrainingError

HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
BACKUP_DIR = "backup"
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
BACKUP_WEIGHTS = "latest.weights.h5"  # the names Keras's BackupAndRestore loads at the start of fit
BACKUP_METADATA = "training_metadata.json"
PREVIOUS_WEIGHTS = "previous.weights.h5"  # the backup before the latest, kept until a newer one exists
PREVIOUS_METADATA = "previous_training_metadata.json"
_BACKUP_PAIRS = ((BACKUP_WEIGHTS, BACKUP_METADATA), (PREVIOUS_WEIGHTS, PREVIOUS_METADATA))
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


# --- Ours only ------------------------------------------------------------------------------------


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
        if schema_paths.inside(output, records) or schema_paths.inside(records, output):
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
    links = output_rules.links_among(config.output, OUTPUT_NAMES)
    if links:
        raise TrainingError(
            f"{links[0]} is a symlink: rotnet-train never writes through links; remove it or choose another --output"
        )
    _check_ours(config.output, names, overwrite)
    if RUN_MARKER not in names:
        write_json(
            os.path.join(config.output, RUN_MARKER), {"tool": "rotnet-train", "files": list(OUTPUT_NAMES)}
        )


def _check_ours(output: str, names: set[str], overwrite: bool) -> None:
    """Refuse a directory holding files rotnet-train did not write, and a finished run unless `overwrite`."""
    # A run interrupted before the marker existed: only rotnet-train's names, its config and a backup.
    legacy = (
        RUN_MARKER not in names
        and {CONFIG_FILE, BACKUP_DIR} <= names
        and names <= {*OUTPUT_NAMES, output_rules.LOCK_NAME}
        and has_backup(output)
    )
    if names - {output_rules.LOCK_NAME} and RUN_MARKER not in names and not legacy:
        raise TrainingError(
            f"{output} holds files rotnet-train did not write ({RUN_MARKER} is missing): they are "
            "left as they are; choose an empty or new --output"
        )
    finished = RUN_MARKER in names and METRICS_FILE in names and not has_backup(output)
    if finished and not overwrite:
        raise TrainingError(
            f"{output} holds a finished run (its model.keras is kept): pass --overwrite to train "
            "a new one there (the old model stays until the new best exists), or choose another --output"
        )


@contextlib.contextmanager
def locked(output: str) -> Iterator[None]:
    """One writer per directory, as for the pipeline: --output's lock held for the block."""
    lock = output_rules.LocalLock(output, option="--output")
    try:
        lock.acquire()
    except output_rules.LockHeldError as error:
        raise TrainingError(str(error)) from None
    try:
        yield
    finally:
        lock.release()


def write_json(path: str, value: dict[str, Any]) -> None:
    """Strict JSON (NaN/inf -> null), written aside and renamed into place."""
    output_rules.write_aside(
        path, json.dumps(_finite(value), indent=2, sort_keys=True, allow_nan=False) + "\n"
    )


def _finite(value: Any) -> Any:
    """NaN/inf -> null, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- The history (CSVLogger's history.csv) --------------------------------------------------------


def read_history(path: str) -> list[dict[str, Any]]:
    """history.csv's rows, numbers as numbers ([] when there is none yet)."""
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


def is_number(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def _trim_history(path: str, epoch: int) -> None:
    """Keep the rows of the epochs before `epoch` (the backup's): CSVLogger appends the rest again."""
    rows = [row for row in read_history(path) if int(row.get("epoch", 0)) < epoch]
    fieldnames: list[str] = []
    if os.path.exists(path):
        with open(path, newline="") as handle:
            fieldnames = next(csv.reader(handle), [])
        if not fieldnames:  # killed before CSVLogger's first row: rewritten header-less, CSVLogger would
            os.remove(path)  # append rows without a header; removed, it starts it again
    if fieldnames:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        output_rules.write_aside(path, buffer.getvalue())


# --- Resuming: backups written aside and renamed (trainer.callbacks.Backup), checked here --------------


def prepare_resume(config: TrainConfig, echo: Callable[[str], None] = print) -> int:
    """The epoch an interrupted run in --output resumes at (0 for a fresh run); refuses a backup
    made with another config, sets a damaged backup aside (one line; the previous good one is used, or
    the run starts over), and trims the CSV log to the backed-up epochs."""
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
    epoch = good_backup_epoch(os.path.join(config.output, BACKUP_DIR), echo)
    _trim_history(os.path.join(config.output, HISTORY_FILE), epoch)
    return epoch


def has_backup(output: str) -> bool:
    """True when --output holds an interrupted run's backup (whole or damaged)."""
    backup_dir = os.path.join(output, BACKUP_DIR)
    return any(os.path.lexists(os.path.join(backup_dir, name)) for pair in _BACKUP_PAIRS for name in pair)


def backup_problem(backup_dir: str, weights: str, metadata: str) -> str | None:
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
    if output_rules.sha256_of(weights_path) != expected:
        return f"{weights} does not match the SHA-256 its metadata recorded (cut short or damaged)"
    return None


def good_backup_epoch(backup_dir: str, echo: Callable[[str], None]) -> int:
    """The epoch to resume at from the newest whole backup in `backup_dir` (left as latest.* for
    Keras to load); damaged ones are renamed to damaged-* with one line each; 0 when none is whole
    (the run starts over)."""
    move = lambda name, new: output_rules.move_into_place(  # noqa: E731
        os.path.join(backup_dir, name), os.path.join(backup_dir, new)
    )
    for weights, metadata in _BACKUP_PAIRS:
        if not any(os.path.lexists(os.path.join(backup_dir, name)) for name in (weights, metadata)):
            continue
        problem = backup_problem(backup_dir, weights, metadata)
        if problem is None:
            if weights != BACKUP_WEIGHTS:  # the previous one becomes the one Keras loads
                move(weights, BACKUP_WEIGHTS)
                move(metadata, BACKUP_METADATA)
            with open(os.path.join(backup_dir, BACKUP_METADATA)) as handle:
                return int(json.load(handle)["epoch"])
        for name in (weights, metadata):
            if os.path.lexists(os.path.join(backup_dir, name)):
                move(name, f"damaged-{name}")
        later = "trying the previous backup" if weights == BACKUP_WEIGHTS else "no whole backup is left"
        echo(f"the backup in {backup_dir} is damaged ({problem}): set aside as damaged-*; {later}")
    echo(f"no whole backup in {backup_dir}: training starts over at epoch 1")
    return 0
