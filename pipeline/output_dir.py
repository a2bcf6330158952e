"""The output directory of a run: refused where writing is unsafe, locked, claimed by a ledger, and cleared
of exactly the files earlier rotnet runs can be shown to have written.

    OUTPUT_DIR/.rotnet-lock              one writer at a time (schemas.output_rules)
    OUTPUT_DIR/.rotnet-run.json          the run ledger, written first: what this run may create
                                         (pipeline.run_ledger); deleted once the manifest is written
    OUTPUT_DIR/.rotnet-tmp-RUN/          the shards and errors file while they are written, the workers'
                                         per-file counts (stats.json) and duplicate ids; deleted at the end
    OUTPUT_DIR/.rotnet-progress-RUN/     local runs: the DoFns' live counts (deleted at the end)

The rules (a user's data is never lost to a rerun, a typo or a crash):

* The tool deletes only what it can prove it wrote: the files the previous run's manifest lists (with
  --overwrite) and the names the previous run's ledger lists (always: that run did not finish). Never
  anything found by a name pattern, never anything below a directory the ledger does not name.
* `--overwrite` of a finished dataset keeps it readable (manifest and shards) until the new run has
  checked its counts: only then is the old manifest withdrawn, the new shards renamed into place and
  the new manifest written; the old files the new manifest does not list go last
  (`RunOutput.withdraw_previous`, `remove_replaced`). A run that fails before leaves the old dataset as
  it was; a kill in between leaves a ledger naming both, so the next run removes both.
* A directory that is not empty and holds neither a manifest nor a ledger is refused unless
  --overwrite; even then its files stay untouched, and a file at a name this run would write stops the
  run instead of being replaced.
* `/`, the home directory, a file, the input, a directory containing the input or inside it are refused.

Every refusal is an `OutputDirError` (exit 2) saying what is there and how to proceed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import schemas
from pipeline.config import JobError, PipelineConfig
from pipeline.inputs import InputFileError, literal_or_glob, read_input_file
from pipeline.run_ledger import LEDGER_NAME, PROGRESS_PREFIX, LedgerError, RunLedger
from schemas import output_rules, paths, sharding

STATS_NAME = "stats.json"  # inside the run's temp dir
# Where a run replacing a finished dataset leaves its errors file when it fails (the old dataset's own
# errors file stays as it was); named in the run's ledger, so the next run removes it.
FAILED_ERRORS_NAME = ".rotnet-failed-run-errors.jsonl"
DUPLICATES_NAME = "duplicates.json"  # inside the run's temp dir
_SHOWN_ENTRIES = 4  # names listed in a refusal
# The one errors file a run writes (transforms.WriteErrors), and the form a manifest may list.
ERRORS_FILE = f"{sharding.ERRORS_PREFIX}-00000-of-00001{sharding.ERRORS_SUFFIX}"
_ERRORS_NAME = re.compile(
    rf"^{sharding.ERRORS_PREFIX}-\d{{5}}-of-\d{{5}}{re.escape(sharding.ERRORS_SUFFIX)}$"
)


class OutputDirError(JobError):
    """The output directory cannot be used as asked (a usage error, exit 2); the message says why and
    how to proceed."""


def progress_dir(output_dir: str, run_id: str) -> str:
    """Where a local run's DoFns leave their counts: inside a local output directory (named by the
    ledger, so a killed run's leftovers are removed by the rerun), else in the system's temp directory."""
    if paths.is_remote(output_dir):
        return os.path.join(tempfile.gettempdir(), f"rotnet-progress-{run_id}")
    return os.path.join(paths.local_path(output_dir), PROGRESS_PREFIX + run_id)


def planned_files(splits: Iterable[str], num_shards: dict[str, int], compression: str) -> list[str]:
    """The final names a run writes: every shard of every split, the errors file and the manifest."""
    shards = [
        name for split in splits for name in sharding.shard_names(split, num_shards[split], compression)
    ]
    return [*shards, ERRORS_FILE, schemas.MANIFEST_NAME]


# --- Where the records may not go ----------------------------------------------------------------


def input_roots(config: PipelineConfig) -> list[str]:
    """The local inputs a run reads: its dataset's location settings (a directory, a file or a glob,
    as its module's SETTINGS declare them), as given."""
    return [given for _, given in config.locations() if not paths.is_remote(given)]


