"""One writer per output directory: the lock and the ledger's own rules.

The pipeline-level proof (two rotnet-pipeline processes on one directory) is in
tests/test_output_dir_safety.py; these tests pin down the lock itself, cheaply.
"""

from __future__ import annotations

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

from pipeline import output_lock, run_ledger
from pipeline.output_lock import LocalLock, LockHeldError, LockHolder


def test_a_second_lock_on_the_same_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = LocalLock(str(tmp_path), run_id="first")
    assert first.acquire() is None
    with pytest.raises(LockHeldError) as raised:
        LocalLock(str(tmp_path), run_id="second").acquire()
    message = str(raised.value)
    assert f"is being written by pid {os.getpid()} on host {socket.gethostname()}" in message
    assert message.endswith("wait for it to finish, or choose another --output-dir")
    first.release()
    assert not (tmp_path / output_lock.LOCK_NAME).exists()
    second = LocalLock(str(tmp_path), run_id="second")
    assert second.acquire() is None, "free again once released"
    second.release()


@pytest.mark.timeout(60)
def test_a_lock_left_by_a_killed_process_is_reported_and_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pipeline.output_lock import LocalLock; "
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
    assert json.loads((tmp_path / output_lock.LOCK_NAME).read_text())["run_id"] == "killed", "left behind"
    lock = LocalLock(str(tmp_path), run_id="rerun")
    stale = lock.acquire()
    assert stale is not None and stale.pid == holder.pid and stale.run_id == "killed"
    assert json.loads((tmp_path / output_lock.LOCK_NAME).read_text())["run_id"] == "rerun"
    lock.release()


def test_an_unlocked_lock_file_of_another_host_or_a_live_process_is_not_taken_over(tmp_path: Path) -> None:
    lock_file = tmp_path / output_lock.LOCK_NAME
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
    os.symlink(target, tmp_path / "out" / output_lock.LOCK_NAME)
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
    monkeypatch.setattr(output_lock.GcsLock, "_blob", lambda self: _FakeBlob(self.object_name))
    _FakeBlob.objects = {}
    first = output_lock.lock_for("gs://bucket/records/mnist", run_id="a")
    assert isinstance(first, output_lock.GcsLock) and first.object_name == "records/mnist/.rotnet-lock"
    first.acquire()
    with pytest.raises(LockHeldError) as raised:
        output_lock.lock_for("gs://bucket/records/mnist/").acquire()
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
