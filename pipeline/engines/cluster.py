"""Session clusters on 127.0.0.1: one master and N workers, each its own JVM, started and stopped by PID.

    with FlinkCluster(Path("/tmp/flink")) as cluster:      # 1 JobManager + 2 TaskManagers, ~15 s
        print(cluster.master)                                # 127.0.0.1:PORT (--flink_master)
        cluster.rest("/overview")["taskmanagers"]            # 2
    rotnet-cluster start flink; rotnet-cluster status flink; rotnet-cluster stop flink

Every process is started in the foreground by the engine's own scripts (`bin/jobmanager.sh
start-foreground`, `bin/taskmanager.sh start-foreground`, `bin/spark-class ...Master`), which `exec`
java: the PID this module starts is the JVM's, recorded with its start time in `cluster.json` in the
cluster's folder, and only a process with that PID *and* that start time is ever signalled (a PID the
system reused is left alone). Ports are free ports on 127.0.0.1 (0 where the engine picks and reports
its own). Memory is sized for a 2-core 24 GiB machine shared with other work: JobManager 1 GiB, each
TaskManager 2 GiB with one slot (so that parallelism 2 uses both TaskManagers). Logs stay in
`log/` of the folder (a failed test keeps them; the folder is the test's tmp_path). Starting is
bounded (START_TIMEOUT_S); a start that fails stops what it started.

`kill_on_parent_exit=True` (the tests) makes each JVM die with the process that started it
(prctl PR_SET_PDEATHSIG), so that even a test run killed with SIGKILL leaves no JVM behind; a
cluster started by `rotnet-cluster start` outlives the command, by design, until `rotnet-cluster stop`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.engines import dist
from schemas import output_rules

START_TIMEOUT_S = 180.0  # the JVMs of a cold start on 2 busy cores; ~15 s on an idle machine
STOP_TIMEOUT_S = 20.0  # after SIGTERM, then SIGKILL
REST_TIMEOUT_S = 5.0
STATE_FILE = "cluster.json"
JAVA_OPENS = (  # what Spark 3.5 itself adds on Java 17 (launcher JavaModuleOptions), for JVMs we start
    "--add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.lang.invoke=ALL-UNNAMED "
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED "
    "--add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED "
    "--add-opens=java.base/java.util=ALL-UNNAMED --add-opens=java.base/java.util.concurrent=ALL-UNNAMED "
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED "
    "--add-opens=java.base/sun.nio.cs=ALL-UNNAMED --add-opens=java.base/sun.security.action=ALL-UNNAMED "
    "--add-opens=java.base/sun.util.calendar=ALL-UNNAMED -Djdk.reflect.useDirectMethodHandle=false"
)


class ClusterError(Exception):
    """A cluster that cannot start or be reached: one line saying what to do."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def java_problem() -> str | None:
    """None when `java` (Java 11 or newer) runs, else what to install."""
    java = shutil.which("java")
    if not java:
        return "no `java` on PATH: install a Java runtime (17 is tested), e.g. `apt-get install openjdk-17-jre-headless`"
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`{java} -version` failed ({error}): fix the Java installation"
    if done.returncode != 0:
        return f"`{java} -version` exited with {done.returncode}: fix the Java installation"
    return None


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat; the 2 before ")" are cut off
    except (OSError, IndexError, ValueError):
        return None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Started:
    """One process this module started: the only kind it ever signals."""

    role: str  # "jobmanager", "taskmanager-1", ...
    pid: int
    start_time: int
    log: str
    popen: subprocess.Popen | None = field(default=None, repr=False, compare=False)  # when our child

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:  # also reaps it (no zombie)
            return False
        return process_start_time(self.pid) == self.start_time

    def state(self) -> dict[str, Any]:
        return {"role": self.role, "pid": self.pid, "start_time": self.start_time, "log": self.log}

    def signal(self, signum: int) -> bool:
        """Send `signum` if the process is still the one started; False when it is gone."""
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)
            return True
        return False


