"""Your own upright images: a directory (read recursively), a file or a glob, local or gs://.

    rotnet-pipeline --dataset images --input ~/photos --output-dir data/records/mine --angles 0-359:5

Image ids are the paths below the input directory ("2020/beach.jpg"), so the same files give the same
ids, splits and records on every machine. Files whose names are not images (`codec.IMAGE_EXTENSIONS`)
are skipped and counted; files that are images by name but cannot be decoded become errors-file lines.
"""

from __future__ import annotations

import os
import re

from pipeline import progress
from pipeline.codec import IMAGE_EXTENSIONS
from pipeline.config import JobError, PipelineConfig
from pipeline.datasets.common import ReadFiles, SourcePlan, match, train_and_validation
from schemas import paths

DEFAULTS = {"image_size": 224, "image_format": "jpeg", "channels": 3, "crop_largest_rect": True}

_GLOB_CHARACTERS = re.compile(r"[*?\[]")


def check(config: PipelineConfig) -> list[str]:
    """Option problems specific to --dataset images."""
    return [] if config.input_pattern else ["--dataset images needs --input DIR_OR_GLOB"]


def resolve_input(pattern: str) -> tuple[str, str]:
    """(glob, base directory) for --input: a directory reads everything below it (recursively)."""
    if _GLOB_CHARACTERS.search(pattern):
        head = _GLOB_CHARACTERS.split(pattern, maxsplit=1)[0]
        base = head.rsplit("/", 1)[0] if "/" in head else "."
        return pattern, base
    if paths.is_remote(pattern):
        if pattern.endswith("/") or len(match(pattern.rstrip("/") + "/*")) > 0:
            return pattern.rstrip("/") + "/**", pattern.rstrip("/")
        return pattern, pattern.rsplit("/", 1)[0]
    if os.path.isdir(pattern):
        return os.path.join(pattern, "**"), pattern
    if os.path.isfile(pattern):
        return pattern, os.path.dirname(pattern) or "."
    raise JobError(f"--input {pattern} does not exist (give a directory, a file or a glob)")


def identify_file(path: str, relative: str) -> tuple[str | None, str | None]:
    """An image file's id is its path below the input directory; other names are skipped (counted)."""
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        return None, progress.FILES_SKIPPED
    return relative, None


def plan(config: PipelineConfig, progress_dir: str | None) -> SourcePlan:
    """The files --input names, split train/validation by a hash of their ids."""
    pattern, base = resolve_input(config.input_pattern)
    matched = [item.path for item in match(pattern)]
    images = [path for path in matched if path.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
        raise JobError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) match --input {config.input_pattern} "
            f"({len(matched)} other file(s))"
        )
    notes = [
        f"images: {len(images):,} image file(s) under {base}, {len(matched) - len(images):,} other file(s)"
    ]
    source = ReadFiles(config, pattern, base, identify_file, progress_dir)
    return SourcePlan(source, train_and_validation(config, len(images) * config.subset_fraction), notes)
