"""The output directory of a run: what a run leaves there besides the records, and clearing it.

OUTPUT_DIR/.rotnet-tmp-RUN/             the shards and errors file as written, and stats.json (the
                                        per-file counts the workers measured); renamed into place
                                        once checked, then deleted
OUTPUT_DIR/.rotnet-progress-RUN/        local runs: the DoFns' live counts (deleted at the end)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import schemas
from pipeline.config import JobError
from pipeline.datasets.common import match
from schemas import paths, sharding
from schemas.manifest import manifest_path

_TEMP_PREFIX = ".rotnet-tmp-"
STATS_NAME = "stats.json"


def temp_dir(output_dir: str, run_id: str) -> str:
    """Where a run's workers write its files before the launcher renames them into place."""
    return paths.join(output_dir, _TEMP_PREFIX + run_id)


_PROGRESS_PREFIX = ".rotnet-progress-"


def remove_temp_dir(path: str) -> None:
    """Delete a run's temporary directory (whatever its files: only this run wrote there)."""
    if not paths.is_remote(path):
        shutil.rmtree(paths.local_path(path), ignore_errors=True)
        return
    from apache_beam.io.filesystems import FileSystems

    leftovers = [item.path for item in match(paths.join(path, "*"))]
    if leftovers:
        FileSystems.delete(leftovers)


def progress_dir(output_dir: str, run_id: str) -> str:
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
        _TEMP_PREFIX + "*/*",
    ]
    stale = {item.path for pattern in patterns for item in match(paths.join(output_dir, pattern))}
    if stale:
        FileSystems.delete(sorted(stale))
    if not paths.is_remote(output_dir):
        local = Path(paths.local_path(output_dir))
        # Beam's local match lists files, not directories.
        for directory in [
            *local.glob("beam-temp-*"),
            *local.glob(_PROGRESS_PREFIX + "*"),
            *local.glob(_TEMP_PREFIX + "*"),
        ]:
            shutil.rmtree(directory, ignore_errors=True)
        local.mkdir(parents=True, exist_ok=True)
