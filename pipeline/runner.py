"""Beam options and runners: what the user's Beam arguments mean, and the local runner rotnet uses.

* `choose_runner`: the runner named by --runner, resolved as Beam resolves it (short names, any case),
  where its workers run (this machine or not) and whether they need the rotnet package; Beam's
  DaskRunner is refused (see REFUSED_RUNNERS).
* `unknown_beam_args`: arguments no Beam options class knows (a typo would otherwise be dropped); the
  runner's module is imported first, so options it defines (DaskOptions, ...) are known.
* `beam_options`: the PipelineOptions, with local defaults (one worker process per core) and, for
  workers outside this environment, the rotnet sdist (pipeline/packaging.py) and no pickled main session.
* `local_path_problem`: local paths a remote runner's workers cannot see; `external_pool_problem`: an
  EXTERNAL worker pool whose Python lacks Beam or rotnet (a probe job); `check_arguments` does all checks.
* `local_runner`: Beam's FnApiRunner set explicitly, worker processes' stderr to a log file.
* `raise_job_failure`, `failure_message`, `metric_counters`: a failed job in one line (what went wrong in
  it, and where its logs are), and the rotnet counters of one that ran.
* `dataflow_dry_run`: --dry_run True on DataflowRunner: stage the job and write its description, no submit.
"""

from __future__ import annotations

