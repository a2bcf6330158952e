"""Helpers shared by the benchmarks: where the real sample data is, machine facts, timing."""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Written into every work directory a benchmark or the demo creates: the proof that it may delete it.
WORK_DIR_MARKER = ".rotnet-work-dir"


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout, or $ROTNET_SHARED_DATA."""
    configured = os.environ.get("ROTNET_SHARED_DATA")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"sample data not found at {path}; set ROTNET_SHARED_DATA to the folder holding "
            "mnist-5k/ and street-view-samples/"
        )
    return path


def street_view_samples() -> list[Path]:
    return sorted((shared_data_dir() / "street-view-samples").glob("*.jpg"))


def machine_summary() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory_gib:.0f} GiB RAM, Python {platform.python_version()}"


def load_verdict(load_start: float, load_end: float) -> str:
    """One plain sentence on whether a timing table can be trusted at the machine's load (1-min averages).

    `load_start` is taken before the benchmark starts its own work; `load_end` includes the benchmark's
    own processes, which keep up to every core busy by design, so the others' share at the end is
    estimated as load_end - cores."""
    cores = os.cpu_count() or 1
    others = max(load_start, load_end - cores)
    if others <= 0.5 * cores:
        return f"Other users' load was about {others:.1f} on {cores} cores (close to idle): the figures can be trusted."
    if others <= cores:
        return (
            f"Other users' load was up to about {others:.1f} on {cores} cores: absolute figures may be somewhat "
            "low; the ratios measured side by side are the figures to trust."
        )
    return (
        f"NOT an idle machine: other users' load reached about {others:.1f} on {cores} cores, so the absolute "
        "figures are not trustworthy (too low, ranges wide); only ratios measured side by side in the same "
        "windows mean something. Rerun on an idle machine for the record."
    )


def best_of(repeats: int, function: Callable[[], object]) -> float:
    """The fastest of `repeats` wall-clock timings of `function()` in seconds (least disturbed run)."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def fresh_work_dir(path: Path) -> Path:
    """An empty `path` for a benchmark's or the demo's outputs. A directory left by an earlier run (it
    holds WORK_DIR_MARKER) is removed first; anything else there stops the run instead of being deleted."""
    if path.is_symlink() or (path.exists() and not (path / WORK_DIR_MARKER).is_file()):
        raise FileExistsError(
            f"{path} exists and was not made by rotnet's benchmarks or demo ({WORK_DIR_MARKER} missing); "
            "move it away or delete it yourself"
        )
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / WORK_DIR_MARKER).write_text("made by rotnet's benchmarks or demo; removed by their next run\n")
    return path
