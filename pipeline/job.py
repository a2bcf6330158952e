"""Build and run the records pipeline, check what it wrote, and write the manifest last.

    from pipeline.config import PipelineConfig
    from pipeline import job
    config = PipelineConfig(dataset="mnist", output_dir="/tmp/mnist", mnist_dir="../shared/data/mnist-5k")
    summary = job.run(config, ["--direct_num_workers", "2"])
    print(summary.table())     # 5,000 images read -> ~4,500 train + ~500 validation images x 360 records

Steps: find out what the source holds (offline files, matched images: graph-time facts only; downloads
happen inside the job), clear what an unfinished earlier run left in the output directory, run the Beam
job (local runs: Beam's FnApiRunner, set explicitly, with one worker process per core), then read back
the per-file counts the workers measured, check that every source image is accounted for (images read =
images written + errors) and that the error fraction is within --max-error-fraction, and only then write
`dataset_info.json`. A directory without it is an unfinished run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemas
from pipeline import progress
from pipeline.config import PipelineConfig
from schemas import paths, sharding
from schemas.manifest import manifest_path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_RUNNERS = ("directrunner", "direct", "fnapirunner")
# GMCP holds 10,343 placemarks x 6 views; views 1-4 are kept. Only used to choose the number of shards.
STREET_VIEW_KEPT_IMAGES = 10_343 * 4
_GLOB_CHARACTERS = re.compile(r"[*?\[]")


class JobError(RuntimeError):
    """The run cannot start or did not produce a valid dataset; the message says what to do."""


@dataclass
class SourcePlan:
    """What the launcher knows about the source before the job runs."""

    source: Any  # a PTransform from pipeline.transforms returning {"images": ..., "errors": ...}
    splits: list[str]  # output splits, in manifest order
    expected_images: dict[str, float]  # per output split, for shard counts and the progress bar
    notes: list[str] = field(default_factory=list)  # what was found, printed before the run


@dataclass
class JobSummary:
    """What a finished run wrote, with the numbers of the final summary table."""

    info: schemas.DatasetInfo
    output_dir: str
    wall_seconds: float
    counters: dict[str, int]
    notes: list[str]

    @property
    def num_records(self) -> int:
        return self.info.num_records

    def table(self) -> str:
        info = self.info
        lines = [f"{'split':<12}{'images':>10}{'records':>14}{'shards':>8}{'MB':>11}{'bytes/rec':>11}"]
        for name, split in info.splits.items():
            per_record = split.num_bytes / split.num_records if split.num_records else 0
            lines.append(
                f"{name:<12}{split.num_images:>10,}{split.num_records:>14,}{len(split.shards):>8}"
                f"{split.num_bytes / 1e6:>11.1f}{per_record:>11.0f}"
            )
        total_bytes = sum(split.num_bytes for split in info.splits.values())
        total_images = sum(split.num_images for split in info.splits.values())
        shards = sum(len(split.shards) for split in info.splits.values())
        lines.append(
            f"{'total':<12}{total_images:>10,}{info.num_records:>14,}{shards:>8}{total_bytes / 1e6:>11.1f}"
            f"{total_bytes / max(info.num_records, 1):>11.0f}"
        )
        fraction = info.num_errors / max(info.num_images_read, 1)
        rate = info.num_records / max(self.wall_seconds, 1e-9)
        lines += [
            "",
            f"images read {info.num_images_read:,}; errors {info.num_errors:,} ({fraction:.2%})"
            + (f" in {', '.join(info.error_files)}" if info.num_errors else "")
            + f"; views dropped {self.counters.get(progress.VIEWS_DROPPED, 0):,}"
            f"; non-image files skipped {self.counters.get(progress.FILES_SKIPPED, 0):,}",
            f"wall time {self.wall_seconds:.1f} s; {rate:,.0f} records/s; "
            f"manifest {manifest_path(self.output_dir)}",
        ]
        return "\n".join(lines)


# --- Sources ------------------------------------------------------------------------------------


def plan_sources(config: PipelineConfig, progress_dir: str | None = None) -> SourcePlan:
    """The source transform for `config.dataset`, its output splits and expected image counts."""
    planners = {"mnist": _plan_mnist, "street_view": _plan_street_view, "images": _plan_images}
    return planners[config.dataset](config, progress_dir)


def _train_splits(config: PipelineConfig, num_images: float) -> dict[str, float]:
    fraction = config.validation_fraction
    expected = {"train": num_images * (1 - fraction)}
    if fraction > 0:
        expected["validation"] = num_images * fraction
    return expected


def _plan_mnist(config: PipelineConfig, progress_dir: str | None) -> SourcePlan:
    from pipeline import mnist
    from pipeline.transforms import ReadMnist

    notes = []
    offline = None
    if config.mnist_dir:
        try:
            found = mnist.find_offline_files(config.mnist_dir)
        except FileNotFoundError as error:
            raise JobError(str(error)) from None
        offline = {split: (str(images), str(labels)) for split, (images, labels) in found.items()}
        sizes = {
            split: len(mnist.read_idx(Path(labels).read_bytes())) for split, (_, labels) in found.items()
        }
        missing = [split for split in mnist.SPLIT_FILES if split not in found]
        notes.append(
            f"MNIST offline copy {config.mnist_dir}: found "
            + ", ".join(f"{split} ({sizes[split]:,} images)" for split in sorted(found))
            + (
                "; missing "
                + ", ".join(f"{split} ({' + '.join(mnist.SPLIT_FILES[split])})" for split in missing)
                + ": those splits are not written"
                if missing
                else ""
            )
        )
    else:
        sizes = dict(mnist.SPLIT_SIZES)
        mirrors = config.mnist_mirrors or mnist.MNIST_MIRRORS
        notes.append(
            f"MNIST: downloading {len(mnist.MNIST_FILES)} IDX files inside the job into {config.download_dir} "
            f"(mirrors: {', '.join(mirrors)})"
        )
    expected: dict[str, float] = {}
    if "train" in sizes:
        expected.update(_train_splits(config, sizes["train"] * config.subset_fraction))
    if "test" in sizes:
        expected["test"] = sizes["test"] * config.subset_fraction
    source = ReadMnist(config, offline, progress_dir)
    return SourcePlan(source, list(expected), expected, notes)


def _match(pattern: str) -> list[Any]:
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception:  # Beam raises BeamIOError for a pattern that matches nothing on some filesystems
        return []


def _plan_street_view(config: PipelineConfig, progress_dir: str | None) -> SourcePlan:
    from pipeline import street_view
    from pipeline.transforms import ReadStreetView

    notes = []
    if config.street_view_dir is None:
        parts = [(part.name, None) for part in street_view.STREET_VIEW_PARTS]
        mirrors = config.street_view_mirrors or (street_view.STREET_VIEW_BASE_URL,)
        notes.append(
            f"Street View: downloading {len(parts)} zip parts inside the job, one per worker, into "
            f"{config.download_dir} (from {', '.join(mirrors)})"
        )
        source = ReadStreetView(config, parts, progress_dir=progress_dir)
        return SourcePlan(
            source, *_splits_and_counts(config, STREET_VIEW_KEPT_IMAGES * config.subset_fraction), notes
        )
    directory = config.street_view_dir.rstrip("/")
    if not paths.is_remote(directory) and not os.path.isdir(directory):
        raise JobError(f"--street-view-dir {directory} is not a directory")
    zips = sorted(item.path for item in _match(paths.join(directory, "*.zip")))
    loose = [
        path
        for path in (item.path for item in _match(paths.join(directory, "**")))
        if not path.endswith(".zip") and street_view.parse_member_name(os.path.basename(path))
    ]
    if not zips and not loose:
        raise JobError(
            f"--street-view-dir {directory} holds no zip parts (*.zip) and no <placemark>_<view>.jpg files"
        )
    kept = _kept_views(loose)
    for path in zips:
        if paths.is_remote(path):  # not worth reading remote central directories for a shard estimate
            kept += STREET_VIEW_KEPT_IMAGES / street_view.NUM_PARTS
        else:
            with zipfile.ZipFile(path) as archive:
                kept += _kept_views(archive.namelist())
    notes.append(
        f"Street View offline copy {directory}: {len(zips)} zip part(s), {len(loose)} loose image file(s)"
    )
    source = ReadStreetView(
        config,
        [(os.path.basename(path), path) for path in zips],
        loose_pattern=paths.join(directory, "**") if loose else None,
        loose_base=directory,
        progress_dir=progress_dir,
    )
    return SourcePlan(source, *_splits_and_counts(config, kept * config.subset_fraction), notes)


def _kept_views(names: Sequence[str]) -> int:
    """How many of these file names are Street View side views (1-4)."""
    from pipeline import street_view

    parsed = (street_view.parse_member_name(os.path.basename(name)) for name in names)
    return sum(1 for item in parsed if item and item[1] in street_view.KEEP_VIEWS)


def resolve_input(pattern: str) -> tuple[str, str]:
    """(glob, base directory) for --input: a directory reads everything below it (recursively)."""
    if _GLOB_CHARACTERS.search(pattern):
        head = _GLOB_CHARACTERS.split(pattern, maxsplit=1)[0]
        base = head.rsplit("/", 1)[0] if "/" in head else "."
        return pattern, base
    if paths.is_remote(pattern):
        if pattern.endswith("/") or len(_match(pattern.rstrip("/") + "/*")) > 0:
            return pattern.rstrip("/") + "/**", pattern.rstrip("/")
        return pattern, pattern.rsplit("/", 1)[0]
    if os.path.isdir(pattern):
        return os.path.join(pattern, "**"), pattern
    if os.path.isfile(pattern):
        return pattern, os.path.dirname(pattern) or "."
    raise JobError(f"--input {pattern} does not exist (give a directory, a file or a glob)")


def _plan_images(config: PipelineConfig, progress_dir: str | None) -> SourcePlan:
    from pipeline.transforms import IMAGE_EXTENSIONS, ReadImages

    pattern, base = resolve_input(config.input_pattern)
    matched = [item.path for item in _match(pattern)]
    images = [path for path in matched if path.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
        raise JobError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) match --input {config.input_pattern} "
            f"({len(matched)} other file(s))"
        )
    notes = [
        f"images: {len(images):,} image file(s) under {base}, {len(matched) - len(images):,} other file(s)"
    ]
    source = ReadImages(config, pattern, base, progress_dir)
    return SourcePlan(source, *_splits_and_counts(config, len(images) * config.subset_fraction), notes)


def _splits_and_counts(config: PipelineConfig, num_images: float) -> tuple[list[str], dict[str, float]]:
    expected = _train_splits(config, num_images)
    return list(expected), expected


# --- Output directory -----------------------------------------------------------------------------


def _stats_name(run_id: str) -> str:
    return f".rotnet-stats-{run_id}.json"


_PROGRESS_PREFIX = ".rotnet-progress-"


def _progress_dir(output_dir: str, run_id: str) -> str:
    """Where a local run's DoFns leave their counts: inside a local output directory (a killed run's
    leftovers are then cleaned by the rerun), else in the system's temporary directory."""
    if paths.is_remote(output_dir):
        return os.path.join(tempfile.gettempdir(), f"rotnet-progress-{run_id}")
    return os.path.join(paths.local_path(output_dir), _PROGRESS_PREFIX + run_id)


def prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse to replace a finished dataset unless asked; remove what an unfinished run left behind.

    The manifest goes first, so that a crash in between never leaves a manifest beside missing shards.
    """
    from apache_beam.io.filesystems import FileSystems

    manifest = manifest_path(output_dir)
    if paths.exists(manifest):
        if not overwrite:
            raise JobError(
                f"{output_dir} already holds a finished dataset ({schemas.MANIFEST_NAME}); "
                "pass --overwrite to replace it, or choose another --output-dir"
            )
        FileSystems.delete([manifest])
    patterns = [
        sharding.shard_glob("*", "none"),
        sharding.shard_glob("*", "gzip"),
        sharding.errors_glob(),
        "beam-temp-*",
        "beam-temp-*/*",
        _stats_name("*"),
    ]
    stale = {item.path for pattern in patterns for item in _match(paths.join(output_dir, pattern))}
    if stale:
        FileSystems.delete(sorted(stale))
    if not paths.is_remote(output_dir):
        local = Path(paths.local_path(output_dir))
        # Beam's local match lists files, not directories.
        for directory in [*local.glob("beam-temp-*"), *local.glob(_PROGRESS_PREFIX + "*")]:
            shutil.rmtree(directory, ignore_errors=True)
        local.mkdir(parents=True, exist_ok=True)


# --- Beam options and runner ------------------------------------------------------------------


def _flag_given(beam_args: Sequence[str], name: str) -> bool:
    return any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in beam_args)


def unknown_beam_args(beam_args: Sequence[str]) -> list[str]:
    """Arguments that no Beam PipelineOptions class knows (Beam would drop them with a warning)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(cls): cls for cls in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(beam_args))
    return unknown


