"""The cluster path's files (issue 19): the Flink job-server image docs/pipeline.md names is one Beam
2.77 accepts, the Dockerfile's image tag comes from schemas/version.py, and .dockerignore keeps the
virtual environment, data, caches and git history out of the build context, but not what it copies.

    .venv/bin/python -m pytest tests/test_cluster_files.py -q
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys

import apache_beam
import pytest
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions

from schemas.version import PACKAGE_VERSION
from tests.conftest import REPO_ROOT


def flink_version_accepted(version: str) -> bool:
    try:
        options = PipelineOptions(["--flink_version", version]).view_as(FlinkRunnerOptions)
        return options.flink_version == version
    except SystemExit:  # argparse's "invalid choice"
        return False


def test_the_flink_example_uses_a_version_beam_accepts() -> None:
    text = (REPO_ROOT / "docs" / "pipeline.md").read_text()
    images = re.findall(r"apache/beam_flink([0-9.]+)_job_server:(\S+)", text)
    assert images, "docs/pipeline.md names no Flink job server image"
    for flink, beam in images:
        assert flink_version_accepted(flink), flink
        assert beam == apache_beam.__version__
    assert not flink_version_accepted("1.18")  # what the example used to name


def test_the_dockerfile_tags_images_with_the_package_version() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert not re.search(r"worker:\d", text), "a literal version tag: it goes stale"
    tags = re.findall(r"rotnet/worker:(\S+?)\"", text)
    assert tags and set(tags) == {"$VERSION"}
    [command] = re.findall(r"VERSION=\$\(python3 -c '([^']+)'\)", text)
    done = subprocess.run(
        [sys.executable, "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == PACKAGE_VERSION


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = path.rstrip("/").split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        or fnmatch.fnmatch(parts[-1], pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix in prefixes
    )


@pytest.mark.parametrize("path", [".venv", ".git", "data", "data/records", ".pytest_cache", ".ruff_cache",
                                  ".hypothesis", "pipeline/__pycache__", "trainer/x.pyc"])  # fmt: skip
def test_dockerignore_leaves_out(path: str) -> None:
    assert ignored(path, dockerignore_patterns())


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    patterns = dockerignore_patterns()
    sources = []
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert "pipeline/" in sources and "scripts/install.sh" in sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not ignored(source, patterns), source
