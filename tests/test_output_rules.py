"""The output rules themselves (schemas/output_rules.py), cheaply: aside then rename, never through a
link, a new name claimed only if free, a tree of files proven ours by their digests, one writer per
directory (the lock), and the pipeline ledger's own rules.

The commands' proofs (two rotnet-pipeline processes on one directory, rotnet-train's backups,
rotnet-correct's outputs, ...) are in tests/test_output_dir_safety.py, tests/test_train_*_safety.py,
tests/test_correct_safety.py and the other tests docs/reliability.md names.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from pipeline import run_ledger
from schemas import output_rules
from schemas.output_rules import LocalLock, LockHeldError, LockHolder


def test_a_second_lock_on_the_same_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = LocalLock(str(tmp_path), run_id="first")
    assert first.acquire() is None
    with pytest.raises(LockHeldError) as raised:
        LocalLock(str(tmp_path), run_id="second").acquire()
    message = str(raised.value)
    assert f"is being written by pid {os.getpid()} on host {socket.gethostname()}" in message
    assert message.endswith("wait for it to finish, or choose another --output-dir")
    first.release()
    assert not (tmp_path / output_rules.LOCK_NAME).exists()
    second = LocalLock(str(tmp_path), run_id="second")
    assert second.acquire() is None, "free again once released"
    second.release()


@pytest.mark.timeout(60)
def test_a_lock_left_by_a_killed_process_is_reported_and_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from schemas.output_rules import LocalLock; "
            "LocalLock(sys.argv[1], run_id='killed').acquire(); print('locked', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(LockHeldError, match=f"being written by pid {holder.pid} "):
            LocalLock(str(tmp_path)).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert json.loads((tmp_path / output_rules.LOCK_NAME).read_text())["run_id"] == "killed", "left behind"
    lock = LocalLock(str(tmp_path), run_id="rerun")
    stale = lock.acquire()
    assert stale is not None and stale.pid == holder.pid and stale.run_id == "killed"
    assert json.loads((tmp_path / output_rules.LOCK_NAME).read_text())["run_id"] == "rerun"
    lock.release()


def test_an_unlocked_lock_file_of_another_host_or_a_live_process_is_not_taken_over(tmp_path: Path) -> None:
    lock_file = tmp_path / output_rules.LOCK_NAME
    lock_file.write_bytes(LockHolder(pid=4242, host="some-other-host").to_bytes())
    with pytest.raises(LockHeldError) as raised:
        LocalLock(str(tmp_path)).acquire()
    assert "was left by pid 4242 on host some-other-host" in str(raised.value)
    assert str(raised.value).endswith(
        f"cannot be checked from this host; if no run is writing {tmp_path}, delete {lock_file} and rerun"
    )
    # This very process, unlocked (e.g. a lock file copied from elsewhere): alive, so not taken over.
    lock_file.write_bytes(LockHolder().to_bytes())
    with pytest.raises(LockHeldError, match="which is still running"):
        LocalLock(str(tmp_path)).acquire()
    lock_file.write_text("my own notes, not a lock")
    with pytest.raises(LockHeldError, match="is not rotnet's lock file: move it away"):
        LocalLock(str(tmp_path)).acquire()
    assert lock_file.read_text() == "my own notes, not a lock"


def test_a_symlink_at_the_lock_name_is_never_written_through(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "out").mkdir()
    os.symlink(target, tmp_path / "out" / output_rules.LOCK_NAME)
    with pytest.raises(LockHeldError, match="is a symlink, not rotnet's lock file"):
        LocalLock(str(tmp_path / "out")).acquire()
    assert target.read_text() == "keep me"


class _FakeBlob:
    """The two GCS calls GcsLock makes, with GCS's documented precondition semantics
    (if_generation_match=0: create only if absent; delete only the named generation)."""

    objects: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def __init__(self, name: str) -> None:
        self.name, self.generation = name, None

    def upload_from_string(self, data: bytes, if_generation_match: int) -> None:
        from google.api_core import exceptions

        assert if_generation_match == 0
        if self.name in self.objects:
            raise exceptions.PreconditionFailed("exists")
        self.generation = int(time.monotonic_ns())
        self.objects[self.name] = (self.generation, data)

    def download_as_bytes(self) -> bytes:
        return self.objects[self.name][1]

    def delete(self, if_generation_match: int) -> None:
        from google.api_core import exceptions

        if self.objects.get(self.name, (None,))[0] != if_generation_match:
            raise exceptions.PreconditionFailed("other generation")
        del self.objects[self.name]


def test_gcs_lock_uses_a_create_only_if_absent_object(monkeypatch) -> None:
    # gcp-storage-emulator ignores ifGenerationMatch (a second create succeeds), so an emulator test
    # would pass whether or not the lock works; this stand-in has GCS's documented semantics.
    monkeypatch.setattr(output_rules.GcsLock, "_blob", lambda self: _FakeBlob(self.object_name))
    _FakeBlob.objects = {}
    first = output_rules.lock_for("gs://bucket/records/mnist", run_id="a")
    assert isinstance(first, output_rules.GcsLock) and first.object_name == "records/mnist/.rotnet-lock"
    first.acquire()
    with pytest.raises(LockHeldError) as raised:
        output_rules.lock_for("gs://bucket/records/mnist/").acquire()
    assert f"pid {os.getpid()}" in str(raised.value)
    assert "run `gcloud storage rm gs://bucket/records/mnist/.rotnet-lock` and rerun" in str(raised.value)
    first.release()
    assert _FakeBlob.objects == {}


def test_ledger_round_trips_and_refuses_names_outside_its_directory() -> None:
    ledger = run_ledger.RunLedger.new("abc123", ["train-00000-of-00001.tfrecord", "dataset_info.json"], True)
    assert ledger.temp_dir == ".rotnet-tmp-abc123" and ledger.progress_dir == ".rotnet-progress-abc123"
    assert ledger.planned_files == ["train-00000-of-00001.tfrecord", "dataset_info.json"]
    assert ledger.names == [*ledger.planned_files, ".rotnet-tmp-abc123", ".rotnet-progress-abc123"]
    assert run_ledger.RunLedger.from_json(ledger.to_json()) == ledger
    for bad in ("../elsewhere", "/etc/passwd", "sub/file", "", ".."):
        data = json.loads(ledger.to_json())
        data["planned_files"] = [bad]
        with pytest.raises(run_ledger.LedgerError, match="names a path outside its directory"):
            run_ledger.RunLedger.from_json(json.dumps(data))
    with pytest.raises(run_ledger.LedgerError, match="is not a rotnet-pipeline run ledger"):
        run_ledger.RunLedger.from_json('{"tool": "something else"}')


# --- Aside, then rename; never through a link -----------------------------------------------------


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_aside_keeps_the_old_file_whole_until_the_new_one_is_complete(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    with output_rules.aside(target) as handle:
        handle.write(b"new, half")
        assert target.read_text() == "old\n"  # a reader sees the old file until the rename
        [temporary] = [name for name in _names(tmp_path) if name != "metrics.json"]
        assert temporary.startswith(output_rules.TEMPORARY_PREFIX)
    assert target.read_text() == "new, half" and _names(tmp_path) == ["metrics.json"]

    class StoppedError(Exception):
        pass

    with pytest.raises(StoppedError), output_rules.aside(target) as handle:
        handle.write(b"cut short")
        raise StoppedError  # a failed write: the temporary goes, the old file stays
    assert target.read_text() == "new, half" and _names(tmp_path) == ["metrics.json"]


def test_a_fixed_token_writes_aside_under_a_relative_path(tmp_path: Path, monkeypatch) -> None:
    """rotnet-ablate's fixed-token temporaries, given a path relative to the working directory (its
    documented commands: --output data/ablations/...): open()'s flags once reached the opener as a
    directory descriptor and every such write failed with EBADF."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study").mkdir()
    output_rules.write_aside(os.path.join("study", "state.json"), "{}\n", token="4242")
    assert (tmp_path / "study" / "state.json").read_text() == "{}\n"
    assert _names(tmp_path / "study") == ["state.json"]


