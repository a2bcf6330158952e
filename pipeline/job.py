"""The records job, top to bottom: resolve the config, plan the source, prepare the output directory,
build and run the Beam graph, verify what it wrote, and only then write the manifest.

    from pipeline.config import PipelineConfig
    from pipeline import job
    config = PipelineConfig(
        dataset="mnist", output_dir="/tmp/mnist", dataset_settings={"mnist_dir": "../shared/data/mnist-5k"}
    )
    summary = job.run(config, ["--direct_num_workers", "2"])
    print(summary.table())     # 5,000 images read -> ~4,500 train + ~500 validation images x 360 records

Each step is a call into the module that owns it: pipeline/datasets/NAME.py plans its source,
pipeline/output_dir.py locks and claims the output directory (its ledger first; it removes only what an
earlier run provably wrote), pipeline/runner.py turns the Beam arguments into options and a runner (and
a failed job into one line), pipeline/engines/launch.py starts a Flink or Spark run's job server,
pipeline/transforms.py holds the shared transforms, schemas/verify.py checks the shards. Every source
image must be accounted for (images read = images written + errors) and the error fraction within
--max-error-fraction before `dataset_info.json` is written: a directory without it is an unfinished run.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import schemas
from pipeline import datasets, image_ids, output_dir, progress, runner
from pipeline.config import ConfigError, JobError, PipelineConfig
from pipeline.datasets.common import ERRORS, SourcePlan
from pipeline.engines import launch
from pipeline.summary import JobSummary
from schemas import gcs, paths, sharding, verify

__all__ = ["JobError", "JobSummary", "build", "run"]


def run(
    config: PipelineConfig,
    beam_args: Sequence[str] = (),
    *,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> JobSummary | runner.DryRunSummary:
    """Run the pipeline for `config` with Beam arguments `beam_args`; raise JobError on failure
    (one line for a gs:// path that cannot be reached or used, not Beam's traceback)."""
    config = config.resolved()
    remote = [value for _, value in config.locations()] + [config.output_dir]
    remote += [arg.split("=", 1)[-1] for arg in beam_args if "gs://" in arg]  # --temp_location, ...
    log = log or (lambda line: print(line, file=sys.stderr))
    with gcs.failures_in_one_line(remote, JobError):
        choice = runner.check_arguments(config, beam_args)
        # Flink/Spark: Java, the cluster, then the job server and worker pool, stopped at the end.
        with launch.engine_for(choice.name, beam_args, log) as engine:
            arguments = engine.arguments if engine else beam_args
            return _run_job(config, arguments, choice, show_progress, log, engine)


def _run_job(
    config: PipelineConfig,
    beam_args: Sequence[str],
    choice: runner.RunnerChoice,
    show_progress: bool,
    log: Callable[[str], None],
    engine: launch.Session | None,
) -> JobSummary | runner.DryRunSummary:
    import apache_beam as beam

    options, local = runner.beam_options(beam_args, choice)
    dry_run = runner.is_dry_run(options)
    run_id = uuid.uuid4().hex[:12]
    output_dir.check_location(config.output_dir, output_dir.input_roots(config))  # before anything
    progress_dir = output_dir.progress_dir(config.output_dir, run_id) if local else None

    plan = datasets.get(config.dataset).plan(config, progress_dir)
    parallelism = runner.local_workers(options) if local else 1
    num_shards = {split: config.shards_for(plan.expected_images[split], parallelism) for split in plan.splits}
    for note in plan.notes:
        log(note)
    expected_records = math.ceil(sum(plan.expected_images.values()) * len(config.angles_degrees))
    if config.num_shards and config.num_shards > max(1, expected_records):
        raise ConfigError(
            f"--num-shards {config.num_shards} is more shards per split than the about {expected_records:,} "
            "records the whole dataset will hold: most would be empty files; give fewer, or 0 (automatic)"
        )

    # Locked, the ledger written before anything else; the temp and progress dirs go at the end.
    with output_dir.for_run(config, run_id, num_shards, progress_dir, dry_run, log) as claimed:
        worker_log = os.path.join(progress_dir, "workers.log") if progress_dir else None
        pipeline = beam.Pipeline(
            runner=runner.local_runner(options, worker_log) if local else None, options=options
        )
        build(pipeline, config, plan, num_shards, claimed, progress_dir)
        log(
            f"writing {config.dataset} to {config.output_dir}: splits {', '.join(plan.splits)}, "
            f"{len(config.angles_degrees)} angles, {config.image_size} px {config.image_format}, "
            f"shards {num_shards}"
        )
        expected_records = int(sum(plan.expected_images.values()) * len(config.angles_degrees))
        started = time.perf_counter()
        with progress.ProgressMonitor(progress_dir or "", expected_records or None, show_progress and local):
            try:
                result = pipeline.run()
                if dry_run:
                    return runner.dataflow_dry_run(result, options)
                result.wait_until_finish()
            except Exception as error:
                runner.raise_job_failure(error, engine, progress_dir)  # one line, never Beam's traceback
        wall_seconds = time.perf_counter() - started

        counters = runner.metric_counters(result)
        if local and not counters:
            counters = dict(progress.read_progress(progress_dir))
        unreliable = runner.UNRELIABLE_METRICS.get(choice.name)
        if unreliable:
            counters = {}
        stats = claimed.read_stats()
        info = describe_outputs(config, plan, num_shards, stats, counters, options)
        if engine:
            info.config["job_server"] = engine.plan.jar
        if progress.IMAGES_READ not in counters:  # e.g. a runner without metrics: no count is invented
            info.config["nothing_lost"] = (
                f"not verified: {unreliable or f'{choice.name} reported no metrics'}"
            )
        image_ids.check_unique(claimed.duplicates_path)
        claimed.check_free(info)
        try:
            check_counts(config, info)  # before anything in place changes: a replaced dataset stays whole
        except JobError as error:
            kept = [claimed.keep_failed_errors(name) for name in info.error_files]
            raise JobError(str(error).replace("{ERRORS}", ", ".join(kept) or "the errors file")) from None
        claimed.withdraw_previous()
        publish(config, info, claimed.temp_dir, stats)
        check_outputs(config, info)
        schemas.write_manifest(config.output_dir, info)  # only now: every shard verified in place
        claimed.remove_replaced(info)
        claimed.finish()
        return JobSummary(info, config.output_dir, wall_seconds, counters)


def build(
    pipeline: Any,
    config: PipelineConfig,
    plan: SourcePlan,
    num_shards: dict[str, int],
    claimed: output_dir.RunOutput,
    progress_dir: str | None,
) -> None:
    """Wire source -> ids checked -> decode -> prepare -> shards + errors file -> their stats onto
    `pipeline`; every file goes to the claimed directory's temp dir."""
    import apache_beam as beam

    from pipeline import transforms

    source = pipeline | "Read" >> plan.source
    images = source["images"] | "CheckIds" >> image_ids.CheckIds(
        config, claimed.duplicates_path, renamed=plan.renames_duplicate_ids
    )
    decoded = images | "DecodeImages" >> transforms.DecodeImages(config, progress_dir)
    prepared = decoded.images | "PrepareRotations" >> transforms.PrepareRotations(
        config, plan.splits, progress_dir
    )
    shards = {split: prepared[split] for split in plan.splits} | "WriteShards" >> transforms.WriteShards(
        config, num_shards, claimed.temp_dir, progress_dir
    )
    errors = (source[ERRORS], decoded[ERRORS], prepared[ERRORS]) | "FlattenErrors" >> beam.Flatten()
    errors_file = errors | "WriteErrors" >> transforms.WriteErrors(claimed.temp_dir)
    (
        (shards, errors_file)
        | "FlattenStats" >> beam.Flatten()
        | "WriteStats" >> transforms.WriteStats(claimed.stats_path)
    )


def describe_outputs(
    config: PipelineConfig,
    plan: SourcePlan,
    num_shards: dict[str, int],
    stats: list[dict[str, Any]],
    counters: dict[str, int],
    options: Any,
) -> schemas.DatasetInfo:
    """The manifest of what the workers say they wrote; empty splits are left out (e.g. no image of a
    tiny input hashed into validation)."""
    from apache_beam.options.pipeline_options import StandardOptions

    num_angles = len(config.angles_degrees)
    by_name = {item["name"]: item for item in stats}
    splits: dict[str, schemas.SplitInfo] = {}
    for split in plan.splits:
        names = sharding.shard_names(split, num_shards[split], config.compression)
        missing = [name for name in names if name not in by_name]
        if missing:
            raise JobError(f"split {split}: shards {missing[:3]} were not written; rerun the pipeline")
        shards = [
            schemas.ShardInfo(
                name, by_name[name]["num_records"], by_name[name]["num_bytes"], by_name[name]["sha256"]
            )
            for name in names
        ]
        num_records = sum(shard.num_records for shard in shards)
        if num_records % num_angles:
            raise JobError(
                f"split {split}: {num_records} records is not a whole number of {num_angles} angles"
            )
        if num_records:
            splits[split] = schemas.SplitInfo(num_records // num_angles, num_records, shards)
    error_files = [item for item in stats if item["kind"] == ERRORS]
    num_errors = sum(item["num_records"] for item in error_files)
    images_written = sum(split.num_images for split in splits.values())
    run_config = config.to_dict()
    run_config["runner"] = options.view_as(StandardOptions).runner or "DirectRunner"
    return schemas.DatasetInfo(
        dataset=config.dataset,
        image=schemas.ImageSpec(config.image_size, config.image_size, config.channels, config.image_format),
        angles_degrees=list(config.angles_degrees),
        splits=splits,
        num_images_read=counters.get(progress.IMAGES_READ, images_written + num_errors),
        num_errors=num_errors,
        error_files=[item["name"] for item in error_files],
        compression=config.compression,
        config=run_config,
    )


def publish(
    config: PipelineConfig, info: schemas.DatasetInfo, temp_dir: str, stats: list[dict[str, Any]]
) -> None:
    """Check every file the manifest will list against what its worker measured, then rename them from
    `temp_dir` into place (the shards of empty splits stay behind and go with the temporary directory)."""
    from apache_beam.io.filesystems import FileSystems

    names = [shard.name for split in info.splits.values() for shard in split.shards] + info.error_files
    measured = {item["name"]: item["num_bytes"] for item in stats}
    for name in names:
        size = paths.size(paths.join(temp_dir, name))
        if size != measured[name]:
            raise JobError(
                f"{paths.join(temp_dir, name)} is {size} bytes, its worker wrote {measured[name]}; rerun"
            )
    if names:
        FileSystems.rename(
            [paths.join(temp_dir, n) for n in names], [paths.join(config.output_dir, n) for n in names]
        )


def check_counts(config: PipelineConfig, info: schemas.DatasetInfo) -> None:
    """Nothing lost and not too many errors (from the workers' counts, before anything is published)."""
    images_written = sum(split.num_images for split in info.splits.values())
    images_read, num_errors = info.num_images_read, info.num_errors
    if images_read != images_written + num_errors:
        raise JobError(
            f"{images_read:,} images were read but {images_written:,} written + {num_errors:,} errors = "
            f"{images_written + num_errors:,}: records were lost; the manifest was not written"
        )
    if images_read == 0:
        raise JobError("no source images were read (empty input, or --subset-fraction too small)")
    error_fraction = num_errors / images_read
    if error_fraction > config.max_error_fraction:
        raise JobError(
            f"{num_errors:,} of {images_read:,} source images ({error_fraction:.1%}) failed, over "
            f"--max-error-fraction {config.max_error_fraction:g}; see {{ERRORS}} for each image and "
            "reason. No records were published and no manifest "
            "written (a dataset there before is left as it was); fix the inputs or raise --max-error-fraction"
        )


def check_outputs(config: PipelineConfig, info: schemas.DatasetInfo) -> None:
    """Every shard on storage, in place, with the size the workers measured."""
    problems = verify.check_shards(info, config.output_dir)
    if problems:
        raise JobError(
            verify.damaged_shard_message(problems, "the manifest was not written; rerun the pipeline")
        )
