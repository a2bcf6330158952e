"""`rotnet-ablate`: run a sweep of rotnet-train arms on the same shards, score each alike, one table out.

    rotnet-ablate ablations/mnist_data_size.toml --output data/ablations/data_size
    rotnet-ablate ablations/mnist_heads.toml --output data/ablations/heads --parallel 2

The spec (TOML): `records`, `seeds`, `[base]` (rotnet-train options, `_` for `-`), `[evaluate]`
(rotnet-evaluate options), `[[arm]]` (a `name` + the options that differ from base, optionally its own
`records`) and/or `[grid]` (option -> list of values; every combination becomes an arm). Each arm x seed
trains into DIR/arms/NAME-sSEED/ with rotnet-train as a subprocess (an ordinary run dir: every tool works
on it), then rotnet-evaluate writes DIR/arms/NAME-sSEED/evaluation/. A rerun skips finished arms, resumes
killed ones (rotnet-train's BackupAndRestore) and refuses a spec whose finished arms would change.
Results: DIR/ablation.csv, ablation.json, ablation.md and PNGs. See docs/ablations.md.
"""

from __future__ import annotations

import concurrent.futures
import csv
import datetime
import io
import itertools
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from typing import Any

import click

MARKER_FILE = ".rotnet-ablate.json"  # proves DIR was made by rotnet-ablate (we never write elsewhere)
ARM_RECORD = "rotnet-ablate-arm.json"  # in each arm dir: the arm's resolved options and its state
EVALUATION_DIR = "evaluation"
TOP_KEYS = {"records", "seeds", "base", "evaluate", "arm", "grid"}
# rotnet-train options an arm may not set: rotnet-ablate owns them.
RESERVED = {"output", "seed", "verbose", "records", "stream_sweeps"}
EVALUATE_KEYS = {
    "split": str,
    "tta": int,
    "rotation_codes": str,
    "batch_size": int,
    "max_records": int,
    "codes_angles_per_image": int,
    "codes_seed": int,
    "source_dir": str,
    "angles": str,
}


class SpecError(Exception):
    """A problem in the spec; the message names the spec line."""


# --- the spec -------------------------------------------------------------------------------------


@dataclass
class Run:
    """One arm x seed: what rotnet-train gets."""

    arm: str
    seed: int
    records: str
    options: dict[str, Any]  # every option that differs from base, plus base's, as spec keys

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
    arms: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # name, options beyond base

    def runs(self) -> list[Run]:
        return [
            Run(
                name,
                seed,
                str(extra.get("records", self.records)),
                {**self.base, **_without(extra, "records")},
            )
            for name, extra in self.arms
            for seed in self.seeds
        ]


def _without(options: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in options.items() if key not in keys}


class _Lines:
    """Finds the line of a key in the TOML text, by its table ([base], the Nth [[arm]], ...)."""

    def __init__(self, text: str):
        self.tables: list[tuple[str, int, dict[str, int]]] = [("", 0, {})]
        counts: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            header = re.match(r"^\[\[\s*([\w.-]+)\s*\]\]|^\[\s*([\w.-]+)\s*\]", stripped)
            if header:
                name = header.group(1) or header.group(2)
                index = counts.get(name, 0)
                counts[name] = index + 1
                self.tables.append((name, index, {"": number}))
                continue
            key = re.match(r"^([\w-]+|\"[^\"]+\")\s*=", stripped)
            if key:
                self.tables[-1][2].setdefault(key.group(1).strip('"'), number)

    def of(self, table: str, key: str = "", index: int = 0) -> int:
        for name, position, keys in self.tables:
            if name == table and position == index:
                return keys.get(key, keys.get("", 1))
        return 1


def _train_params() -> dict[str, Any]:
    """rotnet-train's options by spec key (the long option name, `_` for `-`)."""
    from trainer.cli import main as train_main

    found = {}
    for param in train_main.params:
        for opt in param.opts:
            if opt.startswith("--"):
                found[opt[2:].replace("-", "_")] = param
    return found


