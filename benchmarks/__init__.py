"""Benchmarks behind `rotnet-bench`: each module has `run(quick: bool) -> str`, returning a Markdown body
for its section of docs/benchmarks.md. Performance targets live here, never in unit tests."""

from __future__ import annotations

import importlib
from collections.abc import Callable

# name -> (module, one-line description); the order is the order of sections in docs/benchmarks.md.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "geometry": ("benchmarks.geometry", "Fast vs reference rotation chain, 224 px JPEG q95, Street View"),
}


def load(name: str) -> Callable[..., str]:
    module_name, _ = BENCHMARKS[name]
    return importlib.import_module(module_name).run
