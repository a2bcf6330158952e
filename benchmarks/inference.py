"""Inference speed of the deployment formats: SavedModel vs rotnet-export's LiteRT (float, int8) and ONNX.

    rotnet-bench inference

Three models with random weights (the speed of a network does not depend on what it learnt, and
nothing is downloaded): mnist-cnn-bn at 28 px grey, mobilenet-v3-small and resnet50 at 224 px RGB,
360 bins. Each is saved as the trainer saves it (trainer.predict.export_saved_model) and converted
with rotnet-export's own converters (trainer.export: tflite float, tflite int8 calibrated on a few
random images, onnx via tf2onnx). Every model takes uint8 (B, H, W, C) and returns probabilities.

For each thread setting (one thread, and every core) a separate worker process loads every format of
a model (a SavedModel through TensorFlow with intra-op threads set before TensorFlow starts; LiteRT
and onnxruntime through trainer.runtimes with `num_threads`) and times `predict` at batch 1 and 64
in windows, the formats taking turns window by window (side by side, so that load from other users
of the machine falls on all of them alike). Reported: images/s as the median of the windows and their
range, and each file's size on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = (("mnist-cnn-bn", 28, 1), ("mobilenet-v3-small", 224, 3), ("resnet50", 224, 3))
FORMATS = ("SavedModel", "tflite float", "tflite int8", "onnx")
BATCHES = (1, 64)
NUM_BINS = 360
CALIBRATION_IMAGES = 8
# 224 px models at batch 64 take seconds per call on 2 cores: fewer windows keep the run to minutes.
SMALL_IMAGE = 64
LARGE_IMAGE_WINDOWS = 3


def _config(model: str, size: int, channels: int) -> dict:
    from trainer.config import TrainConfig, choose_preprocessing

    config = TrainConfig(model=model, weights="none", precision="float32")
    config.dataset = "mnist" if channels == 1 else "street_view"
    config.image_size, config.channels, config.image_format = [size, size], channels, "png"
    config.bin_angles = config.record_angles = list(range(NUM_BINS))
    config.preprocessing = choose_preprocessing(model, config.dataset, None)
    config.resolved_precision = "float32"
    return json.loads(config.to_json())


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def build(work: Path, models=MODELS) -> dict:
    """Save and convert every model; {model: {format: path}}, plus 'bytes' and 'config' per model."""
    import keras

    from trainer import export
    from trainer.heads import Head
    from trainer.models import build_model
    from trainer.predict import export_saved_model
    from trainer.quiet import _stderr_to_devnull

    made = {}
    rng = np.random.default_rng(0)
    for name, size, channels in models:
        config = _config(name, size, channels)
        from trainer.config import TrainConfig

        keras.utils.set_random_seed(0)
        model = build_model(
            TrainConfig.from_dict(config), Head("classification", tuple(config["bin_angles"]))
        )
        saved = work / name / "saved_model"
        export_saved_model(model, config, str(saved))
        calibration = rng.integers(0, 256, (CALIBRATION_IMAGES, size, size, channels), dtype=np.uint8)
        files = {"SavedModel": saved}
        for label, format_name, quantize in (
            ("tflite float", "tflite", "none"),
            ("tflite int8", "tflite", "int8"),
            ("onnx", "onnx", "none"),
        ):
            try:
                with _stderr_to_devnull():  # the converters' C++ log lines
                    content = export.convert(str(saved), config, format_name, quantize, calibration)
            except Exception as error:  # e.g. tf2onnx missing: the table says so
                print(f"{name} {label}: not converted ({type(error).__name__}: {error})", file=sys.stderr)
                continue
            path = work / name / f"model-{quantize}.{format_name}"
            path.write_bytes(content)
            files[label] = path
        made[name] = {
            "size": size,
            "channels": channels,
            "files": {label: str(path) for label, path in files.items()},
            "bytes": {label: _disk_bytes(path) for label, path in files.items()},
        }
        keras.backend.clear_session()
    return made


# --- The worker: one process per thread setting ------------------------------------------------------


def _loaders(threads: int | None):
    from trainer import runtimes

    def saved_model(path: str):
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # referenced by predict: keeps the variables alive

        def predict(images):
            return loaded.serve(tf.constant(images))["probabilities"].numpy()

        return predict

    return {
        "SavedModel": saved_model,
        "tflite float": lambda path: runtimes.TFLiteRuntime.from_file(path, threads).predict,
        "tflite int8": lambda path: runtimes.TFLiteRuntime.from_file(path, threads).predict,
        "onnx": lambda path: runtimes.OnnxRuntime.from_file(path, threads).predict,
    }


def _window(predict, batch: np.ndarray, seconds: float) -> float:
    """Images/s of repeated predict(batch) calls over at least `seconds` (at least one call)."""
    calls, start = 0, time.perf_counter()
    while True:
        predict(batch)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * len(batch) / elapsed


def worker(made: dict, threads: int | None, windows: int, seconds: float) -> dict:
    """{model: {batch: {format: [images/s per window]}}} with every format of a model loaded at once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    loaders = _loaders(threads)
    rng = np.random.default_rng(1)
    results: dict = {}
    for name, facts in made.items():
        predictors = {label: loaders[label](path) for label, path in facts["files"].items()}
        results[name] = {}
        for batch_size in BATCHES:
            batch = rng.integers(
                0, 256, (batch_size, facts["size"], facts["size"], facts["channels"]), np.uint8
            )
            if facts["size"] <= SMALL_IMAGE or batch_size == 1:
                for predict in predictors.values():
                    predict(batch)  # warm-up: allocation, graph tracing, resizing
            # (224 px at batch 64: a call takes seconds; the median of the windows drops the first
            # window's set-up instead of a warm-up call per format.)
            rates: dict[str, list[float]] = {label: [] for label in predictors}
            for _ in range(windows if facts["size"] <= SMALL_IMAGE else min(windows, LARGE_IMAGE_WINDOWS)):
                for label, predict in predictors.items():
                    rates[label].append(_window(predict, batch, seconds))
            results[name][str(batch_size)] = rates
        del predictors
    return results


