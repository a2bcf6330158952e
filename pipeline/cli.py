"""`rotnet-pipeline`: write every rotation of every source image into sharded TFRecords + a manifest.

    rotnet-pipeline --dataset mnist --output-dir data/records/mnist                  # downloads MNIST
    rotnet-pipeline --dataset mnist --mnist-dir ../shared/data/mnist-5k --output-dir data/records/mnist5k
    rotnet-pipeline --dataset street_view --output-dir gs://BUCKET/records/street_view \\
        --runner DataflowRunner --project PROJECT --region us-central1 --temp_location gs://BUCKET/tmp
    rotnet-pipeline --dataset images --input 'photos/**/*.jpg' --output-dir data/records/mine --angles 0-359:5

Options this command does not know are Beam pipeline options and go to Beam unchanged. Exit status: 0 on
success (the summary table is printed), 1 when the job failed or too many inputs were bad (the manifest
is then not written), 2 for usage errors. See docs/pipeline.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

import click

from pipeline import datasets
from pipeline.config import (
    DUPLICATE_ID_POLICIES,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    TARGET_SHARD_BYTES,
    ConfigError,
    JobError,
    PipelineConfig,
)
from pipeline.geometry import CROP_POSITIONS, CROP_SCALES, RESAMPLINGS
from pipeline.rotations import RENDERINGS
from schemas import angles
from schemas.angles import EXAMPLES as ANGLE_EXAMPLES
from schemas.record import IMAGE_FORMATS
from schemas.sharding import COMPRESSION_SUFFIXES

# Every option's default is PipelineConfig's: spelled once, there.
DEFAULT = {field.name: field.default for field in dataclasses.fields(PipelineConfig)}

_HEX_DIGEST = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{64})$")

EPILOG = """\b
Any other option is a Beam pipeline option, passed on unchanged, e.g.
  --runner DataflowRunner --project P --region us-central1 --temp_location gs://B/tmp
  --runner FlinkRunner --flink_master host:8081
  --direct_num_workers 4 --direct_running_mode multi_threading