import atexit
import importlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pipeline import interrupts, progress
from pipeline.config import JobError, PipelineConfig
from pipeline.engines import launch
from schemas import paths

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_RUNNERS = ("directrunner", "direct", "fnapirunner")
# Runners that would run but write wrong records. Beam 2.77's Dask ParDo hands every output of a
# multi-output DoFn to every tagged output (runners/dask/transform_evaluator.py: one receiver list for
# all tags), so images go to the errors file and errors to the shards; its results have no metrics.
REFUSED_RUNNERS = {
    "daskrunner": "Beam 2.77's DaskRunner sends every tagged output of a DoFn to all of them (rotnet's "
    "images, splits and errors would be mixed up); use DirectRunner locally, or Flink/Spark/Dataflow"
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Runners whose Beam metrics cannot be trusted for the nothing-lost balance: the manifest then says
# "not verified" with this reason, as for a runner without metrics, and no count is taken from them.
UNRELIABLE_METRICS = {
    "SparkRunner": "Beam 2.62's Spark job server counts a stage again when Spark recomputes it "
    "(tests/test_spark_cluster.py: 5 images read reported for 3 photos)"
}


@dataclass(frozen=True)
class RunnerChoice:
    """The runner of a run and what that means for rotnet."""

    name: str  # the class name, e.g. "DataflowRunner"
    path: str  # its dotted path, "" for rotnet's local FnApiRunner
    local: bool  # rotnet runs it itself (FnApiRunner, one worker process per core)
    same_machine: bool  # workers see this machine's files (local, LOOPBACK, EXTERNAL on 127.0.0.1)
    needs_package: bool  # workers are not this Python environment: they install rotnet's sdist


def _arg_value(beam_args: Sequence[str], name: str) -> str | None:
    value = None
    for index, arg in enumerate(beam_args):
        if arg == f"--{name}" and index + 1 < len(beam_args):
            value = beam_args[index + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def _known_runner_paths() -> dict[str, str]:
    from apache_beam.options.pipeline_options import StandardOptions

    return {path.rsplit(".", 1)[-1].lower(): path for path in StandardOptions.ALL_KNOWN_RUNNERS}


def _beam_local_runners() -> tuple[str, ...]:
    from apache_beam.options.pipeline_options import StandardOptions

    return tuple(name for name in StandardOptions.LOCAL_RUNNERS if name != "PrismRunner")  # Prism: a binary


def choose_runner(beam_args: Sequence[str]) -> RunnerChoice:
    """The runner --runner names (default DirectRunner), resolved the way Beam's create_runner does:
    case-insensitive, "Runner" optional, or a dotted class path. One-line JobError otherwise."""
    given = _arg_value(beam_args, "runner") or "DirectRunner"
    key = given.rsplit(".", 1)[-1].lower()
    for refused, reason in REFUSED_RUNNERS.items():
        if key in (refused, refused.removesuffix("runner")):
            raise JobError(f"--runner {given} is not supported: {reason}")
    if key in LOCAL_RUNNERS:
        return RunnerChoice("DirectRunner", "", local=True, same_machine=True, needs_package=False)
    known = _known_runner_paths()
    if "." in given:
        path = given
    else:
        path = known.get(key) or known.get(key + "runner")
        if path is None:
            names = sorted({name.rsplit(".", 1)[-1] for name in known.values()})
            raise JobError(f"--runner {given} is not a Beam runner; known runners: {', '.join(names)}")
    name = path.rsplit(".", 1)[-1]
    environment = (_arg_value(beam_args, "environment_type") or "").upper()
    config = _arg_value(beam_args, "environment_config") or ""
    host = config.rsplit(":", 1)[0] if ":" in config else config
    if launch.fills_environment(name, beam_args):  # rotnet starts a worker pool here (engines/launch.py)
        environment, host = "EXTERNAL", "127.0.0.1"
    if name in _beam_local_runners():  # Beam's other in-process runners (BundleBasedDirectRunner, ...)
        return RunnerChoice(name, path, local=False, same_machine=True, needs_package=False)
    if name == "DataflowRunner" or name == "TestDataflowRunner":
        same_machine = False
    else:
        embedded = (_arg_value(beam_args, "job_endpoint") or "") == "embed"
        same_machine = (
            environment == "LOOPBACK"
            or (environment == "EXTERNAL" and host in LOOPBACK_HOSTS)
            or (environment == "PROCESS" and embedded)
        )
    # EXTERNAL and PROCESS workers are started by the user, in an environment that has rotnet (the
    # Dockerfile image, or this one); Beam's plain worker pool would not install a staged package anyway.
    needs_package = name in ("DataflowRunner", "TestDataflowRunner") or environment in ("", "DOCKER")
    needs_package = needs_package and environment not in ("LOOPBACK", "EXTERNAL", "PROCESS")
    return RunnerChoice(name, path, local=False, same_machine=same_machine, needs_package=needs_package)


def import_runner_module(choice: RunnerChoice) -> None:
    """Import the runner's module, so that the options classes it defines are registered."""
    if not choice.path:
        return
    module = choice.path.rsplit(".", 1)[0]
    try:
        importlib.import_module(module)
    except ImportError as error:
        hint = " (pip install 'rotnet[gcp]')" if "dataflow" in module else ""
        raise JobError(f"--runner {choice.name} cannot be loaded: {error}{hint}") from None
    except Exception as error:  # a dotted path to something that is not a module
        raise JobError(f"--runner {choice.path} cannot be loaded: {type(error).__name__}: {error}") from None


def _flag_given(beam_args: Sequence[str], name: str) -> bool:
    return any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in beam_args)


def unknown_beam_args(beam_args: Sequence[str]) -> list[str]:
    """Arguments that no Beam PipelineOptions class knows (Beam would drop them with a warning).

    Options classes register by being imported, and some live in their runner's module
    (apache_beam.runners.dask.dask_runner.DaskOptions, ...): that module is imported first."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    import_runner_module(choose_runner(beam_args))
    parser = _BeamArgumentParser(allow_abbrev=False)
    parser.error = _refuse_option  # one line, not argparse's usage text of every Beam option
    for cls in {str(cls): cls for cls in _all_subclasses(PipelineOptions)}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(beam_args))
    return unknown


def _refuse_option(message: str) -> None:
    """A Beam option with a value Beam's parser refuses (e.g. `--flink_version 1.18`), in one line."""
    hint = ""
    if "--flink_version" in message:
        hint = " (rotnet-cluster's Flink is 1.19; leave --flink_version out and it is read from the cluster)"
    raise JobError(f"Beam option {message}{hint}")


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for subclass in cls.__subclasses__():
        found += [subclass, *_all_subclasses(subclass)]
    return found


def is_dry_run(options: Any) -> bool:
    """--dry_run: Beam declares it untyped, so `--dry_run False` is the (true) string "False"."""
    from apache_beam.options.pipeline_options import TestOptions

    return str(options.view_as(TestOptions).dry_run).strip().lower() in ("true", "1", "yes")


def beam_options(beam_args: Sequence[str], choice: RunnerChoice | None = None) -> tuple[Any, bool]:
    """(PipelineOptions, is_local). Local runs get direct_num_workers = cores and one process per
    worker unless the arguments say otherwise. Runners whose workers are not this environment get the
    rotnet sdist as --extra_package (built once, outside the checkout) unless --setup_file,
    --extra_package or --sdk_container_image says how they get it; remote runs do not pickle the
    launcher's main session (rotnet's DoFns are importable from the package) unless asked to."""
    from apache_beam.options.pipeline_options import (
        DirectOptions,
        PipelineOptions,
        SetupOptions,
        TestOptions,
        WorkerOptions,
    )

    from pipeline import packaging

    beam_args = list(beam_args)
    choice = choice or choose_runner(beam_args)
    options = PipelineOptions(beam_args)
    options.view_as(TestOptions).dry_run = is_dry_run(options)
    if choice.local:
        if options.view_as(TestOptions).dry_run:
            raise JobError("--dry_run is for DataflowRunner (it builds and stages the job, then stops)")
        direct = options.view_as(DirectOptions)
        if (direct.direct_num_workers or 0) < 0:
            raise JobError(
                f"--direct_num_workers {direct.direct_num_workers} must be >= 1 (or 0: one per core)"
            )
        if not _flag_given(beam_args, "direct_num_workers"):
            direct.direct_num_workers = os.cpu_count() or 1
        if not _flag_given(beam_args, "direct_running_mode"):
            direct.direct_running_mode = "multi_processing" if direct.direct_num_workers != 1 else "in_memory"
        return options, True
    if options.view_as(TestOptions).dry_run and choice.name != "DataflowRunner":
        raise JobError(f"--dry_run is for DataflowRunner; {choice.name} has no dry run in Beam 2.77")
    setup = options.view_as(SetupOptions)
    if not (_flag_given(beam_args, "save_main_session") or _flag_given(beam_args, "no_save_main_session")):
        setup.save_main_session = False
    packaged = setup.setup_file or setup.extra_packages or options.view_as(WorkerOptions).sdk_container_image
    if choice.needs_package and not packaged:
        out_dir = tempfile.mkdtemp(prefix="rotnet-sdist-")
        atexit.register(shutil.rmtree, out_dir, True)  # Beam copies the sdist when it stages the job
        try:
            setup.extra_packages = [packaging.build_sdist(out_dir)]
        except packaging.PackagingError as error:
            raise JobError(
                f"{error}. Or pass --sdk_container_image (the Dockerfile's dataflow target)"
            ) from None
    return options, False


def check_arguments(config: PipelineConfig, beam_args: Sequence[str]) -> RunnerChoice:
    """The runner of `beam_args`, once the arguments make sense for it: every option known to Beam and
    no local path its workers cannot see; JobError (one line) otherwise."""
    choice = choose_runner(beam_args)
    unknown = unknown_beam_args(beam_args)
    if unknown:
        raise JobError(f"unknown option(s) {' '.join(unknown)}: neither a rotnet-pipeline nor a Beam option")
    problem = local_path_problem(config, choice) or external_pool_problem(beam_args)
    if problem:
        raise JobError(problem)
    return choice


# --- EXTERNAL worker pools -----------------------------------------------------------------------------

# What an EXTERNAL worker pool's Python needs, said once (docs/pipeline.md says the same).
WORKER_REQUIREMENTS = (
    "the pool starts each SDK worker as `python` from its own PATH, and that Python needs apache-beam=={beam} "
    "and rotnet (`pip install 'rotnet[pipeline]'` from this checkout, or the Dockerfile's image); start the "
    "pool with that environment's bin/ first on PATH"
)
POOL_CHECK_TIMEOUT_VARIABLE = "ROTNET_POOL_CHECK_TIMEOUT"  # seconds; 0 skips the check
POOL_CHECK_TIMEOUT_S = 60.0
PROBE_NAMESPACE = "rotnet-worker-probe"
# Run in a child process (killed on a timeout: a pool whose workers never start makes Beam wait for
# ever): a one-element job on the pool whose only DoFn, pickled by value from __main__, needs nothing
# but Beam, and reports the worker's Python, Beam version and whether rotnet imports, as a counter name.
_PROBE_SCRIPT = f"""
import json, sys
import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions


def report(_):
    import sys
    import apache_beam
    try:
        import pipeline.rotations  # noqa: F401
        problem = None
    except Exception as error:
        problem = f"{{type(error).__name__}}: {{error}}"
    facts = {{"python": sys.executable, "beam": apache_beam.__version__, "rotnet": problem}}
    beam.metrics.Metrics.counter("{PROBE_NAMESPACE}", json.dumps(facts)).inc()


options = PipelineOptions(["--runner", "PortableRunner", "--job_endpoint", "embed",
                           "--environment_type", "EXTERNAL", "--environment_config", sys.argv[1]])
pipeline = beam.Pipeline(options=options)
_ = pipeline | beam.Create([0]) | beam.Map(report)
result = pipeline.run()
result.wait_until_finish()
for counter in result.metrics().query(MetricsFilter().with_namespace("{PROBE_NAMESPACE}"))["counters"]:
    print("{PROBE_NAMESPACE}", counter.key.metric.name)
"""


def external_pool_problem(beam_args: Sequence[str], environ: dict[str, str] | None = None) -> str | None:
    """For --environment_type EXTERNAL on this machine (127.0.0.1, localhost): run a one-element job on
    the worker pool and say in one line what its workers lack (Beam: no worker ever starts, so the
    wait times out; rotnet; Beam's version), or None. Seconds instead of a silent hang or ~115 lines
    of Beam traceback. ROTNET_POOL_CHECK_TIMEOUT (seconds, 0 = no check) bounds the wait."""
    import subprocess

    environ = os.environ if environ is None else environ
    if (_arg_value(beam_args, "environment_type") or "").upper() != "EXTERNAL":
        return None
    address = _arg_value(beam_args, "environment_config") or ""
    timeout_s = float(environ.get(POOL_CHECK_TIMEOUT_VARIABLE) or POOL_CHECK_TIMEOUT_S)
    # Only a pool on this machine: the probe's embedded job server listens on localhost, which the
    # workers of a pool elsewhere could not call back (the check would always time out there).
    if not address or timeout_s <= 0 or address.rsplit(":", 1)[0] not in LOOPBACK_HOSTS:
        return None
    import apache_beam

    needs = WORKER_REQUIREMENTS.format(beam=apache_beam.__version__)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE_SCRIPT, address],
            capture_output=True, text=True, timeout=timeout_s, check=False, cwd=tempfile.gettempdir(),
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return (
            f"the Beam worker pool at {address} started no working SDK worker within {timeout_s:g} s "
            f"(its log then says why, e.g. No module named 'apache_beam'): {needs}"
        )
    facts = [
        line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith(PROBE_NAMESPACE + " ")
    ]
    if not facts:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        cause = lines[-1].strip()[:300] if lines else f"exit code {done.returncode}"
        return f"cannot run a job on the Beam worker pool at {address} ({cause}): start the pool, or fix the address"
    return _worker_problem(address, json.loads(facts[0]), apache_beam.__version__)


