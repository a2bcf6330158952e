"""`rotnet-inspect RECORDS`: check a records directory against its manifest and show what is in it.

Works without TensorFlow or Beam (tfrecord-lite + schemas.tfrecord_file); gs:// paths need
apache-beam[gcp] or tensorflow installed.

    rotnet-inspect data/records/mnist                      # manifest vs files: counts, sizes, version
    rotnet-inspect data/records/mnist --verify             # + read every record: CRCs, schema, images
    rotnet-inspect data/records/mnist --sheet sheet.png    # + contact sheet of 16 random records

Exit status: 0 when everything matches, 1 when a problem was found (each is printed), 2 for usage errors.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

import schemas
from pipeline import interrupts
from schemas import gcs, paths, sharding, tfrecord_file
from schemas.angles import describe_angles
from schemas.record import SchemaError, decode_fields
from schemas.verify import check_shards


@dataclass
class Report:
    """What inspecting a records directory found."""

    info: schemas.DatasetInfo
    problems: list[str] = field(default_factory=list)
    scanned: bool = False
    records_by_split: Counter = field(default_factory=Counter)
    records_by_angle: Counter = field(default_factory=Counter)
    records_by_dataset: Counter = field(default_factory=Counter)
    corrupt_shards: list[str] = field(default_factory=list)


def stray_files(records: str, info: schemas.DatasetInfo) -> list[str]:
    """Files beside the manifest's shards that look like rotnet's: shards of another run, temp files."""
    if paths.is_remote(records):
        return []
    problems = []
    expected = {shard.name for split in info.splits.values() for shard in split.shards}
    for name in sorted(os.listdir(paths.local_path(records))):
        if sharding.parse_shard_name(name) and name not in expected:
            problems.append(f"{name}: a shard not listed in the manifest (left from another run?)")
        elif name.startswith("beam-temp"):
            problems.append(f"{name}: temporary files of an interrupted pipeline run")
    return problems


def scan(records: str, report: Report, progress: bool = True) -> None:
    """Read every record of every shard with CRC checks (schemas.verify); count by split, angle and
    dataset, and check each record's split against its shard's."""
    info = report.info
    report.scanned = True
    with tqdm(total=info.num_records, unit="rec", disable=not progress, desc="verify", leave=False) as bar:

        def count(split: str, data: bytes) -> None:
            try:
                fields = decode_fields(data, ("split", "angle_degrees", "dataset", "schema_version"))
            except SchemaError as error:
                report.problems.append(f"a record of split {split}: {error}")
                return
            if fields["split"] != split:
                report.problems.append(
                    f"a shard of split {split} holds a record of split {fields['split']!r}"
                )
            report.records_by_split[split] += 1
            report.records_by_angle[fields["angle_degrees"]] += 1
            report.records_by_dataset[fields["dataset"]] += 1
            bar.update()

        damaged = check_shards(info, records, read_records=True, on_record=count)
    report.problems += [str(problem) for problem in damaged]
    report.corrupt_shards += [os.path.basename(problem.path) for problem in damaged]
    wanted = set(info.angles_degrees)
    for angle, count_at_angle in sorted(report.records_by_angle.items()):
        if angle not in wanted:
            report.problems.append(
                f"{count_at_angle} records at angle {angle}, which the manifest does not list"
            )
    images = sum(split.num_images for split in info.splits.values())
    uneven = {
        angle: report.records_by_angle[angle] for angle in wanted if report.records_by_angle[angle] != images
    }
    if uneven and not report.corrupt_shards:
        sample = ", ".join(f"{angle}: {count}" for angle, count in sorted(uneven.items())[:5])
        report.problems.append(f"angles without exactly one record per image ({images}): {sample}")


def decode_images_check(records: str, info: schemas.DatasetInfo, per_shard: int = 4) -> list[str]:
    """Decode the pixels of the first records of each shard and compare with the manifest's image spec."""
    from pipeline.codec import decode_record_image

    problems = []
    for split in info.splits:
        for path in info.shard_paths(records, split):
            try:
                for index, data in enumerate(tfrecord_file.iter_records(path, verify=False)):
                    if index >= per_shard:
                        break
                    record = schemas.decode_example(data)
                    image = decode_record_image(record)
                    spec = info.image
                    if (
                        image.shape != (spec.height, spec.width, spec.channels)
                        or record.image_format != spec.format
                    ):
                        problems.append(
                            f"{Path(path).name}: image {image.shape} {record.image_format}, manifest {spec}"
                        )
            except (OSError, ValueError) as error:
                problems.append(f"{Path(path).name}: {error}")
    return problems


