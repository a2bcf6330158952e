"""`rotnet-export RUN_DIR --format tflite|onnx --output FILE`: a run's SavedModel as one file for
phones, browsers and batch jobs without TensorFlow, checked against the SavedModel before it is kept.

    rotnet-export data/runs/mnist --format tflite --output mnist.tflite
    rotnet-export data/runs/mnist --format tflite --quantize int8 --output mnist-int8.tflite
    rotnet-export data/runs/street_view --format onnx --output street_view.onnx

The exported model is the SavedModel's `serve` endpoint cut down to its probabilities: it takes uint8
images (B, H, W, C) (RGB, or grey with C = 1) exactly as the SavedModel does, preprocessing included,
and returns float32 probabilities (B, num_bins) over the run's `bin_angles` (degrees counter-clockwise).

* tflite: `tf.lite.TFLiteConverter` from the SavedModel. `--quantize float16` halves the weights,
  `dynamic` stores them as int8 (dynamic-range), `int8` also quantizes the activations, calibrated on
  `--calibration-records` records of the run's own training split.
* onnx: tf2onnx (the `export` extra; opset ONNX_OPSET) from the frozen graph, run with onnxruntime;
  float only. Without tf2onnx/onnxruntime the command says so in one line (exit 2).

Three files are written (each to a temporary file beside its name, then moved into place):
FILE, FILE.json (the description a serving path needs: input shape and dtype, image size, channels,
crop and resizing, angles, the run's whole train_config with any preparation dict it holds copied
through unchanged, and the model's SHA-256) and FILE.parity.json.

Parity, measured after every export on `--parity-records` validation records (default 512) of the
run's records (`--records`, default the directory the run trained on): the share of records whose
argmax bin is the SavedModel's, the mean angle between the two predictions, and the mean error of
each against the true angles. A float export must agree on at least FLOAT_AGREEMENT of the records; a
quantized one (float16, dynamic, int8) may add at most `--error-budget` degrees to the SavedModel's
mean error. An export that fails is not written at FILE: it is kept aside as NAME.rejected.SUFFIX
(with its .json and .parity.json) for a look, and the command exits 1.

FILE is never written over a file rotnet-export did not write: an existing FILE (or FILE.json,
FILE.parity.json) is refused unless `--overwrite` is given and the ledger `.rotnet-export.json` in
FILE's directory shows it is an unchanged earlier export (schemas.output_rules); nothing is written
through a symlink. Exit status: 0 exported, 1 failed (parity, conversion, writing), 2 usage.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm import tqdm

from pipeline import interrupts
from trainer import runtimes
from trainer.heads import circular_difference_degrees

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
FORMATS = tuple(runtimes.FORMAT_SUFFIXES)
DEFAULT_PARITY_RECORDS = 512
DEFAULT_CALIBRATION_RECORDS = 256
FLOAT_AGREEMENT = 0.99  # share of identical argmax bins a float export must reach
DEFAULT_ERROR_BUDGET_DEGREES = 1.0  # mean error a quantized export may add to the SavedModel's
ONNX_OPSET = 17
LEDGER_NAME = ".rotnet-export.json"
PARITY_SUFFIX = ".parity.json"
REJECTED_TAG = ".rejected"
PARITY_BATCH = 64


class ExportError(Exception):
    """A failure the user can act on (one line; exit 1)."""


class ExportUnavailableError(Exception):
    """This export cannot be made with the installed packages (one line; exit 2)."""


# --- The model -------------------------------------------------------------------------------------


def find_saved_model(run: str) -> str:
    """The SavedModel of a rotnet-train --output directory, or `run` itself when it is one."""
    from trainer.config import SAVED_MODEL_DIR

    if os.path.isfile(os.path.join(run, "saved_model.pb")):
        return run
    if os.path.isfile(os.path.join(run, SAVED_MODEL_DIR, "saved_model.pb")):
        return os.path.join(run, SAVED_MODEL_DIR)
    raise ExportError(f"{run} holds no {SAVED_MODEL_DIR}/ (rotnet-train writes it): nothing to export")


def probabilities_function(loaded, config: dict[str, Any]):
    """A tf.function uint8 images (None, H, W, C) -> probabilities (None, bins): the SavedModel's serve
    endpoint without its angle and confidence outputs (which need no model)."""
    import tensorflow as tf

    height, width = config["image_size"]
    endpoint = loaded.serve

    @tf.function(
        input_signature=[tf.TensorSpec([None, height, width, config["channels"]], tf.uint8, "images")]
    )
    def probabilities(images):
        return tf.identity(endpoint(images)["probabilities"], name=runtimes.ONNX_OUTPUT_NAME)

    return probabilities


def convert_tflite(
    saved_model: str, config: dict[str, Any], quantize: str, calibration: np.ndarray | None = None
) -> bytes:
    """The LiteRT flatbuffer of the SavedModel's probabilities. `calibration` (uint8 images) is
    required for int8: the converter measures the activations' ranges on it."""
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model)
    function = probabilities_function(loaded, config).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], loaded)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        if calibration is None or not len(calibration):
            raise ExportError("int8 quantization needs calibration images and none were read")

        def representative():
            for image in calibration:
                yield [image[np.newaxis]]

        converter.representative_dataset = representative
    return bytes(converter.convert())


