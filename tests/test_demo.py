"""tools/demo.py (`make demo`): its report and its photo picture, on tiny inputs (no training here:
the steps' outputs are written by hand in the shape the tools write them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.factories import write_records_dir
from tools import demo, figures


def _fake_demo_dir(tmp_path: Path) -> Path:
    demo_dir = tmp_path / "demo"
    write_records_dir(demo_dir / "records", images_per_split={"train": 5, "validation": 3})
    (demo_dir / "run").mkdir()
    (demo_dir / "run" / "metrics.json").write_text(
        json.dumps({"best": {"val_angle_error": 12.34}, "best_epoch": 3})
    )
    (demo_dir / "evaluation").mkdir()
    (demo_dir / "evaluation" / "evaluation.json").write_text(
        json.dumps(
            {
                "num_records": 12,
                "mean_error_degrees": 7.25,
                "median_error_degrees": 3.5,
                "p95_error_degrees": 40.0,
                "within_degrees": {"5": 0.5, "10": 0.75},
                "flip_share": 0.0833,
            }
        )
    )
    return demo_dir


def test_report_states_the_runs_figures_and_shows_every_picture(tmp_path):
    demo_dir = _fake_demo_dir(tmp_path)
    steps = [demo.Step("pipeline", ["rotnet-pipeline", "--dataset", "mnist"], 12.0)]
    rows = [
        {"path": "x/digit-00001-rotated-090.png", "angle_degrees": 95},  # 5 off: within 10
        {"path": "x/digit-00002-rotated-010.png", "angle_degrees": 200},  # 170 off
        {"path": "x/digit-00003-rotated-350.png", "angle_degrees": 3},  # 13 off (across 0)
    ]
    report = demo.write_report(steps, "sample data", rows, demo_dir=demo_dir).read_text()
    assert report.startswith("# rotnet demo report")
    assert "| pipeline | `rotnet-pipeline --dataset mnist` | 12 |" in report
    assert "8 source images read, 0 errors, 4 angles each, 28x28 png." in report
    assert "| train | 5 | 20 | 2 |" in report and "| validation | 3 | 12 | 2 |" in report
    assert "12.3 degrees at epoch 3" in report
    assert (
        "mean error 7.2 degrees, median 3.5, p95 40.0; 50% within 5 degrees, 75% within 10 degrees" in report
    )
    assert "180-degree flips 8.3%" in report
    assert (
        "3 rotated validation digits written as PNG files and corrected by rotnet-correct: 1 predicted within 10"
        in report
    )
    for picture in (
        "records_sheet.png",
        "run/training_curves.png",
        "evaluation/per_angle_error.png",
        "evaluation/error_histogram.png",
        "corrections.png",
        "rotations.png",
    ):
        assert f"]({picture})" in report
    assert "largest-rectangle crop" not in report  # the photo picture is the default (constant) chain


def test_photo_preview_is_the_pipelines_default_records_labelled(tmp_path, shared_data):
    sample = sorted((shared_data / "street-view-samples").glob("*.jpg"))[0]
    path = demo.rotation_preview(tmp_path / "rotations.png", sample=sample)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    columns = len(demo.PREVIEW_ANGLES)
    assert sheet.shape[1] == columns * (figures.CELL + 4) + 4  # one row, a 4 px gap between tiles
    top = figures.LABEL_HEIGHT + 4 + 4
    tiles = [
        sheet[top : top + figures.CELL, 4 + k * (figures.CELL + 4) :][:, : figures.CELL]
        for k in range(columns)
    ]
    # The gap between two tiles is white.
    assert (sheet[top : top + figures.CELL, 4 + figures.CELL : 8 + figures.CELL] == 255).all()
    # Different angles, different pictures; 0 and 360-45k are not copies of one another.
    for k in range(1, columns):
        assert np.abs(tiles[k].astype(int) - tiles[0].astype(int)).mean() > 10
    # Each tile carries a caption (dark text under it), and no two captions are the same picture.
    labels = [
        sheet[top + figures.CELL : top + figures.CELL + figures.LABEL_HEIGHT, 4 + k * (figures.CELL + 4) :][
            :, : figures.CELL
        ]
        for k in range(columns)
    ]
    assert all((label < 100).any() for label in labels)
    assert len({label.tobytes() for label in labels}) == columns
    # 180 degrees is the 0-degree record turned twice by 90 (the constant crop: the same field of view).
    turned = np.rot90(tiles[0], 2).astype(int)
    assert np.abs(turned - tiles[4].astype(int)).mean() < 12
