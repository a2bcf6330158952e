"""rotnet-pipeline deletes only what it can prove it wrote, and one run at a time writes a directory.

Issue 10, findings 1 (glob characters in paths), 2 (pattern cleanup, `/` and `~`), 4 (two writers),
8 (an --output-dir that is a file), and the "done when": a user's files next to, inside or named like
the output are byte-identical after any run, with or without --overwrite (`tree_digest`: SHA-256 of
every file, every link target, before and after).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import schemas
from pipeline import run_ledger
from schemas import output_rules as output_lock
from tests.conftest import REPO_ROOT
from tests.factories import write_records_dir
from tests.helpers import count_records
from tests.hostile_inputs import small_jpeg, tree_digest
from tests.pipeline_helpers import LOCAL_ONE_WORKER, read_records, run_cli

pytestmark = pytest.mark.slow


def photos(folder: Path, names: tuple[str, ...] = ("a.jpg", "b.jpg")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        (folder / name).write_bytes(small_jpeg(seed))
    return folder


def images_run(input_dir: Path | str, output_dir: Path | str, *extra: str):
    return run_cli(
        "--dataset", "images", "--input", str(input_dir), "--output-dir", str(output_dir),
        "--angles", "0,90", "--image-size", "16", "--num-shards", "1", *extra, *LOCAL_ONE_WORKER,
    )  # fmt: skip


def one_error_line(output: str) -> str:
    """The single 'Error: ...' line of a refused command (and no traceback)."""
    assert "Traceback" not in output, output
    [line] = [line for line in output.splitlines() if line.startswith("Error:")]
    return line


def verified_ids(records: Path) -> set[str]:
    """Image ids of a finished directory whose every shard exists with its size and passes its CRCs."""
    info = schemas.load_manifest(str(records))
    for split in info.splits.values():
        for shard in split.shards:
            path = records / shard.name
            assert path.stat().st_size == shard.num_bytes, shard.name
            assert count_records(str(path), verify=True) == shard.num_records, shard.name
    return {record.image_id for record in read_records(records)}


def test_glob_characters_in_input_and_output_paths_are_literal(tmp_path: Path) -> None:
    """Finding 1: --output-dir 'od/ds[1]' deleted od/ds1's shards; --input 'photos[2020]' was a glob."""
    write_records_dir(tmp_path / "od" / "ds1")  # a finished dataset the glob `ds[1]` would match
    photos(tmp_path / "photos[2020]", ("a.jpg", "b.jpg"))
    photos(tmp_path / "photos2", ("matched_by_the_glob.jpg",))  # `photos[2020]` as a glob matches it
    before = {name: tree_digest(tmp_path / name) for name in ("od", "photos2", "photos[2020]")}
    output = tmp_path / "od" / "ds[1]"
    result = images_run(tmp_path / "photos[2020]", output)
    assert result.exit_code == 0, result.output
    assert verified_ids(output) == {"a.jpg", "b.jpg"}
    after_od = tree_digest(tmp_path / "od")
    assert {k: v for k, v in after_od.items() if not k.startswith("ds[1]")} == before["od"]
    assert tree_digest(tmp_path / "photos2") == before["photos2"]
    assert tree_digest(tmp_path / "photos[2020]") == before["photos[2020]"]


def user_look_alikes(directory: Path) -> None:
    """Files a user may keep that match the names rotnet used to clean by pattern (none planned)."""
    (directory / "beam-temp-thesis").mkdir(parents=True)
    (directory / "beam-temp-thesis" / "chapter1.tex").write_text("\\chapter{One}")
    (directory / ".rotnet-progress-notes").mkdir()
    (directory / ".rotnet-progress-notes" / "todo.txt").write_text("finish chapter 2")
    (directory / ".rotnet-tmp-mine").mkdir()
    (directory / ".rotnet-tmp-mine" / "keep.txt").write_text("a user's temp dir")
    (directory / ".rotnet-stats-budget.json").write_text('{"spent": 3}')
    (directory / "train-00007-of-00009.tfrecord").write_bytes(b"someone else's shard")
    (directory / "errors-00001-of-00002.jsonl").write_text('{"mine": true}\n')
    (directory / "sub").mkdir()
    (directory / "sub" / "train-00000-of-00001.tfrecord").write_bytes(b"a shard name, in a subdirectory")
    (directory / "notes.txt").write_text("next to the records")


