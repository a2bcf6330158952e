"""The rotnet package remote workers install: built as Beam's stager builds --setup_file, from
a temporary copy (the checkout is left as it was), complete, and installable without an index.

    .venv/bin/python -m pytest tests/test_packaging.py -q -n 1
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline import packaging
from schemas.version import PACKAGE_VERSION
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def members(sdist: str) -> set[str]:
    with tarfile.open(sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def checkout_entries() -> set[str]:
    """Everything in the checkout's top level and package directories (what a build could leave)."""
    found = {path.name for path in REPO_ROOT.iterdir()}
    for name in packaging.PACKAGE_DIRS:
        found |= {
            f"{name}/{path.name}" for path in (REPO_ROOT / name).iterdir() if path.name != "__pycache__"
        }
    return found


def test_sdist_is_built_as_beams_stager_builds_it_and_installs(tmp_path: Path) -> None:
    from apache_beam.runners.portability.stager import Stager

    assert packaging.missing_build_tools() is None  # the gcp extra brings build, setuptools>=69, wheel
    before = checkout_entries()
    ours = packaging.build_sdist(str(tmp_path / "ours"))
    assert checkout_entries() == before  # no rotnet.egg-info/, build/ or dist/ left behind
    assert Path(ours).name == f"rotnet-{PACKAGE_VERSION}.tar.gz"

    # Beam's own stager code path for --setup_file, on another copy of the same sources.
    copy = packaging.copy_sources(tmp_path / "copy")
    (tmp_path / "beams").mkdir()
    beams = Stager._build_setup_package(str(copy / "pyproject.toml"), str(tmp_path / "beams"))
    assert members(ours) == members(beams)
    tracked = subprocess.run(
        ["git", "ls-files", *packaging.PACKAGE_DIRS],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    modules = {name for name in tracked if name.endswith(".py")}
    assert modules and modules <= members(ours), sorted(modules - members(ours))[:5]

    # What a worker does with it (no index: every dependency is already here).
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(target), ours],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (target / "pipeline" / "transforms.py").is_file() and (target / "schemas" / "verify.py").is_file()
    [entry_points] = target.glob("rotnet-*.dist-info/entry_points.txt")
    assert "rotnet-pipeline = pipeline.cli:main" in entry_points.read_text()


def test_missing_build_tools_are_one_line_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(packaging.importlib.metadata, "version", lambda name: "65.5.0")
    with pytest.raises(packaging.PackagingError) as raised:
        packaging.build_sdist(str(tmp_path))
    message = str(raised.value)
    assert "setuptools 65.5.0 is installed, pyproject.toml needs setuptools>=69" in message
    assert "pip install 'rotnet[gcp]'" in message and "\n" not in message
    assert not list(tmp_path.iterdir())
