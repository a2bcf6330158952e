"""rotnet-export: a tiny trained model exported to LiteRT (float and quantized) and ONNX, checked
against its SavedModel by the command itself; a broken export is refused; the exported files predict
like the run in Predictor and rotnet-correct; FILE is never written over a user's file."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.factories import synthetic_image, write_records_dir
from tools.correct import main as correct_main
from trainer import export, heads, runtimes
from trainer.cli import main as train_main

pytestmark = pytest.mark.slow
ANGLES = (0, 90, 180, 270)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    write_records_dir(root / "records", images_per_split={"train": 8, "validation": 16}, angles=ANGLES)
    args = ["--records", str(root / "records"), "--output", str(root / "run"), "--epochs", "2"]
    args += ["--steps-per-epoch", "4", "--batch-size", "16", "--no-tensorboard"]
    result = CliRunner().invoke(train_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture(scope="module")
def exports(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every format/quantization exported once: {'tflite-none': path, ..., 'onnx-none': path}."""
    out = tmp_path_factory.mktemp("exported")
    made = {}
    for format_name, quantize in [("tflite", q) for q in export.QUANTIZATIONS] + [("onnx", "none")]:
        path = out / f"m-{quantize}.{format_name}"
        args = [str(run_dir), "--format", format_name, "--quantize", quantize, "--output", str(path)]
        result = CliRunner().invoke(export.main, [*args, "--no-progress"])
        assert result.exit_code == 0, f"{format_name} {quantize}: {result.output}"
        made[f"{format_name}-{quantize}"] = path
    return made


def _records(run_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    config = json.loads((run_dir / "train_config.json").read_text())
    return export.read_records(config["records"], "validation", config, count)


def test_steering_tflite_agrees_with_saved_model_in_tensorflows_interpreter(
    run_dir: Path, exports: dict[str, Path]
) -> None:
    import tensorflow as tf

    path = exports["tflite-none"]
    images, _ = _records(run_dir, 64)
    assert len(images) == 64
    with warnings.catch_warnings():  # "deprecated ... use ai_edge_litert": the steering check wants TF's
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.resize_tensor_input(0, list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    exported = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    saved = tf.saved_model.load(str(run_dir / "saved_model"))
    served = saved.serve(tf.constant(images))
    reference = served["probabilities"].numpy()
    assert exported.shape == reference.shape == (64, len(ANGLES))
    # the SavedModel's own angle is the least expected error's bin, as every Predictor decodes it
    least_error = np.asarray(ANGLES)[heads.least_error_bins(reference, ANGLES)]
    np.testing.assert_array_equal(served["angle_degrees"].numpy(), least_error)
    assert np.mean(np.argmax(exported, 1) == np.argmax(reference, 1)) >= 0.98
    np.testing.assert_allclose(exported, reference, atol=1e-4)


@pytest.mark.parametrize("key", ["tflite-none", "onnx-none"])
def test_float_export_passes_parity_and_describes_itself(exports: dict[str, Path], key: str) -> None:
    path = exports[key]
    report = json.loads(Path(f"{path}.parity.json").read_text())
    assert report["records"] == 64  # every validation record (16 images x 4 angles), fewer than 512
    assert report["passed"] is True and report["check"] == "argmax agreement >= 0.99"
    assert report["argmax_agreement"] >= 0.99
    assert report["max_probability_difference"] < 1e-3
    assert report["exported_mean_error_degrees"] == pytest.approx(report["saved_model_mean_error_degrees"])
    description = json.loads(Path(f"{path}.json").read_text())
    assert description["tool"] == "rotnet-export" and description["format"] == key.split("-")[0]
    assert description["model_sha256"] == runtimes.sha256_bytes(path.read_bytes())
    assert description["input"]["dtype"] == "uint8" and description["input"]["shape"] == [None, 28, 28, 1]
    assert description["bin_angles"] == list(ANGLES)
    assert description["preparation"]["image_size"] == [28, 28]
    assert description["train_config"]["model"] == "mnist-cnn"


@pytest.mark.parametrize("quantize", ["float16", "dynamic", "int8"])
def test_quantized_exports_are_smaller_and_within_the_error_budget(
    exports: dict[str, Path], quantize: str
) -> None:
    path = exports[f"tflite-{quantize}"]
    float_size = exports["tflite-none"].stat().st_size
    ratio = path.stat().st_size / float_size
    assert ratio < (0.55 if quantize == "float16" else 0.3), f"{quantize}: {ratio:.2f} of the float size"
    report = json.loads(Path(f"{path}.parity.json").read_text())
    assert report["passed"] is True and report["quantize"] == quantize
    assert report["error_increase_degrees"] == pytest.approx(
        report["exported_mean_error_degrees"] - report["saved_model_mean_error_degrees"]
    )
    assert report["error_increase_degrees"] <= export.DEFAULT_ERROR_BUDGET_DEGREES


def test_onnx_model_takes_uint8_images_and_returns_probabilities(exports: dict[str, Path]) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exports["onnx-none"]), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "images" and image_input.type == "tensor(uint8)"
    assert image_input.shape[1:] == [28, 28, 1]
    assert session.get_outputs()[0].name == "probabilities"
    probabilities = session.run(None, {"images": np.zeros((3, 28, 28, 1), np.uint8)})[0]
    assert probabilities.shape == (3, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_wrongly_scaled_export_fails_parity_and_is_kept_aside(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tensorflow as tf

    original = export.probabilities_function

    def broken(loaded, config):
        right = original(loaded, config)
        height, width = config["image_size"]

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 1], tf.uint8, "images")])
        def wrongly_scaled(images):
            # Pixels scaled to 1/16: every one falls under the binarization threshold.
            return right(tf.cast(tf.cast(images, tf.float32) / 16.0, tf.uint8))

        return wrongly_scaled

    monkeypatch.setattr(export, "probabilities_function", broken)
    target = tmp_path / "m.tflite"
    result = CliRunner().invoke(
        export.main, [str(run_dir), "--format", "tflite", "--output", str(target), "--no-progress"]
    )
    assert result.exit_code == 1, result.output
    assert "failed its parity check" in result.output and "Traceback" not in result.output
    assert not target.exists() and not Path(f"{target}.json").exists()
    kept = tmp_path / "m.rejected.tflite"
    assert kept.is_file()
    report = json.loads((tmp_path / "m.rejected.tflite.parity.json").read_text())
    assert report["passed"] is False and report["argmax_agreement"] < 0.99