def train_args(options: dict[str, Any]) -> list[str]:
    """The rotnet-train arguments for spec options (booleans become --x / --no-x)."""
    params = _train_params()
    args: list[str] = []
    for key in sorted(options):
        value = options[key]
        param = params[key]
        flag = "--" + key.replace("_", "-")
        if getattr(param, "is_flag", False):
            if value is True:
                args.append(flag)
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
        else:
            if isinstance(value, list):
                value = ",".join(str(item) for item in value)
            args += [flag, str(value)]
    return args


def _check_train_options(options: dict[str, Any], records: str, where: str) -> None:
    """rotnet-train's own checks: click's parsing and types, then TrainConfig's `check`."""
    from trainer.config import TrainConfig, check

    params = _train_params()
    for key, value in options.items():
        if key not in params or key in RESERVED:
            known = ", ".join(sorted(set(params) - RESERVED))
            reason = "is set by rotnet-ablate" if key in RESERVED else "is not a rotnet-train option"
            raise SpecError(f"{where(key)}: {key!r} {reason} (options: {known})")
        if getattr(params[key], "is_flag", False) and not isinstance(value, bool):
            raise SpecError(f"{where(key)}: {key} takes true or false, not {value!r}")
        if isinstance(value, dict):
            raise SpecError(f"{where(key)}: {key} takes a value, not a table")
    from trainer.cli import main as train_main

    args = ["--records", records, "--output", "unused", *train_args(options)]
    try:
        context = train_main.make_context("rotnet-train", args)
    except click.ClickException as error:
        hint = getattr(error, "param_hint", None) or ""
        key = next((k for k in options if hint and ("--" + k.replace("_", "-")) in str(hint)), "")
        raise SpecError(f"{where(key)}: {error.format_message()}") from None
    params_values = dict(context.params)
    params_values.pop("verbose", None)
    if params_values.get("angles") is not None:
        params_values["angles"] = list(params_values["angles"])
    problems = check(TrainConfig(**params_values))
    if problems:
        raise SpecError(f"{where('')}: {'; '.join(problems)}")


