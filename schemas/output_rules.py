"""The output rules, once, for every command that writes: the pipeline, rotnet-train, -evaluate, -export,
-correct, -ablate, -bench and -inspect, the demo, the download cache and the cluster files.

1. Write only where you can prove you wrote. A directory is a command's own when it made it or it holds
   the command's proof: its marker (rotnet-train's `.rotnet-run.json`, rotnet-ablate's), a ledger of
   every file written with its SHA-256 (`OutputTree`: rotnet-correct, -evaluate, -export, the demo), or
   the pipeline's manifest and run ledger (pipeline/output_dir.py). Nothing found by a name pattern is
   ever removed or replaced.
2. Aside, then rename. A file is written whole under a new temporary name beside its final one
   (O_CREAT | O_EXCL | O_NOFOLLOW) and renamed over it only when complete (`aside`, `write_aside`,
   `move_into_place`): a reader never sees half a file and a crash leaves the old one whole. A name
   that must be new is claimed with link(), which fails if anything appeared there (`aside(new=True)`).
3. Never through a link. Temporaries are opened O_NOFOLLOW, and a rename replaces a link at the final
   name instead of writing through it; `OutputTree` opens every directory below its root O_NOFOLLOW
   relative to its parent's descriptor; `links_among` finds the links at the names that a writer which
   cannot refuse them (Keras, h5py) would follow, so that the command refuses them up front.
4. One writer per directory: the lock `.rotnet-lock` (`lock_for`): flock on a local directory, an
   object created only if absent on gs://.

Every command also keeps its output out of its inputs and its inputs out of its output
(`schemas.paths.inside`, with the paths resolved).
Standard library and schemas.paths only (google-cloud-storage for the gs:// lock, imported when used);
the tests of the rules themselves are in tests/test_output_rules.py.

    from schemas import output_rules
    output_rules.write_aside("runs/mnist/metrics.json", text)  # the whole new file, or the old one as it was
    lock = output_rules.LocalLock("runs/mnist", option="--output")
    lock.acquire()  # LockHeldError naming the other writer; lock.release() when done

"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shlex
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from schemas import paths

TEMPORARY_PREFIX = ".rotnet-tmp-"  # what every temporary beside a final name starts with by default
LOCK_NAME = ".rotnet-lock"
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LEDGER_BYTES = 64 * 2**20
# link() is not supported here: the name is claimed by a check and a rename (a small window remains).
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV)


# --- Links and digests -----------------------------------------------------------------------------


def links_among(directory: str, names: tuple[str, ...] | list[str]) -> list[str]:
    """The paths of `names` in `directory` that are symbolic links (a writer would follow them)."""
    return [os.path.join(directory, name) for name in names if os.path.islink(os.path.join(directory, name))]


def sha256_of(path: str | os.PathLike, directory: int | None = None) -> str | None:
    """SHA-256 of the regular file `path` (relative to the descriptor `directory` if given), opened
    without following a link; None when it is not a regular file or cannot be opened."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()


# --- Aside, then rename ---------------------------------------------------------------------------


@contextlib.contextmanager
def aside(
    path: str | os.PathLike,
    *,
    prefix: str = TEMPORARY_PREFIX,
    suffix: str = "",
    new: bool = False,
    mode: int | None = None,
    token: str | None = None,
) -> Iterator[IO[bytes]]:
    """A new temporary file beside `path` (O_CREAT | O_EXCL | O_NOFOLLOW), named PREFIX + 8 random
    characters (tempfile's) or `token` + SUFFIX, open for writing; when the block ends without an error it
    is closed, given `mode` (default: what open() would give) and renamed over `path` (with `new`:
    linked to `path`, which must not exist: FileExistsError otherwise). On an error it is removed, and
    `path` is as it was. Writers that want a path (Keras, Pillow) write to `handle.name`. A fixed
    `token` (rotnet-ablate's pid) keeps the name's length known, for a file-name length budget."""
    directory = os.path.dirname(os.fspath(path)) or "."
    if token is None:
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below, before the rename)
            mode="wb", dir=directory, prefix=prefix, suffix=suffix, delete=False
        )
    else:
        # open() calls its opener with (name, flags): _create's second parameter is a directory
        # descriptor, which open's flags must not fill (a relative name then resolves against them).
        handle = open(  # noqa: SIM115
            os.path.join(directory, prefix + token + suffix), "wb", opener=lambda name, _flags: _create(name)
        )
    try:
        with handle:
            yield handle
            os.fchmod(handle.fileno(), 0o666 & ~_umask() if mode is None else mode)
        if new:
            _link_new(handle.name, os.fspath(path))
        else:
            move_into_place(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):  # unlink() of a missing name says EROFS on a read-only disk
            if os.path.lexists(handle.name):
                os.unlink(handle.name)
        raise


