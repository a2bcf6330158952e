"""`rotnet-ablate`: train a sweep of rotnet-train arms on the same shards, score each alike, one table out.

    rotnet-ablate ablations/mnist_data_size.toml --output data/ablations/data_size
    rotnet-ablate ablations/mnist_heads.toml --output data/ablations/heads --parallel 2

The spec (trainer/ablate/spec.py): `records`, `seeds`, `[base]` (rotnet-train options, `_` for `-`),
`[evaluate]` (rotnet-evaluate options), `[[arm]]` (a `name` + the options that differ from base, and
optionally its own `records`) and/or `[grid]` (option -> list of values; every combination is an arm).
Each arm x seed is an ordinary `rotnet-train --output DIR/arms/NAME-sSEED` run in its own process,
then `rotnet-evaluate` into its evaluation/. A rerun skips finished runs, resumes killed ones
(rotnet-train's BackupAndRestore) and refuses a spec that would change finished runs (naming them).
Results: DIR/ablation.csv, ablation.json, ablation.md and PNGs (trainer/ablate/report.py); the
directory layout and its rules are in trainer/ablate/output.py. See docs/ablations.md.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import click

from pipeline import interrupts
from schemas import output_rules
from trainer import run_dir as train_run_dir
from trainer.ablate import output as out
from trainer.ablate.report import EVALUATION_DIR, run_figures, write_results
from trainer.ablate.spec import Run, Spec, SpecError, load_spec, train_args
from trainer.run_dir import METRICS_FILE, RUN_MARKER

# rotnet-train's backup of an unfinished run, in its run dir (trainer/run_dir.py).
BACKUP_METADATA = os.path.join(train_run_dir.BACKUP_DIR, train_run_dir.BACKUP_METADATA)
PLANS = ("new", "resume", "evaluate", "finished", "changed")


class StopRequestedError(Exception):
    """Ctrl-C or SIGTERM: the running arms were told to stop and back up."""


INTERRUPTED = "the running arms stopped at a backup; rerun the same command to resume"

# Children never outlive rotnet-ablate: each is started through this wrapper, which asks Linux to send
# it SIGTERM when the thread that started it dies (prctl PR_SET_PDEATHSIG, kept across the exec), and
# exits at once if that already happened; rotnet-train then backs up and exits 143. The wrapper execs
# the command, so the child keeps its pid (and its lock names it).
_PR_SET_PDEATHSIG = 1
_DIE_WITH_PARENT = (
    "import os, signal, sys\n"
    "try:\n"
    "    import ctypes\n"
    f"    ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM, 0, 0, 0)\n"
    "except Exception:\n"
    "    pass  # no prctl here: a rerun takes over from an orphan (stop_orphan)\n"
    "os.getppid() == int(sys.argv[1]) or os._exit(143)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def dies_with_this_process(command: list[str]) -> list[str]:
    """`command` run so that it gets SIGTERM when this process dies, however (Linux); else as is."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


# --- what each run needs ---------------------------------------------------------------------------


def identity(run: Run) -> dict[str, Any]:
    """What a run trains: a change here means retraining it."""
    return {"records": run.records, "seed": run.seed, "options": run.options}


def plan(run: Run, spec: Spec, output: str) -> str:
    """One of PLANS: new, resume (killed while training), evaluate (trained, not scored), finished,
    changed (the spec would change its training or its scoring)."""
    state = out.read_state(output, run.name)
    if state is None:
        return "new"
    if state.get("train") != identity(run):
        return "changed"
    if state["state"] == "training":
        return "resume"
    if state["state"] == "trained":
        return "evaluate"
    return "finished" if state.get("evaluate") == spec.evaluate else "changed"


def interrupted_changes(runs: list[Run], output: str) -> list[str]:
    """Changed runs whose training was killed: rotnet-train would resume them with the old options."""
    return [
        run.name
        for run in runs
        if os.path.exists(os.path.join(out.arm_dir(output, run.name), BACKUP_METADATA))
    ]