def _arm_name(values: dict[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value).lower()
        parts.append(f"{key.replace('_', '-')}-{text}")
    return "_".join(parts)


def load_spec(path: str) -> Spec:
    """Read and validate the whole spec (raises SpecError naming the line)."""
    with open(path, "rb") as handle:
        raw = handle.read()
    text = raw.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML: {error}") from None
    lines = _Lines(text)

    def at(table: str, index: int = 0) -> Any:
        return lambda key: f"{path}:{lines.of(table, key, index)}"

    for key in data:
        if key not in TOP_KEYS:
            raise SpecError(f"{at('')(key)}: unknown key {key!r} (known: {', '.join(sorted(TOP_KEYS))})")
    records = data.get("records")
    if not isinstance(records, str) or not records:
        raise SpecError(f"{at('')('records')}: records must name the records directory (a string)")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise SpecError(f"{at('')('seeds')}: seeds must be a list of integers, e.g. [0, 1]")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{at('')('seeds')}: seeds must not repeat")
    base = data.get("base", {})
    evaluate = data.get("evaluate", {})
    for name, table in (("base", base), ("evaluate", evaluate), ("grid", data.get("grid", {}))):
        if not isinstance(table, dict):
            raise SpecError(f"{at('')(name)}: {name} must be a table ([{name}])")
    for key, value in evaluate.items():
        if key not in EVALUATE_KEYS:
            raise SpecError(
                f"{at('evaluate')(key)}: unknown [evaluate] key {key!r} (known: {', '.join(sorted(EVALUATE_KEYS))})"
            )
        if EVALUATE_KEYS[key] is int and (type(value) is not int or value < 1):
            raise SpecError(f"{at('evaluate')(key)}: {key} must be a positive integer, not {value!r}")
        if EVALUATE_KEYS[key] is str and not isinstance(value, str):
            raise SpecError(f"{at('evaluate')(key)}: {key} must be a string, not {value!r}")
    if "tta" in evaluate and evaluate["tta"] not in (1, 2, 4):
        raise SpecError(f"{at('evaluate')('tta')}: tta must be 1, 2 or 4, not {evaluate['tta']}")
    if "rotation_codes" in evaluate:
        from trainer.robustness import ROTATION_CODES

        codes = evaluate["rotation_codes"]
        unknown = (
            [] if codes == "all" else sorted(set(c.strip() for c in codes.split(",")) - set(ROTATION_CODES))
        )
        if unknown:
            raise SpecError(
                f"{at('evaluate')('rotation_codes')}: unknown rotation codes {', '.join(unknown)} "
                f"(known: all, {', '.join(ROTATION_CODES)})"
            )
    _check_train_options(base, records, at("base"))
    arms: list[tuple[str, dict[str, Any]]] = []
    explicit = data.get("arm", [])
    if not isinstance(explicit, list):
        raise SpecError(f"{at('')('arm')}: arms are written [[arm]] (an array of tables)")
    for index, arm in enumerate(explicit):
        where = at("arm", index)
        name = arm.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*", name):
            raise SpecError(
                f"{where('name')}: every [[arm]] needs a name of letters, digits, . _ - (got {name!r})"
            )
        extra = _without(arm, "name")
        arm_records = extra.get("records", records)
        if not isinstance(arm_records, str):
            raise SpecError(f"{where('records')}: records must be a string")
        _check_train_options({**base, **_without(extra, "records")}, arm_records, where)
        arms.append((name, extra))
    grid = data.get("grid", {})
    if grid:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise SpecError(f"{at('grid')(key)}: grid values are a non-empty list, e.g. {key} = [1, 2]")
        keys = list(grid)
        for combination in itertools.product(*(grid[key] for key in keys)):
            values = dict(zip(keys, combination, strict=True))
            _check_train_options({**base, **values}, records, lambda key: at("grid")(key))
            arms.append((_arm_name(values), values))
    if not arms:
        arms.append(("base", {}))
    seen: dict[str, int] = {}
    for name, _ in arms:
        if name in seen:
            raise SpecError(f"{path}: two arms are named {name!r}; give each a name of its own")
        seen[name] = 1
    for run_records in {str(extra.get("records", records)) for _, extra in arms}:
        from schemas import paths

        if not paths.is_remote(run_records) and not os.path.isdir(run_records):
            line = at("")("records")
            raise SpecError(
                f"{line}: records directory {run_records} does not exist (run rotnet-pipeline first)"
            )
    return Spec(path, records, seeds, base, evaluate, arms)


# --- the output directory -------------------------------------------------------------------------


def _claim_output(output: str, spec_path: str) -> None:
    """Create DIR with our marker, or accept it only when it carries the marker (never a symlink)."""
    if os.path.islink(output):
        raise click.ClickException(
            f"{output} is a symbolic link; rotnet-ablate writes only into real directories"
        )
    marker = os.path.join(output, MARKER_FILE)
    if os.path.exists(output):
        if not os.path.isdir(output) or not os.path.isfile(marker) or os.path.islink(marker):
            raise click.ClickException(
                f"{output} exists and was not made by rotnet-ablate (no {MARKER_FILE}); choose a new --output"
            )
    else:
        os.makedirs(output)
        _write_aside(marker, json.dumps({"tool": "rotnet-ablate", "spec": os.path.abspath(spec_path)}) + "\n")
    arms = os.path.join(output, "arms")
    logs = os.path.join(output, "logs")
    for directory in (arms, logs):
        if os.path.islink(directory):
            raise click.ClickException(
                f"{directory} is a symbolic link; rotnet-ablate does not write through it"
            )
        os.makedirs(directory, exist_ok=True)


def _write_aside(path: str, text: str | bytes) -> None:
    """Write beside the target then rename over it (never a half-written file, never through a link)."""
    if os.path.islink(path):
        raise click.ClickException(f"{path} is a symbolic link; rotnet-ablate does not write through it")
    temporary = f"{path}.tmp-{os.getpid()}"
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(temporary, mode) as handle:
        handle.write(text)
    os.replace(temporary, path)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _identity(run: Run, spec: Spec) -> dict[str, Any]:
    """What makes a finished arm what it is: a change here means it must be retrained."""
    return {"records": run.records, "seed": run.seed, "options": run.options, "evaluate": spec.evaluate}


# --- running arms ---------------------------------------------------------------------------------


def _gpus() -> list[str]:
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(index) for index, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def _environment(slot: int, parallel: int, gpus: list[str]) -> dict[str, str]:
    """One GPU per arm where there are GPUs; else the CPU cores split between the parallel arms."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    elif parallel > 1:
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        env.update(OMP_NUM_THREADS=threads, TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS="1")
    return env


def _run_logged(command: list[str], log: str, env: dict[str, str]) -> int:
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode


def _evaluate_args(run_dir: str, records: str, evaluate: dict[str, Any]) -> list[str]:
    args = ["--model", run_dir, "--records", records, "--output", os.path.join(run_dir, EVALUATION_DIR)]
    for key, value in sorted(evaluate.items()):
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def run_arm(run: Run, spec: Spec, output: str, env: dict[str, str]) -> tuple[str, str]:
    """Train (or resume) then evaluate one arm x seed; returns (state, message)."""
    run_dir = os.path.join(output, "arms", run.name)
    log = os.path.join(output, "logs", f"{run.name}.log")
    record_path = os.path.join(run_dir, ARM_RECORD)
    record = _read_json(record_path) or {}
    if record.get("state") != "trained":
        command = [
            sys.executable, "-m", "trainer.cli",
            "--records", run.records, "--output", run_dir, "--seed", str(run.seed), *train_args(run.options),
        ]  # fmt: skip
        code = _run_logged(command, log, env)
        if code != 0:
            return "failed", f"rotnet-train exited {code}; see {log}"
        _write_aside(record_path, json.dumps({**_identity(run, spec), "state": "trained"}, indent=2) + "\n")
    command = [
        sys.executable,
        "-m",
        "trainer.evaluate_cli",
        *_evaluate_args(run_dir, run.records, spec.evaluate),
    ]
    code = _run_logged(command, log, env)
    if code != 0:
        return "failed", f"rotnet-evaluate exited {code}; see {log}"
    _write_aside(record_path, json.dumps({**_identity(run, spec), "state": "done"}, indent=2) + "\n")
    return "done", ""


def _finished(run: Run, spec: Spec, output: str) -> tuple[bool, bool]:
    """(finished, changed): is the arm done, and would this spec change it?"""
    run_dir = os.path.join(output, "arms", run.name)
    record = _read_json(os.path.join(run_dir, ARM_RECORD))
    if not record or record.get("state") not in ("trained", "done"):
        return False, False
    changed = {key: record.get(key) for key in ("records", "seed", "options", "evaluate")} != _identity(
        run, spec
    )
    if not changed and record.get("state") == "trained":
        return False, False  # trained, not yet evaluated: run_arm evaluates it
    return record.get("state") == "done", changed


def _remove_arm(output: str, name: str) -> None:
    """Delete an arm dir under DIR/arms/ (ours: DIR carries the marker); never follow a link."""
    run_dir = os.path.join(output, "arms", name)
    if os.path.islink(run_dir):
        raise click.ClickException(f"{run_dir} is a symbolic link; remove it yourself")
    aside = os.path.join(output, "arms", f".{name}.removing-{os.getpid()}")
    os.rename(run_dir, aside)
    shutil.rmtree(aside)


# --- results --------------------------------------------------------------------------------------


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def arm_metrics(run_dir: str, tta: int) -> dict[str, Any]:
    """One arm x seed's figures, from rotnet-train's metrics.json and rotnet-evaluate's evaluation.json."""
    metrics = _read_json(os.path.join(run_dir, "metrics.json")) or {}
    evaluation = _read_json(os.path.join(run_dir, EVALUATION_DIR, "evaluation.json")) or {}
    figures: dict[str, Any] = {
        "mean_error_degrees": evaluation.get("mean_error_degrees"),
        "median_error_degrees": evaluation.get("median_error_degrees"),
        "p95_error_degrees": evaluation.get("p95_error_degrees"),
        "within_5_degrees": (evaluation.get("within_degrees") or {}).get("5"),
        "flip_share": evaluation.get("flip_share"),
        "training_minutes": (metrics.get("wall_seconds") or 0) / 60 if metrics.get("wall_seconds") else None,
        "train_images_per_second": metrics.get("train_images_per_second"),
        "epochs_run": metrics.get("epochs_run"),
        "worst_code": None,
        "worst_code_mean_error_degrees": None,
        "worst_over_best": None,
    }
    rows = [row for row in (evaluation.get("rotation_codes") or {}).get("rows", []) if row.get("tta") == tta]
    if rows:
        worst = max(rows, key=lambda row: row["mean_error_degrees"])
        figures["worst_code"] = worst["code"]
        figures["worst_code_mean_error_degrees"] = worst["mean_error_degrees"]
        figures["worst_over_best"] = (evaluation["rotation_codes"].get("worst_over_best") or {}).get(
            f"tta {tta}"
        )
    return figures


AVERAGED = (
    "mean_error_degrees",
    "median_error_degrees",
    "p95_error_degrees",
    "within_5_degrees",
    "flip_share",
    "worst_code_mean_error_degrees",
    "worst_over_best",
    "training_minutes",
    "train_images_per_second",
)


def summarize(spec: Spec, output: str) -> list[dict[str, Any]]:
    """One row per arm: the options that differ from base, seeds, mean and sd over seeds."""
    tta = int(spec.evaluate.get("tta", 1))
    rows = []
    for name, extra in spec.arms:
        per_seed = [arm_metrics(os.path.join(output, "arms", f"{name}-s{seed}"), tta) for seed in spec.seeds]
        row: dict[str, Any] = {
            "arm": name,
            "options": {k: v for k, v in extra.items() if spec.base.get(k, object()) != v},
            "seeds": list(spec.seeds),
        }
        for key in AVERAGED:
            row[key], row[key + "_sd"] = _mean_sd([figures[key] for figures in per_seed])
        codes = [figures["worst_code"] for figures in per_seed if figures["worst_code"]]
        row["worst_code"] = max(set(codes), key=codes.count) if codes else None
        row["per_seed"] = per_seed
        rows.append(row)
    rows.sort(key=lambda row: (row["mean_error_degrees"] is None, row["mean_error_degrees"] or 0))
    return rows


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpus = _gpus()
    return f"{model}, {os.cpu_count()} cores" + (f", {len(gpus)} GPU(s)" if gpus else "")


def _format(value: Any, sd: Any = None, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "-"
    if percent:
        text = f"{100 * value:.1f}%"
        return text + (f" ± {100 * sd:.1f}" if sd else "")
    text = f"{value:.{digits}f}"
    return text + (f" ± {sd:.{digits}f}" if sd else "")


def _options_text(options: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(options.items())) or "(base)"


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    buffer = io.StringIO()
    columns = (
        ["arm", "options", "seeds"] + [c for key in AVERAGED for c in (key, key + "_sd")] + ["worst_code"]
    )
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {**row, "options": _options_text(row["options"]), "seeds": " ".join(map(str, row["seeds"]))}
        )
    _write_aside(path, buffer.getvalue())


def _plots(rows: list[dict[str, Any]], output: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    scored = [row for row in rows if row["mean_error_degrees"] is not None]
    if not scored:
        return written
    figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(scored) + 2), 4))
    names = [row["arm"] for row in scored]
    axis.bar(names, [row["mean_error_degrees"] for row in scored], color="tab:blue", alpha=0.6)
    for index, row in enumerate(scored):
        values = [s["mean_error_degrees"] for s in row["per_seed"] if s["mean_error_degrees"] is not None]
        axis.plot([index] * len(values), values, "k.", label="seeds" if index == 0 else None)
    axis.set_ylabel("mean angle error (degrees)")
    axis.set_title("mean error per arm (bar: mean over seeds; dots: each seed)")
    axis.tick_params(axis="x", rotation=30)
    axis.legend()
    figure.tight_layout()
    path = os.path.join(output, "ablation_arms.png")
    figure.savefig(path + ".tmp.png", dpi=100)
    os.replace(path + ".tmp.png", path)
    plt.close(figure)
    written.append(path)
    # Arms that differ in exactly one numeric option (and it is the same option for all): error vs it.
    keys = {key for row in scored for key in row["options"]}
    if len(keys) == 1:
        key = keys.pop()
        points = [
            (row["options"].get(key), row)
            for row in scored
            if isinstance(row["options"].get(key), int | float)
            and not isinstance(row["options"].get(key), bool)
        ]
        if len(points) >= 2:
            points.sort(key=lambda item: item[0])
            figure, axis = plt.subplots(figsize=(5, 4))
            axis.errorbar(
                [p[0] for p in points],
                [p[1]["mean_error_degrees"] for p in points],
                yerr=[p[1]["mean_error_degrees_sd"] or 0 for p in points],
                marker="o",
                capsize=3,
            )
            axis.set_xlabel(key)
            axis.set_ylabel("mean angle error (degrees)")
            axis.set_title(f"error against {key}")
            figure.tight_layout()
            path = os.path.join(output, f"ablation_{key}.png")
            figure.savefig(path + ".tmp.png", dpi=100)
            os.replace(path + ".tmp.png", path)
            plt.close(figure)
            written.append(path)
    return written


