"""The pipeline benchmark's chain without Beam does the Beam job's work: the same shard files."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

from benchmarks import pipeline as pipeline_benchmark
from pipeline import job
from pipeline.config import PipelineConfig


def test_shard_writer_chain_writes_the_beam_jobs_shards(tmp_path: Path, shared_data: Path) -> None:
    source_dir = tmp_path / "street_view"
    source_dir.mkdir()
    samples = sorted((shared_data / "street-view-samples").glob("*.jpg"))
    for sample in samples:
        shutil.copy(sample, source_dir / sample.name)
    config = PipelineConfig(
        dataset="street_view",
        output_dir=str(tmp_path / "job"),
        angles_degrees=(0, 90, 211),
        image_size=32,
        num_shards=3,
        dataset_settings={"street_view_dir": str(source_dir)},
    ).resolved()
    job.run(config, ["--direct_num_workers", "1"], show_progress=False, log=lambda line: None)
    chain_dir = tmp_path / "chain"
    chain_dir.mkdir()
    sources = sorted(source_dir.iterdir())
    count = pipeline_benchmark.shard_writer_chain(
        dataclasses.replace(config, output_dir="-"),
        lambda: pipeline_benchmark.street_view_sources(sources, config),
        chain_dir,
    )
    assert count == len(samples) * 3

    def digests(directory: Path) -> list[str]:
        shards = [path for path in directory.iterdir() if path.suffix == ".tfrecord" and path.stat().st_size]
        return sorted(hashlib.sha256(path.read_bytes()).hexdigest() for path in shards)

    chain, beam = digests(chain_dir), digests(tmp_path / "job")
    assert len(chain) >= 2  # the photos fall into more than one shard: the order across shards is tested
    assert chain == beam
