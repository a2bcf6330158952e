"""A Beam worker pool (the EXTERNAL environment) that several TaskManagers can share.

    python -m pipeline.engines.worker_pool --port 50000 --log-dir /tmp/pool   # what launch.WorkerPool runs

Beam's own pool (`apache_beam.runners.worker.worker_pool_main`) keeps its SDK worker processes in a
dict keyed by the worker id a runner sends, and stops the process of that id on StopWorker. Each
Flink TaskManager numbers its workers itself ("1-1", "2-1", ...), so with two TaskManagers on one pool
the ids collide: the second StartWorker "1-1" overwrites the first, and the first TaskManager's
StopWorker "1-1" kills the *other* TaskManager's worker mid-bundle (seen on Flink 1.19 + Beam 2.77:
"CANCELLED: client cancelled", job FAILED). This pool keeps every worker, whatever its id, and does not
kill on StopWorker: an SDK worker ends by itself when the runner closes its control stream (which the
TaskManager does before StopWorker), and whatever is left ends with the pool (its process group, which
launch.WorkerPool stops at the end of the run).

Each worker runs with this interpreter (not `python` from PATH), its output appended to
LOG_DIR/worker-<n>.log.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc

_HARNESS = (
    "from apache_beam.runners.worker.sdk_worker import SdkHarness; "
    "SdkHarness({control!r}, worker_id={worker_id!r}, state_cache_size=0, data_buffer_time_limit_ms=-1).run()"
)


class SharedWorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    """StartWorker: a new SDK worker process for every request; StopWorker: nothing to kill."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: list[subprocess.Popen] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def StartWorker(self, request, context):  # noqa: N802 (gRPC's name)
        command = [
            sys.executable,
            "-c",
            _HARNESS.format(control=request.control_endpoint.url, worker_id=request.worker_id),
        ]
        with self._lock:
            number = next(self._numbers)
            try:
                with open(self.log_dir / f"worker-{number}.log", "ab") as log:
                    log.write(
                        f"worker id {request.worker_id}, control {request.control_endpoint.url}\n".encode()
                    )
                    log.flush()
                    self.workers.append(
                        subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, close_fds=True)
                    )
            except OSError as error:
                return beam_fn_api_pb2.StartWorkerResponse(error=f"cannot start an SDK worker: {error}")
            self.workers = [worker for worker in self.workers if worker.poll() is None]  # reap the finished
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request, context):  # noqa: N802
        return beam_fn_api_pb2.StopWorkerResponse()

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()


def main(argv: list[str] | None = None) -> None:
    import grpc

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1 to serve on.")
    parser.add_argument("--log-dir", type=Path, required=True, help="Folder for the workers' logs.")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    arguments.log_dir.mkdir(parents=True, exist_ok=True)
    pool = SharedWorkerPool(arguments.log_dir)
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=16))
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.add_insecure_port(f"127.0.0.1:{arguments.port}")
    server.start()
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    print(f"worker pool listening on 127.0.0.1:{arguments.port}", flush=True)
    while not stopped.wait(5.0):  # collect finished workers (no zombies while the run lasts)
        with pool._lock:
            pool.workers = [worker for worker in pool.workers if worker.poll() is None]
    server.stop(grace=2)
    pool.stop_all()


if __name__ == "__main__":
    main()