def plans(spec: Spec, output: str) -> dict[str, str]:
    if not os.path.isfile(os.path.join(output, out.MARKER_FILE)):
        return {run.name: "new" for run in spec.runs()}
    return {run.name: plan(run, spec, output) for run in spec.runs()}


# --- one run ---------------------------------------------------------------------------------------


@dataclass
class Slot:
    """Where one run computes: its environment and the CPU cores it is pinned to (None: all)."""

    env: dict[str, str]
    cores: set[int] | None


def gpus() -> list[str]:
    """The GPUs to share out: CUDA_VISIBLE_DEVICES if set, else the ones nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(index) for index, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def slots(parallel: int, devices: list[str]) -> list[Slot]:
    """One slot per parallel run: a GPU each where there are GPUs, else an equal share of the cores
    (pinned with sched_setaffinity, TensorFlow's thread pools sized to it)."""
    base = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}  # logs: lines, not bars
    if devices:
        return [
            Slot({**base, "CUDA_VISIBLE_DEVICES": devices[i % len(devices)]}, None) for i in range(parallel)
        ]
    if parallel == 1 or not hasattr(os, "sched_getaffinity"):
        return [Slot(base, None) for _ in range(parallel)]
    cores = sorted(os.sched_getaffinity(0))
    groups = [set(cores[i::parallel]) or {cores[i % len(cores)]} for i in range(parallel)]
    return [
        Slot(
            {
                **base,
                "TF_NUM_INTRAOP_THREADS": str(len(g)),
                "TF_NUM_INTEROP_THREADS": "1",
                "OMP_NUM_THREADS": str(len(g)),
            },
            g,
        )
        for g in groups
    ]


class Runner:
    """Starts the runs' processes and stops them all on Ctrl-C / SIGTERM."""

    def __init__(self) -> None:
        self.processes: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def call(self, command: list[str], log: str, slot: Slot) -> int:
        """Run `command` with its output appended to `log`; its exit code."""
        with open(log, "a") as handle:
            handle.write(f"\n$ {' '.join(command)}\n")
            handle.flush()
            with self.lock:
                if self.stopping:
                    raise StopRequestedError()
                process = subprocess.Popen(
                    dies_with_this_process(command), stdout=handle, stderr=subprocess.STDOUT, env=slot.env
                )
                self.processes.add(process)
            if slot.cores:  # before TensorFlow starts its threads (they inherit the affinity)
                os.sched_setaffinity(process.pid, slot.cores)
            try:
                return process.wait()
            finally:
                with self.lock:
                    self.processes.discard(process)

    def stop(self) -> None:
        """SIGTERM every running arm (rotnet-train backs up at the next batch and exits 143); wait."""
        with self.lock:
            self.stopping = True
            processes = list(self.processes)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()


def finished_unrecorded(run_dir: str) -> bool:
    """rotnet-train finished this run (a kill came before rotnet-ablate recorded it)."""
    has = lambda name: os.path.exists(os.path.join(run_dir, name))  # noqa: E731
    return has(RUN_MARKER) and has(METRICS_FILE) and not has(BACKUP_METADATA)


def train_command(run: Run, run_dir: str, overwrite: bool) -> list[str]:
    return [
        sys.executable, "-m", "trainer.cli", "--records", run.records, "--output", run_dir,
        "--seed", str(run.seed), *train_args(run.options), *(["--overwrite"] if overwrite else []),
    ]  # fmt: skip


def evaluate_command(run: Run, run_dir: str, evaluate: dict[str, Any]) -> list[str]:
    args = [sys.executable, "-m", "trainer.evaluate_cli", "--model", run_dir, "--records", run.records]
    args += ["--output", os.path.join(run_dir, EVALUATION_DIR)]
    for key, value in sorted(evaluate.items()):
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def start_state(run: Run, spec: Spec, output: str) -> dict[str, Any]:
    """The run's state, (re)started as `training` when it is new or its training changed."""
    state = out.read_state(output, run.name)
    if state is not None and state.get("train") == identity(run):
        return state
    retrain = state is not None  # a changed run: rotnet-train --overwrite replaces its model
    state = {"train": identity(run), "evaluate": spec.evaluate, "state": "training", "overwrite": retrain}
    out.write_state(output, run.name, state)
    return state


