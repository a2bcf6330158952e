"""The output directory of `rotnet-ablate`: ours only, files written aside and renamed into place.

    DIR/.rotnet-ablate.json      the marker: DIR was made by rotnet-ablate (it writes nowhere else)
    DIR/arms/NAME-sSEED/          an ordinary rotnet-train --output (rotnet-train's own files and marker),
                                  evaluated into its evaluation/
    DIR/state/NAME-sSEED.json     what that run is (records, seed, options, [evaluate]) and how far it got
    DIR/logs/NAME-sSEED.log       rotnet-train's and rotnet-evaluate's output
    DIR/ablation.csv|json|md|png  the results

rotnet-ablate deletes nothing: a changed arm is retrained by `rotnet-train --overwrite`, whose run
marker decides what it may replace. Every file is written with schemas.output_rules (aside, then renamed).
"""

from __future__ import annotations

import json
import os
from typing import Any

from schemas import output_rules, paths

MARKER_FILE = ".rotnet-ablate.json"
SUBDIRS = ("arms", "state", "logs")
STATES = ("training", "trained", "done")  # a run's progress, in order
MAX_JSON_BYTES = 16 << 20


class OutputError(Exception):
    """DIR cannot be used (not ours, a symlink, not writable); one line saying what to do."""


def _refuse_link(path: str) -> None:
    if os.path.islink(path):
        raise OutputError(f"{path} is a symbolic link: rotnet-ablate never writes through links; remove it")


def check_output(output: str, records: list[str]) -> None:
    """Refuse an --output that is not ours: a link, a file, a non-empty dir without MARKER_FILE, or
    (inside or around) a records directory."""
    _refuse_link(output)
    real = os.path.realpath(output)
    for directory in records:
        if "://" not in directory and (
            paths.inside(real, os.path.realpath(directory)) or paths.inside(os.path.realpath(directory), real)
        ):
            raise OutputError(
                f"--output {output} is (inside or around) the records {directory}: choose a directory of its own"
            )
    if not os.path.lexists(output):
        return
    if not os.path.isdir(output):
        raise OutputError(f"--output {output} is not a directory: choose a new --output")
    marker = os.path.join(output, MARKER_FILE)
    if os.listdir(output) and not (os.path.isfile(marker) and not os.path.islink(marker)):
        raise OutputError(
            f"{output} holds files rotnet-ablate did not write (no {MARKER_FILE}): they are left as they are; choose a new --output"
        )


def claim_output(output: str, spec_path: str) -> None:
    """Create DIR (or take an empty one) with our marker and subdirectories; check_output first."""
    os.makedirs(output, exist_ok=True)
    marker = os.path.join(output, MARKER_FILE)
    if not os.path.exists(marker):
        write_aside(marker, json.dumps({"tool": "rotnet-ablate", "spec": os.path.abspath(spec_path)}) + "\n")
    for name in SUBDIRS:
        path = os.path.join(output, name)
        _refuse_link(path)
        os.makedirs(path, exist_ok=True)


def write_aside(path: str, data: str | bytes) -> None:
    """Write `data` whole to `path` (output_rules.write_aside: a temporary beside it, `.NAME.tmp-PID`,
    renamed over it), refusing a symlink at `path` (a rename would replace it: it is not ours)."""
    _refuse_link(path)
    output_rules.write_aside(
        path, data, prefix=temporary_prefix(os.path.basename(path)), token=str(os.getpid())
    )


def temporary_prefix(name: str) -> str:
    """The start of the temporary that `write_aside` writes before `name` (`.NAME.tmp-`, then a pid)."""
    return f".{name}.tmp-"


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON object from a regular file (None if missing, not a regular file, too big or broken)."""
    try:
        if os.path.islink(path) or not os.path.isfile(path):
            return None
        with open(path, "rb") as handle:
            raw = handle.read(MAX_JSON_BYTES + 1)
        value = json.loads(raw) if len(raw) <= MAX_JSON_BYTES else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def arm_dir(output: str, run_name: str) -> str:
    return os.path.join(output, "arms", run_name)


def log_path(output: str, run_name: str) -> str:
    return os.path.join(output, "logs", f"{run_name}.log")


def state_path(output: str, run_name: str) -> str:
    return os.path.join(output, "state", f"{run_name}.json")


def read_state(output: str, run_name: str) -> dict[str, Any] | None:
    state = read_json(state_path(output, run_name))
    return state if state and state.get("state") in STATES else None


def write_state(output: str, run_name: str, state: dict[str, Any]) -> None:
    write_aside(state_path(output, run_name), json.dumps(state, indent=2, sort_keys=True) + "\n")
