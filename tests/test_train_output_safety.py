"""rotnet-train never destroys what is in --output: a finished run is refused
without --overwrite (model.keras byte-identical), a symlink at an output name is refused (its target
unchanged), `/`, the records directory and a user's directory are refused, and a NaN loss fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.factories import write_records_dir
from trainer.cli import main as train_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("records")
    write_records_dir(directory, images_per_split={"train": 8, "validation": 2}, angles=(0, 90, 180, 270))
    return directory


def _train(records: Path, output: Path, *extra: str):
    arguments = ["--records", str(records), "--output", str(output), "--epochs", "1"]
    arguments += ["--steps-per-epoch", "2", "--batch-size", "4", "--no-tensorboard", *extra]
    return CliRunner().invoke(train_main, arguments)


@pytest.fixture(scope="module")
def finished(records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("runs") / "finished"
    result = _train(records, output)
    assert result.exit_code == 0, result.output
    return output


def test_second_run_into_a_finished_run_leaves_model_byte_identical(records: Path, finished: Path) -> None:
    before = (finished / "model.keras").read_bytes()
    result = _train(records, finished)
    assert result.exit_code == 1
    assert "finished run" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert (finished / "model.keras").read_bytes() == before


def test_overwrite_replaces_the_finished_model(records: Path, finished: Path) -> None:
    result = _train(records, finished, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (finished / "model.keras").is_file()
    assert not (finished / ".rotnet-best-model.keras").exists()  # renamed into place


def test_symlinked_history_is_refused_and_its_target_unchanged(records: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious.csv"
    target.write_text("mine\n")
    output = tmp_path / "run"
    output.mkdir()
    (output / ".rotnet-run.json").write_text('{"tool": "rotnet-train", "files": []}\n')
    (output / "history.csv").symlink_to(target)
    result = _train(records, output)
    assert result.exit_code == 1
    assert "symlink" in result.output and "Traceback" not in result.output
    assert target.read_text() == "mine\n"


def test_user_directory_with_foreign_files_is_refused(records: Path, tmp_path: Path) -> None:
    (tmp_path / "model.keras").write_bytes(b"my model")
    result = _train(records, tmp_path)
    assert result.exit_code == 1 and "did not write" in result.output
    assert (tmp_path / "model.keras").read_bytes() == b"my model"
    assert not (tmp_path / "history.csv").exists()


@pytest.mark.parametrize("where", ["/", "records", "records/sub"])
def test_root_and_records_dir_are_refused(records: Path, where: str) -> None:
    output = Path("/") if where == "/" else records / where.removeprefix("records").lstrip("/")
    before = sorted(p.name for p in records.iterdir())
    result = _train(records, output)
    assert result.exit_code == 1, result.output
    assert ("--output /" in result.output) or ("records directory" in result.output)
    assert sorted(p.name for p in records.iterdir()) == before


def test_nan_loss_fails_and_keeps_the_last_good_model(records: Path, finished: Path) -> None:
    before = (finished / "model.keras").read_bytes()
    # Six steps: after two, one platform's loss was still finite (2.5e37, validation inf); by the
    # third update the weights are inf/NaN everywhere.
    result = _train(records, finished, "--overwrite", "--lr", "1e38", "--steps-per-epoch", "6")
    assert result.exit_code == 1, result.output
    assert "NaN or infinite" in result.output
    assert (finished / "model.keras").read_bytes() == before


def test_records_replaced_during_training_are_not_published(tmp_path: Path) -> None:
    """A pipeline --overwrite of the records while a run reads them: the run fails, no model published."""
    import keras

    from trainer import train

    records = tmp_path / "records"
    write_records_dir(records, images_per_split={"train": 8, "validation": 2}, angles=(0, 90, 180, 270))

    class ReplaceRecords(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            manifest = records / "dataset_info.json"
            manifest.write_text(manifest.read_text() + "\n")  # another run's manifest, same shards

    original = train.run
    patched = lambda config, callbacks=(), **kw: original(config, [*callbacks, ReplaceRecords()], **kw)  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "run", patched)
        result = _train(records, tmp_path / "run")
    assert result.exit_code == 1, result.output
    assert "were replaced during training" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.parametrize(
    ("hook", "logs", "where"),
    [
        ("on_train_batch_end", {"loss": float("nan")}, "training loss (epoch batch 4)"),
        ("on_epoch_end", {"loss": 2.5e37, "val_loss": float("inf")}, "validation loss (epoch 4)"),
    ],
)
def test_a_non_finite_training_or_validation_loss_stops_the_run(hook: str, logs: dict, where: str) -> None:
    """On some CPUs --lr 1e38 leaves the training loss finite (2.5e37) and the validation loss inf:
    the run must fail either way."""
    import types

    from trainer.callbacks import StopOnNonFiniteLoss

    stop = StopOnNonFiniteLoss()
    stop.set_model(types.SimpleNamespace(stop_training=False))
    stop.on_epoch_end(3, {"loss": 1.0, "val_loss": 2.0})
    stop.on_train_batch_end(3, {"loss": 1.0})
    assert stop.where is None and not stop.model.stop_training
    getattr(stop, hook)(3, logs)
    assert stop.where == where and stop.model.stop_training
