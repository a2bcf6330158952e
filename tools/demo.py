"""`make demo`: the main job end to end on an embedded default, small enough for a laptop (~5 minutes on
2 cores), with a report a person can read.

    make demo                                            # downloads MNIST (official mirrors, MD5-checked)
    make demo ROTNET_MNIST_DIR=../shared/data/mnist-5k   # an offline copy of the IDX files

Steps, each a real console command (printed before it runs, so any of them can be rerun by hand):

1. rotnet-pipeline: MNIST -> a stable ~3,000-image subset -> all 360 rotations -> TFRecords + manifest
2. rotnet-inspect:  every record read back (CRCs, counts per angle) and a contact sheet
3. rotnet-train:    RotNet's MNIST CNN for a few short epochs (a demo, not the quality run: see
                    docs/benchmarks.md, section mnist_quality, for the full-length result)
4. rotnet-evaluate: angle error on the validation split, per-angle plot
5. rotnet-correct:  a few rotated validation digits, saved as PNG files and turned upright again

Everything lands in data/demo/: report.md links the numbers and pictures. Where MNIST comes from:
$ROTNET_MNIST_DIR if set; else the download cache data/downloads/; else the download; if that fails
(no network) and the project's sample data `../shared/data/mnist-5k` is beside the checkout, that.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline import geometry
from pipeline.codec import decode_record_image, decode_source_image

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "data" / "demo"
SAMPLE = REPO_ROOT / "data" / "samples" / "street_view_008922_1.jpg"
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist-5k"
MNIST_TRAIN_IMAGES = "train-images-idx3-ubyte.gz"

DEMO_IMAGES = 3_000  # source images, all 360 rotations each: ~1.1M records
TRAIN_EPOCHS = 4
STEPS_PER_EPOCH = 150  # x 128 images: ~77k training images seen, about two minutes on 2 cores
NUM_CORRECTED = 12  # rotated digits written as files and corrected by rotnet-correct


@dataclass
class Step:
    name: str
    command: list[str]
    seconds: float = 0.0


def run_step(name: str, arguments: list[str], steps: list[Step]) -> Step:
    """Run a console script of this environment, echoing its command and output; stop the demo on failure."""
    executable = Path(sys.executable).parent / arguments[0]
    step = Step(name, arguments)
    print(f"\n== {name}: {shlex.join(arguments)}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run([str(executable), *arguments[1:]], cwd=REPO_ROOT)
    step.seconds = time.perf_counter() - started
    steps.append(step)
    if completed.returncode != 0:
        print(f"\ndemo stopped: `{shlex.join(arguments)}` failed (exit {completed.returncode}); see above")
        sys.exit(completed.returncode)
    return step


def mnist_source() -> tuple[list[str], int, str]:
    """Pipeline options naming the MNIST source, the number of train images there, and a description."""
    configured = os.environ.get("ROTNET_MNIST_DIR")
    cached = REPO_ROOT / "data" / "downloads"  # where the demo's pipeline run downloads to
    for directory, description in (
        (Path(configured) if configured else None, "ROTNET_MNIST_DIR"),
        (cached, "download cache"),
    ):
        if directory and (directory / MNIST_TRAIN_IMAGES).exists():
            return ["--mnist-dir", str(directory)], _idx_count(directory / MNIST_TRAIN_IMAGES), description
    if configured:
        sys.exit(
            f"ROTNET_MNIST_DIR={configured} holds no {MNIST_TRAIN_IMAGES}; point it at the MNIST IDX files"
        )
    if not _can_download() and (SHARED_MNIST / MNIST_TRAIN_IMAGES).exists():
        print(f"no network: using the project's sample data {SHARED_MNIST}")
        return (
            ["--mnist-dir", str(SHARED_MNIST)],
            _idx_count(SHARED_MNIST / MNIST_TRAIN_IMAGES),
            "sample data",
        )
    return ["--download-dir", str(REPO_ROOT / "data" / "downloads")], 70_000, "download"


def _idx_count(path: Path) -> int:
    with gzip.open(path) as handle:
        return struct.unpack(">II", handle.read(8))[1]


def _can_download() -> bool:
    import urllib.request

    from pipeline.datasets.mnist import MNIST_MIRRORS

    for mirror in MNIST_MIRRORS:
        try:
            urllib.request.urlopen(
                urllib.request.Request(mirror + MNIST_TRAIN_IMAGES, method="HEAD"), timeout=5
            )
            return True
        except OSError:
            continue
    return False


# The photo preview: the pipeline's default photo records (pipeline.config: angle-independent rendering,
# constant crop scale), at a size a person can see, every 45 degrees.
PREVIEW_SIZE = 160
PREVIEW_ANGLES = tuple(range(0, 360, 45))


def rotation_preview(path: Path, sample: Path = SAMPLE) -> Path:
    """A row of a Street View photo's records at PREVIEW_ANGLES, drawn by the pipeline's own default
    chain for photos (geometry.prepare_view + geometry.render with each record's jitter), each tile
    labelled with its angle (degrees counter-clockwise)."""
    from pipeline import rotations
    from pipeline.config import PipelineConfig
    from schemas.record import example_key
    from tools import figures

    config = PipelineConfig(
        dataset="images",
        output_dir=str(path.parent),
        dataset_settings={"input_pattern": str(sample)},
        image_size=PREVIEW_SIZE,
        angles_degrees=PREVIEW_ANGLES,
    ).resolved()
    image = decode_source_image(sample.read_bytes(), config.channels)
    source = geometry.prepare_view(image, config.view())
    tiles = [
        figures.Tile(
            rotations.rotation_image(
                source,
                example_key("images", "train", sample.stem, angle),
                angle,
                PREVIEW_SIZE,
                config.resampling,
            ),
            f"{angle}°",
        )
        for angle in PREVIEW_ANGLES
    ]
    title = f"records of a photo: {config.rendering} rendering, crop scale {config.crop_scale}"
    return figures.save(figures.render_tiles(tiles, columns=len(tiles), title=title), path)


def rotated_digits(records: Path) -> list[tuple[str, bytes]]:
    """NUM_CORRECTED validation records at assorted angles as (file name, PNG bytes): the 'photos' to correct."""
    import schemas
    from schemas import tfrecord_file

    info = schemas.load_manifest(str(records))
    wanted = {(37 * index + 23) % 360 for index in range(NUM_CORRECTED)}
    written: list[tuple[str, bytes]] = []
    for path in info.shard_paths(str(records), "validation"):
        for data in tfrecord_file.iter_records(path, verify=False):
            record = schemas.decode_example(data)
            if record.angle_degrees in wanted:
                wanted.discard(record.angle_degrees)
                name = f"digit-{record.image_id}-rotated-{record.angle_degrees:03d}.png"
                buffer = io.BytesIO()
                Image.fromarray(decode_record_image(record)[:, :, 0]).save(buffer, format="PNG")
                written.append((name, buffer.getvalue()))
            if not wanted:
                return written
    return written


def _true_angle(name: str) -> int:
    """The angle in a name written by write_rotated_digits (`digit-ID-rotated-AAA.png`)."""
    return int(Path(name).stem.rsplit("-", 1)[1])


def _circular_error(a: int, b: int) -> int:
    difference = abs(a - b) % 360
    return min(difference, 360 - difference)


def correction_sheet(rotated: Path, corrected: Path, path: Path) -> Path:
    from tools import figures

    rows = json.loads((corrected / "predictions.json").read_text())
    tiles = []
    for row in rows:
        name = Path(row["path"]).name
        before = np.asarray(Image.open(rotated / name))[:, :, np.newaxis]
        after = np.asarray(Image.open(corrected / name))[:, :, np.newaxis]
        tiles.append(figures.Tile(before, f"rotated {_true_angle(name)}°"))
        tiles.append(figures.Tile(after, f"predicted {row['angle_degrees']}°"))
    return figures.save(
        figures.render_tiles(tiles, columns=8, title="rotnet-correct: input, then corrected"), path
    )


def write_report(
    steps: list[Step],
    source: str,
    corrected_rows: list[dict],
    demo_dir: Path = DEMO_DIR,
    path: Path | None = None,
) -> Path:
    """report.md (at `path`, default demo_dir/report.md) from the steps' outputs in demo_dir (records/,
    run/, evaluation/)."""
    import schemas

    info = schemas.load_manifest(str(demo_dir / "records"))
    metrics = json.loads((demo_dir / "run" / "metrics.json").read_text())
    evaluation = json.loads((demo_dir / "evaluation" / "evaluation.json").read_text())
    within_ten = sum(
        1
        for row in corrected_rows
        if row["angle_degrees"] is not None
        and _circular_error(row["angle_degrees"], _true_angle(Path(row["path"]).name)) <= 10
    )
    lines = [
        "# rotnet demo report",
        "",
        f"MNIST source: {source}. Every command below ran in this order; rerun any of them by hand.",
        "",
        "| step | command | seconds |",
        "|---|---|---:|",
        *(f"| {s.name} | `{shlex.join(s.command)}` | {s.seconds:.0f} |" for s in steps),
        "",
        "## Records",
        "",
        f"{info.num_images_read:,} source images read, {info.num_errors} errors, "
        f"{len(info.angles_degrees)} angles each, {info.image.height}x{info.image.width} {info.image.format}.",
        "",
        "| split | images | records | shards | MB |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {split.num_images:,} | {split.num_records:,} | {len(split.shards)} | "
            f"{split.num_bytes / 1e6:.1f} |"
            for name, split in info.splits.items()
        ),
        "",
        "![records and their corrections](records_sheet.png)",
        "",
        "## Training (short demo run)",
        "",
        f"Best validation angle error during training: "
        f"{metrics['best'].get('val_angle_error', float('nan')):.1f} degrees at epoch {metrics['best_epoch']} "
        f"of {TRAIN_EPOCHS} x {STEPS_PER_EPOCH} steps. A full-length run (docs/benchmarks.md, mnist_quality) "
        "is what the project's quality figure comes from.",
        "",
        "![training curves](run/training_curves.png)",
        "",
        "## Evaluation (validation split, every record)",
        "",
        f"{evaluation['num_records']:,} records: mean error {evaluation['mean_error_degrees']:.1f} degrees, "
        f"median {evaluation['median_error_degrees']:.1f}, p95 {evaluation['p95_error_degrees']:.1f}; "
        + ", ".join(
            f"{share:.0%} within {limit} degrees" for limit, share in evaluation["within_degrees"].items()
        )
        + f"; 180-degree flips {evaluation['flip_share']:.1%}.",
        "",
        "![per-angle error](evaluation/per_angle_error.png)",
        "",
        "![error histogram](evaluation/error_histogram.png)",
        "",
        "## Correcting files",
        "",
        f"{len(corrected_rows)} rotated validation digits written as PNG files and corrected by rotnet-correct: "
        f"{within_ten} predicted within 10 degrees.",
        "",
        "![corrections](corrections.png)",
        "",
        "## Photos",
        "",
        "What the pipeline writes for a photo by default (`--dataset street_view` or `images`): a Street "
        f"View sample at {len(PREVIEW_ANGLES)} angles, drawn by the same code as the records "
        "(angle-independent rendering, the central square cropped at one constant scale, so 45 degrees "
        "shows as much of the scene as 0). A photo model is served its photos the same way "
        "(geometry.upright_view). The MNIST records above are drawn by the same chain without the crop.",
        "",
        "![rotations of a photo](rotations.png)",
        "",
    ]
    path = path or demo_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


# The demo's own files in DEMO_DIR (figures, the digits to correct, the report) are written through a
# ledger: a rerun replaces only files the demo wrote and nobody changed since (schemas/output_rules.py), never
# a user's file or a symlink; the tools' own outputs (records/, run/, ...) follow their own rules.
DEMO_LEDGER = ".rotnet-demo.json"


@contextlib.contextmanager
def demo_files() -> Iterator[Any]:
    """The demo's OutputTree; its ledger is saved on the way out, also after a failed write (the files
    written so far are then still known to be the demo's)."""
    from schemas.output_rules import OutputTree

    with OutputTree(DEMO_DIR, "make demo", DEMO_LEDGER, option="demo directory") as tree:
        try:
            yield tree
        finally:
            tree.save_ledger()


