"""What `rotnet-pipeline --runner FlinkRunner` (or SparkRunner) fills in and starts, so that a user types
little more than where the cluster is:

    rotnet-cluster start flink                      # prints: --flink_master 127.0.0.1:PORT
    rotnet-pipeline --dataset mnist --output-dir out --runner FlinkRunner --flink_master 127.0.0.1:PORT

For such a run, before any work (`check`, seconds, one line each):

* Java: the job server is a Java program; no `java` on PATH is one line.
* The cluster: Flink's REST API at --flink_master (`/config`, 5 s timeout) must answer, and its Flink
  version must be one Beam's FlinkRunner supports and the one --flink_version names (filled in from
  the cluster when not given). Spark: the master's web UI (`/json/`) must answer at --spark_rest_url
  or the master's host on port 8080.
* The job server: --flink_job_server_jar / --spark_job_server_jar if given, else the one in the cache
  (pipeline/engines/dist.py; fetched there on first use).

Then (`session`, a context manager around the job):

* The job server is started by rotnet, not by Beam (java -jar JAR, ports chosen by the server and read
  from its log, heap JOB_SERVER_HEAP): its PID is rotnet's to stop at the end, a server that does not
  start is one line with the cause from its log within JOB_SERVER_START_TIMEOUT_S, and one that dies
  mid-job is named as the cause. Beam gets it as --job_endpoint.
* Workers: without --environment_type, on a cluster on this machine, rotnet starts a Beam worker pool
  (this Python, rotnet importable) and passes `--environment_type EXTERNAL --environment_config
  127.0.0.1:PORT`. EXTERNAL rather than LOOPBACK: LOOPBACK runs every SDK worker as a thread of the
  launcher process, so both TaskManagers' Python work would share one interpreter (one GIL, one core);
  with the pool each TaskManager gets its own SDK worker process. Beam's default for a remote cluster,
  DOCKER, is left alone (there, rotnet's sdist is staged as for Dataflow).
* --parallelism (Flink) defaults to the cluster's task slots, --job_name to a unique rotnet-... name.
* On failure or Ctrl-C the Flink job is cancelled through the REST API (found by its name), so that
  nothing keeps writing into the output directory's temporary folder after the launcher has stopped.

Nothing here runs for other runners, or when --job_endpoint names a job server the user started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import JobError
from pipeline.engines import cluster, dist

JOB_SERVER_START_TIMEOUT_S = 90.0  # a cold JVM on 2 busy cores: ~5 s idle
JOB_SERVER_HEAP = "-Xmx1g"
POOL_START_TIMEOUT_S = 60.0
CANCEL_TIMEOUT_S = 30.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
EMBEDDED_MASTERS = ("[auto]", "[local]")
ENGINE_RUNNERS = {"FlinkRunner": "flink", "SparkRunner": "spark"}
_JOB_SERVICE_LINE = re.compile(r"JobService started on (\S+):(\d+)")


def arg_value(beam_args: Sequence[str], name: str) -> str | None:
    value = None
    for index, arg in enumerate(beam_args):
        if arg == f"--{name}" and index + 1 < len(beam_args):
            value = beam_args[index + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def _host(address: str) -> str:
    address = re.sub(r"^[a-z]+://", "", address.strip()).split("/", 1)[0]
    return address.rsplit(":", 1)[0] if ":" in address else address


def master_of(engine: str, beam_args: Sequence[str]) -> str:
    """--flink_master / --spark_master_url as given, or Beam's default."""
    if engine == "flink":
        return arg_value(beam_args, "flink_master") or "[auto]"
    return arg_value(beam_args, "spark_master_url") or "local[4]"


def on_this_machine(engine: str, beam_args: Sequence[str]) -> bool:
    """A cluster named on this machine (--flink_master 127.0.0.1:PORT, spark://localhost:7077). Without
    a master, Beam's job server runs the engine embedded and Beam picks LOOPBACK workers itself."""
    given = arg_value(beam_args, "flink_master" if engine == "flink" else "spark_master_url")
    return bool(given) and given not in EMBEDDED_MASTERS and _host(given) in LOOPBACK_HOSTS


def managed(runner_name: str, beam_args: Sequence[str]) -> str | None:
    """The engine ("flink", "spark") whose job server rotnet starts for this run, or None (another
    runner, or --job_endpoint names the user's own job server)."""
    engine = ENGINE_RUNNERS.get(runner_name)
    if engine is None or arg_value(beam_args, "job_endpoint"):
        return None
    return engine


