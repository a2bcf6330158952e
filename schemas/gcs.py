"""gs:// access for every command: credentials for a GCS emulator, a fast credentials check, and one-line
messages for failures. Imports neither Beam nor TensorFlow (it only names their exceptions).

How Beam 2.77 picks GCS credentials: every `GcsIO` (one per FileSystems call) builds a
google-cloud-storage client with `apache_beam.internal.gcp.auth.get_service_credentials`, which calls
`google.auth.default()` once per process with 4 retries and exponential back-off (~24 s when there are
no credentials) before it falls back to an anonymous client. google-cloud-storage would use anonymous
credentials itself under STORAGE_EMULATOR_HOST, but Beam always passes the ones it found. So, when an
emulator is set and no credentials are configured, `use_emulator_credentials` points
GOOGLE_APPLICATION_CREDENTIALS at a token-only credentials file: `google.auth.default()` then returns at
once (no retry, no metadata server, no refresh: the token never expires), and the emulator ignores the
token. Environment variables reach Beam's worker processes too, which a patched Beam function would
not. Against real GCS nothing changes: without STORAGE_EMULATOR_HOST this module sets nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator, MutableMapping, Sequence

from schemas import output_rules

EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
CREDENTIALS_VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"
CREDENTIALS_FIX = (
    "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service "
    "account key file (or STORAGE_EMULATOR_HOST for a GCS emulator)"
)
# An authorized_user credential google.auth accepts without a network round trip: a token that never
# expires (google.auth treats a credential without a future expiry as expired and would refresh it).
_EMULATOR_CREDENTIALS = {
    "type": "authorized_user",
    "client_id": "rotnet-storage-emulator",
    "client_secret": "unused",
    "refresh_token": "unused",
    "token": "storage-emulator",
    "expiry": "2999-01-01T00:00:00Z",
}


def is_gcs(path: str | None) -> bool:
    return bool(path) and path.startswith("gs://")


def emulator_host(environ: MutableMapping[str, str] = os.environ) -> str | None:
    return environ.get(EMULATOR_VARIABLE) or None


def use_emulator_credentials(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """With STORAGE_EMULATOR_HOST set and no GOOGLE_APPLICATION_CREDENTIALS, point the latter at a
    token-only credentials file (see the module doc); returns its path, or None when nothing was set."""
    if not emulator_host(environ) or environ.get(CREDENTIALS_VARIABLE):
        return None
    path = os.path.join(tempfile.gettempdir(), f"rotnet-storage-emulator-credentials-{os.getuid()}.json")
    text = json.dumps(_EMULATOR_CREDENTIALS)
    try:
        with open(path) as handle:
            current = handle.read()
    except OSError:
        current = None
    if current != text:  # readable by this user alone, as mkstemp makes it
        output_rules.write_aside(path, text, prefix=".rotnet-credentials-", mode=0o600)
    environ[CREDENTIALS_VARIABLE] = path
    # google.auth then warns on every process that the credentials name no project: true and harmless.
    logging.getLogger("google.auth._default").setLevel(logging.ERROR)
    return path


def storage_problem(
    paths: Sequence[str | None], environ: MutableMapping[str, str] = os.environ
) -> str | None:
    """A one-line reason why these gs:// paths cannot be used, found in a second or two, or None (also
    when no path is on gs://): no Google credentials, or the emulator / GCS endpoint not reachable.
    Without this, Beam spends ~24 s retrying for credentials and then up to 120 s per call timing out,
    and TensorFlow retries 10 times, before either says anything."""
    remote = [path for path in paths if is_gcs(path)]
    if not remote:
        return None
    if emulator_host(environ):
        use_emulator_credentials(environ)
        host = emulator_host(environ) or ""
        if not _can_connect(host):
            return (
                f"{remote[0]}: the GCS emulator {EMULATOR_VARIABLE}={host} does not answer; start it, "
                f"or unset {EMULATOR_VARIABLE} to use Google Cloud Storage"
            )
        return None
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError:
        return None  # no google-auth here: whichever library reads gs:// reports it
    try:
        google.auth.default()
    except DefaultCredentialsError:
        return (
            f"{remote[0]} is on Google Cloud Storage but no Google credentials were found: {CREDENTIALS_FIX}"
        )
    except Exception as error:  # a malformed key file, say
        return (
            f"{remote[0]}: the Google credentials cannot be loaded ({_first_line(error)}): {CREDENTIALS_FIX}"
        )
    proxy = environ.get("HTTPS_PROXY") or environ.get("https_proxy")
    endpoint = proxy or "https://storage.googleapis.com"
    if not _can_connect(endpoint):
        return (
            f"cannot reach {remote[0]}: no connection to {endpoint}"
            + (" (HTTPS_PROXY)" if proxy else "")
            + "; check the network, or use local paths"
        )
    return None


def tensorflow_emulator_problem(path: str, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Why TensorFlow cannot read gs:// `path` from the emulator, or None. TensorFlow's own GCS client
    (tf.io.gfile, tf.data: what the trainer reads shards with) ignores STORAGE_EMULATOR_HOST and always
    calls storage.googleapis.com / www.googleapis.com, so with an emulator and no HTTPS proxy to carry
    those names to it, it would read another store (or nothing) while Beam reads the emulator."""
    host = emulator_host(environ)
    if not is_gcs(path) or not host or environ.get("HTTPS_PROXY") or environ.get("https_proxy"):
        return None
    return (
        f"{path}: TensorFlow's GCS client, which reads the shards, ignores {EMULATOR_VARIABLE}={host} "
        "(it always calls storage.googleapis.com); to train from the emulator set HTTPS_PROXY to a proxy "
        "that takes *.googleapis.com to it and CURL_CA_BUNDLE to that proxy's CA (docs/trainer.md, "
        f"'gs:// without a cloud'), or copy the records to a local directory, or unset {EMULATOR_VARIABLE} "
        "to read Google Cloud Storage"
    )


