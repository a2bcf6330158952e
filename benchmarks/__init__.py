"""Benchmarks behind `rotnet-bench`: each module has `run(quick: bool) -> str`, returning a Markdown body
for its section of docs/benchmarks.md. Performance targets live here, never in unit tests."""

from __future__ import annotations

import importlib
from collections.abc import Callable

# name -> (module, one-line description); the order is the order of sections in docs/benchmarks.md.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "geometry": (
        "benchmarks.geometry",
        "Rotation chains: reference, legacy and angle-independent, 224 px JPEG q95, Street View",
    ),
    "pipeline": (
        "benchmarks.pipeline",
        "Beam pipeline: Street View chain vs naive reference, MNIST 5k x 360 through DirectRunner",
    ),
    "input_pipeline": (
        "benchmarks.input_pipeline",
        "tf.data input pipeline and the TF-free loader vs RotNet's Python generator, images/s into the model",
    ),
    "mnist_quality": (
        "benchmarks.mnist_quality",
        "MNIST CNN on the 5k subset, both rendering chains: validation mean angle error under five rotation codes",
    ),
    "train_step": (
        "benchmarks.train_step",
        "The MNIST recipe's training step on CPU: XLA on/off, batch 128/256, oneDNN off; images/s side by side",
    ),
    "cue_audit": (
        "benchmarks.cue_audit",
        "Rotation cues: the cue audit of rotnet 0.1's and rotnet 0.2's records, MNIST and Street View",
    ),
    "inference": (
        "benchmarks.inference",
        "Inference: SavedModel vs rotnet-export's LiteRT (float, int8) and ONNX, images/s and size on disk",
    ),
    "serve": (
        "benchmarks.serve",
        "rotnet-serve: requests/s and p50/p99 latency at 1 and 16 clients, dynamic batching on and off",
    ),
    "gpu_training": (
        "benchmarks.gpu_training",
        "Training throughput on a GPU under JAX: ResNet50 and MobileNetV3-Small, mixed precision, end to end vs one cached batch",
    ),
    "runners": (
        "benchmarks.runners",
        "DirectRunner (1, 2 workers) vs a Flink cluster (parallelism 1, 2): records/s and start-up cost",
    ),
}


def load(name: str) -> Callable[..., str]:
    module_name, _ = BENCHMARKS[name]
    return importlib.import_module(module_name).run
