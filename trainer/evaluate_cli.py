"""`rotnet-evaluate`: angle error statistics of a trained model on a split of a records directory.

    rotnet-evaluate --model runs/mnist --records data/mnist-records --split validation --tta 4
    rotnet-evaluate --model runs/mnist --records data/mnist-records --rotation-codes all

Expected result: a table (mean / median / p95 error, share within 2, 5, 10 degrees, 180-degree flips)
on stdout, and evaluation.json, per_angle_error.png and error_histogram.png in --output (default:
<model dir>/evaluation-<split>[-tta4]). With --rotation-codes, also one row per rotation code (mean,
median, p95, within 2/5/10 degrees; tta 1 and the --tta asked) on the split's original images and the
worst/best ratio of the means, stored under "rotation_codes" in evaluation.json. With --quarter-turns,
only the records at 0/90/180/270 degrees are scored, and the table adds the accuracy of the snapped
quarter turn (what rotnet-correct --quarter-turns does), its share kept and accuracy at a few
--min-confidence thresholds, and the 4x4 confusion of the turns (evaluation.json: "quarter_turns").
"""

from __future__ import annotations

import inspect
import os

import click

from pipeline import interrupts
from schemas import ManifestError, angles, paths
from schemas.angles import EXAMPLES as ANGLE_EXAMPLES
from trainer.evaluate import evaluate as _evaluate
from trainer.evaluate import evaluate_rotation_codes as _evaluate_codes
from trainer.options import batch_size_option, tta_option
from trainer.robustness import CODES_INPUTS, ROTATION_CODES

# The defaults of evaluate() and evaluate_rotation_codes(), spelled there.
DEFAULT = {name: parameter.default for name, parameter in inspect.signature(_evaluate).parameters.items()}
CODES_DEFAULT = {name: p.default for name, p in inspect.signature(_evaluate_codes).parameters.items()}


def default_output(model: str, split: str, tta: int) -> str:
    run_dir = os.path.dirname(os.path.abspath(model)) if model.endswith(".keras") else model.rstrip("/")
    if os.path.basename(run_dir) == "saved_model":
        run_dir = os.path.dirname(run_dir)
    return os.path.join(run_dir, f"evaluation-{split}" + (f"-tta{tta}" if tta > 1 else ""))


def _rotation_codes(option: str | None) -> list[str]:
    """--rotation-codes as a list of trainer.robustness codes ([] without the option)."""
    if not option:
        return []
    codes = list(ROTATION_CODES) if option == "all" else [code.strip() for code in option.split(",")]
    unknown = sorted(set(codes) - set(ROTATION_CODES))
    if unknown:
        raise click.BadParameter(
            f"unknown rotation codes {', '.join(unknown)}; known: {', '.join(ROTATION_CODES)}",
            param_hint="--rotation-codes",
        )
    return codes


def _evaluate_with_progress(model, records, split, tta, batch_size, max_records, angles, quarter_turns=False):
    """trainer.evaluate.evaluate with a progress bar that learns its total once the records are known."""
    from tqdm import tqdm

    from trainer.evaluate import evaluate

    with tqdm(desc="evaluating", unit="record", leave=False) as bar:

        def set_total(total: int) -> None:
            bar.total = total
            bar.refresh()

        return evaluate(
            model, records, split, tta, batch_size, max_records,
            progress=bar.update, on_total=set_total, angles=angles, quarter_turns=quarter_turns,
        )  # fmt: skip


@click.command(
    cls=interrupts.Command,
    interrupted="nothing was written (the outputs are written at the end); rerun the same command",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.option(
    "--model",
    required=True,
    type=click.Path(exists=True),
    help="A rotnet-train --output directory, its model.keras, or its saved_model/ directory.",
)
@click.option(
    "--records",
    required=True,
    help="Records directory (local or gs://) with dataset_info.json, of the same image size as the model.",
)
@click.option(
    "--split", default=DEFAULT["split"], show_default=True, help="Which split of the records to score."
)
@tta_option(DEFAULT["tta"])
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory for evaluation.json and the PNGs. Default: "
    "<model dir>/evaluation-<split>[-tta<N>][-quarter-turns].",
)
@batch_size_option(DEFAULT["batch_size"])
@click.option(
    "--angles",
    default=None,
    callback=angles.click_callback,
    help=f"Score only records at these angles (degrees): {ANGLE_EXAMPLES}, the syntax of rotnet-pipeline "
    "and rotnet-train. Default: every angle both in the records and in the model's bins.",
)
@click.option(
    "--max-records",
    type=click.IntRange(min=1),
    default=None,
    help="Score only the first N records in shard order (a quick look; default: every record).",
)
@click.option(
    "--quarter-turns",
    is_flag=True,
    help="Score what rotnet-correct --quarter-turns does: records at 0/90/180/270 degrees only, each "
    "snapped to the quarter turn with the most probability; adds its accuracy, its accuracy and share kept "
    "at a few confidence thresholds, and the 4x4 confusion of the turns.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own start-up and log messages.")