def glob_reads_in(pattern: str, directory: str) -> bool:
    """True when the local glob `pattern` (Beam's syntax, as pipeline.datasets.common reads it: `*`, `?`
    and `[...]` within a name, `**` across names) could match a file in `directory`, or `directory`
    holds the glob's fixed part. A glob beside `directory` (`photos[2]*` beside `photos-out`) is not.

    Compared name by name below the fixed part: a match is a file exactly as deep as the pattern has
    names, so `directory` is read only if each of its names below the fixed part matches the pattern's
    name at that depth and the pattern goes deeper (or has `**` there)."""
    from apache_beam.io.filesystem import FileSystem

    base = paths.pattern_base(pattern)
    base_real, directory_real = os.path.realpath(base), os.path.realpath(directory)
    if paths.inside(base_real, directory_real):
        return True  # `directory` is the fixed part or holds it
    if not paths.inside(directory_real, base_real):
        return False
    rest = pattern[len(base) :].lstrip("/") if base != "." else pattern.removeprefix("./")
    names = rest.split("/")
    for depth, name in enumerate(os.path.relpath(directory_real, base_real).split(os.sep)):
        if "**" in names[depth]:
            return True
        if depth == len(names) - 1 or not re.match(FileSystem.translate_pattern(names[depth]), name):
            return False  # the pattern's file name, or a name that does not match: nothing below
    return True


def check_location(output_dir: str, inputs: Sequence[str]) -> None:
    """Refuse an --output-dir where writing (and later cleaning) could hurt what rotnet did not make."""
    if paths.is_remote(output_dir):
        scheme, _, rest = output_dir.partition("://")
        if not rest.strip("/") or "/" not in rest.strip("/"):
            raise OutputDirError(
                f"--output-dir {output_dir} is a bucket's root: give a prefix for the records, e.g. "
                f"{scheme}://{rest.strip('/') or 'BUCKET'}/records/NAME"
            )
        return
    local = paths.local_path(output_dir)
    real = os.path.realpath(local)
    shown = f"--output-dir {output_dir}"
    if real == os.path.realpath(os.sep):
        raise OutputDirError(
            f"{shown} is the root directory: choose a directory for the records, e.g. data/records/NAME"
        )
    if real == os.path.realpath(os.path.expanduser("~")):
        raise OutputDirError(
            f"{shown} is your home directory: choose a directory for the records, e.g. ~/records/NAME"
        )
    if os.path.lexists(local) and not os.path.isdir(local):
        raise OutputDirError(f"{shown} is a file, not a directory: choose a directory for the records")
    parent = os.path.dirname(os.path.abspath(local))
    while not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputDirError(
            f"{shown} lies below {parent}, which is a file, not a directory: choose a directory for the records"
        )
    for given in inputs:
        source = os.path.realpath(given)
        if literal_or_glob(given) == "glob" and paths.has_pattern_characters(given):
            if glob_reads_in(given, local):
                raise OutputDirError(
                    f"{shown} could hold files the input {given} matches (the records would be written "
                    "among the files being read): choose a directory the glob does not reach"
                )
            continue
        if real == source:
            problem = f"is the input {given}"
        elif paths.inside(source, real):
            problem = f"contains the input {given}"
        elif paths.inside(real, source):
            problem = f"is inside the input {given}"
        else:
            continue
        raise OutputDirError(
            f"{shown} {problem}: the records would be written among the files being read; choose a "
            "directory outside the input"
        )


# --- Storage: the few operations the rules need, local or remote ----------------------------------


def _names_in(output_dir: str) -> set[str]:
    """The entries directly in the directory (for gs://, the first path component of every object)."""
    if not paths.is_remote(output_dir):
        try:
            return set(os.listdir(paths.local_path(output_dir)))
        except FileNotFoundError:
            return set()
    from apache_beam.io.filesystems import FileSystems

    prefix = output_dir.rstrip("/") + "/"
    try:
        found = FileSystems.match([paths.literal_pattern(prefix) + "**"])[0].metadata_list
    except Exception:  # BeamIOError for an empty prefix on some filesystems
        return set()
    return {item.path[len(prefix) :].split("/", 1)[0] for item in found if item.path.startswith(prefix)}


