"""`rotnet-correct MODEL INPUTS... -o OUT`: predict each image's rotation and write it upright.

    rotnet-correct data/runs/street_view photos/ -o corrected/            # a directory, recursively
    rotnet-correct data/runs/mnist 'scans/*.png' --dry-run -o report/     # only predict and report
    rotnet-correct model.keras a.jpg b.jpg -o out/ --crop --keep-size --tta 4

MODEL is a `rotnet-train --output` directory, its `model.keras`, or its exported SavedModel. Each input
is decoded with its EXIF orientation applied (so a phone photo is judged as it is shown), prepared the
way the model was trained (center square crop, resize, grey for MNIST models), and predicted in
batches. The model says which counter-clockwise rotation it sees; the image is rotated back by that
angle (clockwise) at full resolution:

* default: on a canvas that holds the whole rotated image (nothing is cut; corners are black);
* `--crop`: the largest axis-aligned rectangle without black borders;
* `--keep-size`: the output has the input's width x height (the canvas is cut to it, or with `--crop`
  the border-free rectangle is resized to it).

Outputs keep their file format (JPEG q95, PNG, ...) and their path below the input directory.
`OUT/predictions.csv` and `OUT/predictions.json` list every input with the predicted angle and
confidence, or the reason it was skipped: an unreadable file is reported, never fatal.
Exit status: 0 when at least one image was corrected (or there was nothing to do), 1 when every input
failed, 2 for usage errors.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline import geometry
from pipeline.codec import IMAGE_EXTENSIONS, BadImageError, decode_source_image

# Pillow's save() needs the format for each extension; JPEG keeps the pipeline's q95.
SAVE_OPTIONS = {".jpg": {"quality": 95}, ".jpeg": {"quality": 95}, ".webp": {"quality": 95}}
REPORT_NAME = "predictions"
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass
class Outcome:
    """One input's line in the report. `angle_degrees` is the counter-clockwise rotation the model saw."""

    path: str
    output: str = ""
    angle_degrees: int | None = None
    confidence: float | None = None
    error: str = ""


# --- Pure core --------------------------------------------------------------------------------


def corrected(
    image: np.ndarray, angle_degrees: int, crop: bool = False, keep_size: bool = False
) -> np.ndarray:
    """`image` (HWC uint8) rotated clockwise by `angle_degrees`, i.e. with the predicted rotation undone."""
    height, width = image.shape[:2]
    if crop:
        upright = geometry.undo_rotation(image, angle_degrees, crop_largest_rect=True)
        return geometry.resize(upright, (height, width)) if keep_size else upright
    return geometry.rotate(image, -angle_degrees, expand=not keep_size)


def collect_inputs(inputs: Sequence[str]) -> list[tuple[Path, Path]]:
    """(file, output path relative to OUT) for every image file named by INPUTS, in a stable order.

    A directory contributes its image files recursively, keeping their path below it; a file or a glob
    match contributes its base name. Two inputs that would land on the same output name get `-1`,
    `-2`, ... suffixes, so nothing is overwritten. Raises click.BadParameter for an input that names
    nothing.
    """
    found: list[tuple[Path, Path]] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            found += [(file, file.relative_to(path)) for file in files]
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            matches = sorted(Path(match) for match in glob.glob(spec, recursive=True))
            files = [match for match in matches if match.is_file()]
            if not files:
                raise click.BadParameter(
                    f"{spec!r} is no file, directory or matching glob", param_hint="INPUTS"
                )
            found += [(file, Path(file.name)) for file in files]
    taken: set[Path] = set()
    unique = []
    for file, relative in found:
        candidate, counter = relative, 0
        while candidate in taken:
            counter += 1
            candidate = relative.with_name(f"{relative.stem}-{counter}{relative.suffix}")
        taken.add(candidate)
        unique.append((file, candidate))
    return unique


