"""A Beam runner for tests/test_runner_options.py, imported only through --runner: Beam's FnApiRunner
with no metrics (as some runners have none), plus an options class only this module defines."""

from __future__ import annotations

from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.runner import PipelineRunner


class FakeRunnerOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument(
            "--fake_runner_marker", default=None, help="Known only once this module is imported."
        )


class _ResultWithoutMetrics:
    def __init__(self, result: Any) -> None:
        self._result = result
        self.state = result.state

    def wait_until_finish(self, duration: Any = None) -> Any:
        return self._result.wait_until_finish(duration)

    def metrics(self) -> Any:
        raise NotImplementedError("this runner reports no metrics")


class NoMetricsRunner(PipelineRunner):
    def run_pipeline(self, pipeline: Any, options: Any) -> Any:
        return _ResultWithoutMetrics(fn_runner.FnApiRunner().run_pipeline(pipeline, options))
