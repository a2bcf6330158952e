"""TFRecord framing without TensorFlow: readable by TF, reads TF's files, and finds damage."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import tfrecord_file

RECORDS = [b"", b"a", b"\x00" * 1000, bytes(range(256))]


@pytest.mark.parametrize("name", ["shard.tfrecord", "shard.tfrecord.gz"])
def test_round_trip_and_tensorflow_agrees(tmp_path: Path, name: str) -> None:
    path = str(tmp_path / name)
    assert tfrecord_file.write_records(path, RECORDS) == len(RECORDS)
    assert list(tfrecord_file.iter_records(path)) == RECORDS
    tf = pytest.importorskip("tensorflow")
    compression = "GZIP" if name.endswith(".gz") else ""
    assert [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type=compression)] == RECORDS
    tf_path = str(tmp_path / ("tf-" + name))
    with tf.io.TFRecordWriter(tf_path, options=compression or None) as writer:
        for data in RECORDS:
            writer.write(data)
    assert list(tfrecord_file.iter_records(tf_path)) == RECORDS


def test_flipped_bit_is_found_with_verify_only(tmp_path: Path) -> None:
    path = tmp_path / "shard.tfrecord"
    tfrecord_file.write_records(str(path), RECORDS)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # inside the last record's payload
    path.write_bytes(bytes(data))
    assert len(list(tfrecord_file.iter_records(str(path), verify=False))) == len(RECORDS)
    with pytest.raises(
        tfrecord_file.CorruptShardError, match=r"shard.tfrecord: data CRC mismatch at byte offset"
    ):
        list(tfrecord_file.iter_records(str(path)))


def test_truncated_shard_names_the_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "shard.tfrecord"
    tfrecord_file.write_records(str(path), RECORDS)
    full = path.read_bytes()
    path.write_bytes(full[:-5])
    with pytest.raises(tfrecord_file.CorruptShardError, match="truncated record") as error:
        list(tfrecord_file.iter_records(str(path), verify=False))
    assert error.value.path == str(path)
    assert error.value.offset == len(tfrecord_file.frame_record(b"")) + len(
        tfrecord_file.frame_record(b"a")
    ) + len(tfrecord_file.frame_record(b"\x00" * 1000))
    path.write_bytes(full[:3])
    with pytest.raises(tfrecord_file.CorruptShardError, match="truncated record header"):
        list(tfrecord_file.iter_records(str(path), verify=False))


@pytest.mark.parametrize("name", ["shard.tfrecord", "shard.tfrecord.gz"])
def test_write_many_writes_the_bytes_of_write(tmp_path: Path, name: str) -> None:
    records = [*RECORDS, b"x" * 300, b"y" * 300]
    assert tfrecord_file.frame_records(records) == b"".join(map(tfrecord_file.frame_record, records))
    with tfrecord_file.ShardWriter(str(tmp_path / ("one-" + name))) as one:
        for data in records:
            one.write(data)
    with tfrecord_file.ShardWriter(str(tmp_path / ("many-" + name))) as many:
        many.write_many(records[:3])
        many.write_many([])
        many.write_many(records[3:])
    assert (tmp_path / ("one-" + name)).read_bytes() == (tmp_path / ("many-" + name)).read_bytes()
    assert (many.num_records, many.num_bytes, many.sha256) == (one.num_records, one.num_bytes, one.sha256)