def fills_environment(runner_name: str, beam_args: Sequence[str]) -> bool:
    """True when rotnet will start a worker pool on this machine and run the job's Python there."""
    engine = managed(runner_name, beam_args)
    return (
        bool(engine) and not arg_value(beam_args, "environment_type") and on_this_machine(engine, beam_args)
    )


# --- Checks before any work ---------------------------------------------------------------------------


@dataclass
class Plan:
    """What `check` found and `session` will use."""

    engine: str
    jar: str
    arguments: list[str]  # the Beam arguments to run with (filled in)
    rest_url: str | None  # Flink's REST API, to cancel the job
    job_name: str
    notes: list[str] = field(default_factory=list)
    taskmanagers: list[str] = field(default_factory=list)  # Flink: the TaskManagers at submission


def flink_rest_url(master: str) -> str:
    address = master.strip().rstrip("/")
    return address if re.match(r"^https?://", address) else f"http://{address}"


def check(runner_name: str, beam_args: Sequence[str], log: Callable[[str], None]) -> Plan | None:
    """The plan of a managed run, or None for other runs; JobError (one line) for what cannot work."""
    engine = managed(runner_name, beam_args)
    if engine is None:
        return None
    problem = cluster.java_problem()
    if problem:
        raise JobError(f"--runner {runner_name} needs Java for Beam's job server: {problem}")
    arguments = list(beam_args)
    notes: list[str] = []
    rest_url = None
    if engine == "flink":
        rest_url, arguments = _check_flink(arguments, notes)
    else:
        arguments = _check_spark(arguments, notes)
    jar = _job_server_jar(engine, arguments, log)
    job_name = arg_value(arguments, "job_name")
    if not job_name:
        job_name = f"rotnet-{uuid.uuid4().hex[:12]}"
        arguments += ["--job_name", job_name]
    taskmanagers = taskmanager_ids(rest_url) if rest_url else []
    return Plan(engine, jar, arguments, rest_url, job_name, notes, taskmanagers)


def _check_flink(arguments: list[str], notes: list[str]) -> tuple[str | None, list[str]]:
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    master = master_of("flink", arguments)
    given_version = arg_value(arguments, "flink_version")
    supported = FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    if master in EMBEDDED_MASTERS:  # the job server runs Flink itself: the jar decides the version
        if not given_version:
            arguments += ["--flink_version", dist.FLINK.runner_version]
        return None, arguments
    rest_url = flink_rest_url(master)
    try:
        config = cluster.get_json(f"{rest_url}/config")
        overview = cluster.get_json(f"{rest_url}/overview")
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise JobError(
            f"no Flink cluster answers at --flink_master {master} ({rest_url}/config: {reason}): start one "
            "(`rotnet-cluster start flink` prints the address) or give the JobManager's REST host:port"
        ) from None
    running = str(config.get("flink-version", "?"))
    minor = ".".join(running.split(".")[:2])
    if minor not in supported:
        raise JobError(
            f"the Flink cluster at {master} runs Flink {running}; Beam's FlinkRunner supports Flink "
            f"{', '.join(supported)}: use a cluster of one of those"
        )
    if given_version and given_version != minor:
        raise JobError(
            f"--flink_version {given_version}, but the cluster at {master} runs Flink {running}: pass "
            f"--flink_version {minor} (or leave it out: it is read from the cluster)"
        )
    if not given_version:
        arguments += ["--flink_version", minor]
    if not arg_value(arguments, "parallelism"):
        slots = int(overview.get("slots-total") or 0)
        if slots:
            arguments += ["--parallelism", str(slots)]
            notes.append(f"--parallelism {slots} (the cluster's task slots)")
    return rest_url, arguments


