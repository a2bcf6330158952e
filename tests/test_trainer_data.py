"""The tf.data chain on tiny records directories (tests.factories): shapes, labels, angle subsets,
--max-images, gzip, validation determinism, preprocessing identical to the NumPy core, shard checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import schemas
from pipeline import geometry
from schemas import splits, verify
from tests.factories import resolved_training, synthetic_image, write_records_dir
from trainer import data
from trainer.config import TrainConfig, TrainingError
from trainer.heads import Head

ANGLES = (0, 45, 90, 180, 270, 315)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("records")
    write_records_dir(directory, images_per_split={"train": 10, "validation": 3}, angles=ANGLES, num_shards=3)
    return directory


_resolved = resolved_training  # tests/factories.py


def training_dataset(records: Path, info: schemas.DatasetInfo, config: TrainConfig, head: Head):
    counts = [shard.num_records for shard in info.splits["train"].shards]
    return data.training_dataset(info.shard_paths(str(records), "train"), config, head, counts)


def test_resolve_fills_in_the_manifest_and_default_steps(records: Path) -> None:
    config, _, _ = _resolved(records)
    assert config.image_size == [28, 28] and config.channels == 1 and config.image_format == "png"
    assert config.bin_angles == list(ANGLES) and config.preprocessing == "binarize"
    assert config.steps_per_epoch == 2  # ceil(10 source images / batch 8): one pass over the images
    assert config.validation_steps == 3  # 3 images x 6 angles = 18 records (< 2,048) / 8
    with pytest.raises(TrainingError, match=r"--angles 7 are not in these records"):
        _resolved(records, angles=[0, 7])


def test_training_batches_have_model_shapes_and_valid_labels(records: Path) -> None:
    config, info, head = _resolved(records)
    dataset = training_dataset(records, info, config, head)
    labels = []
    for images, targets in dataset.take(8):
        assert images.shape == (8, 28, 28, 1) and images.dtype.name == "uint8"  # the model preprocesses
        labels.extend(targets.numpy().tolist())
    counts = Counter(labels)
    assert set(counts) == set(range(len(ANGLES)))  # the shuffle buffer mixes every angle in


def _preprocess(images: np.ndarray, preprocessing: str) -> np.ndarray:
    """trainer.data.preprocess_images on a NumPy batch (the models' first layer, run eagerly)."""
    import tensorflow as tf

    return data.preprocess_images(tf.convert_to_tensor(images, tf.uint8), preprocessing).numpy()


def test_angle_subset_filters_and_remaps_labels(records: Path) -> None:
    config, info, head = _resolved(records, angles=[270, 90])
    assert config.bin_angles == [90, 270] and head.num_bins == 2
    images_seen = 0
    for images, targets in training_dataset(records, info, config, head).take(5):
        assert images.shape[0] == 8  # re-batched to full batches after the filter
        assert set(targets.numpy().tolist()) <= {0, 1}
        images_seen += images.shape[0]
    assert images_seen == 40
    # evaluation keeps the true angles, only those in the bins
    batches = list(data.evaluation_dataset(info.shard_paths(str(records), "validation"), config, 4))
    angles = np.concatenate([angles.numpy() for _, angles, _ in batches])
    assert sorted(angles.tolist()) == sorted([90, 270] * 3)


def test_max_images_keeps_the_stable_hash_subset(records: Path) -> None:
    config, info, _ = _resolved(records, max_images=0.5)
    kept_ids = {f"{index:05d}" for index in range(10) if splits.in_subset(f"{index:05d}", 0.5)}
    assert 0 < len(kept_ids) < 10
    assert config.num_train_images == 5 and config.train_fraction == 0.5
    import tensorflow as tf

    fields = ("image_id", "angle_degrees")
    table = tf.constant(data.label_table(config.bin_angles))
    batches = (
        data.records_in_order(info.shard_paths(str(records), "train"), config)
        .batch(8)
        .map(lambda serialized: schemas.parse_batch(serialized, fields))
        .apply(data.keep_records(table, config, config.train_fraction, fields, 8, False))
    )
    seen = {image_id.decode() for batch in batches for image_id in batch["image_id"].numpy()}
    assert seen == kept_ids


def _keyed_records(count: int) -> list[bytes]:
    """`count` tiny serialized records of 50 images x 360 angles (only their keys matter here)."""
    return [
        schemas.encode_example(
            schemas.Record(b"x", "raw", 1, 1, 1, index % 360, "mnist", "validation", f"{index // 360:05d}")
        )
        for index in range(count)
    ]


def test_validation_sample_is_the_same_whatever_the_order() -> None:
    import tensorflow as tf

    records = tf.data.Dataset.from_tensor_slices(_keyed_records(18_000))
    sampled = [list(data._validation_sample(records, 0.1).as_numpy_iterator()) for _ in range(2)]
    assert sampled[0] == sampled[1] and 1_500 < len(sampled[0]) < 2_100  # the same records every time
    reordered = records.skip(9_000).concatenate(records.take(9_000))
    same = sorted(data._validation_sample(reordered, 0.1).as_numpy_iterator())
    assert sorted(sampled[0]) == same  # whatever the read order
    assert data._validation_sample(records, 1.0) is records
    # The hash of schemas.splits, on each record's key: what the TF-free loader computes too.
    keys = [schemas.record.decode_fields(raw, ("image_id", "angle_degrees")) for raw in sampled[0]]
    assert all(splits.in_validation_sample(key["image_id"], key["angle_degrees"], 0.1) for key in keys)


def test_each_shard_pass_reads_every_record_once_in_order_from_a_new_start(tmp_path: Path) -> None:
    from schemas import tfrecord_file

    path = str(tmp_path / "shard.tfrecord")
    tfrecord_file.write_records(path, [f"{index:04d}".encode() for index in range(1_003)])
    config = TrainConfig(records=str(tmp_path), output="unused")
    # The training read: the shard list repeated endlessly, each pass over the shard from a new start.
    stream = data.endless_shard_passes([path], config, num_records=[1_003]).as_numpy_iterator()
    read = np.asarray([int(next(stream)) for _ in range(12 * 1_003)])
    passes = read.reshape(12, 1_003)
    for one_pass in passes:
        assert sorted(one_pass) == list(range(1_003))  # every record once: nothing stepped over
        assert np.count_nonzero(np.diff(one_pass) != 1) <= 1  # in file order, round once to the start
        assert one_pass[0] == 0 or one_pass[-1] == one_pass[0] - 1
    assert len({int(one_pass[0]) for one_pass in passes}) > 6  # a new start record (nearly) every pass
    in_order = [int(value) for value in data.records_in_order([path], config).as_numpy_iterator()]
    assert in_order == list(range(1_003))  # validation and evaluation: the shard as written


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_trainer_decodes_records_as_every_other_reader(image_format: str, channels: int) -> None:
    # The trainer (TensorFlow) and the tools (OpenCV: codec.decode_image; PIL) must see the same pixels
    # of a record: JPEG with libjpeg's default IDCT (INTEGER_FAST is up to ~19 levels off on photos).
    import io

    import tensorflow as tf
    from PIL import Image

    from pipeline import codec

    rng = np.random.default_rng(7)
    texture = _smooth_noise(rng.integers(0, 256, (4, 96, 96, channels), dtype=np.uint8))
    encoded = [codec.encode_image(image, image_format, 95) for image in texture]
    decoded = data.decode_images(tf.constant(encoded), image_format, 96, 96, channels).numpy()
    for image_bytes, image, original in zip(encoded, decoded, texture, strict=True):
        assert np.array_equal(image, codec.decode_image(image_bytes, image_format, 96, 96, channels))
        with Image.open(io.BytesIO(image_bytes)) as picture:
            pil = np.asarray(picture.convert("L" if channels == 1 else "RGB")).reshape(image.shape)
        assert np.array_equal(image, pil)
        assert image_format == "jpeg" or np.array_equal(image, original)  # PNG: lossless


def _smooth_noise(images: np.ndarray) -> np.ndarray:
    """Smooth noise (B, H, W, C) uint8: photo-like gradients, where IDCT variants disagree."""
    import cv2

    return np.stack([cv2.GaussianBlur(image, (0, 0), 1.5).reshape(image.shape) for image in images])


def test_shards_are_read_on_threads_only_from_object_storage() -> None:
    # Local shards: one thread, round robin (per-record thread hand-offs cost more than they hide);
    # gs://: parallel reads hide the network's latency, in order only with --deterministic.
    assert data._parallel_reads(["/data/train-00000-of-00002.tfrecord", "relative/shard"], False) == {}
    remote = data._parallel_reads(["gs://bucket/records/train-00000-of-00002.tfrecord"], False)
    assert remote == {"num_parallel_calls": data.AUTOTUNE, "deterministic": False}
    assert data._parallel_reads(["gs://bucket/a"], True)["deterministic"] is True


def test_deterministic_streams_repeat_their_batches(records: Path) -> None:
    def first_batches(**overrides) -> list[np.ndarray]:
        config, info, head = _resolved(records, deterministic=True, **overrides)
        return [images.numpy() for images, _ in training_dataset(records, info, config, head).take(6)]

    first, again = first_batches(seed=3), first_batches(seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = first_batches(seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_resolve_sets_the_validation_share(records: Path) -> None:
    config, _, _ = _resolved(records, epochs=50)
    assert config.validation_fraction == 1.0  # 18 records, fewer than the 1.25 x 3 x 8 wanted
    config, _, _ = _resolved(records, validation_steps=1)
    assert config.validation_fraction == pytest.approx(1.25 * 8 / 18)  # one batch of 8, a quarter more


def test_validation_reads_the_same_records_every_epoch(records: Path) -> None:
    config, info, head = _resolved(records)
    dataset = data.validation_dataset(info.shard_paths(str(records), "validation"), config, head, steps=2)
    assert int(dataset.cardinality()) == 2
    first = [targets.numpy().tolist() for _, targets in dataset]
    second = [targets.numpy().tolist() for _, targets in dataset]
    assert first == second and len(first) == 2


def test_gzip_raw_and_rgb_jpeg_records(tmp_path: Path) -> None:
    for name, kwargs in {
        "gzip": {"compression": "gzip"},
        "raw": {"image_format": "raw"},
        "jpeg": {"image_format": "jpeg", "channels": 3, "dataset": "street_view", "image_size": 32},
    }.items():
        directory = tmp_path / name
        write_records_dir(directory, images_per_split={"train": 2, "validation": 1}, angles=(0, 90), **kwargs)
        config, info, _ = _resolved(directory)
        batches = list(data.evaluation_dataset(info.shard_paths(str(directory), "train"), config, 4))
        images = np.concatenate([images.numpy() for images, _, _ in batches])
        assert images.shape == (4, *config.image_size, config.channels), name
        assert images.dtype == np.uint8 and images.max() > 0, name


def test_decoded_pixels_equal_the_records(records: Path) -> None:
    """tf.data decoding gives the very pixels the factory wrote (PNG is lossless), with their angles."""
    from pipeline.codec import decode_record_image
    from schemas import tfrecord_file

    config, info, _ = _resolved(records)
    paths = info.shard_paths(str(records), "validation")
    decoded = sorted(
        (int(angle), int(label), image.tobytes())
        for images, angles, labels in data.evaluation_dataset(paths, config, 5)
        for image, angle, label in zip(images.numpy(), angles.numpy(), labels.numpy(), strict=True)
    )
    written = [schemas.decode_example(raw) for path in paths for raw in tfrecord_file.iter_records(path)]
    expected = sorted((r.angle_degrees, r.label, decode_record_image(r).tobytes()) for r in written)
    assert len(decoded) == 18 and decoded == expected


def test_preprocessing_matches_numpy_and_keras() -> None:
    import keras

    image = synthetic_image(3, size=28, channels=1)
    image[0, :4, 0] = [0, 25, 26, 255]  # around the 0.1 threshold: 25.5
    np.testing.assert_array_equal(_preprocess(image[np.newaxis], "binarize")[0], geometry.binarize(image))
    np.testing.assert_allclose(_preprocess(image[np.newaxis], "scale")[0], image / 255.0, rtol=1e-6)
    rgb = synthetic_image(4, size=32, channels=3)[np.newaxis]
    expected = keras.applications.resnet50.preprocess_input(rgb.astype(np.float32))
    np.testing.assert_allclose(_preprocess(rgb, "caffe"), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError):
        _preprocess(rgb, "unknown")


def test_label_table() -> None:
    table = data.label_table([10, 0, 350])
    assert table[10] == 0 and table[0] == 1 and table[350] == 2
    assert (table >= 0).sum() == 3 and table[5] == -1


def test_shard_checks_find_truncation_and_bit_flips(tmp_path: Path) -> None:
    info = write_records_dir(tmp_path, images_per_split={"train": 2, "validation": 1}, angles=(0, 90))
    assert verify.check_shards(info, str(tmp_path), ["train"]) == []
    truncated, flipped = info.shard_paths(str(tmp_path), "train")
    content = Path(truncated).read_bytes()
    Path(truncated).write_bytes(content[:-7])
    problems = verify.check_shards(info, str(tmp_path), ["train"])
    assert [problem.path for problem in problems] == [truncated] and "truncated" in problems[0].reason
    content = bytearray(Path(flipped).read_bytes())
    content[40] ^= 0xFF
    Path(flipped).write_bytes(bytes(content))
    assert verify.check_shards(info, str(tmp_path), ["train"]) == problems  # same size: only CRCs tell
    damaged = verify.first_damaged_shard([flipped])
    assert damaged is not None and damaged.path == flipped and "CRC" in damaged.reason
    read = verify.check_shards(info, str(tmp_path), ["train"], read_records=True)
    assert [problem.path for problem in read] == [truncated, flipped]
    message = data.damaged_record_message(
        [truncated, flipped], RuntimeError("corrupted record at 12"), "fix it"
    )
    assert message.startswith(f"damaged shard {truncated}: ") and message.endswith("; fix it")