def test_a_directory_that_is_not_rotnet_s_is_refused_and_with_overwrite_left_identical(
    tmp_path: Path,
) -> None:
    """Finding 2: without a manifest, a run deleted every file matching its name patterns."""
    inputs = photos(tmp_path / "in")
    output = tmp_path / "out"
    user_look_alikes(output)
    (output / "train-00000-of-00001.tfrecord").write_bytes(b"a user's file with a planned shard name")
    before = tree_digest(output)

    refused = images_run(inputs, output)
    assert refused.exit_code == 2, refused.output
    line = one_error_line(refused.output)
    assert "holds no rotnet manifest or run ledger" in line and "--overwrite" in line, line
    assert "notes.txt" in line, "says what is there"
    assert tree_digest(output) == before

    colliding = images_run(inputs, output, "--overwrite")
    assert colliding.exit_code == 2, colliding.output
    line = one_error_line(colliding.output)
    assert "train-00000-of-00001.tfrecord" in line and "not rotnet's" in line, line
    assert tree_digest(output) == before

    (output / "train-00000-of-00001.tfrecord").unlink()
    before = tree_digest(output)
    written = images_run(inputs, output, "--overwrite")
    assert written.exit_code == 0, written.output
    assert verified_ids(output) == {"a.jpg", "b.jpg"}
    after = tree_digest(output)
    assert {name: after[name] for name in before} == before, "every user file byte-identical"
    added = set(after) - set(before)
    assert added == _new_names(output), "only the new dataset's files; no ledger, lock or temporary file left"
    assert {"dataset_info.json", "errors-00000-of-00001.jsonl", "train-00000-of-00001.tfrecord"} <= added


def test_overwrite_replaces_only_the_files_the_old_manifest_names(tmp_path: Path) -> None:
    """Done when: --overwrite on a finished dataset removes its own files, nothing of the user's."""
    output = tmp_path / "out"
    old = write_records_dir(output, num_shards=3)  # train-0000{0,1,2}-of-00003, validation-...
    user_look_alikes(output)
    (tmp_path / "neighbour").mkdir()
    write_records_dir(tmp_path / "neighbour" / "records")
    user_before = {k: v for k, v in tree_digest(output).items() if not _is_old_dataset(k, old)}
    neighbour_before = tree_digest(tmp_path / "neighbour")

    result = images_run(photos(tmp_path / "in"), output, "--overwrite")
    assert result.exit_code == 0, result.output
    assert verified_ids(output) == {"a.jpg", "b.jpg"}
    after = tree_digest(output)
    assert {name: after[name] for name in user_before} == user_before
    assert tree_digest(tmp_path / "neighbour") == neighbour_before
    stale = [name for name in after if _is_old_dataset(name, old) and name not in _new_names(output)]
    assert stale == [], "the old dataset's shards are gone"


def _is_old_dataset(name: str, info: schemas.DatasetInfo) -> bool:
    return name == schemas.MANIFEST_NAME or any(
        name == shard.name for split in info.splits.values() for shard in split.shards
    )


def _new_names(output: Path) -> set[str]:
    info = schemas.load_manifest(str(output))
    return {schemas.MANIFEST_NAME, *info.error_files} | {
        shard.name for split in info.splits.values() for shard in split.shards
    }


