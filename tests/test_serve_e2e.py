"""rotnet-serve on a real trained model, as a user runs it: the command started on 127.0.0.1 (free port) and
stopped by PID (tests/conftest.py: rotnet_serve). The acceptance check (an angle for a photo, a 4xx JSON
line for garbage), /v1/correct's lossless output, the hostile uploads of issue 33 with the server's
memory watched, and a bounded load run (2,000 requests, 16 at a time) with zero errors."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SERVE_MAX_PIXELS, SERVE_MAX_UPLOAD_BYTES
from tests.factories import synthetic_image
from tests.servers import RotnetServe
from tools import lossless

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body bytes) over a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def turned_digit(turn: int = 1) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(synthetic_image(3, size=28)[:, :, 0], turn))


def one_line_error(status: int, body: bytes) -> str:
    assert 400 <= status < 500, (status, body)
    assert body.endswith(b"\n") and body.count(b"\n") == 1, body
    parsed = json.loads(body)
    assert parsed["status"] == status and parsed["error"] and "Traceback" not in parsed["error"]
    return parsed["error"]


def test_acceptance_predict_answers_an_angle_and_garbage_a_4xx_json_line(rotnet_serve) -> None:
    status, headers, body = request(rotnet_serve, "POST", "/v1/predict", png_of(turned_digit()))
    assert status == 200 and headers["Content-Type"] == "application/json", body
    answer = json.loads(body)
    assert (
        answer["angle_degrees"] in (0, 90, 180, 270)
        and answer["angle_degrees"] == 90 * answer["quarter_turn"]
    )
    assert (
        0.25 <= answer["confidence"] <= 1 and answer["mode"] == "quarter-turns" and answer["model"] == "run"
    )
    assert answer["timing_ms"]["total"] > 0 and answer["batch_size"] >= 1
    status, _, body = request(rotnet_serve, "POST", "/v1/predict", b"this is not an image at all")
    assert "not an image file" in one_line_error(status, body)
    status, _, body = request(rotnet_serve, "GET", "/healthz")
    assert status == 200 and json.loads(body)["predictions"] >= 1


def test_correct_returns_the_photo_upright_losslessly(rotnet_serve) -> None:
    pixels = turned_digit()
    status, headers, body = request(rotnet_serve, "POST", "/v1/correct?lossless=transpose", png_of(pixels))
    assert status == 200 and headers["Content-Type"] == "image/png"
    turn = int(headers["X-Rotnet-Quarter-Turn"])
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), np.rot90(pixels, -turn))
    photo = io.BytesIO()
    Image.fromarray(np.kron(pixels, np.ones((4, 4), np.uint8))).save(photo, format="JPEG", quality=90)
    status, headers, body = request(rotnet_serve, "POST", "/v1/correct?lossless=exif", photo.getvalue())
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert lossless.scan_data(body) == lossless.scan_data(photo.getvalue())  # the image data untouched
    assert headers["X-Rotnet-Action"] in (
        "unchanged: upright",
        f"lossless: EXIF orientation 1 -> {[1, 6, 3, 8][turn]}",
    )


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims width x height."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_bomb(side: int) -> bytes:
    """A PNG of side x side black pixels: a few KB that decode to side^2 bytes."""
    rows = zlib.compress(b"\x00" * (side + 1) * side, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_hostile_uploads_get_4xx_json_and_memory_stays_bounded(rotnet_serve) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200), np.uint8)).save(
        buffer, format="JPEG"
    )
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]  # cut in the middle of its scan data
    bomb = _png_bomb(2 * int(SERVE_MAX_PIXELS**0.5))  # 4x the pixel cap, in a few KB
    assert len(bomb) < 100_000
    rss_before = _rss_bytes(rotnet_serve.pid)
    cases = {
        "not an image": (b"GIF? no: plain text", 415, "not an image file"),
        "truncated": (truncated, 400, "truncated or corrupt"),
        "empty": (b"", 400, "empty upload"),
        "20,000 x 20,000 header": (_jpeg_claiming(20_000, 20_000), 413, "decompression bomb guard"),
        "decompression bomb": (bomb, 413, "decompression bomb guard"),
    }
    for name, (body, expected, phrase) in cases.items():
        status, _, answer = request(rotnet_serve, "POST", "/v1/predict", body)
        assert status == expected, (name, answer)
        assert phrase in one_line_error(status, answer), (name, answer)
    # 100 MB: refused from its Content-Length, before a byte of it is read.
    connection = http.client.HTTPConnection("127.0.0.1", rotnet_serve.port, timeout=30)
    connection.putrequest("POST", "/v1/predict")
    connection.putheader("Content-Length", str(100_000_000))
    connection.endheaders()
    response = connection.getresponse()
    assert "over the limit" in one_line_error(response.status, response.read())
    connection.close()

    # Chunked (no Content-Length): cut off once it passes the limit.
    def chunks():
        for _ in range(SERVE_MAX_UPLOAD_BYTES // 65536 + 4):
            yield b"\x00" * 65536

    connection = http.client.HTTPConnection("127.0.0.1", rotnet_serve.port, timeout=30)
    try:
        connection.request("POST", "/v1/predict", body=chunks(), encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413 and "over the limit" in one_line_error(response.status, response.read())
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close before the client finished sending; what matters is that it refused
    finally:
        connection.close()
    assert _rss_bytes(rotnet_serve.pid) - rss_before < 150 * 2**20, "hostile uploads grew the server's memory"
    assert request(rotnet_serve, "GET", "/healthz")[0] == 200  # and it still serves


def test_load_run_2000_requests_16_at_a_time_without_an_error(rotnet_serve) -> None:
    total, clients, deadline_s = 2000, 16, 120.0
    body = png_of(turned_digit())
    counter, lock = iter(range(total)), threading.Lock()
    statuses: list[int] = []
    errors: list[str] = []
    deadline = time.monotonic() + deadline_s

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", rotnet_serve.port, timeout=30)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if next(counter, None) is None:
                        return
                try:
                    connection.request("POST", "/v1/predict", body=body)
                    response = connection.getresponse()
                    response.read()
                    statuses.append(response.status)
                except (OSError, http.client.HTTPException) as error:
                    errors.append(f"{type(error).__name__}: {error}")
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", rotnet_serve.port, timeout=30)
        finally:
            connection.close()

    before = json.loads(request(rotnet_serve, "GET", "/healthz")[2])
    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline_s + 30)
    elapsed = time.monotonic() - started
    after = json.loads(request(rotnet_serve, "GET", "/healthz")[2])
    assert not errors, errors[:5]
    assert len(statuses) == total and set(statuses) == {200}, f"{len(statuses)} answered in {elapsed:.0f} s"
    predictions, batches = after["predictions"] - before["predictions"], after["batches"] - before["batches"]
    assert predictions == total and batches < total, "16 clients at once should share model calls"
    print(f"load run: {total} requests, {clients} clients, {elapsed:.1f} s, {total / elapsed:.0f} req/s, "
          f"{predictions / batches:.1f} images per model call")  # fmt: skip


@pytest.mark.parametrize(
    ("sent", "code", "cause"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_an_interrupted_service_ends_in_one_line_and_130_or_143(
    tiny_model: dict[str, Path], tmp_path: Path, sent: int, code: int, cause: str
) -> None:
    """rotnet-serve follows every command's convention (pipeline/interrupts.py): uvicorn shuts down
    gracefully, then the signal it captured ends the command in one line, exit 130 / 143."""
    log = tmp_path / "serve.log"
    with RotnetServe(tiny_model["run"], log) as server:
        status, _, _ = request(server, "GET", "/healthz")
        assert status == 200
        os.kill(server.pid, sent)
        returncode = server.wait(timeout=60)
    text = log.read_text(errors="replace")
    assert returncode == code, text
    assert "Traceback" not in text and "Aborted!" not in text, text
    [line] = [line for line in text.splitlines() if line.startswith("interrupted")]
    assert line.startswith(f"interrupted ({cause}): the service stopped"), line
