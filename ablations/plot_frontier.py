"""The MNIST recipe's frontier as a figure: worst rotation code's error against training minutes.

    python ablations/plot_frontier.py      # reads docs/ablations.md, writes docs/ablations/recipe_frontier.png

The points are the rows of the frontier table in docs/ablations.md (between `<!-- frontier:start -->`
and `<!-- frontier:end -->`), so the table stays the one place the figures are written; a `±` in the
worst-code cell (several seeds) becomes an error bar; points above TOP_DEGREES are named in the title. The 5.5-degree goal and 30-minute budget of the
recipe (issue 34) are drawn as lines.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from schemas import output_rules  # noqa: E402  (after the path: run as a script from anywhere)

DOCUMENT = REPO_ROOT / "docs" / "ablations.md"
FIGURE = REPO_ROOT / "docs" / "ablations" / "recipe_frontier.png"
GOAL_DEGREES = 5.5
BUDGET_MINUTES = 30
TOP_DEGREES = 9.5  # the y axis ends here; points above are named in the title


def frontier_rows(text: str) -> list[dict[str, str]]:
    """The frontier table's rows as {column: cell}, markdown emphasis removed."""
    match = re.search(r"<!-- frontier:start -->\n(.*?)<!-- frontier:end -->", text, re.S)
    if match is None:
        raise SystemExit(f"no frontier table (<!-- frontier:start --> ... end) in {DOCUMENT}")
    lines = [line.strip().strip("|").split("|") for line in match.group(1).strip().splitlines()]
    header = [cell.strip() for cell in lines[0]]
    return [
        {name: cell.replace("**", "").strip() for name, cell in zip(header, cells, strict=True)}
        for cells in lines[2:]
    ]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frontier_rows(DOCUMENT.read_text())
    figure, axis = plt.subplots(figsize=(13, 5.5))
    off_scale, key = [], []
    for number, row in enumerate(rows, start=1):
        minutes = float(row["train min"])
        worst, _, spread = row["worst code °"].partition("±")
        if float(worst) > TOP_DEGREES:  # the shortest runs: named in the title instead of squashing the rest
            off_scale.append(f"{row['point']}: {float(worst):.1f}°")
            continue
        several = int(row["seeds"]) > 1
        axis.errorbar(
            minutes,
            float(worst),
            yerr=float(spread) if spread else None,
            fmt="s" if several else "o",
            color="tab:red" if several else "tab:blue",
            capsize=4,
        )
        # Numbers beside the points, names in the key on the right: points of similar minutes and error
        # sit too close together for their names.
        axis.annotate(
            str(number), (minutes, float(worst)), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
        key.append(f"{number}  {row['point']} ({float(worst):.2f}°)")
    axis.axhline(
        GOAL_DEGREES, color="tab:green", linestyle="--", label=f"goal: {GOAL_DEGREES}° under every code"
    )
    axis.axvline(
        BUDGET_MINUTES,
        color="grey",
        linestyle=":",
        label=f"{BUDGET_MINUTES} min (pipeline + training + evaluation)",
    )
    axis.set_ylim(5.0, TOP_DEGREES)
    axis.set_xlabel("training minutes, 2 CPU cores (earlier points: the step speed of their day)")
    axis.set_ylabel("worst rotation code's mean error (degrees)")
    title = "MNIST recipe frontier (blue: one seed; red: mean ± sd of two seeds)"
    if off_scale:
        title += "\noff the scale: " + "; ".join(off_scale)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="upper right", fontsize=8)
    figure.text(0.665, 0.5, "\n".join(key), fontsize=8, va="center", family="monospace")
    figure.tight_layout(rect=(0, 0, 0.66, 1))
    try:  # written aside and renamed: a link at the name is replaced, never written through
        with output_rules.aside(FIGURE, suffix=".png") as handle:
            figure.savefig(handle, format="png", dpi=100)
    except OSError as error:  # a full disk, a read-only folder: one line, the old figure kept
        raise SystemExit(
            f"cannot write {FIGURE} ({error.strerror or error}); the old figure is kept: free space or fix it, then rerun"
        ) from None
    finally:
        plt.close(figure)
    print(f"wrote {FIGURE.relative_to(REPO_ROOT)} ({len(rows)} points)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted (Ctrl-C): the old figure is kept") from None