def test_a_killed_run_s_leftovers_are_removed_by_its_ledger_and_nothing_else(tmp_path: Path) -> None:
    """What a killed run left is removed because its ledger names it, never because of its name."""
    output = tmp_path / "out"
    output.mkdir()
    ledger = run_ledger.RunLedger.new(
        "killed0run01", ["train-00000-of-00001.tfrecord", "errors-00000-of-00001.jsonl"], local_progress=True
    )
    (output / run_ledger.LEDGER_NAME).write_text(ledger.to_json())
    (output / ledger.temp_dir).mkdir()
    (output / ledger.temp_dir / "train-00000-of-00001.tfrecord").write_bytes(b"half a shard")
    (output / ledger.progress_dir).mkdir()
    (output / ledger.progress_dir / "counts.json").write_text("{}")
    (output / ledger.temp_dir / "stats.json").write_text("[]")
    (output / "errors-00000-of-00001.jsonl").write_text("")
    user_look_alikes(output)
    user_before = tree_digest(output)
    for name in [*ledger.names, run_ledger.LEDGER_NAME]:
        user_before = {k: v for k, v in user_before.items() if k != name and not k.startswith(name + "/")}

    result = images_run(photos(tmp_path / "in"), output)
    assert result.exit_code == 0, result.output
    assert "killed0run01" in result.output, "the unfinished run is reported"
    after = tree_digest(output)
    assert {name: after[name] for name in user_before} == user_before
    assert not (output / ledger.temp_dir).exists() and not (output / ledger.progress_dir).exists()
    assert not (output / run_ledger.LEDGER_NAME).exists() and not (output / output_lock.LOCK_NAME).exists()
    assert verified_ids(output) == {"a.jpg", "b.jpg"}


@pytest.mark.parametrize(
    "where", ["/", "home", "the input", "around the input", "inside the input", "a file"]
)
def test_dangerous_output_dirs_are_refused_in_one_line(tmp_path: Path, monkeypatch, where: str) -> None:
    """Finding 2 (`/` and `~` walked whole trees) and 8 (an --output-dir that is a file: a traceback)."""
    inputs = photos(tmp_path / "home" / "in")
    (tmp_path / "home" / "report.txt").write_text("a file")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    output = {
        "/": "/",
        "home": str(tmp_path / "home"),  # as the shell gives `~` (paths are literal: "~" is a name)
        "the input": str(inputs),
        "around the input": str(tmp_path),
        "inside the input": str(inputs / "records"),
        "a file": str(tmp_path / "home" / "report.txt"),
    }[where]
    before = tree_digest(tmp_path)
    result = images_run(inputs, output)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    expected = {
        "/": "is the root directory",
        "home": "is your home directory",
        "the input": "is the input",
        "around the input": "contains the input",
        "inside the input": "is inside the input",
        "a file": "is a file, not a directory",
    }[where]
    assert expected in line and "--output-dir" in line, line
    assert tree_digest(tmp_path) == before


@pytest.mark.timeout(180)
def test_a_second_writer_is_refused_while_the_first_runs_and_the_surviving_manifest_verifies(
    tmp_path: Path,
) -> None:
    """Finding 4: two runs on one directory; one failed, the other wrote a manifest of missing shards."""
    inputs = photos(tmp_path / "in", tuple(f"p{index}.jpg" for index in range(6)))
    output = tmp_path / "out"
    arguments = [
        "--dataset", "images", "--input", str(inputs), "--output-dir", str(output), "--angles", "0-359:30",
        "--image-size", "32", "--num-shards", "2", "--no-progress", "--direct_num_workers", "1",
    ]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-c", "from pipeline.cli import main; main()", *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (output.is_dir() and any(output.iterdir())):  # the first run has started writing
            assert first.poll() is None, first.stdout.read().decode()
            assert time.monotonic() < deadline, "the first run never started writing"
            time.sleep(0.02)
        second = run_cli(*arguments)
        first_output = first.communicate(timeout=150)[0].decode()
    finally:
        first.kill()
    assert first.returncode == 0, first_output
    assert second.exit_code == 2, second.output
    line = one_error_line(second.output)
    assert f"is being written by pid {first.pid} on host" in line, line
    assert verified_ids(output) == {f"p{index}.jpg" for index in range(6)}
    info = schemas.load_manifest(str(output))
    assert info.num_records == 6 * 12
    assert sorted(p.name for p in output.iterdir()) == sorted(_new_names(output))


def test_an_unreadable_previous_manifest_is_not_trusted_to_name_files(tmp_path: Path) -> None:
    """A damaged dataset_info.json cannot prove which files are rotnet's: refused, nothing deleted."""
    output = tmp_path / "out"
    write_records_dir(output)
    manifest = json.loads((output / schemas.MANIFEST_NAME).read_text())
    manifest["splits"]["train"]["num_records"] = "many"
    (output / schemas.MANIFEST_NAME).write_text(json.dumps(manifest))
    before = tree_digest(output)
    result = images_run(photos(tmp_path / "in"), output, "--overwrite")
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert "splits.train.num_records" in line and "move" in line, line
    assert tree_digest(output) == before