@contextlib.contextmanager
def failures_in_one_line(paths: Sequence[str | None], error_type: type[Exception]) -> Iterator[None]:
    """Check `paths` first (`storage_problem`), then turn a failure to reach or use gs:// inside the block
    into `error_type` with one line naming the path and the fix, instead of Beam's, google-cloud's or
    TensorFlow's traceback. Other errors, and `error_type` itself, pass through."""
    problem = storage_problem(paths)
    if problem:
        raise error_type(problem)
    try:
        yield
    except error_type:
        raise
    except Exception as error:
        failed = next((path for path in paths if is_gcs(path)), None)
        if failed is None or not is_access_failure(error):
            raise
        raise error_type(access_failure_message(failed, error)) from None


def _can_connect(url: str, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the host:port of `url` opens within the timeout."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# Exception class names (Beam, google-cloud, TensorFlow) that mean "could not reach or use GCS".
_AUTH_ERRORS = ("Unauthorized", "Forbidden", "PermissionDeniedError", "UnauthenticatedError", "RefreshError")
_REACH_ERRORS = (
    "RetryError",
    "TransportError",
    "ConnectionError",
    "ServiceUnavailable",
    "FailedPreconditionError",
    "AbortedError",
    "UnavailableError",
    "DeadlineExceededError",
    "BeamIOError",
)


def is_access_failure(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {*_AUTH_ERRORS, *_REACH_ERRORS, "DefaultCredentialsError"})


def access_failure_message(path: str, error: BaseException) -> str:
    """One line for a failed gs:// access: the path, what happened (the library's first line, without
    its traceback) and the fix."""
    names = {cls.__name__ for cls in type(error).__mro__}
    cause = _first_line(error)
    if len(cause) > 300:
        cause = cause[:300] + "..."
    if names & {*_AUTH_ERRORS, "DefaultCredentialsError"}:
        return f"cannot read {path}: access denied ({cause}); check the account's permissions on the bucket, or {CREDENTIALS_FIX}"
    where = emulator_host()
    target = f"the GCS emulator at {where}" if where else "Google Cloud Storage"
    return f"cannot reach {path} ({cause}): check that {target} is reachable from this machine" + (
        " and that the path is right" if where else ", the network or proxy settings and the credentials"
    )