def sample_records(records: str, info: schemas.DatasetInfo, count: int, seed: int) -> list[schemas.Record]:
    """`count` records drawn uniformly from all shards (reproducible for a seed)."""
    population = [
        (split, shard_index, record_index)
        for split, split_info in info.splits.items()
        for shard_index, shard in enumerate(split_info.shards)
        for record_index in range(shard.num_records)
    ]
    chosen = sorted(random.Random(seed).sample(population, min(count, len(population))))
    wanted: dict[tuple[str, int], set[int]] = {}
    for split, shard_index, record_index in chosen:
        wanted.setdefault((split, shard_index), set()).add(record_index)
    picked = []
    for (split, shard_index), indices in wanted.items():
        path = info.shard_paths(records, split)[shard_index]
        for index, data in enumerate(tfrecord_file.iter_records(path, verify=False)):
            if index in indices:
                picked.append(schemas.decode_example(data))
            if index >= max(indices):
                break
    random.Random(seed).shuffle(picked)
    return picked


def summary_lines(report: Report) -> list[str]:
    info = report.info
    spec = info.image
    lines = [
        f"dataset        {info.dataset} (schema v{info.schema_version}, written by rotnet {info.package_version})",
        f"images         {spec.height}x{spec.width}x{spec.channels} {spec.format}, compression {info.compression}",
        f"angles         {describe_angles(info.angles_degrees)}",
        f"images read    {info.num_images_read:,}  errors {info.num_errors:,}"
        + (f"  ({', '.join(info.error_files)})" if info.error_files else ""),
        "",
        f"{'split':<12}{'images':>10}{'records':>14}{'shards':>8}{'MB':>10}{'bytes/rec':>11}",
    ]
    for name, split in info.splits.items():
        per_record = split.num_bytes / split.num_records if split.num_records else 0
        lines.append(
            f"{name:<12}{split.num_images:>10,}{split.num_records:>14,}{len(split.shards):>8}"
            f"{split.num_bytes / 1e6:>10.1f}{per_record:>11.0f}"
        )
    if report.scanned:
        counts = [report.records_by_angle[angle] for angle in info.angles_degrees]
        lines += [
            "",
            f"read back      {sum(report.records_by_split.values()):,} records; per dataset "
            + ", ".join(f"{k}: {v:,}" for k, v in sorted(report.records_by_dataset.items())),
            f"per angle      min {min(counts):,}  max {max(counts):,} records over {len(counts)} angles",
        ]
    return lines


def write_sheet(records: list[schemas.Record], path: Path, title: str) -> Path:
    from pipeline.codec import decode_record_image
    from tools import figures

    images = [decode_record_image(record) for record in records]
    captions = [f"{r.image_id} {r.angle_degrees}°" for r in records]
    tiles = figures.correction_tiles(images, [r.angle_degrees for r in records], captions)
    return figures.write_new_file(path, figures.render_tiles(tiles, columns=8, title=title).save)


