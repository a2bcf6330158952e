"""rotnet-ablate: spec checks (exit 2 naming the line), grid expansion, --output rules, CPU/GPU slots,
and end to end on tiny records: a two-arm sweep (csv, json, md), the rerun skipping both, a changed
finished arm refused then retrained or rescored, and a sweep killed mid-arm resumed."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.factories import write_records_dir
from trainer import ablate
from trainer.ablate import main as ablate_main
from trainer.ablate.report import mean_sd, numeric_option
from trainer.ablate.spec import SpecError, load_spec

REPO_ROOT = Path(__file__).resolve().parents[1]

BASE = """\
[base]
epochs = 1
steps_per_epoch = 2
validation_steps = 1
batch_size = 4
tensorboard = false
"""

TWO_ARMS = """\
[[arm]]
name = "cls"
head = "classification"

[[arm]]
name = "reg"
head = "regression"
"""


def _spec(path: Path, records: Path, body: str, header: str = "seeds = [0]\n") -> Path:
    path.write_text(f'records = "{records}"\n{header}{body}')
    return path


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("records")
    write_records_dir(directory, images_per_split={"train": 8, "validation": 2}, angles=(0, 90, 180, 270))
    return directory


@pytest.fixture(autouse=True)
def _children_import_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")


def _invoke(*args: str):
    return CliRunner().invoke(ablate_main, [str(arg) for arg in args], catch_exceptions=False)


# --- the spec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("epochz = 3\n" + BASE, 3, "unknown key 'epochz'"),
        (BASE + "epochz = 3\n", 9, "'epochz' is not a rotnet-train option"),
        ('[base]\nepochs = "ten"\n', 4, "'ten' is not a valid integer"),
        ("[base]\nepochs = 0\n", 4, "epochs must be at least 1"),
        ("[base]\nsigma = -1.0\n", 4, "--sigma must be a positive"),
        ('[base]\nhead = "softmax"\n', 4, "softmax"),
        ("[base]\naugment = 1\n", 4, "augment takes true or false"),
        ("[base]\nseed = 3\n", 4, "'seed' is set by rotnet-ablate"),
        ("[evaluate]\ntta = 3\n", 4, "tta must be 1, 2 or 4"),
        ('[evaluate]\ncodes_input = "cooked"\n', 4, "codes_input must be served or raw, not 'cooked'"),
        ('[evaluate]\nsplitt = "validation"\n', 4, "unknown [evaluate] key 'splitt'"),
        ('[evaluate]\nrotation_codes = "pipeline,nearest"\n', 4, "unknown rotation codes nearest"),
        ('[[arm]]\nname = "a"\n\n[[arm]]\nname = "b"\nlr = -1.0\n', 8, "--lr must be a positive"),
        ('[[arm]]\nname = "a/b"\n', 4, "needs a name"),
        ("[grid]\nepochs = 3\n", 4, "grid values are a non-empty list"),
        ("[grid]\nmax_images = [0.5, -2.0]\n", 4, "max-images must be positive"),
    ],
)
def test_spec_errors_exit_2_naming_the_line(
    records: Path, tmp_path: Path, body: str, line: int, message: str
) -> None:
    spec = _spec(tmp_path / "spec.toml", records, body)
    result = _invoke(spec, "--output", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert f"spec.toml:{line}: " in result.output and message in result.output, result.output
    assert not (tmp_path / "out").exists()  # nothing written, nothing trained


def test_invalid_toml_and_missing_records_are_usage_errors(records: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('records = "x"\n[base\n')
    result = _invoke(spec, "--output", tmp_path / "out")
    assert result.exit_code == 2 and "not valid TOML" in result.output
    _spec(spec, tmp_path / "nowhere", BASE)
    result = _invoke(spec, "--output", tmp_path / "out")
    assert result.exit_code == 2 and "spec.toml:1: records directory" in result.output
    assert "does not exist" in result.output


def test_grid_and_arms_expand_to_every_combination_and_seed(records: Path, tmp_path: Path) -> None:
    body = BASE + '[[arm]]\nname = "own"\nepochs = 2\n\n[grid]\nhead = ["classification", "regression"]\n'
    body += "max_images = [0.25, 0.5, 1.0]\n"
    spec = load_spec(str(_spec(tmp_path / "spec.toml", records, body, header="seeds = [0, 7]\n")))
    names = [arm.name for arm in spec.arms]
    assert names == [
        "own",
        "head-classification_max-images-0.25",
        "head-classification_max-images-0.5",
        "head-classification_max-images-1.0",
        "head-regression_max-images-0.25",
        "head-regression_max-images-0.5",
        "head-regression_max-images-1.0",
    ]
    assert spec.arms[5].options == {"head": "regression", "max_images": 0.5}
    runs = spec.runs()
    assert [run.name for run in runs[:3]] == ["own-s0", "own-s7", "head-classification_max-images-0.25-s0"]
    assert len(runs) == 14 and {run.seed for run in runs} == {0, 7}
    assert runs[0].options["epochs"] == 2 and runs[2].options["epochs"] == 1  # arm over base
    assert runs[5].options == {**spec.base, "head": "classification", "max_images": 0.5}


def test_duplicate_arm_names_are_refused(records: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path / "spec.toml", records, '[[arm]]\nname = "a"\n[[arm]]\nname = "a"\nlr = 0.1\n')
    with pytest.raises(SpecError, match="two arms are named 'a'"):
        load_spec(str(spec))


# --- small pure parts -------------------------------------------------------------------------------


def test_slots_split_cores_or_give_one_gpu_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    cpu = ablate.slots(2, [])
    assert [slot.cores for slot in cpu] == [{0, 2, 4}, {1, 3}]
    assert [slot.env["TF_NUM_INTRAOP_THREADS"] for slot in cpu] == ["3", "2"]
    assert ablate.slots(1, [])[0].cores is None  # one at a time: all the cores
    gpu = ablate.slots(3, ["0", "1"])
    assert [slot.env["CUDA_VISIBLE_DEVICES"] for slot in gpu] == ["0", "1", "0"]
    assert all(slot.cores is None for slot in gpu)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert ablate.gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert ablate.gpus() == []


def test_mean_sd_and_the_numeric_option_of_a_sweep() -> None:
    assert mean_sd([1.0, 3.0, None]) == (2.0, pytest.approx(2**0.5))
    assert mean_sd([4.0]) == (4.0, 0.0) and mean_sd([None]) == (None, None)
    rows = [{"options": {"max_images": 0.1}}, {"options": {"max_images": 1.0}}]
    assert numeric_option(rows) == "max_images"
    assert numeric_option([{"options": {"head": "a"}}, {"options": {"head": "b"}}]) is None
    assert numeric_option([*rows, {"options": {"max_images": 0.5, "lr": 0.1}}]) is None


def test_output_not_made_by_rotnet_ablate_is_refused(records: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path / "spec.toml", records, BASE)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    result = _invoke(spec, "--output", theirs)
    assert result.exit_code == 2 and "rotnet-ablate did not write" in result.output
    assert sorted(os.listdir(theirs)) == ["notes.txt"]
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    result = _invoke(spec, "--output", tmp_path / "link")
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert not (tmp_path / "elsewhere").exists()
    result = _invoke(spec, "--output", records / "ablation")
    assert result.exit_code == 2 and "records" in result.output and not (records / "ablation").exists()


# --- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(records: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished two-arm sweep (classification, regression), 1 epoch of 2 steps each."""
    root = tmp_path_factory.mktemp("sweep")
    spec = _spec(root / "spec.toml", records, BASE + '[evaluate]\nsplit = "validation"\n\n' + TWO_ARMS)
    output = root / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(REPO_ROOT))
        patch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
        result = CliRunner().invoke(ablate_main, [str(spec), "--output", str(output)], catch_exceptions=False)
    return {"spec": spec, "output": output, "result": result, "records": records}


