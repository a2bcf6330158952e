"""Streaming, resumable, verified downloads over HTTP(S) with the standard library only.

`fetch(urls, destination, md5=...)` tries each mirror in turn and returns the local path of a file whose
bytes match the expected digest. What it guarantees:

* cache: an existing `destination` that matches the digest (or any existing file when no digest is given)
  is returned without touching the network, so a rerun downloads nothing;
* streaming: bytes go to `destination + ".part"` in `chunk_bytes` pieces, never all in memory;
* retries: a cut connection, a timeout, HTTP 5xx/408/429 or a body shorter than its Content-Length is
  retried on the same mirror with exponential backoff (`backoff_seconds * 2**attempt`), and the retry
  RESUMES from the bytes already in the .part file with an HTTP `Range: bytes=N-` request (a server that
  answers 200 instead of 206 is followed from the start; 416 means the .part is already complete);
* other 4xx answers (404, 403, ...) are not transient: the next mirror is tried at once;
* verification: md5 and/or sha256 are checked after the last byte; a mismatch deletes the .part file and
  moves on to the next mirror (a mirror serving wrong bytes is not a transient fault), and when every
  mirror has failed a `ChecksumError` names the url, the expected and the actual digest;
* atomic: only a verified file is renamed onto `destination` (schemas.output_rules.move_into_place), so a reader never sees a
  partial or unverified file; concurrent fetches of one destination are serialized by a lock file.

Run the tests: `.venv/bin/python -m pytest tests/test_download.py -q` (a local fault-injecting HTTP server).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from schemas import output_rules

logger = logging.getLogger(__name__)

_USER_AGENT = "rotnet-downloader/1 (+https://github.com/d4nst/RotNet reproduction)"
# A server's Retry-After is honoured up to this many seconds; longer waits count as a failed try.
_MAX_RETRY_AFTER_SECONDS = 60.0
# HTTP statuses worth retrying on the same mirror: server errors, request timeout, rate limiting.
_TRANSIENT_4XX = (408, 429)


class DownloadError(RuntimeError):
    """Every mirror failed; the message lists each url with the reason and says how to work offline."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected digest. The bad file was deleted."""


class _TransientError(Exception):
    """A fault worth retrying on the same mirror (the .part file is kept for resuming)."""

    def __init__(self, reason: str, retry_after: float | None = None, restart: bool = False) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.restart = restart  # the .part file is unusable: the next try starts from byte 0


class _PermanentError(Exception):
    """A fault that retrying this mirror will not fix (404, 403, unsupported URL)."""


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file's bytes ("md5", "sha256" or any hashlib name), read in 1 MiB pieces."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    return {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}


