"""The datasets `rotnet-pipeline --dataset NAME` can read: one module per dataset.

Adding a dataset is adding one file, `pipeline/datasets/NAME.py` (found by its file name), or a module
anywhere plus its registry line, `datasets.register("NAME", "package.module")` (docs/pipeline.md has a
skeleton; tests/dataset_squares.py is one). Each module owns everything about its dataset and defines:

    DEFAULTS: dict                 image_size, image_format, channels, crop_largest_rect
    check(config) -> list[str]     problems with the options for this dataset (usage errors)
    plan(config, progress_dir)     -> common.SourcePlan: what the source holds (graph-time facts), the
                                   expected images per split and the Beam read transform, which yields
                                   common.SourceImage elements (+ error lines) for the shared transforms
    source_images(config, split, source_dir, channels)
                                   -> [(image id, HWC uint8)]: the source images a run with this
                                   manifest config put in `split`, as its records show them before
                                   the turn (the robustness evaluation turns them by other codes)

`names()` lists the datasets without importing them (Beam is imported only by `get`).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

# Modules of this package that are not datasets.
_SHARED_MODULES = ("common",)

# Datasets defined outside this package: name -> importable module path (`register`).
_REGISTERED: dict[str, str] = {}


def register(name: str, module: str) -> None:
    """Make the module at import path `module` the dataset `name` (in this process: a launcher that
    registers it before building the job; workers import the module's transforms by path)."""
    _REGISTERED[name] = module


def names() -> tuple[str, ...]:
    """Every dataset name, sorted (the module files of this package and the registered modules)."""
    found = {
        module.name
        for module in pkgutil.iter_modules(__path__)
        if not module.name.startswith("_") and module.name not in _SHARED_MODULES
    }
    return tuple(sorted(found | set(_REGISTERED)))


def get(name: str) -> ModuleType:
    """The module of dataset `name`; ValueError listing the datasets for an unknown name."""
    if name not in names():
        raise ValueError(f"dataset {name!r} is not one of {', '.join(names())}")
    return importlib.import_module(_REGISTERED.get(name, f"{__name__}.{name}"))
