"""The pipeline on a real Flink session cluster: 1 JobManager + 2 TaskManagers (separate JVMs) on
127.0.0.1, started by the test session from the cached Flink 1.19.3 (pipeline/engines), with Beam's job
server and rotnet's worker pool started by rotnet-pipeline itself (`--runner FlinkRunner
--flink_master 127.0.0.1:PORT`, nothing else).

    make test-cluster        # or: .venv/bin/python -m pytest -m cluster -p no:xdist tests/test_flink_cluster.py

What must hold: the records of an MNIST subset, the Street View samples (zips served over HTTP) and a
folder of photos with a corrupt file are byte-identical to the DirectRunner's (every shard's SHA-256 in
the manifest), with the same counts and errors file; Flink's REST API lists the job FINISHED with
subtasks on both TaskManagers; the balance comes from Beam's metrics. Faults: a TaskManager killed
(SIGKILL) mid-job and the job server killed mid-job end in one line within FAULT_TIMEOUT_S, with no
manifest over incomplete shards and the Flink job stopped; the rerun finishes with the DirectRunner's
bytes; a cluster stopped before submission is one line in seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import schemas
from pipeline.engines import cluster as engine_cluster
from tests.conftest import REPO_ROOT
from tests.pipeline_helpers import LOCAL_ONE_WORKER, build_street_view_parts, run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

FAULT_TIMEOUT_S = 90  # from the fault to the launcher's exit, on 2 busy cores (measured: ~2-10 s)
SUBMIT_TIMEOUT_S = 120  # from the launch to the job RUNNING on the cluster (measured: ~25 s)
STOPPED_CLUSTER_TIMEOUT_S = 30  # a stopped cluster: the REST check has a 5 s timeout


# --- helpers ------------------------------------------------------------------------------------------


def flink(cluster: engine_cluster.FlinkCluster, job_name: str) -> list[str]:
    """What a user types for their cluster, plus a job name the test can find in Flink's REST API."""
    return [
        "--runner",
        "FlinkRunner",
        "--flink_master",
        cluster.master,
        "--job_name",
        job_name,
        "--no-progress",
    ]


def new_job_name() -> str:
    return f"rotnet-test-{uuid.uuid4().hex[:10]}"


def shard_digests(directory: Path) -> dict[str, str]:
    info = schemas.load_manifest(str(directory))
    return {shard.name: shard.sha256 for split in info.splits.values() for shard in split.shards}


def assert_same_dataset(direct: Path, on_flink: Path) -> schemas.DatasetInfo:
    """Every shard's SHA-256, every count and the errors file equal; the balance from the runner's metrics."""
    reference, info = schemas.load_manifest(str(direct)), schemas.load_manifest(str(on_flink))
    assert shard_digests(on_flink) == shard_digests(direct) and shard_digests(direct)
    assert info.num_images_read == reference.num_images_read
    assert info.num_errors == reference.num_errors
    assert {name: (s.num_images, s.num_records) for name, s in info.splits.items()} == {
        name: (s.num_images, s.num_records) for name, s in reference.splits.items()
    }
    assert info.error_files == reference.error_files
    for name in info.error_files:  # the dead letters, byte for byte
        assert (on_flink / name).read_bytes() == (direct / name).read_bytes()
    assert "nothing_lost" not in info.config, info.config  # counted by Flink's metrics, not "not verified"
    assert info.config["runner"] == "FlinkRunner"
    return info


def flink_job(cluster: engine_cluster.FlinkCluster, name: str) -> dict:
    [job] = [job for job in cluster.rest("/jobs/overview")["jobs"] if job["name"] == name]
    return job


def taskmanagers_used(cluster: engine_cluster.FlinkCluster, jid: str) -> set[str]:
    """The TaskManagers (tm-1, tm-2) that ran at least one subtask of the job."""
    used = set()
    for vertex in cluster.rest(f"/jobs/{jid}")["vertices"]:
        for taskmanager in cluster.rest(f"/jobs/{jid}/vertices/{vertex['id']}/taskmanagers")["taskmanagers"]:
            used.add(taskmanager["taskmanager-id"])
    return used