def write_aside(path: str | os.PathLike, data: str | bytes, **options) -> None:
    """Write `data` (str: UTF-8) whole to `path` with `aside` (its options). A gs:// path is one object
    write (an object appears whole)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if paths.is_remote(os.fspath(path)):
        with paths.open_binary(os.fspath(path), "wb") as handle:
            handle.write(raw)
        return
    with aside(paths.local_path(os.fspath(path)), **options) as handle:
        handle.write(raw)


def move_into_place(
    source: str | os.PathLike, destination: str | os.PathLike, directory: int | None = None
) -> None:
    """Rename a finished file (or a directory of the command's own) over `destination` (both relative
    to the descriptor `directory` if given), in one step: whatever is at `destination` stays whole until
    then, and a link there is replaced, not followed."""
    os.replace(source, destination, src_dir_fd=directory, dst_dir_fd=directory)


def _create(name: str, directory: int | None = None) -> int:
    """A descriptor of the new file `name` (relative to the descriptor `directory` if given), created
    never through a link and never over anything (O_CREAT | O_EXCL | O_NOFOLLOW)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, 0o666, dir_fd=directory)


def _link_new(temporary: str, name: str, directory: int | None = None) -> None:
    """Give the finished `temporary` the new `name` (relative to the descriptor `directory` if given)
    and drop the temporary name: link() fails with FileExistsError if anything appeared at `name`."""
    try:
        os.link(temporary, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        try:
            os.lstat(name, dir_fd=directory)
        except FileNotFoundError:
            move_into_place(temporary, name, directory)
            return
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name) from None
    os.unlink(temporary, dir_fd=directory)


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells (/proc/self/status): the
    os.umask round trip would briefly change it for every thread."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- One writer per directory: the lock -------------------------------------------------------------


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
    """The flock-based lock of a local output directory (which must exist). `option`: the command-line
    option that names the directory, for the refusal."""

    def __init__(self, directory: str, run_id: str = "", option: str = "--output-dir") -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        self.holder = LockHolder(run_id=run_id)
        self.option = option
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
                    f"it to finish, or choose another {self.option}"
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


