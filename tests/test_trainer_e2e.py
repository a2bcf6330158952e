"""rotnet-train and rotnet-evaluate end to end on tiny records: both model families train a few steps,
write every output, and reload (model.keras and the SavedModel) in a fresh process with the same
predictions; the evaluate CLI writes its JSON and PNGs; user errors are one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import schemas
from tests.conftest import REPO_ROOT
from tests.factories import write_records_dir
from trainer.cli import main as train_main
from trainer.evaluate_cli import main as evaluate_main

pytestmark = pytest.mark.slow

COMMON = ["--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "8", "--no-tensorboard"]

FRESH_PROCESS_SCRIPT = """
import json, sys
import numpy as np
from trainer.predict import Predictor
results = {}
for run, images in json.loads(sys.argv[1]).items():
    batch = np.load(images)
    for name in ("model.keras", "saved_model"):
        prediction = Predictor.load(run + "/" + name).predict(batch, batch_size=3)
        results[run + "/" + name] = prediction.probabilities.tolist()
print(json.dumps(results))
"""


def _train(args: list[str]) -> None:
    result = CliRunner().invoke(train_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An MNIST CNN run (4 angles, 28 px grey) and a ResNet50 run (random init, 32 px RGB JPEG)."""
    root = tmp_path_factory.mktemp("e2e")
    write_records_dir(
        root / "mnist", images_per_split={"train": 8, "validation": 2}, angles=(0, 90, 180, 270)
    )
    write_records_dir(
        root / "photos",
        dataset="street_view",
        images_per_split={"train": 4},  # no validation split: monitors the training angle error
        angles=(0, 90, 180, 270),
        image_size=32,
        channels=3,
        image_format="jpeg",
    )
    _train(["--records", str(root / "mnist"), "--output", str(root / "mnist-run"), *COMMON])
    _train(
        [
            "--records",
            str(root / "photos"),
            "--output",
            str(root / "resnet-run"),
            "--model",
            "resnet50",
            "--weights",
            "none",
            "--head",
            "circular-gaussian",
            "--sigma",
            "10",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "1",
            "--batch-size",
            "4",
            "--no-tensorboard",
        ]
    )
    return {"root": root, "mnist": root / "mnist-run", "resnet": root / "resnet-run"}


