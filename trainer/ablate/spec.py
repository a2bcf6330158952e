"""The sweep spec of `rotnet-ablate` (TOML): read it, check all of it, expand it into runs.

    records = "data/records/mnist5k"   # every arm reads these shards (an arm may name its own)
    seeds = [0, 1]                      # each arm runs once per seed
    [base]                              # rotnet-train options shared by every arm (long names, _ for -)
    [evaluate]                          # rotnet-evaluate options, the same for every arm
    [[arm]]                             # name = "..." + the options that differ from [base]
    [grid]                              # option = [values]: every combination becomes an arm

Every option is checked with rotnet-train's own click options and `trainer.config.check` before
anything trains; a problem is a SpecError whose message starts with `SPEC:LINE:`. Pure Python: no
TensorFlow is imported here.
"""

from __future__ import annotations

import itertools
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from trainer.ablate.output import temporary_prefix

TOP_KEYS = ("records", "seeds", "base", "evaluate", "arm", "grid")
# rotnet-train options the spec may not set: rotnet-ablate sets them for every run.
RESERVED = ("output", "seed", "verbose", "records", "overwrite", "stream_sweeps")
# [evaluate] keys -> type (rotnet-evaluate's options; --model, --records, --output are rotnet-ablate's).
EVALUATE_KEYS: dict[str, type] = {
    "split": str,
    "tta": int,
    "rotation_codes": str,
    "batch_size": int,
    "max_records": int,
    "codes_angles_per_image": int,
    "codes_seed": int,
    "codes_input": str,
    "source_dir": str,
    "angles": str,
}
TTAS = (1, 2, 4)
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
MAX_SPEC_BYTES = 1 << 20  # a spec is a few lines; refuse to read more than 1 MiB
# What rotnet-ablate adds to a run's name NAME-sSEED in its longest file name: the temporary of
# state/NAME-sSEED.json (trainer/ablate/output.write_aside: ".NAME-sSEED.json.tmp-" + a pid of at most
# 7 digits). Logs (NAME-sSEED.log) and arm directories (NAME-sSEED/) are shorter.
RUN_NAME_EXTRA_BYTES = len(temporary_prefix(".json")) + 7
DEFAULT_NAME_MAX = 255  # bytes in one file name on ext4, xfs, btrfs, tmpfs, APFS, NTFS (UTF-16 units)


class SpecError(Exception):
    """A problem in the spec; the message names the spec file and line (`SPEC:LINE: ...`)."""


@dataclass
class Arm:
    """One arm: its name and the options that differ from [base] (`records` is the arm's shards)."""

    name: str
    options: dict[str, Any]  # rotnet-train options beyond [base], spec keys (`_` for `-`)
    records: str


@dataclass
class Run:
    """One arm x seed: one rotnet-train run in DIR/arms/NAME-sSEED/."""

    arm: str
    seed: int
    records: str
    options: dict[str, Any]  # [base] with the arm's options over it

    @property
    def name(self) -> str:
        return f"{self.arm}-s{self.seed}"


@dataclass
class Spec:
    path: str
    records: str
    seeds: list[int]
    base: dict[str, Any]
    evaluate: dict[str, Any]
    arms: list[Arm] = field(default_factory=list)

    @property
    def tta(self) -> int:
        return int(self.evaluate.get("tta", 1))

    def runs(self) -> list[Run]:
        """Every arm x seed, arm by arm (seeds of one arm together)."""
        return [
            Run(arm.name, seed, arm.records, {**self.base, **arm.options})
            for arm in self.arms
            for seed in self.seeds
        ]


# --- where a key is written ------------------------------------------------------------------------

_HEADER = re.compile(r"^\[\[\s*([\w.-]+)\s*\]\]|^\[\s*([\w.-]+)\s*\]")
_KEY = re.compile(r"^([\w-]+|\"[^\"]+\")\s*=")


