"""A write in --output that fails (a full disk, a read-only directory) ends a run in one line,
`OutputWriteError`, never in h5py's tracebacks followed by a crash of the interpreter at exit.

h5py, stopped by a failed write in the middle of a file, leaves HDF5 objects open: HDF5 flushes them as
the interpreter exits, and crashes (SIGSEGV). So the failed write's objects are collected and its files
closed while their complaints are muted, and the error says whether objects are still open (the CLI
then exits at once, before HDF5's exit handlers run).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
from collections.abc import Iterator

from trainer.config import TrainingError


class OutputWriteError(TrainingError):
    """Writing in --output failed (a full disk, a read-only directory). `hdf5_left_open`: the failed
    write left HDF5 objects open, which can crash the interpreter as it exits (the CLI exits at once)."""

    def __init__(self, message: str, hdf5_left_open: bool = False):
        super().__init__(message)
        self.hdf5_left_open = hdf5_left_open


@contextlib.contextmanager
def in_one_line(output: str) -> Iterator[None]:
    """Run the block; a write failure in it (OSError, or h5py's RuntimeError naming an errno) becomes
    OutputWriteError saying what to do, after the failed write's HDF5 files are closed."""
    failure, hdf5_at_start = None, hdf5_objects_open()
    # h5py objects of a failed write complain as they are freed (Cython prints through excepthook,
    # then unraisablehook): the one line below says it.
    hook, excepthook = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = lambda raised: None if _write_failure(raised.exc_value) else hook(raised)
    sys.excepthook = lambda kind, value, tb: None if _write_failure(value) else excepthook(kind, value, tb)
    try:
        try:
            yield
            return
        except (OSError, RuntimeError) as error:  # a full disk, a read-only directory (h5py, Keras)
            failure = _write_failure(error)
            if failure is None:
                raise
        gc.collect()  # the failed write's h5py objects go now, while their complaints are muted
        _close_hdf5_files()
    finally:
        sys.unraisablehook, sys.excepthook = hook, excepthook
    raise OutputWriteError(
        f"cannot write in {output} ({failure}): free space or choose another --output, then rerun "
        "the same command to resume",
        hdf5_left_open=hdf5_objects_open() > hdf5_at_start,
    )


def _close_hdf5_files() -> None:
    """Close the HDF5 files a failed write left open (HDF5 would flush them at exit, and crash)."""
    try:
        import h5py
    except ImportError:
        return
    for identifier in h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE):
        with contextlib.suppress(Exception):  # the disk is still full: nothing more to save
            identifier.close()


def hdf5_objects_open() -> int:
    """How many HDF5 objects are still open (after a failed write: its datasets and groups keep the
    file open inside HDF5 even once _close_hdf5_files closed the file's handle)."""
    try:
        import h5py
    except ImportError:
        return 0
    return int(h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_ALL))


def _write_failure(error: BaseException) -> str | None:
    """What failed a write, in a few words (h5py puts 'errno = 28' in a multi-line RuntimeError), or None
    for an error that is not a write failure."""
    text = str(error)
    found = re.search(r"errno = (\d+)", text)
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    if found:
        return os.strerror(int(found.group(1)))
    if isinstance(error, OSError):
        return (text.strip().splitlines() or [type(error).__name__])[0][:200]
    return None
