"""Writing files into a user's directory without hurting anything the tool did not write itself.

Used by rotnet-correct for its output directory (`-o`):

* Nothing is written through a symlink. Every directory below the output root is opened with
  O_NOFOLLOW relative to its parent's descriptor (so a link swapped in after a check is not followed
  either) and created when missing; a symlink or a file where a directory should be refuses that file.
* Each file is written to a new temporary file beside its final name (O_CREAT | O_EXCL | O_NOFOLLOW)
  and moved into place only when complete: a reader never sees half a file, and a crash leaves at most
  a `.rotnet-tmp-*` file, never a damaged original.
* An existing file is replaced only when the tool can prove it wrote it: the ledger (a JSON file in the
  root, e.g. `.rotnet-correct.json`) records the SHA-256 of every file written, and the file on disk
  must still have it. A user's file, a file the user changed since, a symlink or a directory at an
  output name is never replaced or removed: that output is refused with the reason (`OutputRefusedError`).
  A new name is claimed with link(), which fails if someone created the name meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
from pathlib import Path, PurePosixPath

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_MAX_LEDGER_BYTES = 64 * 2**20


class OutputRefusedError(Exception):
    """An output that is not written, and why (one line naming the path and what to do)."""


def _sha256_of(name: str, directory: int) -> str | None:
    """SHA-256 of the regular file `name` in the directory descriptor `directory`; None if it is not one."""
    try:
        descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()


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
        if recorded is None or _sha256_of(name, directory) != recorded:
            raise OutputRefusedError(
                f"{path} already exists and was not written by {self.tool} (or was changed since): it is "
                f"left as it is; move it away or choose another {self.option}"
            )
        return True

    def _write(self, relative: str, data: bytes, record: bool) -> None:
        parts = self._parts(relative)
        directory = self._open_parents(parts[:-1], create=True)
        name = parts[-1]
        temporary = f".rotnet-tmp-{secrets.token_hex(6)}"
        try:
            ours = self._check_target(directory, name, relative) if record else False
            try:
                descriptor = os.open(
                    temporary,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                    0o666,
                    dir_fd=directory,
                )
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
            if replace:
                if not self._replaceable(directory, name):
                    raise OutputRefusedError(
                        f"{path} is not a regular file; move it away or choose another {self.option}"
                    )
                os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
                return
            try:
                # link() claims a new name atomically: it fails if the name appeared since the check.
                os.link(temporary, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
            except FileExistsError:
                raise OutputRefusedError(
                    f"{path} appeared while it was being written; it is left as it is"
                ) from None
            except OSError as error:
                if error.errno not in (
                    errno.EPERM,
                    errno.EOPNOTSUPP,
                    errno.ENOTSUP,
                    errno.EMLINK,
                    errno.EXDEV,
                ):
                    raise
                # A filesystem without hard links: check again and rename (a small window remains).
                if not self._missing(directory, name):
                    raise OutputRefusedError(
                        f"{path} appeared while it was being written; it is left as it is"
                    ) from None
                os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
                return
            os.unlink(temporary, dir_fd=directory)
        except OSError as error:
            raise OutputRefusedError(f"cannot write {path} ({error.strerror})") from None

    @staticmethod
    def _missing(directory: int, name: str) -> bool:
        try:
            os.lstat(name, dir_fd=directory)
        except FileNotFoundError:
            return True
        return False

    @staticmethod
    def _replaceable(directory: int, name: str) -> bool:
        """True when `name` is missing or a regular file (os.replace would put a file over an empty
        directory's name on some systems, and replacing a link is not ours to do)."""
        try:
            status = os.lstat(name, dir_fd=directory)
        except FileNotFoundError:
            return True
        return stat.S_ISREG(status.st_mode)
