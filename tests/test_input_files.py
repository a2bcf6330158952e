"""pipeline.inputs: only regular files are read, never more than the cap, and every entry is accounted for.

Issue 10, findings 5, 6 and 8 (the reader's part): a FIFO, a symlink to /dev/zero, a symlink loop, a
dangling link and a 1.5 GB (sparse) file named .jpg are refused with a reason, fast and without reading
them; a non-UTF-8 name is printable; symlinked directories are followed once.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest

from pipeline import codec, inputs
from tests.hostile_inputs import NON_UTF8_NAME, NON_UTF8_PRINTED, plant_hostile_inputs, small_jpeg
from tests.pipeline_helpers import bomb_png


@pytest.mark.timeout(30)  # a FIFO that is opened blocks forever: this must fail, not hang CI
def test_every_hostile_entry_is_read_or_refused_with_its_reason(tmp_path: Path) -> None:
    planted = plant_hostile_inputs(tmp_path / "in", tmp_path / "outside")
    started = time.perf_counter()
    tracemalloc.start()
    try:
        walked = list(inputs.walk_directory(str(tmp_path / "in")))
        outcomes = {}
        for entry in walked:
            name = inputs.printable_name(entry.relative)
            if entry.problem:
                outcomes[name] = ("walk", entry.problem)
                continue
            try:
                data = inputs.read_input_file(entry.path, max_pixels=codec.DEFAULT_MAX_PIXELS)
            except codec.BadImageError as error:
                outcomes[name] = ("refused", str(error))
            else:
                outcomes[name] = ("read", data)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert sorted(outcomes) == sorted(item.relative for item in planted), "every entry once, nothing more"
    for item in planted:
        kind, value = outcomes[item.relative]
        if item.walk_problem:
            assert kind == "walk" and item.walk_problem in value, (item.relative, value)
        elif item.reason:
            assert kind == "refused" and item.reason in value, (item.relative, value)
        else:
            assert kind == "read" and codec.decode_source_image(value).shape == (32, 40, 3), item.relative
    assert outcomes["good.jpg"][1] == outcomes["link_to_good.jpg"][1] == small_jpeg(1)
    assert "1,500,000,000 bytes, over the limit of 268,435,456" in outcomes["huge.jpg"][1]
    # Neither the 1.5 GB file nor /dev/zero was read: far less memory than either, and quick.
    assert peak_bytes < 8 * 2**20, f"peak {peak_bytes:,} bytes traced"
    assert elapsed < 10, f"{elapsed:.1f} s"


def test_size_cap_is_checked_before_reading_and_while_reading(tmp_path: Path) -> None:
    exact = tmp_path / "exact.jpg"
    exact.write_bytes(b"x" * 1000)
    assert inputs.read_input_file(str(exact), max_bytes=1000) == b"x" * 1000
    with pytest.raises(
        inputs.InputFileError, match=r"1,000 bytes, over the limit of 999 \(raise --max-file-bytes"
    ):
        inputs.read_input_file(str(exact), max_bytes=999)
    # A stream that turns out longer than listed (a file that grows while it is read) stops at the cap.
    with pytest.raises(inputs.InputFileError, match="grew past the limit of 10 bytes while it was read"):
        inputs.read_bounded(io.BytesIO(b"y" * 11), max_bytes=10, size=5)
    assert inputs.read_bounded(io.BytesIO(b"y" * 10), max_bytes=10, size=10) == b"y" * 10
    with pytest.raises(inputs.InputFileError, match="over the limit"):
        inputs.read_bounded(io.BytesIO(b""), max_bytes=10, size=11)


def test_pixel_cap_is_checked_from_the_header_before_the_rest_is_read(tmp_path: Path) -> None:
    # A real PNG header claiming 9000 x 8000 = 72 M pixels, followed by 200 MB (sparse) of nothing.
    bomb = tmp_path / "bomb.png"
    with open(bomb, "wb") as handle:
        handle.write(bomb_png(9000, 8000))
        handle.truncate(200 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(
            codec.BadImageError, match=r"9000x8000 = 72,000,000 pixels, over the limit of 64,000,000"
        ):
            inputs.read_input_file(str(bomb), max_pixels=64_000_000)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 4 * 2**20, f"peak {peak_bytes:,} bytes: the file was read, not just its header"
    text = tmp_path / "text.jpg"
    text.write_bytes(b"not an image at all" * 100)
    with pytest.raises(codec.BadImageError, match=r"not an image file \(unknown format\)"):
        inputs.read_input_file(str(text), max_pixels=64_000_000)


def test_directories_sockets_and_devices_are_not_regular_files(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").mkdir()
    with pytest.raises(inputs.InputFileError, match=r"^a directory, not a regular file"):
        inputs.read_input_file(str(tmp_path / "photo.jpg"))
    with pytest.raises(inputs.InputFileError, match=r"^a character device, not a regular file"):
        inputs.read_input_file("/dev/null")
    short = tempfile.mkdtemp(dir="/tmp")  # a socket's path must fit in 108 bytes
    try:
        server = socket.socket(socket.AF_UNIX)
        server.bind(os.path.join(short, "s.jpg"))
        with pytest.raises(inputs.InputFileError, match=r"^a socket, not a regular file"):
            inputs.read_input_file(os.path.join(short, "s.jpg"))
        server.close()
    finally:
        for name in os.listdir(short):
            os.unlink(os.path.join(short, name))
        os.rmdir(short)
    with pytest.raises(inputs.InputFileError, match="disappeared before it was read"):
        inputs.read_input_file(str(tmp_path / "never-there.jpg"))


@pytest.mark.timeout(30)
def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(tmp_path: Path, monkeypatch) -> None:
    fifo = tmp_path / "swapped.jpg"
    os.mkfifo(fifo)
    # lstat said "regular file" (the FIFO came later): the open must not wait for a writer, and the
    # descriptor's own status must refuse it.
    regular = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 10, 0, 0, 0))
    monkeypatch.setattr(inputs, "check_regular_file", lambda path: regular)
    with pytest.raises(inputs.InputFileError, match=r"^a FIFO \(named pipe\), not a regular file"):
        inputs.read_input_file(str(fifo))


def test_non_utf8_names_are_printed_with_backslash_escapes() -> None:
    assert not inputs.is_utf8_name(NON_UTF8_NAME)
    assert inputs.printable_name(NON_UTF8_NAME) == NON_UTF8_PRINTED
    assert inputs.printable_name(b"dir/caf\xe9.jpg") == "dir/" + NON_UTF8_PRINTED
    assert inputs.printable_name("ok/été.jpg") == "ok/été.jpg" and inputs.is_utf8_name("ok/été.jpg")
    json.dumps(inputs.printable_name(NON_UTF8_NAME)).encode("utf-8")  # no surrogates left


def test_walk_reads_each_directory_once_whatever_links_lead_to_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real" / "deep").mkdir(parents=True)
    (root / "real" / "deep" / "a.jpg").write_bytes(b"a")
    os.symlink(root / "real", root / "a_link_first_by_name")  # sorts before "real"
    os.symlink("..", root / "real" / "deep" / "up")  # a cycle
    walked = [(entry.relative, entry.problem) for entry in inputs.walk_directory(str(root))]
    files = [relative for relative, problem in walked if problem is None]
    assert files == ["real/deep/a.jpg"], "the real path wins; the linked copy is not read twice"
    problems = sorted(relative for relative, problem in walked if problem)
    assert problems == ["a_link_first_by_name", "real/deep/up"]
    assert all("already read" in problem for _, problem in walked if problem)


def test_a_path_that_exists_is_literal_and_only_a_missing_one_is_a_glob(tmp_path: Path) -> None:
    bracketed = tmp_path / "photos[2020]"
    bracketed.mkdir()
    (tmp_path / "a*.jpg").write_bytes(b"")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere")
    assert inputs.literal_or_glob(str(bracketed)) == "directory"
    assert inputs.literal_or_glob(str(tmp_path / "a*.jpg")) == "file"
    assert inputs.literal_or_glob(str(tmp_path / "dangling.jpg")) == "file"
    assert inputs.literal_or_glob(str(tmp_path / "b*.jpg")) == "glob"


def test_a_patterns_base_is_the_directory_before_its_first_glob_character() -> None:
    from schemas.paths import pattern_base

    assert pattern_base("/data/photos/2020-*/x?.jpg") == "/data/photos"
    assert pattern_base("photos/[ab]*.jpg") == "photos"
    assert pattern_base("*.jpg") == "."
    assert pattern_base("gs://bucket/dir/part*.zip") == "gs://bucket/dir"
    assert pattern_base("gs://bucket/dir/") == "gs://bucket/dir"