def stop_orphan(run_dir: str, run_name: str, timeout_s: float = 300.0) -> str:
    """Take over from a rotnet-train an earlier rotnet-ablate left running in `run_dir` (a platform
    without PR_SET_PDEATHSIG, or one still writing its backup after its SIGTERM): this process holds the
    study's lock, so a live holder of the arm's lock is an orphan. It is sent SIGTERM (it backs up and
    exits 143) and waited for, up to `timeout_s` seconds; '' once it is gone, else why not."""
    told = False
    deadline = time.monotonic() + timeout_s
    while True:
        holder = output_rules.held_by(run_dir)  # None: nobody holds it (rotnet-train takes a stale file over)
        if holder is None or holder.is_running_here() is not True:
            return ""  # rotnet-train's own check says what it is
        if not told:
            click.echo(
                f"{run_name}: a rotnet-train of an earlier rotnet-ablate (pid {holder.pid}) still writes "
                "it; sending it SIGTERM (it backs up) and taking over",
                err=True,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder.pid, signal.SIGTERM)
            told = True
        if time.monotonic() > deadline:
            return f"the orphaned rotnet-train pid {holder.pid} did not stop within {timeout_s:g} s"
        time.sleep(0.2)


def train(run: Run, state: dict[str, Any], output: str, runner: Runner, slot: Slot) -> str:
    """Train (or resume) the run; '' when trained, else why not."""
    run_dir = out.arm_dir(output, run.name)
    overwrite = bool(state.get("overwrite"))
    problem = stop_orphan(run_dir, run.name)
    if problem:
        return problem
    if overwrite or not finished_unrecorded(run_dir):
        code = runner.call(train_command(run, run_dir, overwrite), out.log_path(output, run.name), slot)
        if code != 0:
            return f"rotnet-train exited {code}"
    out.write_state(output, run.name, {**state, "state": "trained", "overwrite": False})
    return ""


def run_one(run: Run, spec: Spec, output: str, runner: Runner, slot: Slot) -> str:
    """Train (or resume) then evaluate one run; '' when done, else why not (see its log)."""
    state = start_state(run, spec, output)
    if state["state"] == "training":
        problem = train(run, state, output, runner, slot)
        if problem:
            return problem
    code = runner.call(
        evaluate_command(run, out.arm_dir(output, run.name), spec.evaluate),
        out.log_path(output, run.name),
        slot,
    )
    if code != 0:
        return f"rotnet-evaluate exited {code}"
    out.write_state(
        output, run.name, {**state, "evaluate": spec.evaluate, "state": "done", "overwrite": False}
    )
    return ""


def mark_for_evaluation(run: Run, spec: Spec, output: str) -> None:
    """A finished run whose [evaluate] changed: scored again, not retrained."""
    state = out.read_state(output, run.name)
    if state is not None and state.get("train") == identity(run):
        out.write_state(output, run.name, {**state, "evaluate": spec.evaluate, "state": "trained"})


# --- many runs -------------------------------------------------------------------------------------


def progress_line(
    done: int, total: int, run: Run, problem: str, seconds: float, left: float, output: str, tta: int
) -> str:
    error = run_figures(out.arm_dir(output, run.name), tta)["mean_error_degrees"]
    result = (
        f"FAILED: {problem}; see {out.log_path(output, run.name)}" if problem else f"mean error {error:.2f}°"
    )
    return f"[{done}/{total}] {run.name}: {result} ({seconds / 60:.1f} min); about {left / 60:.0f} min left"