def _run_worker(made_path: Path, threads: int, windows: int, seconds: float) -> dict:
    from benchmarks.common import REPO_ROOT

    command = [sys.executable, "-m", "benchmarks.inference", str(made_path), str(threads), str(windows)]
    command.append(str(seconds))
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"inference worker failed: {finished.stderr.strip().splitlines()[-1:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _cell(rates: list[float]) -> str:
    if not rates:
        return "-"
    median = float(np.median(rates))
    decimals = 0 if median >= 100 else 1
    return f"{median:.{decimals}f} ({min(rates):.{decimals}f}-{max(rates):.{decimals}f})"


def render(made: dict, results: dict[int, dict], windows: int, seconds: float, load: tuple) -> str:
    from benchmarks.common import load_verdict

    cores = os.cpu_count() or 1
    thread_settings = sorted(results)
    lines = [
        f"Load average (1 min) on the {cores} cores: {load[0]:.1f} at the start, {load[1]:.1f} at the end "
        "(the start is other developers' jobs, the end also this benchmark's own worker; a load above the "
        "core count slows every figure, and two threads can then be slower than one). " + load_verdict(*load),
        "",
        f"Images/s: median of {windows} (28 px) or {min(windows, LARGE_IMAGE_WINDOWS)} (224 px) side-by-side "
        f"windows of >= {seconds:g} s and at least one call (range in brackets); "
        f"random weights, random uint8 pixels, 360 bins, the machine's {cores} cores shared with other "
        "developers' jobs while it ran (so the ranges are wide and the ratios within a row are the "
        "figures to trust). Sizes are the bytes on disk (SavedModel: the whole directory).",
        "",
    ]
    header = "| model | format | size | " + " | ".join(
        f"batch {batch}, {'1 thread' if threads == 1 else f'{threads} threads'}"
        for batch in BATCHES
        for threads in thread_settings
    )
    lines += [header + " |", "|" + " --- |" * (3 + len(BATCHES) * len(thread_settings))]
    for name, facts in made.items():
        for label in FORMATS:
            if label not in facts["files"]:
                lines.append(f"| {name} ({facts['size']} px) | {label} | not converted |" + " - |" * 4)
                continue
            size = f"{facts['bytes'][label] / 2**20:.2f} MiB"
            cells = [
                _cell(results[threads][name][str(batch)][label])
                for batch in BATCHES
                for threads in thread_settings
            ]
            lines.append(f"| {name} ({facts['size']} px) | {label} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(quick: bool = False) -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainer.quiet import import_tensorflow

    import_tensorflow()
    models = MODELS[:1] if quick else MODELS
    windows, seconds = (2, 0.2) if quick else (5, 0.5)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="rotnet-bench-inference-") as directory:
        work = Path(directory)
        started = time.perf_counter()
        made = build(work, models)
        print(f"built and converted in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        made_path = work / "made.json"
        made_path.write_text(json.dumps(made))
        results = {}
        for threads in sorted({1, os.cpu_count() or 1}):
            started = time.perf_counter()
            results[threads] = _run_worker(made_path, threads, windows, seconds)
            print(f"{threads} thread(s) measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return render(made, results, windows, seconds, (load_start, os.getloadavg()[0]))


if __name__ == "__main__":
    # The worker: made.json THREADS WINDOWS SECONDS -> one JSON line of images/s per window.
    made_file, threads_text, windows_text, seconds_text = sys.argv[1:5]
    from trainer.quiet import import_tensorflow

    import_tensorflow()
    figures = worker(
        json.loads(Path(made_file).read_text()), int(threads_text), int(windows_text), float(seconds_text)
    )
    print(json.dumps(figures))