def _remove(output_dir: str, name: str, tree: bool = False) -> None:
    """Remove OUTPUT_DIR/name: a file or a link (never followed); with `tree`, a directory with all it
    holds (only the run's own temp and progress dirs, whose names carry its run id)."""
    path = paths.join(output_dir, name)
    if not paths.is_remote(output_dir):
        try:
            status = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(status.st_mode):
            os.unlink(path)
        elif tree:
            shutil.rmtree(path)  # refuses a symlink itself; below it nothing is followed
        return
    below = [item.path for item in _match_literal(path + "/", "**")] if tree else []  # objects "in" it
    for found in [path, *below]:
        paths.delete(found)


def _is_directory(output_dir: str, name: str) -> bool:
    path = paths.join(output_dir, name)
    if not paths.is_remote(output_dir):
        return os.path.isdir(path) and not os.path.islink(path)
    return bool(_match_literal(path + "/", "**"))


def _match_literal(path: str, pattern_suffix: str = "") -> list:
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.match([paths.literal_pattern(path) + pattern_suffix])[0].metadata_list
    except Exception:
        return []


def _read_small(path: str, limit: int = 16 * 2**20) -> str:
    if not paths.is_remote(path):
        return read_input_file(paths.local_path(path), limit).decode("utf-8", "replace")
    with paths.open_binary(path) as handle:
        return handle.read(limit).decode("utf-8", "replace")


# --- Claiming the directory -------------------------------------------------------------------------


@dataclass
class RunOutput:
    """An output directory claimed by a run: locked, its ledger written, earlier leftovers removed."""

    output_dir: str
    ledger: RunLedger
    lock: object
    notes: list[str] = field(default_factory=list)
    # The files of the finished dataset this run replaces (its manifest's names): kept, and readable,
    # until the new run publishes.
    replaced: set[str] = field(default_factory=set)

    @property
    def temp_dir(self) -> str:
        """Where this run's writers put their files before they are renamed to their final names."""
        return paths.join(self.output_dir, self.ledger.temp_dir)

    @property
    def stats_path(self) -> str:
        return paths.join(self.temp_dir, STATS_NAME)

    @property
    def duplicates_path(self) -> str:
        return paths.join(self.temp_dir, DUPLICATES_NAME)

    def read_stats(self) -> list[dict]:
        """The per-file counts, bytes and SHA-256s the workers measured (transforms.WriteStats)."""
        if not paths.exists(self.stats_path):
            raise JobError(f"the job finished without writing its file counts ({self.stats_path}); rerun it")
        with paths.open_binary(self.stats_path) as handle:
            return json.loads(handle.read().decode("utf-8"))

    def check_free(self, info: schemas.DatasetInfo) -> None:
        """Before the files are renamed into place: no name the manifest will list appeared during the
        run (the claim made them free; a file someone put there since is theirs, not replaced)."""
        names = [shard.name for split in info.splits.values() for shard in split.shards] + info.error_files
        names = [name for name in names if name not in self.replaced]  # the old dataset's, replaced later
        taken = [name for name in names if paths.exists(paths.join(self.output_dir, name))]
        if taken:
            raise JobError(
                f"{paths.join(self.output_dir, taken[0])} appeared while the run wrote its records; it is left "
                "as it is and the manifest was not written: move it away and rerun"
            )

    def withdraw_previous(self) -> None:
        """Just before the new files are renamed into place: the replaced dataset's manifest goes (its
        shards may be renamed over next; its names stay in this run's ledger until the end)."""
        if schemas.MANIFEST_NAME in self.replaced:
            _remove(self.output_dir, schemas.MANIFEST_NAME)

    def remove_replaced(self, info: schemas.DatasetInfo) -> None:
        """After the new manifest is written: the replaced dataset's files it does not list."""
        kept = {shard.name for split in info.splits.values() for shard in split.shards}
        kept |= {*info.error_files, schemas.MANIFEST_NAME}
        for name in sorted(self.replaced - kept):
            _remove(self.output_dir, name)

    def keep_failed_errors(self, errors_name: str) -> str:
        """A run that failed its checks: its errors file goes where the user can read it (its final
        name, or FAILED_ERRORS_NAME beside a dataset this run was to replace). Returns that path."""
        name = FAILED_ERRORS_NAME if self.replaced else errors_name
        source, target = paths.join(self.temp_dir, errors_name), paths.join(self.output_dir, name)
        if paths.exists(source):
            from apache_beam.io.filesystems import FileSystems

            if name == FAILED_ERRORS_NAME and paths.exists(target):
                _remove(self.output_dir, name)
            FileSystems.rename([source], [target])
        return target

    def remove_temp_dir(self) -> None:
        """The run's temp dir with whatever is in it (only this run wrote there)."""
        _remove(self.output_dir, self.ledger.temp_dir, tree=True)

    def finish(self) -> None:
        """After the manifest is written: the temp dir and the ledger go (the manifest now proves
        which files are rotnet's)."""
        self.remove_temp_dir()
        _remove(self.output_dir, LEDGER_NAME)

    def release(self) -> None:
        """Drop the lock (always, also after a failure; the ledger then stays and names the leftovers)."""
        self.lock.release()


