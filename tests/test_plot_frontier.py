"""ablations/plot_frontier.py: the frontier table of docs/ablations.md read as the figure's points, and a
write that fails ends in one line with the old figure kept."""

from __future__ import annotations

import errno
import importlib.util
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SPEC = importlib.util.spec_from_file_location("plot_frontier", REPO_ROOT / "ablations" / "plot_frontier.py")
plot_frontier = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(plot_frontier)


def test_the_documented_frontier_table_is_what_the_figure_plots() -> None:
    rows = plot_frontier.frontier_rows((REPO_ROOT / "docs" / "ablations.md").read_text())
    assert len(rows) >= 2
    for row in rows:
        float(row["train min"])
        worst, _, spread = row["worst code °"].partition("±")
        assert float(worst) > 0 and (int(row["seeds"]) > 1) == bool(spread), row


def test_a_failed_write_is_one_line_and_keeps_the_old_figure(tmp_path: Path, monkeypatch) -> None:
    figure = tmp_path / "recipe_frontier.png"
    figure.write_bytes(b"the old figure")
    monkeypatch.setattr(plot_frontier, "FIGURE", figure)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plot_frontier.output_rules, "aside", full_disk)
    with pytest.raises(SystemExit) as stopped:
        plot_frontier.main()
    message = str(stopped.value)
    assert "No space left on device" in message and "old figure is kept" in message and "\n" not in message
    assert figure.read_bytes() == b"the old figure"


def test_a_missing_table_is_one_line() -> None:
    with pytest.raises(SystemExit, match="no frontier table"):
        plot_frontier.frontier_rows("# no table here\n")