def _rename_onnx(model, old: str, new: str) -> None:
    for value in [*model.graph.input, *model.graph.output]:
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def check_onnx_available() -> None:
    """Raise ExportUnavailableError unless tf2onnx and onnxruntime import with this TensorFlow."""
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except Exception as error:  # ImportError, or a version clash raised while importing
        raise ExportUnavailableError(
            f"ONNX export needs tf2onnx and onnxruntime, which do not import here ({type(error).__name__}: "
            f"{error}); install the export extra: pip install -c constraints.txt 'rotnet[export]'"
        ) from None


def convert_onnx(saved_model: str, config: dict[str, Any]) -> bytes:
    """The ONNX model (opset ONNX_OPSET) of the SavedModel's probabilities: the function frozen
    (variables as constants), converted by tf2onnx; input `images`, output `probabilities`."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    loaded = tf.saved_model.load(saved_model)
    frozen = convert_variables_to_constants_v2(probabilities_function(loaded, config).get_concrete_function())
    input_name, output_name = frozen.inputs[0].name, frozen.outputs[0].name
    model, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(), input_names=[input_name], output_names=[output_name], opset=ONNX_OPSET
    )
    _rename_onnx(model, input_name, runtimes.ONNX_INPUT_NAME)
    _rename_onnx(model, output_name, runtimes.ONNX_OUTPUT_NAME)
    return model.SerializeToString()


def convert(saved_model: str, config: dict[str, Any], format_name: str, quantize: str, calibration) -> bytes:
    if format_name == "onnx":
        return convert_onnx(saved_model, config)
    return convert_tflite(saved_model, config, quantize, calibration)


# --- Records -----------------------------------------------------------------------------------------


def read_records(
    records: str, split: str, config: dict[str, Any], count: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` records of `split` (shard order; the pipeline writes shards fully mixed, so any
    stretch is a sample of every image and angle) whose angle is one of the model's bins:
    (uint8 images (N, H, W, C), true angles (N,) degrees counter-clockwise)."""
    import tensorflow as tf

    import schemas
    from schemas import verify
    from trainer import data
    from trainer.config import TrainConfig

    try:
        info = schemas.load_manifest(records)
    except Exception as error:
        raise ExportError(f"cannot read the records {records} ({error}); give them with --records") from None
    if split not in info.splits:
        raise ExportError(f"the records {records} hold no {split!r} split; give others with --records")
    height, width = config["image_size"]
    if [info.image.height, info.image.width, info.image.channels] != [height, width, config["channels"]]:
        raise ExportError(
            f"the records {records} hold {info.image.height}x{info.image.width}x{info.image.channels} "
            f"images but the model takes {height}x{width}x{config['channels']}; give its own with --records"
        )
    problems = verify.check_shards(info, records, [split])
    if problems:
        raise ExportError(
            verify.damaged_shard_message(problems, "re-run the pipeline or give other --records")
        )
    train_config = TrainConfig.from_dict(config)
    train_config.records, train_config.image_format = records, info.image.format
    train_config.compression, train_config.record_angles = info.compression, sorted(info.angles_degrees)
    paths = info.shard_paths(records, split)
    images, angles, seen = [], [], 0
    try:
        for batch, true, _ in data.evaluation_dataset(paths, train_config, PARITY_BATCH):
            if seen >= count:
                break
            images.append(batch.numpy()[: count - seen])
            angles.append(true.numpy()[: count - seen])
            seen += len(images[-1])
    except tf.errors.DataLossError as error:
        raise ExportError(data.damaged_record_message(paths, error, "re-run the pipeline")) from None
    if not seen:
        raise ExportError(f"the {split!r} split of {records} holds no records at the model's angles")
    return np.concatenate(images), np.concatenate(angles).astype(np.int64)


