"""`rotnet-correct MODEL INPUTS... -o OUT`: predict each image's rotation and write it upright.

    rotnet-correct data/runs/street_view photos/ -o corrected/            # a directory, recursively
    rotnet-correct data/runs/mnist 'scans/*.png' --dry-run -o report/     # only predict and report
    rotnet-correct model.keras a.jpg b.jpg -o out/ --crop --keep-size --tta 4

MODEL is a `rotnet-train --output` directory, its `model.keras`, its exported SavedModel, or a `.tflite` /
`.onnx` file written by `rotnet-export` (its FILE.json beside it; trainer.runtimes). Each input
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
confidence, what was done (`action`), or the reason it was skipped: an unreadable file is reported,
never fatal. A file of several frames (an animated GIF, a multi-page TIFF) is predicted and corrected
from its first frame and written as a still image: its report line says so in `note`, and the summary
line counts them.

Photo libraries, where only quarter turns occur (a phone held sideways):

* `--quarter-turns` snaps to 0/90/180/270: the +-45 degree sector of the 360-way output with the most
  probability mass wins, and that mass is the confidence (trainer.heads.decode_quarter_turns). Without
  it the confidence is the mass within a few degrees of the predicted angle (+-5 for classification
  models; trainer.heads.Head.confidence_window_degrees).
* `--lossless exif` writes only the EXIF Orientation tag (composed with the tag the photo had); the
  compressed image data stays byte for byte. `--lossless transpose` turns JPEG data in the DCT domain
  with jpegtran (`--partial-mcu` says what happens when the size is not a whole number of MCUs).
  PNG and the other formats get their pixels transposed exactly. An upright photo is copied unchanged.
  tools/lossless.py has the details.
* `--min-confidence P`: an image whose confidence is below P is copied to OUT unchanged (byte for byte,
  so OUT is still the whole library) and its `action` says why; with --dry-run it is only listed.

The inputs are never touched (`schemas.output_rules`, `pipeline.inputs`):

* OUT may not be an input, lie inside one, or contain one (outputs keep their path below the input, so
  an input inside OUT could be written over by another input's output, and a rerun would read outputs).
* Each output is written to a temporary file beside it and renamed into place; never through a symlink
  (OUT itself may be one; nothing below it may); never over a file rotnet-correct did not write: the
  ledger `OUT/.rotnet-correct.json` records the SHA-256 of every file it wrote, and only a file that
  still has it is replaced. Any other output that cannot be written is an error line in the report, and
  the run goes on; the report is written even when the run stops early.
* Inputs are read as `rotnet-pipeline` reads them: regular files only (or symlinks to them), at most
  `--max-file-bytes`, the pixel cap checked from the header before decoding.
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
from typing import NamedTuple

import click
import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline import codec, geometry, interrupts
from pipeline import inputs as input_files
from pipeline.codec import IMAGE_EXTENSIONS, BadImageError, decode_source_image
from schemas import paths
from schemas.output_rules import OutputRefusedError, OutputTree
from tools import lossless
from trainer.evaluate import EvaluationError
from trainer.evaluate import load_predictor as load_checked_predictor
from trainer.options import batch_size_option, tta_option

# Pillow's save() needs the format for each extension; JPEG keeps the pipeline's q95.
SAVE_OPTIONS = {".jpg": {"quality": 95}, ".jpeg": {"quality": 95}, ".webp": {"quality": 95}}
REPORT_NAME = "predictions"
LEDGER_NAME = ".rotnet-correct.json"
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass
class Outcome:
    """One input's line in the report. `angle_degrees` is the counter-clockwise rotation the model saw."""

    path: str
    output: str = ""
    angle_degrees: int | None = None
    confidence: float | None = None
    quarter_turn: int | None = None  # --quarter-turns: 0..3 (angle_degrees is 90 times it)
    action: str = ""  # what was written: rotated and re-encoded, lossless how, or left as it was and why
    error: str = ""
    note: str = ""  # what the output does not keep (the frames after the first of an animated GIF)


class Decision(NamedTuple):
    """What to do with one image: undo `angle_degrees` (counter-clockwise, as seen), unless `keep` says
    why it is left as it was. `quarter_turn` is set in --quarter-turns mode."""

    angle_degrees: int
    confidence: float
    quarter_turn: int | None
    keep: str | None

    @property
    def needs_rotation(self) -> bool:
        return self.keep is None and self.angle_degrees % 360 != 0