def assert_finished_on_both_taskmanagers(cluster: engine_cluster.FlinkCluster, name: str) -> None:
    job = flink_job(cluster, name)
    assert job["state"] == "FINISHED", job
    assert taskmanagers_used(cluster, job["jid"]) == {"tm-1", "tm-2"}


def launch(*arguments: str) -> subprocess.Popen:
    """rotnet-pipeline in its own process (the fault tests signal things while it runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *arguments],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_until_running(cluster: engine_cluster.FlinkCluster, name: str, process: subprocess.Popen) -> str:
    """The job's id once Flink runs subtasks of it on tm-2 (the TaskManager the test kills)."""
    deadline = time.monotonic() + SUBMIT_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        jobs = [job for job in cluster.rest("/jobs/overview")["jobs"] if job["name"] == name]
        if jobs and jobs[0]["state"] == "RUNNING":
            jid = jobs[0]["jid"]
            vertices = cluster.rest(f"/jobs/{jid}")["vertices"]
            running = [v for v in vertices if v["status"] == "RUNNING"]
            if running and any(
                t["taskmanager-id"] == "tm-2" and t["status"] == "RUNNING"
                for v in running
                for t in cluster.rest(f"/jobs/{jid}/vertices/{v['id']}/taskmanagers")["taskmanagers"]
            ):
                return jid
        time.sleep(0.2)
    raise AssertionError(f"job {name} did not run on tm-2 within {SUBMIT_TIMEOUT_S} s")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error") or "Traceback" in line]


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid:
                found.append(
                    (int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
                )
        except (OSError, ValueError, IndexError):
            continue
    return found


def assert_unfinished_and_rotnets_only(output: Path) -> None:
    """No manifest over incomplete shards; nothing in the directory but rotnet's run ledger/lock/temp."""
    assert not (output / "dataset_info.json").exists()
    assert not list(output.glob("*.tfrecord*"))
    assert all(name.startswith(".rotnet") for name in os.listdir(output)), os.listdir(output)


def mnist_arguments(shared_data: Path, fraction: str, angles: str) -> list[str]:
    return ["--dataset", "mnist", "--mnist-dir", str(shared_data / "mnist-5k"), "--subset-fraction", fraction,
            "--angles", angles]  # fmt: skip


# --- byte identity -----------------------------------------------------------------------------------


def test_mnist_subset_on_flink_is_byte_identical_to_the_direct_runner(
    tmp_path: Path, shared_data: Path, flink_cluster
) -> None:
    arguments = mnist_arguments(shared_data, "0.004", "0,90,180")
    direct, on_flink, name = tmp_path / "direct", tmp_path / "flink", new_job_name()
    assert run_cli(*arguments, "--output-dir", str(direct), *LOCAL_ONE_WORKER).exit_code == 0
    result = run_cli(*arguments, "--output-dir", str(on_flink), *flink(flink_cluster, name))
    assert result.exit_code == 0, result.output
    info = assert_same_dataset(direct, on_flink)
    assert info.num_images_read == 12 and f"images read {info.num_images_read:,};" in result.output
    assert "--parallelism 2 (the cluster's task slots)" in result.output  # filled in from the cluster
    assert info.config["job_server"].endswith(".jar")
    assert_finished_on_both_taskmanagers(flink_cluster, name)


def test_street_view_zips_over_http_on_flink_are_byte_identical(
    tmp_path: Path, shared_data: Path, http_server: tuple[str, Path], flink_cluster
) -> None:
    base_url, www = http_server
    expected = build_street_view_parts(sorted((shared_data / "street-view-samples").glob("*.jpg")), www)
    arguments = ["--dataset", "street_view", "--street-view-mirror", base_url, "--angles", "0,90,180,270"]
    arguments += ["--image-size", "32"]
    direct, on_flink, name = tmp_path / "direct", tmp_path / "flink", new_job_name()
    result = run_cli(*arguments, "--download-dir", str(tmp_path / "cache-direct"), "--output-dir", str(direct),
                     *LOCAL_ONE_WORKER)  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run_cli(*arguments, "--download-dir", str(tmp_path / "cache-flink"), "--output-dir", str(on_flink),
                     *flink(flink_cluster, name))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "cache-flink").glob("part*.zip"))) == 10  # downloaded by the Flink workers
    info = assert_same_dataset(direct, on_flink)
    assert info.num_images_read == expected["kept"] == 10
    assert f"views dropped {expected['views_dropped']}" in result.output
    assert f"non-image files skipped {expected['skipped']}" in result.output
    assert_finished_on_both_taskmanagers(flink_cluster, name)


