"""Your own upright images: a directory (read recursively), a file or a glob, local or gs://.

    rotnet-pipeline --dataset images --input ~/photos --output-dir data/records/mine --angles 0-359:5

Image ids are the paths below the input directory ("2020/beach.jpg"), so the same files give the same
ids, splits and records on every machine. Files whose names are not images (`codec.IMAGE_EXTENSIONS`)
are skipped and counted; files that are images by name but cannot be decoded become errors-file lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline import inputs, progress
from pipeline.codec import IMAGE_EXTENSIONS
from pipeline.config import JobError, PipelineConfig
from pipeline.datasets import Setting
from pipeline.datasets.common import (
    FileSource,
    ReadFiles,
    SourcePlan,
    list_files,
    load_image_files,
    train_and_validation,
)
from pipeline.inputs import literal_or_glob

DEFAULTS = {"image_size": 224, "image_format": "jpeg", "channels": 3, "crop_largest_rect": True}


SETTINGS = (
    Setting(
        "input_pattern",
        "--input",
        "A directory (read recursively), a file or a glob of "
        f"{'/'.join(extension.lstrip('.') for extension in IMAGE_EXTENSIONS)} files, local or gs://. "
        "Image ids are the paths below the directory.",
        metavar="DIR_OR_GLOB",
        location="pattern",
    ),
)


def check(config: PipelineConfig) -> list[str]:
    """Option problems specific to --dataset images."""
    return [] if config.setting("input_pattern") else ["--dataset images needs --input DIR_OR_GLOB"]


def resolve_input(given: str) -> FileSource:
    """The files --input names. A path that exists is literal, even with glob characters in it (a
    directory `photos[2020]` is read, not `photos2`); only a path that does not exist is a glob."""
    files = list_files(given)
    if files.pattern is None and not files.entries and literal_or_glob(given) == "glob":
        raise JobError(f"--input {given} does not exist (give a directory, a file or a glob)")
    return files


def identify_file(path: str, relative: str) -> tuple[str | None, str | None]:
    """An image file's id is its path below the input directory; other names are skipped (counted)."""
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        return None, progress.FILES_SKIPPED
    return relative, None


def plan(config: PipelineConfig, progress_dir: str | None) -> SourcePlan:
    """The files --input names, split train/validation by a hash of their ids."""
    given = config.setting("input_pattern")
    files = resolve_input(given)
    listed, problems = files.listed(), files.problems
    images = [name for name in listed if name.lower().endswith(IMAGE_EXTENSIONS)]
    if not images and not problems:
        raise JobError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) match --input {given} "
            f"({len(listed)} other file(s))"
        )
    links = sum(1 for entry in problems if inputs.is_skipped_link(entry.problem))
    notes = [  # "other" counts what the summary's "non-image files skipped" will count
        f"images: {len(images):,} image file(s) under {files.base}, {len(listed) - len(images) + links:,} "
        f"other file(s) skipped ({links:,} of them symlinked directories not followed or read twice)"
    ]
    notes += [f"{files.base}/{entry.relative}: {entry.problem}" for entry in problems]
    source = ReadFiles(config, files, identify_file, progress_dir)
    expected = train_and_validation(config, len(images) * config.subset_fraction)
    return SourcePlan(source, expected, notes, renames_duplicate_ids=True)  # ReadFiles renames on names


def source_images(
    config: Mapping[str, Any], split: str, source_dir: str | None = None, channels: int = DEFAULTS["channels"]
) -> list[tuple[str, np.ndarray]]:
    """The image files of `split` below `source_dir`, else the run's --input directory, as the run
    selected them (ids: paths below it; common.load_image_files)."""
    return load_image_files(source_dir or config.get("input_pattern"), split, config, channels, identify_file)