def _rows(output: Path) -> list[dict[str, str]]:
    with open(output / "ablation.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _model_times(output: Path) -> dict[str, int]:
    return {run.name: (run / "model.keras").stat().st_mtime_ns for run in (output / "arms").iterdir()}


@pytest.mark.slow
def test_two_arm_sweep_writes_one_row_per_arm_and_every_run_dir(sweep: dict) -> None:
    result, output = sweep["result"], sweep["output"]
    assert result.exit_code == 0, result.output
    assert "[1/2]" in result.output and "[2/2]" in result.output and "min left" in result.output
    rows = _rows(output)
    assert sorted(row["arm"] for row in rows) == ["cls", "reg"]
    options = {row["arm"]: row["options"] for row in rows}
    assert options == {"cls": "head=classification", "reg": "head=regression"}
    for row in rows:
        arm = output / "arms" / f"{row['arm']}-s0"
        evaluation = json.loads((arm / "evaluation" / "evaluation.json").read_text())
        metrics = json.loads((arm / "metrics.json").read_text())
        assert float(row["mean_error_degrees"]) == pytest.approx(evaluation["mean_error_degrees"])
        assert float(row["training_minutes"]) == pytest.approx(metrics["wall_seconds"] / 60)
        assert row["seeds"] == "0" and row["runs_scored"] == "1"
        config = json.loads((arm / "train_config.json").read_text())  # an ordinary rotnet-train run
        assert config["head"] == {"cls": "classification", "reg": "regression"}[row["arm"]]
        assert config["seed"] == 0 and config["epochs"] == 1 and config["steps_per_epoch"] == 2
    errors = [float(row["mean_error_degrees"]) for row in rows]
    assert errors == sorted(errors)  # best first
    document = json.loads((output / "ablation.json").read_text())
    assert [arm["arm"] for arm in document["arms"]] == [row["arm"] for row in rows]
    assert document["base"]["epochs"] == 1 and document["records_manifest"]["dataset"] == "mnist"
    markdown = (output / "ablation.md").read_text()
    assert "| cls | head=classification | 1/1 |" in markdown and "| reg | head=regression | 1/1 |" in markdown
    assert "![ablation_arms.png](ablation_arms.png)" in markdown
    assert "![ablation_minutes.png](ablation_minutes.png)" in markdown
    assert (output / "ablation_arms.png").read_bytes()[:4] == b"\x89PNG"
    assert (output / "ablation_minutes.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(output.glob("ablation_head*.png"))  # head is not a number: no option chart
    assert not list(output.rglob(".*.tmp-*"))  # every file renamed into place


@pytest.mark.slow
def test_rerun_skips_finished_arms_and_writes_the_same_table(sweep: dict) -> None:
    output, before = sweep["output"], _model_times(sweep["output"])
    table = _rows(output)
    result = _invoke(sweep["spec"], "--output", output)
    assert result.exit_code == 0, result.output
    assert "cls-s0: finished, skipped" in result.output and "reg-s0: finished, skipped" in result.output
    assert "runs to do" not in result.output
    assert _model_times(output) == before and _rows(output) == table


@pytest.mark.slow
def test_changed_finished_arm_is_refused_then_retrained_alone(sweep: dict, tmp_path: Path) -> None:
    output = tmp_path / "study"
    shutil.copytree(sweep["output"], output, symlinks=True)
    before = _model_times(output)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        sweep["spec"].read_text().replace('head = "regression"', 'head = "regression"\nlr = 0.01')
    )
    result = _invoke(spec, "--output", output)
    assert result.exit_code == 2
    assert "would change finished runs: reg-s0;" in result.output and "--overwrite-changed" in result.output
    assert _model_times(output) == before

    result = _invoke(spec, "--output", output, "--overwrite-changed")
    assert result.exit_code == 0, result.output
    assert (
        "cls-s0: finished, skipped" in result.output
        and "reg-s0: changed in the spec, retraining" in result.output
    )
    after = _model_times(output)
    assert after["cls-s0"] == before["cls-s0"] and after["reg-s0"] != before["reg-s0"]
    config = json.loads((output / "arms" / "reg-s0" / "train_config.json").read_text())
    assert config["learning_rate"] == 0.01
    assert {row["arm"]: row["options"] for row in _rows(output)}["reg"] == "head=regression lr=0.01"


@pytest.mark.slow
def test_changed_evaluate_rescores_without_retraining(sweep: dict, tmp_path: Path) -> None:
    output = tmp_path / "study"
    shutil.copytree(sweep["output"], output, symlinks=True)
    before = _model_times(output)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        sweep["spec"].read_text().replace('split = "validation"', 'split = "validation"\ntta = 4')
    )
    assert _invoke(spec, "--output", output).exit_code == 2
    result = _invoke(spec, "--output", output, "--overwrite-changed")
    assert result.exit_code == 0, result.output
    assert "cls-s0: changed in the spec, rescoring" in result.output
    assert _model_times(output) == before
    for run in ("cls-s0", "reg-s0"):
        assert json.loads((output / "arms" / run / "evaluation" / "evaluation.json").read_text())["tta"] == 4