def _foreign_listing(output_dir: str, names: set[str]) -> str:
    shown = sorted(names, key=lambda name: (name.startswith("."), name))[:_SHOWN_ENTRIES]  # visible first
    more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return ", ".join(shown) + more


def _owned_by_manifest(info: schemas.DatasetInfo) -> set[str]:
    """The files a finished run's manifest lists (names validated: plain names of rotnet's own form)."""
    names = {shard.name for split in info.splits.values() for shard in split.shards}
    names |= {name for name in info.error_files if _ERRORS_NAME.match(name)}
    return names | {schemas.MANIFEST_NAME}


def claim(
    config: PipelineConfig, ledger: RunLedger, log: Callable[[str], None] = lambda line: None
) -> RunOutput:
    """Check, lock and claim `config.output_dir` for the run `ledger` describes; remove what the
    previous run provably wrote. Raises OutputDirError (exit 2) for every refusal."""
    output_dir = config.output_dir
    check_location(output_dir, input_roots(config))
    if not paths.is_remote(output_dir):
        os.makedirs(paths.local_path(output_dir), exist_ok=True)
    lock = output_rules.lock_for(output_dir, ledger.run_id)
    try:
        stale = lock.acquire()
    except output_rules.LockHeldError as error:
        raise OutputDirError(str(error)) from None
    try:
        run = RunOutput(output_dir, ledger, lock)
        if stale is not None:
            run.notes.append(f"a run that was killed ({stale.describe()}) held {output_dir}; taken over")
        _clear(run, config.overwrite)
        if run.replaced:  # the ledger also names the replaced files: a kill after they were withdrawn
            extra = sorted(run.replaced - {*ledger.planned_files, schemas.MANIFEST_NAME})
            run.ledger = dataclasses.replace(
                ledger, planned_files=[*ledger.planned_files, *extra, FAILED_ERRORS_NAME]
            )
        output_rules.write_aside(paths.join(output_dir, LEDGER_NAME), run.ledger.to_json())
    except BaseException:
        lock.release()
        raise
    for note in run.notes:
        log(note)
    return run