@dataclass(frozen=True)
class Options:
    """How rotnet-correct (and rotnet.Model.correct, rotnet-serve) turns the images it is given."""

    crop: bool = False
    keep_size: bool = False
    quarter_turns: bool = False
    lossless: str | None = None  # None, or one of tools.lossless.LOSSLESS_MODES (needs quarter_turns)
    partial_mcu: str = "exif"  # tools.lossless.PARTIAL_MCU_CHOICES
    min_confidence: float = 0.0

    def problem(self) -> str | None:
        """Why these options do not go together (one line), or None."""
        if self.lossless and not self.quarter_turns:
            return "--lossless turns by quarter turns only: add --quarter-turns"
        if self.lossless and (self.crop or self.keep_size):
            return "--lossless keeps every pixel: it cannot be combined with --crop or --keep-size"
        return None


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


class InputFile(NamedTuple):
    """One input: the file to read, its output path relative to OUT, and why it cannot be read, if known
    before reading (a directory that cannot be listed, a symlinked directory already read)."""

    file: Path
    relative: Path
    problem: str | None = None


def collect_inputs(specs: Sequence[str]) -> list[InputFile]:
    """Every image file named by INPUTS, in a stable order, with its output path relative to OUT.

    A path that exists is taken literally, even if it holds glob characters (`photos[2020]`); only a
    path that does not exist is read as a glob. A directory contributes every entry with an image
    extension below it, whatever its kind (a FIFO or a dangling link named .jpg is reported when it is
    read, not skipped), keeping its path below the directory; symlinked directories are followed once.
    A file or a glob match contributes its base name. Two inputs that would land on the same output
    name get `-1`, `-2`, ... suffixes. Raises click.BadParameter for an input that names nothing.
    """
    found: list[InputFile] = []
    for spec in specs:
        path, kind = Path(spec), input_files.literal_or_glob(spec)
        if kind == "directory":
            entries = sorted(input_files.walk_directory(spec), key=lambda entry: entry.relative)
            found += [
                InputFile(Path(entry.path), Path(entry.relative), entry.problem)
                for entry in entries
                if entry.problem or entry.relative.lower().endswith(IMAGE_EXTENSIONS)
            ]
        elif kind == "file":
            found.append(InputFile(path, Path(path.name)))
        else:
            matches = sorted(Path(match) for match in glob.glob(spec, recursive=True))
            files = [match for match in matches if not match.is_dir()]
            if not files:
                raise click.BadParameter(
                    f"{input_files.printable_name(spec)!r} is no file, directory or matching glob",
                    param_hint="INPUTS",
                )
            found += [InputFile(file, Path(file.name)) for file in files]
    taken: set[Path] = set()
    unique = []
    for item in found:
        candidate, counter = item.relative, 0
        while candidate in taken:
            counter += 1
            candidate = item.relative.with_name(f"{item.relative.stem}-{counter}{item.relative.suffix}")
        taken.add(candidate)
        unique.append(item._replace(relative=candidate))
    return unique


def output_overlap(specs: Sequence[str], files: Sequence[InputFile], output: Path) -> str | None:
    """Why OUT may not be used with these inputs (one line), or None.

    Refused: OUT equal to or inside an input (outputs would be written among the originals), and an
    input inside OUT (an output keeps its path below its input, so it can land on another input's name,
    and a rerun would read outputs as inputs). Compared both as given and with symlinks resolved.
    """
    out_paths = {os.path.abspath(output), os.path.realpath(output)}
    for spec in specs:
        if not os.path.lexists(spec):
            continue  # a glob: its matches are checked below
        shown = input_files.printable_name(spec)
        for root in {os.path.abspath(spec), os.path.realpath(spec)}:
            for out in out_paths:
                if paths.inside(out, root):
                    return (
                        f"-o {input_files.printable_name(str(output))} is the input {shown} or inside it: the "
                        "originals would be overwritten; choose an output directory outside every input"
                    )
                if paths.inside(root, out):
                    return (
                        f"the input {shown} is inside -o {input_files.printable_name(str(output))}: outputs "
                        "could land on inputs; choose an output directory outside every input"
                    )
    for item in files:
        for file in {os.path.abspath(item.file), os.path.realpath(item.file)}:
            if any(paths.inside(file, out) for out in out_paths):
                return (
                    f"the input {input_files.printable_name(str(item.file))} is inside -o "
                    f"{input_files.printable_name(str(output))}; choose an output directory outside every input"
                )
    return None


