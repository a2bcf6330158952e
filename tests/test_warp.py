"""--warp (trainer.augment.warp_batch): a rotation-free elastic resampling with a random kernel, one
NumPy/OpenCV function behind both loaders, deterministic under a seed, labels untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.factories import resolved_training, synthetic_image, write_records_dir
from trainer import augment, data, record_stream


def _batch(count: int = 32, channels: int = 1) -> np.ndarray:
    return np.stack([synthetic_image(index, 28, channels) for index in range(count)])


def _fitted_rotation(field: np.ndarray, ink: np.ndarray) -> float:
    """The ink-weighted least-squares rotation (radians) of a (2, H, W) displacement field."""
    rows, cols = np.mgrid[0 : ink.shape[0], 0 : ink.shape[1]].astype(np.float64)
    weights = ink / ink.sum()
    x, y = cols - (weights * cols).sum(), rows - (weights * rows).sum()
    return float((weights * (x * field[1] - y * field[0])).sum() / (weights * (x * x + y * y)).sum())


def test_the_field_has_the_asked_length_and_the_same_law_along_x_and_y() -> None:
    rng = np.random.default_rng(0)
    fields = np.stack([augment.random_field(rng, 28, 28, 1.5) for _ in range(400)])
    assert fields.shape == (400, 2, 28, 28) and fields.dtype == np.float32
    lengths = np.sqrt((fields**2).sum(axis=1).mean(axis=(1, 2)))
    np.testing.assert_allclose(lengths, 1.5, rtol=1e-5)
    mean_square_x, mean_square_y = (fields[:, 0] ** 2).mean(), (fields[:, 1] ** 2).mean()
    assert abs(mean_square_x / mean_square_y - 1) < 0.1  # isotropic: no preferred axis
    assert abs(fields.mean()) < 0.1  # no drift
    assert not augment.random_field(rng, 28, 28, 0.0).any()


def test_the_warp_does_not_turn_the_ink() -> None:
    rng = np.random.default_rng(1)
    for image in _batch(8):
        ink = image[:, :, 0].astype(np.float32)
        field = augment.random_field(rng, 28, 28, 1.5)
        assert abs(_fitted_rotation(field, ink)) > 1e-4  # a raw field turns the digit a little
        assert abs(_fitted_rotation(augment._rotation_free(field, ink), ink)) < 1e-6
        # A field that is only a turn about the ink's centroid is removed entirely.
        rows, cols = np.mgrid[0:28, 0:28].astype(np.float32)
        weights = ink / ink.sum()
        x, y = cols - (weights * cols).sum(), rows - (weights * rows).sum()
        turn = np.stack([-0.05 * y, 0.05 * x]).astype(np.float32)
        np.testing.assert_allclose(augment._rotation_free(turn, ink), 0.0, atol=1e-5)
    empty = np.zeros((28, 28), np.float32)
    field = augment.random_field(rng, 28, 28, 1.0)
    assert np.array_equal(augment._rotation_free(field, empty), field)  # nothing to hold still


@pytest.mark.parametrize("channels", [1, 3])
def test_same_seed_same_batch_half_the_images_warped(channels: int) -> None:
    images = _batch(64, channels)
    first = augment.warp_batch_seeded(images, 7, 0)
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert np.array_equal(first, augment.warp_batch_seeded(images, 7, 0))
    assert not np.array_equal(first, augment.warp_batch_seeded(images, 7, 1))
    chosen = np.random.default_rng([7, 3, 0]).uniform(size=len(images)) < augment.WARP_PROBABILITY
    changed = np.array([not np.array_equal(first[i], images[i]) for i in range(len(images))])
    assert not changed[~chosen].any()  # the others pass through byte for byte
    assert changed.sum() >= 0.8 * chosen.sum() and 16 <= chosen.sum() <= 48
    # Small fields: the digit stays where it was (the mean change is a fraction of the ink).
    assert np.abs(first.astype(int) - images.astype(int)).mean() < 0.5 * images.mean()


def test_each_kernel_resamples_the_same_field_its_own_way() -> None:
    image = synthetic_image(3, 28, 1)
    nearest, bilinear, bicubic = (
        augment.warp_image(image, np.random.default_rng(0), 1.2, kernel) for kernel in augment.WARP_KERNELS
    )
    assert set(np.unique(nearest)) <= set(np.unique(image))  # nearest copies pixels: steps, no new levels
    assert len(set(np.unique(bilinear)) - set(np.unique(image))) > 0  # interpolation makes new levels
    assert not np.array_equal(bilinear, bicubic) and not np.array_equal(nearest, bilinear)
    assert (
        augment.warp_image(image, np.random.default_rng(0), 0.0, augment.WARP_KERNELS[1]).tolist()
        == image.tolist()
    )


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("records")
    write_records_dir(directory, images_per_split={"train": 12}, angles=(0, 90, 180, 270), num_shards=1)
    return directory


def _stream(records: Path, warp: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    # One shard, no shuffle buffer, --deterministic: the same records in the same order every time.
    config, info, head = resolved_training(
        records, shuffle_buffer=1, cycle_length=1, deterministic=True, seed=5
    )
    config.warp = warp
    counts = [shard.num_records for shard in info.splits["train"].shards]
    dataset = data.training_dataset(info.shard_paths(str(records), "train"), config, head, counts)
    return [(images.numpy(), targets.numpy()) for images, targets in dataset.take(6)]


def test_the_tf_data_chain_warps_each_batch_with_the_numpy_function(records: Path) -> None:
    plain, warped = _stream(records, False), _stream(records, True)
    for index, ((plain_images, plain_targets), (images, targets)) in enumerate(
        zip(plain, warped, strict=True)
    ):
        assert np.array_equal(targets, plain_targets)  # labels untouched
        assert np.array_equal(images, augment.warp_batch_seeded(plain_images, 5, index))
    assert any(not np.array_equal(p[0], w[0]) for p, w in zip(plain, warped, strict=True))


def test_the_tf_free_loader_warps_training_batches_only(records: Path) -> None:
    config, info, head = resolved_training(records, seed=5, warp=True)
    shard = info.shard_paths(str(records), "train")[0]
    batch = list(record_stream.records_in_order([shard], config))[:8]
    spec = record_stream.BatchSpec.of(config, head)
    plain, plain_targets = record_stream.decode_batch(spec, batch, 4, augment=False)
    images, targets = record_stream.decode_batch(spec, batch, 4)
    assert np.array_equal(targets, plain_targets)
    assert np.array_equal(images, augment.warp_batch_seeded(plain, 5, 4))
    assert not record_stream.BatchSpec.of(config, head, augment=False).warp  # validation: never warped


def test_warp_is_an_option_of_rotnet_train() -> None:
    from click.testing import CliRunner

    from trainer.cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "--warp / --no-warp" in result.output
    graph_warp = data.warp_images(tf.constant(_batch(8)), 2, tf.constant(9, tf.int64)).numpy()
    assert np.array_equal(graph_warp, augment.warp_batch_seeded(_batch(8), 2, 9))