def _clear(run: RunOutput, overwrite: bool) -> None:
    """Remove what the previous run's manifest (with --overwrite) and ledger name; refuse the rest."""
    output_dir = run.output_dir
    present = _names_in(output_dir) - {output_rules.LOCK_NAME}
    owned: set[str] = set()
    info = None
    if schemas.MANIFEST_NAME in present:
        try:
            info = schemas.load_manifest(output_dir)
        except schemas.ManifestError as error:
            raise OutputDirError(
                f"{error} -- so nothing in {output_dir} can be shown to be rotnet's and nothing is "
                "touched: move that directory away or choose another --output-dir"
            ) from None
        if not overwrite:
            raise OutputDirError(
                f"{output_dir} already holds a finished dataset ({schemas.MANIFEST_NAME}); pass --overwrite "
                "to replace it (only the files its manifest lists are removed), or choose another --output-dir"
            )
        owned |= _owned_by_manifest(info)
        run.replaced = _owned_by_manifest(info)  # kept until the new run publishes
    previous = None
    if LEDGER_NAME in present:
        try:
            previous = RunLedger.from_json(_read_small(paths.join(output_dir, LEDGER_NAME)))
        except (LedgerError, InputFileError) as error:
            raise OutputDirError(
                f"{paths.join(output_dir, LEDGER_NAME)} is not a run ledger rotnet can use ({error}): move it "
                "away, or choose another --output-dir"
            ) from None
        owned |= {*previous.names, LEDGER_NAME}
    foreign = present - owned
    if foreign and info is None and previous is None and not overwrite:
        raise OutputDirError(
            f"{output_dir} is not empty ({_foreign_listing(output_dir, foreign)}) and holds no rotnet manifest "
            "or run ledger: choose an empty or new --output-dir, or pass --overwrite to write the records "
            "beside these files (rotnet leaves them as they are)"
        )
    colliding = sorted(foreign & {*run.ledger.names, LEDGER_NAME})
    if colliding:
        raise OutputDirError(
            f"{paths.join(output_dir, colliding[0])} is not rotnet's (no rotnet manifest or run ledger in "
            f"{output_dir} names it) and this run would write that name: move it away, or choose another "
            "--output-dir"
        )
    if previous is not None:
        run.notes.append(
            f"the unfinished run {previous.run_id} (pid {previous.pid} on host {previous.host}, started "
            f"{previous.started}) left files here; removing what its ledger names"
        )
    directories = set(previous.directories) if previous is not None else set()
    in_the_way = sorted(name for name in (owned & present) - directories if _is_directory(output_dir, name))
    if in_the_way:
        raise OutputDirError(
            f"{paths.join(output_dir, in_the_way[0])} is a directory where rotnet wrote a file: it is not "
            "rotnet's to remove; move it away, or choose another --output-dir"
        )
    # The manifest first: a crash in between never leaves a manifest beside missing shards; the old
    # ledger last: until then it still names what is left to remove.
    ordered = [schemas.MANIFEST_NAME] * (schemas.MANIFEST_NAME in owned) + sorted(
        owned - {schemas.MANIFEST_NAME, LEDGER_NAME}
    )
    for name in [*ordered, LEDGER_NAME]:
        if name in present and name not in run.replaced:  # a finished dataset's files stay for now
            _remove(output_dir, name, tree=name in directories)


class _NoLock:
    def release(self) -> None:
        pass


class _DryRunOutput(RunOutput):
    """The paths a dry run would use; it locks, clears, writes and deletes nothing."""

    def remove_temp_dir(self) -> None:
        pass


@contextlib.contextmanager
def unclaimed(config: PipelineConfig, ledger: RunLedger):
    yield _DryRunOutput(config.output_dir, ledger, _NoLock())


@contextlib.contextmanager
def for_run(
    config: PipelineConfig,
    run_id: str,
    num_shards: dict[str, int],
    progress_dir: str | None,
    dry_run: bool,
    log: Callable[[str], None],
):
    """The output directory of run `run_id`, as a context: claimed (`claim`) with a ledger of the files
    its `num_shards` plan, its `progress_dir` (local runs) created, and both the run's temp dir and the
    progress dir removed when the block ends, however it ends. A dry run touches nothing."""
    planned = planned_files(num_shards, num_shards, config.compression)
    inside = progress_dir is not None and not paths.is_remote(config.output_dir)
    ledger = RunLedger.new(run_id, planned, local_progress=inside)
    with unclaimed(config, ledger) if dry_run else claimed(config, ledger, log) as run:
        if progress_dir:
            os.makedirs(progress_dir)
        try:
            yield run
        finally:  # however the run ends: both are this run's alone (the ledger names what was published)
            run.remove_temp_dir()
            if progress_dir:
                shutil.rmtree(progress_dir, ignore_errors=True)


@contextlib.contextmanager
def claimed(config: PipelineConfig, ledger: RunLedger, log: Callable[[str], None] = lambda line: None):
    """`claim` as a context: the lock is released when the block ends, however it ends."""
    run = claim(config, ledger, log)
    try:
        yield run
    finally:
        run.release()
