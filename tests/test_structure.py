"""The structure of the tree, measured (issue 35): each package imports only from the floors below it,
the output rules are implemented once, and the modules a newcomer reads first stay short.

* the floors, bottom up: schemas/, pipeline/, trainer/, tools/; a module imports only from its own floor
  or below (so no module of schemas/, pipeline/ or trainer/ imports tools/);
* `os.replace` / `os.rename` (aside, then rename) appear only in schemas/output_rules.py, the one home
  of the output rules, and the gs:// layer schemas/gcs.py;
* trainer/train.py, the run itself, has at most 400 lines and no function over 60;
  pipeline/job.py, the records job, at most 300 lines;
* no dataset's own option (pipeline/datasets/NAME.py SETTINGS) is spelled in pipeline/config.py or
  pipeline/cli.py: the options are made from the declarations.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGES = ("schemas", "pipeline", "trainer", "tools", "rotnet", "benchmarks")
FLOORS = ("schemas", "pipeline", "trainer", "tools")  # bottom up
RULES_HOME = "schemas/output_rules.py"
RENAMES_ALLOWED = {RULES_HOME, "schemas/gcs.py"}


def _modules(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (REPO_ROOT / package).rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def _imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    upward = {}
    for floor, package in enumerate(FLOORS):
        above = FLOORS[floor + 1 :]
        modules = _modules(package)
        assert modules, f"{package}/ was not found"
        for path in modules:
            names = sorted(name for name in _imported(path) if name.split(".")[0] in above)
            if names:
                upward[_relative(path)] = names
    assert upward == {}


def test_files_are_renamed_into_place_only_by_the_output_rules() -> None:
    renames = re.compile(r"\bos\.(replace|rename)\b")
    found = {_relative(path) for path in _modules(*PACKAGES) if renames.search(path.read_text())}
    assert RULES_HOME in found
    assert found <= RENAMES_ALLOWED, sorted(found - RENAMES_ALLOWED)
    assert not (REPO_ROOT / "tools" / "safe_output.py").exists()
    assert not (REPO_ROOT / "pipeline" / "output_lock.py").exists()


def _function_lengths(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text(), str(path))
    return {
        f"{node.name} (line {node.lineno})": node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_the_training_run_reads_top_to_bottom() -> None:
    train = REPO_ROOT / "trainer" / "train.py"
    assert len(train.read_text().splitlines()) <= 400
    lengths = _function_lengths(train)
    assert "run (line" in " ".join(lengths) and "_fit (line" in " ".join(lengths)
    assert {name: length for name, length in lengths.items() if length > 60} == {}


def test_the_records_job_reads_as_the_job() -> None:
    assert len((REPO_ROOT / "pipeline" / "job.py").read_text().splitlines()) <= 300


def test_no_dataset_option_is_spelled_in_the_pipeline_config_or_cli() -> None:
    from pipeline import datasets

    spelled = {
        spelling
        for name in datasets.names()
        for setting in datasets.settings(name)
        for spelling in (setting.name, setting.flag)
    }
    assert {"mnist_dir", "--mnist-dir", "--input"} <= spelled  # the declarations are where they are
    for module in ("config.py", "cli.py"):
        text = (REPO_ROOT / "pipeline" / module).read_text()
        found = sorted(
            spelling for spelling in spelled if re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", text)
        )
        assert found == [], f"pipeline/{module} spells {found}"


def test_the_publish_step_is_loaded_with_the_trainer() -> None:
    """The modules that write model.keras's SavedModel at a run's end are imported when the trainer
    is: a run whose package was upgraded during its hours of training once failed at the very end,
    its new trainer/predict.py asking the old trainer/heads.py for a name it did not have."""
    import subprocess
    import sys

    script = "import sys, trainer.train; print(sorted(m for m in ('trainer.predict', 'trainer.backends') if m in sys.modules))"
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    assert completed.stdout.strip().splitlines()[-1] == "['trainer.backends', 'trainer.predict']"
