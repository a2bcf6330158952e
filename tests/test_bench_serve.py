"""rotnet-bench serve's table and every benchmark's load verdict (no servers: the figures are given)."""

from __future__ import annotations

from benchmarks import common, serve


def test_serve_table_reports_each_setting_and_the_batching_ratio(monkeypatch) -> None:
    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    results = {
        (mode, clients): {
            "rates": [rate, rate * 1.1],
            "latencies": [0.001 * clients] * 99 + [0.05],
            "images_per_call": 8.0 if mode == "on" and clients == 16 else 1.0,
        }
        for mode, clients, rate in (
            ("on", 1, 100.0),
            ("off", 1, 100.0),
            ("on", 16, 600.0),
            ("off", 16, 200.0),
        )
    }
    text = serve.render({"mnist-cnn-bn": (results, "28 px PNG")}, 2, 1.0, (0.5, 1.0), ("up 1", "up 2"))
    assert "| mnist-cnn-bn (28 px PNG) | 16 | on | 630 (600-660) | 16.0 |" in text
    assert text.count("| mnist-cnn-bn") == 4
    assert "target >= 2x): mnist-cnn-bn 3.0x." in text
    assert "close to idle" in text


def test_load_verdict_says_plainly_when_figures_cannot_be_trusted(monkeypatch) -> None:
    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    # The end load includes the benchmark's own processes (up to every core): 3.4 - 2 = 1.4 is others'.
    assert "can be trusted" in common.load_verdict(0.2, 2.9)
    assert "ratios" in common.load_verdict(1.2, 3.4)
    assert common.load_verdict(3.0, 9.5).startswith(
        "NOT an idle machine: other users' load reached about 7.5"
    )
