"""The dataset modules' readers (pipeline/datasets/): ids, splits, plans and their Beam reads on tiny inputs.

.venv/bin/python -m pytest tests/test_datasets.py -q
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

import schemas
from pipeline import codec, datasets, progress, runner, transforms
from pipeline.config import ConfigError, JobError, PipelineConfig
from pipeline.datasets import common, images
from pipeline.datasets import mnist as mnist_dataset
from pipeline.datasets import street_view as street_view_dataset
from pipeline.datasets.common import ERRORS
from tests.pipeline_helpers import digit, in_process_pipeline, serialized_records, write_idx


def test_every_dataset_module_is_registered_and_defines_the_interface() -> None:
    assert {"images", "mnist", "street_view"} <= set(datasets.names())
    assert "common" not in datasets.names()
    for name in datasets.names():
        module = datasets.get(name)
        assert set(module.DEFAULTS) == {"image_size", "image_format", "channels", "crop_largest_rect"}
        assert callable(module.plan) and callable(module.source_images)
        assert all(isinstance(setting, datasets.Setting) for setting in module.SETTINGS)
    with pytest.raises(ValueError, match="is not one of images, mnist, street_view"):
        datasets.get("common")


def test_the_documented_skeleton_is_a_whole_dataset_in_one_file(tmp_path: Path, monkeypatch) -> None:
    """docs/pipeline.md's skeleton, saved as one module file, is a dataset the job runs end to end."""
    from pipeline import job
    from tests.conftest import REPO_ROOT

    doc = (REPO_ROOT / "docs" / "pipeline.md").read_text()
    skeleton = doc.split("## Adding a dataset", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    package = tmp_path / "extra_datasets"
    package.mkdir()
    (package / "my_photos.py").write_text(skeleton)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(datasets, "_REGISTERED", {})
    datasets.register("my_photos", "extra_datasets.my_photos")  # the registry line
    assert "my_photos" in datasets.names()
    photos = tmp_path / "photos"
    for name in ("cats/0001.png", "cats/0002.png", "dogs/0001.png", "dogs/notes.txt"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(
            _png(np.full((24, 30, 3), len(name) * 9, np.uint8)) if name.endswith("png") else b"x"
        )
    config = PipelineConfig(
        dataset="my_photos",
        output_dir=str(tmp_path / "out"),
        dataset_settings={"photos_dir": str(photos)},
        image_size=16,
        angles_degrees=(0, 90),
        validation_fraction=0.0,
    )
    summary = job.run(config, ["--direct_num_workers", "1"], show_progress=False, log=lambda line: None)
    assert summary.info.dataset == "my_photos" and summary.info.num_records == 6
    assert summary.counters[progress.FILES_SKIPPED] == 1
    ids = {schemas.decode_example(data).image_id for data in serialized_records(tmp_path / "out")}
    assert ids == {"cats/0001", "cats/0002", "dogs/0001"}
    from trainer import robustness

    loaded = robustness.load_source_images(schemas.load_manifest(str(tmp_path / "out")), "train")
    assert [(image_id, image.shape) for image_id, image in loaded] == [
        (image_id, (24, 24, 3)) for image_id in sorted(ids)
    ]


def test_relative_id_and_input_resolution(tmp_path: Path) -> None:
    assert common.relative_id("/data/photos/a/b.jpg", "/data/photos") == "a/b.jpg"
    assert common.relative_id("gs://bucket/photos/b.jpg", "gs://bucket/photos/") == "b.jpg"
    assert common.relative_id("/elsewhere/b.jpg", "/data") == "b.jpg"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.png").write_bytes(b"")
    (tmp_path / "sub" / "y.jpg").write_bytes(b"")
    directory = images.resolve_input(str(tmp_path))
    assert (directory.base, directory.pattern, directory.listed()) == (
        str(tmp_path),
        None,
        ["sub/x.png", "sub/y.jpg"],
    )
    single = images.resolve_input(str(tmp_path / "sub" / "x.png"))
    assert (single.base, single.listed()) == (str(tmp_path / "sub"), ["x.png"])
    glob = images.resolve_input(f"{tmp_path}/s*/*.png")
    assert (glob.base, glob.listed()) == (str(tmp_path), ["sub/x.png"])
    with pytest.raises(JobError, match="does not exist"):
        images.resolve_input(str(tmp_path / "missing"))


def _png(image: np.ndarray) -> bytes:
    return codec.encode_image(image, "png")


def test_read_decode_prepare_routes_images_by_split_and_bad_files_to_errors(tmp_path: Path) -> None:
    config = PipelineConfig(
        dataset="images",
        output_dir=str(tmp_path / "out"),
        dataset_settings={"input_pattern": str(tmp_path)},
        image_size=16,
        angles_degrees=(0, 90),
    ).resolved()
    names = [f"photo_{index}.png" for index in range(6)]
    for index, name in enumerate(names):
        (tmp_path / name).write_bytes(_png(np.full((20 + index, 30, 3), 40 * index, np.uint8)))
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "deep.png").write_bytes(_png(np.full((20, 20, 3), 9, np.uint8)))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "tiny.png").write_bytes(_png(np.zeros((3, 3, 3), np.uint8)))
    (tmp_path / "readme.md").write_text("skipped by name")
    good = [*names, "nested/deep.png"]
    expected_splits = {name: schemas.assign_split(name, 0.1) for name in good}
    splits = sorted(set(expected_splits.values()) | {"train", "validation"})

    pipeline = in_process_pipeline()
    read = pipeline | "Read" >> common.ReadFiles(
        config, common.list_files(str(tmp_path)), images.identify_file
    )
    decoded = read["images"] | transforms.DecodeImages(config)
    prepared = decoded.images | transforms.PrepareRotations(config, splits)
    ids = [
        prepared[split] | f"Ids_{split}" >> beam.Map(lambda image: (image.split, image.image_id))
        for split in splits
    ] | beam.Flatten()
    assert_that(ids, equal_to(sorted((split, name) for name, split in expected_splits.items())), label="ids")
    reasons = (
        (read[ERRORS], decoded[ERRORS])
        | "Errors" >> beam.Flatten()
        | beam.Map(
            lambda line: (json.loads(line)["image_id"], json.loads(line)["stage"], "minimum side" in line)
        )
    )
    assert_that(
        reasons, equal_to([("broken.jpg", "decode", False), ("tiny.png", "decode", True)]), label="errors"
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = runner.metric_counters(result)
    assert counters[progress.IMAGES_READ] == 9
    assert counters[progress.IMAGE_ERRORS] == 2
    assert counters[progress.FILES_SKIPPED] == 1


def test_read_mnist_offline_and_street_view_zip_parts(tmp_path: Path, shared_data: Path) -> None:
    images = np.stack([digit(index)[:, :, 0] for index in range(20)])
    labels = np.arange(20, dtype=np.uint8) % 10
    mnist_dir = tmp_path / "mnist"
    mnist_dir.mkdir()
    write_idx(mnist_dir / "t10k-images-idx3-ubyte.gz", images)
    write_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz", labels)
    config = PipelineConfig(dataset="mnist", output_dir=str(tmp_path / "out")).resolved()
    plan = mnist_dataset.plan(
        dataclasses.replace(config, dataset_settings={"mnist_dir": str(mnist_dir)}), None
    )
    assert plan.splits == ["test"]
    assert "found test (20 images); missing train" in plan.notes[0]

    samples = sorted((shared_data / "street-view-samples").glob("*.jpg"))[:2]
    part = tmp_path / "parts" / "part1.zip"
    part.parent.mkdir()
    with zipfile.ZipFile(part, "w") as archive:
        for sample in samples:
            archive.write(sample, sample.name)
        archive.write(samples[0], samples[0].stem.split("_")[0] + "_5.jpg")  # upward view: dropped
    street = PipelineConfig(
        dataset="street_view",
        output_dir=str(tmp_path / "sv"),
        dataset_settings={"street_view_dir": str(part.parent)},
    )
    street_plan = street_view_dataset.plan(street.resolved(), None)
    assert street_plan.expected_images == pytest.approx({"train": 1.8, "validation": 0.2})

    pipeline = in_process_pipeline()
    mnist_images = pipeline | "Mnist" >> plan.source
    assert_that(
        mnist_images["images"]
        | beam.Map(lambda image: (image.split, image.image_id, image.label, image.pixels.shape)),
        equal_to([("test", f"{index:05d}", index % 10, (28, 28, 1)) for index in range(20)]),
        label="mnist",
    )
    street_images = pipeline | "Street" >> street_plan.source
    assert_that(
        street_images["images"]
        | beam.Map(lambda image: (image.image_id, image.split, len(image.encoded) > 1000)),
        equal_to([(s.stem, schemas.assign_split(s.stem, 0.1), True) for s in samples]),
        label="street",
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = runner.metric_counters(result)
    assert counters[progress.IMAGES_READ] == 22
    assert counters[progress.VIEWS_DROPPED] == 1


def test_a_dataset_outside_the_package_is_one_module_plus_its_registry_line(
    tmp_path: Path, monkeypatch
) -> None:
    """tests/dataset_squares.py, registered here, runs end to end, and the robustness evaluation loads
    its source images through the module: each, turned by the pipeline's code, is its records."""
    from pipeline import job
    from schemas.record import example_key
    from trainer import robustness

    monkeypatch.setattr(datasets, "_REGISTERED", {})
    datasets.register("squares", "tests.dataset_squares")
    assert "squares" in datasets.names() and datasets.get("squares").DEFAULTS["image_size"] == 16
    angles = (0, 30, 90)
    config = PipelineConfig(
        dataset="squares", output_dir=str(tmp_path / "out"), angles_degrees=angles, validation_fraction=0.4
    )
    summary = job.run(config, ["--direct_num_workers", "1"], show_progress=False, log=lambda line: None)
    assert summary.info.dataset == "squares" and summary.info.num_records == 12 * len(angles)
    info = schemas.load_manifest(str(tmp_path / "out"))
    records = {}
    for data in serialized_records(tmp_path / "out"):
        record = schemas.decode_example(data)
        records[(record.split, record.image_id, record.angle_degrees)] = codec.decode_record_image(record)
    for split in ("train", "validation"):
        loaded = robustness.load_source_images(info, split)
        assert [image_id for image_id, _ in loaded] == sorted({i for s, i, _ in records if s == split})
        for image_id, image in loaded:
            assert image.shape == (32, 32, 3)  # the square the pipeline turned
            for angle in angles:
                rendered = robustness.render(
                    "pipeline",
                    image,
                    angle,
                    16,
                    True,
                    key=example_key("squares", split, image_id, angle),
                    crop_scale=info.config["crop_scale"],
                    angles_degrees=angles,
                )
                assert np.array_equal(rendered, records[(split, image_id, angle)]), (image_id, angle)


def test_a_registered_dataset_brings_its_own_option_to_the_command_line(tmp_path: Path, monkeypatch) -> None:
    """tests/dataset_squares.py declares --squares-count in its SETTINGS and nowhere else: the command
    built after its registry line offers it, the run uses it, the manifest records it, and another
    dataset's option given with it is a usage error naming its dataset."""
    from click.testing import CliRunner

    from pipeline import cli

    monkeypatch.setattr(datasets, "_REGISTERED", {})
    datasets.register("squares", "tests.dataset_squares")
    command = cli.build_command()
    assert "[--dataset squares] How many squares to make." in CliRunner().invoke(command, ["--help"]).output
    output = tmp_path / "out"
    arguments = ["--dataset", "squares", "--output-dir", str(output), "--angles", "0,90", "--no-progress"]
    result = CliRunner().invoke(command, [*arguments, "--squares-count", "5", "--direct_num_workers", "1"])
    assert result.exit_code == 0, result.output
    info = schemas.load_manifest(str(output))
    assert info.config["squares_count"] == 5 and info.num_records == 5 * 2
    refused = CliRunner().invoke(command, [*arguments, "--mnist-dir", str(tmp_path)])
    assert refused.exit_code == 2
    assert "--mnist-dir is an option of --dataset mnist, not of --dataset squares" in refused.output
    bad = CliRunner().invoke(command, [*arguments, "--squares-count", "0"])
    assert bad.exit_code == 2 and "--squares-count 0 must be in 1..100" in bad.output


def test_dataset_settings_belong_to_their_dataset(monkeypatch) -> None:
    """A config with another dataset's setting is refused naming the dataset's own; a setting's
    default fills in; the manifest dict keeps each setting under its own name."""
    with pytest.raises(
        ConfigError, match=r"mnist_dir: not a setting of --dataset images \(its settings: input_pattern\)"
    ):
        PipelineConfig(
            dataset="images", output_dir="o", dataset_settings={"input_pattern": "x", "mnist_dir": "d"}
        ).resolved()
    config = PipelineConfig(dataset="mnist", output_dir="o").resolved()
    assert config.dataset_settings == {"mnist_dir": None, "mnist_mirrors": (), "mnist_checksums": None}
    assert config.to_dict()["mnist_mirrors"] == [] and "dataset_settings" not in config.to_dict()
    with pytest.raises(KeyError, match="dataset mnist has no setting 'input_pattern'"):
        config.setting("input_pattern")


def test_an_environment_setting_of_another_dataset_is_ignored(tmp_path: Path, monkeypatch) -> None:
    """ROTNET_MNIST_DIR set for every run does not stop a --dataset images run (only a flag given on
    the command line is refused)."""
    from click.testing import CliRunner

    from pipeline import cli

    monkeypatch.setenv("ROTNET_MNIST_DIR", str(tmp_path / "nowhere"))
    result = CliRunner().invoke(
        cli.main,
        ["--dataset", "images", "--input", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")],
    )
    assert result.exit_code == 2 and "does not exist" in result.output and "mnist" not in result.output


def test_mnist_checksums_file_is_read_as_its_setting(tmp_path: Path) -> None:
    """--mnist-checksums: lower-cased digests of official names; every other file is one message."""
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"train-images-idx3-ubyte.gz": "AB" * 16}))
    assert mnist_dataset.read_checksums(str(good)) == {"train-images-idx3-ubyte.gz": "ab" * 16}
    cases = {
        "missing.json": (None, "does not exist"),
        "list.json": ("[1]", "expected"),
        "text.json": ("not json", "not a readable JSON file"),
        "name.json": ('{"x.gz": "' + "a" * 32 + '"}', "'x.gz' is not an MNIST file"),
        "digest.json": ('{"t10k-images-idx3-ubyte.gz": "abc"}', "must be 32 (md5) or 64 (sha256) hex digits"),
    }
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)):
            mnist_dataset.read_checksums(str(tmp_path / name))
    (tmp_path / "fifo.json").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(ValueError, match="FIFO"):
        mnist_dataset.read_checksums(str(tmp_path / "fifo.json"))
