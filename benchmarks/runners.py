"""The same jobs on the DirectRunner (1 and 2 workers) and on a Flink cluster (parallelism 1 and 2):
records/s and the fixed start-up cost, side by side, median and spread of several rounds.

    rotnet-bench runners            # 3 rounds (~15 minutes on 2 cores)
    rotnet-bench runners --quick    # 1 round, smaller jobs: a smoke run

The Flink cluster is the one `rotnet-cluster start flink` starts (1 JobManager + 2 TaskManagers with one
slot each, on this machine), started once for the benchmark; each Flink run starts its own job server
and worker pool, as every `rotnet-pipeline --runner FlinkRunner` does. Every run is a fresh
`rotnet-pipeline` process, timed from launch to exit (what a user waits for: interpreter start,
planning, job server, submission, the job, verification, manifest). Per round and configuration:

* start-up: a tiny job (10 MNIST digits x 1 angle): the fixed cost of a run;
* MNIST: the 5,000 digits x 72 angles (0-359:5) = 360,000 28-px PNG records;
* Street View: the 10 samples, each under 8 placemark names, x 360 angles = 28,800 224-px JPEG records
  (--street-view-dir);

records/s = records / (run time - that round's start-up time): the jobs are big enough that the work,
not the start-up's jitter, dominates (a first version with 72,000 and 3,600 records gave differences
below the jitter of Flink's ~45 s start-up on the shared machine). The configurations take turns within a
round (direct-1, direct-2, flink-1, flink-2, ...), so that each sees the same machine. On 2 cores
Flink cannot win: the point is the honest price of an engine that scales out.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import schemas
from benchmarks.common import REPO_ROOT, shared_data_dir

ROUNDS = 3
STREET_VIEW_COPIES = 8


def _configurations(master: str) -> dict[str, list[str]]:
    flink = ["--runner", "FlinkRunner", "--flink_master", master]
    return {
        "DirectRunner, 1 worker": ["--direct_num_workers", "1"],
        "DirectRunner, 2 workers": ["--direct_num_workers", "2"],
        "Flink, parallelism 1": [*flink, "--parallelism", "1"],
        "Flink, parallelism 2": [*flink, "--parallelism", "2"],
    }


def _jobs(quick: bool, street_view_dir: Path) -> dict[str, list[str]]:
    mnist = ["--dataset", "mnist", "--mnist-dir", str(shared_data_dir() / "mnist-5k")]
    return {
        "start-up": [*mnist, "--subset-fraction", "0.002", "--angles", "0"],
        "MNIST": [*mnist, "--subset-fraction", "0.1" if quick else "1.0", "--angles", "0-359:5"],
        "Street View": [
            "--dataset",
            "street_view",
            "--street-view-dir",
            str(street_view_dir),
            "--angles",
            "0-359:30" if quick else "all",
        ],
    }


def _run(job: list[str], configuration: list[str], output: Path) -> tuple[float, int]:
    """(seconds from launch to exit, records written) of one rotnet-pipeline process."""
    if output.exists():
        shutil.rmtree(output)
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        *job,
        *configuration,
        "--output-dir",
        str(output),
        "--no-progress",
    ]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")
    records = schemas.load_manifest(str(output)).num_records
    shutil.rmtree(output)
    return seconds, records


def _cell(values: list[float], unit: str = "", digits: int = 0, rounds: int = 0) -> str:
    if not values:
        return "n/a"
    median = statistics.median(values)
    if rounds and len(values) < rounds:  # rounds whose run was not longer than their start-up
        return f"{median:,.{digits}f}{unit} ({len(values)} of {rounds} rounds)"
    if len(values) == 1:
        return f"{median:,.{digits}f}{unit}"
    return f"{median:,.{digits}f}{unit} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def run(quick: bool = False) -> str:
    from pipeline.engines import cluster, dist

    rounds = 1 if quick else ROUNDS
    dist.fetch(dist.FLINK, log=lambda line: print(line, file=sys.stderr))
    scratch = Path(tempfile.mkdtemp(prefix="rotnet-bench-runners-"))
    try:
        street_view = scratch / "street-view"
        street_view.mkdir()
        for path in sorted((shared_data_dir() / "street-view-samples").glob("*.jpg")):
            placemark, view = path.stem.split("_")
            for copy in range(1 if quick else STREET_VIEW_COPIES):
                shutil.copyfile(path, street_view / f"{placemark}c{copy}_{view}.jpg")
        with cluster.FlinkCluster(scratch / "flink", kill_on_parent_exit=True) as flink:
            configurations = _configurations(flink.master)
            jobs = _jobs(quick, street_view)
            seconds: dict[tuple[str, str], list[float]] = {}
            rates: dict[tuple[str, str], list[float]] = {}
            records: dict[str, int] = {"MNIST": 0, "Street View": 0}
            loads: list[float] = []
            failures: list[str] = []
            for number in range(rounds):
                for name, configuration in configurations.items():
                    loads.append(os.getloadavg()[0])
                    try:
                        startup, _ = _run(jobs["start-up"], configuration, scratch / "out")
                    except RuntimeError as error:  # a failed run is a finding: recorded, the rest goes on
                        failures.append(f"{name}, start-up: {error}")
                        continue
                    seconds.setdefault((name, "start-up"), []).append(startup)
                    for job in ("MNIST", "Street View"):
                        try:
                            took, records[job] = _run(jobs[job], configuration, scratch / "out")
                        except RuntimeError as error:
                            failures.append(f"{name}, {job}: {error}")
                            continue
                        seconds.setdefault((name, job), []).append(took)
                        if took > startup:  # else the start-up's jitter exceeded the work: no rate
                            rates.setdefault((name, job), []).append(records[job] / (took - startup))
                    print(f"round {number + 1}/{rounds}: {name} done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    lines = [
        f"{rounds} round(s); each cell: median (min-max) over the rounds. Start-up = a whole `rotnet-pipeline` "
        "run of 10 MNIST digits x 1 angle; records/s = records / (run time - start-up of that round). "
        f"MNIST: {records['MNIST']:,} records (28 px PNG); Street View: {records['Street View']:,} records "
        f"(224 px JPEG q95, the 10 samples under {1 if quick else STREET_VIEW_COPIES} names each). Flink 1.19.3 session cluster on this machine (1 JobManager, 2 TaskManagers x 1 slot), "
        f"Beam job server {dist.job_server(dist.FLINK).beam_version}, EXTERNAL workers (rotnet's worker pool). "
        f"Load average (1 min) at the start of each configuration: {min(loads):.1f}-{max(loads):.1f}.",
        "",
        "| runner | start-up s | MNIST run s | MNIST records/s | Street View run s | Street View records/s |",
        "|---|---|---|---|---|---|",
    ]
    for name in configurations:
        lines.append(
            f"| {name} | {_cell(seconds.get((name, 'start-up'), []), '', 1)} | {_cell(seconds.get((name, 'MNIST'), []), '', 1)} | "
            f"{_cell(rates.get((name, 'MNIST'), []), rounds=rounds)} | {_cell(seconds.get((name, 'Street View'), []), '', 1)} | "
            f"{_cell(rates.get((name, 'Street View'), []), rounds=rounds)} |"
        )
    base = statistics.median(rates.get(("DirectRunner, 1 worker", "MNIST")) or [float("nan")])
    flink_two = statistics.median(rates.get(("Flink, parallelism 2", "MNIST")) or [float("nan")])
    extra = statistics.median(
        seconds.get(("Flink, parallelism 2", "start-up")) or [float("nan")]
    ) - statistics.median(seconds.get(("DirectRunner, 1 worker", "start-up")) or [float("nan")])
    lines += [
        "",
        f"Flink (parallelism 2) runs MNIST at {flink_two / base:.2f}x the records/s of the DirectRunner with one "
        f"worker, and every Flink run costs {extra:.0f} s more to start (job server JVM, worker pool, job "
        "submission and scheduling). On 2 cores the two TaskManagers share the cores with the JobManager, the "
        "job server and the Python workers: the figures are the price of the engine, not its scaling.",
    ]
    if failures:
        lines += ["", f"Failed runs ({len(failures)}):", *[f"- {failure[:600]}" for failure in failures]]
    return "\n".join(lines)
