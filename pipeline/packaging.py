"""The rotnet package for remote Beam workers: an sdist built once per run, outside the checkout.

Beam's stager turns `--setup_file DIR/pyproject.toml` into an sdist by running, in DIR,

    python -m build --no-isolation --sdist --outdir TEMP DIR

(apache_beam/runners/portability/stager.py, Stager._build_setup_package), which writes
`rotnet.egg-info/` into DIR, and Beam may build it more than once per job. `build_sdist` runs the same
command on a temporary copy of the package sources, so the checkout is left as it was, and the launcher
passes the one sdist as `--extra_package` (workers `pip install` it, as they would the stager's).
`--no-isolation` (no PyPI at build time) needs `build` and the build system of pyproject.toml
(setuptools>=69, wheel) in this environment: the `gcp` extra installs them.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# What setup.cfg packages ([options.packages.find] include) plus the files its metadata reads.
PACKAGE_DIRS = ("schemas", "pipeline", "trainer", "tools", "benchmarks")
METADATA_FILES = ("setup.cfg", "pyproject.toml", "README.md")
MIN_SETUPTOOLS = (69,)
INSTALL_FIX = "pip install 'rotnet[gcp]' (or: pip install build 'setuptools>=69' wheel)"


class PackagingError(RuntimeError):
    """The sdist cannot be built; the message says why and what to install."""


def build_command(source_dir: str, out_dir: str) -> list[str]:
    """The command Beam's stager runs for --setup_file (see the module doc)."""
    return [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir", out_dir, source_dir]


def missing_build_tools() -> str | None:
    """Why `build_command` cannot work in this environment, or None."""
    if importlib.util.find_spec("build") is None:
        return "the `build` package is not installed"
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return "setuptools is not installed"
    major = tuple(int(part) for part in version.split(".")[:1] if part.isdigit())
    if major < MIN_SETUPTOOLS:
        return f"setuptools {version} is installed, pyproject.toml needs setuptools>=69"
    if importlib.util.find_spec("wheel") is None:
        return "the `wheel` package is not installed"
    return None


def copy_sources(destination: Path, root: Path = REPO_ROOT) -> Path:
    """The files the sdist is made of, copied to `destination` (no caches, no egg-info)."""
    if not (root / "setup.cfg").is_file():
        raise PackagingError(
            f"{root} holds no setup.cfg: rotnet is not installed from a checkout here, so it cannot be "
            "built for the workers; pass --sdk_container_image (the Dockerfile's dataflow target) or "
            "--extra_package rotnet-VERSION.tar.gz"
        )
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGE_DIRS:
        if (root / name).is_dir():
            shutil.copytree(root / name, destination / name, ignore=ignore)
    for name in METADATA_FILES:
        shutil.copy2(root / name, destination / name)
    return destination


def build_sdist(out_dir: str, root: Path = REPO_ROOT) -> str:
    """Build rotnet's sdist into `out_dir` as Beam's stager would, from a temporary copy; its path."""
    problem = missing_build_tools()
    if problem:
        raise PackagingError(f"cannot build rotnet for the workers: {problem}; {INSTALL_FIX}")
    with tempfile.TemporaryDirectory(prefix="rotnet-sdist-src-") as scratch:
        source = copy_sources(Path(scratch) / "rotnet", root)
        done = subprocess.run(
            build_command(str(source), out_dir), cwd=source, capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()
        raise PackagingError(
            "building rotnet for the workers failed (python -m build --sdist): "
            + (output[-1] if output else f"exit {done.returncode}")
        )
    built = sorted(glob.glob(os.path.join(out_dir, "*.tar.gz")))
    if not built:
        raise PackagingError(f"python -m build wrote no .tar.gz into {out_dir}")
    return built[-1]