class Lines:
    """The line of each key in the TOML text, by table ("" top level, "base", the Nth "arm", ...)."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.tables: dict[tuple[str, int], dict[str, int]] = {("", 0): {}}
        counts: dict[str, int] = {}
        current = ("", 0)
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            header = _HEADER.match(stripped)
            if header:
                name = header.group(1) or header.group(2)
                current = (name, counts.get(name, 0))
                counts[name] = current[1] + 1
                self.tables[current] = {"": number}
            elif key := _KEY.match(stripped):
                self.tables[current].setdefault(key.group(1).strip('"'), number)

    def at(self, table: str = "", key: str = "", index: int = 0) -> str:
        """`SPEC:LINE` of the key (or of the table's header when the key is not written)."""
        keys = self.tables.get((table, index), {})
        return f"{self.path}:{keys.get(key, keys.get('', 1))}"


Where = Callable[[str], str]  # key -> "SPEC:LINE"


# --- rotnet-train's own checks ---------------------------------------------------------------------


def train_params() -> dict[str, click.Parameter]:
    """rotnet-train's options by spec key (the long option name, `_` for `-`)."""
    from trainer.cli import main as train_main

    return {
        opt[2:].replace("-", "_"): param
        for param in train_main.params
        for opt in param.opts
        if opt.startswith("--")
    }


def _is_flag(param: click.Parameter) -> bool:
    return bool(getattr(param, "is_flag", False))


def train_args(options: dict[str, Any]) -> list[str]:
    """rotnet-train arguments for spec options, sorted by key (true/false -> --x / --no-x)."""
    params = train_params()
    args: list[str] = []
    for key in sorted(options):
        value, flag = options[key], "--" + key.replace("_", "-")
        if _is_flag(params[key]):
            off = params[key].secondary_opts[:1]  # type: ignore[attr-defined]
            args += [flag] if value else off
        else:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            args += [flag, text]
    return args


def _check_keys(options: dict[str, Any], where: Where) -> None:
    params = train_params()
    known = ", ".join(sorted(set(params) - set(RESERVED)))
    for key, value in options.items():
        if key in RESERVED:
            raise SpecError(f"{where(key)}: {key!r} is set by rotnet-ablate for every run; remove it")
        if key not in params:
            raise SpecError(f"{where(key)}: {key!r} is not a rotnet-train option (options: {known})")
        if _is_flag(params[key]) and not isinstance(value, bool):
            raise SpecError(f"{where(key)}: {key} takes true or false, not {value!r}")
        if isinstance(value, dict):
            raise SpecError(f"{where(key)}: {key} takes a value, not a table")


def _key_named(options: dict[str, Any], message: str) -> str:
    """The option a rotnet-train message is about ('' if none is named)."""
    for key in options:
        dashed = key.replace("_", "-")
        if re.search(rf"(^|[^\w-])(--)?{re.escape(dashed)}([^\w-]|$)", message):
            return key
    return ""


def check_train_options(options: dict[str, Any], records: str, where: Where) -> None:
    """rotnet-train's checks on these options: its click types, then `trainer.config.check`."""
    from trainer.cli import main as train_main
    from trainer.config import TrainConfig, check

    _check_keys(options, where)
    args = ["--records", records, "--output", "-", *train_args(options)]
    try:
        context = train_main.make_context("rotnet-train", args)
    except click.ClickException as error:
        message = error.format_message()
        raise SpecError(f"{where(_key_named(options, message))}: {message}") from None
    values = {k: v for k, v in context.params.items() if k not in ("verbose", "overwrite")}
    if values.get("angles") is not None:
        values["angles"] = list(values["angles"])
    for problem in check(TrainConfig(**values)):
        raise SpecError(f"{where(_key_named(options, problem))}: {problem}")


# --- the parts of the spec -------------------------------------------------------------------------


def _read(path: str) -> str:
    if not os.path.isfile(path):
        raise SpecError(f"{path}: not a regular file")
    with open(path, "rb") as handle:
        raw = handle.read(MAX_SPEC_BYTES + 1)
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is a few lines of TOML")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _parse(path: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML: {error}") from None


