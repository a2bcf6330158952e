"""What the machine adds to a run's config: the distribution strategy (one device, several GPUs, or a
multi-worker cluster from TF_CONFIG), the precision, and which worker writes the outputs. The choices are
pure functions, unit-tested without GPUs; `resolve_for_machine` applies them (TensorFlow; JAX and torch:
trainer.backends).
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemas
from trainer.config import TrainConfig, TrainingError, resolve


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


def make_strategy(kind: str, cluster_timeout: float = 300.0):
    import tensorflow as tf

    if kind == "multi_worker":  # waits for every peer first: one line after cluster_timeout seconds
        from trainer import distributed

        return distributed.make_strategy(os.environ["TF_CONFIG"], cluster_timeout)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def resolve_for_machine(config: TrainConfig, info: schemas.DatasetInfo) -> Any:
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
    strategy = make_strategy(config.strategy, config.cluster_timeout)
    config.resolved_precision = resolve_precision(config.precision, num_gpus)
    resolve(config, info, strategy.num_replicas_in_sync)
    if not is_chief(tf_config):  # workers train too but write their files aside, beside --output
        from trainer.distributed import worker_output

        config.output = worker_output(config.output, tf_config)
    return strategy
