"""pipeline.download against a fault-injecting HTTP server on 127.0.0.1: retries, resume, checksums, mirrors."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pipeline.download import ChecksumError, DownloadError, fetch, file_digest

# Small enough to be quick, large enough that a cut lands mid-stream across several reads.
PAYLOAD = np.random.default_rng(7).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"backoff_seconds": 0.01, "timeout_seconds": 5.0, "chunk_bytes": 16_384}


@dataclass
class Request:
    path: str
    range_header: str | None


@dataclass
class FaultServer:
    """Serves `files` by path; `faults[path]` is a list of behaviours consumed one per request.

    Behaviours: "ok", "500", "503", "404", "cut" (full Content-Length, half the body, then close),
    "ignore_range" (200 with the whole body even for a Range request), "wrong" (other bytes),
    "hang" (sleep past the client's timeout before answering). When the list is empty: "ok".
    """

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, list[str]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    bytes_sent: int = 0
    hang_seconds: float = 1.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests_for(self, path: str) -> list[Request]:
        return [request for request in self.requests if request.path == path]


def _handler_for(server_state: FaultServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so a cut connection is unambiguous.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send_body(self, body: bytes) -> None:
            # Counted before writing, so the client cannot finish before the count is in.
            with server_state.lock:
                server_state.bytes_sent += len(body)
            self.wfile.write(body)

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            with server_state.lock:
                server_state.requests.append(Request(self.path, range_header))
                plan = server_state.faults.get(self.path, [])
                behaviour = plan.pop(0) if plan else "ok"
            if behaviour == "hang":
                time.sleep(server_state.hang_seconds)
                return
            if behaviour in ("500", "503", "404"):
                self.send_error(int(behaviour))
                return
            data = server_state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            if behaviour == "wrong":
                data = bytes(255 - byte for byte in data[:1000]) + data[1000:]
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and behaviour != "ignore_range":
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if behaviour == "cut":
                self._send_body(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._send_body(body)

    return Handler


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    state = FaultServer(files={"/file.bin": PAYLOAD})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _unused_port_url() -> str:
    """A url on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def _leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if not path.name.endswith(".lock"))


def test_plain_download_verifies_and_second_call_is_a_cache_hit(fault_server, tmp_path):
    destination = tmp_path / "cache" / "file.bin"  # the directory is created
    url = fault_server.base_url + "/file.bin"
    path = fetch([url], destination, md5=PAYLOAD_MD5, sha256=PAYLOAD_SHA256, progress=True, **FAST)
    assert path == destination
    assert destination.read_bytes() == PAYLOAD
    assert _leftovers(destination.parent) == ["file.bin"]
    assert len(fault_server.requests) == 1
    assert fault_server.requests[0].range_header is None

    again = fetch([url], destination, md5=PAYLOAD_MD5, **FAST)
    assert again == destination
    assert len(fault_server.requests) == 1, "a verified cached file must not touch the network"


def test_cached_file_without_checksum_is_trusted(fault_server, tmp_path):
    destination = tmp_path / "file.bin"
    destination.write_bytes(b"anything")
    assert fetch([fault_server.base_url + "/file.bin"], destination, **FAST).read_bytes() == b"anything"
    assert fault_server.requests == []


def test_cached_file_with_wrong_digest_is_downloaded_again(fault_server, tmp_path):
    destination = tmp_path / "file.bin"
    destination.write_bytes(b"stale bytes")
    fetch([fault_server.base_url + "/file.bin"], destination, md5=PAYLOAD_MD5, **FAST)
    assert destination.read_bytes() == PAYLOAD
    assert len(fault_server.requests) == 1


def test_http_500_then_success_is_retried(fault_server, tmp_path):
    fault_server.faults["/file.bin"] = ["500", "503"]
    destination = tmp_path / "file.bin"
    fetch([fault_server.base_url + "/file.bin"], destination, md5=PAYLOAD_MD5, **FAST)
    assert destination.read_bytes() == PAYLOAD
    assert len(fault_server.requests) == 3


def test_connection_cut_mid_file_resumes_with_range(fault_server, tmp_path):
    fault_server.faults["/file.bin"] = ["cut"]
    destination = tmp_path / "file.bin"
    fetch([fault_server.base_url + "/file.bin"], destination, sha256=PAYLOAD_SHA256, **FAST)
    assert destination.read_bytes() == PAYLOAD
    first, second = fault_server.requests
    assert first.range_header is None
    assert second.range_header == f"bytes={len(PAYLOAD) // 2}-"
    assert fault_server.bytes_sent == len(PAYLOAD)  # half, then the other half: nothing sent twice
    assert fault_server.bytes_sent < 2 * len(PAYLOAD)
    assert _leftovers(tmp_path) == ["file.bin"]


def test_repeated_cuts_each_resume_from_where_the_last_stopped(fault_server, tmp_path):
    fault_server.faults["/file.bin"] = ["cut", "cut", "cut"]
    destination = tmp_path / "file.bin"
    fetch([fault_server.base_url + "/file.bin"], destination, md5=PAYLOAD_MD5, **FAST)
    assert destination.read_bytes() == PAYLOAD
    offsets = [request.range_header for request in fault_server.requests]
    half, quarter, eighth = len(PAYLOAD) // 2, len(PAYLOAD) // 4, len(PAYLOAD) // 8
    assert offsets == [
        None,
        f"bytes={half}-",
        f"bytes={half + quarter}-",
        f"bytes={half + quarter + (len(PAYLOAD) - half - quarter) // 2}-",
    ]
    assert eighth > 0 and fault_server.bytes_sent == len(PAYLOAD)