def _check_top(data: dict[str, Any], lines: Lines) -> None:
    for key in data:
        if key not in TOP_KEYS:
            raise SpecError(f"{lines.at('', key)}: unknown key {key!r} (known: {', '.join(TOP_KEYS)})")
    for name in ("base", "evaluate", "grid"):
        if not isinstance(data.get(name, {}), dict):
            raise SpecError(f"{lines.at('', name)}: {name} must be a table, written [{name}]")
    if not isinstance(data.get("arm", []), list):
        raise SpecError(f"{lines.at('', 'arm')}: arms are written [[arm]] (an array of tables)")


def _records(data: dict[str, Any], lines: Lines) -> str:
    records = data.get("records")
    if not isinstance(records, str) or not records:
        raise SpecError(f"{lines.at('', 'records')}: records must name the records directory (a string)")
    return records


def _seeds(data: dict[str, Any], lines: Lines) -> list[int]:
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int and s >= 0 for s in seeds):
        raise SpecError(f"{lines.at('', 'seeds')}: seeds must be a list of integers >= 0, e.g. [0, 1]")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{lines.at('', 'seeds')}: seeds must not repeat")
    return seeds


def _check_evaluate_value(key: str, value: Any, where: str) -> None:
    kind = EVALUATE_KEYS[key]
    if kind is int and (type(value) is not int or value < (0 if key == "codes_seed" else 1)):
        raise SpecError(f"{where}: {key} must be a positive integer, not {value!r}")
    if kind is str and (not isinstance(value, str) or not value):
        raise SpecError(f"{where}: {key} must be a non-empty string, not {value!r}")
    if key == "tta" and value not in TTAS:
        raise SpecError(f"{where}: tta must be 1, 2 or 4, not {value}")
    if key == "codes_input":
        from trainer.robustness import CODES_INPUTS

        if value not in CODES_INPUTS:
            raise SpecError(f"{where}: codes_input must be {' or '.join(CODES_INPUTS)}, not {value!r}")


def _check_rotation_codes(codes: str, where: str) -> None:
    from trainer.robustness import ROTATION_CODES

    unknown = [] if codes == "all" else sorted({c.strip() for c in codes.split(",")} - set(ROTATION_CODES))
    if unknown:
        known = ", ".join(("all", *ROTATION_CODES))
        raise SpecError(f"{where}: unknown rotation codes {', '.join(unknown)} (known: {known})")


def _evaluate(data: dict[str, Any], lines: Lines) -> dict[str, Any]:
    evaluate = data.get("evaluate", {})
    for key, value in evaluate.items():
        where = lines.at("evaluate", key)
        if key not in EVALUATE_KEYS:
            raise SpecError(f"{where}: unknown [evaluate] key {key!r} (known: {', '.join(EVALUATE_KEYS)})")
        _check_evaluate_value(key, value, where)
    if "rotation_codes" in evaluate:
        _check_rotation_codes(evaluate["rotation_codes"], lines.at("evaluate", "rotation_codes"))
    return evaluate


def name_max(output: str | None) -> int:
    """The longest file name (bytes) the filesystem of `output` (its nearest existing ancestor) holds:
    os.pathconf NAME_MAX, else DEFAULT_NAME_MAX."""
    directory = os.path.abspath(output or ".")
    while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return DEFAULT_NAME_MAX


def _check_name_length(name: str, seeds: list[int], limit: int, where: str, fix: str) -> None:
    """A run name whose files the filesystem cannot hold is a spec error (before: --dry-run passed and
    the real run failed with "File name too long" in a half-made study)."""
    longest = max(len(f"{name}-s{seed}".encode()) for seed in seeds) + RUN_NAME_EXTRA_BYTES
    if longest > limit:
        allowed = limit - RUN_NAME_EXTRA_BYTES - max(len(f"-s{seed}") for seed in seeds)
        raise SpecError(
            f"{where}: arm name {name[:40]!r}{'...' if len(name) > 40 else ''} has {len(name.encode())} "
            f"bytes; with its seed and rotnet-ablate's suffixes its file names would have {longest}, and the "
            f"filesystem of --output holds at most {limit}: {fix} (at most {allowed} bytes)"
        )