def beam_options(beam_args: Sequence[str]) -> tuple[Any, bool]:
    """(PipelineOptions, is_local). Local runs get direct_num_workers = cores and one process per
    worker unless the arguments say otherwise; remote runs get --setup_file so workers install rotnet."""
    from apache_beam.options.pipeline_options import (
        DirectOptions,
        PipelineOptions,
        SetupOptions,
        StandardOptions,
        WorkerOptions,
    )

    beam_args = list(beam_args)
    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    local = runner.lower() in LOCAL_RUNNERS
    if local:
        direct = options.view_as(DirectOptions)
        if not _flag_given(beam_args, "direct_num_workers"):
            direct.direct_num_workers = os.cpu_count() or 1
        if not _flag_given(beam_args, "direct_running_mode"):
            direct.direct_running_mode = "multi_processing" if direct.direct_num_workers != 1 else "in_memory"
    else:
        setup = options.view_as(SetupOptions)
        packaged = (
            setup.setup_file or setup.extra_packages or options.view_as(WorkerOptions).sdk_container_image
        )
        if not packaged:
            # Workers need the rotnet package: Beam builds it from this checkout with `python -m build`.
            if not (REPO_ROOT / "pyproject.toml").is_file() or importlib.util.find_spec("build") is None:
                raise JobError(
                    f"runner {runner} needs rotnet on its workers: pass --sdk_container_image (see the "
                    "Dockerfile's dataflow target) or --setup_file path/to/rotnet/pyproject.toml, which needs "
                    "`pip install build` in this environment"
                )
            setup.setup_file = str(REPO_ROOT / "pyproject.toml")
    return options, local


