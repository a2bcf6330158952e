"""rotnet-bench rewrites only the sections it ran and keeps the others."""

from __future__ import annotations

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