def write_results(spec: Spec, output: str, elapsed_seconds: float) -> list[dict[str, Any]]:
    rows = summarize(spec, output)
    write_csv(rows, os.path.join(output, "ablation.csv"))
    manifest = _read_json(os.path.join(spec.records, "dataset_info.json")) or {}
    facts = {
        key: manifest.get(key) for key in ("dataset", "schema_version", "image", "compression", "splits")
    }
    document = {
        "spec": os.path.abspath(spec.path),
        "records": spec.records,
        "seeds": spec.seeds,
        "base": spec.base,
        "evaluate": spec.evaluate,
        "machine": _machine(),
        "records_manifest": facts,
        "wall_seconds_this_run": round(elapsed_seconds, 1),
        "arms": rows,
    }
    _write_aside(os.path.join(output, "ablation.json"), json.dumps(document, indent=2, default=str) + "\n")
    pictures = _plots(rows, output)
    tta = spec.evaluate.get("tta", 1)
    lines = [
        f"# Ablation: {os.path.basename(spec.path)}",
        "",
        f"Records `{spec.records}`, seeds {spec.seeds}, evaluated on `{spec.evaluate.get('split', 'validation')}` "
        f"at tta {tta}. Machine: {_machine()}. Written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "| arm | options (vs base) | mean error | median | p95 | within 5° | flips | worst code "
        "| worst code mean | worst/best | train min | images/s |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['arm']} | {_options_text(row['options'])} "
            f"| {_format(row['mean_error_degrees'], row['mean_error_degrees_sd'])} "
            f"| {_format(row['median_error_degrees'], row['median_error_degrees_sd'])} "
            f"| {_format(row['p95_error_degrees'], row['p95_error_degrees_sd'], 1)} "
            f"| {_format(row['within_5_degrees'], row['within_5_degrees_sd'], percent=True)} "
            f"| {_format(row['flip_share'], row['flip_share_sd'], percent=True)} "
            f"| {row['worst_code'] or '-'} "
            f"| {_format(row['worst_code_mean_error_degrees'], row['worst_code_mean_error_degrees_sd'])} "
            f"| {_format(row['worst_over_best'], None, 3)} "
            f"| {_format(row['training_minutes'], None, 1)} "
            f"| {_format(row['train_images_per_second'], None, 0)} |"
        )
    lines += [
        "",
        "Errors in degrees: mean ± sd over seeds (sd omitted with one seed).",
        "",
        "Base options: " + (", ".join(f"`{k} = {v}`" for k, v in sorted(spec.base.items())) or "(defaults)"),
        "",
        "Records manifest: " + ", ".join(f"{k}: {json.dumps(v)}" for k, v in facts.items() if v is not None),
        "",
        *(f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pictures),
        "",
    ]
    _write_aside(os.path.join(output, "ablation.md"), "\n".join(lines))
    return rows