def _worker_problem(address: str, facts: dict[str, Any], beam_version: str) -> str | None:
    where = f"the Beam worker pool at {address} runs its workers with {facts.get('python')}"
    if facts.get("rotnet"):
        return (
            f"{where}, which cannot import rotnet ({facts['rotnet']}): install it in that environment "
            "(`pip install 'rotnet[pipeline]'` from this checkout), or start the pool with an environment "
            "that has it first on PATH"
        )
    if facts.get("beam") != beam_version:
        return f"{where}, which has apache-beam {facts.get('beam')}, this launcher {beam_version}: install apache-beam=={beam_version} there"
    return None


def local_path_problem(config: PipelineConfig, choice: RunnerChoice) -> str | None:
    """A one-line refusal for local paths given to a runner whose workers do not see this machine."""
    if choice.same_machine:
        return None
    where = f"{choice.name}'s workers do not see this machine's files"
    given = [("--output-dir", config.output_dir)]
    given += [(setting.flag, value) for setting, value in config.locations() if not setting.launcher_only]
    for option, value in given:
        if value and not paths.is_remote(value):
            return f"{option} {value} is a local path, but {where}: give a gs:// path (e.g. gs://BUCKET/...)"
    for setting, value in config.locations():
        if setting.launcher_only:  # read here, by the launcher: never a gs:// path
            also = f" (or {setting.envvar})" if setting.envvar else ""
            return f"{setting.flag} {value}{also} is a local directory, but {where}: {setting.remote_hint}"
    return None


