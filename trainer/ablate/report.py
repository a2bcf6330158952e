"""The results of `rotnet-ablate`: one row per arm (mean and sd over seeds), ablation.csv/json/md, PNGs.

Each run's figures come from its own files: rotnet-train's metrics.json (training minutes, images/s,
epochs) and rotnet-evaluate's evaluation/evaluation.json (angle errors in degrees, shares as fractions
of records, rotation codes at the spec's tta).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
import platform
from typing import Any

from trainer.ablate.output import arm_dir, read_json, write_aside
from trainer.ablate.spec import Arm, Spec

EVALUATION_DIR = "evaluation"
# Figures of one run, averaged over seeds (each also gets a `_sd` column).
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
    "epochs_run",
)
MANIFEST_FACTS = ("dataset", "schema_version", "image", "compression", "angles_degrees", "splits")


def _rotation_code_figures(evaluation: dict[str, Any], tta: int) -> dict[str, Any]:
    codes = evaluation.get("rotation_codes") or {}
    rows = [row for row in codes.get("rows", []) if row.get("tta") == tta]
    if not rows:
        return {"worst_code": None, "worst_code_mean_error_degrees": None, "worst_over_best": None}
    worst = max(rows, key=lambda row: row["mean_error_degrees"])
    return {
        "worst_code": worst["code"],
        "worst_code_mean_error_degrees": worst["mean_error_degrees"],
        "worst_over_best": (codes.get("worst_over_best") or {}).get(f"tta {tta}"),
    }


def run_figures(run_dir: str, tta: int) -> dict[str, Any]:
    """One run's figures (None where a file or value is missing)."""
    metrics = read_json(os.path.join(run_dir, "metrics.json")) or {}
    evaluation = read_json(os.path.join(run_dir, EVALUATION_DIR, "evaluation.json")) or {}
    seconds = metrics.get("wall_seconds")
    return {
        "mean_error_degrees": evaluation.get("mean_error_degrees"),
        "median_error_degrees": evaluation.get("median_error_degrees"),
        "p95_error_degrees": evaluation.get("p95_error_degrees"),
        "within_5_degrees": (evaluation.get("within_degrees") or {}).get("5"),
        "flip_share": evaluation.get("flip_share"),
        "training_minutes": seconds / 60 if isinstance(seconds, int | float) else None,
        "train_images_per_second": metrics.get("train_images_per_second"),
        "epochs_run": metrics.get("epochs_run"),
        **_rotation_code_figures(evaluation, tta),
    }


