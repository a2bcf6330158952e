"""pipeline.datasets.mnist on the real 5k IDX subset: parsing, validation, offline directories and the download path."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct

import numpy as np
import pytest

from pipeline.datasets import mnist
from pipeline.download import ChecksumError

FAST = {"backoff_seconds": 0.01, "timeout_seconds": 10.0}


@pytest.fixture(scope="module")
def subset_files(shared_data):
    directory = shared_data / "mnist-5k"
    return directory / "train-images-idx3-ubyte.gz", directory / "train-labels-idx1-ubyte.gz"


@pytest.fixture(scope="module")
def subset(subset_files):
    images_path, labels_path = subset_files
    return mnist.load_split(images_path.read_bytes(), labels_path.read_bytes())


def _idx(magic: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">I{len(shape)}I", magic, *shape) + payload


def test_real_subset_reads_as_5000_digits_500_per_class(subset):
    images, labels = subset
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0
    # Digits are ink on black: the border is background, the center has ink.
    assert images[:, 0, :].mean() < 1 and images[:, 10:18, 10:18].mean() > 50
    assert images.flags.writeable


def test_gzip_and_raw_idx_parse_the_same(subset_files):
    images_path, _ = subset_files
    compressed = images_path.read_bytes()
    np.testing.assert_array_equal(mnist.read_idx(compressed), mnist.read_idx(gzip.decompress(compressed)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter than the 4-byte magic"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt or truncated gzip"),
        (b"<html>404 not found</html>", "does not start with two zero bytes"),
        (_idx(0x00000D03, (1, 2, 2), b"\0" * 16), "not unsigned byte"),
        (_idx(0x00000802, (2, 2), b"\0" * 4), "2 dimensions"),
        (_idx(0x00000803, (), b""), "truncated IDX header"),
        (_idx(0x00000803, (10, 28, 28), b"\0" * 100), "payload truncated"),
        (_idx(0x00000801, (3,), b"\0" * 4), "has trailing bytes"),
    ],
    ids=["empty", "bad-gzip", "html", "float-type", "2-dims", "short-header", "truncated", "trailing"],
)
def test_malformed_idx_raises_with_reason(data, reason):
    with pytest.raises(ValueError, match=reason):
        mnist.read_idx(data)


def test_truncated_real_gzip_file_is_rejected(subset_files):
    images_path, _ = subset_files
    data = images_path.read_bytes()
    with pytest.raises(ValueError, match="gzip"):
        mnist.read_idx(data[: len(data) // 2])


def test_load_split_checks_counts_kinds_sizes_and_labels():
    images = _idx(mnist.IMAGES_MAGIC, (2, 28, 28), b"\0" * 2 * 784)
    labels = _idx(mnist.LABELS_MAGIC, (2,), b"\x03\x07")
    loaded_images, loaded_labels = mnist.load_split(images, labels)
    assert loaded_images.shape == (2, 28, 28) and loaded_labels.tolist() == [3, 7]
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        mnist.load_split(images, _idx(mnist.LABELS_MAGIC, (3,), b"\0\0\0"))
    with pytest.raises(ValueError, match="labels file holds a 3-dimensional"):
        mnist.load_split(images, images)
    with pytest.raises(ValueError, match="images file holds a 1-dimensional"):
        mnist.load_split(labels, labels)
    with pytest.raises(ValueError, match="28x28, these are 4x4"):
        mnist.load_split(_idx(mnist.IMAGES_MAGIC, (2, 4, 4), b"\0" * 32), labels)
    with pytest.raises(ValueError, match="label 12 is not a digit"):
        mnist.load_split(images, _idx(mnist.LABELS_MAGIC, (2,), b"\x01\x0c"))


def test_official_files_checksums_and_splits_are_consistent():
    assert set(mnist.MNIST_FILES) == {name for names in mnist.SPLIT_FILES.values() for name in names}
    assert mnist.MNIST_FILES["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert mnist.MNIST_FILES["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"
    assert all(len(md5) == 32 and int(md5, 16) >= 0 for md5 in mnist.MNIST_FILES.values())
    assert mnist.SPLIT_FILES["test"] == ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def test_image_id_is_zero_padded_and_stable():
    assert mnist.image_id(42) == "00042"
    assert mnist.image_id(59_999) == "59999"
    assert sorted(mnist.image_id(index) for index in (10, 9, 100)) == ["00009", "00010", "00100"]
    with pytest.raises(ValueError):
        mnist.image_id(-1)


def test_mnist_urls_cover_every_mirror_in_order():
    urls = mnist.mnist_urls("train-labels-idx1-ubyte.gz", ("http://a/mnist", "http://b/x/"))
    assert urls == ["http://a/mnist/train-labels-idx1-ubyte.gz", "http://b/x/train-labels-idx1-ubyte.gz"]
    assert len(mnist.mnist_urls("t10k-images-idx3-ubyte.gz")) == len(mnist.MNIST_MIRRORS)
    with pytest.raises(ValueError, match="not an MNIST file"):
        mnist.mnist_urls("train-images.gz")


def test_offline_subset_directory_has_only_the_train_split(shared_data, subset):
    found = mnist.find_offline_files(shared_data / "mnist-5k")
    assert list(found) == ["train"]
    images, labels = mnist.read_offline_split(found["train"])
    np.testing.assert_array_equal(images, subset[0])
    np.testing.assert_array_equal(labels, subset[1])


def test_offline_directory_accepts_uncompressed_names_and_skips_half_splits(tmp_path, subset_files, caplog):
    images_path, labels_path = subset_files
    (tmp_path / "train-images-idx3-ubyte").write_bytes(gzip.decompress(images_path.read_bytes()))
    shutil.copy(labels_path, tmp_path / labels_path.name)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"only the images of the test split")
    found = mnist.find_offline_files(tmp_path)
    assert found == {"train": (tmp_path / "train-images-idx3-ubyte", tmp_path / labels_path.name)}
    assert "test split skipped" in caplog.text and "t10k-labels-idx1-ubyte.gz" in caplog.text
    images, labels = mnist.read_offline_split(found["train"])
    assert images.shape == (5000, 28, 28) and len(labels) == 5000


def test_offline_directory_without_a_complete_split_says_what_it_found(tmp_path):
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as raised:
        mnist.find_offline_files(tmp_path)
    message = str(raised.value)
    assert "found: train-labels-idx1-ubyte.gz" in message
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mnist.find_offline_files(tmp_path / "nowhere")


def test_download_of_the_real_files_through_a_local_mirror(http_server, tmp_path, subset_files, subset):
    base_url, root = http_server
    for path in subset_files:
        shutil.copy(path, root / path.name)
    mirrors = ("http://127.0.0.1:9/unreachable/", base_url + "/")  # the first mirror refuses connections
    cache = tmp_path / "cache"
    downloaded = [
        mnist.download_file(
            path.name, cache, mirrors, {path.name: hashlib.md5(path.read_bytes()).hexdigest()}, **FAST
        )
        for path in subset_files
    ]
    assert [path.name for path in downloaded] == [path.name for path in subset_files]
    images, labels = mnist.load_split(downloaded[0].read_bytes(), downloaded[1].read_bytes())
    np.testing.assert_array_equal(images, subset[0])
    np.testing.assert_array_equal(labels, subset[1])


def test_download_checks_the_official_md5_by_default(http_server, tmp_path, subset_files):
    base_url, root = http_server
    images_path, _ = subset_files
    shutil.copy(images_path, root / images_path.name)
    # The subset is not the official file, so the official checksum must reject it.
    with pytest.raises(ChecksumError, match=mnist.MNIST_FILES[images_path.name]):
        mnist.download_file(images_path.name, tmp_path, (base_url,), **FAST)
    assert not (tmp_path / images_path.name).exists()