def frame_count(data: bytes) -> int:
    """How many frames (animation frames, pages) the image file holds; 1 when it cannot be told."""
    try:
        return int(getattr(Image.open(io.BytesIO(data)), "n_frames", 1))
    except Exception:  # decode_source_image gives the reason for an unreadable file
        return 1


def frames_note(frames: int, dry_run: bool) -> str:
    """The report's note for a file of `frames` frames: only the first is predicted and written."""
    if frames <= 1:
        return ""
    done = "predicted" if dry_run else "corrected and written (a still image)"
    return (
        f"{frames} frames (animated or multi-page): only the first was {done}; the other {frames - 1} are not"
    )


def _is_grey(data: bytes) -> bool:
    """True for a grey-scale file (read from the header only), so it is written back grey."""
    try:
        return Image.open(io.BytesIO(data)).mode in GREY_MODES
    except Exception:  # decode_source_image gives the reason for an unreadable file
        return False


def encoded_output(image: np.ndarray, suffix: str) -> bytes:
    """The corrected image's file bytes in the format its name says (JPEG q95, PNG, ...)."""
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    suffix = suffix.lower()
    if suffix == ".gif":
        picture = picture.convert("P")  # GIF holds a palette, not RGB
    buffer = io.BytesIO()
    picture.save(buffer, format=Image.registered_extensions()[suffix], **SAVE_OPTIONS.get(suffix, {}))
    return buffer.getvalue()


def decisions(prediction, options: Options) -> list[Decision]:
    """One Decision per row of a trainer.predict.Prediction: the free angle and its confidence, or the
    quarter turn and its sector's mass; `keep` says why an image below --min-confidence is left alone."""
    rows = []
    for index in range(len(prediction.angles_degrees)):
        if options.quarter_turns:
            turn = int(prediction.quarter_turns[index])
            angle, confidence = 90 * turn, float(prediction.quarter_confidence[index])
        else:
            turn, angle = None, int(prediction.angles_degrees[index])
            confidence = float(prediction.confidence[index])
        keep = None
        if confidence < options.min_confidence:
            keep = f"confidence {confidence:.4f} below --min-confidence {options.min_confidence:g}"
        rows.append(Decision(angle, confidence, turn, keep))
    return rows


def output_file(
    data: bytes, image: np.ndarray, suffix: str, decision: Decision, options: Options
) -> tuple[bytes, str]:
    """(file bytes, action): the input file `data` (decoded: `image`, EXIF applied) corrected as
    `options` and `decision` say. Raises lossless.LosslessError for a file that cannot be turned so."""
    if decision.keep:
        return data, f"left as it was: {decision.keep}"
    if options.lossless:
        turned = lossless.turn_file(
            data, suffix, decision.quarter_turn, options.lossless, options.partial_mcu
        )
        return turned.data, turned.action
    rotated = corrected(image, decision.angle_degrees, options.crop, options.keep_size)
    return encoded_output(rotated, suffix), f"rotated {decision.angle_degrees} degrees clockwise, re-encoded"


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def report_files(outcomes: Sequence[Outcome]) -> dict[str, bytes]:
    """{file name: bytes} of predictions.csv and predictions.json (names escaped to valid UTF-8)."""
    rows = [asdict(outcome) for outcome in outcomes]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(Outcome.__dataclass_fields__), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return {
        f"{REPORT_NAME}.csv": text.getvalue().encode("utf-8"),
        f"{REPORT_NAME}.json": (json.dumps(rows, indent=2) + "\n").encode("utf-8"),
    }


def load_predictor(model: str):
    """The trained model behind MODEL (imports TensorFlow, so only once the arguments are sound)."""
    from trainer.quiet import import_tensorflow

    import_tensorflow()  # TensorFlow's start-up lines would come before the tool's own
    from trainer.predict import Predictor

    return load_checked_predictor(
        model, Predictor
    )  # regular files under a size cap; a damaged one is one line