def mean_sd(values: list[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite numbers (sd 0.0 for one, None for none)."""
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return None, None
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def differs_from_base(arm: Arm, spec: Spec) -> dict[str, Any]:
    """The arm's options whose value is not [base]'s (and its records, when they are its own)."""
    options = {k: v for k, v in arm.options.items() if k not in spec.base or spec.base[k] != v}
    return {**options, "records": arm.records} if arm.records != spec.records else options


def arm_row(arm: Arm, spec: Spec, output: str) -> dict[str, Any]:
    per_seed = [run_figures(arm_dir(output, f"{arm.name}-s{seed}"), spec.tta) for seed in spec.seeds]
    row: dict[str, Any] = {
        "arm": arm.name,
        "options": differs_from_base(arm, spec),
        "seeds": list(spec.seeds),
    }
    for key in AVERAGED:
        row[key], row[key + "_sd"] = mean_sd([figures[key] for figures in per_seed])
    codes = [figures["worst_code"] for figures in per_seed if figures["worst_code"]]
    row["worst_code"] = max(sorted(set(codes)), key=codes.count) if codes else None
    row["runs_scored"] = sum(figures["mean_error_degrees"] is not None for figures in per_seed)
    row["per_seed"] = per_seed
    return row


def summarize(spec: Spec, output: str) -> list[dict[str, Any]]:
    """One row per arm, best mean error first (arms without a score last, in spec order)."""
    rows = [arm_row(arm, spec, output) for arm in spec.arms]
    return sorted(rows, key=lambda row: (row["mean_error_degrees"] is None, row["mean_error_degrees"] or 0))


# --- text -----------------------------------------------------------------------------------------


def options_text(options: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(options.items())) or "(base)"


def _number(value: Any, sd: Any = None, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "-"
    scale, unit = (100, "%") if percent else (1, "")
    text = f"{scale * value:.{digits}f}{unit}"
    return text + (f" ± {scale * sd:.{digits}f}" if sd else "")


def csv_text(rows: list[dict[str, Any]]) -> str:
    columns = [
        "arm",
        "options",
        "seeds",
        "runs_scored",
        *[c for k in AVERAGED for c in (k, k + "_sd")],
        "worst_code",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {**row, "options": options_text(row["options"]), "seeds": " ".join(map(str, row["seeds"]))}
        )
    return buffer.getvalue()


def machine() -> str:
    """The CPU model and core count (and GPUs, if CUDA_VISIBLE_DEVICES names any)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model
            )
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"


def manifest_facts(records: str) -> dict[str, Any]:
    if "://" in records:
        return {}
    manifest = read_json(os.path.join(records, "dataset_info.json")) or {}
    facts = {key: manifest.get(key) for key in MANIFEST_FACTS if manifest.get(key) is not None}
    if isinstance(facts.get("angles_degrees"), list):
        facts["angles_degrees"] = f"{len(facts['angles_degrees'])} angles"
    if isinstance(facts.get("splits"), dict):
        facts["splits"] = {
            name: f"{split.get('num_images', '?')} images, {split.get('num_records', '?')} records"
            for name, split in facts["splits"].items()
            if isinstance(split, dict)
        }
    return facts


TABLE_HEADER = (
    "| arm | options (vs base) | runs | mean error ° | median ° | p95 ° | within 5° | flips | worst code "
    "| worst code mean ° | worst/best | train min | images/s |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
)


def table_row(row: dict[str, Any]) -> str:
    cells = [
        row["arm"],
        options_text(row["options"]),
        f"{row['runs_scored']}/{len(row['seeds'])}",
        _number(row["mean_error_degrees"], row["mean_error_degrees_sd"]),
        _number(row["median_error_degrees"], row["median_error_degrees_sd"]),
        _number(row["p95_error_degrees"], row["p95_error_degrees_sd"], 1),
        _number(row["within_5_degrees"], row["within_5_degrees_sd"], 1, percent=True),
        _number(row["flip_share"], row["flip_share_sd"], 2, percent=True),
        row["worst_code"] or "-",
        _number(row["worst_code_mean_error_degrees"], row["worst_code_mean_error_degrees_sd"]),
        _number(row["worst_over_best"], None, 3),
        _number(row["training_minutes"], None, 1),
        _number(row["train_images_per_second"], None, 0),
    ]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown(spec: Spec, rows: list[dict[str, Any]], pictures: list[str]) -> str:
    evaluate = " ".join(f"{k}={v}" for k, v in sorted(spec.evaluate.items())) or "(rotnet-evaluate defaults)"
    base = (
        ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in sorted(spec.base.items()))
        or "(rotnet-train defaults)"
    )
    facts = ", ".join(f"{k}: {json.dumps(v)}" for k, v in manifest_facts(spec.records).items()) or "-"
    return "\n".join(
        [
            f"# Ablation: {os.path.basename(spec.path)}",
            "",
            f"Records `{spec.records}`, seeds {spec.seeds}, evaluated with {evaluate}. Machine: {machine()}. "
            f"Written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
            "",
            TABLE_HEADER,
            *(table_row(row) for row in rows),
            "",
            "Sorted by mean error. Errors in degrees, mean ± sd over seeds (no sd with one seed); within 5° and "
            "flips (error >= 170°) are shares of the split's records; worst code: the rotation code with the "
            f"highest mean error at tta {spec.tta}; train min: rotnet-train's wall time.",
            "",
            f"Base options: {base}",
            "",
            f"Records manifest: {facts}",
            "",
            *(f"![{name}]({name})" for name in pictures),
            "",
        ]
    )


def json_text(spec: Spec, rows: list[dict[str, Any]]) -> str:
    document = {
        "spec": os.path.abspath(spec.path),
        "records": spec.records,
        "seeds": spec.seeds,
        "base": spec.base,
        "evaluate": spec.evaluate,
        "machine": machine(),
        "records_manifest": manifest_facts(spec.records),
        "arms": rows,
    }
    return json.dumps(document, indent=2, default=str) + "\n"


