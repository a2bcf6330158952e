"""Engine distributions and Beam job servers, fetched once into a user cache, checksummed.

    rotnet-cluster fetch flink    # ~/.cache/rotnet/engines/flink-1.19.3/ + beam-flink-1.19-job-server/
    rotnet-cluster fetch spark    # ~/.cache/rotnet/engines/spark-3.5.7/ + beam-spark-3-job-server/

An engine comes from PyPI with `pip download --no-deps` (never installed: apache-flink pins an old
apache-beam), every file checked against the SHA-256 pinned here (`--require-hashes`), then the parts a
session cluster needs are unpacked into one home (FLINK_HOME / SPARK_HOME):

* Flink 1.19.3: bin/ and conf/ from the `apache-flink` wheel, bin/bash-java-utils.jar and lib/
  (flink-dist + log4j) from the `apache-flink-libraries` sdist (230 MB download, ~125 MB kept).
* Spark 3.5.7: bin/ and jars/ from the `pyspark` sdist (317 MB download, ~330 MB kept).

Beam's job server comes from Maven Central (`mvn`). First the shaded jar Beam's Python runner itself
downloads, `org.apache.beam:beam-runners-<engine>-job-server:<this Beam's version>`, with
`mvn dependency:copy -Dtransitive=false`. Where Maven does not serve it (a partial mirror: the
development machines of this project), the job server is assembled from the runner artifact of the
newest Beam release whose dependencies all resolve there, 2.62.0, with `mvn
dependency:copy-dependencies`, checked against the lock files in pipeline/engines/locks/ (every jar's
SHA-256), and started through a manifest-only launcher jar (Main-Class + Class-Path, the trick of
Beam's own subprocess_server.make_classpath_jar), so that `java -jar JAR` works as for the shaded jar.
Which of the two was used is recorded in the job server's `job-server.json` and printed by
`rotnet-cluster status`. Beam promises no compatibility between an SDK and a job server of another
version: the byte-identity tests on the cluster (tests/test_flink_cluster.py) are the proof for this
pair, not a promise.

Everything lands in a temporary folder first and is renamed into place complete; a lock file keeps
two fetches (two test workers) from racing. ROTNET_CACHE_DIR moves the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from schemas import output_rules

CACHE_VARIABLE = "ROTNET_CACHE_DIR"
MARKER = "rotnet-fetched.json"  # written last: a folder without it is incomplete
JOB_SERVER_FILE = "job-server.json"
LOCKS_DIR = Path(__file__).resolve().parent / "locks"
DOWNLOAD_TIMEOUT_S = 1200  # pip or mvn: a slow mirror, not a hang
CHUNK_BYTES = 1 << 20
MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"


class FetchError(Exception):
    """A fetch that cannot finish: one line saying what to do."""


def cache_root(environ: dict[str, str] | None = None) -> Path:
    """$ROTNET_CACHE_DIR, else $XDG_CACHE_HOME/rotnet, else ~/.cache/rotnet."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_VARIABLE):
        return Path(environ[CACHE_VARIABLE]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rotnet"


def engines_dir() -> Path:
    return cache_root() / "engines"


# --- What is fetched ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PypiFile:
    """One file from PyPI, pinned by name and SHA-256."""

    requirement: str  # "apache-flink==1.19.3"
    filename: str
    sha256: str
    # pip options that choose this exact file on any machine (a wheel for one platform tag)
    pip_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unpack:
    """Members of a downloaded archive copied into the engine home."""

    archive: str  # a PypiFile.filename
    prefix: str  # member path prefix inside the archive
    destination: str  # folder below the home
    names: tuple[str, ...] = ()  # only these file names below `prefix` (empty: every regular file)
    executable: bool = False


@dataclass(frozen=True)
class Engine:
    """A session-cluster engine and Beam's job server for it."""

    name: str  # "flink", "spark"
    version: str  # the engine's version, "1.19.3"
    runner_version: str  # what the Beam runner calls it: --flink_version 1.19; "3" for Spark 3
    files: tuple[PypiFile, ...]
    unpack: tuple[Unpack, ...]
    shaded_artifact: str  # org.apache.beam:<this>:<Beam SDK version>, Beam's own download
    runner_artifact: str  # assembled from org.apache.beam:<this>:<ASSEMBLED_BEAM_VERSION>
    assembled_beam_version: str
    main_class: str  # the job server's driver
    extra_dependencies: tuple[str, ...] = ()  # group:artifact:version added to the assembly

    @property
    def home(self) -> Path:
        return engines_dir() / f"{self.name}-{self.version}"

    @property
    def job_server_dir(self) -> Path:
        return engines_dir() / f"beam-{self.name}-{self.runner_version}-job-server"

    @property
    def lock_file(self) -> Path:
        return LOCKS_DIR / f"{self.runner_artifact}-{self.assembled_beam_version}.sha256"


_WHEEL = ("--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11")
_WHEEL += ("--implementation", "cp", "--abi", "cp311")
_FLINK_WHEEL = "apache_flink-1.19.3-cp311-cp311-manylinux_2_5_x86_64.manylinux1_x86_64.manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
# The jobs log through slf4j 1.7; without a binding the job server would print nothing, not even why it
# failed to start: java.util.logging's binding writes to stderr, which the launcher keeps.
_SLF4J_BINDING = "org.slf4j:slf4j-jdk14:1.7.30"

FLINK = Engine(
    name="flink",
    version="1.19.3",
    runner_version="1.19",
    files=(
        PypiFile(
            "apache-flink==1.19.3",
            _FLINK_WHEEL,
            "ff572c6ffa3867c21b8a455aefb50c53c91973fd0408df594ca26cb0a7bebc77",
            _WHEEL,
        ),
        PypiFile(
            "apache-flink-libraries==1.19.3",
            "apache-flink-libraries-1.19.3.tar.gz",
            "4a58e3a1fb7d83340bc96b6c080624c6d792d69fae5d294b96224775204a9c60",
            ("--no-binary=:all:",),
        ),
    ),
    unpack=(
        Unpack(_FLINK_WHEEL, "pyflink/bin/", "bin", executable=True),
        Unpack(_FLINK_WHEEL, "pyflink/conf/", "conf"),
        Unpack("apache-flink-libraries-1.19.3.tar.gz", "apache-flink-libraries-1.19.3/deps/bin/", "bin"),
        Unpack(
            "apache-flink-libraries-1.19.3.tar.gz",
            "apache-flink-libraries-1.19.3/deps/lib/",
            "lib",
            names=(
                "flink-dist-1.19.3.jar",
                "log4j-1.2-api-2.17.1.jar",
                "log4j-api-2.17.1.jar",
                "log4j-core-2.17.1.jar",
                "log4j-slf4j-impl-2.17.1.jar",
            ),
        ),
    ),
    shaded_artifact="beam-runners-flink-1.19-job-server",
    runner_artifact="beam-runners-flink-1.19",
    assembled_beam_version="2.62.0",
    main_class="org.apache.beam.runners.flink.FlinkJobServerDriver",
    extra_dependencies=(_SLF4J_BINDING,),
)

SPARK = Engine(
    name="spark",
    version="3.5.7",
    runner_version="3",
    files=(
        PypiFile(
            "pyspark==3.5.7",
            "pyspark-3.5.7.tar.gz",
            "80e36514e0c5c126d35a26adf4f405cd4a69de96a8ea8a3c1e9a65fce2fb4eaa",
            ("--no-binary=:all:",),
        ),
    ),
    unpack=(
        Unpack("pyspark-3.5.7.tar.gz", "pyspark-3.5.7/deps/bin/", "bin", executable=True),
        Unpack("pyspark-3.5.7.tar.gz", "pyspark-3.5.7/deps/jars/", "jars"),
    ),
    shaded_artifact="beam-runners-spark-3-job-server",
    runner_artifact="beam-runners-spark-3",
    assembled_beam_version="2.62.0",
    main_class="org.apache.beam.runners.spark.SparkJobServerDriver",
    extra_dependencies=(_SLF4J_BINDING,),
)

ENGINES = {engine.name: engine for engine in (FLINK, SPARK)}


def engine(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise FetchError(f"no engine {name!r}; known: {', '.join(ENGINES)}") from None


def beam_sdk_version() -> str:
    return importlib.metadata.version("apache-beam")


# --- The cache: complete folders only, one fetch at a time --------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One fetch at a time per cache (two pytest workers, two terminals)."""
    root = engines_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".fetch.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _complete(folder: Path) -> dict | None:
    """The marker of a complete folder whose files still have the sizes recorded, else None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        for name, (size, _) in marker["files"].items():
            if (folder / name).stat().st_size != size:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker


def _seal(folder: Path, facts: dict) -> None:
    """Record every file's size and SHA-256, then the marker (last)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        files[str(path.relative_to(folder))] = (path.stat().st_size, sha256_of(path))
    (folder / MARKER).write_text(json.dumps({**facts, "files": files}, indent=1, sort_keys=True))


def verify(folder: Path) -> list[str]:
    """Files of a fetched folder whose SHA-256 is no longer the one recorded when it was fetched."""
    marker = _complete(folder)
    if marker is None:
        return [str(folder)]
    return [name for name, (_, digest) in marker["files"].items() if sha256_of(folder / name) != digest]


def _install(staging: Path, final: Path) -> None:
    """Move a complete staging folder into place (an incomplete earlier one goes first)."""
    if final.exists():
        shutil.rmtree(final)  # only ever our own folder under the cache, without its marker
    output_rules.move_into_place(staging, final)


def _run(command: list[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise FetchError(f"{what} needs `{command[0]}` on PATH") from None
    except subprocess.TimeoutExpired:
        raise FetchError(f"{what} did not finish within {DOWNLOAD_TIMEOUT_S} s: check the network") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][:400]


# --- The engine from PyPI -----------------------------------------------------------------------------


def engine_home(spec: Engine) -> Path | None:
    """The engine's home if it was fetched completely, else None."""
    return spec.home if _complete(spec.home) else None


def fetch_engine(spec: Engine, log: Callable[[str], None] = print) -> Path:
    """The engine's home, fetched from PyPI and unpacked first if needed."""
    with _cache_lock():
        if engine_home(spec):
            return spec.home
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.home.name}-", dir=engines_dir()))
        try:
            downloads = staging / ".downloads"
            downloads.mkdir()
            for file in spec.files:
                _pip_download(file, downloads, log)
            for unpack in spec.unpack:
                _unpack(downloads / unpack.archive, unpack, staging)
            shutil.rmtree(downloads)  # the archives are not needed once unpacked (230-317 MB)
            _seal(
                staging,
                {"engine": spec.name, "version": spec.version, "from": [f.requirement for f in spec.files]},
            )
            _install(staging, spec.home)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log(f"{spec.name} {spec.version} unpacked in {spec.home}")
        return spec.home


def _pip_download(file: PypiFile, destination: Path, log: Callable[[str], None]) -> None:
    log(f"downloading {file.filename} from PyPI (pip download --no-deps, checked against its SHA-256)")
    requirements = destination / f"{file.filename}.requirements.txt"
    requirements.write_text(f"{file.requirement} --hash=sha256:{file.sha256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--quiet"]
    command += [*file.pip_options, "-r", str(requirements), "-d", str(destination)]
    done = _run(command, f"downloading {file.requirement}")
    path = destination / file.filename
    if done.returncode != 0 or not path.is_file():
        raise FetchError(
            f"pip could not download {file.requirement}: {_last_line(done.stderr + done.stdout)}"
        )
    if sha256_of(path) != file.sha256:  # pip checked it too; this is the file we unpack
        raise FetchError(f"{path} does not have the SHA-256 pinned in pipeline/engines/dist.py")


def _unpack(archive: Path, unpack: Unpack, home: Path) -> None:
    """Copy the regular files below `unpack.prefix` (or the named ones) into home/destination; never
    a link, a device or a path outside the destination."""
    target = home / unpack.destination
    target.mkdir(parents=True, exist_ok=True)
    wanted = set(unpack.names)
    found = set()

    def keep(member_name: str) -> str | None:
        if not member_name.startswith(unpack.prefix):
            return None
        relative = member_name[len(unpack.prefix) :]
        if not relative or "/" in relative or relative.startswith("."):
            return None  # subfolders are not needed (and not trusted)
        return relative if not wanted or relative in wanted else None

    def write(name: str, source: object) -> None:
        with open(target / name, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK_BYTES)
        if unpack.executable:
            os.chmod(target / name, 0o755)
        found.add(name)

    if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as opened:
            for info in opened.infolist():
                name = keep(info.filename)
                if name and not info.is_dir():
                    with opened.open(info) as source:
                        write(name, source)
    else:
        with tarfile.open(archive, "r:*") as opened:
            for member in opened:  # streamed: the archive is read once, front to back
                name = keep(member.name)
                if name and member.isreg():
                    write(name, opened.extractfile(member))
    missing = wanted - found
    if missing or not found:
        raise FetchError(f"{archive.name} lacks {sorted(missing) or unpack.prefix}: not the expected release")


# --- Beam's job server from Maven Central ------------------------------------------------------------


@dataclass(frozen=True)
class JobServer:
    """A job-server jar `java -jar` starts, and the Beam version it is."""

    jar: Path
    beam_version: str
    how: str  # "shaded" (Beam's own jar, the SDK's version) or "assembled" (runner + dependencies)

    def describe(self) -> str:
        if self.how == "shaded":
            return f"Beam's shaded job server {self.beam_version} ({self.jar})"
        return (
            f"job server assembled from Beam {self.beam_version}'s runner and its dependencies ({self.jar}; "
            f"Maven did not serve the shaded jar for Beam {beam_sdk_version()})"
        )


def job_server(spec: Engine) -> JobServer | None:
    """The job server fetched for `spec`, if complete."""
    folder = spec.job_server_dir
    if not _complete(folder):
        return None
    facts = json.loads((folder / JOB_SERVER_FILE).read_text())
    return JobServer(folder / facts["jar"], facts["beam_version"], facts["how"])


def fetch_job_server(spec: Engine, log: Callable[[str], None] = print) -> JobServer:
    """Beam's job server for `spec`: the shaded jar for this SDK's version if Maven serves it, else
    the assembled one (see the module docstring)."""
    with _cache_lock():
        found = job_server(spec)
        if found and (found.how == "assembled" or found.beam_version == beam_sdk_version()):
            return found
        folder = spec.job_server_dir
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=engines_dir()))
        try:
            fetched = _fetch_shaded(spec, staging, log) or _assemble(spec, staging, log)
            (staging / JOB_SERVER_FILE).write_text(
                json.dumps(
                    {"jar": fetched.jar.name, "beam_version": fetched.beam_version, "how": fetched.how}
                )
            )
            _seal(staging, {"engine": spec.name, "runner_version": spec.runner_version})
            _install(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        result = job_server(spec)
        assert result is not None
        log(f"{result.describe()}")
        return result


def _maven(arguments: list[str], what: str, cwd: Path) -> subprocess.CompletedProcess:
    # -B: no colours or progress; -C: fail on a checksum mismatch with Central's .sha1 files.
    return _run(["mvn", "-B", "-C", "-ntp", *arguments], what, cwd)


def _fetch_shaded(spec: Engine, staging: Path, log: Callable[[str], None]) -> JobServer | None:
    version = beam_sdk_version()
    coordinates = f"org.apache.beam:{spec.shaded_artifact}:{version}"
    log(f"asking Maven Central for {coordinates} (mvn dependency:copy -Dtransitive=false)")
    done = _maven(
        [
            "-q",
            "dependency:copy",
            f"-Dartifact={coordinates}",
            "-Dtransitive=false",
            f"-DoutputDirectory={staging}",
        ],
        f"fetching {coordinates}",
        staging,
    )
    jar = staging / f"{spec.shaded_artifact}-{version}.jar"
    if done.returncode != 0 or not jar.is_file():
        log(
            f"Maven does not serve {coordinates}: assembling the job server from Beam {spec.assembled_beam_version}'s runner"
        )
        return None
    return JobServer(jar, version, "shaded")


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rotnet</groupId><artifactId>{artifact}-assembly</artifactId><version>1</version>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""


def _dependency(coordinates: str) -> str:
    group, artifact, version = coordinates.split(":")
    return f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId><version>{version}</version></dependency>"


def assembly_pom(spec: Engine) -> str:
    """The throwaway pom whose runtime dependencies are the job server's classpath."""
    coordinates = [
        f"org.apache.beam:{spec.runner_artifact}:{spec.assembled_beam_version}",
        *spec.extra_dependencies,
    ]
    return _POM.format(artifact=spec.runner_artifact, dependencies="\n".join(map(_dependency, coordinates)))


def read_lock(path: Path) -> dict[str, str]:
    """{jar name: SHA-256} from a lock file (`sha256sum` format)."""
    pinned = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            pinned[name.strip().lstrip("*")] = digest
    return pinned


def _assemble(spec: Engine, staging: Path, log: Callable[[str], None]) -> JobServer:
    lib = staging / "lib"
    (staging / "pom.xml").write_text(assembly_pom(spec))
    log(
        f"resolving org.apache.beam:{spec.runner_artifact}:{spec.assembled_beam_version} and its dependencies "
        "(mvn dependency:copy-dependencies)"
    )
    done = _maven(
        ["-q", "dependency:copy-dependencies", f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
        f"resolving {spec.runner_artifact}",
        staging,
    )
    if done.returncode != 0:
        raise FetchError(
            f"Maven could not resolve {spec.runner_artifact}:{spec.assembled_beam_version}: "
            f"{_last_line(done.stdout + done.stderr)}"
        )
    pinned = read_lock(spec.lock_file)
    got = {path.name: sha256_of(path) for path in lib.glob("*.jar")}
    if got != pinned:
        different = sorted(set(got) ^ set(pinned)) or sorted(n for n in got if got[n] != pinned[n])
        raise FetchError(
            f"the jars Maven resolved for {spec.runner_artifact}:{spec.assembled_beam_version} are not the ones "
            f"pinned in {spec.lock_file.name} ({', '.join(different[:3])}...): refusing to run them"
        )
    (staging / "pom.xml").unlink()
    jar = staging / f"{spec.runner_artifact}-job-server-{spec.assembled_beam_version}-launcher.jar"
    write_launcher_jar(jar, spec.main_class, [f"lib/{name}" for name in sorted(got)])
    return JobServer(jar, spec.assembled_beam_version, "assembled")


def write_launcher_jar(jar: Path, main_class: str, class_path: list[str]) -> None:
    """A jar holding only a manifest: `java -jar` runs `main_class` with `class_path` (relative to the
    jar's folder). Manifest lines are at most 72 bytes; longer ones continue after a newline and a space."""
    text = f"Manifest-Version: 1.0\nMain-Class: {main_class}\nClass-Path: {' '.join(class_path)}\n"
    lines = []
    for line in text.splitlines():
        data = line.encode("utf-8")
        lines.append(data[:72])
        lines += [b" " + data[start : start + 71] for start in range(72, len(data), 71)]
    manifest = b"\r\n".join(lines) + b"\r\n\r\n"
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("META-INF/MANIFEST.MF", date_time=(2020, 1, 1, 0, 0, 0))
        archive.writestr(info, manifest)


def fetch(spec: Engine, log: Callable[[str], None] = print) -> tuple[Path, JobServer]:
    """Engine and job server, each fetched once; (home, job server)."""
    started = time.monotonic()
    home = fetch_engine(spec, log)
    server = fetch_job_server(spec, log)
    log(f"{spec.name}: ready in {time.monotonic() - started:.0f} s")
    return home, server
