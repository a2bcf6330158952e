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


# --- Scale-out servers (tests/servers.py): one of each per test session, all on 127.0.0.1 ----------


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """gcp-storage-emulator in a subprocess (in memory), stopped at the end of the session."""
    from tests.servers import GcsEmulator

    with GcsEmulator(log=tmp_path_factory.mktemp("gcs-emulator") / "emulator.log") as emulator:
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_emulator, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the emulator, and this process pointed at it: yields "gs://BUCKET".

    STORAGE_EMULATOR_HOST is set for the test (and the subprocesses it starts); credentials are what
    the commands themselves choose (schemas.gcs.use_emulator_credentials), so the tests see the
    user's path. The bucket is named after the test (plus a random suffix), so tests never share objects.
    """
    import re
    import uuid

    readable = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"rotnet-{readable}-{uuid.uuid4().hex[:8]}"  # at most 63 characters, as GCS requires
    gcs_emulator.create_bucket(name)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    # set, then deleted: monkeypatch then also removes what the commands set in this process
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    return f"gs://{name}"


@pytest.fixture(scope="session")
def googleapis_proxy(gcs_emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The TLS-terminating proxy that takes TensorFlow's GCS client to the emulator."""
    from tests.servers import GoogleApisProxy

    with GoogleApisProxy(gcs_emulator.port, tmp_path_factory.mktemp("googleapis-ca")) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def beam_worker_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Beam's Python worker pool (the EXTERNAL environment of Flink/Spark) on 127.0.0.1, with this
    environment: rotnet importable, and this interpreter first on PATH (the pool starts its workers as
    `python -c ...`, whatever `python` is first on PATH)."""
    import sys

    from tests.servers import BeamWorkerPool

    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with BeamWorkerPool(env, tmp_path_factory.mktemp("worker-pool") / "pool.log") as pool:
        yield pool


# --- A tiny trained model, once per test session (per xdist worker) -----------------------------------


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"records": ..., "run": ...}: synthetic 28 px records at 0/90/180/270 degrees and a MNIST CNN
    trained on them for two steps by rotnet-train (seconds; what it predicts is not the point, that the
    real model, its files and the tools around it work together is). Used by the API and serve tests."""
    from click.testing import CliRunner

    from tests.factories import write_records_dir
    from trainer.cli import main as train_main

    root = tmp_path_factory.mktemp("tiny-model")
    write_records_dir(root / "records", images_per_split={"train": 6, "validation": 2})
    arguments = ["--records", str(root / "records"), "--output", str(root / "run"), "--epochs", "1"]
    arguments += ["--steps-per-epoch", "2", "--batch-size", "8", "--no-tensorboard"]
    result = CliRunner().invoke(train_main, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"records": root / "records", "run": root / "run"}


# Screenshots and other files a test keeps for people to look at (build/ is git-ignored).
TEST_ARTIFACTS = Path(os.environ.get("ROTNET_TEST_ARTIFACTS", REPO_ROOT / "build" / "test-artifacts"))

# rotnet-serve's bounds in the tests: small, so hostile uploads cost little.
SERVE_MAX_UPLOAD_BYTES = 2_000_000
SERVE_MAX_PIXELS = 4_000_000


@pytest.fixture(scope="session")
def rotnet_serve(tiny_model: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """`rotnet-serve` on the tiny model (--quarter-turns) on 127.0.0.1:<free port>, once per session
    (per xdist worker), stopped by PID at the end."""
    from tests.servers import RotnetServe

    log = tmp_path_factory.mktemp("rotnet-serve") / "serve.log"
    options = ["--quarter-turns", "--max-upload-bytes", str(SERVE_MAX_UPLOAD_BYTES)]
    options += ["--max-pixels", str(SERVE_MAX_PIXELS), "--request-timeout-s", "60"]
    with RotnetServe(tiny_model["run"], log, *options) as server:
        yield server


# --- Session clusters (tests/test_flink_cluster.py, tests/test_spark_cluster.py; `make test-cluster`) ---


def _require_java() -> None:
    """Cluster tests need Java: without it they are skipped, with the reason, only outside CI (where
    `CI` is set they fail instead: CI must run them)."""
    from pipeline.engines.cluster import java_problem

    problem = java_problem()
    if problem and not os.environ.get("CI"):
        pytest.skip(f"cluster tests need Java: {problem}")
    if problem:
        pytest.fail(f"CI is set but the cluster tests cannot run: {problem}")


def _session_cluster(
    kind: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator:
    """Fetch (once, into the user cache) and start a cluster of `kind` for the whole test session;
    stopped by PID at the end, also after a failure or Ctrl-C (the context manager), and with
    PR_SET_PDEATHSIG even if pytest itself is killed. Its logs stay in pytest's tmp folder, whose path
    a failed test's report names."""
    from pipeline.engines import cluster, dist

    _require_java()
    dist.fetch(dist.engine(kind), log=lambda line: print(line))
    directory = tmp_path_factory.mktemp(f"{kind}-cluster")
    with cluster.CLUSTERS[kind](directory, kill_on_parent_exit=True) as session:
        request.config.stash.setdefault(_CLUSTER_LOGS, []).append(str(directory / "log"))
        yield session


_CLUSTER_LOGS = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def flink_cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator:
    """A Flink 1.19 session cluster on 127.0.0.1: 1 JobManager + 2 TaskManagers (tm-1, tm-2), one slot each."""
    yield from _session_cluster("flink", tmp_path_factory, request)


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator:
    """A Spark 3.5 standalone cluster on 127.0.0.1: 1 Master + 2 Workers, one core each."""
    yield from _session_cluster("spark", tmp_path_factory, request)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    """A failed test that used a cluster says where the cluster's logs are (kept in pytest's tmp)."""
    outcome = yield
    report = outcome.get_result()
    logs = item.config.stash.get(_CLUSTER_LOGS, [])
    if report.failed and logs and {"flink_cluster", "spark_cluster"} & set(getattr(item, "fixturenames", ())):
        report.sections.append(("cluster logs", "\n".join(logs)))
