"""The wheels the GPU machine lacks, copied there with the tree (it has no network): list, fetch, install.

    python scripts/gpu_wheels.py fetch      # here: download / build them into build/gpu-check/wheels
    python scripts/gpu_wheels.py check      # the folder holds exactly the listed files (size, SHA-256)
    python3 scripts/gpu_wheels.py install   # there: install the ones whose package is missing

The GPU machine (scripts/gpu_check.sh) has Python 3.12, JAX with CUDA, PyTorch, OpenCV, Pillow, h5py and
NumPy, no TensorFlow and no network, and takes at most 64 MiB of copied files (tree, wheels and the
Street View samples together: tests/test_gpu_check.py adds them up). The JAX training path needs Keras
and its pure-Python dependencies, rotnet's record readers (tfrecord-lite, source-only on PyPI: built
here for CPython 3.12; google-crc32c) and the command-line pieces (click, tqdm). WHEELS_LIST pins each
file by name, size and SHA-256. `install` puts into `--target` only the wheels whose distribution is
not installed already (never over the machine's own JAX, NumPy or OpenCV), with pip --no-index
--no-deps: nothing is looked up anywhere. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS_LIST = ROOT / "scripts" / "gpu_wheels.txt"
CARRY = ROOT / "build" / "gpu-check"  # the one folder the device run carries (ignored by git)
WHEELS_DIR = CARRY / "wheels"
SAMPLES_DIR = CARRY / "shared-data" / "street-view-samples"
TARGET_PYTHON = "3.12"
# glibc 2.28 or newer there (CUDA 13 needs it): wheels tagged for it or older.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux2014_x86_64", "linux_x86_64")
# Requirements (pinned as in constraints.txt) whose wheels travel; tfrecord-lite is built from source.
DOWNLOADED = (
    "keras==3.15.1",
    "namex==0.1.0",
    "optree==0.20.0",
    "absl-py==2.5.1",
    "rich==15.0.0",
    "markdown-it-py==4.3.0",
    "mdurl==0.1.2",
    "Pygments==2.21.0",
    "click==8.5.1",
    "tqdm==4.70.1",
    "google-crc32c==1.9.0",
)
BUILT = ("tfrecord-lite==0.0.8",)  # links libstdc++ >= GLIBCXX_3.4.29 (GCC 11), as built here
BUILD_CYTHON = "cython==3.3.1"


def listed() -> list[tuple[str, int, str]]:
    """(file name, bytes, SHA-256) of every wheel in WHEELS_LIST."""
    entries = []
    for line in WHEELS_LIST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, size, digest = line.split()
            entries.append((name, int(size), digest))
    return entries


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(folder: Path = WHEELS_DIR) -> list[str]:
    """Problems with `folder` against WHEELS_LIST (a missing, extra or different file), as sentences."""
    problems = []
    present = {path.name for path in folder.glob("*.whl")} if folder.is_dir() else set()
    for name, size, digest in listed():
        path = folder / name
        if name not in present:
            problems.append(f"{name} is missing from {folder}: run `python scripts/gpu_wheels.py fetch`")
        elif path.stat().st_size != size or _sha256(path) != digest:
            problems.append(f"{name} differs from {WHEELS_LIST.name} (size or SHA-256)")
    problems += [
        f"{name} is not listed in {WHEELS_LIST.name}"
        for name in sorted(present - {n for n, _, _ in listed()})
    ]
    return problems


def fetch(folder: Path = WHEELS_DIR) -> None:
    """Download (and build) the wheels for CPython 3.12 on x86-64 Linux into `folder`, rewrite
    WHEELS_LIST, and copy the Street View samples beside them (the benchmark's photos)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", TARGET_PYTHON,
         *(f"--platform={platform}" for platform in PLATFORMS), "--implementation", "cp",
         "-d", str(folder), *DOWNLOADED],
        check=True,
    )  # fmt: skip
    python312 = _python(TARGET_PYTHON)
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([python312, "-m", "venv", scratch], check=True)
        builder = [str(Path(scratch) / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        # The sdist's pre-generated C++ predates CPython 3.12; with Cython present, setup.py regenerates it.
        subprocess.run([*builder, "install", "setuptools", "wheel", BUILD_CYTHON], check=True)
        subprocess.run(
            [*builder, "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder), *BUILT], check=True
        )
    lines = [
        "# Wheels copied to the GPU machine (scripts/gpu_wheels.py fetch writes this): name, bytes, SHA-256"
    ]
    lines += [f"{path.name} {path.stat().st_size} {_sha256(path)}" for path in sorted(folder.glob("*.whl"))]
    WHEELS_LIST.write_text("\n".join(lines) + "\n")
    source = (
        Path(os.environ.get("ROTNET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "street-view-samples"
    )
    if SAMPLES_DIR.exists():
        shutil.rmtree(SAMPLES_DIR)
    shutil.copytree(source, SAMPLES_DIR)
    print(f"{len(lines) - 1} wheels in {folder}; samples in {SAMPLES_DIR}")


def _python(version: str) -> str:
    """A working pythonX.Y: $PYTHON312, on PATH, or a pyenv installation (its shim may not be active)."""
    candidates = [os.environ.get("PYTHON312", ""), shutil.which(f"python{version}") or ""]
    candidates += sorted(
        str(path) for path in Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}")
    )
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    raise SystemExit(f"building {', '.join(BUILT)} needs python{version} (set PYTHON312 to it)")


def _distribution(wheel_name: str) -> str:
    return re.sub(r"[-_.]+", "-", wheel_name.split("-")[0]).lower()


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def install(folder: Path, target: Path) -> list[str]:
    """pip-install into `target` the listed wheels whose distribution is not installed; returns them."""
    problems = check(folder)
    if problems:
        raise SystemExit("; ".join(problems))
    missing = [name for name, _, _ in listed() if not _installed(_distribution(name))]
    if missing:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check",
             "-q", "--target", str(target), *(str(folder / name) for name in missing)],
            check=True,
        )  # fmt: skip
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("fetch", "check", "install"))
    parser.add_argument("--wheels", type=Path, default=WHEELS_DIR)
    parser.add_argument("--target", type=Path, default=CARRY / "site")
    arguments = parser.parse_args()
    if arguments.command == "fetch":
        fetch(arguments.wheels)
    elif arguments.command == "check":
        problems = check(arguments.wheels)
        print("\n".join(problems) or f"{len(listed())} wheels as listed")
        sys.exit(1 if problems else 0)
    else:
        missing = install(arguments.wheels, arguments.target)
        print(f"installed into {arguments.target}: {', '.join(missing) or 'nothing (all present)'}")


if __name__ == "__main__":
    main()