# --- Command ----------------------------------------------------------------------------------


@click.command(
    cls=interrupts.Command,
    interrupted="nothing was written; rerun the same command",
    context_settings={"help_option_names": ["-h", "--help"]},
)
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
@tta_option()
@batch_size_option(32, maximum=4096)
@click.option(
    "--max-file-bytes",
    type=click.IntRange(1),
    default=input_files.DEFAULT_MAX_FILE_BYTES,
    show_default=True,
    help="Larger input files are reported, not read.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(1),
    default=codec.DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Images whose header claims more pixels are reported before they are decoded.",
)
@click.option(
    "--quarter-turns",
    is_flag=True,
    help="Snap to 0/90/180/270 degrees (photo libraries): the +-45 degree sector with the most probability "
    "wins, and its mass is the confidence.",
)
@click.option(
    "--lossless",
    "lossless_mode",
    type=click.Choice(lossless.LOSSLESS_MODES),
    default=None,
    help="With --quarter-turns: 'exif' writes only the EXIF Orientation tag of a JPEG (its image data stays "
    "byte for byte); 'transpose' turns JPEG data losslessly with jpegtran. Other formats: pixels "
    "transposed exactly. Default: rotate and re-encode.",
)
@click.option(
    "--partial-mcu",
    type=click.Choice(lossless.PARTIAL_MCU_CHOICES),
    default="exif",
    show_default=True,
    help="--lossless transpose on a JPEG whose size is not a whole number of MCUs (8 or 16 px) on an edge "
    "that would move: write the EXIF tag instead (nothing lost), 'trim' that edge (jpegtran -trim, up "
    "to 15 px), or 'reencode' (JPEG q95). The report says which happened.",
)
@click.option(
    "--min-confidence",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Images whose confidence is below this are copied to OUTPUT unchanged and the report says why.",
)
@click.option("--dry-run", is_flag=True, help="Only predict and write the report; write no images.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def main(
    model: str,
    inputs: tuple[str, ...],
    output: Path,
    crop: bool,
    keep_size: bool,
    tta: int,
    batch_size: int,
    max_file_bytes: int,
    max_pixels: int,
    quarter_turns: bool,
    lossless_mode: str | None,
    partial_mcu: str,
    min_confidence: float,
    dry_run: bool,
    no_progress: bool,
) -> None:
    """Predict the rotation of every image in INPUTS (files, directories, globs) with MODEL (a
    rotnet-train output directory, model.keras, SavedModel, or rotnet-export's .tflite/.onnx) and write
    the images upright to OUTPUT."""
    if not os.path.exists(model):
        raise click.BadParameter(f"{model} does not exist", param_hint="MODEL")
    options = Options(crop, keep_size, quarter_turns, lossless_mode, partial_mcu, min_confidence)
    if options.problem():
        raise click.UsageError(options.problem())
    files = collect_inputs(inputs)
    overlap = output_overlap(inputs, files, output)
    if overlap:
        raise click.UsageError(overlap)
    try:
        predictor = load_predictor(model)
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot load model {model}: {error}") from None
    except EvaluationError as error:  # a damaged model file, or a FIFO/device at its name
        raise click.ClickException(str(error)) from None
    try:
        tree = OutputTree(output, "rotnet-correct", LEDGER_NAME)
        for name in report_files([]):
            tree.check_replaceable(name)
    except OutputRefusedError as error:
        raise click.UsageError(str(error)) from None
    outcomes = [Outcome(path=input_files.printable_name(str(item.file))) for item in files]
    csv_path = output / f"{REPORT_NAME}.csv"
    try:
        _correct_all(files, outcomes, predictor, tree, options, int(tta), batch_size, dry_run,
                     max_file_bytes, max_pixels, no_progress)  # fmt: skip
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM: the report was written all the same
        done = sum(outcome.angle_degrees is not None and not outcome.error for outcome in outcomes)
        interrupts.exit_interrupted(
            error,
            f"{done} of {len(outcomes)} images {'predicted' if dry_run else 'corrected'}; they and the report "
            f'{csv_path} (the rest marked "not processed") are kept: rerun the same command to do them all',
        )
    failed = [outcome for outcome in outcomes if outcome.error]
    for outcome in failed:
        click.echo(f"skipped  {outcome.path}: {outcome.error}", err=True)
    kept = sum(outcome.action.startswith("left as it was") for outcome in outcomes if not outcome.error)
    done = len(outcomes) - len(failed) - kept
    verb = "predicted" if dry_run else "corrected"
    kept_text = f", {kept} left as they were (below --min-confidence)" if kept else ""
    frames = sum(1 for outcome in outcomes if outcome.note and not outcome.error)
    first_only = f"{frames} of them with several frames, only the first {verb} (see note); " if frames else ""
    click.echo(
        f"{verb} {done} of {len(outcomes)} images, {len(failed)} skipped{kept_text}; {first_only}report: {csv_path}"
    )
    if outcomes and not done + kept:
        raise SystemExit(1)


