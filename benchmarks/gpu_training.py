"""ResNet50 mixed-precision training throughput at 224 px on a GPU (images/s), when one is visible.

    rotnet-bench gpu_training

Two figures from the real trainer (trainer.train.run, random init so nothing is downloaded):

* end to end: records of the 10 real Street View samples at every angle (224 px JPEG q95, as the
  pipeline writes them) streamed through trainer.data into ResNet50, mixed_float16, batch 256 per GPU;
* model only: the same, fed one cached batch over and over (what the GPU can do when the input
  pipeline keeps up).

Anchor (what the original RotNet setup reaches): ~2,400-2,800 images/s on one A100/H100. Without a GPU the body says so and
measures nothing (a CPU figure would say nothing about the GPU path).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

IMAGE_SIZE = 224
BATCH_PER_GPU = 256


def measure(records: Path, output: Path, batch_size: int, steps: int, precision: str, cached: bool) -> float:
    """Training images/s over `steps` steps after a warm-up epoch, through the trainer's own pieces."""
    import keras
    import tensorflow as tf

    import schemas
    from trainer import data, train
    from trainer.config import TrainConfig, resolve
    from trainer.heads import Head
    from trainer.models import build_model

    info = schemas.load_manifest(str(records))
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    strategy = tf.distribute.MirroredStrategy() if num_gpus > 1 else tf.distribute.get_strategy()
    config = TrainConfig(
        records=str(records), output=str(output), model="resnet50", weights="none", batch_size=batch_size
    )
    config.resolved_precision = train.resolve_precision(precision, num_gpus)
    resolve(config, info, strategy.num_replicas_in_sync)
    head = Head(config.head, tuple(config.bin_angles))
    with strategy.scope():
        model = build_model(config, head)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=head.loss(), metrics=head.metrics())
    counts = [shard.num_records for shard in info.splits["train"].shards]
    dataset = data.training_dataset(info.shard_paths(str(records), "train"), config, head, counts)
    if cached:
        dataset = dataset.take(1).cache().repeat()
    throughput = train.Throughput(config.global_batch_size)
    model.fit(dataset, epochs=2, steps_per_epoch=steps, shuffle=False, callbacks=[throughput], verbose=0)
    return throughput.images_per_second() or 0.0


def run(quick: bool = False) -> str:
    from trainer.quiet import import_tensorflow

    import_tensorflow()  # without its oneDNN/CUDA start-up lines, as the tools do
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return (
            "Unmeasured: no GPU was visible to TensorFlow on this machine, so ResNet50 mixed-precision "
            "training throughput was not measured (anchor: ~2,400-2,800 images/s on one A100/H100). Run "
            "`rotnet-bench gpu_training` on a machine with a GPU to fill in this section."
        )
    from benchmarks.common import street_view_samples
    from benchmarks.input_pipeline import _read_rgb, write_records

    names = [gpu.name for gpu in gpus]
    details = tf.config.experimental.get_device_details(gpus[0])
    steps = 10 if quick else 50
    with tempfile.TemporaryDirectory(prefix="rotnet-gpu-bench-") as scratch:
        records = Path(scratch) / "street_view"
        records.mkdir()
        photos = [(path.stem, _read_rgb(path), -1) for path in street_view_samples()]
        write_records(records, photos, "street_view", IMAGE_SIZE, "jpeg", crop_largest_rect=True)
        started = time.perf_counter()
        end_to_end = measure(records, Path(scratch) / "a", BATCH_PER_GPU, steps, "auto", cached=False)
        model_only = measure(records, Path(scratch) / "b", BATCH_PER_GPU, steps, "auto", cached=True)
        seconds = time.perf_counter() - started
    return "\n".join(
        [
            f"{len(gpus)} x {details.get('device_name', names[0])}, {os.cpu_count()} CPU cores; ResNet50 "
            f"(random init) at {IMAGE_SIZE} px, mixed_float16, batch {BATCH_PER_GPU} per GPU, Adam, "
            f"{steps} timed steps after a warm-up epoch ({seconds:.0f} s in all).",
            "",
            "| input | training images/s |",
            "|---|---:|",
            f"| end to end: shards -> tf.data (JPEG decode on the CPU) -> GPU | {end_to_end:,.0f} |",
            f"| model only: one cached batch | {model_only:,.0f} |",
            "",
            "Anchor: ~2,400-2,800 images/s on one A100/H100. When end to end is well below model only, the "
            "CPU-side JPEG decoding is the bottleneck (more cores, or raw records, fix it).",
        ]
    )