# --- Parity ------------------------------------------------------------------------------------------


def parity_report(
    reference: np.ndarray, exported: np.ndarray, true_angles: np.ndarray, bin_angles
) -> dict[str, Any]:
    """Exported vs SavedModel probabilities (N, bins) for the same images with true angles (N,):
    agreement of the argmax bins, angle differences and each model's mean error, in degrees."""
    bins = np.asarray(bin_angles)
    reference_angles = bins[np.argmax(reference, axis=1)]
    exported_angles = bins[np.argmax(exported, axis=1)]
    difference = circular_difference_degrees(reference_angles, exported_angles)
    reference_error = circular_difference_degrees(reference_angles, true_angles)
    exported_error = circular_difference_degrees(exported_angles, true_angles)
    return {
        "records": len(true_angles),
        "argmax_agreement": float(np.mean(reference_angles == exported_angles)),
        "mean_angle_difference_degrees": float(np.mean(difference)),
        "max_angle_difference_degrees": float(np.max(difference)),
        "max_probability_difference": float(np.max(np.abs(reference - exported))),
        "saved_model_mean_error_degrees": float(np.mean(reference_error)),
        "exported_mean_error_degrees": float(np.mean(exported_error)),
        "error_increase_degrees": float(np.mean(exported_error) - np.mean(reference_error)),
    }


def judge(report: dict[str, Any], quantize: str, error_budget: float) -> dict[str, Any]:
    """The report with its check and verdict: a float export must agree on FLOAT_AGREEMENT of the
    records, a quantized one may add at most `error_budget` degrees of mean error."""
    if quantize == "none":
        check = f"argmax agreement >= {FLOAT_AGREEMENT:g}"
        passed = report["argmax_agreement"] >= FLOAT_AGREEMENT
    else:
        check = f"mean error increase <= {error_budget:g} degrees"
        passed = report["error_increase_degrees"] <= error_budget
    return {**report, "check": check, "passed": bool(passed)}


def summary_line(report: dict[str, Any]) -> str:
    return (
        f"parity on {report['records']} records: {100 * report['argmax_agreement']:.1f}% identical bins, "
        f"mean angle difference {report['mean_angle_difference_degrees']:.2f} deg, mean error "
        f"{report['exported_mean_error_degrees']:.2f} deg exported vs "
        f"{report['saved_model_mean_error_degrees']:.2f} deg SavedModel ({report['check']}: "
        f"{'passed' if report['passed'] else 'FAILED'})"
    )


# --- Description ------------------------------------------------------------------------------------