# --- the command ----------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for the study: arms/NAME-sSEED/ (ordinary rotnet-train runs, each evaluated in its "
    "evaluation/), logs/, ablation.csv, ablation.json, ablation.md and PNGs. Created here; an existing one "
    f"is used only if rotnet-ablate made it ({MARKER_FILE}), to resume or extend the study.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Arms trained at once, as separate processes: one GPU each where there are GPUs "
    "(CUDA_VISIBLE_DEVICES), otherwise the CPU cores split between them (OMP/TF thread counts).",
)
@click.option(
    "--overwrite-changed",
    is_flag=True,
    help="Retrain the finished arms whose options, records, seed or [evaluate] changed in the spec "
    "(deleting their arm dirs); without it such a spec is refused and those arms are named.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate the spec and list the arms (and which are finished or would change); train nothing.",
)
def main(spec_path: str, output: str, parallel: int, overwrite_changed: bool, dry_run: bool) -> None:
    """Train every arm x seed of SPEC.toml on the same shards, score each alike, write one table.

    The whole spec is checked first, with rotnet-train's own option checks: an unknown key, option or bad
    value stops with one line naming the spec line (exit 2), before anything trains. A rerun skips
    finished arms, resumes killed ones from their backup/, and refuses finished arms the spec would change.
    """
    try:
        spec = load_spec(spec_path)
    except SpecError as error:
        raise click.UsageError(str(error)) from None
    runs = spec.runs()
    finished, changed = [], []
    if os.path.isdir(output) and os.path.isfile(os.path.join(output, MARKER_FILE)):
        for run in runs:
            done, different = _finished(run, spec, output)
            if different:
                changed.append(run)
            elif done:
                finished.append(run)
    if changed and not overwrite_changed:
        raise click.UsageError(
            "the spec would change finished arms: "
            + ", ".join(run.name for run in changed)
            + "; rerun with --overwrite-changed to retrain only those, or use another --output"
        )
    if dry_run:
        for run in runs:
            state = "finished" if run in finished else "changed" if run in changed else "to run"
            click.echo(f"{run.name}: {state}: {' '.join(train_args(run.options))}")
        return
    _claim_output(output, spec_path)
    for run in changed:
        click.echo(f"{run.name}: the spec changed it; retraining", err=True)
        _remove_arm(output, run.name)
    for run in finished:
        click.echo(f"{run.name}: finished, skipped", err=True)
    todo = [run for run in runs if run not in finished]
    started = time.perf_counter()
    gpus = _gpus()
    failures: list[str] = []
    if todo:
        slots = list(range(parallel))
        lock = threading.Lock()
        done_count = 0

        def work(run: Run) -> tuple[Run, str, str, float]:
            with lock:
                slot = slots.pop(0)
            try:
                begin = time.perf_counter()
                state, message = run_arm(run, spec, output, _environment(slot, parallel, gpus))
                return run, state, message, time.perf_counter() - begin
            finally:
                with lock:
                    slots.append(slot)

        click.echo(f"{len(todo)} arm run(s) to train, {parallel} at once; logs in {output}/logs/", err=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            for future in concurrent.futures.as_completed([pool.submit(work, run) for run in todo]):
                run, state, message, seconds = future.result()
                done_count += 1
                elapsed = time.perf_counter() - started
                left = elapsed / done_count * (len(todo) - done_count)
                tta = int(spec.evaluate.get("tta", 1))
                error = arm_metrics(os.path.join(output, "arms", run.name), tta)["mean_error_degrees"]
                result = f"mean error {error:.2f} deg" if state == "done" and error is not None else message
                click.echo(
                    f"[{done_count}/{len(todo)}] {run.name}: {state} in {seconds / 60:.1f} min, {result}; "
                    f"about {left / 60:.1f} min left",
                    err=True,
                )
                if state != "done":
                    failures.append(f"{run.name} ({message})")
    write_results(spec, output, time.perf_counter() - started)
    click.echo(f"wrote {os.path.join(output, 'ablation.md')}, ablation.csv, ablation.json")
    if failures:
        raise click.ClickException(
            "arms failed: " + "; ".join(failures) + "; rerun the same command to resume"
        )


if __name__ == "__main__":
    main()