def _check_spark(arguments: list[str], notes: list[str]) -> list[str]:
    master = master_of("spark", arguments)
    if not master.startswith("spark://"):
        return arguments  # local[N]: the job server runs Spark itself
    import socket

    host, port = _host(master), master.rsplit(":", 1)[1]
    try:
        socket.create_connection((host, int(port)), timeout=cluster.REST_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise JobError(
            f"no Spark master answers at --spark_master_url {master} ({error}): start one "
            "(`rotnet-cluster start spark` prints the address) or fix the URL"
        ) from None
    return arguments


def _job_server_jar(engine: str, arguments: list[str], log: Callable[[str], None]) -> str:
    option = f"{engine}_job_server_jar"
    given = arg_value(arguments, option)
    spec = dist.engine(engine)
    if given:
        if not os.path.isfile(given):
            raise JobError(f"--{option} {given} is not a file: give the job server's jar, or leave it out")
        return os.path.abspath(given)
    version = (
        arg_value(arguments, "flink_version") if engine == "flink" else arg_value(arguments, "spark_version")
    )
    if version and version != spec.runner_version:
        raise JobError(
            f"no job server for {engine} {version} in rotnet's cache (it has {engine} {spec.runner_version}'s): "
            f"give --{option} JAR (Beam's beam-runners-{engine}-{version}-job-server)"
        )
    found = dist.job_server(spec)
    if found is None:
        log(f"fetching Beam's {engine} job server into {spec.job_server_dir} (once)")
        try:
            found = dist.fetch_job_server(spec, log)
        except dist.FetchError as error:
            raise JobError(f"{error} (or give --{option} JAR)") from None
    return str(found.jar)


# --- The processes of a run ---------------------------------------------------------------------------


@dataclass
class Session:
    """The job server and worker pool of one run, and the arguments Beam runs with."""

    plan: Plan
    arguments: list[str]
    work_dir: Path
    job_server: cluster.Started | None = None
    pool: cluster.Started | None = None

    def failure_note(self) -> str:
        """What the cluster says about a failed job: a TaskManager that is gone, by name."""
        if self.plan.rest_url is None:
            return ""
        lost = lost_taskmanagers(self.plan.rest_url, self.plan.taskmanagers)
        return f" (the cluster lost TaskManager {', '.join(lost)} during the job)" if lost else ""

    def job_server_problem(self) -> str | None:
        """A one-line cause when the job server is gone (a job failure then has this cause)."""
        if self.job_server is None:
            return None
        deadline = time.monotonic() + 3  # Beam sees the socket close a moment before the process is gone
        while self.job_server.alive():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)
        return (
            f"the {self.plan.engine.capitalize()} job server (PID {self.job_server.pid}) stopped during the job "
            f"(its log: {self.job_server.log})"
        )


def _spark_classpath(jar: str) -> list[str]:
    """The Spark job server runs with Spark's own jars (Beam's runner declares Spark as provided) and
    Beam's; where both hold an artifact (20 of them: jackson, guava, gson, ...) the newer version
    wins, except logging: Spark's slf4j 2 with its log4j binding (Beam's java.util.logging binding
    and Spark's JUL-to-slf4j bridge would call each other until the stack overflows)."""
    home = dist.engine_home(dist.SPARK)
    if home is None:
        raise JobError("the Spark job server needs Spark's jars: run `rotnet-cluster fetch spark`")
    beam = {_artifact(path.name): path for path in (Path(jar).parent / "lib").glob("*.jar")}
    spark = {_artifact(path.name): path for path in (home / "jars").glob("*.jar")}
    for name in ("slf4j-api", "slf4j-jdk14"):
        beam.pop(name, None)
    chosen = dict(spark)
    for name, path in beam.items():
        if name not in spark or _jar_version(path.name) > _jar_version(spark[name].name):
            chosen[name] = path
    # Spark's jars first: Beam's own jars name their dependencies in their manifests' Class-Path
    # (slf4j-api 1.7, ...), which Java searches right after the jar naming them.
    ordered = sorted(chosen.values(), key=lambda path: (path.parent != home / "jars", path.name))
    return ["-cp", os.pathsep.join(map(str, ordered)), dist.SPARK.main_class]


def _artifact(jar_name: str) -> str:
    return re.sub(r"[-_]\d[\w.\-]*\.jar$", "", jar_name)


def _jar_version(jar_name: str) -> tuple[int, ...]:
    version = jar_name[len(_artifact(jar_name)) + 1 : -len(".jar")]
    return tuple(int(part) for part in re.findall(r"\d+", version)[:4])


def _job_server_command(plan: Plan, artifacts: Path) -> list[str]:
    java = shutil.which("java") or "java"
    ports = ["--job-port", "0", "--artifact-port", "0", "--expansion-port", "0"]
    if plan.engine == "flink":
        master = master_of("flink", plan.arguments)
        master_args = ["--flink-master", master if master in EMBEDDED_MASTERS else flink_rest_url(master)]
        return [
            java,
            JOB_SERVER_HEAP,
            "-jar",
            plan.jar,
            *master_args,
            "--artifacts-dir",
            str(artifacts),
            *ports,
        ]
    launch = (
        ["-jar", plan.jar] if not (Path(plan.jar).parent / "lib").is_dir() else _spark_classpath(plan.jar)
    )
    master_args = ["--spark-master-url", master_of("spark", plan.arguments)]
    # Spark logs through log4j 2, whose default shows errors only: the job server's INFO lines (the
    # port it listens on) need a configuration.
    logging_config = artifacts.parent / "log4j2.properties"
    logging_config.write_text(_LOG4J2_PROPERTIES)
    options = [JOB_SERVER_HEAP, *cluster.JAVA_OPENS.split(), f"-Dlog4j2.configurationFile={logging_config}"]
    return [java, *options, *launch, *master_args, "--artifacts-dir", str(artifacts), *ports]


