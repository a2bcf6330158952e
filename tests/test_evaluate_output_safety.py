"""rotnet-evaluate obeys the output rules (issue 17, item 5) and fails in one line on a broken model
(item 8): it writes only into a directory it created or that holds its ledger `.rotnet-evaluate.json`,
never over a user's file or one changed since, never through a symlink; a damaged model.keras, a FIFO
in its place or a model that is not one is one line, exit 1, no traceback."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.factories import write_records_dir
from trainer.cli import main as train_main
from trainer.evaluate_cli import main as evaluate_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    records = root / "records"
    write_records_dir(records, images_per_split={"train": 8, "validation": 2}, angles=(0, 90, 180, 270))
    model = root / "run"
    arguments = ["--records", str(records), "--output", str(model), "--epochs", "1"]
    arguments += ["--steps-per-epoch", "1", "--batch-size", "4", "--no-tensorboard"]
    result = CliRunner().invoke(train_main, arguments)
    assert result.exit_code == 0, result.output
    return {"records": records, "model": model, "root": root}


def _evaluate(run: dict[str, Path], output: Path, model: Path | None = None):
    arguments = ["--model", str(model or run["model"]), "--records", str(run["records"])]
    return CliRunner().invoke(evaluate_main, [*arguments, "--output", str(output)])


def _one_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


def test_own_directory_is_written_and_rewritten(run: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "evaluation"
    assert _evaluate(run, output).exit_code == 0
    names = {p.name for p in output.iterdir()}
    assert names == {"evaluation.json", "per_angle_error.png", "error_histogram.png", ".rotnet-evaluate.json"}
    ledger = json.loads((output / ".rotnet-evaluate.json").read_text())
    assert set(ledger["files"]) == names - {".rotnet-evaluate.json"}
    again = _evaluate(run, output)  # its own files, unchanged since: replaced
    assert again.exit_code == 0, again.output


def test_a_user_directory_is_refused_and_left_as_it_was(run: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("my notes\n")
    line = _one_line(_evaluate(run, tmp_path))
    assert "did not write" in line and "--output" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]
    assert (tmp_path / "notes.md").read_text() == "my notes\n"


def test_a_symlink_or_a_changed_file_at_an_output_name_is_refused(
    run: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "evaluation"
    assert _evaluate(run, output).exit_code == 0
    target = tmp_path / "precious.json"
    target.write_text("mine\n")
    (output / "evaluation.json").unlink()
    (output / "evaluation.json").symlink_to(target)
    line = _one_line(_evaluate(run, output))
    assert "symlink" in line
    assert target.read_text() == "mine\n" and (output / "evaluation.json").is_symlink()

    (output / "evaluation.json").unlink()
    (output / "evaluation.json").write_text("edited by hand\n")
    line = _one_line(_evaluate(run, output))
    assert "was not written by rotnet-evaluate (or was changed since)" in line
    assert (output / "evaluation.json").read_text() == "edited by hand\n"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "fifo", "config"])
def test_a_broken_model_is_one_line(run: dict[str, Path], tmp_path: Path, damage: str) -> None:
    model = tmp_path / "run"
    shutil.copytree(run["model"], model, ignore=shutil.ignore_patterns("saved_model"))
    keras_file = model / "model.keras"
    if damage == "truncated":
        os.truncate(keras_file, keras_file.stat().st_size // 2)
    elif damage == "garbage":
        keras_file.write_bytes(b"not a zip file" * 100)
    elif damage == "fifo":
        keras_file.unlink()
        os.mkfifo(keras_file)
    else:
        (model / "train_config.json").write_text("{")
    line = _one_line(_evaluate(run, tmp_path / "evaluation", model))
    assert str(model) in line
    assert "FIFO" in line if damage == "fifo" else "cannot load the model" in line


def test_a_refused_run_creates_no_directory(run: dict[str, Path], tmp_path: Path) -> None:
    """Issue 32, item 6: `--model REC --records REC` exited 2 but left REC/evaluation-validation/
    inside the records; `--split nope` exited 1 and left MODEL/evaluation-nope/. Refused before
    creating anything."""
    from tests.hostile_inputs import tree_digest

    records, model = tmp_path / "records", tmp_path / "run"
    shutil.copytree(run["records"], records)
    shutil.copytree(run["model"], model)
    before = tree_digest(records), tree_digest(model)
    not_a_model = CliRunner().invoke(evaluate_main, ["--model", str(records), "--records", str(records)])
    assert not_a_model.exit_code == 2, not_a_model.output
    assert "Traceback" not in not_a_model.output
    no_split = CliRunner().invoke(
        evaluate_main, ["--model", str(model), "--records", str(records), "--split", "nope"]
    )
    assert "split 'nope' is not in" in _one_line(no_split)
    assert (tree_digest(records), tree_digest(model)) == before
    assert not (records / "evaluation-validation").exists() and not (model / "evaluation-nope").exists()
    # An --output below a file is refused in one line, before the evaluation and without creating it.
    (tmp_path / "afile").write_text("x")
    below = _evaluate(run, tmp_path / "afile" / "evaluation")
    assert "which is not a directory" in _one_line(below)
