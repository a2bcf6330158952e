"""`rotnet-pipeline`: write every rotation of every source image into sharded TFRecords + a manifest.

    rotnet-pipeline --dataset mnist --output-dir data/records/mnist                  # downloads MNIST
    rotnet-pipeline --dataset street_view --output-dir gs://BUCKET/records/street_view \\
        --runner DataflowRunner --project PROJECT --region us-central1 --temp_location gs://BUCKET/tmp

Each dataset's own options (where its sources are, its mirrors) are declared by its module in
pipeline/datasets/ (SETTINGS) and become options here, marked [--dataset NAME] in --help; examples
for each dataset are in docs/pipeline.md.

Options this command does not know are Beam pipeline options and go to Beam unchanged. Exit status: 0 on
success (the summary table is printed), 1 when the job failed or too many inputs were bad (the manifest
is then not written), 2 for usage errors. See docs/pipeline.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import logging
import os
import re
from collections.abc import Callable
from typing import Any

import click

from pipeline import datasets, interrupts
from pipeline.config import (
    DUPLICATE_ID_POLICIES,
    MAX_IMAGE_SIZE,
    MAX_UPSCALE,
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

EPILOG = """\b
Any other option is a Beam pipeline option, passed on unchanged, e.g.
  --runner DataflowRunner --project P --region us-central1 --temp_location gs://B/tmp
  --runner FlinkRunner --flink_master host:8081   (`rotnet-cluster start flink` starts one here)
  --runner SparkRunner --spark_master_url spark://host:7077
  --direct_num_workers 4 --direct_running_mode multi_threading