def publish(tree: Any, name: str, draw: Callable[[Path], object]) -> Path:
    """`draw(path)` a file in a scratch directory, then write it into the demo's tree as `name`."""
    with tempfile.TemporaryDirectory(prefix="rotnet-demo-") as scratch:
        path = Path(scratch) / Path(name).name
        draw(path)
        return tree.write(name, path.read_bytes())


DEMO_FILES = ("records_sheet.png", "corrections.png", "rotations.png", "report.md")


def main() -> int:
    from schemas.output_rules import OutputRefusedError

    try:
        return _main()
    except OutputRefusedError as error:  # a file the demo did not write, or changed since: left alone
        sys.exit(f"make demo: {error}")


def _main() -> int:
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    with demo_files() as tree:  # refused now, not after minutes of work
        for name in DEMO_FILES:
            tree.check_replaceable(name)
    # A rerun deletes nothing by name: each tool replaces only what it wrote (rotnet-train's --overwrite
    # replaces the previous demo's finished model once the new best exists; rotnet-evaluate and
    # rotnet-correct rewrite their own files, by their ledgers).
    steps: list[Step] = []
    options, available, source = mnist_source()
    fraction = min(1.0, round(DEMO_IMAGES / available, 4))
    records, run = DEMO_DIR / "records", DEMO_DIR / "run"
    run_step(
        "pipeline",
        [
            "rotnet-pipeline",
            "--dataset",
            "mnist",
            "--output-dir",
            str(records),
            *options,
            "--subset-fraction",
            str(fraction),
            "--overwrite",
        ],
        steps,
    )
    scratch = Path(tempfile.mkdtemp(prefix="rotnet-demo-"))  # figures are drawn here, then published
    run_step(
        "inspect",
        ["rotnet-inspect", str(records), "--verify", "--sheet", str(scratch / "records_sheet.png")],
        steps,
    )
    run_step(
        "train",
        [
            "rotnet-train",
            "--records",
            str(records),
            "--output",
            str(run),
            "--model",
            "mnist-cnn",
            "--epochs",
            str(TRAIN_EPOCHS),
            "--steps-per-epoch",
            str(STEPS_PER_EPOCH),
            "--overwrite",
        ],
        steps,
    )
    run_step(
        "evaluate",
        [
            "rotnet-evaluate",
            "--model",
            str(run),
            "--records",
            str(records),
            "--split",
            "validation",
            "--output",
            str(DEMO_DIR / "evaluation"),
        ],
        steps,
    )
    with demo_files() as tree:
        tree.write("records_sheet.png", (scratch / "records_sheet.png").read_bytes())
        shutil.rmtree(scratch)  # the mkdtemp above: ours alone
        for name, data in rotated_digits(records):
            tree.write(f"rotated/{name}", data)
    run_step(
        "correct",
        ["rotnet-correct", str(run), str(DEMO_DIR / "rotated"), "-o", str(DEMO_DIR / "corrected")],
        steps,
    )
    rows = json.loads((DEMO_DIR / "corrected" / "predictions.json").read_text())
    with demo_files() as tree:
        publish(
            tree,
            "corrections.png",
            lambda path: correction_sheet(DEMO_DIR / "rotated", DEMO_DIR / "corrected", path),
        )
        publish(tree, "rotations.png", rotation_preview)
        report = publish(tree, "report.md", lambda path: write_report(steps, source, rows, path=path))
    print(f"\nreport: {report}")
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