def test_training_writes_every_output(trained: dict[str, Path]) -> None:
    for run in (trained["mnist"], trained["resnet"]):
        for name in (
            "model.keras",
            "train_config.json",
            "metrics.json",
            "training_curves.png",
            "history.csv",
        ):
            assert (run / name).stat().st_size > 0, (run, name)
        assert (run / "saved_model" / "saved_model.pb").exists()
        assert (run / "saved_model" / "assets.extra" / "train_config.json").exists()
        assert not (run / "backup").exists()  # a finished run deletes its backup
    metrics = json.loads((trained["mnist"] / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and len(metrics["history"]) == 2
    assert metrics["monitor"] == "val_angle_error"
    best = metrics["best"]["val_angle_error"]
    assert best == min(row["val_angle_error"] for row in metrics["history"])
    assert metrics["best_epoch"] == metrics["best"]["epoch"] + 1
    # The saved (best) model's mean circular error over the 8 validation records, recomputed.
    assert best == pytest.approx(_validation_error(trained["mnist"], trained["root"] / "mnist"), abs=1e-4)
    assert metrics["keep_model"] == "best" and metrics["kept_epoch"] == metrics["best_epoch"]
    assert metrics["num_skipped_shards"] == 0 and metrics["train_images_per_second"] > 0
    config = json.loads((trained["mnist"] / "train_config.json").read_text())
    assert config["bin_angles"] == [0, 90, 180, 270] and config["preprocessing"] == "binarize"
    assert config["resolved_precision"] == "float32" and config["strategy"] == "default"
    resnet = json.loads((trained["resnet"] / "train_config.json").read_text())
    assert resnet["preprocessing"] == "caffe" and resnet["image_size"] == [32, 32] and resnet["channels"] == 3
    assert json.loads((trained["resnet"] / "metrics.json").read_text())["monitor"] == "angle_error"


def _validation_error(run: Path, records: Path) -> float:
    """A published model's mean circular error over the 8 validation records (2 images x 4 angles),
    recomputed from its predictions: each error is 0, 90 or 180 degrees."""
    from pipeline.codec import decode_record_image
    from schemas import tfrecord_file
    from trainer.predict import Predictor

    images, angles = [], []
    for shard in sorted(records.glob("validation-*.tfrecord")):
        for data in tfrecord_file.iter_records(str(shard)):
            record = schemas.decode_example(data)
            images.append(decode_record_image(record))
            angles.append(record.angle_degrees)
    predicted = Predictor.load(str(run)).predict(np.stack(images)).angles_degrees
    difference = np.abs(predicted - np.array(angles)) % 360
    errors = np.minimum(difference, 360 - difference)
    assert len(errors) == 8 and set(errors.tolist()) <= {0, 90, 180}
    return float(errors.mean())


def test_keep_model_last_publishes_the_final_epoch_under_xla(trained: dict[str, Path]) -> None:
    """--keep-model last: model.keras is the final epoch's, whatever its score (a report on the
    validation split is then not flattered by a choice made on it); --jit-compile on trains under XLA
    on this CPU-only machine (Keras's auto leaves it off here)."""
    records, run = trained["root"] / "mnist", trained["root"] / "last-run"
    args = ["--records", str(records), "--output", str(run), "--keep-model", "last", "--jit-compile", "on"]
    _train([*args, "--epochs", "3", "--steps-per-epoch", "2", "--batch-size", "8", "--no-tensorboard"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["keep_model"] == "last" and metrics["kept_epoch"] == 3 == metrics["epochs_run"]
    final = metrics["history"][-1]["val_angle_error"]
    assert final == pytest.approx(_validation_error(run, records), abs=1e-4)
    config = json.loads((run / "train_config.json").read_text())
    assert config["keep_model"] == "last" and config["jit_compile"] == "on"


@pytest.mark.parametrize(("option", "value"), [("--keep-model", "first"), ("--jit-compile", "yes")])
def test_bad_keep_model_and_jit_compile_are_one_line(tmp_path: Path, option: str, value: str) -> None:
    result = CliRunner().invoke(
        train_main, ["--records", str(tmp_path), "--output", str(tmp_path / "out"), option, value]
    )
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dropout", "1.5"], "--dropout must be a rate from 0 to 0.9, not 1.5"),
        (["--dropout", "lots"], "Invalid value for '--dropout'"),
        (
            ["--weight-decay", "-1"],
            "--weight-decay must be a number from 0 up to (not including) 1, not -1.0",
        ),
        (["--pool", "avg"], "Invalid value for '--pool'"),
        (
            ["--pool", "blur", "--model", "resnet50"],
            "--pool blur applies to mnist-cnn, mnist-cnn-bn, not resnet50",
        ),
    ],
)
def test_bad_model_options_are_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(
        train_main, ["--records", str(tmp_path), "--output", str(tmp_path / "out"), *arguments]
    )
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def predictors(trained: dict[str, Path]) -> dict[str, object]:
    from trainer.predict import Predictor

    return {
        "mnist": Predictor.load(str(trained["mnist"])),
        "mnist-saved": Predictor.load(str(trained["mnist"] / "saved_model")),
        "resnet": Predictor.load(str(trained["resnet"] / "model.keras")),
    }


def test_both_formats_reload_in_a_fresh_process_with_the_same_predictions(
    trained: dict[str, Path], predictors: dict
) -> None:
    rng = np.random.default_rng(0)
    expected, inputs = {}, {}
    for name in ("mnist", "resnet"):
        predictor = predictors[name]
        images = rng.integers(0, 256, (5, *predictor.image_size, predictor.channels), dtype=np.uint8)
        path = trained["root"] / f"{name}-images.npy"
        np.save(path, images)
        inputs[str(trained[name])] = str(path)
        prediction = predictor.predict(images)
        assert prediction.probabilities.shape == (5, 4)
        assert set(prediction.angles_degrees.tolist()) <= {0, 90, 180, 270}
        assert np.all((prediction.confidence >= 0) & (prediction.confidence <= 1))
        expected[str(trained[name])] = prediction.probabilities
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT, json.dumps(inputs)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reloaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert len(reloaded) == 4
    for key, probabilities in reloaded.items():
        run = key.rsplit("/", 1)[0]
        np.testing.assert_allclose(np.array(probabilities), expected[run], atol=1e-5, err_msg=key)


def test_prepare_resizes_and_converts_any_photo(predictors: dict) -> None:
    predictor = predictors["mnist-saved"]
    photo = np.zeros((40, 60, 3), np.uint8)
    photo[10:30, 25:35] = 255
    prepared = predictor.prepare(photo)
    assert prepared.shape == (28, 28, 1) and prepared.dtype == np.uint8 and prepared.max() == 255
    assert predictor.prepare(np.zeros((50, 50), np.uint8)).shape == (28, 28, 1)
    resnet = predictors["resnet"]
    assert resnet.prepare(np.zeros((10, 12, 1), np.uint8)).shape == (32, 32, 3)
    assert resnet.predict([]).angles_degrees.shape == (0,)
    with pytest.raises(ValueError, match="prepared"):
        resnet.predict(np.zeros((1, 28, 28, 3), np.uint8))


def test_evaluate_cli_writes_json_and_plots(trained: dict[str, Path]) -> None:
    output = trained["root"] / "evaluation"
    records = trained["root"] / "mnist"
    arguments = [
        "--model",
        str(trained["mnist"]),
        "--records",
        str(records),
        "--tta",
        "4",
        "--output",
        str(output),
    ]
    result = CliRunner().invoke(evaluate_main, arguments)
    assert result.exit_code == 0, result.output
    assert "mean error" in result.output and "180-degree flips" in result.output
    evaluation = json.loads((output / "evaluation.json").read_text())
    assert evaluation["num_records"] == 8 and evaluation["tta"] == 4  # 2 validation images x 4 angles
    assert set(evaluation["within_degrees"]) == {"2", "5", "10"}
    assert set(evaluation["per_angle"]) == {"0", "90", "180", "270"}
    assert evaluation["median_error_degrees"] <= evaluation["p95_error_degrees"] <= 180
    for name in ("per_angle_error.png", "error_histogram.png"):
        assert (output / name).read_bytes()[:4] == b"\x89PNG"


def test_user_errors_are_one_line(tmp_path: Path, trained: dict[str, Path]) -> None:
    runner = CliRunner()
    result = runner.invoke(train_main, ["--records", str(tmp_path), "--output", str(tmp_path / "out")])
    assert (
        result.exit_code == 2 and "no dataset_info.json" in result.output and "Traceback" not in result.output
    )
    manifest = json.loads((trained["root"] / "mnist" / "dataset_info.json").read_text())
    manifest["schema_version"] = 99
    (tmp_path / "dataset_info.json").write_text(json.dumps(manifest))
    result = runner.invoke(train_main, ["--records", str(tmp_path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "schema_version 99" in result.output
    result = runner.invoke(
        train_main, ["--records", str(trained["root"] / "mnist"), "--output", "x", "--weights", "imagenet"]
    )
    assert result.exit_code == 2 and "--weights applies to" in result.output
    result = runner.invoke(
        evaluate_main, ["--model", str(trained["mnist"]), "--records", str(tmp_path / "nope")]
    )
    assert result.exit_code == 2 and "does not exist" in result.output


def test_help_explains_every_option() -> None:
    for command in (train_main, evaluate_main):
        result = CliRunner().invoke(command, ["--help"])
        assert result.exit_code == 0
        for parameter in command.params:
            assert parameter.help, f"{command.name}: option {parameter.name} has no help"
