"""Servers the scale-out tests start on 127.0.0.1: a GCS emulator, a TLS-terminating proxy in front of it
for TensorFlow's GCS client, and a Beam worker pool. Every one listens on a free port, starts within a
bounded time, and is stopped by whoever started it (the fixtures in tests/conftest.py).

    with GcsEmulator() as emulator:                  # gcp-storage-emulator, in memory
        emulator.create_bucket("rotnet-test")
        env = emulator.environment()                  # STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT
    with GoogleApisProxy(emulator.port, tmp) as proxy:
        env = proxy.environment()                     # HTTPS_PROXY + CURL_CA_BUNDLE + a test token
    with BeamWorkerPool() as pool:                    # --environment_config 127.0.0.1:PORT
        ...

Why a proxy: TensorFlow's GCS filesystem hard-codes https://www.googleapis.com and
https://storage.googleapis.com and ignores STORAGE_EMULATOR_HOST. Its libcurl does honour HTTPS_PROXY
and CURL_CA_BUNDLE, so the proxy answers CONNECT for those hosts, terminates TLS with a certificate from
a CA made for the test, and pipes the decrypted HTTP to the emulator, which serves both URL styles
(JSON API paths and /BUCKET/OBJECT downloads). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 60  # a cold Python + import on 2 busy cores; normally ~1 s
GOOGLE_API_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")
# TensorFlow's GCS auth provider takes a bearer token from this variable instead of asking a metadata
# server or Google's OAuth endpoint; the emulator ignores the token.
TF_TEST_TOKEN_VARIABLE = "GOOGLE_AUTH_TOKEN_FOR_TESTING"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen | None, what: str, log: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {process.returncode} before listening:\n{output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class GcsEmulator:
    """`gcp-storage-emulator` in a subprocess, in memory, on 127.0.0.1:<free port>."""

    def __init__(self, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> GcsEmulator:
        command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--in-memory", "--quiet"]
        output = open(self._log, "wb") if self._log else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        finally:
            if self._log:
                output.close()
        try:
            _wait_for_port(self.port, self._process, "gcp-storage-emulator", self._log)
        except BaseException:
            _stop(self._process)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            _stop(self._process)

    def environment(self) -> dict[str, str]:
        """What a process needs to talk to this emulator through Beam / google-cloud-storage."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def create_bucket(self, name: str) -> None:
        self._request("POST", "/storage/v1/b?project=test", f'{{"name": "{name}"}}'.encode())

    def wipe(self) -> None:
        """Delete every object and bucket (the emulator's own test endpoint)."""
        self._request("GET", "/wipe")

    def alive(self) -> bool:
        try:
            self._request("GET", "/")
        except (urllib.error.URLError, OSError):
            return False
        return True


# --- A throwaway certificate authority and the proxy TensorFlow talks to ---------------------------


