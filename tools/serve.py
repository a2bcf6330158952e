"""`rotnet-serve MODEL`: an HTTP service and a web page that tell which way up a photo is and turn it upright.

    rotnet-serve data/runs/photos --quarter-turns              # http://127.0.0.1:8080/ (the page)
    curl -s --data-binary @photo.jpg http://127.0.0.1:8080/v1/predict
    # {"angle_degrees": 90, "confidence": 0.97, "quarter_turn": 1, ..., "model": "photos", "timing_ms": {...}}
    curl -s --data-binary @photo.jpg 'http://127.0.0.1:8080/v1/correct?lossless=exif' -o upright.jpg

Endpoints (Starlette on uvicorn; uploads are the raw request body, no multipart parser):

* `POST /v1/predict`  image bytes -> JSON: angle_degrees, confidence, quarter_turn, quarter_confidence,
  needs_rotation, kept, mode, model, batch_size (of the model call it rode in), timing_ms.
* `POST /v1/correct`  image bytes -> the corrected image in the upload's format (rotnet-correct's
  pieces: tools.correct.output_file); `?lossless=exif|transpose` (with --quarter-turns) turns a JPEG
  without re-encoding, `?crop=1`, `?keep_size=1` as rotnet-correct's options. The prediction is in the
  X-Rotnet-* headers.
* `GET /healthz`  {"status": "ok", model, mode, pending, batches, predictions}.
* `GET /`  the page: drop a photo, see it before and after, with the angle.

Dynamic batching: requests are decoded and prepared on `--decode-threads` threads; the prepared images
go to one model thread, which takes the first waiting image and then, while other admitted requests
are still on their way, waits at most `--max-wait-ms` for more, up to `--max-batch` per model call
(`--no-batching`: one image per call). Bounds: the upload's bytes (`--max-upload-bytes`, checked from
Content-Length before reading and while reading: 413), its pixels (`--max-pixels`, from the header
before decoding: 413), requests admitted at once (`--max-pending`: 503 with Retry-After when full), and
the time per request (`--request-timeout-s`: 408 while the body is still arriving, 503 after). Memory
is bounded by about max_pending x max_upload_bytes for bodies plus decode_threads decoded images.
Anything the service refuses is a 4xx (or 503) with a one-line JSON body {"error": "...", "status": N};
an unexpected failure is a 500 with the same one line, never a traceback. It binds 127.0.0.1 unless
`--host` says otherwise (it has no authentication: put it behind your own proxy to expose it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import click
import numpy as np

from pipeline import codec, interrupts
from tools import correct as correct_tool
from tools import lossless

DEFAULT_PORT = 8080
MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".gif": "image/gif",
}


@dataclass(frozen=True)
class Settings:
    """rotnet-serve's options (the CLI's defaults)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    batching: bool = True
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_bytes: int = 25 * 2**20
    max_pixels: int = 50_000_000
    max_pending: int = 64
    request_timeout_s: float = 30.0
    decode_threads: int = 2
    quarter_turns: bool = False
    min_confidence: float = 0.0
    tta: int = 1