_LOG4J2_PROPERTIES = """rootLogger.level = info
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
"""


def _start_job_server(plan: Plan, work_dir: Path, kill_on_parent_exit: bool) -> tuple[cluster.Started, str]:
    log = work_dir / "job-server.log"
    popen, started = cluster.start_process(
        "job-server",
        _job_server_command(plan, work_dir / "artifacts"),
        log,
        cwd=work_dir,
        kill_on_parent_exit=kill_on_parent_exit,
    )
    deadline = time.monotonic() + JOB_SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = _JOB_SERVICE_LINE.search(log.read_text(errors="replace"))
        if match:
            return started, f"localhost:{match.group(2)}"
        if popen.poll() is not None:
            raise JobError(
                f"Beam's {plan.engine} job server ({plan.jar}) exited with {popen.returncode} before it "
                f"listened: {_java_cause(log)} (full log: {log})"
            )
        time.sleep(0.2)
    cluster.stop_processes([started])
    raise JobError(
        f"Beam's {plan.engine} job server ({plan.jar}) did not listen within {JOB_SERVER_START_TIMEOUT_S:g} s "
        f"(log: {log}): is the machine overloaded, or the jar not a job server?"
    )


def _java_cause(log: Path) -> str:
    """The most telling line of a Java log: the last exception, error or SEVERE message."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    telling = [
        line
        for line in lines
        if re.search(r"(Exception|Error)\b|^SEVERE|^Caused by", line) and not line.startswith("at ")
    ]
    return (telling or lines or ["no output"])[-1][:300]


class WorkerPool:
    """rotnet's worker pool (pipeline/engines/worker_pool.py: Beam's, safe for several TaskManagers) on
    127.0.0.1, with this interpreter and rotnet importable; SDK workers' logs in `log_dir`."""

    def __init__(self, log_dir: Path, kill_on_parent_exit: bool = True) -> None:
        self.port = cluster.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.log = log_dir / "pool.log"
        self.kill_on_parent_exit = kill_on_parent_exit
        self.started: cluster.Started | None = None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the folder holding pipeline/ and schemas/
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        return env

    def start(self) -> cluster.Started:
        import socket

        command = [sys.executable, "-m", "pipeline.engines.worker_pool", "--port", str(self.port)]
        command += ["--log-dir", str(self.log_dir)]
        popen, self.started = cluster.start_process(
            "worker-pool",
            command,
            self.log,
            env=self.environment(),
            kill_on_parent_exit=self.kill_on_parent_exit,
        )
        deadline = time.monotonic() + POOL_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise JobError(
                    f"the Beam worker pool exited with {popen.returncode}: {_java_cause(self.log)}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self.started
            time.sleep(0.1)
        self.stop()
        raise JobError(
            f"the Beam worker pool did not listen within {POOL_START_TIMEOUT_S:g} s (log: {self.log})"
        )

    def stop(self) -> None:
        """Stop the pool and the SDK workers it started (its process group)."""
        if self.started is None:
            return
        import signal

        if self.started.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.started.pid, signal.SIGTERM)
        cluster.stop_processes([self.started], timeout_s=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.started.pid, signal.SIGKILL)  # workers still left in its group


@contextlib.contextmanager
def engine_for(
    runner_name: str, beam_args: Sequence[str], log: Callable[[str], None]
) -> Iterator[Session | None]:
    """The Session of a managed (Flink, Spark) run for the block, checked first (`check`), or None for
    any other run."""
    plan = check(runner_name, beam_args, log)
    if plan is None:
        yield None
        return
    with session(plan, log) as engine:  # the job server and worker pool, stopped at the end
        yield engine