@click.command(
    cls=interrupts.Command,
    interrupted="the records were only read, nothing changed (a --sheet or --audit-plot is written whole or not at "
    "all); rerun the same command",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("records", metavar="RECORDS")
@click.option(
    "--verify", is_flag=True, help="Read every record: check CRCs, schema, counts per split and angle."
)
@click.option(
    "--sheet",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a contact-sheet PNG of random records, each followed by its corrected version (a new "
    "file: an existing one is never replaced).",
)
@click.option(
    "--num-samples", default=16, show_default=True, type=click.IntRange(1, 256), help="Records on the sheet."
)
@click.option("--seed", default=0, show_default=True, help="Random seed for choosing the sheet's records.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary and problems as JSON instead of text."
)
@click.option(
    "--audit-cues",
    is_flag=True,
    help="Audit the records for angle shortcuts: can statistics that carry no orientation content "
    "(sharpness, encoded bytes, border rows, mean, std, ink share) predict the angle mod 90? Prints the "
    "classifier's accuracy against chance with a 95% interval (tools/cue_audit.py).",
)
@click.option(
    "--audit-plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --audit-cues: the PNG of each statistic by angle, a new file (default: cue_audit.png in "
    "the current directory; an existing one is never replaced).",
)
@click.option(
    "--audit-max-records",
    type=click.IntRange(100),
    default=None,
    help="With --audit-cues: records sampled (stably, by hash) for the audit (default: the audit's own, "
    "tools/cue_audit.DEFAULT_MAX_RECORDS, about a minute on one core).",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def main(records: str, **options: Any) -> None:
    """Check the records directory RECORDS (local path or gs://) against its dataset_info.json and
    summarize it: images, records, shards and bytes per split; with --verify, every record is read."""
    if not paths.is_remote(records) and not os.path.isdir(paths.local_path(records)):
        raise click.BadParameter(f"{records} is not a directory", param_hint="RECORDS")
    with gcs.failures_in_one_line([records], click.ClickException):  # seconds, not Beam's minutes
        _inspect(records, **options)


def _inspect(
    records: str,
    verify: bool,
    sheet: Path | None,
    num_samples: int,
    seed: int,
    as_json: bool,
    audit_cues: bool,
    audit_plot: Path | None,
    audit_max_records: int | None,
    no_progress: bool,
) -> None:
    if (audit_plot or audit_max_records) and not audit_cues:
        raise click.UsageError("--audit-plot and --audit-max-records go with --audit-cues")
    if audit_cues:
        audit_plot = audit_plot or Path("cue_audit.png")
    for figure in (sheet, audit_plot):  # checked again when written (figures.write_new_file)
        if figure and os.path.lexists(figure):
            raise click.UsageError(f"{figure} already exists: give another path or move that file away")
    try:
        info = schemas.load_manifest(records)
    except schemas.ManifestError as error:
        raise click.ClickException(str(error)) from None
    report = Report(info=info)
    report.problems += stray_files(records, info)
    if verify:
        scan(records, report, progress=not no_progress)
    else:  # the same check without reading the records: every shard there, with its size
        report.problems += [str(problem) for problem in check_shards(info, records)]
    report.problems += decode_images_check(records, info)
    try:
        if sheet:
            chosen = sample_records(records, info, num_samples, seed)
            write_sheet(chosen, sheet, f"{info.dataset}: {len(chosen)} random records and their corrections")
        audit = None
        if audit_cues:
            from tools import cue_audit, figures

            try:
                audit = cue_audit.audit(
                    records, max_records=audit_max_records or cue_audit.DEFAULT_MAX_RECORDS
                )
            except ValueError as error:  # too few records or images to split into training and test
                raise click.ClickException(f"cue audit: {error}") from None
            figures.write_new_file(audit_plot, lambda temporary: cue_audit.plot(audit, temporary))
    except FileExistsError as error:  # made meanwhile, by someone else
        raise click.ClickException(str(error)) from None
    except OSError as error:  # a full disk, a read-only directory: nothing half-written is left
        where = error.filename or sheet or audit_plot
        if ".rotnet-tmp-" in str(where):  # the figure's temporary name beside it: name the directory
            where = os.path.dirname(str(where))
        raise click.ClickException(
            f"cannot write {where} ({error.strerror or error}): free space or give a path in a writable "
            "directory"
        ) from None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "manifest": json.loads(info.to_json()),
                    "problems": report.problems,
                    "verified": report.scanned,
                    "records_by_angle": dict(sorted(report.records_by_angle.items())),
                    "corrupt_shards": report.corrupt_shards,
                    **({"cue_audit": audit.to_dict(), "cue_audit_plot": str(audit_plot)} if audit else {}),
                },
                indent=2,
            )
        )
    else:
        click.echo("\n".join(summary_lines(report)))
        if sheet:
            click.echo(f"\ncontact sheet  {sheet}")
        if audit:
            click.echo(f"\n{audit.table()}\n  plot of each statistic by angle: {audit_plot}")
        click.echo("")
        for problem in report.problems:
            click.echo(f"PROBLEM  {problem}")
        click.echo(
            f"{len(report.problems)} problem(s) found"
            if report.problems
            else "OK: the files match the manifest"
            + (" and every record was read back" if verify else " (use --verify to read every record)")
        )
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