def make_test_ca(directory: Path, hosts: tuple[str, ...] = GOOGLE_API_HOSTS) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key): a CA made now and a certificate for `hosts` it signed.

    Only processes told to trust ca.pem (CURL_CA_BUNDLE) accept it; it is valid for one day.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("rotnet test CA"))
        .issuer_name(name("rotnet test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host) for host in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


class GoogleApisProxy:
    """An HTTPS proxy on 127.0.0.1 that sends Google API hosts to the emulator (see the module doc).

    Answers `CONNECT host:443` only for GOOGLE_API_HOSTS (anything else gets 403, so a test cannot
    reach out by accident), terminates TLS with the test CA's certificate, and copies bytes both ways
    between the client and a plain connection to the emulator. `connects` records every host asked for.
    """

    IDLE_TIMEOUT_S = 30  # a tunnel with no traffic for this long is closed

    def __init__(self, emulator_port: int, directory: Path) -> None:
        self.emulator_port = emulator_port
        self.ca_path, cert_path, key_path = make_test_ca(directory)
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert_path, key_path)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connects: list[str] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="googleapis-proxy")

    def __enter__(self) -> GoogleApisProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def environment(self) -> dict[str, str]:
        """What TensorFlow's GCS client needs to reach the emulator through this proxy."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "CURL_CA_BUNDLE": str(self.ca_path),
            TF_TEST_TOKEN_VARIABLE: "rotnet-test-token",
            "NO_GCE_CHECK": "True",
        }

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.5)
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(self.IDLE_TIMEOUT_S)
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, *_ = request_line.split(" ")
            host = target.rsplit(":", 1)[0]
            self.connects.append(host)
            if method != "CONNECT" or host not in GOOGLE_API_HOSTS:
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tls = self._tls.wrap_socket(client, server_side=True)
            with socket.create_connection(("127.0.0.1", self.emulator_port), timeout=10) as upstream:
                self._pipe(tls, upstream)
        except (OSError, ssl.SSLError, ValueError):
            pass  # the client went away or spoke nonsense: nothing to report to anyone
        finally:
            client.close()

    def _pipe(self, tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        sockets = [tls, upstream]
        while not self._closing.is_set():
            # SSL sockets may hold decrypted bytes select() cannot see.
            readable = [tls] if tls.pending() else []
            if not readable:
                readable, _, _ = select.select(sockets, [], [], self.IDLE_TIMEOUT_S)
                if not readable:
                    return
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                (upstream if source is tls else tls).sendall(data)


class ForbiddenServer:
    """An HTTP server on 127.0.0.1 that answers every request as GCS does a caller without access (403,
    GCS's JSON error): the upstream for "unauthorised" cases, for Beam (as STORAGE_EMULATOR_HOST) and for
    TensorFlow (behind a GoogleApisProxy)."""

    BODY = (
        b'{"error": {"code": 403, "message": "rotnet-test@example.com does not have storage.objects.get '
        b'access to the Google Cloud Storage object.", "errors": [{"reason": "forbidden"}]}}'
    )

    def __init__(self) -> None:
        import http.server

        body = self.BODY

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forbid(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forbid  # noqa: N815 (http.server's names)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ForbiddenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class BeamWorkerPool:
    """`python -m apache_beam.runners.worker.worker_pool_main` on 127.0.0.1: the EXTERNAL environment
    Flink and Spark use for Python workers, in a subprocess with its own environment variables."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._env = env
        self._log = log
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> BeamWorkerPool:
        command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main"]
        command += [f"--service_port={self.port}"]
        with open(self._log, "wb") as output:
            self._process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=self._env, start_new_session=True
            )
        try:
            _wait_for_port(self.port, self._process, "the Beam worker pool", self._log)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            # The pool starts one SDK worker process per job, in its session: stop them all.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, 15)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, 9)
                self._process.wait(timeout=10)


class RotnetServe:
    """`rotnet-serve MODEL` in a subprocess on 127.0.0.1:<free port>, stopped (by PID) on exit.

    Ready when GET /healthz answers (the model is loaded and warmed up by then); `url` is its base.
    """

    def __init__(self, model: Path | str, log: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._command = [sys.executable, "-m", "tools.serve", str(model), "--port", str(self.port), *options]
        self._log = log
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> RotnetServe:
        with open(self._log, "wb") as output:
            self._process = subprocess.Popen(self._command, stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_for_port(self.port, self._process, "rotnet-serve", self._log)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(self.url + "/healthz", timeout=5) as response:
                        if response.status == 200:
                            return self
                except (urllib.error.URLError, OSError):
                    time.sleep(0.2)
            raise RuntimeError(f"rotnet-serve did not answer /healthz within {START_TIMEOUT_S} s")
        except BaseException:
            _stop(self._process)
            raise

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            _stop(self._process)

    def wait(self, timeout: float) -> int:
        """The exit status once the service has ended by itself (after a signal the test sent)."""
        assert self._process is not None
        return self._process.wait(timeout=timeout)

    def log_text(self) -> str:
        return self._log.read_text(errors="replace")
