"""Symlinks inside --input that leave the input root (`ln -s / root`) or loop back above it (`..`) are
reported and not followed; the plan's and the summary's counts agree (issue 17, item 7)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pipeline import inputs
from tests.hostile_inputs import small_jpeg, tree_digest
from tests.pipeline_helpers import LOCAL_ONE_WORKER, read_records, run_cli


def _input_with_links(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "album").mkdir(parents=True)
    (root / "a.jpg").write_bytes(small_jpeg(1))
    (root / "album" / "b.jpg").write_bytes(small_jpeg(2))
    (root / "notes.txt").write_text("not an image")
    (tmp_path / "beside.jpg").write_bytes(small_jpeg(3))  # in the parent: must not be read
    os.symlink("/", root / "root")
    os.symlink("..", root / "album" / "up")  # the input itself: read once already
    os.symlink("../..", root / "album" / "upup")  # above the input
    os.symlink("album", root / "album_again")  # inside: read once, reported
    return root


@pytest.mark.timeout(60)
def test_links_leaving_the_input_are_reported_not_followed(tmp_path: Path) -> None:
    root = _input_with_links(tmp_path)
    walked = list(inputs.walk_directory(str(root)))
    files = sorted(entry.relative for entry in walked if entry.problem is None)
    assert files == ["a.jpg", "album/b.jpg", "notes.txt"]
    problems = {entry.relative: entry.problem for entry in walked if entry.problem}
    assert set(problems) == {"root", "album/up", "album/upup", "album_again"}
    assert "above the input (a loop back): not followed" in problems["root"]
    assert "above the input (a loop back): not followed" in problems["album/upup"]
    assert "already read" in problems["album/up"] and "already read" in problems["album_again"]
    assert all(inputs.is_skipped_link(problem) for problem in problems.values())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_pipeline_reads_only_the_input_and_its_counts_agree(tmp_path: Path) -> None:
    root = _input_with_links(tmp_path)
    before = tree_digest(root)
    output = tmp_path / "records"
    result = run_cli(
        "--dataset", "images", "--input", str(root), "--output-dir", str(output),
        "--angles", "0,90", "--image-size", "16", *LOCAL_ONE_WORKER,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {record.image_id for record in read_records(output)} == {"a.jpg", "album/b.jpg"}
    planned = re.search(r"images: 2 image file\(s\) under .*, (\d+) other file\(s\) skipped", result.output)
    summary = re.search(r"non-image files skipped (\d+)", result.output)
    assert planned and summary, result.output
    assert planned.group(1) == summary.group(1) == "5"  # notes.txt and the 4 links
    assert "not followed" in result.output
    assert tree_digest(root) == before
