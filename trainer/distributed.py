"""Multi-worker training (TF_CONFIG, MultiWorkerMirroredStrategy) with a training loop of our own.

Keras 3's `model.fit` cannot train under `MultiWorkerMirroredStrategy` with the pinned TensorFlow 2.21
and Keras 3.15: both workers fail in their first step with "Attempt to convert a value (PerReplica:...)
to a Tensor" (keras-team/keras#20585; reproduced here with two workers on 127.0.0.1). `fit` below runs
the same training without it:

- the same model, optimizer, head and loss as trainer.train builds, under the same strategy;
- each worker reads its own share of the shards (`distribute_datasets_from_function`; every shard when
  there are fewer shards than workers, with another seed) in batches of --batch-size per replica, so
  the global batch is --batch-size x replicas, as with `model.fit`;
- one step is `strategy.run` (per-replica loss scaled by the global batch; the optimizer all-reduces
  the gradients) and `strategy.reduce(SUM)` of the loss, angle error and hits, divided by the global
  count: the metrics are those of the whole global batch, not of one replica;
- the callbacks are trainer.callbacks' own (BackupAndRestore, ModelCheckpoint, EarlyStopping,
  ReduceLROnPlateau, CSVLogger, SIGTERM), driven through a Keras CallbackList with the global metrics;
  every worker writes into its own directory (the chief into --output, worker N into --output/worker-N);
- after each worker restores its backup, every variable and the epoch are broadcast from the chief
  (replica 0), so a worker killed before its last backup resumes in step with the chief.

`make_strategy` first waits for every peer of TF_CONFIG in Python (a TCP connection to its port), so a
peer that never starts ends in one line after --cluster-timeout seconds and SIGTERM stops the wait;
TensorFlow's own wait has neither (it catches SIGTERM and waits on).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from trainer.config import TrainConfig, TrainingError

# The sums every step reduces over all replicas; means are sum / count.
SUMS = ("loss", "angle_error", "accuracy", "count")
# TensorFlow errors that mean a peer worker died or cannot be reached during training.
PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "AbortedError", "CancelledError")
FIX = "start every worker of TF_CONFIG again with the same command: they resume from the last backup"


# --- Waiting for the cluster ------------------------------------------------------------------------


def cluster_addresses(tf_config: str) -> tuple[list[str], int]:
    """All task addresses of TF_CONFIG's cluster (chief first, then workers) and this task's position."""
    data = json.loads(tf_config)
    cluster, task = data.get("cluster", {}), data.get("task", {})
    addresses, mine = [], None
    for role in ("chief", "worker"):
        for index, address in enumerate(cluster.get(role) or []):
            if role == task.get("type") and index == int(task.get("index", 0)):
                mine = len(addresses)
            addresses.append(address)
    if mine is None:
        raise TrainingError(f"TF_CONFIG's task {task} is not in its cluster {cluster}: fix TF_CONFIG")
    return addresses, mine


def worker_output(output: str, tf_config: str) -> str:
    """Where a non-chief task writes: beside --output (`runs/a` -> `runs/a-worker-1`), never inside it,
    so the chief's --output holds only the chief's files (a task writing inside it would race the
    chief's check that --output holds nothing it did not write)."""
    task = json.loads(tf_config).get("task", {})
    return f"{output.rstrip(os.sep) or os.sep}-{task.get('type', 'worker')}-{int(task.get('index', 0))}"


def is_peer_failure(error: BaseException) -> bool:
    """A TensorFlow error that means another worker died or cannot be reached."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return "OpError" in names and type(error).__name__ in PEER_ERRORS


def peer_failure_message(error: BaseException) -> str:
    """One line: what the transport said (gRPC's message, not "Graph execution error:") and the fix."""
    found = re.search(r'grpc_message:"([^"]+)"', str(error)) or re.search(r"aborted by: (.+)", str(error))
    cause = found.group(1) if found else _first_line(error)
    return f"lost contact with another worker ({cause.strip()[:200]}): {FIX}"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TrainingError(f"TF_CONFIG address {address!r} is not host:port: fix TF_CONFIG")
    return host.strip("[]"), int(port)


def _answers(address: str) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(_split(address), timeout=1.0):
        return True
    return False


def wait_for_peers(tf_config: str, timeout_s: float, poll_s: float = 0.2) -> None:
    """Listen on this task's port and wait until every other task's port accepts a connection; a
    one-line TrainingError after `timeout_s` seconds, or on SIGTERM (the caller exits 143 then)."""
    addresses, mine = cluster_addresses(tf_config)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", _split(addresses[mine])[1]))
        listener.listen(64)
    except OSError as error:
        listener.close()
        raise TrainingError(
            f"cannot listen on {addresses[mine]} (TF_CONFIG task {mine}): {error.strerror}; "
            "choose a free port in TF_CONFIG"
        ) from None
    deadline = time.monotonic() + timeout_s
    missing = [address for index, address in enumerate(addresses) if index != mine]
    stopped = (
        f"while waiting for {', '.join(missing)}; nothing was trained or written: start every worker of "
        "TF_CONFIG with the same command"
    )
    with listener, _sigterm_raises(stopped):
        while missing:
            missing = [address for address in missing if not _answers(address)]
            if missing and time.monotonic() > deadline:
                raise TrainingError(
                    f"no answer from {', '.join(missing)} after {timeout_s:g} s: start every worker "
                    f"of TF_CONFIG (each with its own task index), or raise --cluster-timeout"
                )
            if missing:
                time.sleep(poll_s)


class PeerWaitInterruptedError(TrainingError):
    """SIGTERM while waiting for the other workers (the CLI exits 143)."""


@contextlib.contextmanager
def _sigterm_raises(message: str) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(*_: object) -> None:
        raise PeerWaitInterruptedError(message)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_strategy(tf_config: str, timeout_s: float) -> Any:
    """MultiWorkerMirroredStrategy once every peer answers; if TensorFlow still hangs (a peer that
    answered, then died), one line and exit 1 after `timeout_s` more seconds."""
    import tensorflow as tf

    wait_for_peers(tf_config, timeout_s)
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(timeout_s):
            print(
                f"Error: the workers of TF_CONFIG did not all join within {timeout_s:g} s: {FIX}",
                file=sys.stderr,
            )
            os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.OpError as error:
        raise TrainingError(
            f"the workers of TF_CONFIG could not join ({_first_line(error)}): {FIX}"
        ) from None
    finally:
        done.set()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# --- Input ---------------------------------------------------------------------------------------------


def worker_dataset(
    config: TrainConfig, head: Any, paths: Sequence[str], counts: Sequence[int], pipeline: int, pipelines: int
) -> Any:
    """One input pipeline's endless stream of per-replica batches (--batch-size): its own shards
    (every `pipelines`-th from `pipeline`), or all of them with its own seed when there are too few."""
    from trainer import data

    if len(paths) >= pipelines:
        paths, counts = list(paths)[pipeline::pipelines], list(counts)[pipeline::pipelines]
    own = dataclasses.replace(config, num_replicas=1, seed=config.seed + 1_000_003 * pipeline)
    return data.training_dataset(paths, own, head, counts)


def distribute_training(strategy: Any, config: TrainConfig, head: Any, paths, counts) -> Any:
    """The training stream as per-replica batches, one input pipeline per worker (`worker_dataset`)."""

    def dataset_fn(context: Any) -> Any:
        return worker_dataset(
            config, head, paths, counts, context.input_pipeline_id, context.num_input_pipelines
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def distribute_validation(strategy: Any, validation_data: Any) -> Any:
    """The validation batches (global batch size) split over all replicas of all workers."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(validation_data.with_options(options))


# --- Steps -----------------------------------------------------------------------------------------


def step_functions(model: Any, head: Any, strategy: Any, global_batch_size: int) -> tuple[Callable, Callable]:
    """(train_step(iterator), eval_step(batch)): each returns the SUMS over every replica, as tensors."""
    import tensorflow as tf

    loss_function, metric_functions = head.loss(), head.metric_functions()
    optimizer, variables = model.optimizer, model.trainable_variables

    def sums(targets: Any, outputs: Any, per_example: Any) -> dict[str, Any]:
        values = {"loss": tf.reduce_sum(per_example), "count": tf.cast(tf.shape(outputs)[0], tf.float32)}
        for name, function in metric_functions.items():
            values[name] = tf.reduce_sum(function(targets, outputs))
        return values

    def replica_train(images: Any, targets: Any) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            outputs = tf.cast(model(images, training=True), tf.float32)
            per_example = loss_function.call(targets, outputs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)
        optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables, strict=True))
        return sums(targets, outputs, per_example)

    def replica_eval(images: Any, targets: Any) -> dict[str, Any]:
        outputs = tf.cast(model(images, training=False), tf.float32)
        return sums(targets, outputs, loss_function.call(targets, outputs))

    def reduce(per_replica: dict[str, Any]) -> dict[str, Any]:
        return {name: strategy.reduce("SUM", value, axis=None) for name, value in per_replica.items()}

    @tf.function
    def train_step(iterator: Any) -> dict[str, Any]:
        return reduce(strategy.run(replica_train, args=next(iterator)))

    @tf.function
    def eval_step(batch: Any) -> dict[str, Any]:
        return reduce(strategy.run(replica_eval, args=batch))

    return train_step, eval_step


def means(totals: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Global means of summed metrics: {prefix + name: sum / count}."""
    count = totals.get("count", 0.0)
    return {prefix + name: totals[name] / count if count else math.nan for name in SUMS if name != "count"}


def _add(totals: dict[str, float], step: dict[str, Any]) -> dict[str, float]:
    return {name: totals.get(name, 0.0) + float(step[name]) for name in SUMS}


# --- Starting in step with the chief ------------------------------------------------------------------


def broadcast_from_chief(strategy: Any, variables: Sequence[Any], value: int) -> int:
    """Give every replica the chief's (replica 0's) variables, and return the chief's `value`."""
    import tensorflow as tf

    def replica() -> list[Any]:
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        tensors = [tf.constant(value, tf.int64), *[tf.convert_to_tensor(v) for v in variables]]
        # One dtype for one packed all-reduce: float64 holds float32/16 and counters (< 2**53) exactly.
        masked = [tf.where(first, tf.cast(t, tf.float64), tf.zeros_like(t, tf.float64)) for t in tensors]
        return [tf.cast(r, t.dtype) for r, t in zip(context.all_reduce("SUM", masked), tensors, strict=True)]

    reduced = strategy.experimental_local_results(strategy.run(tf.function(replica)))[0]
    for variable, tensor in zip(variables, reduced[1:], strict=True):
        variable.assign(tensor)
    return int(reduced[0])


def _state_variables(model: Any) -> list[Any]:
    seen, variables = set(), []
    for variable in [*model.weights, *model.optimizer.variables]:
        key = id(getattr(variable, "value", variable))
        if key not in seen:
            seen.add(key)
            variables.append(variable)
    return variables


# --- The loop ---------------------------------------------------------------------------------------


def fit(
    model: Any,
    strategy: Any,
    config: TrainConfig,
    head: Any,
    training: Any,
    validation_data: Any,
    callbacks: Sequence[Any],
    initial_epoch: int,
) -> None:
    """Train `model` (compiled under `strategy`) on `training` (`distribute_training`) for config.epochs x config.steps_per_epoch global steps
    from `initial_epoch`, calling `callbacks` as model.fit would; a lost peer is one TrainingError."""
    import keras
    import tensorflow as tf

    with strategy.scope():
        validation = None if validation_data is None else distribute_validation(strategy, validation_data)
        train_step, eval_step = step_functions(model, head, strategy, config.global_batch_size)
        model.optimizer.build(model.trainable_variables)
        callback_list = keras.callbacks.CallbackList(list(callbacks), model=model)
        callback_list.on_train_begin()  # BackupAndRestore restores this worker's backup here
        try:
            start = broadcast_from_chief(strategy, _state_variables(model), initial_epoch)
            _epochs(model, config, iter(training), validation, train_step, eval_step, callback_list, start)
        except tf.errors.OpError as error:
            if not is_peer_failure(error):
                raise
            raise TrainingError(peer_failure_message(error)) from None
    callback_list.on_train_end()


def _epochs(model, config, iterator, validation, train_step, eval_step, callback_list, start) -> None:
    model.stop_training = False
    for epoch in range(start, config.epochs):
        started = time.perf_counter()
        callback_list.on_epoch_begin(epoch)
        totals: dict[str, float] = {}
        for step in range(config.steps_per_epoch or 1):
            callback_list.on_train_batch_begin(step)
            reduced = train_step(iterator)
            totals = _add(totals, reduced)
            callback_list.on_train_batch_end(step, means(_add({}, reduced)))
            if model.stop_training:
                break
        logs = means(totals)
        if validation is not None:
            validation_totals: dict[str, float] = {}
            for batch in validation:
                validation_totals = _add(validation_totals, eval_step(batch))
            logs.update(means(validation_totals, prefix="val_"))
        print(
            f"Epoch {epoch + 1}/{config.epochs} - {time.perf_counter() - started:.0f}s - " + _describe(logs)
        )
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break


def _describe(logs: dict[str, float]) -> str:
    return " - ".join(f"{name}: {value:.4f}" for name, value in logs.items())