def test_judge_applies_the_float_agreement_and_the_quantized_error_budget() -> None:
    base = {"argmax_agreement": 0.99, "error_increase_degrees": 0.0}
    assert export.judge(base, "none", 1.0)["passed"] is True
    assert export.judge({**base, "argmax_agreement": 0.989}, "none", 1.0)["passed"] is False
    assert export.judge({**base, "error_increase_degrees": 1.0}, "int8", 1.0)["passed"] is True
    assert export.judge({**base, "error_increase_degrees": 1.01}, "int8", 1.0)["passed"] is False
    # A quantized export is judged by its error, not by bins that moved to equally good neighbours.
    assert export.judge({"argmax_agreement": 0.5, "error_increase_degrees": 0.2}, "dynamic", 1.0)["passed"]


def test_parity_report_figures() -> None:
    bins = (0, 90, 180, 270)
    reference = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
    exported = np.eye(4, dtype=np.float32)[[0, 1, 2, 0]]
    report = export.parity_report(reference, exported, np.array([0, 90, 180, 180]), bins)
    assert report["argmax_agreement"] == 0.75
    assert report["mean_angle_difference_degrees"] == pytest.approx(90 / 4)
    assert report["saved_model_mean_error_degrees"] == pytest.approx(90 / 4)  # 270 vs 180
    assert report["exported_mean_error_degrees"] == pytest.approx(180 / 4)  # 0 vs 180
    assert report["error_increase_degrees"] == pytest.approx(90 / 4)