def _correct_all(
    files: Sequence[InputFile],
    outcomes: list[Outcome],
    predictor,
    tree: OutputTree,
    options: Options,
    tta: int,
    batch_size: int,
    dry_run: bool,
    max_file_bytes: int,
    max_pixels: int,
    no_progress: bool,
) -> None:
    """Every batch, then the report, which is written however the run ends (a crash, Ctrl-C)."""
    with tree:
        try:
            with tqdm(total=len(files), unit="img", disable=no_progress, desc="correct") as bar:
                for batch in _batches(list(zip(files, outcomes, strict=True)), batch_size):
                    _correct_batch(batch, predictor, tree, options, tta, dry_run, max_file_bytes, max_pixels)
                    if not dry_run:
                        tree.save_ledger()  # a killed run still proves which outputs are its own
                    bar.update(len(batch))
        finally:
            # Also after a crash or Ctrl-C: every input gets its line, and the report is written.
            for outcome in outcomes:
                if not (outcome.error or outcome.angle_degrees is not None):
                    outcome.error = "not processed: the run stopped before this image"
            try:
                for name, data in report_files(outcomes).items():
                    tree.write(name, data)
                tree.save_ledger()
            except OutputRefusedError as error:
                raise click.ClickException(f"the report was not written: {error}") from None


def _correct_batch(
    batch: Sequence[tuple[InputFile, Outcome]],
    predictor,
    tree: OutputTree,
    options: Options,
    tta: int,
    dry_run: bool,
    max_file_bytes: int,
    max_pixels: int,
) -> None:
    """Read, predict and write one batch; each input's failure is its outcome's error, never the run's."""
    loaded = []
    for item, outcome in batch:
        if item.problem:
            outcome.error = item.problem
            continue
        try:
            data = input_files.read_input_file(str(item.file), max_file_bytes, max_pixels)
            image = decode_source_image(data, channels=1 if _is_grey(data) else 3, max_pixels=max_pixels)
            outcome.note = frames_note(frame_count(data), dry_run)
        except BadImageError as error:
            outcome.error = str(error)
            continue
        except Exception as error:  # an undiagnosed decoder failure is this image's error
            outcome.error = f"cannot decode ({type(error).__name__}: {error})"
            continue
        loaded.append((item, outcome, image, data))
    if not loaded:
        return
    try:
        prepared = [predictor.prepare(image) for _, _, image, _ in loaded]
        prediction = predictor.predict(prepared, batch_size=len(prepared), tta=tta)
    except Exception as error:
        for _, outcome, _, _ in loaded:
            outcome.error = f"prediction failed for this batch ({type(error).__name__}: {error})"
        return
    for (item, outcome, image, data), decision in zip(loaded, decisions(prediction, options), strict=True):
        outcome.angle_degrees, outcome.quarter_turn = decision.angle_degrees, decision.quarter_turn
        outcome.confidence = round(decision.confidence, 4)
        if dry_run:
            outcome.action = f"left as it was: {decision.keep}" if decision.keep else ""
            continue
        try:
            written, outcome.action = output_file(data, image, item.relative.suffix, decision, options)
            outcome.output = input_files.printable_name(str(tree.write(item.relative.as_posix(), written)))
        except lossless.LosslessError as error:
            outcome.error = f"not written: {error}"
        except OutputRefusedError as error:
            outcome.error = f"not written: {error}"
        except Exception as error:  # one image's failure to encode is its own line, not the run's end
            outcome.error = f"not written: {type(error).__name__}: {error}"


if __name__ == "__main__":
    main()