def test_write_aside_replaces_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("the user's\n")
    (tmp_path / "out.txt").symlink_to(theirs)
    output_rules.write_aside(tmp_path / "out.txt", "ours\n")
    assert theirs.read_text() == "the user's\n"
    assert not (tmp_path / "out.txt").is_symlink() and (tmp_path / "out.txt").read_text() == "ours\n"
    (tmp_path / "moved").write_text("moved\n")
    (tmp_path / "link").symlink_to(theirs)
    output_rules.move_into_place(tmp_path / "moved", tmp_path / "link")
    assert theirs.read_text() == "the user's\n" and (tmp_path / "link").read_text() == "moved\n"


def test_written_files_get_the_mode_open_would_give_or_the_one_asked(tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        output_rules.write_aside(tmp_path / "a", b"x")
        output_rules.write_aside(tmp_path / "b", b"x", mode=0o600)
    finally:
        os.umask(umask)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("taken", ["file", "link", "directory"])
def test_a_new_name_is_claimed_only_if_nothing_is_there(tmp_path: Path, taken: str) -> None:
    output_rules.write_aside(tmp_path / "free.png", b"png", new=True)
    assert (tmp_path / "free.png").read_bytes() == b"png"
    target, theirs = tmp_path / "sheet.png", tmp_path / "theirs"
    theirs.write_text("the user's\n")
    {"file": lambda: target.write_text("a user's file\n"), "link": lambda: target.symlink_to(theirs),
     "directory": target.mkdir}[taken]()  # fmt: skip
    with pytest.raises(FileExistsError):
        output_rules.write_aside(target, b"png", new=True, suffix=".png")
    assert theirs.read_text() == "the user's\n"
    assert taken != "file" or target.read_text() == "a user's file\n"
    assert _names(tmp_path) == ["free.png", "sheet.png", "theirs"]  # no temporary left


def test_links_and_non_files_are_found_before_a_writer_follows_them(tmp_path: Path) -> None:
    (tmp_path / "history.csv").symlink_to(tmp_path / "elsewhere.csv")
    (tmp_path / "model.keras").write_bytes(b"model")
    os.mkfifo(tmp_path / "fifo")
    found = output_rules.links_among(str(tmp_path), ["history.csv", "model.keras", "missing"])
    assert found == [str(tmp_path / "history.csv")]
    assert output_rules.sha256_of(tmp_path / "model.keras") == hashlib.sha256(b"model").hexdigest()
    for name in ("history.csv", "fifo", "missing"):  # never followed, never opened blocking
        assert output_rules.sha256_of(tmp_path / name) is None


# --- A tree of files proven ours by their digests -------------------------------------------------


def test_an_output_tree_replaces_only_its_own_unchanged_files(tmp_path: Path) -> None:
    root = tmp_path / "out"
    with output_rules.OutputTree(root, "rotnet-test", ".rotnet-test.json") as tree:
        tree.write("a/one.txt", b"1")
        tree.write("two.txt", b"2")
        tree.save_ledger()
    (root / "two.txt").write_text("changed by the user")
    (root / "b").symlink_to(tmp_path)
    with output_rules.OutputTree(root, "rotnet-test", ".rotnet-test.json") as tree:
        tree.write("a/one.txt", b"1 again")  # its own, unchanged since: replaced
        with pytest.raises(output_rules.OutputRefusedError, match="was not written by rotnet-test"):
            tree.write("two.txt", b"2 again")
        with pytest.raises(output_rules.OutputRefusedError, match="is a symlink"):
            tree.write("b/three.txt", b"3")  # never through a link below the root
    assert (root / "a" / "one.txt").read_bytes() == b"1 again"
    assert (root / "two.txt").read_text() == "changed by the user" and not (tmp_path / "three.txt").exists()
    assert not [path for path in root.rglob(".rotnet-tmp-*")]


# --- One writer per directory ---------------------------------------------------------------------


def test_who_holds_a_lock_is_seen_without_taking_it(tmp_path: Path) -> None:
    assert output_rules.held_by(str(tmp_path)) is None  # no lock file
    lock = LocalLock(str(tmp_path), run_id="holder", option="--output")
    lock.acquire()
    try:
        holder = output_rules.held_by(str(tmp_path))
        assert holder is not None and holder.run_id == "holder" and holder.pid == os.getpid()
        with pytest.raises(LockHeldError, match=r"or choose another --output$"):
            LocalLock(str(tmp_path), option="--output").acquire()
    finally:
        lock.release()
    assert output_rules.held_by(str(tmp_path)) is None
