"""Which Keras backend trains, and what differs between them.

    rotnet-train --backend jax ...            # or: KERAS_BACKEND=jax rotnet-train ...

The model, its Preprocess layer, the heads, losses and metrics are written in keras.ops and run on
every backend; a model.keras file is the same whichever trained it (a JAX-trained model loads under
TensorFlow and predicts the same angles: tests/test_backend_jax.py). What differs:

| backend | input pipeline | devices | SavedModel (saved_model/) |
|---|---|---|---|
| tensorflow (default) | tf.data (trainer.data) | MirroredStrategy over the local GPUs; multi-worker with TF_CONFIG | exported in the run |
| jax, torch | the TF-free loader (trainer.numpy_data: decoding in worker processes) | one device: the first GPU, else the CPU | exported by a TensorFlow process when TensorFlow is installed, else left out (one line) |

Multi-worker training (TF_CONFIG) stays on TensorFlow; TensorBoard logs are written on TensorFlow only
(its summary writer would put TensorFlow on the GPU beside JAX or torch).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from schemas import tfrecord_file, verify
from trainer.config import TrainingError

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_BACKEND = "tensorflow"
TENSORFLOW = "tensorflow"


class BackendError(Exception):
    """A backend that cannot be used here (one line saying what to do)."""


def requested(option: str | None, environment: dict[str, str] | None = None) -> str:
    """The backend to train on: --backend, else $KERAS_BACKEND, else tensorflow; BackendError for an
    unknown name in the environment (click checks the option's own choices)."""
    environment = os.environ if environment is None else environment
    name = option or environment.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise BackendError(
            f"KERAS_BACKEND={name} is not one of {', '.join(BACKENDS)}: unset it or pass --backend"
        )
    return name


def select(name: str) -> None:
    """Make Keras use `name`: sets KERAS_BACKEND before Keras is imported. Keras reads it once, at
    import, so a process that already imported Keras with another backend is refused."""
    if "keras" in sys.modules:
        import keras

        current = keras.backend.backend()
        if current != name:
            raise BackendError(
                f"Keras is already running on {current} in this process, so it cannot switch to {name}: "
                f"run rotnet-train --backend {name} in a new process"
            )
        return
    if importlib.util.find_spec(name) is None:
        raise BackendError(f"--backend {name} needs the {name} package, which is not installed here")
    os.environ["KERAS_BACKEND"] = name


def current() -> str:
    import keras

    return keras.backend.backend()


def is_tensorflow() -> bool:
    return current() == TENSORFLOW


def multi_worker_problem(name: str, tf_config: str | None) -> str | None:
    """Why `name` cannot train with this TF_CONFIG (a cluster of workers: TensorFlow only), or None."""
    if name == TENSORFLOW or not tf_config:
        return None
    try:
        cluster = json.loads(tf_config).get("cluster", {})
    except (json.JSONDecodeError, AttributeError):
        return None  # trainer.machine says that TF_CONFIG is not valid JSON
    if any(cluster.get(role) for role in ("worker", "chief")):
        return f"multi-worker training (TF_CONFIG) runs on TensorFlow only: unset TF_CONFIG or drop --backend {name}"
    return None


def count_gpus() -> int:
    """GPUs the current backend sees (the JAX/torch runs train on the first)."""
    name = current()
    if name == "jax":
        import jax

        try:
            return len(jax.devices("gpu"))
        except RuntimeError:  # no GPU platform in this jaxlib
            return 0
    if name == "torch":
        import torch

        return int(torch.cuda.device_count())
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


class OneDevice:
    """The strategy of the JAX and torch runs: one device (Keras places the model there), no scope."""

    num_replicas_in_sync = 1

    def scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def resolve_for_machine(config: Any, info: Any) -> OneDevice:
    """trainer.machine.resolve_for_machine for JAX and torch: one device, precision from its GPUs,
    the config resolved from the manifest; gs:// records must be readable through schemas.paths."""
    from schemas import paths
    from trainer.config import resolve
    from trainer.machine import resolve_precision

    if paths.is_remote(config.records):
        first_split = next(iter(info.splits))
        try:
            paths.size(info.shard_paths(config.records, first_split)[0])
        except RuntimeError as error:  # neither apache-beam[gcp] nor tensorflow to read gs:// with
            raise TrainingError(str(error)) from None
    config.backend = current()
    config.strategy = "default"
    config.resolved_precision = resolve_precision(config.precision, count_gpus())
    resolve(config, info, 1)
    return OneDevice()


def numpy_input(config: Any, head: Any, shards: dict[str, list[str]], num_records: dict[str, int]):
    """(training PyDataset, validation PyDataset or None) of the TF-free loader; close them with
    `close_inputs` (their decoding processes)."""
    from trainer.numpy_data import NumpyInput

    counts = [num_records[path] for path in shards["train"]]
    loader = NumpyInput(config, head, shards, counts, workers=config.workers)
    loader.training.loader = loader  # close_inputs finds the workers through the dataset
    return loader.training, loader.validation


def close_inputs(datasets: Sequence[Any]) -> None:
    """Stop the TF-free loader's worker processes (nothing for tf.data datasets)."""
    for dataset in datasets:
        loader = getattr(dataset, "loader", None)
        if loader is not None:
            loader.close()


def damaged_input_errors() -> tuple[type[BaseException], ...]:
    """The errors a damaged shard or record raises while training, for the backend in use."""
    from trainer.record_stream import DamagedRecordError

    errors: tuple[type[BaseException], ...] = (tfrecord_file.CorruptShardError, DamagedRecordError)
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        errors += (tf.errors.DataLossError,)
    return errors


def damaged_input_message(error: BaseException, shard_paths: Sequence[str], fix: str) -> str:
    """One line naming the damaged shard (and where) and what to do."""
    if isinstance(error, tfrecord_file.CorruptShardError):
        problem = verify.ShardProblem(error.path, f"{error.reason} at byte offset {error.offset}")
        return verify.damaged_shard_message([problem], fix)
    if isinstance(error, ValueError):  # trainer.record_stream.DamagedRecordError
        return f"{str(error).splitlines()[0]}; {fix}"
    from trainer import data

    return data.damaged_record_message(shard_paths, error, fix)  # TensorFlow's DataLossError


def export_saved_model(
    model: Any, model_path: str, config: dict[str, Any], path: str, echo: Callable[[str], None]
) -> None:
    """saved_model/ of the run: in this process on TensorFlow; for JAX and torch by a TensorFlow
    process reading the model.keras file (the SavedModel is a TensorFlow graph), or left out with one
    line where TensorFlow is not installed."""
    if is_tensorflow():
        from trainer.predict import export_saved_model as export

        export(model, config, path)
        return
    if importlib.util.find_spec("tensorflow") is None:
        echo(
            f"no {os.path.basename(path)}/: TensorFlow is not installed here, and the SavedModel (for "
            "rotnet-export and serving) is a TensorFlow graph; model.keras loads under TensorFlow elsewhere"
        )
        return
    # On the CPU: the GPU's memory stays with the trainer's backend.
    environment = {
        **os.environ,
        "KERAS_BACKEND": TENSORFLOW,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "",
    }
    command = [sys.executable, "-m", "trainer.backends", model_path, json.dumps(config), path]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        lines = finished.stderr.strip().splitlines() or [f"exit status {finished.returncode}"]
        raise OSError(f"exporting the SavedModel with TensorFlow failed: {lines[-1][:300]}")


def _export_main(model_path: str, config_json: str, path: str) -> None:
    """The TensorFlow side of `export_saved_model` (python -m trainer.backends MODEL CONFIG PATH)."""
    from trainer.quiet import import_tensorflow

    import_tensorflow()
    import keras

    import trainer.models  # noqa: F401  (registers the Preprocess layer)
    from trainer.predict import export_saved_model as export

    model = keras.saving.load_model(model_path, compile=False)
    export(model, json.loads(config_json), path)


if __name__ == "__main__":
    _export_main(*sys.argv[1:4])