def local_workers(options: Any) -> int:
    from apache_beam.options.pipeline_options import DirectOptions

    return options.view_as(DirectOptions).direct_num_workers or 1


def local_runner(options: Any, worker_log: str | None = None) -> Any:
    """Beam's FnApiRunner, chosen explicitly: the DirectRunner of Beam >= 2.68 first tries the Prism
    runner, whose binary it downloads from GitHub (fails offline, slow otherwise).

    With worker processes and a `worker_log`, their stderr goes to that file: Beam's SDK worker prints
    every failure's whole traceback there, which the launcher reports once, shortened.
    """
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    from apache_beam.transforms import environments

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing" or worker_log is None:
        return fn_runner.FnApiRunner(provision_info=info)
    command = f"{shlex.quote(sys.executable)} -m apache_beam.runners.worker.sdk_worker_main 2>>{shlex.quote(worker_log)}"
    # The same worker processes multi_processing starts (one per worker, the command runs in a shell),
    # with stderr redirected. FnApiRunner would replace this environment for "multi_processing", so the
    # mode is renamed after the options were encoded for the workers; only the runner reads it.
    direct.direct_running_mode = "multi_processing_logged"
    environment = environments.SubprocessSDKEnvironment.from_command_string(command)
    return fn_runner.FnApiRunner(default_environment=environment, provision_info=info)