def collect(pending: set[concurrent.futures.Future], spec: Spec, output: str) -> list[str]:
    """Wait for the runs, a progress line as each ends; the failed runs' names and reasons."""
    failures: list[str] = []
    total, done, started = len(pending), 0, time.perf_counter()
    while pending:  # a short wait, so that Ctrl-C reaches this thread at once
        finished, pending = concurrent.futures.wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
        for future in finished:
            run, problem, seconds = future.result()
            done += 1
            left = (time.perf_counter() - started) / done * (total - done)
            click.echo(progress_line(done, total, run, problem, seconds, left, output, spec.tta), err=True)
            failures += [f"{run.name} ({problem})"] if problem else []
    return failures


def run_all(todo: list[Run], spec: Spec, output: str, parallel: int, runner: Runner) -> list[str]:
    """Run `todo`, `parallel` at once, each in a free slot; the failed runs' names and reasons."""
    free = slots(parallel, gpus())
    lock = threading.Lock()

    def work(run: Run) -> tuple[Run, str, float]:
        with lock:
            slot = free.pop()
        began = time.perf_counter()
        try:
            return run, run_one(run, spec, output, runner, slot), time.perf_counter() - began
        finally:
            with lock:
                free.append(slot)

    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        try:
            return collect({pool.submit(work, run) for run in todo}, spec, output)
        except BaseException:
            runner.stop()  # before the pool waits for its threads, which wait for the processes
            raise


def check_changes(runs: list[Run], states: dict[str, str], output: str, overwrite_changed: bool) -> None:
    """Refuse changed runs without --overwrite-changed, and changed runs killed mid-training always."""
    changed = [run for run in runs if states[run.name] == "changed"]
    if changed and not overwrite_changed:
        names = ", ".join(run.name for run in changed)
        raise click.UsageError(
            f"the spec would change finished runs: {names}; rerun with --overwrite-changed to retrain "
            "(or rescore) only those, or restore the spec, or use another --output"
        )
    killed = interrupted_changes(changed, output)
    if killed:
        raise click.UsageError(
            f"{', '.join(killed)} were killed while training with other options: delete their "
            f"{os.path.join(output, 'arms', '<run>', 'backup')}/ to restart them, or restore the spec"
        )


def announce(runs: list[Run], states: dict[str, str], spec: Spec, output: str) -> list[Run]:
    """Say what happens to each run that is not simply new; the runs still to do."""
    for run in runs:
        state = states[run.name]
        if state == "finished":
            click.echo(f"{run.name}: finished, skipped", err=True)
        elif state == "resume":
            backup = os.path.exists(os.path.join(out.arm_dir(output, run.name), BACKUP_METADATA))
            how = "resuming from its backup" if backup else "no backup yet, training it again"
            click.echo(f"{run.name}: interrupted, {how}", err=True)
        elif state == "evaluate":
            click.echo(f"{run.name}: trained, not yet scored: evaluating", err=True)
        elif state == "changed":
            retrain = (out.read_state(output, run.name) or {}).get("train") != identity(run)
            click.echo(
                f"{run.name}: changed in the spec, {'retraining' if retrain else 'rescoring'}", err=True
            )
            if not retrain:
                mark_for_evaluation(run, spec, output)
    return [run for run in runs if states[run.name] != "finished"]


def list_runs(runs: list[Run], states: dict[str, str], output: str) -> None:
    for run in runs:
        command = train_command(run, out.arm_dir(output, run.name), False)[3:]
        click.echo(f"{run.name}: {states[run.name]}: rotnet-train {' '.join(command)}")


def sweep(spec: Spec, output: str, parallel: int, overwrite_changed: bool) -> list[str]:
    """Run what is left of the spec in DIR (locked) and write the results; the failed runs."""
    runs = spec.runs()
    states = plans(spec, output)
    check_changes(runs, states, output, overwrite_changed)
    out.claim_output(output, spec.path)
    lock = output_rules.LocalLock(output, option="--output")
    try:
        lock.acquire()
    except output_rules.LockHeldError as error:
        raise click.ClickException(str(error)) from None
    try:
        todo = announce(runs, plans(spec, output), spec, output)
        if todo:
            click.echo(
                f"{len(todo)} of {len(runs)} runs to do, {parallel} at once; logs in {output}/logs/", err=True
            )
        failures = run_all(todo, spec, output, parallel, Runner()) if todo else []
        write_results(spec, output)
    finally:
        lock.release()
    return failures


