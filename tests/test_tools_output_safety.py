"""rotnet-bench --output rewrites only a file holding its section markers."""

from __future__ import annotations

from click.testing import CliRunner

from tools import bench


def _fake_benchmark(monkeypatch) -> None:
    monkeypatch.setattr(bench, "load", lambda name: lambda quick: "figures")


def test_bench_leaves_a_users_notes_as_they_were(tmp_path, monkeypatch) -> None:
    _fake_benchmark(monkeypatch)
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    name = sorted(bench.BENCHMARKS)[0]
    result = CliRunner().invoke(bench.main, [name, "--output", str(notes)])
    assert result.exit_code == 1 and "section markers" in result.output
    assert notes.read_text() == "my notes\n"


def test_bench_refuses_a_symlink_and_rewrites_its_own_file(tmp_path, monkeypatch) -> None:
    _fake_benchmark(monkeypatch)
    name = sorted(bench.BENCHMARKS)[0]
    target = tmp_path / "target.md"
    target.write_text("theirs\n")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    assert CliRunner().invoke(bench.main, [name, "--output", str(link)]).exit_code == 1
    assert target.read_text() == "theirs\n"
    own = tmp_path / "bench.md"
    assert CliRunner().invoke(bench.main, [name, "--output", str(own)]).exit_code == 0
    assert CliRunner().invoke(bench.main, [name, "--output", str(own)]).exit_code == 0
    assert own.read_text().count(bench._markers(name)[0]) == 1
