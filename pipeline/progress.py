"""Live progress of a local pipeline run: DoFns count, the launcher sums and shows a tqdm bar.

Beam's local runner reports metrics only when the job is done, and its workers may be other processes
(`direct_running_mode=multi_processing`). So every counting DoFn also keeps its cumulative counts in a
small JSON file under a progress directory (rewritten atomically at most every `FLUSH_SECONDS`, never
per element), and `ProgressMonitor` in the launcher sums those files on a timer. On remote runners the
directory is not set and only Beam metrics count (the Dataflow UI shows them live).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from schemas import output_rules

FLUSH_SECONDS = 0.5
METRICS_NAMESPACE = "rotnet"

# Counter names, shared by the DoFns (Beam metrics + progress files) and the final summary.
IMAGES_READ = "images_read"  # source images that entered the job (after --subset-fraction)
# Source images that became records, counted as they are written: records written / angles per image
# (a shard's records are mixed, so an image's last record comes only at the shard's end).
IMAGES_EXPANDED = "images_expanded"
IMAGE_ERRORS = "image_errors"  # source images that went to the errors file
RECORDS = "records"  # records serialized (all splits)
VIEWS_DROPPED = "views_dropped"  # Street View views 0 (markers) and 5 (upward), by design
FILES_SKIPPED = "files_skipped"  # files that are not images by name (e.g. README.txt, __MACOSX/)


class StageCounters:
    """Counts of one DoFn instance: Beam metrics counters plus, when running locally, a progress file.

    Create it in `DoFn.setup`; call `add(name=n, ...)` once per element (or per image), `flush()` in
    `finish_bundle`.
    """

    def __init__(self, progress_dir: str | None) -> None:
        from apache_beam.metrics import Metrics

        self._metrics = Metrics
        self._beam_counters: dict = {}
        self._totals: Counter = Counter()
        self._path = Path(progress_dir) / f"{os.getpid()}-{uuid.uuid4().hex}.json" if progress_dir else None
        self._last_flush = 0.0

    def add(self, **counts: int) -> None:
        for name, value in counts.items():
            if not value:
                continue
            counter = self._beam_counters.get(name)
            if counter is None:
                counter = self._beam_counters[name] = self._metrics.counter(METRICS_NAMESPACE, name)
            counter.inc(value)
            self._totals[name] += value
        if self._path is not None and time.monotonic() - self._last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._path is None or not self._totals:
            return
        self._last_flush = time.monotonic()
        with contextlib.suppress(OSError):  # progress is cosmetic: a vanished directory must not fail the job
            output_rules.write_aside(self._path, json.dumps(dict(self._totals)))


def read_progress(progress_dir: str | os.PathLike) -> Counter:
    """Sum of every DoFn instance's counts under `progress_dir`."""
    totals: Counter = Counter()
    for path in Path(progress_dir).glob("*.json"):
        try:
            totals.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced right now; the next poll reads it
    return totals


class ProgressMonitor:
    """A background thread showing the summed counts as a tqdm bar of records (with image counts)."""

    def __init__(
        self, progress_dir: str, expected_records: int | None, enabled: bool = True, interval: float = 1.0
    ) -> None:
        self.progress_dir = progress_dir
        self.expected_records = expected_records
        self.enabled = enabled
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressMonitor:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="rotnet-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        with tqdm(
            total=self.expected_records, unit="rec", unit_scale=True, desc="records", leave=False
        ) as bar:
            while True:
                stopping = self._stop.wait(self.interval)
                counts = read_progress(self.progress_dir)
                bar.n = counts[RECORDS]
                bar.set_postfix_str(
                    f"images read {counts[IMAGES_READ]:,}, expanded {counts[IMAGES_EXPANDED]:,}, "
                    f"errors {counts[IMAGE_ERRORS]:,}",
                    refresh=False,
                )
                bar.refresh()
                if stopping:
                    return
