"""schemas/, the geometry core, tools/inspect and trainer.config must work where TensorFlow and Beam are not
installed."""

from __future__ import annotations

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


def test_dockerfile_installs_with_the_same_script_and_pins_as_make() -> None:
    # Docker cannot build on CI; this keeps the image's install recipe the one CI exercises.
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "sh scripts/install.sh" in dockerfile and "sh scripts/install.sh" in makefile
    assert "COPY setup.cfg pyproject.toml constraints.txt" in dockerfile
    image_extras = dockerfile.split("EXTRAS=", 1)[1].split()[0].split(",")
    make_extras = makefile.split("EXTRAS ?= ", 1)[1].split()[0].split(",")
    assert set(image_extras) == set(make_extras) - {"test"}
    for package in ("schemas", "pipeline", "trainer", "tools", "benchmarks"):
        assert f"COPY {package}/ {package}/" in dockerfile
