"""The TF-free input stream: trainer.data's tf.data chain, step for step, in Python, NumPy and OpenCV.

    batches = training_jobs(paths, config, num_records)        # endless lists of encoded records
    pool = DecodePool(BatchSpec.of(config, head), workers=4)
    decoded = pool.decode_in_order(batches)                     # (uint8 images, targets), in order

Neither TensorFlow nor Keras is imported here (nor by the worker processes, which import only this
module): this is what serves the JAX and torch backends (trainer.numpy_data wraps it as Keras
PyDatasets) and what runs on a GPU machine without TensorFlow. The chain, as in trainer/data.py:

    endless_shard_passes                  the shard list reshuffled every pass; each shard read in
                                          order from a random start record round to the one before
                                          it; `cycle_length` shards interleaved one record at a time
                                          (tf.data.Dataset.interleave's order, `interleave` below)
    shuffled(shuffle_buffer)              tf.data's shuffle: a buffer of that many records, each
                                          output drawn from it at random and replaced by the next
    [keep_record]                         only with --angles / --max-images: the same filters
    batched(global batch)                 full batches
    decode_batch (worker processes)       PNG/JPEG (OpenCV, the pixels TensorFlow's decoders give),
                                          angle -> bin -> the head's targets, [--augment]

The reading (bytes only, CRC-checked) happens on one thread of the training process, in stream
order; decoding, the expensive part, fans out to `workers` processes, each given whole batches, and
the batches come back in order, so a seed gives the same stream whatever the number of workers. The
random numbers are NumPy's, not TensorFlow's: the same semantics and distribution, other draws.

Validation (`validation_records`) picks exactly the records the tf.data chain picks, in the same
order: the shards interleaved in order, the hash sample of schemas.splits.in_validation_sample, the
angle filter, `steps` batches wrapping round.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

import schemas
from schemas import splits, tfrecord_file

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.heads import Head

SHUFFLE_DRAWS = 4096  # random buffer positions drawn at once (one NumPy call instead of thousands)


class DamagedRecordError(ValueError):
    """A record that CRC-checks but cannot be parsed or decoded (one line, naming what failed)."""


# --- Labels and filters (shared with trainer.data) ----------------------------------------------------


def label_table(bin_angles: Sequence[int]) -> np.ndarray:
    """(360,) int32: the bin index of each angle, -1 for angles outside the bins."""
    table = np.full(schemas.NUM_ANGLES, -1, np.int32)
    table[np.asarray(bin_angles, np.int64)] = np.arange(len(bin_angles), dtype=np.int32)
    return table


def subset_mask_function(fraction: float) -> Callable[[np.ndarray], np.ndarray]:
    """Which image ids (UTF-8 bytes) are in the stable --max-images subset, as a NumPy function (the
    tf.data chain runs it with tf.numpy_function). schemas.splits.in_subset hashes with SHA-256; each
    image id is hashed once and remembered (an image has up to 360 records)."""
    cache: dict[bytes, bool] = {}

    def mask(image_ids: Sequence[bytes]) -> np.ndarray:
        keep = np.empty(len(image_ids), bool)
        for index, image_id in enumerate(image_ids):
            if image_id not in cache:
                cache[image_id] = splits.in_subset(image_id.decode("utf-8"), fraction)
            keep[index] = cache[image_id]
        return keep

    return mask


def validation_sample_function(fraction: float) -> Callable[[Sequence[bytes], Sequence[int]], np.ndarray]:
    """(image ids as bytes, angles) -> which records are in the validation sample (both chains)."""

    def mask(image_ids: Sequence[bytes], angles: Sequence[int]) -> np.ndarray:
        return np.asarray(splits.validation_sample_mask(image_ids, angles, fraction), bool)

    return mask


def record_filter(config: TrainConfig, subset: float) -> Callable[[bytes], bool] | None:
    """Which records to keep: an angle with a bin and, for `subset` < 1, an image in the stable
    --max-images subset (trainer.data.keep_records); None when every record qualifies."""
    every_angle = set(config.bin_angles) >= set(config.record_angles or range(schemas.NUM_ANGLES))
    if every_angle and subset >= 1.0:
        return None
    table = label_table(config.bin_angles)
    in_subset = subset_mask_function(subset)
    fields = ("angle_degrees", "image_id") if subset < 1.0 else ("angle_degrees",)

    def keep(record: bytes) -> bool:
        values = _fields(record, fields)
        if table[values["angle_degrees"]] < 0:
            return False
        return subset >= 1.0 or bool(in_subset([values["image_id"].encode("utf-8")])[0])

    return keep


def _fields(record: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    try:
        return schemas.record.decode_fields(record, fields)
    except schemas.SchemaError as error:
        raise DamagedRecordError(f"damaged record ({error})") from None


# --- Reading: tf.data's interleave, shard passes and shuffle --------------------------------------------


def interleave(sources: Iterable[Callable[[], Iterator[bytes]]], cycle_length: int) -> Iterator[bytes]:
    """tf.data.Dataset.interleave(cycle_length=c, block_length=1) without parallelism: c sources open
    at once, one element from each in turn; a source that ends frees its slot, which the next source
    fills when the turn comes back to it (TensorFlow's InterleaveDataset, in the same order)."""
    pending = iter(sources)
    slots: list[Iterator[bytes] | None] = [None] * max(1, cycle_length)
    exhausted, open_count, index = False, 0, 0
    while not exhausted or open_count:
        current = slots[index]
        if current is not None:
            element = next(current, _END)
            if element is not _END:
                yield element
            else:
                slots[index] = None
                open_count -= 1
            index = (index + 1) % len(slots)
        elif not exhausted:
            source = next(pending, None)
            if source is None:
                exhausted = True
            else:
                slots[index] = source()
                open_count += 1
        else:
            index = (index + 1) % len(slots)


_END = object()


def cycle_length(paths: Sequence[str], config: TrainConfig) -> int:
    return max(1, min(config.cycle_length, len(paths)))


def records_in_order(paths: Sequence[str], config: TrainConfig) -> Iterator[bytes]:
    """Every record of the shards, each in its written order, `cycle_length` shards interleaved
    (validation, evaluation): trainer.data.records_in_order's order."""
    return interleave(
        ((lambda path=path: tfrecord_file.iter_records(path)) for path in paths), cycle_length(paths, config)
    )


def shard_pass(path: str, num_records: int, start: int) -> Iterator[bytes]:
    """One pass over a shard, in order, from record `start` round to the one before it."""
    yield from tfrecord_file.iter_records(path, skip=start)
    if start:
        yield from itertools.islice(tfrecord_file.iter_records(path), start)


def pass_start(seed: int, position: int, num_records: int) -> int:
    """The random start record of the pass at `position` in the file stream (from the seed and the
    position alone, as the tf.data chain's stateless draw)."""
    return int(np.random.default_rng([seed, position]).integers(0, max(num_records, 1)))


def endless_shard_passes(
    paths: Sequence[str], config: TrainConfig, num_records: Sequence[int]
) -> Iterator[bytes]:
    """Records for ever: the shard list reshuffled every pass, each shard read once per pass from a
    random start record, `cycle_length` shards interleaved (trainer.data.endless_shard_passes)."""
    order = np.random.default_rng(config.seed)

    def passes() -> Iterator[Callable[[], Iterator[bytes]]]:
        for position in itertools.count():
            if position % len(paths) == 0:
                permutation = order.permutation(len(paths))
            shard = int(permutation[position % len(paths)])
            start = pass_start(config.seed, position, num_records[shard])
            yield lambda path=paths[shard], count=num_records[shard], start=start: shard_pass(
                path, count, start
            )

    return interleave(passes(), cycle_length(paths, config))


def shuffled(records: Iterable[bytes], buffer_size: int, rng: np.random.Generator) -> Iterator[bytes]:
    """tf.data's shuffle(buffer_size): fill a buffer, then output a random element of it and put the
    next record in its place; at the end, empty the buffer in random order."""
    buffer: list[bytes] = []
    draws = iter(())
    for record in records:
        if len(buffer) < buffer_size:
            buffer.append(record)
            continue
        position = next(draws, None)
        if position is None:
            draws = iter(rng.integers(0, buffer_size, SHUFFLE_DRAWS).tolist())
            position = next(draws)
        buffer[position], record = record, buffer[position]
        yield record
    while buffer:
        position = int(rng.integers(0, len(buffer)))
        buffer[position], buffer[-1] = buffer[-1], buffer[position]
        yield buffer.pop()


def batched(records: Iterable[bytes], batch_size: int, drop_remainder: bool) -> Iterator[list[bytes]]:
    iterator = iter(records)
    while batch := list(itertools.islice(iterator, batch_size)):
        if len(batch) < batch_size and drop_remainder:
            return
        yield batch


def training_jobs(
    paths: Sequence[str], config: TrainConfig, num_records: Sequence[int]
) -> Iterator[list[bytes]]:
    """Endless full batches of encoded training records (config.global_batch_size each)."""
    records: Iterable[bytes] = shuffled(
        endless_shard_passes(paths, config, num_records),
        config.shuffle_buffer,
        np.random.default_rng([config.seed, 1]),
    )
    keep = record_filter(config, config.train_fraction)
    if keep is not None:
        records = filter(keep, records)
    return batched(records, config.global_batch_size, drop_remainder=True)


def validation_records(paths: Sequence[str], config: TrainConfig, steps: int) -> list[list[bytes]]:
    """The `steps` validation batches of encoded records: the tf.data chain's (trainer.data.
    validation_dataset) records, batch for batch, read once (callers keep them)."""
    fraction = config.validation_fraction
    keep = record_filter(config, 1.0)
    sample = validation_sample_function(fraction)
    picked: list[bytes] = []
    for record in records_in_order(paths, config):
        if len(picked) == steps * config.global_batch_size:
            break  # enough: tf.data's take(steps) stops reading there too
        if fraction < 1.0:
            values = _fields(record, ("image_id", "angle_degrees"))
            if not sample([values["image_id"].encode("utf-8")], [values["angle_degrees"]])[0]:
                continue
        if keep is None or keep(record):
            picked.append(record)
    batches = list(batched(picked, config.global_batch_size, drop_remainder=False))
    if not batches:
        raise DamagedRecordError("the validation split holds no record of the model's angles")
    return [batches[index % len(batches)] for index in range(steps)]  # wraps round, as .repeat()


# --- Decoding (in the worker processes) ---------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSpec:
    """What a worker needs to turn encoded records into model inputs: small and picklable."""

    image_format: str
    height: int
    width: int
    channels: int
    head: str
    bin_angles: tuple[int, ...]
    sigma_degrees: float
    augment: bool
    seed: int
    batch_size: int  # the largest batch (shared-memory slots are this size)
    warp: bool = False  # --warp (training batches only: off wherever `augment` is forced off)

    @classmethod
    def of(cls, config: TrainConfig, head: Head, augment: bool | None = None) -> BatchSpec:
        height, width = config.image_size
        return cls(
            config.image_format,
            int(height),
            int(width),
            int(config.channels),
            head.name,
            tuple(head.bin_angles),
            float(head.sigma_degrees),
            config.augment if augment is None else augment,
            int(config.seed),
            int(config.global_batch_size),
            bool(config.warp) and augment is not False,
        )

    def images_shape(self, count: int) -> tuple[int, int, int, int]:
        return (count, self.height, self.width, self.channels)


def decode_batch(
    spec: BatchSpec,
    records: Sequence[bytes],
    batch_index: int,
    augment: bool | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded records -> (uint8 images (B, H, W, C), the head's targets), with `augment` (default:
    the spec's --augment; False also leaves out --warp) drawn from (seed, batch index): what trainer.data's maps make of a batch.
    `out`: the array to decode into (a shared-memory slot), else a new one."""
    from pipeline.codec import decode_image
    from trainer.augment import augment_batch, warp_batch_seeded
    from trainer.heads import Head

    images = np.empty(spec.images_shape(len(records)), np.uint8) if out is None else out
    angles = np.empty(len(records), np.int64)
    for index, record in enumerate(records):
        values = _fields(record, ("image_encoded", "angle_degrees"))
        try:
            images[index] = decode_image(
                values["image_encoded"], spec.image_format, spec.height, spec.width, spec.channels
            )
        except ValueError as error:
            raise DamagedRecordError(f"damaged record ({error})") from None
        angles[index] = values["angle_degrees"]
    bins = label_table(spec.bin_angles)[angles]
    if (bins < 0).any():
        raise DamagedRecordError(
            f"records of angles outside the model's bins: {sorted(set(angles[bins < 0]))}"
        )
    targets = Head(spec.head, spec.bin_angles, spec.sigma_degrees).targets(bins)
    if spec.warp and augment is not False:
        images[...] = warp_batch_seeded(images, spec.seed, batch_index)
    if spec.augment if augment is None else augment:
        images[...] = augment_batch(images, np.random.default_rng([spec.seed, 2, batch_index]))
    return images, targets


_WORKER_SPEC: BatchSpec | None = None  # set in each worker process by _start_worker


PARENT_CHECK_SECONDS = 0.5


def _start_worker(spec: BatchSpec, parent: int | None = None) -> None:
    global _WORKER_SPEC
    _WORKER_SPEC = spec
    if parent is None:
        return  # decoding threads of the training process itself
    import signal

    import cv2

    cv2.setNumThreads(1)  # one process per core already: OpenCV's own threads would oversubscribe
    # Ctrl-C reaches the whole foreground process group: it is the trainer's to handle (one line, the
    # backup kept); a worker dying of it would break the pool and print a traceback first. (SIGTERM
    # keeps its default: the pool terminates workers with it.) Workers end with the pool, or with the
    # trainer, even one killed with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A killed trainer cannot stop its workers, and they would wait on its queue for ever (holding
    its output pipes open): each checks that its parent lives, and exits when it is gone."""
    import time

    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


_ATTACHED: dict[str, Any] = {}  # shared-memory slots this worker has opened, by name


def _decode_in_worker(
    records: Sequence[bytes], batch_index: int, augment: bool | None, slot: str | None
) -> tuple[Any, np.ndarray]:
    """decode_batch in a worker: the images into the shared-memory `slot` (returned: its name and the
    count; only the targets travel back through the pipe), or, without a slot, returned whole."""
    assert _WORKER_SPEC is not None
    if slot is None:
        return decode_batch(_WORKER_SPEC, records, batch_index, augment)
    if slot not in _ATTACHED:
        from multiprocessing import shared_memory

        # Attaching registers the block with the resource tracker the pool shares with its workers, where
        # the pool registered it already: the pool unlinks it (or the tracker, if the pool is killed).
        _ATTACHED[slot] = shared_memory.SharedMemory(name=slot)
    out = np.ndarray(_WORKER_SPEC.images_shape(len(records)), np.uint8, buffer=_ATTACHED[slot].buf)
    _, targets = decode_batch(_WORKER_SPEC, records, batch_index, augment, out)
    del out
    return (slot, len(records)), targets


class DecodePool:
    """`workers` processes (or threads) decoding whole batches; `decode_in_order` streams results in
    the order of the batches given, at most `in_flight` batches ahead of the consumer.

    Processes are started with "spawn": they import only this module (no Keras, no JAX state copied
    by a fork, which JAX warns against). `close()` stops them; use it as a context manager.
    """

    def __init__(
        self, spec: BatchSpec, workers: int, use_multiprocessing: bool = True, in_flight: int | None = None
    ):
        self.spec = spec
        self.workers = max(1, int(workers))
        self.use_multiprocessing = use_multiprocessing
        self.in_flight = in_flight or max(4, 2 * self.workers)
        self._executor: Executor | None = None
        self._streams: list[_OrderedStream] = []

    def _started(self) -> Executor:
        if self._executor is None:
            if self.use_multiprocessing:
                self._executor = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(self.spec, os.getpid()),
                )
            else:
                _start_worker(self.spec)
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="rotnet-decode")
        return self._executor

    def submit(
        self, records: Sequence[bytes], batch_index: int, augment: bool | None = None, slot: str | None = None
    ) -> Future:
        return self._started().submit(_decode_in_worker, list(records), batch_index, augment, slot)

    def decode_in_order(
        self, jobs: Iterator[list[bytes]], augment: bool | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decoded batches of `jobs`, in order; the jobs are read on a thread of their own."""
        stream = _OrderedStream(self, jobs, augment)
        self._streams.append(stream)
        return stream

    def decode_all(
        self, jobs: Sequence[list[bytes]], augment: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every batch of `jobs` decoded (in parallel), in order; not augmented unless `augment`."""
        stream = _OrderedStream(self, iter(jobs), augment)
        try:
            return list(stream)
        finally:
            stream.stop()

    def close(self) -> None:
        for stream in self._streams:
            stream.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


SHARED_MEMORY_DIR = "/dev/shm"


def _shared_memory_slots(spec: BatchSpec, count: int) -> list[Any]:
    """`count` shared-memory blocks of one batch each, or [] where /dev/shm lacks twice their size (a
    container's default is 64 MiB: workers writing past what it can hold would die of SIGBUS), and
    the batches then travel pickled through the pool's pipes."""
    from multiprocessing import shared_memory

    size = int(np.prod(spec.images_shape(spec.batch_size)))
    try:
        status = os.statvfs(SHARED_MEMORY_DIR)
    except OSError:
        return []
    if status.f_bavail * status.f_frsize < 2 * size * count:
        return []
    return [shared_memory.SharedMemory(create=True, size=size) for _ in range(count)]


class _OrderedStream:
    """Reads jobs on a thread, submits each to the pool, and hands the results on in order; an error
    while reading (a damaged shard) is raised where the next batch is asked for.

    With worker processes the images come back through shared memory: a ring of batch-sized blocks,
    one taken per job and given back once its images are copied out (one copy, instead of pickling
    them through a pipe: a 224 px batch of 256 is 38 MB)."""

    def __init__(self, pool: DecodePool, jobs: Iterator[list[bytes]], augment: bool | None = None):
        self._pool = pool
        self._jobs = jobs
        self._augment = augment
        self._futures: queue.Queue = queue.Queue(pool.in_flight)
        self._stopped = threading.Event()
        self._blocks = _shared_memory_slots(pool.spec, pool.in_flight + 2) if pool.use_multiprocessing else []
        self._free: queue.Queue = queue.Queue()
        for block in self._blocks:
            self._free.put(block)
        self.transport = (
            "shared memory" if self._blocks else ("pipe" if pool.use_multiprocessing else "threads")
        )
        self._thread = threading.Thread(target=self._read, name="rotnet-records", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for index, job in enumerate(self._jobs):
                block = self._take_block() if self._blocks else None
                if self._stopped.is_set():
                    return
                future = self._pool.submit(job, index, self._augment, block.name if block else None)
                self._put(future)
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(error)
        else:
            self._put(StopIteration())

    def _take_block(self) -> Any:
        while not self._stopped.is_set():
            with contextlib.suppress(queue.Empty):
                return self._free.get(timeout=0.1)
        return None

    def _put(self, item: object) -> None:
        while not self._stopped.is_set():
            with contextlib.suppress(queue.Full):
                self._futures.put(item, timeout=0.1)
                return

    def __iter__(self) -> _OrderedStream:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        item = self._futures.get()
        if isinstance(item, StopIteration):
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        try:
            images, targets = item.result()
        except BrokenProcessPool:
            raise RuntimeError(
                "a decoding worker process ended abruptly (killed, out of memory, or it could not import "
                "the calling script: a script that trains must guard its entry point with "
                "`if __name__ == '__main__':`, as multiprocessing's spawn requires)"
            ) from None
        if isinstance(images, tuple):  # (block name, count): copy the images out, give the block back
            name, count = images
            block = next(block for block in self._blocks if block.name == name)
            view = np.ndarray(self._pool.spec.images_shape(count), np.uint8, buffer=block.buf)
            images = view.copy()
            del view
            self._free.put(block)
        return images, targets

    def stop(self) -> None:
        self._stopped.set()
        while True:  # unblock the reader and drop what it queued
            try:
                item = self._futures.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Future):
                item.cancel()
        self._thread.join(timeout=5)
        for block in self._blocks:
            with contextlib.suppress(BufferError, OSError):
                block.close()
            with contextlib.suppress(FileNotFoundError):
                block.unlink()
        self._blocks = []
