"""pipeline.runner: Beam arguments, options and failure messages.

.venv/bin/python -m pytest tests/test_runner.py -q
"""

from __future__ import annotations

import pytest

from pipeline import packaging, runner
from pipeline.config import JobError


def test_failure_message_finds_the_innermost_error() -> None:
    text = (
        "Traceback (most recent call last):\n  File x\nRuntimeError: wrapper\n\nDuring handling...\n"
        "pipeline.download.ChecksumError: could not download train.gz from any of 1 mirror(s):\n"
        "  http://x: checksum mismatch [while running 'Read/LoadSplit']"
    )
    message = runner.failure_message(RuntimeError(text))
    assert message.startswith("pipeline.download.ChecksumError: could not download train.gz")
    assert "checksum mismatch" in message and "while running" not in message


def test_unknown_beam_args_are_found_and_known_ones_pass() -> None:
    assert (
        runner.unknown_beam_args(
            ["--runner", "DataflowRunner", "--project", "p", "--temp_location", "gs://b/t"]
        )
        == []
    )
    assert runner.unknown_beam_args(["--direct_num_workers", "2", "--mnist-dri", "x"]) == ["--mnist-dri", "x"]
    options, local = runner.beam_options(
        ["--runner", "DataflowRunner", "--sdk_container_image", "r/rotnet:1"]
    )
    assert not local and options.get_all_options()["setup_file"] is None
    if packaging.missing_build_tools() is not None:
        with pytest.raises(JobError, match="--sdk_container_image"):
            runner.beam_options(["--runner", "DataflowRunner", "--project", "p"])
    else:  # the workers get the sdist built from a copy of the checkout, not --setup_file
        options, _ = runner.beam_options(["--runner", "DataflowRunner", "--project", "p"])
        [sdist] = options.get_all_options()["extra_packages"]
        assert sdist.endswith(".tar.gz") and options.get_all_options()["setup_file"] is None
    options, local = runner.beam_options([])
    assert local and options.get_all_options()["direct_running_mode"] in ("multi_processing", "in_memory")
