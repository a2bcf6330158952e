"""rotnet-bench rewrites only the sections it ran and keeps the others."""

from __future__ import annotations

import pytest

from tools import bench


def test_update_keeps_other_sections_and_registry_order(monkeypatch) -> None:
    monkeypatch.setattr(bench, "BENCHMARKS", {"a": ("m", "first"), "b": ("m", "second")})
    monkeypatch.setattr(bench, "machine_summary", lambda: "test machine")
    first = bench.update_document("", {"b": bench.render_section("b", "B1", "rotnet-bench b", 1.0)})
    second = bench.update_document(first, {"a": bench.render_section("a", "A1", "rotnet-bench a", 2.0)})
    assert second.index("A1") < second.index("B1")
    third = bench.update_document(second, {"b": bench.render_section("b", "B2", "rotnet-bench b", 1.0)})
    assert "B1" not in third and "B2" in third and "A1" in third
    assert third.count("<!-- bench:b:start -->") == 1
    assert "Command: `rotnet-bench a` - machine: test machine" in third


def test_work_dirs_are_removed_only_when_a_benchmark_made_them(tmp_path) -> None:
    from benchmarks.common import WORK_DIR_MARKER, fresh_work_dir

    work = fresh_work_dir(tmp_path / "work")
    (work / "records").mkdir()
    assert fresh_work_dir(work) == work and sorted(p.name for p in work.iterdir()) == [WORK_DIR_MARKER]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(work)
    for path in (foreign, link):
        with pytest.raises(FileExistsError, match="delete it yourself"):
            fresh_work_dir(path)
    assert (foreign / "thesis.tex").read_text() == "keep" and (work / WORK_DIR_MARKER).is_file()


def test_input_windows_start_after_untimed_batches(monkeypatch) -> None:
    # Every window of every contestant begins with warm_up untimed batches, so that what a contestant's
    # buffers filled while the others ran is not counted in its own window.
    from benchmarks import input_pipeline

    monkeypatch.setattr(input_pipeline, "REPEATS", 3)
    drawn: list[str] = []

    def stream(name: str):
        while True:
            drawn.append(name)
            yield None

    rates = input_pipeline.interleaved_rates({"a": stream("a"), "b": stream("b")}, 8, batches=4, warm_up=2)
    assert drawn == (["a"] * 6 + ["b"] * 6) * 3  # (2 untimed + 4 timed) each, in turn, 3 rounds
    assert [len(windows) for windows in rates.values()] == [3, 3]
    assert all(rate > 0 for windows in rates.values() for rate in windows)