Locally the pipeline runs on Beam's FnApiRunner with one worker process per core.
Workers outside this environment (Dataflow, DOCKER environments) get rotnet's sdist as
--extra_package unless --setup_file, --extra_package or --sdk_container_image is given;
LOOPBACK, EXTERNAL and PROCESS workers must have rotnet installed already.
--dry_run True with DataflowRunner builds and stages the job without submitting it.
"""


def _checksums(ctx: click.Context, param: click.Parameter, value: Path | None) -> dict[str, str]:
    if value is None:
        return {}
    from pipeline.datasets.mnist import MNIST_FILES

    try:
        data = json.loads(value.read_text())
    except (OSError, ValueError) as error:
        raise click.BadParameter(f"{value}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f'{value}: expected {{"file name": "md5 or sha256 hex"}}')
    for name, digest in data.items():
        if name not in MNIST_FILES:
            raise click.BadParameter(f"{value}: {name!r} is not an MNIST file ({', '.join(MNIST_FILES)})")
        if not isinstance(digest, str) or not _HEX_DIGEST.match(digest.lower()):
            raise click.BadParameter(
                f"{value}: the digest of {name} must be 32 (md5) or 64 (sha256) hex digits"
            )
    return {name: digest.lower() for name, digest in data.items()}


@click.command(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "max_content_width": 110,
    },
    epilog=EPILOG,
)
@click.option(
    "--dataset",
    required=True,
    type=click.Choice(datasets.names()),
    help="Which source to read (a module of pipeline/datasets/).",
)
@click.option(
    "--output-dir",
    required=True,
    metavar="DIR",
    help="Records directory to write, local path or gs://bucket/prefix (created if missing).",
)
@click.option(
    "--input",
    "input_pattern",
    metavar="DIR_OR_GLOB",
    help="--dataset images: a directory (read recursively), a file or a glob of jpg/png/webp/bmp/tiff/gif "
    "files, local or gs://. Image ids are the paths below the directory.",
)
@click.option(
    "--mnist-dir",
    envvar="ROTNET_MNIST_DIR",
    metavar="DIR",
    help="Local directory with MNIST's IDX files (.gz or not); only the splits whose two files are there "
    "are written. Default: download them inside the job. Env: ROTNET_MNIST_DIR.",
)
@click.option(
    "--mnist-mirror",
    "mnist_mirrors",
    multiple=True,
    metavar="URL",
    help="Base URL holding the four MNIST .gz files, tried in order (repeatable); replaces the built-in list.",
)
@click.option(
    "--mnist-checksums",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    callback=_checksums,
    help='JSON {"train-images-idx3-ubyte.gz": "<md5 or sha256>", ...} replacing the official digests '
    "(for a mirror serving other files under the same names).",
)
@click.option(
    "--street-view-dir",
    metavar="DIR",
    help="Offline copy of Street View: a directory (local or gs://) with the zip parts and/or loose "
    "<placemark>_<view>.jpg files. Default: download the 10 parts inside the job, one per worker.",
)
@click.option(
    "--street-view-mirror",
    "street_view_mirrors",
    multiple=True,
    metavar="URL",
    help="Base URL holding part1.zip .. part10.zip (repeatable); replaces the UCF site.",
)
@click.option(
    "--download-dir",
    default=DEFAULT["download_dir"],
    show_default=True,
    metavar="DIR",
    help="Cache for downloads on each worker (a rerun downloads nothing).",
)
@click.option(
    "--subset-fraction",
    default=DEFAULT["subset_fraction"],
    show_default=True,
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Keep this stable fraction of the source images, chosen by a hash of the image id (nested: the "
    "0.1 subset is inside the 0.5 subset).",
)
@click.option(
    "--image-size",
    type=click.IntRange(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
    help="Output side in pixels (square). Default: 28 for MNIST, 224 for photos.",
)
@click.option(
    "--angles",
    default="all",
    show_default=True,
    callback=angles.click_callback,
    help=f"Counter-clockwise angles to write, in degrees: {ANGLE_EXAMPLES}. The same syntax as "
    "rotnet-train --angles.",
)
@click.option(
    "--center-crop/--no-center-crop",
    default=DEFAULT["center_crop"],
    show_default=True,
    help="Crop the source to a square before rotating (--no-center-crop rotates the whole image; ablation).",
)
@click.option(
    "--crop",
    "crop_position",
    type=click.Choice(CROP_POSITIONS),
    default=DEFAULT["crop_position"],
    show_default=True,
    help="Where the square sits: 'right' drops Street View's overlay icon in the top-left corner.",
)
@click.option(
    "--crop-largest-rect/--no-crop-largest-rect",
    default=DEFAULT["crop_largest_rect"],
    help="After rotating, crop the largest rectangle without fill pixels, then resize. Default: on for "
    "photos, off for MNIST (its black background hides the corners; the crop would zoom 45-degree digits).",
)
@click.option(
    "--rendering",
    type=click.Choice(RENDERINGS),
    default=DEFAULT["rendering"],
    show_default=True,
    help="How each rotation is drawn. angle-independent: every angle, right angles included, resampled "
    "alike with a sub-pixel offset keyed by the record, so no interpolation cue tells the angle; legacy: "
    "rotnet 0.1's single warp (exact copies at right angles, blurred elsewhere), for ablations.",
)
@click.option(
    "--resampling",
    type=click.Choice(RESAMPLINGS),
    default=DEFAULT["resampling"],
    show_default=True,
    help="angle-independent rendering: fixed = one low-pass kernel for every record; random = a kernel "
    "per record (low-pass, bilinear, bicubic, area or lanczos-like), chosen from its key.",
)
@click.option(
    "--crop-scale",
    type=click.Choice(CROP_SCALES),
    default=DEFAULT["crop_scale"],
    show_default=True,
    help="With the largest-rect crop: constant crops every angle at the tightest angle's scale (the same "
    "field of view at 0 and 45 degrees, still no fill pixel); largest crops each angle's own largest "
    "rectangle, as RotNet does (a 45-degree record is zoomed in by sqrt(2): a scale cue).",
)
@click.option(
    "--image-format",
    type=click.Choice(IMAGE_FORMATS),
    help="Record image encoding. Default: png (lossless grey) for MNIST, jpeg for photos.",
)
@click.option(
    "--jpeg-quality",
    default=DEFAULT["jpeg_quality"],
    show_default=True,
    type=click.IntRange(1, 100),
    help="JPEG quality of photo records.",
)
@click.option(
    "--validation-fraction",
    default=DEFAULT["validation_fraction"],
    show_default=True,
    type=click.FloatRange(0.0, 1.0, max_open=True),
    help="Fraction of the train images that go to the validation split, by a stable hash of the image id.",
)
@click.option(
    "--num-shards",
    default=DEFAULT["num_shards"],
    show_default=True,
    type=click.IntRange(0),
    help=f"Shards per split; 0 chooses about {TARGET_SHARD_BYTES // 2**20} MB per shard.",
)
@click.option(
    "--compression",
    type=click.Choice(sorted(COMPRESSION_SUFFIXES)),
    default=DEFAULT["compression"],
    show_default=True,
    help="Shard compression (gzip shards end in .tfrecord.gz).",
)
@click.option(
    "--max-error-fraction",
    default=DEFAULT["max_error_fraction"],
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Fail (exit 1, no manifest) when more than this fraction of source images are bad; each bad "
    "image is listed with its reason in errors-*.jsonl either way.",
)
@click.option(
    "--min-image-side",
    default=DEFAULT["min_image_side"],
    show_default=True,
    type=click.IntRange(1),
    help="Source images with a shorter side are errors (too small to rotate meaningfully).",
)
@click.option(
    "--max-pixels",
    default=DEFAULT["max_pixels"],
    show_default=True,
    type=click.IntRange(1),
    help="Source images with more pixels are refused before decoding (decompression-bomb guard).",
)
@click.option(
    "--max-file-bytes",
    default=DEFAULT["max_file_bytes"],
    show_default=True,
    type=click.IntRange(1),
    help="Larger input files are errors-file lines, never read (checked before and while reading).",
)
@click.option(
    "--duplicate-ids",
    type=click.Choice(DUPLICATE_ID_POLICIES),
    default=DEFAULT["duplicate_ids"],
    show_default=True,
    help="Two source images with one image id (e.g. a/x_1.jpg and b/x_1.jpg in Street View): fail the "
    "run listing them, or give each a stable suffix (~ and 8 hex digits of its source's SHA-256).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a finished dataset in --output-dir (only the files its manifest lists are removed), or "
    "write beside files that are not rotnet's (they are left as they are).",
)
@click.option("--no-progress", is_flag=True, help="Hide the live progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Show Beam's own log messages.")
@click.pass_context
def main(ctx: click.Context, no_progress: bool, verbose: bool, **options: object) -> None:
    """Write all rotations (default: 360) of every source image of a dataset into sharded TFRecords.

    Each image is cut to its square (--crop-position; not with --no-center-crop), rotated, cropped
    without fill pixels where the dataset or --crop-largest-rect says so (at one constant scale for
    every angle by default, --crop-scale), low-passed, resized and encoded; the records carry the dataset, split, image id, angle and label (schemas/record.py). MNIST
    train is split into train/validation by a hash of the image id, t10k becomes test; Street View
    (views 1-4) and your own images are split train/validation by a hash of the file name. The manifest
    dataset_info.json is written last, only when every image is accounted for.
    """
    from pipeline import job, output_dir, runner

    beam_args = list(ctx.args)
    try:
        unknown = runner.unknown_beam_args(beam_args)  # also resolves --runner: one line if it cannot
    except JobError as error:
        raise click.UsageError(str(error)) from None
    if unknown:
        raise click.UsageError(_unknown_message(ctx, unknown))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if not verbose:
        # Beam's workers log setup chatter ("No semi_persistent_directory found", ...) and every failure
        # with its whole traceback; a failure's cause is reported once, below, without the traceback.
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    options["mnist_mirrors"] = tuple(options["mnist_mirrors"])
    options["street_view_mirrors"] = tuple(options["street_view_mirrors"])
    options["angles_degrees"] = options.pop("angles") or DEFAULT["angles_degrees"]
    if options["dataset"] != "mnist":
        options["mnist_dir"] = None  # ROTNET_MNIST_DIR may be set for every run
    try:
        config = PipelineConfig(**options).resolved()
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    _check_local_paths(config)
    try:
        problem = runner.local_path_problem(config, runner.choose_runner(beam_args))
    except JobError as error:
        problem = str(error)
    if problem:
        raise click.UsageError(problem)
    previous_handler = signal.signal(signal.SIGINT, _interrupted) if _in_main_thread() else None
    try:
        summary = job.run(
            config, beam_args, show_progress=not no_progress, log=lambda line: click.echo(line, err=True)
        )
    except (output_dir.OutputDirError, ConfigError) as error:
        raise RefusedError(str(error)) from None
    except JobError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:  # a full disk, a read-only directory: where and what to do, not a traceback
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        writing = error.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT)
        raise click.ClickException(
            (
                f"cannot write the records{where}: {error.strerror}; free space or choose a writable "
                "--output-dir"
                if writing
                else f"{error.strerror or error}{where}"
            )
            + ", then rerun the same command (what this run wrote is named by its ledger and removed by "
            "the rerun)"
        ) from None
    except KeyboardInterrupt:
        click.echo(
            "interrupted (Ctrl-C): no manifest was written; rerun the same command (the run's ledger "
            "names what it wrote, and the rerun removes it)",
            err=True,
        )
        sys.exit(130)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    click.echo(summary.table())


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C: Beam's worker threads and log handlers would each report the workers' end with a
    traceback; from now on they are muted, and the one line is printed where KeyboardInterrupt lands."""
    import threading

    logging.disable(logging.CRITICAL)
    threading.excepthook = lambda arguments: None
    signal.default_int_handler(signum, frame)


