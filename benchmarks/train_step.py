"""The MNIST recipe's training step on this machine's CPU: what buys epochs within the 30-minute budget.

    rotnet-bench train_step            # ~12 minutes on 2 cores; --quick: one short round

Expected (2 AMD EPYC cores): the default step ~900 images/s; XLA ~0.4x of it (oneDNN's convolutions
beat XLA's on a CPU); batch 256 about the same images/s.

Records: the 5,000-digit subset through the pipeline (as `rotnet-bench mnist_quality`). Each arm is one
`rotnet-train` run of the documented recipe (mnist-cnn-bn, circular-gaussian sigma 3, cosine, grey
input, --augment) for 4 epochs (each one pass over the 4,493 training digits), with one setting changed; its figure is metrics.json's
training images/s (the first epoch, which traces and compiles, left out; validation excluded). The arms
run in turn, ROUNDS times, so a change in the machine's load hits every arm alike; each figure is the
median of the rounds with their spread, and each ratio is taken within a round (side by side) before
its median is taken.

The arms: Keras's default step (no XLA on a CPU-only machine), --jit-compile on (XLA), the default
step at batch 256 and 64 (the learning rate scaled with the batch; the same images per epoch in half or
twice the steps), and the default step with TensorFlow's oneDNN kernels and graph rewrites off
(TF_ENABLE_ONEDNN_OPTS=0).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, fresh_work_dir, load_verdict, machine_summary, shared_data_dir

WORK_DIR = REPO_ROOT / "data" / "benchmarks" / "train-step"
ROUNDS = 3
EPOCHS = 4  # the first is left out of images/s: it traces (and with XLA compiles) the step
RECIPE = [
    "--model", "mnist-cnn-bn", "--head", "circular-gaussian", "--sigma", "3", "--lr-schedule", "cosine",
    "--no-binarize", "--augment", "--lr", "0.004", "--validation-steps", "2", "--no-tensorboard",
]  # fmt: skip
# name -> (extra rotnet-train options, extra environment); the first is the baseline of every ratio.
ARMS: dict[str, tuple[list[str], dict[str, str]]] = {
    "default (no XLA), batch 128": ([], {}),
    "--jit-compile on (XLA), batch 128": (["--jit-compile", "on"], {}),
    "default, batch 256": (["--batch-size", "256", "--lr", "0.008"], {}),
    "default, batch 64": (["--batch-size", "64", "--lr", "0.002"], {}),
    "default, batch 128, oneDNN off": ([], {"TF_ENABLE_ONEDNN_OPTS": "0"}),
}


def _command(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _run(arguments: list[str], environment: dict[str, str] | None = None) -> None:
    completed = subprocess.run(
        arguments, capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **(environment or {})}
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(arguments)} failed with exit code {completed.returncode}:\n"
            + (completed.stdout + completed.stderr)[-3000:]
        )


def train_rate(
    records: Path, output: Path, options: list[str], environment: dict[str, str], quick: bool
) -> float:
    """Training images/s of one short rotnet-train run (metrics.json, first epoch left out)."""
    arguments = [_command("rotnet-train"), "--records", str(records), "--output", str(output), *RECIPE]
    # An epoch is rotnet-train's default, one pass over the training digits at any batch size.
    arguments += ["--epochs", "2", "--steps-per-epoch", "4"] if quick else ["--epochs", str(EPOCHS)]
    # The arm's options come last: click keeps the last value of a repeated option (--lr, --batch-size).
    arguments += options
    _run(arguments, environment)
    return float(json.loads((output / "metrics.json").read_text())["train_images_per_second"])


def run(quick: bool = False) -> str:
    root = fresh_work_dir(WORK_DIR / ("quick" if quick else "full"))
    records = root / "records"
    pipeline = [
        _command("rotnet-pipeline"),
        "--dataset",
        "mnist",
        "--mnist-dir",
        str(shared_data_dir() / "mnist-5k"),
    ]
    pipeline += ["--output-dir", str(records), "--no-progress"]
    _run(pipeline + (["--subset-fraction", "0.05"] if quick else []))
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    rates: dict[str, list[float]] = {name: [] for name in ARMS}
    for round_index in range(1 if quick else ROUNDS):
        for arm_index, (name, (options, environment)) in enumerate(ARMS.items()):
            output = root / f"round{round_index}-arm{arm_index}"
            rates[name].append(train_rate(records, output, options, environment, quick))
    minutes = (time.perf_counter() - started) / 60
    load_end = os.getloadavg()[0]
    baseline = next(iter(ARMS))
    lines = [
        ("Smoke run (--quick): 5% of the digits, a few steps; the figures mean nothing.\n\n" if quick else "")
        + f"{machine_summary()}. Training images/s of the MNIST recipe's step (mnist-cnn-bn, --augment, "
        f"{EPOCHS} epochs of one pass over the training digits, the first left out), {len(rates[baseline])} rounds of "
        f"every arm in turn ({minutes:.1f} min): the median (min-max) of the rounds, and the median "
        f"(min-max) of each round's ratio to `{baseline}`.",
        "",
        "| arm | training images/s | vs the default step |",
        "|---|---:|---:|",
    ]
    for name in ARMS:
        ratios = [rate / base for rate, base in zip(rates[name], rates[baseline], strict=True)]
        lines.append(
            f"| {name} | {statistics.median(rates[name]):,.0f} ({min(rates[name]):,.0f}-{max(rates[name]):,.0f}) "
            f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    lines += ["", load_verdict(load_start, load_end)]
    return "\n".join(lines)