def _local_workers(options: Any) -> int:
    from apache_beam.options.pipeline_options import DirectOptions

    return options.view_as(DirectOptions).direct_num_workers or 1


def local_runner(options: Any, worker_log: str | None = None) -> Any:
    """Beam's FnApiRunner, chosen explicitly: the DirectRunner of Beam >= 2.68 first tries the Prism
    runner, whose binary it downloads from GitHub (fails offline, slow otherwise).

    With worker processes and a `worker_log`, their stderr goes to that file: Beam's SDK worker prints
    every failure's whole traceback there, which the launcher reports once, shortened.
    """
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    from apache_beam.transforms import environments

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing" or worker_log is None:
        return fn_runner.FnApiRunner(provision_info=info)
    command = f"{shlex.quote(sys.executable)} -m apache_beam.runners.worker.sdk_worker_main 2>>{shlex.quote(worker_log)}"
    # The same worker processes multi_processing starts (one per worker, the command runs in a shell),
    # with stderr redirected. FnApiRunner would replace this environment for "multi_processing", so the
    # mode is renamed after the options were encoded for the workers; only the runner reads it.
    direct.direct_running_mode = "multi_processing_logged"
    environment = environments.SubprocessSDKEnvironment.from_command_string(command)
    return fn_runner.FnApiRunner(default_environment=environment, provision_info=info)


# --- The job --------------------------------------------------------------------------------------


def build(
    pipeline: Any,
    config: PipelineConfig,
    plan: SourcePlan,
    num_shards: dict[str, int],
    stats_path: str,
    progress_dir: str | None,
) -> None:
    """Wire sources -> decode -> rotations -> shards + errors -> file stats onto `pipeline`."""
    import apache_beam as beam

    from pipeline import transforms

    source = pipeline | "Read" >> plan.source
    decoded = source["images"] | "DecodeImages" >> transforms.DecodeImages(config, progress_dir)
    prepared = decoded.images | "PrepareRotations" >> transforms.PrepareRotations(
        config, plan.splits, progress_dir
    )
    written = {
        split: prepared[split] for split in plan.splits
    } | "WriteRotations" >> transforms.WriteRotations(config, num_shards, progress_dir)
    errors = (source[transforms.ERRORS], decoded[transforms.ERRORS], prepared[transforms.ERRORS]) | (
        "FlattenErrors" >> beam.Flatten()
    )
    written[transforms.ERRORS] = errors | "WriteErrors" >> transforms.WriteErrors(config.output_dir)
    written | "CountShards" >> transforms.CountShards(stats_path)