class RefusedError(click.ClickException):
    """An output directory the run may not use: a usage error (exit 2) in one line, no usage text."""

    exit_code = 2


def _check_local_paths(config: PipelineConfig) -> None:
    """Missing local inputs are usage errors (exit 2), found before Beam starts."""
    from schemas.paths import is_remote

    if config.mnist_dir and not os.path.isdir(config.mnist_dir):
        raise click.BadParameter(f"{config.mnist_dir} is not a directory", param_hint="--mnist-dir")
    street_view_dir = config.street_view_dir
    if street_view_dir and not is_remote(street_view_dir) and not os.path.isdir(street_view_dir):
        raise click.BadParameter(f"{street_view_dir} is not a directory", param_hint="--street-view-dir")
    pattern = config.input_pattern
    if (
        pattern
        and not is_remote(pattern)
        and not re.search(r"[*?\[]", pattern)
        and not os.path.exists(pattern)
    ):
        raise click.BadParameter(f"{pattern} does not exist", param_hint="--input")


def _unknown_message(ctx: click.Context, unknown: list[str]) -> str:
    known = [name for param in ctx.command.params for name in getattr(param, "opts", [])]
    hints = []
    for argument in (argument for argument in unknown if argument.startswith("-")):
        close = difflib.get_close_matches(argument.split("=", 1)[0], known, n=1)
        hints.append(f"{argument} (did you mean {close[0]}?)" if close else argument)
    return (
        f"no such option: {', '.join(hints) or ' '.join(unknown)}. Options not listed in --help must be Beam pipeline options "
        "(e.g. --runner, --project, --temp_location)."
    )


if __name__ == "__main__":
    main()