def held_by(directory: str) -> LockHolder | None:
    """Who holds the lock of the local `directory` right now (its flock is taken), without taking it;
    None when nobody does, or the holder cannot be read."""
    try:
        descriptor = os.open(
            os.path.join(directory, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        )
    except OSError:
        return None  # no lock file: nobody writes there
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # not held: its holder is gone
    except BlockingIOError:
        return LockHolder.from_bytes(os.pread(descriptor, 4096, 0))
    finally:
        os.close(descriptor)


# --- A tree of files proven ours by a ledger of their SHA-256 -----------------------------------


class OutputRefusedError(Exception):
    """An output that is not written, and why (one line naming the path and what to do)."""


class OutputTree:
    """An output root opened for writing; `write(relative, data)` puts one file below it, safely.

    `tool` names the writer in refusals and in the ledger, `ledger_name` is the ledger's file name,
    `option` the command-line option the messages tell the user to change.
    Raises OutputRefusedError when the root itself cannot be used (a file, unwritable, a foreign ledger).
    """

    def __init__(self, root: Path, tool: str, ledger_name: str, option: str = "-o") -> None:
        self.root, self.tool, self.ledger_name = Path(root), tool, ledger_name
        self.option = option  # the command-line option that named the root, for the messages
        try:
            os.makedirs(self.root, exist_ok=True)
            # The root itself is the user's choice and may be a symlink; everything below it may not.
            self._root_descriptor = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise OutputRefusedError(
                f"cannot use {self.root} as the output directory ({error.strerror}); choose another {self.option}"
            ) from None
        self.written: dict[str, str] = self._read_ledger()

    def close(self) -> None:
        os.close(self._root_descriptor)

    def __enter__(self) -> OutputTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the ledger -------------------------------------------------------------------------------

    def _read_ledger(self) -> dict[str, str]:
        """{relative path: sha256} of the files an earlier run wrote; empty when there is no ledger."""
        try:
            status = os.lstat(self.ledger_name, dir_fd=self._root_descriptor)
        except FileNotFoundError:
            return {}
        path = self.root / self.ledger_name
        foreign = OutputRefusedError(
            f"{path} is not a {self.tool} ledger, so nothing in {self.root} can be shown to be "
            f"{self.tool}'s: move it away or choose another {self.option}"
        )
        if not stat.S_ISREG(status.st_mode) or status.st_size > _MAX_LEDGER_BYTES:
            raise foreign
        descriptor = os.open(self.ledger_name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self._root_descriptor)
        with os.fdopen(descriptor, "rb") as handle:
            text = handle.read(_MAX_LEDGER_BYTES + 1)
        try:
            ledger = json.loads(text.decode("utf-8"))
            files = ledger["files"]
            if ledger.get("tool") != self.tool or not isinstance(files, dict):
                raise ValueError
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise foreign from None
        return dict(files)

    def save_ledger(self) -> None:
        """Write the ledger (temp file + rename): every file this and earlier runs wrote, with its digest."""
        text = json.dumps({"tool": self.tool, "files": self.written}, indent=1, sort_keys=True)
        self._write(self.ledger_name, (text + "\n").encode("utf-8"), record=False)

    # --- files ----------------------------------------------------------------------------------

    def check_replaceable(self, relative: str) -> None:
        """Raise OutputRefusedError if `relative` exists and is not a file this tool wrote (checked up front
        for outputs that must be written, such as a report)."""
        parts = self._parts(relative)
        directory = self._open_parents(parts[:-1], create=False)
        if directory is None:
            return
        try:
            self._check_target(directory, parts[-1], relative)
        finally:
            if directory != self._root_descriptor:
                os.close(directory)

    def write(self, relative: str, data: bytes) -> Path:
        """Write `data` to ROOT/relative (never through a link, never over a file the tool did not
        write); returns the path. Raises OutputRefusedError with the reason."""
        self._write(relative, data, record=True)
        return self.root / relative

    def _parts(self, relative: str) -> list[str]:
        parts = list(PurePosixPath(relative).parts)
        if (
            not parts
            or any(part in ("", ".", "..") or "/" in part for part in parts)
            or relative.startswith("/")
        ):
            raise OutputRefusedError(f"{relative!r} is not a path below {self.root}")
        return parts

    def _open_parents(self, parents: list[str], create: bool) -> int | None:
        """A descriptor of ROOT/parents..., each opened without following links (created if asked);
        None when one is missing and not created. Raises OutputRefusedError for a link or a file in the way."""
        descriptor = self._root_descriptor
        walked = self.root
        try:
            for name in parents:
                walked = walked / name
                try:
                    child = os.open(name, _DIRECTORY_FLAGS, dir_fd=descriptor)
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(name, dir_fd=descriptor)
                    child = os.open(name, _DIRECTORY_FLAGS, dir_fd=descriptor)
                except OSError as error:
                    if error.errno in (errno.ELOOP, errno.ENOTDIR):
                        kind = (
                            "a symlink"
                            if stat.S_ISLNK(os.lstat(name, dir_fd=descriptor).st_mode)
                            else "not a directory"
                        )
                        raise OutputRefusedError(
                            f"{walked} is {kind}: {self.tool} does not write through or over it; "
                            f"move it away or choose another {self.option}"
                        ) from None
                    raise
                if descriptor != self._root_descriptor:
                    os.close(descriptor)
                descriptor = child
        except OSError as error:
            if descriptor != self._root_descriptor:
                os.close(descriptor)
            raise OutputRefusedError(f"cannot create or open {walked} ({error.strerror})") from None
        return descriptor

    def _check_target(self, directory: int, name: str, relative: str) -> bool:
        """True when ROOT/relative exists and is this tool's (may be replaced), False when it does not
        exist; OutputRefusedError for anything else there."""
        path = self.root / relative
        try:
            status = os.lstat(name, dir_fd=directory)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(status.st_mode):
            raise OutputRefusedError(
                f"{path} is a symlink: {self.tool} never writes through or over links; remove it or choose "
                f"another {self.option}"
            )
        if not stat.S_ISREG(status.st_mode):
            raise OutputRefusedError(
                f"{path} exists and is not a regular file; move it away or choose another {self.option}"
            )
        recorded = self.written.get(relative)
        if recorded is None or sha256_of(name, directory) != recorded:
            raise OutputRefusedError(
                f"{path} already exists and was not written by {self.tool} (or was changed since): it is "
                f"left as it is; move it away or choose another {self.option}"
            )
        return True

    def _write(self, relative: str, data: bytes, record: bool) -> None:
        parts = self._parts(relative)
        directory = self._open_parents(parts[:-1], create=True)
        name = parts[-1]
        temporary = f"{TEMPORARY_PREFIX}{secrets.token_hex(6)}"
        try:
            ours = self._check_target(directory, name, relative) if record else False
            try:
                descriptor = _create(temporary, directory)
            except OSError as error:
                raise OutputRefusedError(
                    f"cannot write in {(self.root / relative).parent} ({error.strerror})"
                ) from None
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(data)
                self._move_into_place(
                    temporary, name, directory, replace=ours or not record, relative=relative
                )
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=directory)
                raise
        finally:
            if directory != self._root_descriptor:
                os.close(directory)
        if record:
            self.written[relative] = hashlib.sha256(data).hexdigest()

    def _move_into_place(
        self, temporary: str, name: str, directory: int, replace: bool, relative: str
    ) -> None:
        path = self.root / relative
        try:
            if not replace:
                _link_new(temporary, name, directory)  # fails if the name appeared since the check
            elif self._replaceable(directory, name):
                move_into_place(temporary, name, directory)
            else:
                raise OutputRefusedError(
                    f"{path} is not a regular file; move it away or choose another {self.option}"
                )
        except FileExistsError:
            raise OutputRefusedError(
                f"{path} appeared while it was being written; it is left as it is"
            ) from None
        except OSError as error:
            raise OutputRefusedError(f"cannot write {path} ({error.strerror})") from None

    @staticmethod
    def _replaceable(directory: int, name: str) -> bool:
        """True when `name` is missing or a regular file (os.replace would put a file over an empty
        directory's name on some systems, and replacing a link is not ours to do)."""
        try:
            status = os.lstat(name, dir_fd=directory)
        except FileNotFoundError:
            return True
        return stat.S_ISREG(status.st_mode)
