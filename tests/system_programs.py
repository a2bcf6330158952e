"""Debian programs some tests drive (jpegtran, djpeg, chromium): skipped where missing, except on CI.

scripts/install-system.sh installs them and .ci/run runs it, so on CI (the CI variable set) a missing
program is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_program(name: str, package: str) -> str:
    """The path of `name`; skips the test where it is missing (fails it on CI)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian package {package}; scripts/install-system.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(message + ": on CI, .ci/run must have installed it")
    pytest.skip(message)
