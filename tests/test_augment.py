"""--augment (trainer.data.augment_images): deterministic under a seed, blind to labels and angles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import schemas
from tests.factories import synthetic_image, write_records_dir
from trainer import data
from trainer.config import TrainConfig, resolve
from trainer.heads import Head


def _batch(channels: int) -> np.ndarray:
    return np.stack([synthetic_image(index, 28, channels) for index in range(16)])


@pytest.mark.parametrize("channels", [1, 3])
def test_same_seed_same_batch_other_seed_other_batch(channels: int) -> None:
    images = _batch(channels)
    first = data.augment_images(images, tf.constant([7, 0], tf.int64)).numpy()
    again = data.augment_images(images, tf.constant([7, 0], tf.int64)).numpy()
    other = data.augment_images(images, tf.constant([7, 1], tf.int64)).numpy()
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    changed = [not np.array_equal(first[i], images[i]) for i in range(len(images))]
    assert 0 < sum(changed) <= len(images)  # each image drawn on its own


def test_the_same_operation_whatever_the_angle(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the (pixel-grid) noise, the blur or sharpening is an isotropic filter with symmetric
    # borders: augmenting a quarter-turned batch is the quarter-turned augmented batch, image by image.
    monkeypatch.setattr(data, "AUGMENT_NOISE_MAX", 0.0)
    images = _batch(1)
    seed = tf.constant([3, 5], tf.int64)
    turned = np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)))
    augmented = data.augment_images(images, seed).numpy()
    assert np.array_equal(data.augment_images(turned, seed).numpy(), np.rot90(augmented, k=1, axes=(1, 2)))
    assert not np.array_equal(augmented, images)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("records")
    write_records_dir(directory, images_per_split={"train": 12}, angles=(0, 90, 180, 270), num_shards=1)
    return directory


def _stream(records: Path, augment: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    # One shard, no shuffle buffer, --deterministic: the same records in the same order every time.
    config = TrainConfig(
        records=str(records),
        output="unused",
        batch_size=8,
        shuffle_buffer=1,
        cycle_length=1,
        deterministic=True,
    )
    config.augment = augment
    info = schemas.load_manifest(str(records))
    resolve(config, info)
    head = Head(config.head, tuple(config.bin_angles), config.sigma_degrees)
    counts = [shard.num_records for shard in info.splits["train"].shards]
    dataset = data.training_dataset(info.shard_paths(str(records), "train"), config, head, counts)
    return [(images.numpy(), targets.numpy()) for images, targets in dataset.take(6)]


def test_training_stream_augments_images_and_leaves_labels(records: Path) -> None:
    plain, augmented, again = _stream(records, False), _stream(records, True), _stream(records, True)
    for (_, plain_targets), (images, targets), (images_again, _) in zip(plain, augmented, again, strict=True):
        assert np.array_equal(targets, plain_targets)  # labels untouched
        assert np.array_equal(images, images_again)  # deterministic where the chain is
    assert any(not np.array_equal(p[0], a[0]) for p, a in zip(plain, augmented, strict=True))
