"""pipeline/engines without a cluster (these run in `make test`; tests/test_flink_cluster.py and
tests/test_spark_cluster.py run the real clusters in `make test-cluster`): the cache, the launcher jar,
unpacking, stopping by PID only the processes started, the cluster configuration, the shared worker
pool, and rotnet-pipeline's checks for --runner FlinkRunner, each a line in seconds.

    .venv/bin/python -m pytest tests/test_engines.py -q
"""

from __future__ import annotations

import http.server
import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import runner
from pipeline.config import JobError
from pipeline.engines import cluster, dist, launch, worker_pool
from tests.pipeline_helpers import run_cli

# --- The cache and what is fetched into it -----------------------------------------------------------


def test_the_cache_is_under_the_users_cache_folder_or_rotnet_cache_dir(tmp_path: Path) -> None:
    assert dist.cache_root({}) == Path("~/.cache/rotnet").expanduser()
    assert dist.cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/rotnet")
    assert dist.cache_root({dist.CACHE_VARIABLE: str(tmp_path), "XDG_CACHE_HOME": "/x"}) == tmp_path


def test_the_launcher_jar_has_a_valid_manifest_naming_every_jar(tmp_path: Path) -> None:
    class_path = [f"lib/{'a-very-long-artifact-name-' * 2}{index}-1.2.3.jar" for index in range(40)]
    jar = tmp_path / "launcher.jar"
    dist.write_launcher_jar(jar, "org.example.Main", class_path)
    with zipfile.ZipFile(jar) as archive:
        assert archive.namelist() == ["META-INF/MANIFEST.MF"]
        raw = archive.read("META-INF/MANIFEST.MF")
    lines = raw.split(b"\r\n")
    assert all(len(line) <= 72 for line in lines)  # the JAR specification's line limit
    # Continuation lines start with one space, which is not part of the value.
    joined = b"".join(line[1:] if line.startswith(b" ") else b"\n" + line for line in lines).decode()
    attributes = dict(line.split(": ", 1) for line in joined.strip().splitlines())
    assert attributes["Main-Class"] == "org.example.Main"
    assert attributes["Class-Path"].split(" ") == class_path
    assert raw.endswith(b"\r\n\r\n")


def test_the_pinned_job_server_classpaths_are_complete_sha256_lists() -> None:
    for spec in (dist.FLINK, dist.SPARK):
        pinned = dist.read_lock(spec.lock_file)
        assert f"{spec.runner_artifact}-{spec.assembled_beam_version}.jar" in pinned
        assert "slf4j-jdk14-1.7.30.jar" in pinned
        assert all(len(digest) == 64 and int(digest, 16) >= 0 for digest in pinned.values())
    assert len(dist.read_lock(dist.FLINK.lock_file)) == 162
    assert "<artifactId>beam-runners-flink-1.19</artifactId><version>2.62.0</version>" in dist.assembly_pom(
        dist.FLINK
    )