def table(spec: Spec, output: str) -> None:
    """The results of a study made by rotnet-ablate, from what its runs have written so far."""
    if not os.path.isfile(os.path.join(output, out.MARKER_FILE)):
        raise click.UsageError(f"{output} is not a rotnet-ablate study ({out.MARKER_FILE} is missing)")
    rows = write_results(spec, output)
    scored = sum(row["runs_scored"] for row in rows)
    click.echo(f"wrote {os.path.join(output, 'ablation.md')} ({scored} of {len(spec.runs())} runs scored)")


# --- the command -----------------------------------------------------------------------------------


@click.command(
    cls=interrupts.Command,
    interrupted=INTERRUPTED,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False))
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory of the study: arms/NAME-sSEED/ (ordinary rotnet-train runs, each scored into its "
    "evaluation/), state/, logs/, ablation.csv, ablation.json, ablation.md and PNGs. Created here, or an "
    f"empty directory; an existing one is used only if rotnet-ablate made it ({out.MARKER_FILE}): to "
    "resume or extend the study.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs at once, as separate processes: one GPU each where there are GPUs (CUDA_VISIBLE_DEVICES), "
    "otherwise an equal share of the CPU cores each (pinned; TensorFlow's thread pools sized to it).",
)
@click.option(
    "--overwrite-changed",
    is_flag=True,
    help="Retrain the finished runs whose records, seed or options changed in the spec (rotnet-train "
    "--overwrite: the old model stays until the new best exists), and rescore those whose [evaluate] "
    "changed. Without it such a spec is refused and those runs are named.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the spec and list every run with its state (new, resume, evaluate, finished, changed) and "
    "its rotnet-train options; train nothing, write nothing.",
)
@click.option(
    "--table-only",
    is_flag=True,
    help="Write ablation.csv/json/md and the pictures from the runs scored so far (the others show '-'); "
    "train nothing. Works beside a sweep that is still running on DIR.",
)
def main(
    spec_path: str, output: str, parallel: int, overwrite_changed: bool, dry_run: bool, table_only: bool
) -> None:
    """Train every arm x seed of SPEC.toml on the same shards, score each alike, write one table.

    The whole spec is checked first, with rotnet-train's own option checks: an unknown key, option or
    bad value stops with one line naming the spec line (exit 2) before anything trains. A rerun skips
    finished runs, resumes killed ones from their backup/ and refuses runs the spec would change.
    Ctrl-C (or SIGTERM) stops the running arms at a backup; rerun the same command to go on.
    """
    try:
        spec = load_spec(spec_path, output)
        out.check_output(output, sorted({arm.records for arm in spec.arms}))
    except (SpecError, out.OutputError) as error:
        raise click.UsageError(str(error)) from None
    if dry_run:
        list_runs(spec.runs(), plans(spec, output), output)
        return
    if table_only:
        table(spec, output)
        return
    try:
        failures = sweep(spec, output, parallel, overwrite_changed)
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM (interrupts.Command): the arms were stopped
        interrupts.exit_interrupted(error, INTERRUPTED)
    except (OSError, out.OutputError) as error:
        reason = getattr(error, "strerror", None) or error
        raise click.ClickException(
            f"cannot write in {output} ({reason}): free space or fix it, then rerun"
        ) from None
    click.echo(f"wrote {os.path.join(output, 'ablation.md')}, ablation.csv, ablation.json")
    if failures:
        raise click.ClickException(
            f"runs failed: {'; '.join(failures)}; rerun the same command to resume them"
        )
