"""The test records writer produces a directory that validates and decodes back to the right images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import schemas
from pipeline.codec import decode_record_image
from schemas import tfrecord_file
from tests.factories import write_records_dir


def test_written_directory_validates_and_decodes(tmp_path: Path) -> None:
    info = write_records_dir(tmp_path, angles=(0, 90), images_per_split={"train": 3, "validation": 1})
    loaded = schemas.load_manifest(str(tmp_path))
    assert loaded == info
    records = [
        schemas.decode_example(data)
        for path in loaded.shard_paths(str(tmp_path), "train")
        for data in tfrecord_file.iter_records(path)
    ]
    assert len(records) == 6 == loaded.splits["train"].num_records
    by_key = {record.key: record for record in records}
    upright = decode_record_image(by_key["mnist/train/00000/000"])
    turned = decode_record_image(by_key["mnist/train/00000/090"])
    assert np.abs(np.rot90(upright).astype(int) - turned.astype(int)).max() <= 1
