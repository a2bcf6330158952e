"""The datasets `rotnet-pipeline --dataset NAME` can read: one module per dataset.

Adding a dataset is adding one file, `pipeline/datasets/NAME.py` (found by its file name), or a module
anywhere plus its registry line, `datasets.register("NAME", "package.module")` (docs/pipeline.md has a
skeleton; tests/dataset_squares.py is one). Each module owns everything about its dataset and defines:

    DEFAULTS: dict                 image_size, image_format, channels, crop_largest_rect
    SETTINGS: tuple[Setting, ...]  its own settings: PipelineConfig.dataset_settings keys, the manifest's
                                   config keys and rotnet-pipeline options (--mnist-dir, --input, ...)
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
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# What a Setting's `location` may be: a directory, or a directory / file / glob (local or gs://).
LOCATION_KINDS = ("directory", "pattern")


@dataclass(frozen=True)
class Setting:
    """One setting only its dataset has: a key of `PipelineConfig.dataset_settings` (and of the
    manifest's config, for the evaluation tools) and the rotnet-pipeline option that sets it.

    `location`: the setting names what the job reads (LOCATION_KINDS): the CLI checks that a local one
    exists, a run refuses to write its records inside it, and a runner whose workers do not see this
    machine needs it on gs://. `launcher_only`: read by this process only (never gs://); such a runner
    refuses it with `remote_hint`. `parse`: turns the option's value into the setting (ValueError with
    a message: a usage error).
    """

    name: str  # e.g. "mnist_dir": the config and manifest key
    flag: str  # e.g. "--mnist-dir"
    help: str
    default: Any = None  # the value when the option is not given (a tuple for `multiple`)
    metavar: str | None = None
    multiple: bool = False  # repeatable option: the setting is a tuple of its values
    envvar: str | None = None
    type: type | None = None  # int, float or str (None: str)
    location: str | None = None  # None or one of LOCATION_KINDS
    launcher_only: bool = False
    remote_hint: str = ""
    parse: Callable[[str], Any] | None = None


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


def settings(name: str) -> tuple[Setting, ...]:
    """The settings of dataset `name` (its module's SETTINGS; none declared: none)."""
    return tuple(getattr(get(name), "SETTINGS", ()))


def get(name: str) -> ModuleType:
    """The module of dataset `name`; ValueError listing the datasets for an unknown name."""
    if name not in names():
        raise ValueError(f"dataset {name!r} is not one of {', '.join(names())}")
    return importlib.import_module(_REGISTERED.get(name, f"{__name__}.{name}"))
