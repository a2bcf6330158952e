"""Runtimes for exported models (`rotnet-export`): a LiteRT (.tflite) or ONNX (.onnx) file and its
description `FILE.json` beside it.

Each runtime is a small class with `predict(images) -> probabilities`: uint8 images (B, H, W, C),
exactly what the SavedModel's `serve` endpoint takes (the model's first layer preprocesses), to
float32 probabilities (B, num_bins) over the run's `bin_angles` (degrees counter-clockwise).

    runtime = TFLiteRuntime.from_file("m.tflite")          # or OnnxRuntime.from_file("m.onnx")
    probabilities = runtime.predict(batch)                 # (B, H, W, C) uint8 -> (B, bins) float32

`load(path)` reads the description and returns (train config, runtime): `trainer.predict.Predictor`
uses it for `.tflite` / `.onnx` paths, so preparation (`Predictor.prepare`, driven by the config) and
test-time augmentation are the same as for the SavedModel. The description is checked against the
file (SHA-256), so a model and the description of another one are never paired.

LiteRT: the `ai-edge-litert` interpreter when it is installed (the `export` extra), else TensorFlow's
own `tf.lite.Interpreter` (deprecated upstream but present in TensorFlow 2.21). ONNX: `onnxruntime`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from typing import Any

import numpy as np

SIDECAR_SUFFIX = ".json"  # FILE.json: the description written by rotnet-export
EXPORT_TOOL = "rotnet-export"
FORMAT_SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx"}
MAX_MODEL_BYTES = 2 * 2**30  # a model file larger than this is refused, not read
MAX_SIDECAR_BYTES = 16 * 2**20
ONNX_INPUT_NAME = "images"
ONNX_OUTPUT_NAME = "probabilities"


class RuntimeUnavailableError(Exception):
    """The package a runtime needs is not installed (one line saying what to install)."""


def format_of(path: str) -> str | None:
    """'tflite' or 'onnx' from the file name's suffix, else None."""
    suffix = os.path.splitext(str(path))[1].lower()
    return next((name for name, known in FORMAT_SUFFIXES.items() if known == suffix), None)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_regular_file(path: str, limit: int) -> bytes:
    """The bytes of the regular file `path` (a symlink to one is followed), at most `limit` bytes;
    ValueError for anything else (a directory, a FIFO, a larger file)."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"{path} is not a regular file")
    if status.st_size > limit:
        raise ValueError(f"{path} holds {status.st_size} bytes, more than the {limit} read")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} grew past {limit} bytes while it was read")
    return data


def _threads(num_threads: int | None) -> int | None:
    return None if num_threads is None or num_threads <= 0 else int(num_threads)


class TFLiteRuntime:
    """A LiteRT flatbuffer: `predict(uint8 (B, H, W, C)) -> float32 (B, bins)`; the interpreter is
    resized when the batch size changes. `num_threads` None: the interpreter's default."""

    def __init__(self, content: bytes, num_threads: int | None = None):
        self.backend, interpreter_class = self._interpreter_class()
        self._interpreter = interpreter_class(model_content=content, num_threads=_threads(num_threads))
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = -1

    @classmethod
    def from_file(cls, path: str, num_threads: int | None = None) -> TFLiteRuntime:
        return cls(read_regular_file(path, MAX_MODEL_BYTES), num_threads)

    @staticmethod
    def _interpreter_class():
        try:
            from ai_edge_litert.interpreter import Interpreter

            return "ai-edge-litert", Interpreter
        except ImportError:
            pass
        try:
            import tensorflow as tf
        except ImportError:
            raise RuntimeUnavailableError(
                "a .tflite model needs ai-edge-litert or tensorflow: pip install -c constraints.txt "
                "'rotnet[export]'"
            ) from None

        def interpreter(**kwargs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "tf.lite.Interpreter is deprecated": it works in 2.21
                return tf.lite.Interpreter(**kwargs)

        return "tf.lite", interpreter

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if len(images) != self._batch:
            from trainer.quiet import _stderr_to_devnull

            self._interpreter.resize_tensor_input(self._input, list(images.shape), strict=False)
            with _stderr_to_devnull():  # "INFO: Created TensorFlow Lite XNNPACK delegate" from C++
                self._interpreter.allocate_tensors()
            self._batch = len(images)
        self._interpreter.set_tensor(self._input, images)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output), dtype=np.float32)


class OnnxRuntime:
    """An ONNX model run by onnxruntime on the CPU: `predict(uint8 (B, H, W, C)) -> float32 (B, bins)`.
    `num_threads` None: onnxruntime's default (every core)."""

    backend = "onnxruntime"

    def __init__(self, content: bytes, num_threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise RuntimeUnavailableError(
                "an .onnx model needs onnxruntime: pip install -c constraints.txt 'rotnet[export]'"
            ) from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        if _threads(num_threads):
            options.intra_op_num_threads = _threads(num_threads)
            options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                content, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types for a bad file
            raise ValueError(f"onnxruntime cannot read the model ({type(error).__name__}: {error})") from None
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    @classmethod
    def from_file(cls, path: str, num_threads: int | None = None) -> OnnxRuntime:
        return cls(read_regular_file(path, MAX_MODEL_BYTES), num_threads)

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return np.asarray(self._session.run([self._output], {self._input: images})[0], dtype=np.float32)


RUNTIMES = {"tflite": TFLiteRuntime, "onnx": OnnxRuntime}


def runtime_for(format_name: str, content: bytes, num_threads: int | None = None):
    """The runtime of `format_name` ('tflite' or 'onnx') for a model's bytes."""
    return RUNTIMES[format_name](content, num_threads)


def sidecar_path(path: str) -> str:
    """FILE.json: where rotnet-export describes FILE."""
    return str(path) + SIDECAR_SUFFIX


def read_sidecar(path: str) -> dict[str, Any]:
    """The description rotnet-export wrote beside the model `path` (FILE.json); ValueError/OSError with
    a one-line reason when it is missing, foreign or damaged."""
    description_path = sidecar_path(path)
    if not os.path.exists(description_path):
        raise FileNotFoundError(
            f"{path} needs its description {os.path.basename(description_path)} beside it (written by "
            "rotnet-export: image size, channels, preparation, angles)"
        )
    try:
        description = json.loads(read_regular_file(description_path, MAX_SIDECAR_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{description_path} is not rotnet-export's JSON description") from None
    if not isinstance(description, dict) or description.get("tool") != EXPORT_TOOL:
        raise ValueError(f"{description_path} was not written by {EXPORT_TOOL}")
    if not isinstance(description.get("train_config"), dict):
        raise ValueError(f"{description_path} lacks the run's train_config")
    return description


def load(path: str, num_threads: int | None = None) -> tuple[dict[str, Any], Any]:
    """(train config, runtime) for an exported `.tflite` / `.onnx` file and its FILE.json."""
    format_name = format_of(path)
    if format_name is None:
        raise ValueError(f"{path} is neither a .tflite nor an .onnx file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    description = read_sidecar(path)
    content = read_regular_file(path, MAX_MODEL_BYTES)
    if description.get("format") != format_name:
        raise ValueError(f"{sidecar_path(path)} describes a {description.get('format')} model, not {path}")
    if description.get("model_sha256") != sha256_bytes(content):
        raise ValueError(
            f"{path} is not the model {os.path.basename(sidecar_path(path))} describes (SHA-256 differs): "
            "export it again"
        )
    return description["train_config"], runtime_for(format_name, content, num_threads)