@pytest.mark.slow
def test_sweep_killed_mid_arm_resumes_it_and_skips_the_finished_one(sweep: dict, tmp_path: Path) -> None:
    """The study is extended by a longer arm; the whole process group is SIGKILLed while that arm trains
    (after its first epoch's backup); the rerun skips the finished arms and resumes the killed one."""
    output = tmp_path / "study"
    shutil.copytree(sweep["output"], output, symlinks=True)
    before = _model_times(output)
    spec = tmp_path / "spec.toml"
    long_arm = '\n[[arm]]\nname = "long"\nepochs = 6\nsteps_per_epoch = 3\nbackup_every_steps = 1\n'
    spec.write_text(sweep["spec"].read_text() + long_arm)
    command = [sys.executable, "-m", "trainer.ablate", str(spec), "--output", str(output)]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    metadata = output / "arms" / "long-s0" / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(metadata.read_text()).get("epoch", 0) >= 1:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # rotnet-ablate and its rotnet-train, as a lost machine would
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()
    assert json.loads(metadata.read_text())["epoch"] >= 1
    assert not (output / "arms" / "long-s0" / "metrics.json").exists()
    assert json.loads((output / "state" / "long-s0.json").read_text())["state"] == "training"

    result = _invoke(spec, "--output", output)
    assert result.exit_code == 0, result.output
    assert "cls-s0: finished, skipped" in result.output and "reg-s0: finished, skipped" in result.output
    assert "long-s0: interrupted, resuming from its backup" in result.output
    assert "1 of 3 runs to do" in result.output
    log = (output / "logs" / "long-s0.log").read_text()
    assert "resuming at epoch" in log
    metrics = json.loads((output / "arms" / "long-s0" / "metrics.json").read_text())
    # Resumed after epoch 0 and trained to the last epoch (index 5), every epoch's row kept: the backup
    # is written after CSVLogger's row (issue 32, item 5: a kill in between lost epoch 0's row).
    assert metrics["resumed_from_epoch"] >= 1 and metrics["final"]["epoch"] == 5
    assert [row["epoch"] for row in metrics["history"]] == list(range(6)), metrics["history"]
    after = _model_times(output)
    assert after["cls-s0"] == before["cls-s0"] and after["reg-s0"] == before["reg-s0"]
    rows = {row["arm"]: row for row in _rows(output)}
    assert sorted(rows) == ["cls", "long", "reg"] and rows["long"]["runs_scored"] == "1"
    assert rows["cls"] == next(row for row in _rows(sweep["output"]) if row["arm"] == "cls")