@contextlib.contextmanager
def session(plan: Plan, log: Callable[[str], None], kill_on_parent_exit: bool = True) -> Iterator[Session]:
    """Start the job server (and the worker pool), yield the run's Beam arguments, stop both at the
    end; cancel the Flink job if the run did not finish. The logs of a failed run are kept."""
    work_dir = Path(tempfile.mkdtemp(prefix=f"rotnet-{plan.engine}-run-"))
    arguments = list(plan.arguments)
    pool = None
    state = Session(plan, arguments, work_dir)
    finished = False
    root_logger = logging.getLogger()
    root_logger.addFilter(_repeated_job_errors)
    previous_hook = threading.excepthook
    threading.excepthook = _quiet_stream_errors(previous_hook)
    try:
        if not arg_value(arguments, "environment_type") and on_this_machine(plan.engine, arguments):
            pool = WorkerPool(work_dir / "workers", kill_on_parent_exit)
            state.pool = pool.start()
            arguments += ["--environment_type", "EXTERNAL", "--environment_config", pool.address]
        state.job_server, endpoint = _start_job_server(plan, work_dir, kill_on_parent_exit)
        arguments += ["--job_endpoint", endpoint]
        for note in plan.notes:
            log(f"{plan.engine}: {note}")
        yield state
        finished = True
    finally:
        if not finished and plan.rest_url:
            cancel_flink_job(plan.rest_url, plan.job_name)
        cluster.stop_processes([p for p in (state.job_server,) if p is not None])
        if pool is not None:
            pool.stop()
        if finished:
            shutil.rmtree(work_dir, ignore_errors=True)
        root_logger.removeFilter(_repeated_job_errors)
        threading.excepthook = previous_hook


def _repeated_job_errors(record: logging.LogRecord) -> bool:
    """Beam logs the job's error message to the root logger, then raises it (rotnet prints it once)."""
    return not (record.levelno >= logging.ERROR and record.funcName == "read_messages")


def _quiet_stream_errors(previous: Callable) -> Callable:
    """Beam's message-reading thread dies with a gRPC traceback when the job server goes away; the
    launcher reports that once, in one line (Session.job_server_problem)."""

    def hook(arguments: threading.ExceptHookArgs) -> None:
        thread = arguments.thread.name if arguments.thread else ""
        if thread.startswith("wait_until_finish"):
            return
        previous(arguments)

    return hook


def taskmanager_ids(rest_url: str) -> list[str]:
    with contextlib.suppress(urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return sorted(tm["id"] for tm in cluster.get_json(f"{rest_url}/taskmanagers")["taskmanagers"])
    return []


def lost_taskmanagers(rest_url: str, before: Sequence[str]) -> list[str]:
    """TaskManagers of `before` the JobManager no longer lists, or still lists though their data port
    refuses connections (killed: the JobManager may notice only after its heartbeat timeout, 50 s by
    default). A TaskManager that does not answer within 2 s (another network) is not called lost."""
    import socket

    lost = []
    with contextlib.suppress(urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        listed = cluster.get_json(f"{rest_url}/taskmanagers")["taskmanagers"]
        lost += sorted(set(before) - {taskmanager["id"] for taskmanager in listed})
        for taskmanager in listed:
            host = re.search(r"@([^:/]+):\d+", taskmanager["path"]).group(1)
            try:
                socket.create_connection((host, int(taskmanager["dataPort"])), timeout=2).close()
            except ConnectionRefusedError:
                lost.append(taskmanager["id"])
            except OSError:
                pass
    return lost


def flink_jobs(rest_url: str, name: str) -> list[dict]:
    """The Flink jobs named `name` (Beam names the Flink job after --job_name)."""
    overview = cluster.get_json(f"{rest_url}/jobs/overview")
    return [job for job in overview.get("jobs", []) if job.get("name") == name]


def cancel_flink_job(rest_url: str, name: str) -> None:
    """Cancel the run's Flink job if it is still going, and wait (bounded) until it stopped."""
    deadline = time.monotonic() + CANCEL_TIMEOUT_S
    with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
        while time.monotonic() < deadline:
            going = [job for job in flink_jobs(rest_url, name) if job["state"] not in _FLINK_DONE]
            if not going:
                return
            for job in going:
                if job["state"] != "CANCELLING":
                    request = urllib.request.Request(
                        f"{rest_url}/jobs/{job['jid']}?mode=cancel", method="PATCH"
                    )
                    with contextlib.suppress(urllib.error.URLError, OSError):
                        urllib.request.urlopen(request, timeout=cluster.REST_TIMEOUT_S).close()
            time.sleep(0.5)


_FLINK_DONE = ("FINISHED", "FAILED", "CANCELED")
