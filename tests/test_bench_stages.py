"""The pipeline benchmark's per-stage breakdown attributes the profiled run to every stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import pipeline as pipeline_benchmark
from pipeline.config import PipelineConfig
from pipeline.datasets.common import SourceImage
from tests.factories import synthetic_image
from tests.helpers import count_records


def test_stage_breakdown_times_each_stage_of_the_shard_writer_chain(tmp_path: Path) -> None:
    config = PipelineConfig(dataset="mnist", output_dir="-", angles_degrees=(0, 45, 90, 300)).resolved()

    def images() -> list[SourceImage]:
        return [
            SourceImage("mnist", "train", f"0000{index}", index, pixels=synthetic_image(index, 28))
            for index in range(3)
        ]

    wall, count, seconds = pipeline_benchmark.stage_breakdown(config, images, tmp_path)
    assert count == 3 * 4
    written = sum(count_records(str(path)) for path in tmp_path.glob("*.tfrecord"))
    assert written == count
    assert [name.split(" ")[0] for name in seconds] == [
        "decode", "prepare", "render", "encode", "serialize", "write", "other",
    ]  # fmt: skip
    # Every stage but decode (pixels given, nothing to decode) was seen by the profiler.
    for name, value in seconds.items():
        if not name.startswith(("decode", "other")):
            assert value > 0, name
    staged = sum(value for name, value in seconds.items() if not name.startswith("other"))
    assert staged <= wall * 1.01  # disjoint stages: never more than the run
    assert np.isclose(seconds["other (shard order, keys, loops)"], max(0.0, wall - staged))