def describe(
    config: dict[str, Any], format_name: str, quantize: str, content: bytes, model_name: str, source: str
) -> dict[str, Any]:
    """FILE.json: what a serving path needs beside the model file."""
    from schemas.version import PACKAGE_VERSION

    height, width = config["image_size"]
    channels = config["channels"]
    return {
        "tool": runtimes.EXPORT_TOOL,
        "rotnet_version": PACKAGE_VERSION,
        "format": format_name,
        "quantize": quantize,
        "model_file": model_name,
        "model_bytes": len(content),
        "model_sha256": runtimes.sha256_bytes(content),
        "source_saved_model": os.path.abspath(source),
        "input": {
            "name": runtimes.ONNX_INPUT_NAME,
            "dtype": "uint8",
            "shape": [None, height, width, channels],
            "layout": "NHWC",
            "pixels": "RGB" if channels == 3 else "grey",
            "note": "plain 0..255 pixels: the model preprocesses them itself",
        },
        "output": {
            "name": runtimes.ONNX_OUTPUT_NAME,
            "dtype": "float32",
            "shape": [None, len(config["bin_angles"])],
            "meaning": "probability of each bin_angles rotation (degrees counter-clockwise) being the one "
            "the image shows; the predicted angle is the bin of the least expected error, argmin over bins "
            "of probabilities @ (circular distance between bins), as trainer.heads.least_error_bins; "
            "rotate the image clockwise by it to correct it",
        },
        "bin_angles": list(config["bin_angles"]),
        "preparation": {
            "image_size": [height, width],
            "channels": channels,
            "how": "trainer.predict.Predictor.prepare with train_config (center square crop, resize "
            "with area averaging when shrinking, grey/RGB conversion)",
            # Whatever preparation the run recorded as a dict (e.g. its view), copied through unchanged.
            "from_train_config": {key: value for key, value in config.items() if isinstance(value, dict)},
        },
        "train_config": config,
    }


# --- Writing -----------------------------------------------------------------------------------------


def rejected_name(name: str) -> str:
    """m.tflite -> m.rejected.tflite: where an export that failed its parity check is kept."""
    stem, suffix = os.path.splitext(name)
    return f"{stem}{REJECTED_TAG}{suffix}"


def output_names(name: str) -> list[str]:
    return [name, runtimes.sidecar_path(name), name + PARITY_SUFFIX]


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


def open_output(output: Path, overwrite: bool):
    """The OutputTree of FILE's directory, refusing up front (click.UsageError) what may not be written."""
    from schemas.output_rules import OutputRefusedError, OutputTree

    name = output.name
    if not name or name in (".", "..") or str(output).endswith(os.sep):
        raise click.BadParameter(f"{output} is not a file name", param_hint="--output")
    if os.path.isdir(output) and not os.path.islink(output):
        raise click.BadParameter(f"{output} is a directory; give a file name", param_hint="--output")
    try:
        tree = OutputTree(output.parent, runtimes.EXPORT_TOOL, LEDGER_NAME)
    except OutputRefusedError as error:
        raise click.UsageError(str(error).replace("another -o", "another --output")) from None
    if not os.access(output.parent, os.W_OK | os.X_OK):  # found now, not after minutes of converting
        tree.close()
        raise click.UsageError(f"cannot write in {output.parent}: choose another --output")
    try:
        for path in output_names(name):
            if os.path.lexists(output.parent / path) and not overwrite:
                raise click.UsageError(
                    f"{output.parent / path} exists: rotnet-export writes no file over it; give --overwrite "
                    "to replace an earlier rotnet-export output, or another --output"
                )
            tree.check_replaceable(path)
        for path in output_names(rejected_name(name)):
            tree.check_replaceable(path)
    except OutputRefusedError as error:
        tree.close()
        raise click.UsageError(str(error).replace("another -o", "another --output")) from None
    except click.UsageError:
        tree.close()
        raise
    return tree


def write_export(tree, name: str, content: bytes, description: dict, report: dict) -> list[str]:
    """Model, then description, then parity report (each written aside and renamed); the ledger last."""
    written = [
        str(tree.write(name, content)),
        str(tree.write(runtimes.sidecar_path(name), _json_bytes(description))),
        str(tree.write(name + PARITY_SUFFIX, _json_bytes(report))),
    ]
    tree.save_ledger()
    return written


