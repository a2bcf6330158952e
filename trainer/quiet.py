"""TensorFlow without its start-up noise, so that the first line a user sees is the tool's own.

Importing TensorFlow 2.21 on a CPU machine writes, from C++ and before Python logging exists:
"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
"cudart_stub.cc: Could not find cuda drivers ...", the oneDNN notice and the CPU feature guard, and
the first device query logs "failed call to cuInit" (at ERROR level) where there is no GPU.
TF_CPP_MIN_LOG_LEVEL=2 silences only some of them (measured: the absl and cudart lines still come with
TF_CPP_MIN_LOG_LEVEL=3), so file descriptor 2 points at /dev/null while the import runs. An import
that fails still raises its Python exception, with its message, after stderr is restored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow (and Keras) now: quietly, or with all its messages when `verbose`."""
    if verbose:
        import tensorflow  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # later C++ INFO/WARNING lines (CPU guard, ...)
    if "tensorflow" not in sys.modules:
        with _stderr_to_devnull():
            import keras  # noqa: F401
            import tensorflow as tf

            # Looking for GPUs loads CUDA, which logs "failed call to cuInit" (an ERROR line) on a machine
            # without one: here, rather than in the middle of the tool's own output.
            tf.config.list_physical_devices("GPU")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