def test_own_images_with_a_corrupt_file_on_flink_give_the_same_records_and_dead_letters(
    tmp_path: Path, shared_data: Path, flink_cluster
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((shared_data / "street-view-samples").glob("*.jpg"))[:3]:
        (photos / path.name).write_bytes(path.read_bytes())
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    arguments = ["--dataset", "images", "--input", str(photos), "--angles", "0,90", "--image-size", "32"]
    arguments += ["--max-error-fraction", "0.5"]
    direct, on_flink, name = tmp_path / "direct", tmp_path / "flink", new_job_name()
    assert run_cli(*arguments, "--output-dir", str(direct), *LOCAL_ONE_WORKER).exit_code == 0
    result = run_cli(*arguments, "--output-dir", str(on_flink), *flink(flink_cluster, name))
    assert result.exit_code == 0, result.output
    info = assert_same_dataset(direct, on_flink)
    assert (info.num_images_read, info.num_errors) == (4, 1)
    assert "broken.jpg" in (on_flink / info.error_files[0]).read_text()
    assert_finished_on_both_taskmanagers(flink_cluster, name)


# --- faults -------------------------------------------------------------------------------------------


def test_a_taskmanager_killed_mid_job_publishes_nothing_and_the_rerun_writes_the_direct_bytes(
    tmp_path: Path, shared_data: Path, flink_cluster
) -> None:
    # Big enough to be running when tm-2 dies: 1,000 digits x 36 angles (~40 s on the cluster).
    arguments = mnist_arguments(shared_data, "0.2", "0-359:10")
    direct, on_flink, name = tmp_path / "direct", tmp_path / "flink", new_job_name()
    assert run_cli(*arguments, "--output-dir", str(direct), *LOCAL_ONE_WORKER).exit_code == 0
    process = launch(*arguments, "--output-dir", str(on_flink), *flink(flink_cluster, name))
    try:
        wait_until_running(flink_cluster, name, process)
        flink_cluster.kill_worker(2)  # SIGKILL: no goodbye to the JobManager
        killed = time.monotonic()
        _, stderr = process.communicate(timeout=FAULT_TIMEOUT_S)
        took = time.monotonic() - killed
    finally:
        process.kill()
    if process.returncode == 0:  # Flink recovered on its own: then the bytes must be the same
        assert_same_dataset(direct, on_flink)
    else:
        assert process.returncode == 1 and took < FAULT_TIMEOUT_S, stderr
        [line] = error_lines(stderr)
        # Flink names tm-2 itself ("TaskManager with id tm-2 is no longer reachable") or, when the job fails
        # with another cause (a refused connection), rotnet does ("the cluster lost TaskManager tm-2 during the job").
        assert line.startswith("Error: the Beam job failed: ") and "tm-2" in line, line
        assert "rerun the same command" in line
        assert_unfinished_and_rotnets_only(on_flink)
        assert flink_job(flink_cluster, name)["state"] in ("FAILED", "CANCELED")
    # The cluster made whole again, the same command finishes with the DirectRunner's bytes.
    flink_cluster.start_worker(2)
    flink_cluster.wait_for_workers()
    rerun = new_job_name()
    result = run_cli(*arguments, "--output-dir", str(on_flink), *flink(flink_cluster, rerun))
    assert result.exit_code == 0, result.output
    assert_same_dataset(direct, on_flink)
    assert_finished_on_both_taskmanagers(flink_cluster, rerun)


def test_the_job_server_killed_mid_job_is_one_line_and_the_flink_job_is_cancelled(
    tmp_path: Path, shared_data: Path, flink_cluster
) -> None:
    arguments = mnist_arguments(shared_data, "0.2", "0-359:10")
    output, name = tmp_path / "flink", new_job_name()
    process = launch(*arguments, "--output-dir", str(output), *flink(flink_cluster, name))
    try:
        wait_until_running(flink_cluster, name, process)
        [(job_server, _)] = [child for child in children(process.pid) if " -jar " in child[1]]
        helpers = children(process.pid)
        os.kill(job_server, 9)
        killed = time.monotonic()
        _, stderr = process.communicate(timeout=FAULT_TIMEOUT_S)
        took = time.monotonic() - killed
    finally:
        process.kill()
    assert process.returncode == 1 and took < FAULT_TIMEOUT_S, stderr
    [line] = error_lines(stderr)
    assert re.match(r"Error: the Flink job server \(PID \d+\) stopped during the job", line), line
    assert "the job on the cluster was cancelled" in line and "rerun the same command" in line
    assert_unfinished_and_rotnets_only(output)
    assert flink_job(flink_cluster, name)["state"] in ("CANCELED", "FAILED")  # nothing left writing
    for pid, command in helpers:  # the worker pool (and its workers) went with the launcher
        assert engine_cluster.process_start_time(pid) is None, command


def test_a_cluster_stopped_before_submission_is_one_line_in_seconds(
    tmp_path: Path, shared_data: Path
) -> None:
    """Also `rotnet-cluster start|stop`: stop ends exactly the processes start recorded."""
    directory = tmp_path / "cluster"
    cli = [sys.executable, "-m", "pipeline.engines.cli"]
    try:
        started = subprocess.run([*cli, "start", "flink", "--dir", str(directory), "--workers", "1"],
                                 capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert started.returncode == 0, started.stderr
        master = re.search(r"--flink_master (\S+)", started.stdout).group(1)
        recorded = [(p.pid, p.start_time) for p in engine_cluster.FlinkCluster.attach(directory).processes]
        assert len(recorded) == 2 and all(engine_cluster.process_start_time(pid) == t for pid, t in recorded)
        stopped = subprocess.run([*cli, "stop", "flink", "--dir", str(directory)], capture_output=True,
                                 text=True, timeout=120, check=False)  # fmt: skip
        assert stopped.returncode == 0 and "stopped 2 process(es)" in stopped.stdout, stopped
        assert all(engine_cluster.process_start_time(pid) != t for pid, t in recorded)
    finally:  # a cluster `rotnet-cluster start` started outlives its command: never leave one behind
        engine_cluster.FlinkCluster.attach(directory).stop()

    output = tmp_path / "records"
    began = time.monotonic()
    process = launch(*mnist_arguments(shared_data, "0.004", "0,90"), "--output-dir", str(output),
                     "--runner", "FlinkRunner", "--flink_master", master, "--no-progress")  # fmt: skip
    _, stderr = process.communicate(timeout=STOPPED_CLUSTER_TIMEOUT_S)
    assert process.returncode == 1 and time.monotonic() - began < STOPPED_CLUSTER_TIMEOUT_S
    assert error_lines(stderr) == [
        f"Error: no Flink cluster answers at --flink_master {master} (http://{master}/config: [Errno 111] "
        "Connection refused): start one (`rotnet-cluster start flink` prints the address) or give the "
        "JobManager's REST host:port"
    ]
    assert not output.exists()  # checked before the output directory is touched