# --- Command -----------------------------------------------------------------------------------------


class UnavailableExit(click.ClickException):
    exit_code = 2


@click.command(
    cls=interrupts.Command,
    interrupted="nothing was written at --output (the model is written once it passed parity); rerun "
    "the same command",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("run", metavar="RUN_DIR", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--format",
    "format_name",
    type=click.Choice(FORMATS),
    required=True,
    help="tflite: a LiteRT flatbuffer (TensorFlow's converter); onnx: an ONNX model (tf2onnx, float only).",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="The model file to write, ending in .tflite or .onnx; FILE.json (its description) and "
    "FILE.parity.json are written beside it.",
)
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZATIONS),
    default="none",
    show_default=True,
    help="tflite only. float16: half-precision weights; dynamic: int8 weights; int8: int8 weights and "
    "activations, calibrated on the run's training records. Quantized exports must keep within --error-budget.",
)
@click.option(
    "--records",
    default=None,
    help="Records directory (local or gs://) for the parity check (validation split) and int8 calibration "
    "(train split); default: the directory the run trained on (train_config.json's records).",
)
@click.option(
    "--parity-records",
    type=click.IntRange(1),
    default=DEFAULT_PARITY_RECORDS,
    show_default=True,
    help="Validation records on which the exported model is compared with the SavedModel.",
)
@click.option(
    "--calibration-records",
    type=click.IntRange(1),
    default=DEFAULT_CALIBRATION_RECORDS,
    show_default=True,
    help="Training records the int8 converter calibrates the activations on.",
)
@click.option(
    "--error-budget",
    type=click.FloatRange(0),
    default=DEFAULT_ERROR_BUDGET_DEGREES,
    show_default=True,
    help="Degrees of mean angle error a quantized export may add to the SavedModel's on the parity "
    f"records (a float export must instead agree on {FLOAT_AGREEMENT:.0%} of the argmax bins).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace FILE (and its .json/.parity.json) when it is an unchanged earlier rotnet-export output; "
    "never any other file.",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def main(
    run: str,
    format_name: str,
    output: Path,
    quantize: str,
    records: str | None,
    parity_records: int,
    calibration_records: int,
    error_budget: float,
    overwrite: bool,
    no_progress: bool,
) -> None:
    """Export the SavedModel of RUN_DIR (a rotnet-train --output directory, or a SavedModel) to one
    .tflite or .onnx file, and check it against the SavedModel on validation records."""
    suffix = runtimes.FORMAT_SUFFIXES[format_name]
    if output.suffix.lower() != suffix:
        raise click.BadParameter(f"a {format_name} model file must end in {suffix}", param_hint="--output")
    if format_name == "onnx" and quantize != "none":
        raise click.BadParameter("ONNX export is float only: use --quantize none", param_hint="--quantize")
    try:
        saved_model = find_saved_model(run)
    except ExportError as error:
        raise click.BadParameter(str(error), param_hint="RUN_DIR") from None
    tree = open_output(output, overwrite)
    with tree:
        try:
            _export(
                tree, saved_model, format_name, output, quantize, records, parity_records,
                calibration_records, error_budget, no_progress,
            )  # fmt: skip
        except ExportUnavailableError as error:
            raise UnavailableExit(str(error)) from None
        except ExportError as error:
            raise click.ClickException(str(error)) from None


def _export(
    tree,
    saved_model: str,
    format_name: str,
    output: Path,
    quantize: str,
    records: str | None,
    parity_records: int,
    calibration_records: int,
    error_budget: float,
    no_progress: bool,
) -> None:
    """Convert, check parity on the validation records, then write the file (or set it aside)."""
    from trainer.quiet import import_tensorflow

    import_tensorflow()  # quietly, before tf2onnx imports it
    if format_name == "onnx":
        check_onnx_available()
    from trainer.predict import Predictor

    try:
        reference = Predictor.load(saved_model)
    except Exception as error:  # TensorFlow's loader raises IndexError, OpErrors, ... for damaged files
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ExportError(
            f"cannot load the SavedModel {saved_model} ({type(error).__name__}: {reason}): it is damaged "
            "(e.g. a truncated variables file); export a run whose rotnet-train finished, or retrain it"
        ) from None
    config = reference.config
    records = records or config.get("records")
    if not records:
        raise ExportError(f"{saved_model}'s train_config names no records: give them with --records")
    images, true_angles = read_records(records, "validation", config, parity_records)
    calibration = (
        read_records(records, "train", config, calibration_records)[0] if quantize == "int8" else None
    )
    content = _convert_quietly(saved_model, config, format_name, quantize, calibration)
    try:
        runtime = runtimes.runtime_for(format_name, content)
    except runtimes.RuntimeUnavailableError as error:
        raise ExportUnavailableError(str(error)) from None
    exported = Predictor(config, runtime.predict, str(output))
    report = judge(_parity(reference, exported, images, true_angles, no_progress), quantize, error_budget)
    report.update(
        format=format_name, quantize=quantize, records_dir=str(records), split="validation",
        saved_model=os.path.abspath(saved_model), runtime=runtime.backend,
    )  # fmt: skip
    click.echo(summary_line(report))
    name = output.name if report["passed"] else rejected_name(output.name)
    _publish(
        tree,
        output,
        name,
        content,
        describe(config, format_name, quantize, content, name, saved_model),
        report,
    )


def _convert_quietly(saved_model: str, config: dict, format_name: str, quantize: str, calibration) -> bytes:
    """`convert`, with the converters' C++ logging (grappler sessions, quantizer settings) silenced;
    their failures still come back as Python exceptions, reported in one line."""
    from trainer.quiet import _stderr_to_devnull

    click.echo(f"converting {saved_model} to {format_name} (quantize {quantize}) ...", err=True)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    try:
        with _stderr_to_devnull():
            return convert(saved_model, config, format_name, quantize, calibration)
    except ExportError:
        raise
    except Exception as error:  # the converters raise many types; the first line says what went wrong
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExportError(f"the {format_name} conversion failed ({type(error).__name__}: {first})") from None


def _parity(reference, exported, images: np.ndarray, true_angles: np.ndarray, no_progress: bool) -> dict:
    """parity_report of the exported model against the SavedModel on the same images, in batches."""
    reference_parts, exported_parts = [], []
    with tqdm(total=len(images), unit="img", disable=no_progress, desc="parity") as bar:
        for start in range(0, len(images), PARITY_BATCH):
            batch = images[start : start + PARITY_BATCH]
            reference_parts.append(reference.predict(batch, batch_size=PARITY_BATCH).probabilities)
            exported_parts.append(exported.predict(batch, batch_size=PARITY_BATCH).probabilities)
            bar.update(len(batch))
    return parity_report(
        np.concatenate(reference_parts),
        np.concatenate(exported_parts),
        true_angles,
        reference.config["bin_angles"],
    )


def _publish(tree, output: Path, name: str, content: bytes, description: dict, report: dict) -> None:
    """Write the export as `name`: OUTPUT's name when it passed, else its rejected_name (and exit 1)."""
    from schemas.output_rules import OutputRefusedError

    try:
        write_export(tree, name, content, description, report)
    except OutputRefusedError as error:
        raise ExportError(f"the export was not written: {error}") from None
    size = f"{len(content) / 2**20:.2f} MiB"
    if not report["passed"]:
        raise ExportError(
            f"the export failed its parity check ({report['check']}); it is kept aside as "
            f"{output.parent / name} ({size}), nothing was written at {output}"
        )
    click.echo(f"wrote {output} ({size}), {output}.json and {output}{PARITY_SUFFIX}")


if __name__ == "__main__":
    main()