# --- pictures -------------------------------------------------------------------------------------


def numeric_option(rows: list[dict[str, Any]]) -> str | None:
    """The one option every scored arm sets to a number, when arms differ in that option only."""
    keys = {key for row in rows for key in row["options"]}
    if len(keys) != 1:
        return None
    key = next(iter(keys))
    numbers = [row["options"].get(key) for row in rows]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers) and len(set(numbers)) > 1:
        return key
    return None


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def bar_chart(rows: list[dict[str, Any]]) -> bytes:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 4))
    axis.bar(range(len(rows)), [row["mean_error_degrees"] for row in rows], color="tab:blue", alpha=0.6)
    for index, row in enumerate(rows):
        values = [s["mean_error_degrees"] for s in row["per_seed"] if s["mean_error_degrees"] is not None]
        axis.plot([index] * len(values), values, "k.", label="each seed" if index == 0 else None)
    axis.set_xticks(range(len(rows)), [row["arm"] for row in rows], rotation=30, ha="right")
    axis.set_ylabel("mean angle error (degrees)")
    axis.set_title("mean error per arm (bar: mean over seeds; dots: each seed)")
    axis.legend()
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


def option_chart(rows: list[dict[str, Any]], key: str) -> bytes:
    import matplotlib.pyplot as plt

    points = sorted(rows, key=lambda row: row["options"][key])
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.errorbar(
        [row["options"][key] for row in points],
        [row["mean_error_degrees"] for row in points],
        yerr=[row["mean_error_degrees_sd"] or 0 for row in points],
        marker="o",
        capsize=3,
    )
    axis.set_xlabel(key)
    axis.set_ylabel("mean angle error (degrees)")
    axis.set_title(f"mean error against {key}")
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


def minutes_chart(rows: list[dict[str, Any]]) -> bytes:
    """Error against training minutes, one point per run, labelled with its arm: the cost frontier.
    The error is the worst rotation code's mean where the runs were scored under rotation codes."""
    import matplotlib.pyplot as plt

    key = "worst_code_mean_error_degrees"
    if any(s[key] is None for row in rows for s in row["per_seed"] if s["mean_error_degrees"] is not None):
        key = "mean_error_degrees"
    figure, axis = plt.subplots(figsize=(6, 4))
    for row in rows:
        points = [(s["training_minutes"], s[key]) for s in row["per_seed"] if s[key] is not None]
        points = [(x, y) for x, y in points if x is not None]
        axis.plot([x for x, _ in points], [y for _, y in points], "o")
        for x, y in points:
            axis.annotate(row["arm"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axis.set_xlabel("training minutes (rotnet-train wall time)")
    label = "worst rotation code's mean error" if key.startswith("worst") else "mean error"
    axis.set_ylabel(f"{label} (degrees)")
    axis.set_title("error against training time, one point per run")
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


def write_pictures(rows: list[dict[str, Any]], output: str) -> list[str]:
    """ablation_arms.png, ablation_minutes.png, and ablation_OPTION.png when arms differ in one numeric
    option only; their names."""
    import matplotlib

    matplotlib.use("Agg")
    scored = [row for row in rows if row["mean_error_degrees"] is not None]
    if not scored:
        return []
    pictures = {"ablation_arms.png": bar_chart(scored)}
    if len(scored) > 1:
        pictures["ablation_minutes.png"] = minutes_chart(scored)
    key = numeric_option(scored)
    if key:
        pictures[f"ablation_{key}.png"] = option_chart(scored, key)
    for name, data in pictures.items():
        write_aside(os.path.join(output, name), data)
    return list(pictures)


def write_results(spec: Spec, output: str) -> list[dict[str, Any]]:
    """ablation.csv, ablation.json, the pictures and ablation.md in DIR; returns the rows."""
    rows = summarize(spec, output)
    write_aside(os.path.join(output, "ablation.csv"), csv_text(rows))
    write_aside(os.path.join(output, "ablation.json"), json_text(spec, rows))
    pictures = write_pictures(rows, output)
    write_aside(os.path.join(output, "ablation.md"), markdown(spec, rows, pictures))
    return rows
