"""The run ledger `OUTPUT_DIR/.rotnet-run.json`: what a run may create, written before it creates anything.

The pipeline deletes only files it can prove it wrote. A finished run's proof is its manifest (the
shards and error files it lists); an unfinished run's proof is this ledger, written into the output
directory before the first shard, stats or progress file:

    {"tool": "rotnet-pipeline", "version": 1, "run_id": "3f2a9c1b7e40", "host": "worker-7", "pid": 4242,
     "started": "2026-05-09T07:35:25+00:00",
     "temp_dir": ".rotnet-tmp-3f2a9c1b7e40",          # shards, errors file and stats as written,
                                                       # before they are renamed into place
     "progress_dir": ".rotnet-progress-3f2a9c1b7e40",  # local runs' live counts (or null)
     "planned_files": ["train-00000-of-00002.tfrecord", ..., "errors-00000-of-00001.jsonl",
                       "dataset_info.json"]}

The next run removes exactly these names (and the directories' contents, which carry this run's id),
never anything found by a pattern. Every name is a single path component below the output directory;
a ledger naming anything else is refused as not rotnet's. Whatever writes the shards (today
transforms.WriteShards) writes them under `temp_dir`; the launcher renames them to `planned_files`.
Pure: no Beam, no filesystem access.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from dataclasses import asdict, dataclass, field

LEDGER_NAME = ".rotnet-run.json"
TOOL = "rotnet-pipeline"
VERSION = 1
TEMP_PREFIX = ".rotnet-tmp-"
PROGRESS_PREFIX = ".rotnet-progress-"


class LedgerError(ValueError):
    """A `.rotnet-run.json` that is not a rotnet-pipeline ledger (so nothing it names is deleted)."""


def _plain_name(name: object) -> bool:
    """True for one path component below the output directory: no separator, not '.'/'..', not empty."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


@dataclass(frozen=True)
class RunLedger:
    """One run's claim on names in its output directory (all single components below it)."""

    run_id: str
    temp_dir: str
    planned_files: list[str]
    progress_dir: str | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    tool: str = TOOL
    version: int = VERSION

    @classmethod
    def new(cls, run_id: str, planned_files: list[str], local_progress: bool) -> RunLedger:
        """The ledger of a new run: its final file names, its temp dir and (a progress dir inside a
        local output directory) its progress dir, both named by the run id."""
        progress = PROGRESS_PREFIX + run_id if local_progress else None
        return cls(run_id, TEMP_PREFIX + run_id, list(dict.fromkeys(planned_files)), progress)

    @property
    def directories(self) -> list[str]:
        """The directories this run creates (their whole content is this run's)."""
        return [name for name in (self.temp_dir, self.progress_dir) if name]

    @property
    def names(self) -> list[str]:
        """Every name this run may create, files and directories."""
        return [*self.planned_files, *self.directories]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = LEDGER_NAME) -> RunLedger:
        """Parse a ledger; LedgerError when it is not one of ours, or names anything outside the dir."""
        try:
            data = json.loads(text)
        except ValueError:
            raise LedgerError(f"{source} is not JSON") from None
        if not isinstance(data, dict) or data.get("tool") != TOOL or data.get("version") != VERSION:
            raise LedgerError(f"{source} is not a {TOOL} run ledger (version {VERSION})")
        files = data.get("planned_files")
        names = [data.get("temp_dir"), *(files if isinstance(files, list) else [None])]
        if data.get("progress_dir") is not None:
            names.append(data["progress_dir"])
        if not all(_plain_name(name) for name in names):
            raise LedgerError(f"{source} names a path outside its directory; it is not used")
        # The two directories are deleted as whole trees: only names of rotnet's own form are trusted
        # (a ledger naming a user's directory must not get it removed).
        run_id = str(data.get("run_id", ""))
        progress = data.get("progress_dir")
        if data.get("temp_dir") != TEMP_PREFIX + run_id or progress not in (None, PROGRESS_PREFIX + run_id):
            raise LedgerError(
                f"{source} names a temp or progress directory not of the form {TEMP_PREFIX}<run id> / "
                f"{PROGRESS_PREFIX}<run id>; it is not used"
            )
        try:
            return cls(
                run_id=str(data["run_id"]),
                temp_dir=data["temp_dir"],
                planned_files=list(files),
                progress_dir=data.get("progress_dir"),
                host=str(data.get("host", "?")),
                pid=int(data.get("pid", -1)),
                started=str(data.get("started", "?")),
            )
        except (KeyError, TypeError, ValueError):
            raise LedgerError(f"{source} lacks or mistypes a field; it is not used") from None