Locally the pipeline runs on Beam's FnApiRunner with one worker process per core.
Workers outside this environment (Dataflow, DOCKER environments) get rotnet's sdist as
--extra_package unless --setup_file, --extra_package or --sdk_container_image is given;
LOOPBACK, EXTERNAL and PROCESS workers must have rotnet installed already.
For Flink and Spark rotnet starts Beam's job server (cached jar, or --flink_job_server_jar) and, for a
cluster on this machine, a worker pool (EXTERNAL); --flink_version and --parallelism come from the cluster.
--dry_run True with DataflowRunner builds and stages the job without submitting it.
"""


def _dataset_option() -> Callable:
    return click.option(
        "--dataset",
        required=True,
        type=click.Choice(datasets.names()),
        help="Which source to read (a module of pipeline/datasets/, or one registered with "
        "pipeline.datasets.register); the options marked [--dataset NAME] are its own.",
    )


def _declared_settings() -> list[tuple[datasets.Setting, list[str]]]:
    """Every dataset setting once, with the datasets that declare it (two may share one option if they
    declare it alike: one option, one name)."""
    by_flag: dict[str, tuple[datasets.Setting, list[str]]] = {}
    for name in datasets.names():
        for setting in datasets.settings(name):
            seen = by_flag.setdefault(setting.flag, (setting, []))
            if seen[0].name != setting.name:
                raise ValueError(
                    f"datasets {seen[1][0]} and {name} both declare {setting.flag}, for different "
                    f"settings ({seen[0].name}, {setting.name}): rename one"
                )
            seen[1].append(name)
    return list(by_flag.values())


def _setting_options() -> list[Callable]:
    """One option per dataset setting (the modules' SETTINGS), marked with its dataset(s)."""
    return [
        click.option(
            setting.flag,
            setting.name,
            multiple=setting.multiple,
            type=setting.type,
            envvar=setting.envvar,
            metavar=setting.metavar,
            callback=_parse(setting),
            help=f"[--dataset {', '.join(names)}] {setting.help}"
            + (f" Env: {setting.envvar}." if setting.envvar else ""),
        )
        for setting, names in _declared_settings()
    ]


def _parse(setting: datasets.Setting) -> Callable | None:
    if setting.parse is None:
        return None

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return None if value is None else setting.parse(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None

    return parse


def _dataset_settings(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """Pop every dataset setting from `options`: the chosen dataset's, as given; another dataset's
    option given on the command line is a usage error (one from the environment is ignored)."""
    chosen = options["dataset"]
    settings: dict[str, Any] = {}
    for setting, names in _declared_settings():
        value = options.pop(setting.name)
        if chosen in names:
            if value not in (None, ()):
                settings[setting.name] = tuple(value) if setting.multiple else value
        elif ctx.get_parameter_source(setting.name) == click.core.ParameterSource.COMMANDLINE:
            owners = " or ".join(f"--dataset {name}" for name in names)
            raise click.UsageError(f"{setting.flag} is an option of {owners}, not of --dataset {chosen}")
    return settings


def _by_dataset(key: str) -> str:
    """Each dataset's default for `key` (its DEFAULTS), for the help: "images jpeg, mnist png, ..."."""

    def word(value: object) -> str:
        return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)

    return ", ".join(f"{name} {word(datasets.get(name).DEFAULTS[key])}" for name in datasets.names())


# What an interrupted run leaves (pipeline/output_dir.py: its temp and progress dirs go and its lock
# is released however the run ends; the ledger stays until a run finishes).
INTERRUPTED = (
    "no manifest was written; the run removed its temporary and progress files and released its lock, "
    "and its ledger .rotnet-run.json names anything else it wrote, which the rerun removes: rerun the "
    "same command"
)

# click.command's settings (the help text is _main's docstring).
_COMMAND = dict(
    name="rotnet-pipeline",
    cls=interrupts.Command,
    interrupted=INTERRUPTED,
    context_settings={
        "help_option_names": ["-h", "--help"],
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "max_content_width": 110,
    },
    epilog=EPILOG,
)

# Before the dataset settings in --help: what to read and where to write.
_OUTPUT_OPTION = click.option(
    "--output-dir",
    required=True,
    metavar="DIR",
    help="Records directory to write, local path or gs://bucket/prefix (created if missing).",
)

# After them: how every dataset's records are drawn, encoded and written.
_RUN_OPTIONS = [
    click.option(
        "--download-dir",
        default=DEFAULT["download_dir"],
        show_default=True,
        metavar="DIR",
        help="Cache for downloads on each worker (a rerun downloads nothing).",
    ),
    click.option(
        "--subset-fraction",
        default=DEFAULT["subset_fraction"],
        show_default=True,
        type=click.FloatRange(0.0, 1.0, min_open=True),
        help="Keep this stable fraction of the source images, chosen by a hash of the image id (nested: the "
        "0.1 subset is inside the 0.5 subset).",
    ),
    click.option(
        "--image-size",
        type=click.IntRange(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        help=f"Output side in pixels (square), {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, and at most {MAX_UPSCALE}x "
        "the side of a dataset whose source images all have one (MNIST: 28 px, so 112). Default: the "
        f"dataset's ({_by_dataset('image_size')}).",
    ),
    click.option(
        "--angles",
        default="all",
        show_default=True,
        callback=angles.click_callback,
        help=f"Counter-clockwise angles to write, in degrees: {ANGLE_EXAMPLES}. The same syntax as "
        "rotnet-train --angles.",
    ),
    click.option(
        "--center-crop/--no-center-crop",
        default=DEFAULT["center_crop"],
        show_default=True,
        help="Crop the source to a square before rotating (--no-center-crop rotates the whole image; ablation).",
    ),
    click.option(
        "--crop",
        "crop_position",
        type=click.Choice(CROP_POSITIONS),
        default=DEFAULT["crop_position"],
        show_default=True,
        help="Where the square sits: 'right' drops Street View's overlay icon in the top-left corner.",
    ),
    click.option(
        "--crop-largest-rect/--no-crop-largest-rect",
        default=DEFAULT["crop_largest_rect"],
        help="After rotating, crop the largest rectangle without fill pixels, then resize. Default: the "
        f"dataset's ({_by_dataset('crop_largest_rect')}; MNIST's black background hides the corners, and the "
        "crop would zoom 45-degree digits).",
    ),
    click.option(
        "--rendering",
        type=click.Choice(RENDERINGS),
        default=DEFAULT["rendering"],
        show_default=True,
        help="How each rotation is drawn. angle-independent: every angle, right angles included, resampled "
        "alike with a sub-pixel offset keyed by the record, so no interpolation cue tells the angle; legacy: "
        "rotnet 0.1's single warp (exact copies at right angles, blurred elsewhere), for ablations.",
    ),
    click.option(
        "--resampling",
        type=click.Choice(RESAMPLINGS),
        default=DEFAULT["resampling"],
        show_default=True,
        help="angle-independent rendering: fixed = one low-pass kernel for every record; random = a kernel "
        "per record (low-pass, bilinear, bicubic, area or lanczos-like), chosen from its key.",
    ),
    click.option(
        "--crop-scale",
        type=click.Choice(CROP_SCALES),
        default=DEFAULT["crop_scale"],
        show_default=True,
        help="With the largest-rect crop: constant crops every angle at the tightest angle's scale (the same "
        "field of view at 0 and 45 degrees, still no fill pixel); largest crops each angle's own largest "
        "rectangle, as RotNet does (a 45-degree record is zoomed in by sqrt(2): a scale cue).",
    ),
    click.option(
        "--image-format",
        type=click.Choice(IMAGE_FORMATS),
        help=f"Record image encoding. Default: the dataset's ({_by_dataset('image_format')}).",
    ),
    click.option(
        "--jpeg-quality",
        default=DEFAULT["jpeg_quality"],
        show_default=True,
        type=click.IntRange(1, 100),
        help="JPEG quality of photo records.",
    ),
    click.option(
        "--validation-fraction",
        default=DEFAULT["validation_fraction"],
        show_default=True,
        type=click.FloatRange(0.0, 1.0, max_open=True),
        help="Fraction of the train images that go to the validation split, by a stable hash of the image id.",
    ),
    click.option(
        "--num-shards",
        default=DEFAULT["num_shards"],
        show_default=True,
        type=click.IntRange(0),
        help=f"Shards per split; 0 chooses about {TARGET_SHARD_BYTES // 2**20} MB per shard.",
    ),
    click.option(
        "--compression",
        type=click.Choice(sorted(COMPRESSION_SUFFIXES)),
        default=DEFAULT["compression"],
        show_default=True,
        help="Shard compression (gzip shards end in .tfrecord.gz).",
    ),
    click.option(
        "--max-error-fraction",
        default=DEFAULT["max_error_fraction"],
        show_default=True,
        type=click.FloatRange(0.0, 1.0),
        help="Fail (exit 1, no manifest) when more than this fraction of source images are bad; each bad "
        "image is listed with its reason in errors-*.jsonl either way.",
    ),
    click.option(
        "--min-image-side",
        default=DEFAULT["min_image_side"],
        show_default=True,
        type=click.IntRange(1),
        help="Source images with a shorter side are errors (too small to rotate meaningfully).",
    ),
    click.option(
        "--max-pixels",
        default=DEFAULT["max_pixels"],
        show_default=True,
        type=click.IntRange(1),
        help="Source images with more pixels are refused before decoding (decompression-bomb guard).",
    ),
    click.option(
        "--max-file-bytes",
        default=DEFAULT["max_file_bytes"],
        show_default=True,
        type=click.IntRange(1),
        help="Larger input files are errors-file lines, never read (checked before and while reading).",
    ),
    click.option(
        "--duplicate-ids",
        type=click.Choice(DUPLICATE_ID_POLICIES),
        default=DEFAULT["duplicate_ids"],
        show_default=True,
        help="Two source images with one image id (e.g. a/x_1.jpg and b/x_1.jpg in Street View): fail the "
        "run listing them, or give each a stable suffix (~ and 8 hex digits of its source's SHA-256). Memory "
        "bound either way: suffix groups names only (a few hundred bytes per source image), before any "
        "image is read; a worker holds one image's bytes at a time.",
    ),
    click.option(
        "--overwrite",
        is_flag=True,
        help="Replace a finished dataset in --output-dir (only the files its manifest lists are removed), or "
        "write beside files that are not rotnet's (they are left as they are).",
    ),
    click.option("--no-progress", is_flag=True, help="Hide the live progress bar."),
    click.option("-v", "--verbose", is_flag=True, help="Show Beam's own log messages."),
]


def build_command() -> click.Command:
    """rotnet-pipeline with the options of every dataset known now (--dataset's choices and each
    dataset's SETTINGS): a dataset registered later (`datasets.register`) needs a new command."""
    callback = click.pass_context(_main)
    for decorator in reversed([_dataset_option(), _OUTPUT_OPTION, *_setting_options(), *_RUN_OPTIONS]):
        callback = decorator(callback)
    return click.command(**_COMMAND)(callback)


def _main(ctx: click.Context, no_progress: bool, verbose: bool, **options: object) -> None:
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
    options["dataset_settings"] = _dataset_settings(ctx, options)
    options["angles_degrees"] = options.pop("angles") or DEFAULT["angles_degrees"]
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
    try:
        with interrupts.first_of_all(_mute_workers):
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
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM: the run's own files went with it
        interrupts.exit_interrupted(error, INTERRUPTED)
    click.echo(summary.table())


def _mute_workers() -> None:
    """Ctrl-C or SIGTERM: Beam's worker threads and log handlers would each report the workers' end
    with a traceback; from now on they are muted, and the one line is printed where the interrupt lands."""
    import threading

    logging.disable(logging.CRITICAL)
    threading.excepthook = lambda arguments: None


class RefusedError(click.ClickException):
    """An output directory the run may not use: a usage error (exit 2) in one line, no usage text."""

    exit_code = 2


def _check_local_paths(config: PipelineConfig) -> None:
    """Missing local inputs are usage errors (exit 2), found before Beam starts."""
    from schemas.paths import is_remote

    for setting, value in config.locations():
        if is_remote(value) and not setting.launcher_only:
            continue
        if setting.location == "directory" and not os.path.isdir(value):
            raise click.BadParameter(f"{value} is not a directory", param_hint=setting.flag)
        if setting.location == "pattern" and not re.search(r"[*?\[]", value) and not os.path.exists(value):
            raise click.BadParameter(f"{value} does not exist", param_hint=setting.flag)


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


main = build_command()


if __name__ == "__main__":
    main()