def _digest_mismatches(path: Path, expected: dict[str, str]) -> list[str]:
    """'md5 expected X, got Y' for each digest that does not match (empty when all match)."""
    mismatches = []
    for algorithm, value in expected.items():
        actual = file_digest(path, algorithm)
        if actual != value:
            mismatches.append(f"{algorithm} expected {value}, got {actual}")
    return mismatches


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Serialize processes fetching the same destination (Beam workers sharing a cache directory).

    The lock file stays in place: deleting it would let a waiting process lock an unlinked inode while a
    third one locks a fresh file. Without fcntl (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _retry_after_seconds(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _content_range_start(value: str | None) -> int | None:
    """First byte of a `Content-Range: bytes START-END/TOTAL` header, None when absent or unparsable."""
    match = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _open(url: str, offset: int, timeout_seconds: float):
    """Open the url, asking for bytes from `offset` on; maps failures to transient/permanent errors."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout_seconds)
    except urllib.error.HTTPError as error:
        with contextlib.closing(error):
            reason = f"HTTP {error.code} {error.reason}"
            if error.code == 416 and offset:
                total = re.match(r"\s*bytes\s+\*/(\d+)", error.headers.get("Content-Range") or "")
                if total is None or int(total.group(1)) == offset:
                    return None  # nothing left to send: the .part file already holds every byte
                raise _TransientError(
                    f"{reason}: the server has {total.group(1)} bytes, the partial file {offset}",
                    restart=True,
                ) from None
            if error.code >= 500 or error.code in _TRANSIENT_4XX:
                raise _TransientError(reason, _retry_after_seconds(error.headers)) from None
            raise _PermanentError(reason) from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, ssl.SSLCertVerificationError):
            raise _PermanentError(f"TLS certificate rejected ({error.reason})") from None
        if isinstance(error.reason, OSError):
            raise _TransientError(f"connection failed ({error.reason})") from None
        raise _PermanentError(f"cannot open url ({error.reason})") from None
    except ValueError as error:  # "unknown url type"
        raise _PermanentError(str(error)) from None
    except (OSError, http.client.HTTPException) as error:
        raise _TransientError(f"connection failed ({type(error).__name__}: {error})") from None


def _progress_bar(enabled: bool, total: int | None, initial: int, name: str):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name)


def _attempt(
    url: str, part: Path, resume: bool, timeout_seconds: float, chunk_bytes: int, progress: bool
) -> int:
    """One request: stream the body into `part` (appending when the server honours the Range).

    Returns the number of bytes received in this attempt. Raises _TransientError when the body ends
    early or the connection fails, leaving what arrived in `part` for the next attempt to resume.
    """
    offset = part.stat().st_size if resume and part.exists() else 0
    try:
        response = _open(url, offset, timeout_seconds)
    except _TransientError as error:
        if error.restart:
            part.unlink(missing_ok=True)
        raise
    if response is None:
        return 0
    with contextlib.closing(response):
        status = getattr(response, "status", None) or 200  # file:// responses have no status
        if status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if not offset or start != offset:
                part.unlink(missing_ok=True)
                raise _TransientError(
                    f"asked for bytes from {offset}, got a range starting at {start}", restart=True
                )
            mode = "ab"
        else:
            if offset:
                logger.info("%s ignored the Range request (status %s); restarting from byte 0", url, status)
            offset, mode = 0, "wb"
        length_header = response.headers.get("Content-Length")
        expected_total = offset + int(length_header) if length_header and length_header.isdigit() else None
        received = 0
        with open(part, mode) as file, _progress_bar(progress, expected_total, offset, part.name[:-5]) as bar:
            try:
                while block := response.read(chunk_bytes):
                    file.write(block)
                    received += len(block)
                    if bar is not None:
                        bar.update(len(block))
            except (OSError, http.client.HTTPException) as error:
                # OSError covers socket timeouts and resets; IncompleteRead is an HTTPException.
                raise _TransientError(
                    f"connection lost after {offset + received:,} bytes ({type(error).__name__}: {error})"
                ) from None
        if expected_total is not None and offset + received != expected_total:
            raise _TransientError(
                f"short read: got {offset + received:,} of {expected_total:,} bytes (Content-Length)"
            )
        return received


def _fetch_one_mirror(
    url: str,
    part: Path,
    resume_existing: bool,
    retries: int,
    backoff_seconds: float,
    timeout_seconds: float,
    chunk_bytes: int,
    progress: bool,
) -> None:
    """Download `url` into `part`, retrying transient faults with backoff and resuming each time."""
    for attempt in range(retries + 1):
        try:
            _attempt(url, part, resume_existing or attempt > 0, timeout_seconds, chunk_bytes, progress)
            return
        except _TransientError as error:
            if attempt == retries:
                raise _TransientError(f"{error} (gave up after {retries + 1} tries)") from None
            delay = backoff_seconds * 2**attempt
            if error.retry_after is not None:
                delay = max(delay, min(error.retry_after, _MAX_RETRY_AFTER_SECONDS))
            logger.warning("%s: %s; retry %d/%d in %.2f s", url, error, attempt + 1, retries, delay)
            time.sleep(delay)


def fetch(
    urls: Sequence[str],
    destination: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = 4,
    backoff_seconds: float = 1.0,
    timeout_seconds: float = 60.0,
    progress: bool = False,
    chunk_bytes: int = 1 << 20,
) -> Path:
    """Download the first mirror in `urls` that works to `destination` and return its Path.

    `retries` is the number of extra tries per mirror for transient faults; `timeout_seconds` bounds
    each socket wait (connect and every read), not the whole transfer. Raises ChecksumError when a
    mirror served bytes that do not match `sha256`/`md5` and no other mirror succeeded, DownloadError
    when every mirror failed for another reason.
    """
    if isinstance(urls, str):
        urls = [urls]
    if not urls:
        raise ValueError("fetch needs at least one url")
    destination = Path(destination)
    expected = _expected_digests(sha256, md5)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")

    with _exclusive_lock(destination.with_name(destination.name + ".lock")):
        if destination.exists():
            mismatches = _digest_mismatches(destination, expected)
            if not mismatches:
                return destination
            logger.warning(
                "cached %s does not match (%s); downloading it again", destination, "; ".join(mismatches)
            )

        failures: list[str] = []
        checksum_failed = False
        for url in urls:
            # A .part left by an earlier run or another mirror is resumed only when a digest will
            # catch a mismatch at the end; otherwise stale bytes could pass unnoticed.
            inherited = part.exists() and bool(expected)
            try:
                _fetch_one_mirror(
                    url, part, inherited, retries, backoff_seconds, timeout_seconds, chunk_bytes, progress
                )
                mismatches = _digest_mismatches(part, expected)
                if mismatches and inherited:
                    logger.warning("%s: resumed file does not match; downloading it from byte 0", url)
                    part.unlink()
                    _fetch_one_mirror(
                        url, part, False, retries, backoff_seconds, timeout_seconds, chunk_bytes, progress
                    )
                    mismatches = _digest_mismatches(part, expected)
            except (_TransientError, _PermanentError) as error:
                failures.append(f"{url}: {error}")
                continue
            if mismatches:
                part.unlink()
                checksum_failed = True
                failures.append(f"{url}: checksum mismatch, {'; '.join(mismatches)} (file deleted)")
                continue
            output_rules.move_into_place(part, destination)
            return destination

    # A .part left by transient failures stays: with a digest, the next run resumes from it.
    error_type = ChecksumError if checksum_failed else DownloadError
    raise error_type(
        f"could not download {destination.name} from any of {len(urls)} mirror(s):\n  "
        + "\n  ".join(failures)
        + f"\nCheck the network, or put a verified copy at {destination} (or pass an offline directory, "
        "e.g. --mnist-dir / --street-view-dir) and run again."
    )
