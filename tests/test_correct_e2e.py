"""rotnet-correct with a real model from rotnet-train: predictions come from the model's bins and each
output is its input turned back by exactly the predicted angle (right angles: pixel-exact)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.factories import synthetic_image, write_records_dir
from tools.correct import main as correct_main
from trainer.cli import main as train_main

pytestmark = pytest.mark.slow
ANGLES = (0, 90, 180, 270)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("correct-e2e")
    write_records_dir(root / "records", images_per_split={"train": 6, "validation": 2}, angles=ANGLES)
    args = ["--records", str(root / "records"), "--output", str(root / "run"), "--epochs", "1"]
    args += ["--steps-per-epoch", "2", "--batch-size", "8", "--no-tensorboard"]
    result = CliRunner().invoke(train_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.mark.parametrize("tta", ["1", "4"])
def test_real_model_corrects_by_its_predicted_angle(model_dir: Path, tmp_path: Path, tta: str) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    digits = {f"digit{k}.png": np.rot90(synthetic_image(k, size=28)[:, :, 0], k=k) for k in range(4)}
    for name, pixels in digits.items():
        Image.fromarray(pixels).save(inputs / name)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        correct_main, [str(model_dir), str(inputs), "-o", str(out), "--tta", tta, "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "corrected 4 of 5 images, 1 skipped" in result.output
    rows = {Path(row["path"]).name: row for row in json.loads((out / "predictions.json").read_text())}
    assert rows["broken.png"]["error"] and rows["broken.png"]["angle_degrees"] is None
    for name, pixels in digits.items():
        angle = rows[name]["angle_degrees"]
        assert angle in ANGLES, f"{name}: {angle} is not one of the model's bins"
        assert 0.0 <= rows[name]["confidence"] <= 1.0
        written = Image.open(out / name)
        assert written.mode == "L", "a grey input is written back grey"
        # Turning back by a right angle is exact.
        np.testing.assert_array_equal(np.asarray(written), np.rot90(pixels, k=-angle // 90))
