"""Training throughput on a GPU under JAX: ResNet50 and MobileNetV3-Small, mixed_bfloat16 and
mixed_float16, end to end and from one cached batch (images/s), with the GPU's memory peak.

    rotnet-bench gpu_training                        # on the GPU machine: scripts/gpu_check.sh runs it
    ROTNET_GPU_BENCH_TINY=1 rotnet-bench gpu_training --print-only   # the CPU path, tiny (CI's test)

Records: the Street View samples at every angle (224 px JPEG q95, written with pipeline.local_writer,
as rotnet-pipeline writes them; no Beam, no TensorFlow). Each model x precision runs in a process of
its own (KERAS_BACKEND=jax: a clean compile, and a memory peak of its own), through the trainer's
pieces: trainer.models.build_model (weights none), the classification head over 360 bins, Adam
(trainer.train._compiled_model: Keras adds loss scaling for float16), batch 256, model.fit:

* end to end: the TF-free loader (trainer.numpy_data: the records read in stream order, JPEG decoded
  by one process per core) feeding the GPU;
* cached: one batch kept on the GPU and fed again every step: the model's own rate, so the table says
  whether the input keeps up.

Each rate is timed over TIMED_STEPS steps after WARM_UP_STEPS (the compile and the loader's start),
synchronized on the loss at both ends (JAX dispatches asynchronously). The loss at the end must be
finite. Targets (issue 31): ResNet50 mixed precision >= 2,500 images/s on one H100 (NVIDIA's published
TF AMP figure is 2,375 on an A100; MLPerf reaches ~7,000 per H100), end to end >= 95% of cached.

ROTNET_GPU_BENCH_DEADLINE_S (seconds, optional): no configuration starts after that much time has
passed; the ones left out are named in the table (scripts/gpu_check.sh keeps its run within 8 minutes).
ROTNET_GPU_BENCH_CONFIGS="resnet50:mixed_bfloat16,...": run only these.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE_SIZE = 224
BATCH_SIZE = 256
WARM_UP_STEPS = 5
TIMED_STEPS = 50
CONFIGS = (
    ("resnet50", "mixed_bfloat16"),
    ("resnet50", "mixed_float16"),
    ("mobilenet-v3-small", "mixed_bfloat16"),
    ("mobilenet-v3-small", "mixed_float16"),
)
# The CPU path (CI): 32 px, every 30 degrees, batch 8, few steps; one configuration (XLA compiles a
# ResNet50 step in ~30 s on 2 cores), the others with ROTNET_GPU_BENCH_CONFIGS.
TINY = {"image_size": 32, "angle_step": 30, "photos": 2, "batch_size": 8, "warm_up": 1, "steps": 3}
TINY_CONFIGS = (("resnet50", "mixed_bfloat16"),)
TARGET_IMAGES_PER_SECOND = 2_500
TARGET_END_TO_END_SHARE = 0.95


# --- One configuration, in a JAX process of its own ---------------------------------------------------------


def measure(
    records: str, model_name: str, precision: str, batch_size: int, warm_up: int, steps: int, workers: int
) -> dict:
    """Images/s end to end and cached, the loss at the end, the device's memory peak (KERAS_BACKEND=jax)."""
    import jax
    import keras
    import numpy as np

    import schemas
    from trainer.backends import OneDevice
    from trainer.config import TrainConfig, resolve
    from trainer.heads import Head
    from trainer.numpy_data import NumpyInput
    from trainer.train import _compiled_model

    StepTimer, CachedBatch = _step_timer_class(), _cached_batch_class()  # noqa: N806  (Keras subclasses)
    info = schemas.load_manifest(records)
    config = TrainConfig(
        records=records, model=model_name, weights="none", batch_size=batch_size, workers=workers, epochs=1
    )
    config.backend, config.resolved_precision = "jax", precision
    resolve(config, info)
    config.steps_per_epoch = warm_up + steps
    head = Head(config.head, tuple(config.bin_angles))
    model = _compiled_model(config, head, OneDevice())
    counts = [shard.num_records for shard in info.splits["train"].shards]
    shards = {"train": info.shard_paths(records, "train")}
    result = {"model": model_name, "precision": precision, "device": str(jax.devices()[0].device_kind)}
    with NumpyInput(config, head, shards, counts, workers) as loader:
        started = time.perf_counter()
        timer = StepTimer(warm_up, steps, batch_size)
        model.fit(loader.training, epochs=1, steps_per_epoch=warm_up + steps, callbacks=[timer], verbose=0)
        result["first_fit_seconds"] = round(time.perf_counter() - started, 1)
        result["end_to_end"], loss = timer.images_per_second, timer.loss
        images, targets = loader.training[0]
    cached = CachedBatch(jax.device_put(images), jax.device_put(targets))
    timer = StepTimer(warm_up, steps, batch_size)
    model.fit(cached, epochs=1, steps_per_epoch=warm_up + steps, callbacks=[timer], verbose=0)
    result["cached"] = timer.images_per_second
    result["loss"] = [loss, timer.loss]  # at the end of each timed run
    result["finite_loss"] = bool(np.isfinite(loss) and np.isfinite(timer.loss))
    result["optimizer"] = type(model.optimizer).__name__
    stats = jax.devices()[0].memory_stats() or {}
    result["peak_gib"] = stats.get("peak_bytes_in_use", 0) / 2**30 if stats else None
    keras.backend.clear_session()
    return result


