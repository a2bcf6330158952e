"""schemas/, the geometry core, tools/inspect and trainer.config must work where TensorFlow and Beam are not
installed."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT


def test_schema_and_inspect_import_without_tensorflow_or_beam(tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("tensorflow", "keras", "apache_beam"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import schemas, schemas.tfrecord_file, schemas.verify, schemas.angles, trainer.config
        import pipeline.geometry, pipeline.codec, tools.inspect
        import numpy as np
        record = schemas.Record(
            image_encoded=pipeline.codec.encode_image(np.zeros((4, 4, 1), np.uint8), "png"),
            image_format="png", height=4, width=4, channels=1, angle_degrees=5,
            dataset="mnist", split="train", image_id="1", label=3)
        path = {str(tmp_path / "x.tfrecord")!r}
        schemas.tfrecord_file.write_records(path, [schemas.encode_example(record)])
        [data] = schemas.tfrecord_file.iter_records(path)
        assert schemas.decode_example(data) == record
        from tests.factories import write_records_dir
        directory = {str(tmp_path / "records")!r}
        write_records_dir(directory, angles=(0, 180))
        try:
            tools.inspect.main([directory, "--verify", "--no-progress"])
        except SystemExit as done:
            assert done.code == 0, done.code
        for name in ("tensorflow", "apache_beam"):
            assert sys.modules[name] is None, name + " was imported"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
    assert "OK: the files match the manifest and every record was read back" in result.stdout


def _dockerfile_stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions (keyword, arguments) by stage name, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.startswith("#")))
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            current = stages.setdefault(arguments.split()[-1], [])
        current.append((keyword.upper(), " ".join(arguments.split())))
    return stages


def test_dockerfile_image_copies_what_the_install_needs_and_installs_makes_extras() -> None:
    # Docker cannot build on CI; this checks the image's install step against the package's metadata.
    runtime = _dockerfile_stages((REPO_ROOT / "Dockerfile").read_text())["runtime"]
    install = [index for index, (keyword, arguments) in enumerate(runtime) if keyword == "RUN"]
    assert install, "no RUN in the runtime stage"
    keyword, command = runtime[install[0]]
    assert "sh scripts/install.sh" in command  # the recipe `make install` runs
    copied = set()
    for keyword, arguments in runtime[: install[0]]:
        if keyword == "COPY":
            sources = [word for word in arguments.split()[:-1] if not word.startswith("--")]
            copied.update(source.rstrip("/") for source in sources)
    assert all((REPO_ROOT / source).exists() for source in copied), copied
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    packages = {name for name in setup["options.packages.find"]["include"].split() if "." not in name}
    metadata_files = {
        value.split("file:", 1)[1].strip() for value in setup["metadata"].values() if "file:" in value
    }
    needed = (
        packages | metadata_files | {"setup.cfg", "pyproject.toml", "constraints.txt", "scripts/install.sh"}
    )
    assert needed <= copied, needed - copied
    image_extras = set(re.search(r"EXTRAS=(\S+)", command).group(1).split(","))
    make_extras = set(
        re.search(r"^EXTRAS \?= (\S+)", (REPO_ROOT / "Makefile").read_text(), re.M).group(1).split(",")
    )
    assert image_extras == make_extras - {"test"}
    assert image_extras <= set(setup["options.extras_require"])
