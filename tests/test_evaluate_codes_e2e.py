"""rotnet-evaluate --rotation-codes: one row per code on the split's original MNIST digits, in evaluation.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import local_writer
from trainer.cli import main as train_main
from trainer.evaluate_cli import main as evaluate_main
from trainer.robustness import ROTATION_CODES

pytestmark = pytest.mark.slow


def test_evaluate_cli_scores_every_rotation_code(tmp_path: Path, shared_data: Path) -> None:
    mnist_dir = shared_data / "mnist-5k"
    sources = local_writer.mnist_sources(mnist_dir, validation_fraction=0.1, subset_fraction=0.03)
    records = tmp_path / "records"
    local_writer.write_rotations(
        records,
        sources,
        dataset="mnist",
        angles=range(0, 360, 30),
        image_size=28,
        crop_largest_rect=False,
        rendering="angle-independent",
        config={"mnist_dir": str(mnist_dir), "validation_fraction": 0.1, "subset_fraction": 0.03},
    )
    run = tmp_path / "run"
    arguments = ["--records", str(records), "--output", str(run), "--epochs", "1", "--steps-per-epoch", "2"]
    result = CliRunner().invoke(train_main, [*arguments, "--batch-size", "8", "--no-tensorboard"])
    assert result.exit_code == 0, result.output
    output = tmp_path / "evaluation"
    arguments = ["--model", str(run), "--records", str(records), "--output", str(output), "--tta", "4"]
    result = CliRunner().invoke(
        evaluate_main, [*arguments, "--rotation-codes", "all", "--codes-angles-per-image", "2"]
    )
    assert result.exit_code == 0, result.output
    for code in ROTATION_CODES:
        assert code in result.output
    evaluation = json.loads((output / "evaluation.json").read_text())
    rows = evaluation["rotation_codes"]["rows"]
    assert [(row["code"], row["tta"]) for row in rows] == [
        (code, tta) for code in ROTATION_CODES for tta in (1, 4)
    ]
    num_images = len(sources["validation"])
    assert all(row["num_predictions"] == 2 * num_images for row in rows)
    assert set(evaluation["rotation_codes"]["worst_over_best"]) == {"tta 1", "tta 4"}
    assert evaluation["rotation_codes"]["served"] is True and "served as a photo" in result.output
    raw_output = tmp_path / "evaluation-raw"
    raw_arguments = [*arguments[:5], str(raw_output), "--tta", "1", "--rotation-codes", "all"]
    result = CliRunner().invoke(evaluate_main, [*raw_arguments, "--codes-input", "raw"])
    assert result.exit_code == 0, result.output
    assert json.loads((raw_output / "evaluation.json").read_text())["rotation_codes"]["served"] is False
    result = CliRunner().invoke(evaluate_main, [*raw_arguments, "--codes-input", "cooked"])
    assert result.exit_code == 2 and "Invalid value for '--codes-input'" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(evaluate_main, [*arguments, "--rotation-codes", "pipeline,nearest"])
    assert result.exit_code != 0 and "unknown rotation codes nearest" in result.output