def start_process(
    role: str,
    command: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    kill_on_parent_exit: bool = False,
) -> tuple[subprocess.Popen, Started]:
    """Start `command` (stdout and stderr to `log`) in its own session."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,  # Ctrl-C in the terminal goes to the launcher, which stops it
            preexec_fn=_die_with_parent if kill_on_parent_exit else None,
        )
    started = process_start_time(process.pid) or 0
    return process, Started(role, process.pid, started, str(log), process)


def stop_processes(processes: list[Started], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM each process that is still the one started, wait, then SIGKILL what is left."""
    for process in processes:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(process.alive() for process in processes):
        time.sleep(0.2)
    for process in processes:
        process.signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(process.alive() for process in processes):
        time.sleep(0.1)


def log_tail(path: str | Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def get_json(url: str, timeout_s: float = REST_TIMEOUT_S) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read().decode("utf-8"))


class SessionCluster:
    """One master and `workers` workers on 127.0.0.1; subclasses say how each is started."""

    engine: dist.Engine
    worker_role = "worker"

    def __init__(
        self,
        directory: Path,
        home: Path | None = None,
        workers: int = 2,
        kill_on_parent_exit: bool = False,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.directory = Path(directory)
        self.home = Path(home) if home else dist.engine_home(self.engine)
        self.workers = workers
        self.kill_on_parent_exit = kill_on_parent_exit
        self.processes: list[Started] = []
        self.ports: dict[str, int] = {}
        self._log = log

    # --- what subclasses define ---
    def _configure(self) -> None:
        raise NotImplementedError

    def _master_command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def _worker_command(self, index: int) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def workers_registered(self) -> int:
        """How many workers the master's REST API lists as registered (ClusterError if it does not answer)."""
        raise NotImplementedError

    @property
    def master(self) -> str:
        """What the runner option names (--flink_master, --spark_master_url)."""
        raise NotImplementedError

    # --- shared ---
    def __enter__(self) -> SessionCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _started(self, role: str, command: list[str], env: dict[str, str]) -> Started:
        _, started = start_process(
            role,
            command,
            self.directory / "log" / f"{role}.out",
            {**os.environ, **env},
            cwd=self.directory,
            kill_on_parent_exit=self.kill_on_parent_exit,
        )
        self.processes.append(started)
        self._save()
        return started

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the master, then the workers; return once the master lists every worker."""
        if self.home is None:
            raise ClusterError(
                f"{self.engine.name} is not fetched: run `rotnet-cluster fetch {self.engine.name}`"
            )
        problem = java_problem()
        if problem:
            raise ClusterError(problem)
        if self._state_path().exists() and any(p.alive() for p in self._load()):
            raise ClusterError(f"a cluster started from {self.directory} is still running: stop it first")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._configure()
        deadline = time.monotonic() + timeout_s
        try:
            self._started("master", *self._master_command())
            self._wait(lambda: self.workers_registered() >= 0, deadline, "the master's REST API to answer")
            for index in range(1, self.workers + 1):
                self.start_worker(index)
            self._wait(
                lambda: self.workers_registered() >= self.workers,
                deadline,
                f"{self.workers} {self.worker_role}s to register",
            )
        except BaseException:
            self.stop()
            raise
        self._log(f"{self.engine.name} cluster up: master {self.master}, {self.workers} {self.worker_role}s")

    def start_worker(self, index: int) -> Started:
        return self._started(f"{self.worker_role}-{index}", *self._worker_command(index))

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while True:
            dead = [p for p in self.processes if not p.alive()]
            if dead:
                raise ClusterError(
                    f"{self.engine.name} {dead[0].role} exited while waiting for {what}; "
                    f"its log {dead[0].log} ends:\n{log_tail(dead[0].log, 15)}"
                )
            with contextlib.suppress(ClusterError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what} ({self.directory / 'log'} has the logs)")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop exactly the processes started from this folder (this object's, or cluster.json's)."""
        processes = self.processes or (self._load() if self._state_path().exists() else [])
        stop_processes(processes)
        self.processes = []
        if self._state_path().exists():
            self._state_path().unlink()

    def kill_worker(self, index: int, signum: int = signal.SIGKILL) -> Started:
        """Signal one worker (tests: `kill -9` of a TaskManager mid-job)."""
        [worker] = [p for p in self.processes if p.role == f"{self.worker_role}-{index}" and p.alive()]
        worker.signal(signum)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not worker.alive():
            self.processes.remove(worker)  # gone: nothing left to stop or to wait for
            self._save()
        return worker

    def wait_for_workers(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Return once the master lists all workers again (after `start_worker`)."""
        self._wait(
            lambda: self.workers_registered() >= self.workers,
            time.monotonic() + timeout_s,
            f"{self.workers} {self.worker_role}s to register",
        )

    def alive(self) -> list[Started]:
        return [p for p in (self.processes or self._load()) if p.alive()]

    def _state_path(self) -> Path:
        return self.directory / STATE_FILE

    def _save(self) -> None:
        state = {
            "engine": self.engine.name,
            "version": self.engine.version,
            "master": self.master,
            "ports": self.ports,
            "processes": [p.state() for p in self.processes],
        }
        output_rules.write_aside(self._state_path(), json.dumps(state, indent=1))

    def _load(self) -> list[Started]:
        try:
            state = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return []
        self.ports = state.get("ports", {})
        return [Started(**p) for p in state.get("processes", [])]

    @classmethod
    def attach(cls, directory: Path) -> SessionCluster:
        """The cluster recorded in `directory`'s cluster.json (rotnet-cluster status/stop)."""
        cluster = cls(directory)
        cluster.processes = cluster._load()
        return cluster


class FlinkCluster(SessionCluster):
    """A Flink 1.19 standalone session cluster: a JobManager and `workers` TaskManagers.

    The TaskManagers are named tm-1, tm-2 (taskmanager.resource-id), so Flink's REST API says which one
    ran a subtask. A lost TaskManager fails the job (no restart strategy: a batch job restarted without
    its slots would wait for them), within the heartbeat timeout (HEARTBEAT_TIMEOUT_MS)."""

    engine = dist.FLINK
    worker_role = "taskmanager"
    JOBMANAGER_MEMORY = "1024m"
    TASKMANAGER_MEMORY = "2048m"
    TASK_OFF_HEAP = "384m"
    HEARTBEAT_TIMEOUT_MS = 20_000

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.get('rest', 0)}"

    @property
    def master(self) -> str:
        return f"127.0.0.1:{self.ports.get('rest', 0)}"

    def rest(self, path: str) -> Any:
        try:
            return get_json(self.rest_url + path)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise ClusterError(f"Flink REST {self.rest_url}{path}: {error}") from None

    def workers_registered(self) -> int:
        return int(self.rest("/overview")["taskmanagers"])

    def _configure(self) -> None:
        import yaml

        self.ports = {"rpc": free_port(), "rest": free_port()}
        conf = self.directory / "conf"
        if conf.exists():
            shutil.rmtree(conf)
        shutil.copytree(self.home / "conf", conf)
        defaults = yaml.safe_load((self.home / "conf" / "config.yaml").read_text())
        tmp = self.directory / "tmp"
        tmp.mkdir(exist_ok=True)
        settings = {
            "env.java.opts.all": defaults["env"]["java"]["opts"]["all"],  # Java 17's --add-opens
            "jobmanager.bind-host": "127.0.0.1",
            "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.rpc.port": self.ports["rpc"],
            "jobmanager.memory.process.size": self.JOBMANAGER_MEMORY,
            "jobmanager.execution.failover-strategy": "region",
            "taskmanager.bind-host": "127.0.0.1",
            "taskmanager.host": "127.0.0.1",
            "taskmanager.numberOfTaskSlots": 1,
            "taskmanager.rpc.port": "0",
            "taskmanager.data.port": 0,
            "taskmanager.memory.process.size": self.TASKMANAGER_MEMORY,
            # Beam's Flink batch GroupByKey holds a key's values in the task heap (a shard's prepared
            # images: ~1.6 MB per 224-px photo); Flink's default 40% managed memory left 287 MB of heap,
            # too little for 80 photos in one shard (OutOfMemoryError: Java heap space). And Beam's gRPC
            # data plane to the Python workers buffers those elements in direct memory, which Flink caps
            # at its off-heap sizes (OutOfMemoryError: Direct buffer memory, after a few such jobs).
            "taskmanager.memory.managed.fraction": 0.1,
            "taskmanager.memory.task.off-heap.size": self.TASK_OFF_HEAP,
            "parallelism.default": 1,
            "blob.server.port": "0",
            "rest.address": "127.0.0.1",
            "rest.bind-address": "127.0.0.1",
            "rest.port": self.ports["rest"],
            "io.tmp.dirs": str(tmp),
            "web.tmpdir": str(tmp),
            "restart-strategy.type": "none",
            "heartbeat.interval": 2_000,
            "heartbeat.timeout": self.HEARTBEAT_TIMEOUT_MS,
            "slot.request.timeout": 60_000,
            "jobstore.expiration-time": 86_400,  # finished jobs stay listed (the tests read them)
        }
        (conf / "config.yaml").write_text(yaml.safe_dump(settings, default_flow_style=False))

    def _env(self) -> dict[str, str]:
        return {
            "FLINK_CONF_DIR": str(self.directory / "conf"),
            "FLINK_LOG_DIR": str(self.directory / "log"),
            "FLINK_PID_DIR": str(self.directory / "pids"),
        }

    def _master_command(self) -> tuple[list[str], dict[str, str]]:
        return ["bash", str(self.home / "bin" / "jobmanager.sh"), "start-foreground"], self._env()

    def _worker_command(self, index: int) -> tuple[list[str], dict[str, str]]:
        command = ["bash", str(self.home / "bin" / "taskmanager.sh"), "start-foreground"]
        return [*command, f"-Dtaskmanager.resource-id=tm-{index}"], self._env()

    def version(self) -> str:
        return str(self.rest("/config")["flink-version"])


class SparkCluster(SessionCluster):
    """A Spark 3.5 standalone cluster: a Master and `workers` Workers with one core and 1 GiB each."""

    engine = dist.SPARK
    worker_role = "worker"
    WORKER_MEMORY = "1g"

    @property
    def master(self) -> str:
        return f"spark://127.0.0.1:{self.ports.get('master', 0)}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.get('ui', 0)}"

    def rest(self, path: str) -> Any:
        try:
            return get_json(self.rest_url + path)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise ClusterError(f"Spark master {self.rest_url}{path}: {error}") from None

    def workers_registered(self) -> int:
        return sum(1 for worker in self.rest("/json/")["workers"] if worker["state"] == "ALIVE")

    def _configure(self) -> None:
        self.ports = {"master": free_port(), "ui": free_port()}
        for folder in ("work", "tmp"):
            (self.directory / folder).mkdir(exist_ok=True)

    def _env(self) -> dict[str, str]:
        return {
            "SPARK_HOME": str(self.home),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(self.directory / "log"),
            "SPARK_LOCAL_DIRS": str(self.directory / "tmp"),
            "SPARK_WORKER_DIR": str(self.directory / "work"),
            "SPARK_PID_DIR": str(self.directory / "pids"),
            "SPARK_DAEMON_MEMORY": "512m",
            "SPARK_CONF_DIR": str(self.directory / "conf"),
        }

    def _master_command(self) -> tuple[list[str], dict[str, str]]:
        command = [str(self.home / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master"]
        command += [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.ports["master"]),
            "--webui-port",
            str(self.ports["ui"]),
        ]
        return command, self._env()

    def _worker_command(self, index: int) -> tuple[list[str], dict[str, str]]:
        command = [str(self.home / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker"]
        command += [
            "--host",
            "127.0.0.1",
            "--webui-port",
            "0",
            "--cores",
            "1",
            "--memory",
            self.WORKER_MEMORY,
        ]
        command += ["--work-dir", str(self.directory / "work" / f"worker-{index}"), self.master]
        return command, self._env()


CLUSTERS: dict[str, type[SessionCluster]] = {"flink": FlinkCluster, "spark": SparkCluster}
