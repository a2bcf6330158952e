"""The TF-free loader as Keras PyDatasets: what `rotnet-train --backend jax|torch` trains on.

    with NumpyInput(config, head, shards, num_records, workers=4) as loader:
        model.fit(loader.training, steps_per_epoch=..., validation_data=loader.validation)

`loader.training` yields endless (uint8 images, targets) batches with the tf.data chain's semantics
(trainer.record_stream: shard order and random start, shuffle buffer, label encoding, --angles /
--max-images, --augment); `loader.validation` the same validation records as the tf.data chain,
decoded once and kept in memory (as tf.data's cache()).

Why the parallelism is not Keras's own `workers`: Keras calls a PyDataset's __getitem__ for many
indices at once, on threads or on copies of the dataset in other processes, so each batch would have
to be a function of its index alone. The stream is sequential (a shard pass, a shuffle buffer), so the
reading stays on one thread, in order, and only the decoding fans out: `workers` processes
(`use_multiprocessing`, the default) or threads, each decoding whole batches, in order, at most
`max_queue_size` batches ahead. Keras sees a single-worker PyDataset.

    python -m trainer.numpy_data RECORDS [--workers N]   # images/s of the training stream, no model
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import keras
import numpy as np

from trainer import record_stream
from trainer.config import TrainConfig
from trainer.heads import Head


def default_workers() -> int:
    """Decoding processes: every core the process may use (the training loop mostly waits on the
    accelerator, and the reading thread is light)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class TrainingBatches(keras.utils.PyDataset):
    """Endless training batches; __getitem__ hands on the next batch of the stream (the index only
    counts: the stream is sequential, see the module docstring)."""

    def __init__(self, stream, batch_size: int, max_queue_size: int):
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=max_queue_size)
        self._stream = stream
        self.batch_size = batch_size

    @property
    def num_batches(self) -> None:
        return None  # endless: Keras counts steps_per_epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return next(self._stream)


class ValidationBatches(keras.utils.PyDataset):
    """The `steps` validation batches, decoded on first use and kept (every epoch scores the same)."""

    def __init__(self, jobs: list[list[bytes]], pool: record_stream.DecodePool):
        super().__init__(workers=1, use_multiprocessing=False)
        self._jobs = jobs
        self._pool = pool
        self._batches: list[tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def num_batches(self) -> int:
        return len(self._jobs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._batches is None:
            self._batches = self._pool.decode_all(self._jobs)
        return self._batches[index]


class NumpyInput:
    """The run's input without TensorFlow: one pool of decoding workers serving a TrainingBatches and
    (when the records have a validation split and steps) a ValidationBatches. Close it (or use it as a
    context manager) to stop the workers."""

    def __init__(
        self,
        config: TrainConfig,
        head: Head,
        shards: dict[str, list[str]],
        num_records: Sequence[int],
        workers: int | None = None,
        use_multiprocessing: bool = True,
    ):
        workers = workers or default_workers()
        self.pool = record_stream.DecodePool(
            record_stream.BatchSpec.of(config, head), workers, use_multiprocessing
        )
        jobs = record_stream.training_jobs(shards["train"], config, num_records)
        self.training = TrainingBatches(
            self.pool.decode_in_order(jobs), config.global_batch_size, self.pool.in_flight
        )
        self.validation = None
        if shards.get("validation") and config.validation_steps:
            validation = record_stream.validation_records(
                shards["validation"], config, config.validation_steps
            )
            self.validation = ValidationBatches(validation, self.pool)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> NumpyInput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Images/s of the training stream of RECORDS (no model): a quick look at what the loader delivers."""
    import argparse

    import schemas
    from trainer.config import resolve

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("records")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=50)
    arguments = parser.parse_args(argv)
    info = schemas.load_manifest(arguments.records)
    config = resolve(TrainConfig(records=arguments.records, batch_size=arguments.batch_size), info)
    head = Head(config.head, tuple(config.bin_angles), config.sigma_degrees)
    counts = [shard.num_records for shard in info.splits["train"].shards]
    shards = {"train": info.shard_paths(arguments.records, "train")}
    with NumpyInput(config, head, shards, counts, arguments.workers) as loader:
        loader.training[0]  # workers started, buffers filled
        started = time.perf_counter()
        for index in range(arguments.batches):
            loader.training[index]
        seconds = time.perf_counter() - started
    rate = arguments.batches * config.global_batch_size / seconds
    print(f"{rate:,.0f} images/s ({arguments.workers} workers, batch {config.global_batch_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
