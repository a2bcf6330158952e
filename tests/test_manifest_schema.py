"""A malformed manifest is one ManifestError naming the field and the fix.

Before the schema check, a string where a record count should be reached `sum()` and came out of
rotnet-train, rotnet-evaluate and rotnet-inspect as a TypeError traceback.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import schemas
from tests.factories import write_records_dir

FIX = "restore it, or write the records again with rotnet-pipeline into a new --output-dir"


def _set(path: str, value) -> Callable[[dict], None]:
    """A mutation setting the dotted `path` (list indices as numbers) of a manifest to `value`."""

    def mutate(manifest: dict) -> None:
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        node = manifest
        for part in parents:
            node = node[part]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return mutate


CASES = [
    (
        "splits.train.shards.0.num_records",
        "12",
        'splits.train.shards[0].num_records must be an integer >= 0, not "12" (str)',
    ),
    ("splits.train.num_images", "six", 'splits.train.num_images must be an integer >= 0, not "six" (str)'),
    ("num_images_read", "x", 'num_images_read must be an integer >= 0, not "x" (str)'),
    (
        "splits.train.shards.0.num_bytes",
        -5,
        "splits.train.shards[0].num_bytes must be an integer >= 0, not -5 (int)",
    ),
    ("num_errors", -1, "num_errors must be an integer >= 0, not -1 (int)"),
    ("num_errors", True, "num_errors must be an integer >= 0, not true (bool)"),
    ("image.height", "28", 'image.height must be an integer >= 1, not "28" (str)'),
    ("image", None, "image must be a JSON object, not null (NoneType)"),
    ("angles_degrees", "0,90", 'angles_degrees must be a list, not "0,90" (str)'),
    ("angles_degrees", [0.5, 90], "angles_degrees[0] must be an integer >= 0, not 0.5 (float)"),
    ("splits", [], "splits must be a JSON object, not [] (list)"),
    ("splits.train.shards.0.name", 5, "splits.train.shards[0].name must be a string, not 5 (int)"),
    ("splits.train.shards", KeyError, "splits.train.shards is missing"),
    ("dataset", KeyError, "dataset is missing"),
    ("error_files", "errors.jsonl", 'error_files must be a list, not "errors.jsonl" (str)'),
]


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("schema") / "records"
    write_records_dir(directory, images_per_split={"train": 2, "validation": 1}, angles=(0, 90))
    return directory


def damaged_copy(records_dir: Path, target: Path, mutate: Callable[[dict], None]) -> Path:
    target.mkdir()
    for item in records_dir.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    manifest = json.loads((records_dir / schemas.MANIFEST_NAME).read_text())
    mutated = copy.deepcopy(manifest)
    mutate(mutated)
    (target / schemas.MANIFEST_NAME).write_text(json.dumps(mutated))
    return target


@pytest.mark.parametrize(("field", "value", "message"), CASES, ids=[f"{c[0]}={c[1]!r}" for c in CASES])
def test_each_malformed_field_is_named_with_the_fix(
    records_dir: Path, tmp_path: Path, field, value, message
) -> None:
    damaged = damaged_copy(records_dir, tmp_path / "damaged", _set(field, value))
    with pytest.raises(schemas.ManifestError) as raised:
        schemas.load_manifest(str(damaged))
    text = str(raised.value)
    assert (
        text
        == f"{damaged / schemas.MANIFEST_NAME}: field {message}; the manifest is damaged or was edited by hand: {FIX}"
    )


def test_the_intact_manifest_still_loads_and_non_utf8_or_special_files_are_refused(
    records_dir: Path, tmp_path: Path
) -> None:
    assert schemas.load_manifest(str(records_dir)).num_records == 3 * 2
    damaged = damaged_copy(records_dir, tmp_path / "bytes", lambda manifest: None)
    (damaged / schemas.MANIFEST_NAME).write_bytes(b'{"schema_version": 1, "dataset": "\xff"}')
    with pytest.raises(schemas.ManifestError, match="is not UTF-8 text"):
        schemas.load_manifest(str(damaged))
    (damaged / schemas.MANIFEST_NAME).unlink()
    (damaged / schemas.MANIFEST_NAME).mkdir()
    with pytest.raises(schemas.ManifestError, match="is not a regular file of at most 67,108,864 bytes"):
        schemas.load_manifest(str(damaged))


@pytest.mark.slow
def test_train_evaluate_and_inspect_print_one_line_for_a_string_record_count(
    records_dir: Path, tmp_path: Path
) -> None:
    from tools.inspect import main as inspect_main
    from trainer.cli import main as train_main
    from trainer.evaluate_cli import main as evaluate_main

    damaged = str(
        damaged_copy(records_dir, tmp_path / "damaged", _set("splits.train.shards.0.num_records", "12"))
    )
    model = tmp_path / "model"
    model.mkdir()
    commands = {
        "rotnet-inspect": (inspect_main, [damaged]),
        "rotnet-train": (
            train_main,
            ["--records", damaged, "--output", str(tmp_path / "run"), "--epochs", "1"],
        ),
        "rotnet-evaluate": (evaluate_main, ["--model", str(model), "--records", damaged]),
    }
    for name, (command, args) in commands.items():
        result = CliRunner().invoke(command, args)
        assert result.exit_code in (1, 2), f"{name}: {result.exit_code} {result.output}"
        assert not isinstance(result.exception, TypeError) and "Traceback" not in result.output, name
        [error] = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert "splits.train.shards[0].num_records must be an integer >= 0" in error and FIX in error, name
    assert not (tmp_path / "run").exists(), "rotnet-train stopped before writing anything"
