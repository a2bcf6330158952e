"""`rotnet-pipeline --overwrite` of a finished dataset keeps it whole until the new run has published
(issue 17, item 3): a new run that fails (bad images over --max-error-fraction, a crash while
publishing) leaves the old manifest and shards as they were, or, killed after the old manifest was
withdrawn, a ledger naming both datasets' files so the next run removes them."""

from __future__ import annotations

from pathlib import Path

import pytest

import schemas
from pipeline import job, output_dir, run_ledger
from tests.hostile_inputs import small_jpeg, tree_digest
from tests.pipeline_helpers import LOCAL_ONE_WORKER, run_cli
from tests.test_output_dir_safety import verified_ids

pytestmark = pytest.mark.slow


def _inputs(folder: Path, good: int, bad: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(good):
        (folder / f"good{index}.jpg").write_bytes(small_jpeg(index))
    for index in range(bad):
        (folder / f"bad{index}.jpg").write_bytes(b"not a jpeg at all " * 10)
    return folder


def _run(inputs: Path, output: Path, *extra: str):
    return run_cli(
        "--dataset", "images", "--input", str(inputs), "--output-dir", str(output),
        "--angles", "0,90", "--image-size", "16", "--num-shards", "2", *extra, *LOCAL_ONE_WORKER,
    )  # fmt: skip


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    output = tmp_path / "records"
    result = _run(_inputs(tmp_path / "old", good=3, bad=0), output, "--num-shards", "3")
    assert result.exit_code == 0, result.output
    assert verified_ids(output) == {"good0.jpg", "good1.jpg", "good2.jpg"}
    return output


def _dataset_files(output: Path) -> dict[str, tuple]:
    """The digest of every file but the ones a run in progress or failed adds beside a dataset."""
    extra = {run_ledger.LEDGER_NAME, output_dir.FAILED_ERRORS_NAME}
    return {name: value for name, value in tree_digest(output).items() if name not in extra}


def test_a_failing_overwrite_leaves_the_old_dataset_as_it_was(finished: Path, tmp_path: Path) -> None:
    before = _dataset_files(finished)
    new_inputs = _inputs(tmp_path / "new", good=10, bad=3)
    result = _run(new_inputs, finished, "--overwrite")
    assert result.exit_code == 1, result.output
    assert "3 of 13 source images" in result.output and "Traceback" not in result.output
    assert output_dir.FAILED_ERRORS_NAME in result.output
    assert _dataset_files(finished) == before  # manifest and shards byte-identical
    assert verified_ids(finished) == {"good0.jpg", "good1.jpg", "good2.jpg"}
    failed_errors = (finished / output_dir.FAILED_ERRORS_NAME).read_text().splitlines()
    assert len(failed_errors) == 3 and all("bad" in line for line in failed_errors)

    # The inputs fixed, the same command replaces the dataset and removes what the failed run left.
    for bad in new_inputs.glob("bad*.jpg"):
        bad.unlink()
    result = _run(new_inputs, finished, "--overwrite")
    assert result.exit_code == 0, result.output
    assert verified_ids(finished) == {f"good{index}.jpg" for index in range(10)}
    names = {path.name for path in finished.iterdir()}
    info = schemas.load_manifest(str(finished))
    listed = {shard.name for split in info.splits.values() for shard in split.shards}
    assert names == listed | {schemas.MANIFEST_NAME, *info.error_files}  # no old shard, ledger, errors


def test_a_crash_while_publishing_leaves_a_ledger_that_removes_both(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = schemas.load_manifest(str(finished))
    old_names = {shard.name for split in old.splits.values() for shard in split.shards}

    def crash(*args, **kwargs):  # not an OSError: the CLI would turn that into one line
        raise RuntimeError("simulated crash while renaming")

    monkeypatch.setattr(job, "publish", crash)
    new_inputs = _inputs(tmp_path / "new", good=4, bad=0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(new_inputs, finished, "--overwrite")
    assert not (finished / schemas.MANIFEST_NAME).exists()  # withdrawn just before the renames
    ledger = run_ledger.RunLedger.from_json((finished / run_ledger.LEDGER_NAME).read_text())
    assert old_names <= set(ledger.planned_files)
    monkeypatch.undo()

    result = _run(new_inputs, finished, "--num-shards", "1")  # no manifest: an unfinished run's dir
    assert result.exit_code == 0, result.output
    assert verified_ids(finished) == {f"good{index}.jpg" for index in range(4)}
    assert not [name for name in old_names if (finished / name).exists()], "old shards removed"