def _step_timer_class():
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Images/s between the ends of step `warm_up` and step `warm_up + steps`, each waited for."""

        def __init__(self, warm_up: int, steps: int, batch_size: int):
            super().__init__()
            self.warm_up, self.steps, self.batch_size = warm_up, steps, batch_size
            self.images_per_second, self.loss, self._start = 0.0, float("nan"), 0.0

        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 not in (self.warm_up, self.warm_up + self.steps):
                return
            loss = float((logs or {})["loss"])  # waits for this step: JAX dispatches ahead
            if batch + 1 == self.warm_up:
                self._start = time.perf_counter()
            else:
                self.images_per_second = self.steps * self.batch_size / (time.perf_counter() - self._start)
                self.loss = loss

    return StepTimer


def _cached_batch_class():
    import keras

    class CachedBatch(keras.utils.PyDataset):
        """The same (images, targets) every step, already on the device."""

        def __init__(self, images, targets):
            super().__init__()
            self.batch = (images, targets)

        @property
        def num_batches(self):
            return None

        def __getitem__(self, index):
            return self.batch

    return CachedBatch


# --- The benchmark: records, then one process per configuration -------------------------------------


def _jax_gpus() -> tuple[int, str]:
    """(GPUs JAX sees, why not where none) in a child process, so this one never imports JAX."""
    probe = "import jax\ntry:\n    print(len(jax.devices('gpu')))\nexcept RuntimeError:\n    print(0)\n"
    finished = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    if finished.returncode != 0:
        return 0, (finished.stderr.strip().splitlines() or ["JAX did not start"])[-1]
    return int(finished.stdout.split()[-1]), "no GPU is visible to JAX"


def write_street_view_records(directory: Path, image_size: int, angle_step: int = 1, photos: int = 0) -> int:
    """Every `angle_step`-th angle of the Street View samples (all `photos`, 0 = every one) at
    `image_size` px JPEG, in shards as rotnet-pipeline writes them; returns the number of records."""
    from benchmarks.common import street_view_samples
    from benchmarks.input_pipeline import _read_rgb
    from pipeline import local_writer

    paths = street_view_samples()[: photos or None]
    if not paths:
        raise FileNotFoundError("no Street View samples: set ROTNET_SHARED_DATA (see benchmarks/common.py)")
    info = local_writer.write_rotations(
        directory,
        {"train": [(path.stem, _read_rgb(path), -1) for path in paths]},
        dataset="street_view",
        angles=range(0, 360, angle_step),
        image_size=image_size,
        image_format="jpeg",
        crop_largest_rect=True,
        num_shards=8,
        config={"writer": "benchmarks.gpu_training"},
    )
    return info.splits["train"].num_records


def _configs(tiny: bool) -> list[tuple[str, str]]:
    chosen = os.environ.get("ROTNET_GPU_BENCH_CONFIGS")
    if not chosen:
        return list(TINY_CONFIGS if tiny else CONFIGS)
    return [tuple(item.split(":", 1)) for item in chosen.split(",") if item]  # type: ignore[misc]


def _run_child(records: Path, model_name: str, precision: str, sizes: dict, workers: int) -> dict:
    arguments = [str(records), model_name, precision, str(sizes["batch_size"]), str(sizes["warm_up"])]
    arguments += [str(sizes["steps"]), str(workers)]
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_training", *arguments],
        capture_output=True,
        text=True,
        env=environment,
    )
    result_lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    if finished.returncode != 0 or not result_lines:
        last = (finished.stderr.strip().splitlines() or [f"exit status {finished.returncode}"])[-1]
        return {"model": model_name, "precision": precision, "error": last[:300]}
    return json.loads(result_lines[-1])


def run(quick: bool = False) -> str:
    tiny = os.environ.get("ROTNET_GPU_BENCH_TINY") == "1"
    gpus, why = _jax_gpus()
    if not gpus and not tiny:
        return (
            f"Unmeasured: {why} on this machine, so training throughput on a GPU was not measured. Run "
            "`scripts/gpu_check.sh` on the GPU machine (JAX with CUDA) to fill in this section."
        )
    sizes = (
        dict(TINY)
        if tiny
        else {"image_size": IMAGE_SIZE, "angle_step": 1, "photos": 0, "batch_size": BATCH_SIZE,
              "warm_up": WARM_UP_STEPS, "steps": 10 if quick else TIMED_STEPS}
    )  # fmt: skip
    deadline = float(os.environ.get("ROTNET_GPU_BENCH_DEADLINE_S", "inf"))
    workers = len(os.sched_getaffinity(0))
    started = time.perf_counter()
    results, left_out = [], []
    with tempfile.TemporaryDirectory(prefix="rotnet-gpu-bench-") as scratch:
        records = Path(scratch) / "street_view"
        records.mkdir()
        num_records = write_street_view_records(
            records, sizes["image_size"], sizes["angle_step"], sizes["photos"]
        )
        written = time.perf_counter() - started
        for model_name, precision in _configs(tiny):
            if time.perf_counter() - started > deadline:
                left_out.append(f"{model_name} {precision}")
                continue
            results.append(_run_child(records, model_name, precision, sizes, workers))
    return report(
        results, left_out, sizes, num_records, workers, written, time.perf_counter() - started, tiny
    )


def report(
    results: list[dict], left_out: list[str], sizes: dict, num_records: int, workers: int,
    written_seconds: float, seconds: float, tiny: bool,
) -> str:  # fmt: skip
    """The Markdown body: one row per model x precision, the targets judged on ResNet50's rows."""
    device = next((result["device"] for result in results if "device" in result), "no device")
    lines = [
        f"{'TINY CPU PATH (not a GPU figure): ' if tiny else ''}{device} under JAX (KERAS_BACKEND=jax), "
        f"{workers} CPU cores decoding. {num_records:,} records: the Street View samples at every "
        f"{sizes['angle_step']}th angle, {sizes['image_size']} px JPEG q95, written in "
        f"{written_seconds:.0f} s (pipeline.local_writer); batch {sizes['batch_size']}, "
        f"{sizes['steps']} timed steps after {sizes['warm_up']} warm-up steps; {seconds:.0f} s in all.",
        "",
        "| model | precision | end to end, images/s | one cached batch, images/s | end to end / cached "
        "| GPU memory peak | loss finite | first fit (compile) |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for result in results:
        if "error" in result:
            lines.append(
                f"| {result['model']} | {result['precision']} | failed: {result['error']} | | | | | |"
            )
            continue
        share = result["end_to_end"] / result["cached"] if result["cached"] else 0.0
        memory = f"{result['peak_gib']:.1f} GiB" if result.get("peak_gib") is not None else "n/a (CPU)"
        lines.append(
            f"| {result['model']} | {result['precision']} | {result['end_to_end']:,.0f} | "
            f"{result['cached']:,.0f} | {share:.0%} | {memory} | "
            f"{'yes' if result['finite_loss'] else 'NO: ' + str(result['loss'])} | {result['first_fit_seconds']:.0f} s |"
        )
    for name in left_out:
        lines.append(
            f"| {name} | | not run: the time budget (ROTNET_GPU_BENCH_DEADLINE_S) was spent | | | | | |"
        )
    resnet = [result for result in results if result["model"] == "resnet50" and "error" not in result]
    if resnet and not tiny:
        best = max(resnet, key=lambda result: result["end_to_end"])
        share = best["end_to_end"] / best["cached"]
        lines += [
            "",
            f"Targets: ResNet50 mixed precision >= {TARGET_IMAGES_PER_SECOND:,} images/s end to end "
            f"({best['end_to_end']:,.0f}, {best['precision']}: "
            f"{'met' if best['end_to_end'] >= TARGET_IMAGES_PER_SECOND else 'not met'}); end to end >= "
            f"{TARGET_END_TO_END_SHARE:.0%} of the cached batch ({share:.0%}: "
            f"{'met' if share >= TARGET_END_TO_END_SHARE else 'not met'}).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":  # one configuration: python -m benchmarks.gpu_training RECORDS MODEL PRECISION ...
    records_arg, model_arg, precision_arg, batch_arg, warm_arg, steps_arg, workers_arg = sys.argv[1:8]
    print(
        json.dumps(
            measure(
                records_arg,
                model_arg,
                precision_arg,
                int(batch_arg),
                int(warm_arg),
                int(steps_arg),
                int(workers_arg),
            )
        )
    )
