"""The datasets `rotnet-pipeline --dataset NAME` can read: one module per dataset, found by its file name.

Adding a dataset is adding one file here, `pipeline/datasets/NAME.py` (docs/pipeline.md has a
skeleton). Each module owns everything about its dataset and defines:

    DEFAULTS: dict                 image_size, image_format, channels, crop_largest_rect
    check(config) -> list[str]     problems with the options for this dataset (usage errors)
    plan(config, progress_dir)     -> common.SourcePlan: what the source holds (graph-time facts), the
                                   expected images per split and the Beam read transform, which yields
                                   common.SourceImage elements (+ error lines) for the shared transforms

`names()` lists the datasets without importing them (Beam is imported only by `get`).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

# Modules of this package that are not datasets.
_SHARED_MODULES = ("common",)


def names() -> tuple[str, ...]:
    """Every dataset name, sorted (the module files of this package)."""
    return tuple(
        sorted(
            module.name
            for module in pkgutil.iter_modules(__path__)
            if not module.name.startswith("_") and module.name not in _SHARED_MODULES
        )
    )


def get(name: str) -> ModuleType:
    """The module of dataset `name`; ValueError listing the datasets for an unknown name."""
    if name not in names():
        raise ValueError(f"dataset {name!r} is not one of {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")