def raise_job_failure(
    error: BaseException, engine: launch.Session | None, progress_dir: str | None
) -> NoReturn:
    """End a failed Beam job in one line: the interrupt a DoFn saw (Beam wrapped it), the engine's job
    server gone (Beam only says its gRPC stream broke), or the job's own cause, with where its logs are."""
    if interrupts.received() is not None:
        raise interrupts.received() from None
    cause = engine.job_server_problem() if engine else None
    if cause:
        raise JobError(
            f"{cause}; the job on the cluster was cancelled and no manifest written: rerun the same command"
        ) from None
    after = (
        f"; no manifest was written: rerun the same command once the cluster is whole (logs: {engine.work_dir})"
        if engine
        else kept_worker_log(progress_dir)
    )
    note = engine.failure_note() if engine else ""
    raise JobError(f"the Beam job failed: {failure_message(error)}{note}{after}") from error


def kept_worker_log(progress_dir: str | None) -> str:
    """Keep the worker processes' stderr of a failed local run; a note saying where it is."""
    log = Path(progress_dir or "", "workers.log")
    if not progress_dir or not log.is_file() or not log.stat().st_size:
        return ""
    handle, kept = tempfile.mkstemp(prefix="rotnet-workers-", suffix=".log")
    os.close(handle)
    shutil.copyfile(log, kept)
    return f"\n(full worker output: {kept})"


