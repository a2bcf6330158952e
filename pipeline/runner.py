"""Beam options and runners: what the user's Beam arguments mean, and the local runner rotnet uses.

* `unknown_beam_args`: arguments no Beam options class knows (a typo would otherwise be dropped).
* `beam_options`: the PipelineOptions, with local defaults (one worker process per core) and, for
  remote runners, the package their workers install.
* `local_runner`: Beam's FnApiRunner set explicitly, worker processes' stderr to a log file.
* `failure_message`, `metric_counters`: what went wrong in a job, and the rotnet counters of one that ran.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import progress
from pipeline.config import JobError

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_RUNNERS = ("directrunner", "direct", "fnapirunner")


def _flag_given(beam_args: Sequence[str], name: str) -> bool:
    return any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in beam_args)


def unknown_beam_args(beam_args: Sequence[str]) -> list[str]:
    """Arguments that no Beam PipelineOptions class knows (Beam would drop them with a warning)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(cls): cls for cls in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(beam_args))
    return unknown


def beam_options(beam_args: Sequence[str]) -> tuple[Any, bool]:
    """(PipelineOptions, is_local). Local runs get direct_num_workers = cores and one process per
    worker unless the arguments say otherwise; remote runs get --setup_file so workers install rotnet."""
    from apache_beam.options.pipeline_options import (
        DirectOptions,
        PipelineOptions,
        SetupOptions,
        StandardOptions,
        WorkerOptions,
    )

    beam_args = list(beam_args)
    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    local = runner.lower() in LOCAL_RUNNERS
    if local:
        direct = options.view_as(DirectOptions)
        if not _flag_given(beam_args, "direct_num_workers"):
            direct.direct_num_workers = os.cpu_count() or 1
        if not _flag_given(beam_args, "direct_running_mode"):
            direct.direct_running_mode = "multi_processing" if direct.direct_num_workers != 1 else "in_memory"
    else:
        setup = options.view_as(SetupOptions)
        packaged = (
            setup.setup_file or setup.extra_packages or options.view_as(WorkerOptions).sdk_container_image
        )
        if not packaged:
            # Workers need the rotnet package: Beam builds it from this checkout with `python -m build`.
            if not (REPO_ROOT / "pyproject.toml").is_file() or importlib.util.find_spec("build") is None:
                raise JobError(
                    f"runner {runner} needs rotnet on its workers: pass --sdk_container_image (see the "
                    "Dockerfile's dataflow target) or --setup_file path/to/rotnet/pyproject.toml, which needs "
                    "`pip install build` in this environment"
                )
            setup.setup_file = str(REPO_ROOT / "pyproject.toml")
    return options, local


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