@pytest.mark.parametrize("key", ["tflite-none", "onnx-none"])
def test_rotnet_correct_with_exported_file_writes_the_same_corrections(
    run_dir: Path, exports: dict[str, Path], tmp_path: Path, key: str
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(6):
        Image.fromarray(np.rot90(synthetic_image(k + 40, size=28)[:, :, 0], k=k % 4)).save(
            inputs / f"{k}.png"
        )
    rows = {}
    for name, model in [("run", run_dir), ("exported", exports[key])]:
        out = tmp_path / name
        result = CliRunner().invoke(
            correct_main, [str(model), str(inputs), "-o", str(out), "--tta", "4", "--no-progress"]
        )
        assert result.exit_code == 0, result.output
        assert "corrected 6 of 6 images" in result.output
        rows[name] = {Path(r["path"]).name: r for r in json.loads((out / "predictions.json").read_text())}
    for image in rows["run"]:
        assert rows["exported"][image]["angle_degrees"] == rows["run"][image]["angle_degrees"], image
        assert rows["exported"][image]["confidence"] == pytest.approx(
            rows["run"][image]["confidence"], abs=1e-3
        )
        assert (tmp_path / "exported" / image).read_bytes() == (tmp_path / "run" / image).read_bytes()


def test_predictor_loads_exports_with_the_same_tta_predictions(
    run_dir: Path, exports: dict[str, Path]
) -> None:
    from trainer.predict import Predictor

    images, _ = _records(run_dir, 16)
    reference = Predictor.load(str(run_dir / "saved_model")).predict(images, tta=4)
    for key in ("tflite-none", "onnx-none"):
        predictor = Predictor.load(str(exports[key]))
        assert predictor.image_size == (28, 28) and predictor.channels == 1
        prediction = predictor.predict(images, tta=4)
        np.testing.assert_array_equal(prediction.angles_degrees, reference.angles_degrees)
        np.testing.assert_allclose(prediction.probabilities, reference.probabilities, atol=1e-4)


def test_a_model_and_anothers_description_are_never_paired(exports: dict[str, Path], tmp_path: Path) -> None:
    from trainer.predict import Predictor

    copy = tmp_path / "m.tflite"
    data = bytearray(exports["tflite-none"].read_bytes())
    copy.write_bytes(bytes(data))
    with pytest.raises(FileNotFoundError, match=r"m\.tflite\.json"):
        Predictor.load(str(copy))
    Path(f"{copy}.json").write_text(Path(f"{exports['tflite-int8']}.json").read_text())
    with pytest.raises(ValueError, match="SHA-256 differs"):
        Predictor.load(str(copy))
    Path(f"{copy}.json").write_text(json.dumps({"tool": "someone-else"}))
    with pytest.raises(ValueError, match="not written by rotnet-export"):
        Predictor.load(str(copy))


def _export(run_dir: Path, output: Path, *extra: str):
    return CliRunner().invoke(
        export.main, [str(run_dir), "--format", "tflite", "--output", str(output), "--no-progress", *extra]
    )


def test_a_users_file_at_output_is_never_replaced(run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "m.tflite"
    target.write_bytes(b"the user's own model")
    for extra in ([], ["--overwrite"]):
        result = _export(run_dir, target, *extra)
        assert result.exit_code == 2, result.output
        assert target.read_bytes() == b"the user's own model"
    assert "already exists and was not written by rotnet-export" in result.output
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]


def test_no_write_through_a_symlink_at_output(run_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "m.tflite"
    link.symlink_to(victim)
    result = _export(run_dir, link, "--overwrite")
    assert result.exit_code == 2 and "symlink" in result.output, result.output
    assert victim.read_bytes() == b"precious" and link.is_symlink()


def test_overwrite_replaces_only_an_unchanged_earlier_export(run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "m.tflite"
    assert _export(run_dir, target).exit_code == 0
    first = target.read_bytes()
    refused = _export(run_dir, target)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert _export(run_dir, target, "--overwrite").exit_code == 0
    assert target.read_bytes() == first  # the same SavedModel converts to the same bytes
    Path(f"{target}.json").write_text("{}")  # the user changed the description: no longer ours
    changed = _export(run_dir, target, "--overwrite")
    assert changed.exit_code == 2 and "changed since" in changed.output
    assert Path(f"{target}.json").read_text() == "{}"


def test_usage_errors_are_one_line(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong_suffix = _export(run_dir, tmp_path / "m.onnx")
    assert wrong_suffix.exit_code == 2 and "must end in .tflite" in wrong_suffix.output
    args = [str(run_dir), "--format", "onnx", "--quantize", "int8", "--output", str(tmp_path / "m.onnx")]
    assert CliRunner().invoke(export.main, args).exit_code == 2
    not_a_run = _export(tmp_path, tmp_path / "m.tflite")
    assert not_a_run.exit_code == 2 and "holds no saved_model/" in not_a_run.output
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if tf2onnx did not install
    args = [str(run_dir), "--format", "onnx", "--output", str(tmp_path / "m.onnx"), "--no-progress"]
    unavailable = CliRunner().invoke(export.main, args)
    assert unavailable.exit_code == 2, unavailable.output
    assert "ONNX export needs tf2onnx and onnxruntime" in unavailable.output
    assert "Traceback" not in unavailable.output and not (tmp_path / "m.onnx").exists()


def test_a_saved_model_with_truncated_variables_is_one_line(run_dir: Path, tmp_path: Path) -> None:
    """Issue 32, item 2: `truncate -s 100` of variables.data-* made rotnet-export exit 1 with
    "IndexError: Read less bytes than requested" and its traceback."""
    import shutil

    damaged = tmp_path / "run"
    shutil.copytree(run_dir, damaged)
    [variables] = (damaged / "saved_model" / "variables").glob("variables.data-*")
    os.truncate(variables, 100)
    output = tmp_path / "out" / "m.tflite"
    result = CliRunner().invoke(
        export.main,
        [str(damaged), "--format", "tflite", "--output", str(output), "--no-progress"],
        catch_exceptions=False,
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert f"cannot load the SavedModel {damaged / 'saved_model'}" in line and "damaged" in line, line
    assert not output.exists() and not list(output.parent.glob("m*"))


def test_tensorflows_interpreter_runs_the_file_when_ai_edge_litert_is_missing(
    exports: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    images = np.stack([synthetic_image(k) for k in range(5)])
    with_litert = runtimes.TFLiteRuntime.from_file(str(exports["tflite-none"]))
    assert with_litert.backend == "ai-edge-litert"
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as if it were not installed
    fallback = runtimes.TFLiteRuntime.from_file(str(exports["tflite-none"]), num_threads=1)
    assert fallback.backend == "tf.lite"
    np.testing.assert_allclose(fallback.predict(images), with_litert.predict(images), atol=1e-6)
    assert fallback.predict(images[:2]).shape == (2, 4)  # the interpreter follows the batch size