class ServiceError(Exception):
    """A request refused: HTTP `status` and a one-line `message`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# --- Dynamic batching ---------------------------------------------------------------------------------


class Batcher:
    """One model thread: `submit(prepared)` -> Future of (row of the prediction, batch size).

    The thread takes the first waiting image; then, while `expected()` says admitted requests are still
    being decoded (or images are already queued), it waits at most `max_wait_s` in all for more, up to
    `max_batch` images, and predicts them in one call. A lone request is never held back waiting.
    """

    def __init__(
        self,
        predict: Callable[[list[np.ndarray]], Any],
        max_batch: int,
        max_wait_s: float,
        expected: Callable[[], int] = lambda: 0,
    ) -> None:
        self._predict, self.max_batch, self.max_wait_s, self._expected = (
            predict,
            max_batch,
            max_wait_s,
            expected,
        )
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.batches = self.predictions = 0
        self._thread = threading.Thread(target=self._run, name="rotnet-batcher", daemon=True)
        self._thread.start()

    def submit(self, prepared: np.ndarray) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((prepared, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _collect(self, first) -> list:
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._expected() <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=min(remaining, 0.001)))
            except queue.Empty:
                continue
        if None in batch:  # close() while collecting: answer these, then stop
            batch.remove(None)
            self._queue.put(None)
        return batch

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._collect(first)
            live = [(image, future) for image, future in batch if future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                prediction = self._predict([image for image, _ in live])
            except Exception as error:  # every request of the batch hears it (one line each)
                for _, future in live:
                    future.set_exception(error)
                continue
            self.batches += 1
            self.predictions += len(live)
            for index, (_, future) in enumerate(live):
                future.set_result((_row(prediction, index), len(live)))


def _row(prediction, index: int):
    """Row `index` of a Prediction, as a Prediction of one (what tools.correct.decisions reads)."""
    fields = ("angles_degrees", "confidence", "probabilities", "quarter_turns", "quarter_confidence")
    return type(prediction)(*(getattr(prediction, name)[index : index + 1] for name in fields))


# --- The application ----------------------------------------------------------------------------------


class Service:
    """The model, the batcher and the bounds behind the HTTP routes (no HTTP in here)."""

    def __init__(self, predictor: Any, settings: Settings, model_name: str) -> None:
        self.predictor, self.settings, self.model_name = predictor, settings, model_name
        self.pending = 0  # admitted requests not answered yet (changed on the event loop only)
        self.decoding = 0  # admitted requests not yet handed to the batcher
        self.decode_pool = concurrent.futures.ThreadPoolExecutor(
            settings.decode_threads, thread_name_prefix="rotnet-decode"
        )
        max_batch = settings.max_batch if settings.batching else 1
        self.batcher = Batcher(
            lambda images: predictor.predict(images, batch_size=len(images), tta=settings.tta),
            max_batch,
            settings.max_wait_ms / 1000.0,
            expected=lambda: self.decoding,
        )
        self.options = correct_tool.Options(
            quarter_turns=settings.quarter_turns, min_confidence=settings.min_confidence
        )

    def close(self) -> None:
        self.batcher.close()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def mode(self) -> str:
        return "quarter-turns" if self.settings.quarter_turns else "free-angle"

    def decode(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(decoded HWC pixels with EXIF applied, the model's prepared input); ServiceError for a bad upload."""
        if not data:
            raise ServiceError(400, "empty upload: send the image file's bytes as the request body")
        try:
            codec.check_image_header(io.BytesIO(data), self.settings.max_pixels)
            image = codec.decode_source_image(
                data, channels=1 if correct_tool._is_grey(data) else 3, max_pixels=self.settings.max_pixels
            )
        except codec.BadImageError as error:
            message = str(error).replace("raise --max-pixels", "raise rotnet-serve --max-pixels")
            status = 413 if "over the limit" in message or "decompression bomb" in message else 400
            if message.startswith("not an image file"):
                status = 415
            raise ServiceError(status, message) from None
        except MemoryError:
            raise ServiceError(413, "image too large to decode in memory; send a smaller one") from None
        except Exception as error:  # an undiagnosed decoder failure is this upload's error
            raise ServiceError(400, f"cannot decode the image ({type(error).__name__}: {error})") from None
        return image, self.predictor.prepare(image)

    def detection(self, row) -> correct_tool.Decision:
        return correct_tool.decisions(row, self.options)[0]

    def describe(self, row, decision: correct_tool.Decision, batch_size: int) -> dict[str, Any]:
        return {
            "angle_degrees": decision.angle_degrees,
            "confidence": round(decision.confidence, 4),
            "quarter_turn": int(row.quarter_turns[0]),
            "quarter_confidence": round(float(row.quarter_confidence[0]), 4),
            "needs_rotation": decision.needs_rotation,
            "kept": decision.keep,
            "mode": self.mode,
            "model": self.model_name,
            "batch_size": batch_size,
        }