def _archive(path: Path, members: dict[str, bytes], links: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return path


def test_unpacking_copies_only_regular_files_directly_below_the_prefix(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "x.tar.gz",
        {
            "pkg/deps/lib/a.jar": b"a",
            "pkg/deps/lib/b.jar": b"b",
            "pkg/deps/lib/sub/c.jar": b"c",
            "pkg/deps/lib/.hidden": b"h",
            "pkg/other/d.jar": b"d",
        },
        {"pkg/deps/lib/evil.jar": "/etc/passwd"},
    )
    home = tmp_path / "home"
    dist._unpack(archive, dist.Unpack("x.tar.gz", "pkg/deps/lib/", "lib"), home)
    assert sorted(path.name for path in (home / "lib").iterdir()) == ["a.jar", "b.jar"]
    assert not any(path.is_symlink() for path in (home / "lib").iterdir())
    with pytest.raises(dist.FetchError, match=r"lacks \['flink-dist-1.19.3.jar'\]"):
        dist._unpack(
            archive, dist.Unpack("x.tar.gz", "pkg/deps/lib/", "l2", names=("flink-dist-1.19.3.jar",)), home
        )


def test_a_fetched_folder_counts_only_when_its_marker_and_sizes_agree(tmp_path: Path) -> None:
    folder = tmp_path / "engine"
    (folder / "lib").mkdir(parents=True)
    (folder / "lib" / "a.jar").write_bytes(b"12345")
    assert dist._complete(folder) is None  # no marker: an interrupted fetch
    dist._seal(folder, {"engine": "test"})
    assert dist._complete(folder)["files"]["lib/a.jar"][0] == 5
    assert dist.verify(folder) == []
    (folder / "lib" / "a.jar").write_bytes(b"12346")  # same size, other bytes: only verify sees it
    assert dist._complete(folder) is not None and dist.verify(folder) == ["lib/a.jar"]
    (folder / "lib" / "a.jar").write_bytes(b"1")
    assert dist._complete(folder) is None


# --- Processes: started, stopped by PID, never a stranger --------------------------------------------


def test_only_the_process_started_is_signalled_not_one_that_reused_its_pid(tmp_path: Path) -> None:
    popen, started = cluster.start_process("sleeper", ["sleep", "60"], tmp_path / "sleep.log")
    stranger = cluster.Started("sleeper", popen.pid, started.start_time + 1, "")  # same PID, other start
    assert not stranger.alive() and stranger.signal(signal.SIGKILL) is False
    assert popen.poll() is None  # untouched
    cluster.stop_processes([started], timeout_s=5)
    assert popen.poll() is not None and not started.alive()


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    popen, started = cluster.start_process("stubborn", [sys.executable, "-c", script], tmp_path / "s.log")
    deadline = time.monotonic() + 30
    while "ready" not in (tmp_path / "s.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    began = time.monotonic()
    cluster.stop_processes([started], timeout_s=1)
    assert popen.returncode == -signal.SIGKILL and time.monotonic() - began < 10


def _fake_home(tmp_path: Path) -> Path:
    home = tmp_path / "flink-home"
    (home / "conf").mkdir(parents=True)
    (home / "conf" / "config.yaml").write_text(
        "env:\n  java:\n    opts:\n      all: --add-opens=java.base/java.lang=ALL-UNNAMED\n"
    )
    (home / "conf" / "log4j-console.properties").write_text("# log4j\n")
    return home


def test_the_flink_configuration_binds_127_0_0_1_on_free_ports_with_one_slot_per_taskmanager(
    tmp_path: Path,
) -> None:
    import yaml

    flink = cluster.FlinkCluster(tmp_path / "cluster", home=_fake_home(tmp_path))
    flink.directory.mkdir()
    flink._configure()
    settings = yaml.safe_load((flink.directory / "conf" / "config.yaml").read_text())
    assert settings["env.java.opts.all"] == "--add-opens=java.base/java.lang=ALL-UNNAMED"  # the dist's, kept
    for key in (
        "jobmanager.bind-host",
        "jobmanager.rpc.address",
        "taskmanager.bind-host",
        "rest.bind-address",
    ):
        assert settings[key] == "127.0.0.1"
    assert settings["rest.port"] == flink.ports["rest"] != settings["jobmanager.rpc.port"] > 1024
    assert settings["taskmanager.numberOfTaskSlots"] == 1 and settings["blob.server.port"] == "0"
    assert settings["taskmanager.memory.managed.fraction"] == 0.1  # heap for a shard's prepared images
    assert (settings["jobmanager.memory.process.size"], settings["taskmanager.memory.process.size"]) == (
        "1024m",
        "2048m",
    )
    assert (flink.directory / "conf" / "log4j-console.properties").is_file()
    command, env = flink._worker_command(2)
    assert command[-2:] == [
        "start-foreground",
        "-Dtaskmanager.resource-id=tm-2",
    ]  # exec: the PID is the JVM's
    assert env["FLINK_CONF_DIR"] == str(flink.directory / "conf") and env["FLINK_LOG_DIR"].startswith(
        str(flink.directory)
    )


def test_starting_without_the_engine_fetched_or_without_java_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dist, "engine_home", lambda spec: None)
    with pytest.raises(
        cluster.ClusterError, match=r"^flink is not fetched: run `rotnet-cluster fetch flink`$"
    ):
        cluster.FlinkCluster(tmp_path).start()
    monkeypatch.setenv("PATH", str(tmp_path))  # no java there
    assert cluster.java_problem().startswith("no `java` on PATH: install a Java runtime")
    with pytest.raises(cluster.ClusterError, match="no `java` on PATH"):
        cluster.FlinkCluster(tmp_path, home=_fake_home(tmp_path)).start()


def test_rotnet_cluster_status_of_a_cluster_that_is_not_running_exits_1(tmp_path: Path) -> None:
    from pipeline.engines.cli import main

    result = CliRunner().invoke(main, ["status", "flink", "--dir", str(tmp_path)])
    assert result.exit_code == 1 and "Error: not running: Flink REST" in result.output
    result = CliRunner().invoke(main, ["stop", "flink", "--dir", str(tmp_path)])
    assert result.exit_code == 0 and "none running" in result.output


# --- The worker pool several TaskManagers share ------------------------------------------------------


class _Request:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.control_endpoint = type("Endpoint", (), {"url": "localhost:1"})()


def test_the_shared_pool_keeps_workers_whose_ids_collide_and_kills_none_on_stop_worker(
    tmp_path: Path, monkeypatch
) -> None:
    # Two TaskManagers each ask for worker "1-1": Beam's pool would keep one and, on the first
    # StopWorker "1-1", kill the other TaskManager's worker.
    monkeypatch.setattr(worker_pool, "_HARNESS", "import time; time.sleep(60)  # {control} {worker_id}")
    pool = worker_pool.SharedWorkerPool(tmp_path)
    try:
        assert not pool.StartWorker(_Request("1-1"), None).error
        assert not pool.StartWorker(_Request("1-1"), None).error
        assert len(pool.workers) == 2 and all(worker.poll() is None for worker in pool.workers)
        pool.StopWorker(_Request("1-1"), None)
        time.sleep(0.5)
        assert all(worker.poll() is None for worker in pool.workers)
        assert sorted(path.name for path in tmp_path.glob("worker-*.log")) == ["worker-1.log", "worker-2.log"]
    finally:
        pool.stop_all()
    assert all(worker.poll() is not None for worker in pool.workers)


# --- rotnet-pipeline --runner FlinkRunner: what it fills in and what it refuses ----------------------


class _FakeFlink(http.server.BaseHTTPRequestHandler):
    version = "1.19.3"

    def do_GET(self) -> None:
        answers = {
            "/config": {"flink-version": self.version},
            "/overview": {"taskmanagers": 2, "slots-total": 2, "flink-version": self.version},
            "/taskmanagers": {"taskmanagers": []},
        }
        body = json.dumps(answers.get(self.path, {})).encode()
        self.send_response(200 if self.path in answers else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_flink() -> Iterator[tuple[str, type]]:
    """A REST API that answers as a Flink 1.19.3 JobManager with 2 TaskManagers: yields (host:port, handler)."""
    handler = type("Handler", (_FakeFlink,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def java_and_jar(tmp_path: Path, monkeypatch) -> str:
    """Java counted as present and a job-server jar given (no cache needed)."""
    monkeypatch.setattr(cluster, "java_problem", lambda: None)
    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"not really a jar")
    return str(jar)


def test_a_flink_run_on_this_machine_gets_a_worker_pool_so_local_paths_are_fine() -> None:
    local = runner.choose_runner(["--runner", "FlinkRunner", "--flink_master", "127.0.0.1:8081"])
    assert local.same_machine and not local.needs_package
    remote = runner.choose_runner(["--runner", "FlinkRunner", "--flink_master", "flink.example.com:8081"])
    assert not remote.same_machine and remote.needs_package  # DOCKER workers elsewhere: the sdist
    own = ["--runner", "FlinkRunner", "--flink_master", "127.0.0.1:8081", "--job_endpoint", "127.0.0.1:8099"]
    assert launch.managed("FlinkRunner", own) is None  # the user's own job server: nothing started
    assert launch.managed("DataflowRunner", ["--runner", "DataflowRunner"]) is None


def test_the_flink_version_and_parallelism_are_read_from_the_cluster(fake_flink, java_and_jar) -> None:
    master, _ = fake_flink
    plan = launch.check(
        "FlinkRunner", ["--flink_master", master, "--flink_job_server_jar", java_and_jar], print
    )
    assert launch.arg_value(plan.arguments, "flink_version") == "1.19"
    assert launch.arg_value(plan.arguments, "parallelism") == "2"
    assert launch.arg_value(plan.arguments, "job_name").startswith("rotnet-")
    assert plan.jar == java_and_jar and plan.rest_url == f"http://{master}"


def test_a_wrong_flink_version_is_one_line(fake_flink, java_and_jar) -> None:
    master, handler = fake_flink
    given = ["--flink_master", master, "--flink_job_server_jar", java_and_jar]
    with pytest.raises(
        JobError,
        match=rf"^--flink_version 1.20, but the cluster at {master} runs Flink 1.19.3: pass --flink_version 1.19",
    ):
        launch.check("FlinkRunner", [*given, "--flink_version", "1.20"], print)
    handler.version = "1.18.1"
    with pytest.raises(
        JobError, match=r"runs Flink 1.18.1; Beam's FlinkRunner supports Flink 1.19, 1.20, 2.0"
    ):
        launch.check("FlinkRunner", given, print)


def test_an_unreachable_cluster_is_one_line_in_seconds(java_and_jar) -> None:
    port = cluster.free_port()
    began = time.monotonic()
    with pytest.raises(JobError, match=rf"^no Flink cluster answers at --flink_master 127.0.0.1:{port} "):
        launch.check("FlinkRunner", ["--flink_master", f"127.0.0.1:{port}"], print)
    assert time.monotonic() - began < 10


def test_a_flink_version_beam_does_not_know_is_a_one_line_usage_error(
    tmp_path: Path, shared_data: Path
) -> None:
    result = run_cli("--dataset", "mnist", "--mnist-dir", str(shared_data / "mnist-5k"), "--output-dir",
                     str(tmp_path / "out"), "--runner", "FlinkRunner", "--flink_version", "1.18")  # fmt: skip
    assert result.exit_code == 2
    [line] = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert line.startswith("Error: Beam option argument --flink_version: invalid choice: '1.18'")
    assert "--direct_num_workers" not in result.output  # not argparse's usage text of every Beam option


def test_no_java_is_one_line(tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_cli("--dataset", "mnist", "--mnist-dir", str(shared_data / "mnist-5k"), "--output-dir",
                     str(tmp_path / "out"), "--runner", "FlinkRunner", "--flink_master", "127.0.0.1:8081")  # fmt: skip
    assert result.exit_code == 1
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith("Error: --runner FlinkRunner needs Java for Beam's job server: no `java` on PATH")
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("java") is None, reason="starts a JVM: needs Java")
def test_a_job_server_that_does_not_start_is_one_line_and_leaves_nothing_running(
    tmp_path: Path, shared_data: Path, fake_flink, monkeypatch
) -> None:
    master, _ = fake_flink
    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"not a jar")
    began = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--dataset", "mnist", "--mnist-dir", str(shared_data / "mnist-5k"),
         "--output-dir", str(tmp_path / "out"), "--runner", "FlinkRunner", "--flink_master", master,
         "--flink_job_server_jar", str(jar), "--no-progress"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert process.returncode == 1 and time.monotonic() - began < 60
    [line] = [line for line in process.stderr.splitlines() if line.startswith("Error") or "Traceback" in line]
    assert line.startswith(f"Error: Beam's flink job server ({jar}) exited with 1 before it listened: ")
    assert "Invalid or corrupt jarfile" in line and "(full log: " in line
    log = Path(line.rsplit("(full log: ", 1)[1].rstrip(")"))
    assert log.is_file()  # kept for the user
    pool_log = log.parent / "workers" / "pool.log"
    assert "worker pool listening" in pool_log.read_text()  # started, and then stopped:
    assert (
        subprocess.run(
            ["pgrep", "-f", "--", f"--log-dir {log.parent}"], capture_output=True, check=False
        ).returncode
        == 1
    )
    shutil.rmtree(log.parent)


def test_the_spark_job_servers_classpath_puts_spark_first_and_keeps_the_newer_of_two_versions(
    tmp_path: Path, monkeypatch
) -> None:
    home, server = tmp_path / "spark", tmp_path / "job-server"
    (home / "jars").mkdir(parents=True)
    (server / "lib").mkdir(parents=True)
    for name in (
        "slf4j-api-2.0.7.jar",
        "guava-14.0.1.jar",
        "metrics-core-4.2.19.jar",
        "spark-core_2.12-3.5.7.jar",
    ):
        (home / "jars" / name).touch()
    for name in ("slf4j-api-1.7.30.jar", "slf4j-jdk14-1.7.30.jar", "guava-33.3.1-android.jar",
                 "metrics-core-4.1.1.jar", "beam-runners-spark-3-2.62.0.jar"):  # fmt: skip
        (server / "lib" / name).touch()
    monkeypatch.setattr(dist, "engine_home", lambda spec: home)
    option, class_path, main = launch._spark_classpath(str(server / "launcher.jar"))
    names = [Path(entry).name for entry in class_path.split(":")]
    assert option == "-cp" and main == "org.apache.beam.runners.spark.SparkJobServerDriver"
    assert names == ["metrics-core-4.2.19.jar", "slf4j-api-2.0.7.jar", "spark-core_2.12-3.5.7.jar",
                     "beam-runners-spark-3-2.62.0.jar", "guava-33.3.1-android.jar"]  # fmt: skip
