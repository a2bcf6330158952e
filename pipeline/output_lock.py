"""One writer per output directory: an exclusive lock `OUTPUT_DIR/.rotnet-lock` naming its holder.

Local directories: the lock file is opened without following links and locked with `flock`
(LOCK_EX | LOCK_NB). The kernel drops the lock when the holder dies, however it dies, so a live lock
always means a live run; the file also holds who took it (pid, host, process start time, run id,
command line) for the refusal message. A run deletes the file when it ends; a file found unlocked
therefore belongs to a run that was killed: that is reported, and the new run takes over (its ledger
cleanup removes what the killed run left). A file naming another host, or a process on this host that
is still alive, is not taken over even when unlocked (a filesystem whose locks do not reach other
hosts could fool flock): the run stops and says how to release it.

gs:// directories: the lock is an object created with `if_generation_match=0`, which GCS creates only
if no object of that name exists (one atomic check-and-create), and deleted at the end with the
generation it was created with. GCS cannot tell whether the holder is alive, so a lock left by a killed
run is reported with the command that removes it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
from dataclasses import asdict, dataclass, field

LOCK_NAME = ".rotnet-lock"


class LockHeldError(RuntimeError):
    """Another run holds the output directory (or may: a stale lock that cannot be proven dead)."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """The process's start time since boot (/proc/PID/stat field 22), telling a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a lock."""

    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    boot_id: str = field(default_factory=_boot_id)
    start_ticks: str = field(default_factory=lambda: _start_ticks(os.getpid()))
    started: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    run_id: str = ""
    command: str = field(default_factory=lambda: shlex.join(sys.argv)[:300])

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> LockHolder | None:
        try:
            fields = json.loads(data.decode("utf-8"))
            return cls(**{key: fields[key] for key in cls.__dataclass_fields__ if key in fields})
        except (ValueError, TypeError, UnicodeDecodeError):
            return None

    def is_running_here(self) -> bool | None:
        """True/False when this process is/is not running on this machine; None when it cannot be told
        (another host)."""
        if self.host != socket.gethostname():
            return None
        if self.boot_id and self.boot_id != _boot_id():
            return False  # the machine rebooted since
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, as another user
        ticks = _start_ticks(self.pid)
        return not (self.start_ticks and ticks and ticks != self.start_ticks)  # else a reused pid


class LocalLock:
    """The flock-based lock of a local output directory (which must exist)."""

    def __init__(self, directory: str, run_id: str = "") -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        self.holder = LockHolder(run_id=run_id)
        self._descriptor: int | None = None

    def acquire(self) -> LockHolder | None:
        """Take the lock; returns the holder of a stale lock taken over (a killed run), else None.

        Raises LockHeldError naming the holder when another run has it.
        """
        while True:
            try:
                descriptor = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644
                )
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise LockHeldError(
                        f"{self.path} is a symlink, not rotnet's lock file: remove it and rerun"
                    ) from None
                raise LockHeldError(f"cannot create the lock file {self.path} ({error.strerror})") from None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = LockHolder.from_bytes(os.pread(descriptor, 4096, 0))
                os.close(descriptor)
                who = holder.describe() if holder else "another run"
                raise LockHeldError(
                    f"{os.path.dirname(self.path)} is being written by {who} (lock {self.path}): wait for "
                    "it to finish, or choose another --output-dir"
                ) from None
            # A run that was releasing may have unlinked the file we opened: lock the one at the path.
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(descriptor)
                continue
            break
        left = os.pread(descriptor, 4096, 0)
        previous = LockHolder.from_bytes(left) if left else None
        if left and previous is None:
            os.close(descriptor)
            raise LockHeldError(f"{self.path} is not rotnet's lock file: move it away and rerun")
        running = previous.is_running_here() if previous is not None else False
        if previous is not None and running is not False:
            os.close(descriptor)
            where = "is still running" if running else "cannot be checked from this host"
            raise LockHeldError(
                f"{self.path} was left by {previous.describe()}, which {where}; if no run is writing "
                f"{os.path.dirname(self.path)}, delete {self.path} and rerun"
            )
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, self.holder.to_bytes(), 0)
        os.fsync(descriptor)
        self._descriptor = descriptor
        return previous

    def release(self) -> None:
        """Delete the lock file, then drop the lock (a run that opens it in between retries)."""
        if self._descriptor is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._descriptor)
        self._descriptor = None


class GcsLock:
    """A generation-conditioned lock object for a gs:// output directory."""

    def __init__(self, directory: str, run_id: str = "") -> None:
        self.url = directory.rstrip("/") + "/" + LOCK_NAME
        bucket, _, prefix = directory[len("gs://") :].partition("/")
        self.bucket_name = bucket
        self.object_name = (prefix.rstrip("/") + "/" if prefix.strip("/") else "") + LOCK_NAME
        self.holder = LockHolder(run_id=run_id)
        self._generation: int | None = None

    def _blob(self):
        from google.cloud import storage

        client = (
            storage.Client()
            if not os.environ.get("STORAGE_EMULATOR_HOST")
            else storage.Client(project="rotnet-emulated", credentials=_anonymous())
        )
        return client.bucket(self.bucket_name).blob(self.object_name)

    def acquire(self) -> None:
        from google.api_core import exceptions

        blob = self._blob()
        try:
            blob.upload_from_string(self.holder.to_bytes(), if_generation_match=0)
        except exceptions.PreconditionFailed:
            try:
                holder = LockHolder.from_bytes(blob.download_as_bytes())
            except exceptions.NotFound:
                holder = None
            who = holder.describe() if holder else "another run"
            raise LockHeldError(
                f"{self.url.rsplit('/', 1)[0]} is being written by {who} (lock {self.url}); gs:// cannot "
                f"tell whether it is still running: wait for it, or if it was killed, run "
                f"`gcloud storage rm {self.url}` and rerun"
            ) from None
        self._generation = blob.generation

    def release(self) -> None:
        if self._generation is None:
            return
        from google.api_core import exceptions

        with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
            self._blob().delete(if_generation_match=self._generation)
        self._generation = None


def _anonymous():
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


def lock_for(directory: str, run_id: str = ""):
    """The lock of `directory`: GcsLock for gs://, LocalLock for a local path."""
    return GcsLock(directory, run_id) if directory.startswith("gs://") else LocalLock(directory, run_id)