@pytest.mark.slow
def test_a_failed_run_is_named_and_the_others_still_make_the_table(records: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-manifest"
    empty.mkdir()
    body = BASE + f'[[arm]]\nname = "broken"\nrecords = "{empty}"\n'
    spec = _spec(tmp_path / "spec.toml", records, body)
    result = _invoke(spec, "--output", tmp_path / "study")
    assert result.exit_code == 1
    assert "[1/1] broken-s0: FAILED: rotnet-train exited 2; see" in result.output
    assert "runs failed: broken-s0 (rotnet-train exited 2); rerun the same command" in result.output
    rows = _rows(tmp_path / "study")
    assert [(row["arm"], row["runs_scored"], row["mean_error_degrees"]) for row in rows] == [
        ("broken", "0", "")
    ]
    assert f"records={empty}" in rows[0]["options"]
    assert "| broken | records=" in (tmp_path / "study" / "ablation.md").read_text()
    assert "dataset_info.json" in (tmp_path / "study" / "logs" / "broken-s0.log").read_text()


def test_table_only_writes_the_table_of_what_is_scored_and_trains_nothing(
    records: Path, tmp_path: Path
) -> None:
    spec = _spec(tmp_path / "spec.toml", records, BASE + TWO_ARMS)
    result = _invoke(spec, "--output", tmp_path / "nothing", "--table-only")
    assert result.exit_code == 2 and "not a rotnet-ablate study" in result.output
    study = tmp_path / "study"
    study.mkdir()
    (study / ".rotnet-ablate.json").write_text("{}")
    result = _invoke(spec, "--output", study, "--table-only")
    assert result.exit_code == 0 and "(0 of 2 runs scored)" in result.output
    assert [(row["arm"], row["runs_scored"]) for row in _rows(study)] == [("cls", "0"), ("reg", "0")]
    assert not (study / "arms").exists() and not (study / "ablation_arms.png").exists()


def test_resume_after_a_kill_before_the_first_history_row_starts_history_again(tmp_path: Path) -> None:
    """A sweep killed between rotnet-train's first backup and CSVLogger's first row left an empty
    history.csv; the resume rewrote it header-less and the run crashed at its end (found by the kill
    test above). Now the empty file is removed, so CSVLogger writes its header again."""
    import hashlib

    from trainer.config import TrainConfig
    from trainer.run_dir import prepare_resume as _prepare_resume

    (tmp_path / "backup").mkdir()
    weights = b"weights of epoch 1"  # a whole backup pair: the metadata records the weights' SHA-256
    (tmp_path / "backup" / "latest.weights.h5").write_bytes(weights)
    digest = hashlib.sha256(weights).hexdigest()
    (tmp_path / "backup" / "training_metadata.json").write_text(
        f'{{"epoch": 1, "batch": 2, "sha256": "{digest}"}}'
    )
    (tmp_path / "history.csv").write_text("")
    assert _prepare_resume(TrainConfig(output=str(tmp_path))) == 1
    assert not (tmp_path / "history.csv").exists()
    (tmp_path / "history.csv").write_text("epoch,loss\n0,1.5\n1,1.2\n")
    assert _prepare_resume(TrainConfig(output=str(tmp_path))) == 1
    assert (tmp_path / "history.csv").read_text().splitlines() == ["epoch,loss", "0,1.5"]


def test_checking_a_spec_and_skipping_finished_runs_import_no_tensorflow(
    records: Path, tmp_path: Path
) -> None:
    """A rerun with nothing to train stays quick: the spec checks, the plan and the table need no TF."""
    spec = _spec(tmp_path / "spec.toml", records, BASE + TWO_ARMS)
    code = (
        "import sys; from trainer import ablate; from trainer.ablate import report; from trainer.ablate.spec import load_spec; "
        f"spec = load_spec({str(spec)!r}); ablate.plans(spec, {str(tmp_path / 'study')!r}); "
        "print(sorted(m for m in ('tensorflow', 'keras', 'apache_beam') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- issue 32, item 4: names the filesystem cannot hold; children that outlive rotnet-ablate ----------


def test_an_arm_name_the_filesystem_cannot_hold_is_a_spec_error_at_dry_run(
    records: Path, tmp_path: Path
) -> None:
    """A 300-character arm name passed --dry-run (exit 0), then the real run failed with "File name too
    long" and left a half-made study. Now it is a spec error naming the line, before anything is made."""
    body = BASE + f'\n[[arm]]\nname = "{"a" * 300}"\nhead = "regression"\n'
    spec = _spec(tmp_path / "spec.toml", records, body)
    for extra in (["--dry-run"], []):
        result = _invoke(spec, "--output", tmp_path / "out", *extra)
        assert result.exit_code == 2, result.output
        assert "spec.toml:11: arm name 'aaaa" in result.output and "at most 255" in result.output, (
            result.output
        )
        assert not (tmp_path / "out").exists()
    # The longest name that fits is accepted (255 bytes - the suffixes rotnet-ablate adds).
    longest = 255 - len("-s0") - 18
    fits = _spec(tmp_path / "fits.toml", records, BASE + f'\n[[arm]]\nname = "{"b" * longest}"\n')
    assert _invoke(fits, "--output", tmp_path / "out", "--dry-run").exit_code == 0
    too_long = _spec(tmp_path / "over.toml", records, BASE + f'\n[[arm]]\nname = "{"b" * (longest + 1)}"\n')
    assert _invoke(too_long, "--output", tmp_path / "out", "--dry-run").exit_code == 2
    # A grid's names are checked alike, at the grid's line.
    grid = _spec(tmp_path / "grid.toml", records, BASE + f'\n[grid]\nangles = ["0,90,{"0," * 120}180"]\n')
    result = _invoke(grid, "--output", tmp_path / "out", "--dry-run")
    assert result.exit_code == 2 and "grid.toml:11: arm name" in result.output, result.output


# Holds the lock of the run directory argv[1] as rotnet-train does, until SIGTERM.
_LOCK_HOLDER = """
import signal, sys, time
from schemas.output_rules import LocalLock
lock = LocalLock(sys.argv[1])
lock.acquire()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
print("locked", flush=True)
while True:
    time.sleep(0.1)
"""


def test_a_rerun_takes_over_from_an_orphaned_rotnet_train(tmp_path: Path) -> None:
    """A rotnet-train left running in an arm (its rotnet-ablate gone) held the arm's lock, and the rerun
    failed "is being written by pid N". The rerun (which holds the study's lock) now sends it SIGTERM,
    waits for it and goes on."""
    run_dir = tmp_path / "arms" / "a-s0"
    run_dir.mkdir(parents=True)
    orphan = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(run_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert orphan.stdout.readline().strip() == "locked"
        assert ablate.stop_orphan(str(run_dir), "a-s0", timeout_s=60) == ""
        assert orphan.wait(timeout=10) == 143
    finally:
        if orphan.poll() is None:
            orphan.kill()
    assert ablate.stop_orphan(str(run_dir), "a-s0") == ""  # nobody holds it: nothing to do


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kill_9_of_rotnet_ablate_alone_stops_its_rotnet_train_and_the_rerun_resumes(
    records: Path, tmp_path: Path
) -> None:
    """kill -9 of the rotnet-ablate process alone left its rotnet-train training as an orphan. Now the
    child gets SIGTERM when its launcher dies (PR_SET_PDEATHSIG), backs up and exits 143; the rerun
    resumes the arm from that backup and finishes."""
    spec = _spec(
        tmp_path / "spec.toml",
        records,
        BASE.replace("epochs = 1", "epochs = 80")
        + 'backup_every_steps = 1\nearly_stopping_patience = 100\nlr_schedule = "cosine"\n'
        + '[evaluate]\nsplit = "validation"\n',
    )
    output = tmp_path / "study"
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.ablate", str(spec), "--output", str(output)],
        cwd=REPO_ROOT, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    run_dir = output / "arms" / "base-s0"
    metadata = run_dir / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 240
    holder = None
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:  # training: its first backup is written, and its lock names it
                if json.loads(metadata.read_text()).get("epoch", 0) >= 1:
                    holder = json.loads((run_dir / ".rotnet-lock").read_text())["pid"]
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        assert holder is not None, "rotnet-train never backed up"
        process.send_signal(signal.SIGKILL)  # rotnet-ablate alone
        assert process.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 15  # its next batch: 0.1 s; the whole run: about 20 s more
        while _alive(holder) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(holder), "rotnet-train outlived its rotnet-ablate"
    finally:
        if holder is not None and _alive(holder):
            os.kill(holder, signal.SIGKILL)
    log = (output / "logs" / "base-s0.log").read_text()
    assert "interrupted (SIGTERM): backup written to" in log, log[-2000:]
    assert not (output / "arms" / "base-s0" / "metrics.json").exists()

    result = _invoke(spec, "--output", output)
    assert result.exit_code == 0, result.output
    assert "base-s0: interrupted, resuming from its backup" in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] >= 1 and metrics["final"]["epoch"] == 79
    assert json.loads((output / "state" / "base-s0.json").read_text())["state"] == "done"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie has ended; only its parent's wait is missing
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
