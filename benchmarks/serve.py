"""rotnet-serve under load: requests/s and p50/p99 latency at 1 and 16 concurrent clients, batching on/off.

    rotnet-bench serve

Two models with random weights (speed does not depend on what a model learnt; nothing is downloaded),
saved as the trainer saves them (trainer.predict.export_saved_model): mnist-cnn-bn at 28 px grey, sent a
28 px PNG, and mobilenet-v3-small at 224 px RGB, sent a 224 px JPEG (a Street View sample, or random
pixels without the samples). For each model two `rotnet-serve` processes run at once on 127.0.0.1, one
with dynamic batching (the defaults: up to 32 images per model call, at most 5 ms of waiting) and one
with --no-batching; the clients (threads of this process, one keep-alive connection each, POST
/v1/predict) take turns on the two servers window by window, so load from other users of the machine
falls on both alike. Reported: requests/s as the median of the windows (range in brackets), p50 and
p99 latency over every request of those windows, images per model call (the servers' /healthz), and
the ratio batching / no batching at 16 clients (issue 33's target: >= 2x).

The clients share the machine's cores with the server (and with other users): on 2 cores the figures
are the service's throughput under that competition, not its ceiling.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.common import load_verdict

MODELS = (("mnist-cnn-bn", 28, 1), ("mobilenet-v3-small", 224, 3))
CLIENTS = (1, 16)
START_TIMEOUT_S = 180.0


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build(work: Path, name: str, size: int, channels: int) -> Path:
    """A random-weight model saved as rotnet-train saves it; returns its SavedModel directory."""
    import keras

    from benchmarks.inference import _config
    from trainer.config import TrainConfig
    from trainer.heads import Head
    from trainer.models import build_model
    from trainer.predict import export_saved_model

    config = _config(name, size, channels)
    keras.utils.set_random_seed(0)
    model = build_model(TrainConfig.from_dict(config), Head("classification", tuple(config["bin_angles"])))
    path = work / name / "saved_model"
    export_saved_model(model, config, str(path))
    keras.backend.clear_session()
    return path


def payload(size: int, channels: int) -> bytes:
    """What a client sends: a 28 px grey PNG, or a 224 px JPEG (a Street View sample when there is one)."""
    from PIL import Image

    if channels == 1:
        pixels = np.random.default_rng(0).integers(0, 256, (size, size), np.uint8)
        image, file_format = Image.fromarray(pixels), "PNG"
    else:
        try:
            from benchmarks.common import street_view_samples

            image = Image.open(street_view_samples()[0]).convert("RGB").resize((size, size))
        except (FileNotFoundError, IndexError):
            image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8))
        file_format = "JPEG"
    buffer = io.BytesIO()
    image.save(buffer, format=file_format, quality=90)
    return buffer.getvalue()


class Server:
    """`rotnet-serve MODEL` (python -m tools.serve) on 127.0.0.1:<free port>; stopped by PID."""

    def __init__(self, model: Path, log: Path, *options: str) -> None:
        self.port = _free_port()
        command = [sys.executable, "-m", "tools.serve", str(model), "--port", str(self.port), *options]
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rotnet-serve exited with {self.process.returncode}: see {log}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"rotnet-serve did not start within {START_TIMEOUT_S:.0f} s")

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self._log.close()


def window(port: int, body: bytes, clients: int, seconds: float) -> tuple[int, float, list[float]]:
    """(requests answered 200, elapsed s, latencies in s) of `clients` threads posting for `seconds`."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.connect()
        start_gate.wait()
        mine = []
        try:
            while time.perf_counter() < stop_at[0]:
                sent = time.perf_counter()
                connection.request("POST", "/v1/predict", body=body)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(str(response.status))
                    continue
                mine.append(time.perf_counter() - sent)
        except (OSError, http.client.HTTPException) as error:
            failures.append(f"{type(error).__name__}: {error}")
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    start_gate.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return len(latencies), time.perf_counter() - started, latencies