def _json_error(status: int, message: str, headers: dict[str, str] | None = None):
    from starlette.responses import Response

    body = json.dumps({"error": " ".join(str(message).split()), "status": status}) + "\n"
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _read_body(request, settings: Settings, deadline: float) -> bytes:
    """The request body, at most max_upload_bytes (413 past it), arriving before `deadline` (408)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceError(400, "Content-Length is not a number")
        if int(declared) > settings.max_upload_bytes:
            raise ServiceError(
                413,
                f"upload of {int(declared):,} bytes is over the limit of {settings.max_upload_bytes:,} bytes",
            )
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/"):
        raise ServiceError(415, "send the image file's bytes as the body (not multipart/form-data)")
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceError(408, f"the upload did not arrive within {settings.request_timeout_s:g} s")
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=remaining)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise ServiceError(
                408, f"the upload did not arrive within {settings.request_timeout_s:g} s"
            ) from None
        size += len(chunk)
        if size > settings.max_upload_bytes:
            raise ServiceError(413, f"upload is over the limit of {settings.max_upload_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: Service):
    """The Starlette application around `service`."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from tools.serve_page import PAGE

    settings = service.settings

    async def run_in_pool(function, *arguments):
        return await asyncio.get_running_loop().run_in_executor(service.decode_pool, function, *arguments)

    async def predicted(request) -> tuple[bytes, np.ndarray, Any, correct_tool.Decision, int, dict]:
        """Admit, read, decode, predict: (body, pixels, prediction row, decision, batch size, timings)."""
        started = time.perf_counter()
        deadline = time.monotonic() + settings.request_timeout_s
        data = await _read_body(request, settings, deadline)
        read = time.perf_counter()
        service.decoding += 1
        handed = False
        try:
            image, prepared = await asyncio.wait_for(
                run_in_pool(service.decode, data), timeout=max(0.001, deadline - time.monotonic())
            )
            decoded = time.perf_counter()
            future = service.batcher.submit(prepared)
            service.decoding -= 1
            handed = True
            row, batch_size = await asyncio.wait_for(
                asyncio.wrap_future(future), timeout=max(0.001, deadline - time.monotonic())
            )
        except TimeoutError:
            raise ServiceError(
                503, f"no answer within {settings.request_timeout_s:g} s: the service is busy"
            ) from None
        finally:
            if not handed:
                service.decoding -= 1
        timings = {
            "read": round(1000 * (read - started), 2),
            "decode": round(1000 * (decoded - read), 2),
            "model": round(1000 * (time.perf_counter() - decoded), 2),
        }
        return data, image, row, service.detection(row), batch_size, timings

    def admitted(handler):
        async def guarded(request):
            if service.pending >= settings.max_pending:
                return _json_error(
                    503, f"busy: {service.pending} requests are pending (--max-pending); retry shortly",
                    {"Retry-After": "1"},
                )  # fmt: skip
            service.pending += 1
            started = time.perf_counter()
            try:
                return await handler(request, started)
            except ServiceError as error:
                return _json_error(error.status, error.message, error.headers)
            except Exception as error:  # a bug: one line, not a traceback
                return _json_error(500, f"internal error ({type(error).__name__}: {error})")
            finally:
                service.pending -= 1

        return guarded

    async def predict(request, started: float):
        _, _, row, decision, batch_size, timings = await predicted(request)
        body = service.describe(row, decision, batch_size)
        timings["total"] = round(1000 * (time.perf_counter() - started), 2)
        body["timing_ms"] = timings
        return JSONResponse(body)

    async def correct(request, started: float):
        query = request.query_params
        mode = query.get("lossless") or None
        if mode not in (None, *lossless.LOSSLESS_MODES):
            raise ServiceError(400, f"lossless must be one of {', '.join(lossless.LOSSLESS_MODES)}")
        partial = query.get("partial_mcu", "exif")
        if partial not in lossless.PARTIAL_MCU_CHOICES:
            raise ServiceError(400, f"partial_mcu must be one of {', '.join(lossless.PARTIAL_MCU_CHOICES)}")
        flags = {name: query.get(name, "0") in ("1", "true", "yes") for name in ("crop", "keep_size")}
        options = replace(service.options, lossless=mode, partial_mcu=partial, **flags)
        if options.problem():
            raise ServiceError(400, options.problem().replace("--", ""))
        data, image, row, decision, batch_size, timings = await predicted(request)
        from rotnet.api import file_suffix

        suffix = file_suffix(data)

        def write() -> tuple[bytes, str]:
            try:
                return correct_tool.output_file(data, image, suffix, decision, options)
            except lossless.LosslessError as error:
                raise ServiceError(422, f"cannot turn this file losslessly: {error}") from None

        written, action = await run_in_pool(write)
        timings["total"] = round(1000 * (time.perf_counter() - started), 2)
        description = service.describe(row, decision, batch_size)
        headers = {
            "X-Rotnet-Angle-Degrees": str(description["angle_degrees"]),
            "X-Rotnet-Confidence": str(description["confidence"]),
            "X-Rotnet-Quarter-Turn": str(description["quarter_turn"]),
            "X-Rotnet-Needs-Rotation": "1" if description["needs_rotation"] else "0",
            "X-Rotnet-Action": action.encode("ascii", "replace").decode("ascii"),
            "X-Rotnet-Model": service.model_name.encode("ascii", "replace").decode("ascii"),
            "X-Rotnet-Timing-Ms": str(timings["total"]),
        }
        return Response(
            written, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"), headers=headers
        )

    async def healthz(request):
        return JSONResponse(
            {
                "status": "ok",
                "model": service.model_name,
                "mode": service.mode,
                "pending": service.pending,
                "batches": service.batcher.batches,
                "predictions": service.batcher.predictions,
            }
        )

    async def page(request):
        return HTMLResponse(PAGE)

    async def http_error(request, error: HTTPException):
        return _json_error(error.status_code, error.detail)

    async def server_error(request, error: Exception):
        return _json_error(500, f"internal error ({type(error).__name__})")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    return Starlette(
        routes=[
            Route("/v1/predict", admitted(predict), methods=["POST"]),
            Route("/v1/correct", admitted(correct), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/", page, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )


def model_name(path: str) -> str:
    """A short name for the model: its run directory's name."""
    path = os.path.normpath(os.path.abspath(path))
    if os.path.basename(path) in ("saved_model", "model.keras"):
        path = os.path.dirname(path)
    return os.path.splitext(os.path.basename(path))[0]


def warm_up(predictor: Any, settings: Settings) -> None:
    """One prediction at batch 1 and at max_batch, so the first requests do not pay for tracing."""
    height, width = predictor.image_size
    for size in sorted({1, settings.max_batch if settings.batching else 1}):
        predictor.predict([np.zeros((height, width, predictor.channels), np.uint8)] * size, batch_size=size)


# --- Command ------------------------------------------------------------------------------------------


@click.command(
    cls=interrupts.Command,
    interrupted="the service stopped once the requests in flight were answered; it wrote nothing; "
    "start it again with the same command",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.argument("model", metavar="MODEL")
@click.option("--host", default=Settings.host, show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="TCP port."
)
@click.option(
    "--quarter-turns", is_flag=True, help="Answer 0/90/180/270 only, as rotnet-correct --quarter-turns."
)
@click.option(
    "--min-confidence",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Below this confidence, needs_rotation is false and /v1/correct returns the upload unchanged.",
)
@click.option(
    "--tta",
    type=click.Choice(["1", "2", "4"]),
    default="1",
    show_default=True,
    help="Test-time augmentation.",
)
@click.option("--no-batching", is_flag=True, help="One image per model call (dynamic batching off).")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=Settings.max_batch, show_default=True,
              help="Most images per model call.")  # fmt: skip
@click.option("--max-wait-ms", type=click.FloatRange(0, 1000), default=Settings.max_wait_ms, show_default=True,
              help="Longest a batch waits for more requests (only while others are on their way).")  # fmt: skip
@click.option("--max-upload-bytes", type=click.IntRange(1), default=Settings.max_upload_bytes, show_default=True,
              help="Larger uploads get 413 (checked before and while reading).")  # fmt: skip
@click.option("--max-pixels", type=click.IntRange(1), default=Settings.max_pixels, show_default=True,
              help="Images whose header claims more pixels get 413 before they are decoded.")  # fmt: skip
@click.option("--max-pending", type=click.IntRange(1), default=Settings.max_pending, show_default=True,
              help="Requests admitted at once; more get 503 with Retry-After.")  # fmt: skip
@click.option("--request-timeout-s", type=click.FloatRange(0.1), default=Settings.request_timeout_s,
              show_default=True, help="Longest a request may take (408 while uploading, 503 after).")  # fmt: skip
@click.option("--decode-threads", type=click.IntRange(1, 64), default=Settings.decode_threads, show_default=True,
              help="Threads decoding and preparing uploads.")  # fmt: skip
def main(model: str, host: str, port: int, quarter_turns: bool, min_confidence: float, tta: str, no_batching: bool,
         max_batch: int, max_wait_ms: float, max_upload_bytes: int, max_pixels: int, max_pending: int,
         request_timeout_s: float, decode_threads: int) -> None:  # fmt: skip
    """Serve MODEL (a rotnet-train output directory, model.keras, SavedModel, or rotnet-export's
    .tflite/.onnx) over HTTP: POST /v1/predict, POST /v1/correct, GET /healthz and the page at /."""
    if not os.path.exists(model):
        raise click.BadParameter(f"{model} does not exist", param_hint="MODEL")
    settings = Settings(
        host, port, not no_batching, max_batch, max_wait_ms, max_upload_bytes, max_pixels, max_pending,
        request_timeout_s, decode_threads, quarter_turns, min_confidence, int(tta),
    )  # fmt: skip
    import uvicorn

    try:
        predictor = correct_tool.load_predictor(model)
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot load model {model}: {error}") from None
    except correct_tool.EvaluationError as error:
        raise click.ClickException(str(error)) from None
    warm_up(predictor, settings)
    service = Service(predictor, settings, model_name(model))
    app = create_app(service)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_keep_alive=5,
        limit_concurrency=2 * max_pending + 16, server_header=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    click.echo(
        f"rotnet-serve: {model_name(model)} ({service.mode}, batching "
        f"{'up to ' + str(max_batch) if settings.batching else 'off'}) on http://{host}:{port}/",
        err=True,
    )
    try:
        server.run()
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({error.strerror}); choose another --port"
        ) from None
    finally:
        service.close()


if __name__ == "__main__":
    main()