def _is_grey(data: bytes) -> bool:
    """True for a grey-scale file (read from the header only), so it is written back grey."""
    try:
        return Image.open(io.BytesIO(data)).mode in GREY_MODES
    except Exception:  # decode_source_image gives the reason for an unreadable file
        return False


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        picture = picture.convert("P")  # GIF holds a palette, not RGB
    picture.save(path, **SAVE_OPTIONS.get(suffix, {}))


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_report(outcomes: Sequence[Outcome], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = directory / f"{REPORT_NAME}.csv", directory / f"{REPORT_NAME}.json"
    rows = [asdict(outcome) for outcome in outcomes]
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(Outcome.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    return csv_path, json_path


def load_predictor(model: str):
    """The trained model behind MODEL (imports TensorFlow, so only once the arguments are sound)."""
    from trainer.quiet import import_tensorflow

    import_tensorflow()  # TensorFlow's start-up lines would come before the tool's own
    from trainer.predict import Predictor

    return Predictor.load(model)


# --- Command ----------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", metavar="MODEL")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the corrected images and predictions.csv/.json (created if missing).",
)
@click.option(
    "--crop", is_flag=True, help="Cut the corrected image to the largest rectangle without black borders."
)
@click.option("--keep-size", is_flag=True, help="Give every corrected image the input's width x height.")
@click.option(
    "--tta",
    type=click.Choice(["1", "2", "4"]),
    default="1",
    show_default=True,
    help="Test-time augmentation: 2 also predicts on the image turned by 180 degrees, 4 by 90/180/270; "
    "the predictions are averaged on the circle.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    default=32,
    show_default=True,
    help="Images per prediction batch.",
)
@click.option("--dry-run", is_flag=True, help="Only predict and write the report; write no images.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def main(
    model: str,
    inputs: tuple[str, ...],
    output: Path,
    crop: bool,
    keep_size: bool,
    tta: str,
    batch_size: int,
    dry_run: bool,
    no_progress: bool,
) -> None:
    """Predict the rotation of every image in INPUTS (files, directories, globs) with MODEL (a
    rotnet-train output directory, model.keras or SavedModel) and write the images upright to OUTPUT."""
    if not os.path.exists(model):
        raise click.BadParameter(f"{model} does not exist", param_hint="MODEL")
    files = collect_inputs(inputs)
    try:
        predictor = load_predictor(model)
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot load model {model}: {error}") from None
    outcomes: list[Outcome] = []
    with tqdm(total=len(files), unit="img", disable=no_progress, desc="correct") as bar:
        for batch in _batches(files, batch_size):
            loaded = []
            for file, relative in batch:
                outcome = Outcome(path=str(file))
                outcomes.append(outcome)
                try:
                    data = file.read_bytes()
                    image = decode_source_image(data, channels=1 if _is_grey(data) else 3)
                except (BadImageError, OSError) as error:
                    outcome.error = str(error)
                    continue
                loaded.append((outcome, relative, image))
            if loaded:
                prepared = [predictor.prepare(image) for _, _, image in loaded]
                prediction = predictor.predict(prepared, batch_size=batch_size, tta=int(tta))
                for index, (outcome, relative, image) in enumerate(loaded):
                    outcome.angle_degrees = int(prediction.angles_degrees[index])
                    outcome.confidence = round(float(prediction.confidence[index]), 4)
                    if not dry_run:
                        target = output / relative
                        _save(corrected(image, outcome.angle_degrees, crop, keep_size), target)
                        outcome.output = str(target)
            bar.update(len(batch))
    csv_path, _ = write_report(outcomes, output)
    failed = [outcome for outcome in outcomes if outcome.error]
    for outcome in failed:
        click.echo(f"skipped  {outcome.path}: {outcome.error}", err=True)
    done = len(outcomes) - len(failed)
    verb = "predicted" if dry_run else "corrected"
    click.echo(f"{verb} {done} of {len(outcomes)} images, {len(failed)} skipped; report: {csv_path}")
    if outcomes and not done:
        raise SystemExit(1)