def measure(model: Path, body: bytes, work: Path, windows: int, seconds: float) -> dict:
    """{(batching, clients): {rates, latencies, images_per_call}} for one model, the two servers in turn."""
    servers = {
        "on": Server(model, work / "batching.log"),
        "off": Server(model, work / "no-batching.log", "--no-batching"),
    }
    results: dict = {}
    try:
        for server in servers.values():  # warm-up: connections, allocations, the first batches
            for clients in CLIENTS:
                window(server.port, body, clients, min(1.0, seconds))
        for clients in CLIENTS:
            counts = {mode: server.health() for mode, server in servers.items()}
            for _ in range(windows):
                for mode, server in servers.items():
                    answered, elapsed, latencies = window(server.port, body, clients, seconds)
                    entry = results.setdefault((mode, clients), {"rates": [], "latencies": []})
                    entry["rates"].append(answered / elapsed)
                    entry["latencies"].extend(latencies)
            for mode, server in servers.items():
                after = server.health()
                calls = after["batches"] - counts[mode]["batches"]
                images = after["predictions"] - counts[mode]["predictions"]
                results[(mode, clients)]["images_per_call"] = images / max(calls, 1)
    finally:
        for server in servers.values():
            server.stop()
    return results


def _rate_cell(rates: list[float]) -> str:
    median = float(np.median(rates))
    decimals = 0 if median >= 100 else 1
    return f"{median:.{decimals}f} ({min(rates):.{decimals}f}-{max(rates):.{decimals}f})"


def render(
    measured: dict, windows: int, seconds: float, load: tuple[float, float], uptime: tuple[str, str]
) -> str:
    cores = os.cpu_count() or 1
    lines = [
        f"Load average (1 min) on the {cores} cores: {load[0]:.1f} at the start, {load[1]:.1f} at the end "
        f'(`uptime`: "{uptime[0]}" / "{uptime[1]}"; the start is other developers\' jobs, the end also '
        "this benchmark's own servers and clients, which share the cores by design). " + load_verdict(*load),
        "",
        f"Requests/s: median of {windows} windows of {seconds:g} s per setting (range in brackets), the "
        "batching and no-batching servers taking turns window by window; latency percentiles over every "
        "request of those windows; images per model call from the servers' /healthz. POST /v1/predict, "
        "random-weight models, one keep-alive connection per client.",
        "",
        "| model (payload) | clients | batching | requests/s | p50 ms | p99 ms | images per model call |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratios = []
    for name, (results, payload_text) in measured.items():
        for clients in CLIENTS:
            for mode in ("on", "off"):
                entry = results[(mode, clients)]
                latencies = np.asarray(entry["latencies"]) * 1000
                lines.append(
                    f"| {name} ({payload_text}) | {clients} | {mode} | {_rate_cell(entry['rates'])} | "
                    f"{np.percentile(latencies, 50):.1f} | {np.percentile(latencies, 99):.1f} | "
                    f"{entry['images_per_call']:.1f} |"
                )
        on, off = (float(np.median(results[(mode, 16)]["rates"])) for mode in ("on", "off"))
        ratios.append(f"{name} {on / off:.1f}x")
    lines += [
        "",
        "Batching / no batching at 16 clients (medians; target >= 2x): " + ", ".join(ratios) + ".",
    ]
    return "\n".join(lines) + "\n"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def run(quick: bool = False) -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainer.quiet import import_tensorflow

    import_tensorflow()
    windows, seconds = (2, 1.0) if quick else (5, 3.0)
    models = MODELS[:1] if quick else MODELS
    load_start, uptime_start = os.getloadavg()[0], _uptime()
    measured = {}
    with tempfile.TemporaryDirectory(prefix="rotnet-bench-serve-") as directory:
        work = Path(directory)
        for name, size, channels in models:
            model = build(work, name, size, channels)
            body = payload(size, channels)
            description = f"{size} px {'PNG' if channels == 1 else 'JPEG'}, {len(body):,} bytes"
            started = time.perf_counter()
            measured[name] = (measure(model, body, work / name, windows, seconds), description)
            print(f"{name}: measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return render(measured, windows, seconds, (load_start, os.getloadavg()[0]), (uptime_start, _uptime()))
