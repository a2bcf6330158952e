"""Shared fixtures: the real sample data beside the checkout and a local HTTP server for downloads."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ROTNET_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# TensorFlow and OpenCV would each start a thread pool per core in every xdist worker.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`: the MNIST 5k subset and the Street View samples (required, never downloaded)."""
    if not (SHARED_DATA / "mnist-5k").is_dir():
        pytest.fail(f"sample data missing at {SHARED_DATA}; set ROTNET_SHARED_DATA to the shared/data folder")
    return SHARED_DATA


@pytest.fixture(scope="session")
def street_view_images(shared_data: Path) -> list[np.ndarray]:
    """The 10 real Street View samples, decoded to HWC uint8 RGB (1025 x 1281 x 3)."""
    from pipeline.codec import decode_source_image

    paths = sorted((shared_data / "street-view-samples").glob("*.jpg"))
    assert len(paths) == 10
    return [decode_source_image(path.read_bytes()) for path in paths]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static HTTP server on 127.0.0.1 serving a fresh directory: yields (base_url, directory)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