def test_server_ignoring_range_restarts_from_byte_zero(fault_server, tmp_path):
    fault_server.faults["/file.bin"] = ["cut", "ignore_range"]
    destination = tmp_path / "file.bin"
    fetch([fault_server.base_url + "/file.bin"], destination, md5=PAYLOAD_MD5, **FAST)
    assert destination.read_bytes() == PAYLOAD  # not the first half twice
    assert fault_server.requests[1].range_header is not None


def test_interrupted_earlier_run_is_resumed_when_a_digest_guards_it(fault_server, tmp_path):
    destination = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:50_000])
    fetch([fault_server.base_url + "/file.bin"], destination, md5=PAYLOAD_MD5, **FAST)
    assert destination.read_bytes() == PAYLOAD
    assert [request.range_header for request in fault_server.requests] == ["bytes=50000-"]
    assert fault_server.bytes_sent == len(PAYLOAD) - 50_000


def test_complete_part_file_gets_416_and_is_accepted(fault_server, tmp_path):
    destination = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    fetch([fault_server.base_url + "/file.bin"], destination, md5=PAYLOAD_MD5, **FAST)
    assert destination.read_bytes() == PAYLOAD
    assert [request.range_header for request in fault_server.requests] == [f"bytes={len(PAYLOAD)}-"]


def test_stale_part_that_fails_the_digest_is_downloaded_again_from_zero(fault_server, tmp_path):
    destination = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"x" * 1000)  # not a prefix of PAYLOAD
    fetch([fault_server.base_url + "/file.bin"], destination, md5=PAYLOAD_MD5, **FAST)
    assert destination.read_bytes() == PAYLOAD
    assert [request.range_header for request in fault_server.requests] == ["bytes=1000-", None]


def test_stale_part_without_digest_is_not_resumed(fault_server, tmp_path):
    destination = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"x" * 1000)
    fetch([fault_server.base_url + "/file.bin"], destination, **FAST)
    assert destination.read_bytes() == PAYLOAD
    assert [request.range_header for request in fault_server.requests] == [None]


def test_timeout_is_retried(fault_server, tmp_path):
    fault_server.faults["/file.bin"] = ["hang"]
    fault_server.hang_seconds = 1.0
    destination = tmp_path / "file.bin"
    fetch(
        [fault_server.base_url + "/file.bin"],
        destination,
        md5=PAYLOAD_MD5,
        **{**FAST, "timeout_seconds": 0.2},
    )
    assert destination.read_bytes() == PAYLOAD
    assert len(fault_server.requests) == 2


def test_wrong_checksum_raises_and_leaves_nothing(fault_server, tmp_path):
    fault_server.faults["/file.bin"] = ["wrong"] * 10
    destination = tmp_path / "file.bin"
    url = fault_server.base_url + "/file.bin"
    wrong_md5 = hashlib.md5(bytes(255 - byte for byte in PAYLOAD[:1000]) + PAYLOAD[1000:]).hexdigest()
    with pytest.raises(ChecksumError) as raised:
        fetch([url], destination, md5=PAYLOAD_MD5, **FAST)
    message = str(raised.value)
    assert url in message
    assert f"md5 expected {PAYLOAD_MD5}, got {wrong_md5}" in message
    assert not destination.exists()
    assert _leftovers(tmp_path) == []
    assert len(fault_server.requests) == 1, "wrong bytes are not a transient fault: no retry on that mirror"


def test_wrong_checksum_on_first_mirror_falls_back_to_the_next(fault_server, tmp_path):
    fault_server.files["/bad/file.bin"] = PAYLOAD
    fault_server.faults["/bad/file.bin"] = ["wrong"]
    urls = [fault_server.base_url + "/bad/file.bin", fault_server.base_url + "/file.bin"]
    destination = tmp_path / "file.bin"
    fetch(urls, destination, sha256=PAYLOAD_SHA256, **FAST)
    assert destination.read_bytes() == PAYLOAD


def test_404_on_first_mirror_moves_to_second_without_retrying(fault_server, tmp_path):
    urls = [fault_server.base_url + "/missing.bin", fault_server.base_url + "/file.bin"]
    destination = tmp_path / "file.bin"
    fetch(urls, destination, md5=PAYLOAD_MD5, **FAST)
    assert destination.read_bytes() == PAYLOAD
    assert [request.path for request in fault_server.requests] == ["/missing.bin", "/file.bin"]


def test_all_mirrors_failing_raises_download_error_listing_each(fault_server, tmp_path):
    fault_server.files["/flaky.bin"] = PAYLOAD
    fault_server.faults["/flaky.bin"] = ["500"] * 10
    refused = _unused_port_url()
    urls = [fault_server.base_url + "/flaky.bin", fault_server.base_url + "/missing.bin", refused]
    destination = tmp_path / "file.bin"
    with pytest.raises(DownloadError) as raised:
        fetch(urls, destination, md5=PAYLOAD_MD5, retries=2, **FAST)
    assert not isinstance(raised.value, ChecksumError)
    message = str(raised.value)
    assert f"{urls[0]}: HTTP 500" in message and "gave up after 3 tries" in message
    assert f"{urls[1]}: HTTP 404" in message
    assert f"{refused}: connection failed" in message
    assert "--mnist-dir" in message
    assert len(fault_server.requests_for("/flaky.bin")) == 3  # 1 try + 2 retries
    assert len(fault_server.requests_for("/missing.bin")) == 1
    assert not destination.exists()


def test_file_digest_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    assert file_digest(path, "md5") == PAYLOAD_MD5
    assert file_digest(path, "sha256") == PAYLOAD_SHA256


def test_empty_url_list_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="at least one url"):
        fetch([], tmp_path / "x")