def test_a_directory_at_a_name_the_old_manifest_lists_is_not_removed(tmp_path: Path) -> None:
    """The manifest names files; a user's directory put at such a name is not rotnet's to delete."""
    output = tmp_path / "out"
    write_records_dir(output)
    (output / "train-00000-of-00002.tfrecord").unlink()
    (output / "train-00000-of-00002.tfrecord").mkdir()
    (output / "train-00000-of-00002.tfrecord" / "mine.txt").write_text("a user's file")
    before = tree_digest(output)
    result = images_run(photos(tmp_path / "in"), output, "--overwrite")
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert "train-00000-of-00002.tfrecord is a directory where rotnet wrote a file" in line, line
    assert tree_digest(output) == before


# --- issue 32, item 9: the overlap check for globs, and --max-pixels before Pillow's guard ---------


@pytest.mark.parametrize(
    ("pattern", "directory", "reads_in"),
    [
        ("photos[2]*", "records", False),  # beside the glob's files: nothing overlaps (was refused)
        ("photos[2]*", ".", True),  # holds the glob's fixed part
        ("*.jpg", "records", False),  # a match is a file in ".", never one below records/
        ("*/*.jpg", "records", True),  # records/x.jpg would match
        ("**/*.jpg", "records", True),
        ("in/*.jpg", "in/records", False),
        ("in/*/*.jpg", "in/records", True),
        ("in/**", "in/records", True),
        ("in/*.jpg", "in", True),
        ("a*/b/*.jpg", "abc/c", False),
        ("a*/b/*.jpg", "abc/b", True),
    ],
)
def test_a_glob_reaches_the_output_only_where_its_names_can_match(
    tmp_path: Path, monkeypatch, pattern: str, directory: str, reads_in: bool
) -> None:
    from pipeline.output_dir import glob_reads_in

    monkeypatch.chdir(tmp_path)
    assert glob_reads_in(pattern, directory) is reads_in
    assert glob_reads_in(str(tmp_path / pattern), str(tmp_path / directory)) is reads_in


def test_a_glob_beside_the_output_is_read_and_one_that_reaches_it_is_refused(tmp_path: Path) -> None:
    """`--input 'photos[2]*'`, whose fixed part is the output's parent, was refused as "inside the
    input" although nothing overlaps."""
    photos(tmp_path, ("photos2.jpg", "photos2b.jpg", "photos3.jpg"))
    result = images_run(f"{tmp_path}/photos[2]*", tmp_path / "records")
    assert result.exit_code == 0, result.output
    assert verified_ids(tmp_path / "records") == {"photos2.jpg", "photos2b.jpg"}
    before = tree_digest(tmp_path)
    refused = images_run(f"{tmp_path}/*/*.jpg", tmp_path / "more")
    assert refused.exit_code == 2, refused.output
    assert "could hold files the input" in one_error_line(refused.output)
    assert tree_digest(tmp_path) == before


def test_max_pixels_speaks_before_pillows_guard(tmp_path: Path) -> None:
    """A 100-megapixel PNG was refused by Pillow's DecompressionBomb guard (its message, its 89.5 M
    limit), before --max-pixels; a raised --max-pixels could not let it through."""
    import io

    from pipeline import codec
    from tests.pipeline_helpers import bomb_png, error_entries

    header = bomb_png(10_000, 10_000)  # 100,000,000 pixels claimed, 60 bytes
    with pytest.raises(
        codec.BadImageError, match=r"10000x10000 = 100,000,000 pixels, over the limit of 64,000,000"
    ):
        codec.check_image_header(io.BytesIO(header))
    assert codec.check_image_header(io.BytesIO(header), max_pixels=200_000_000) == (10_000, 10_000)
    inputs = photos(tmp_path / "in", ("good.jpg",))
    (inputs / "huge.png").write_bytes(header)
    result = images_run(inputs, tmp_path / "records", "--max-error-fraction", "1")
    assert result.exit_code == 0, result.output
    [entry] = error_entries(tmp_path / "records")
    assert "over the limit of 64,000,000" in entry["reason"] and "--max-pixels" in entry["reason"], entry