def run(
    config: PipelineConfig,
    beam_args: Sequence[str] = (),
    *,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> JobSummary:
    """Run the pipeline for `config` with Beam arguments `beam_args`; raise JobError on failure."""
    import apache_beam as beam

    log = log or (lambda line: print(line, file=sys.stderr))
    config = config.resolved()
    unknown = unknown_beam_args(beam_args)
    if unknown:
        raise JobError(f"unknown option(s) {' '.join(unknown)}: neither a rotnet-pipeline nor a Beam option")
    options, local = beam_options(beam_args)
    run_id = uuid.uuid4().hex[:12]
    progress_dir = _progress_dir(config.output_dir, run_id) if local else None
    plan = plan_sources(config, progress_dir)
    parallelism = _local_workers(options) if local else 1
    num_shards = {split: config.shards_for(plan.expected_images[split], parallelism) for split in plan.splits}
    for note in plan.notes:
        log(note)
    prepare_output_dir(config.output_dir, config.overwrite)
    if progress_dir:
        os.makedirs(progress_dir)
    try:
        stats_path = paths.join(config.output_dir, _stats_name(run_id))
        runner = local_runner(options, os.path.join(progress_dir, "workers.log")) if local else None
        pipeline = beam.Pipeline(runner=runner, options=options)
        build(pipeline, config, plan, num_shards, stats_path, progress_dir)
        expected_records = int(sum(plan.expected_images.values()) * len(config.angles_degrees))
        log(
            f"writing {config.dataset} to {config.output_dir}: splits {', '.join(plan.splits)}, "
            f"{len(config.angles_degrees)} angles, {config.image_size} px {config.image_format}, "
            f"shards {num_shards}"
        )
        started = time.perf_counter()
        with progress.ProgressMonitor(progress_dir or "", expected_records or None, show_progress and local):
            try:
                result = pipeline.run()
                result.wait_until_finish()
            except Exception as error:
                raise JobError(
                    f"the Beam job failed: {failure_message(error)}{_kept_worker_log(progress_dir)}"
                ) from error
        wall_seconds = time.perf_counter() - started
        counters = metric_counters(result)
        if local and not counters:
            counters = dict(progress.read_progress(progress_dir))
        info = finish(config, plan, num_shards, stats_path, counters, options)
        return JobSummary(info, config.output_dir, wall_seconds, counters, plan.notes)
    finally:
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)


def _kept_worker_log(progress_dir: str | None) -> str:
    """Keep the worker processes' stderr of a failed local run; a note saying where it is."""
    log = Path(progress_dir or "", "workers.log")
    if not progress_dir or not log.is_file() or not log.stat().st_size:
        return ""
    handle, kept = tempfile.mkstemp(prefix="rotnet-workers-", suffix=".log")
    os.close(handle)
    shutil.copyfile(log, kept)
    return f"\n(full worker output: {kept})"


def failure_message(error: BaseException) -> str:
    """What went wrong inside a Beam job, without Beam's wrapping.

    In-process runs re-raise the DoFn's own exception; worker processes report a traceback as text, of
    which the last `SomeError: message` line (and its continuation lines) is the cause.
    """
    text = re.sub(r"\s*\[while running '[^']*'\]", "", str(error)).strip()
    if "Traceback (most recent call last)" not in text:
        return f"{type(error).__name__}: {text}" if type(error) is not RuntimeError else text
    lines = text.splitlines()
    cause = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)\b:?\s")
    starts = [index for index, line in enumerate(lines) if cause.match(line)]
    if not starts:
        return lines[-1]
    tail = []
    for line in lines[starts[-1] :]:
        if line.startswith(("Traceback", "  File ")) or line.strip() == "":
            break
        tail.append(line)
    return "\n".join(tail)


