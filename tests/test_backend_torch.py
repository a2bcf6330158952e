"""rotnet-train --backend torch: builds, trains two steps on the TF-free loader, and its model.keras reloads
under TensorFlow with the same predictions. torch is not in the test extra (PyPI's wheel pulls gigabytes
of CUDA libraries, and CI cannot reach the CPU-only index), so this runs only where torch is installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.factories import write_records_dir
from tests.test_backend_jax import JAX_PREDICTIONS, _environment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None,
        reason="torch is not installed: kept out of CI (PyPI's wheel brings gigabytes of CUDA libraries)",
    ),
]


def test_torch_builds_trains_two_steps_and_reloads_under_tensorflow(tmp_path: Path) -> None:
    from trainer.predict import Predictor

    records = tmp_path / "records"
    write_records_dir(records, images_per_split={"train": 8, "validation": 4}, num_shards=2)
    output = tmp_path / "run"
    finished = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "--backend", "torch", "--records", str(records), "--output",
         str(output), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--no-tensorboard",
         "--workers", "2"],
        capture_output=True, text=True, env=_environment(), cwd=REPO_ROOT, timeout=600,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert json.loads((output / "train_config.json").read_text())["backend"] == "torch"
    predictions = tmp_path / "torch.npz"
    script = JAX_PREDICTIONS.replace('== "jax"', '== "torch"')
    finished = subprocess.run(
        [sys.executable, "-c", script, str(output), str(predictions)],
        capture_output=True, text=True, env=_environment(KERAS_BACKEND="torch"), cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    torch = np.load(predictions)
    probabilities = Predictor.load(str(output)).predict(torch["images"]).probabilities
    assert np.mean(probabilities.argmax(axis=1) == torch["probabilities"].argmax(axis=1)) >= 0.999
    assert float(np.abs(probabilities - torch["probabilities"]).max()) <= 1e-4
