"""rotnet-serve's machinery with a stand-in model (no TensorFlow): dynamic batching, the bounds (503 when
full, 408/503 past the time limit), one-line JSON errors. The service runs in uvicorn on 127.0.0.1 in a
thread of the test, stopped by the test; tests/test_serve_e2e.py runs the real command on a real model."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from pipeline import geometry
from tests.servers import free_port
from tools import serve
from trainer import heads
from trainer.predict import Prediction

pytestmark = pytest.mark.timeout(120)


@dataclass
class StandIn:
    """Says 90 degrees (mass 0.9) for every image; records each call's batch size; `gate` holds calls."""

    delay_s: float = 0.0
    gate: threading.Event = field(default_factory=threading.Event)
    sizes: list[int] = field(default_factory=list)
    image_size: tuple[int, int] = (28, 28)
    channels: int = 1

    def __post_init__(self) -> None:
        self.gate.set()

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return geometry.resize(geometry.center_crop(image[:, :, :1]), self.image_size)

    def predict(self, images, batch_size: int = 64, tta: int = 1) -> Prediction:
        self.gate.wait(30)
        time.sleep(self.delay_s)
        self.sizes.append(len(images))
        probabilities = np.zeros((len(images), 360), np.float32)
        probabilities[:, 90], probabilities[:, 0] = 0.9, 0.1
        angles, confidence = heads.Head("classification", tuple(range(360))).decode(probabilities)
        turns, turn_confidence = heads.decode_quarter_turns(probabilities, tuple(range(360)))
        return Prediction(angles, confidence, probabilities, turns, turn_confidence)


def png_bytes(seed: int = 0) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40), np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


@contextlib.contextmanager
def running(predictor, **settings) -> Iterator[str]:
    """The app in uvicorn on 127.0.0.1:<free port> in a thread; stopped (and joined) on exit."""
    import uvicorn

    service = serve.Service(predictor, serve.Settings(**settings), "stand-in")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(serve.create_app(service), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive()


def post(url: str, data: bytes, timeout: float = 30) -> tuple[int, dict, Any]:
    """(status, JSON body, headers) of POST url with `data` as the body."""
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        body = error.read()
        assert body.count(b"\n") == 1 and body.endswith(b"\n"), f"not one line: {body!r}"
        return error.code, json.loads(body), error.headers


def test_batcher_batches_waiting_requests_and_never_holds_a_lone_one() -> None:
    sizes: list[int] = []

    def predict(images):
        time.sleep(0.02)
        sizes.append(len(images))
        return StandIn().predict(images)

    image = np.zeros((28, 28, 1), np.uint8)
    outstanding = [0]
    batcher = serve.Batcher(predict, max_batch=8, max_wait_s=2.0, expected=lambda: outstanding[0])
    try:
        started = time.monotonic()
        row, size = batcher.submit(image).result(timeout=10)
        assert size == 1 and row.quarter_turns.tolist() == [1]
        assert time.monotonic() - started < 1.5, "a lone request waited (2 s) for company"
        futures = [batcher.submit(image) for _ in range(20)]
        assert sum(future.result(timeout=10)[1] == 8 for future in futures) >= 8
        assert max(sizes) == 8 and len(sizes) < 1 + 20
    finally:
        batcher.close()
    unbatched = serve.Batcher(predict, max_batch=1, max_wait_s=0.5)
    try:
        assert {future.result(timeout=10)[1] for future in [unbatched.submit(image) for _ in range(4)]} == {1}
    finally:
        unbatched.close()


def test_concurrent_requests_share_model_calls() -> None:
    predictor = StandIn(delay_s=0.05)
    predictor.gate.clear()  # the first model call waits until all twelve requests are in
    with running(predictor, max_wait_ms=20) as url:
        results: list = []
        threads = [
            threading.Thread(target=lambda: results.append(post(url + "/v1/predict", png_bytes())))
            for _ in range(12)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while _health(url)["pending"] < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        predictor.gate.set()
        for thread in threads:
            thread.join(30)
        assert [status for status, _, _ in results] == [200] * 12
        assert max(body["batch_size"] for _, body, _ in results) > 1
        assert sum(predictor.sizes) == 12 and len(predictor.sizes) < 12
        body = results[0][1]
        assert body["angle_degrees"] == 90 and body["model"] == "stand-in" and body["timing_ms"]["total"] > 0


def _health(url: str) -> dict:
    with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
        return json.loads(response.read())


def test_a_full_queue_answers_503_and_the_service_recovers() -> None:
    predictor = StandIn()
    predictor.gate.clear()  # the model "hangs": requests pile up
    with running(predictor, max_pending=2, request_timeout_s=60) as url:
        held: list = []
        threads = [
            threading.Thread(target=lambda: held.append(post(url + "/v1/predict", png_bytes())))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while _health(url)["pending"] < 2 and time.monotonic() < deadline:  # /healthz is not admitted
            time.sleep(0.02)
        status, body, headers = post(url + "/v1/predict", png_bytes())
        assert (
            status == 503
            and "busy: 2 requests are pending" in body["error"]
            and headers["Retry-After"] == "1"
        )
        predictor.gate.set()
        for thread in threads:
            thread.join(30)
        assert [item[0] for item in held] == [200, 200]  # the held ones are answered once the model is back
        assert post(url + "/v1/predict", png_bytes())[0] == 200 and _health(url)["pending"] == 0


def test_requests_are_bounded_in_time() -> None:
    predictor = StandIn()
    predictor.gate.clear()
    with running(predictor, request_timeout_s=1.0) as url:
        started = time.monotonic()
        status, body, _ = post(url + "/v1/predict", png_bytes())  # the model never answers
        assert status == 503 and "no answer within 1 s" in body["error"]
        assert time.monotonic() - started < 20
        # An upload that stops arriving: 408 once the time is up.
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=20) as client:
            client.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"\x89PNG"
            )
            answer = b""
            while b"}" not in answer and (chunk := client.recv(4096)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
        predictor.gate.set()


def test_routes_and_refusals_are_one_line_json() -> None:
    with running(StandIn(), max_upload_bytes=1000) as url:
        for path, method, expected in (("/nowhere", "GET", 404), ("/v1/predict", "GET", 405)):
            request = urllib.request.Request(url + path, method=method)
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            assert caught.value.code == expected
            assert json.loads(caught.value.read())["status"] == expected
        request = urllib.request.Request(
            url + "/v1/predict",
            data=b"--x\r\n",
            method="POST",
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 415 and "not multipart" in json.loads(caught.value.read())["error"]
        status, body, _ = post(url + "/v1/correct?lossless=zip", png_bytes())
        assert status == 400 and "lossless must be one of exif, transpose" in body["error"]
        status, body, _ = post(url + "/v1/correct?lossless=exif", png_bytes())
        assert status == 400 and "add quarter-turns" in body["error"]
        status, body, _ = post(url + "/v1/predict", b"x" * 1001)
        assert status == 413 and "over the limit of 1,000 bytes" in body["error"]
        with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
            health = json.loads(response.read())
        assert health["status"] == "ok" and health["mode"] == "free-angle" and health["pending"] == 0
        with urllib.request.urlopen(url + "/", timeout=10) as response:
            page = response.read().decode()
        assert 'id="drop"' in page and "/v1/correct" in page