def failure_message(error: BaseException) -> str:
    """What went wrong inside a Beam job, without Beam's wrapping.

    In-process runs re-raise the DoFn's own exception; worker processes report a traceback as text, of
    which the last `SomeError: message` line (and its continuation lines) is the cause.
    """
    text = re.sub(r"\s*\[while running '[^']*'\]", "", str(error)).strip()
    if "Traceback (most recent call last)" not in text:
        return f"{type(error).__name__}: {text}" if type(error) is not RuntimeError else text
    lines = text.splitlines()
    cause = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)\b:?\s")
    starts = [index for index, line in enumerate(lines) if cause.match(line)]
    if not starts:
        return lines[-1]
    tail = []
    for line in lines[starts[-1] :]:
        if line.startswith(("Traceback", "  File ")) or line.strip() == "":
            break
        tail.append(line)
    return "\n".join(tail)


def metric_counters(result: Any) -> dict[str, int]:
    """The rotnet counters of a finished job (committed values where the runner has them)."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        query = result.metrics().query(MetricsFilter().with_namespace(progress.METRICS_NAMESPACE))
    except Exception:  # some runners do not report metrics
        return {}
    totals: Counter = Counter()
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += int(value or 0)
    return dict(totals)


@dataclass
class DryRunSummary:
    """What `--dry_run True` on DataflowRunner built and staged, in place of a run's summary table."""

    job_name: str
    staging_location: str
    staged: list[str]
    job_file: str | None
    transforms: list[str]

    def table(self) -> str:
        lines = [
            f"dry run: Dataflow job {self.job_name} built and staged, not submitted",
            f"staged in {self.staging_location}: {', '.join(self.staged)}",
            f"job description: {self.job_file or '(not written: pass --dataflow_job_file PATH)'}",
            f"steps: {' -> '.join(self.transforms)}",
            "to run it: the same command without --dry_run",
        ]
        return "\n".join(lines)


def dataflow_dry_run(result: Any, options: Any) -> DryRunSummary:
    """Finish a DataflowRunner dry run the way a real submission starts.

    With --dry_run True, Beam 2.77's DataflowRunner builds the job (apiclient.Job) and returns before
    it stages anything or writes --dataflow_job_file. This does what `create_job` would do next, short
    of submitting: stage the packages and the pipeline proto (DataflowApplicationClient
    .create_job_description), then write the job description where --dataflow_job_file says.
    """
    from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions
    from apache_beam.runners.dataflow.internal import apiclient

    job = result.job
    client = apiclient.DataflowApplicationClient(options, job.root_staging_location)
    client.create_job_description(job)
    description = job.json()
    job_file = options.view_as(DebugOptions).dataflow_job_file
    if job_file:
        directory, name = job_file.rsplit("/", 1) if "/" in job_file else (".", job_file)
        client.stage_file_with_retry(directory, name, io.BytesIO(description.encode("utf-8")))
    pools = json.loads(description)["environment"].get("workerPools", [])
    components = job.proto_pipeline.components
    roots = [components.transforms[root] for root in job.proto_pipeline.root_transform_ids]
    # The graph's steps in the order they were applied: the children of Beam's unnamed root transform.
    steps = [components.transforms[child].unique_name for root in roots for child in root.subtransforms]
    return DryRunSummary(
        job_name=options.view_as(GoogleCloudOptions).job_name or job.proto.name,
        staging_location=job.google_cloud_options.staging_location,
        staged=[package["name"] for pool in pools for package in pool.get("packages", [])] + ["pipeline.pb"],
        job_file=job_file,
        transforms=steps,
    )