def _explicit_arms(data: dict[str, Any], lines: Lines, spec: Spec, limit: int) -> list[Arm]:
    arms = []
    for index, table in enumerate(data.get("arm", [])):

        def where(key: str, index: int = index) -> str:
            return lines.at("arm", key, index)

        name = table.get("name")
        if not isinstance(name, str) or not ARM_NAME.fullmatch(name):
            raise SpecError(
                f"{where('name')}: every [[arm]] needs a name of letters, digits, . _ + - (got {name!r})"
            )
        _check_name_length(name, spec.seeds, limit, where("name"), "give it a shorter name")
        options = {k: v for k, v in table.items() if k not in ("name", "records")}
        records = table.get("records", spec.records)
        if not isinstance(records, str) or not records:
            raise SpecError(f"{where('records')}: records must name a records directory (a string)")
        check_train_options({**spec.base, **options}, records, where)
        arms.append(Arm(name, options, records))
    return arms


def grid_arm_name(values: dict[str, Any]) -> str:
    """An arm's name from its grid values: `max-images-0.1`, `head-regression_sigma-3.0`."""
    parts = []
    for key, value in values.items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value).lower()
        parts.append(f"{key.replace('_', '-')}-{text}")
    return "_".join(parts)


def _grid_arms(data: dict[str, Any], lines: Lines, spec: Spec, limit: int) -> list[Arm]:
    grid = data.get("grid", {})
    if not grid:
        return []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{lines.at('grid', key)}: grid values are a non-empty list, e.g. {key} = [1, 2]")
        if len(set(map(repr, values))) != len(values):
            raise SpecError(f"{lines.at('grid', key)}: grid values of {key} must not repeat")
    arms = []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination, strict=True))
        check_train_options({**spec.base, **values}, spec.records, lambda key: lines.at("grid", key))
        name = grid_arm_name(values)
        fix = "give the grid shorter values, or name these arms with [[arm]]"
        _check_name_length(name, spec.seeds, limit, lines.at("grid", next(iter(grid))), fix)
        arms.append(Arm(name, values, spec.records))
    return arms


def _check_arms(arms: list[Arm], path: str) -> None:
    names = [arm.name for arm in arms]
    for name in names:
        if names.count(name) > 1:
            raise SpecError(f"{path}: two arms are named {name!r}; give each a name of its own")
        if not ARM_NAME.fullmatch(name):
            raise SpecError(f"{path}: arm name {name!r} is not a plain file name; name the arm with [[arm]]")


def _check_records_exist(spec: Spec, lines: Lines) -> None:
    from schemas import paths

    for arm in spec.arms:
        if not paths.is_remote(arm.records) and not os.path.isdir(arm.records):
            where = lines.at("", "records")
            raise SpecError(
                f"{where}: records directory {arm.records} does not exist (run rotnet-pipeline first)"
            )


def load_spec(path: str, output: str | None = None) -> Spec:
    """Read and check the whole spec; raises SpecError naming the line of the first problem. Arm names
    are checked against the longest file name the filesystem of `output` (the study) holds."""
    text = _read(path)
    data = _parse(path, text)
    lines = Lines(path, text)
    _check_top(data, lines)
    spec = Spec(
        path, _records(data, lines), _seeds(data, lines), data.get("base", {}), _evaluate(data, lines)
    )
    check_train_options(spec.base, spec.records, lambda key: lines.at("base", key))
    limit = name_max(output)
    spec.arms = _explicit_arms(data, lines, spec, limit) + _grid_arms(data, lines, spec, limit)
    if not spec.arms:
        spec.arms = [Arm("base", {}, spec.records)]
    _check_arms(spec.arms, path)
    _check_records_exist(spec, lines)
    return spec
