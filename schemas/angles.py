"""The one angle syntax of every command (`--angles` of rotnet-pipeline, rotnet-train, rotnet-evaluate).

    parse_angles("all")            -> (0, 1, ..., 359)
    parse_angles("0,90,180,270")   -> (0, 90, 180, 270)
    parse_angles("0-359:90")       -> (0, 90, 180, 270)      START-END[:STEP], END included
    parse_angles("350-359:5, 0")   -> (0, 350, 355)          lists and ranges mix

Angles are integer degrees, counter-clockwise, 0..359. Python's range syntax `0:360:10` (END excluded)
is refused with the spelling that means the same angles, so a range copied from an older command line
never silently changes the angle set.
"""

from __future__ import annotations

import re
from typing import Any

NUM_ANGLES = 360
# Ranges are checked against 0..359 before they are expanded: --angles 0-300000000 must not allocate.
_RANGE = re.compile(r"^(\d{1,9})-(\d{1,9})(?::(\d{1,9}))?$")
_PYTHON_RANGE = re.compile(r"^(\d+):(\d+)(?::(\d+))?$")
EXAMPLES = "'all', '0,90,180,270', '0-359:15' (END included) or a mix like '0-90:10,180'"


class AngleSyntaxError(ValueError):
    """Text that is not an angle list; the message names the part and the accepted spellings."""


def parse_angles(text: str) -> tuple[int, ...]:
    """The sorted, distinct angles (degrees, counter-clockwise) that `text` names; see the module doc."""
    text = text.strip().lower()
    if text in ("", "all"):
        return tuple(range(NUM_ANGLES))
    angles: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        python_range = _PYTHON_RANGE.match(part)
        if python_range:
            start, stop, step = int(python_range[1]), int(python_range[2]), int(python_range[3] or 1)
            raise AngleSyntaxError(
                f"angles {part!r} look like a Python range (END excluded); this syntax is START-END[:STEP] "
                f"with END included: write '{start}-{stop - 1}:{step}' for the same angles"
                if stop > start
                else f"cannot read angles {part!r}: use {EXAMPLES}"
            )
        match = _RANGE.match(part)
        if match:
            start, stop, step = int(match[1]), int(match[2]), int(match[3] or 1)
            if step < 1 or start > stop:
                raise AngleSyntaxError(f"angle range {part!r} needs START <= END and a STEP >= 1")
            if stop >= NUM_ANGLES:
                raise AngleSyntaxError(
                    f"angle range {part!r} goes past 359: angles must be in 0..359 degrees"
                )
            angles.update(range(start, stop + 1, step))
        elif part.isdigit() and len(part) <= 9:
            angles.add(int(part))
        else:
            raise AngleSyntaxError(f"cannot read angles {part!r}: use {EXAMPLES}")
    if any(angle >= NUM_ANGLES for angle in angles):
        raise AngleSyntaxError(f"angles must be in 0..359 degrees, got {max(angles)}")
    return tuple(sorted(angles))


def describe_angles(angles: list[int] | tuple[int, ...]) -> str:
    """A short text for an angle set, in this syntax where it is a range ('0-359:10 (36 angles)')."""
    angles = sorted(angles)
    if len(angles) > 2:
        step = angles[1] - angles[0]
        if step > 0 and angles == list(range(angles[0], angles[-1] + 1, step)):
            spelled = f"{angles[0]}-{angles[-1]}" + (f":{step}" if step > 1 else "")
            return f"{spelled} ({len(angles)} angles)"
    return ",".join(map(str, angles)) if len(angles) <= 12 else f"{len(angles)} angles"


def click_callback(ctx: Any, param: Any, value: str | None) -> tuple[int, ...] | None:
    """The `--angles` option of every command: None for no value or 'all' (the command's default set),
    else the parsed angles; a syntax error is click's usage error (exit 2, one line)."""
    import click

    if value is None or value.strip().lower() == "all":
        return None
    if not value.strip():
        raise click.BadParameter(
            "is empty: give angles (e.g. 0-359 or 0,90,180,270), or leave it out for all"
        )
    try:
        return parse_angles(value)
    except AngleSyntaxError as error:
        raise click.BadParameter(str(error)) from None