@click.option(
    "--rotation-codes",
    default=None,
    help="Also turn the split's ORIGINAL images by independent rotation code at the same random angles "
    f"and score each: comma list of {', '.join(ROTATION_CODES)}, or 'all' "
    "(trainer/robustness.py). A model that reads the image scores alike under every code.",
)
@click.option(
    "--codes-angles-per-image",
    type=click.IntRange(min=1),
    default=CODES_DEFAULT["angles_per_image"],
    show_default=True,
    help="Random angles per original image for --rotation-codes.",
)
@click.option(
    "--codes-input",
    type=click.Choice(CODES_INPUTS),
    default=CODES_INPUTS[0],
    show_default=True,
    help="How each code's turned image reaches the model. served: as rotnet-correct, rotnet-serve and the "
    "rotnet API serve any photo, through the records' preparation (Predictor.prepare: their low-pass and "
    "resampling to the model's size). raw: resized and given to the model as it is (how rotnet measured "
    "the codes before; at MNIST's 28 px it skips the records' low-pass).",
)
@click.option(
    "--codes-seed", type=int, default=CODES_DEFAULT["seed"], show_default=True, help="Seed of those angles."
)
@click.option(
    "--source-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Where the original images are, for --rotation-codes (default: where the manifest says the "
    "pipeline read them: its --mnist-dir, --street-view-dir or --input).",
)
def main(
    model: str,
    records: str,
    split: str,
    tta: int,
    output: str | None,
    batch_size: int,
    angles: list[int] | None,
    max_records: int | None,
    quarter_turns: bool,
    verbose: bool,
    rotation_codes: str | None,
    codes_angles_per_image: int,
    codes_seed: int,
    codes_input: str,
    source_dir: str | None,
) -> None:
    """Score a trained model on every record of a split: how many degrees off are its predictions?"""
    if not paths.is_remote(records) and not paths.exists(records):
        raise click.BadParameter(f"{records} does not exist", param_hint="--records")
    from trainer.quiet import import_tensorflow

    import_tensorflow(verbose)
    from trainer.evaluate import EvaluationError, check_output, evaluate_rotation_codes, write_outputs

    output = output or default_output(model, split, int(tta)) + ("-quarter-turns" if quarter_turns else "")
    try:  # refused before the evaluation, not after it; nothing is created until the results are written
        check_output(output)
    except EvaluationError as error:
        raise click.ClickException(str(error)) from None

    codes = _rotation_codes(rotation_codes)
    try:
        result, errors = _evaluate_with_progress(
            model, records, split, int(tta), batch_size, max_records, angles, quarter_turns
        )
        report = None
        if codes:
            report = evaluate_rotation_codes(
                model, records, split, codes, tta=sorted({1, int(tta)}), seed=codes_seed,
                angles_per_image=codes_angles_per_image, source_dir=source_dir, batch_size=batch_size,
                served=codes_input == "served",
            )  # fmt: skip
            result.rotation_codes = report.to_dict()
    except ManifestError as error:
        raise click.BadParameter(str(error), param_hint="--records") from None
    except FileNotFoundError as error:
        raise click.BadParameter(str(error), param_hint="--model") from None
    except EvaluationError as error:
        raise click.ClickException(str(error)) from None
    try:
        written = write_outputs(result, errors, output)
    except EvaluationError as error:
        raise click.ClickException(str(error)) from None
    click.echo(result.table())
    if report is not None:
        click.echo(report.table())
    click.echo("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