def metric_counters(result: Any) -> dict[str, int]:
    """The rotnet counters of a finished job (committed values where the runner has them)."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        query = result.metrics().query(MetricsFilter().with_namespace(progress.METRICS_NAMESPACE))
    except Exception:  # some runners do not report metrics
        return {}
    totals: Counter = Counter()
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += int(value or 0)
    return dict(totals)


def _read_stats(stats_path: str) -> list[dict[str, Any]]:
    from apache_beam.io.filesystems import FileSystems

    if not paths.exists(stats_path):
        raise JobError(f"the job finished without writing its file counts ({stats_path}); rerun it")
    with paths.open_binary(stats_path) as handle:
        stats = json.loads(handle.read().decode("utf-8"))
    FileSystems.delete([stats_path])
    return stats


def finish(
    config: PipelineConfig,
    plan: SourcePlan,
    num_shards: dict[str, int],
    stats_path: str,
    counters: dict[str, int],
    options: Any,
) -> schemas.DatasetInfo:
    """Check the written files against each other and the counters; write the manifest if all add up."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.transforms import ERRORS

    stats = _read_stats(stats_path)
    num_angles = len(config.angles_degrees)
    by_name = {item["name"]: item for item in stats}
    splits: dict[str, schemas.SplitInfo] = {}
    empty_shards: list[str] = []
    for split in plan.splits:
        names = sharding.shard_names(split, num_shards[split], config.compression)
        missing = [name for name in names if name not in by_name]
        if missing:
            raise JobError(f"split {split}: shards {missing[:3]} were not written; rerun the pipeline")
        shards = []
        for name in names:
            path = paths.join(config.output_dir, name)
            [match] = FileSystems.match([path])
            size = match.metadata_list[0].size_in_bytes if match.metadata_list else -1
            if size != by_name[name]["num_bytes"]:
                raise JobError(f"{path} is {size} bytes, the job measured {by_name[name]['num_bytes']}")
            shards.append(schemas.ShardInfo(name, by_name[name]["num_records"], size))
        num_records = sum(shard.num_records for shard in shards)
        if num_records % num_angles:
            raise JobError(
                f"split {split}: {num_records} records is not a whole number of {num_angles} angles"
            )
        if num_records == 0:
            empty_shards += [paths.join(config.output_dir, name) for name in names]
            continue
        splits[split] = schemas.SplitInfo(num_records // num_angles, num_records, shards)
    if empty_shards:  # e.g. no image of a tiny input hashed into validation: no empty split in the manifest
        FileSystems.delete(empty_shards)
    error_files = [item for item in stats if item["kind"] == ERRORS]
    num_errors = sum(item["num_records"] for item in error_files)
    images_written = sum(split.num_images for split in splits.values())
    images_read = counters.get(progress.IMAGES_READ, images_written + num_errors)
    if images_read != images_written + num_errors:
        raise JobError(
            f"{images_read:,} images were read but {images_written:,} written + {num_errors:,} errors = "
            f"{images_written + num_errors:,}: records were lost; the manifest was not written"
        )
    if images_read == 0:
        raise JobError("no source images were read (empty input, or --subset-fraction too small)")
    error_fraction = num_errors / images_read
    if error_fraction > config.max_error_fraction:
        names = ", ".join(item["name"] for item in error_files)
        raise JobError(
            f"{num_errors:,} of {images_read:,} source images ({error_fraction:.1%}) failed, over "
            f"--max-error-fraction {config.max_error_fraction:g}; see {names} in {config.output_dir} for "
            "each image and reason. The records were written but the manifest was not (the directory "
            "counts as unfinished); fix the inputs or raise --max-error-fraction"
        )
    from apache_beam.options.pipeline_options import StandardOptions

    run_config = config.to_dict()
    run_config["runner"] = options.view_as(StandardOptions).runner or "DirectRunner"
    info = schemas.DatasetInfo(
        dataset=config.dataset,
        image=schemas.ImageSpec(config.image_size, config.image_size, config.channels, config.image_format),
        angles_degrees=list(config.angles_degrees),
        splits=splits,
        num_images_read=images_read,
        num_errors=num_errors,
        error_files=[item["name"] for item in error_files],
        compression=config.compression,
        config=run_config,
    )
    schemas.write_manifest(config.output_dir, info)
    return info
