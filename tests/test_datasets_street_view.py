"""pipeline.datasets.street_view on zip parts built from the real samples: names, views, counts, corruption, download."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import street_view
from pipeline.datasets.street_view import CorruptMemberError, MemberCounts, ZipImage
from pipeline.download import DownloadError

FAST = {"backoff_seconds": 0.01, "timeout_seconds": 10.0}


@pytest.fixture(scope="module")
def sample_paths(shared_data) -> list[Path]:
    paths = sorted((shared_data / "street-view-samples").glob("*.jpg"))
    assert len(paths) == 10
    return paths


def _build_part(sample_paths: list[Path], destination: Path) -> Path:
    """A zip like a GMCP part: the samples under a folder, plus a view-0, a view-5 and a non-image."""
    donor = sample_paths[0].read_bytes()
    with zipfile.ZipFile(destination, "w") as archive:
        archive.writestr(zipfile.ZipInfo("images/"), b"")  # a directory entry
        for index, path in enumerate(sample_paths):
            # Both storage methods the dataset's zips could use; JPEG barely deflates either way.
            method = zipfile.ZIP_STORED if index % 2 else zipfile.ZIP_DEFLATED
            archive.write(path, f"images/{path.name}", compress_type=method)
        archive.writestr("images/999001_0.jpg", donor)  # view 0: markers drawn on it
        archive.writestr("images/999001_5.jpg", donor)  # view 5: upward
        archive.writestr("images/readme.txt", b"not an image")
    return destination


@pytest.fixture
def part(tmp_path, sample_paths) -> Path:
    return _build_part(sample_paths, tmp_path / "part1.zip")


def _corrupt_member(archive_path: Path, member_name: str) -> None:
    """Flip bytes in the middle of a member's stored data, so its CRC-32 (or inflate) fails."""
    with zipfile.ZipFile(archive_path) as archive:
        info = archive.getinfo(member_name)
    data = bytearray(archive_path.read_bytes())
    # Local file header: 30 fixed bytes, then the name and the extra field, then the data.
    name_length, extra_length = np.frombuffer(data, "<u2", 2, info.header_offset + 26)
    start = info.header_offset + 30 + int(name_length) + int(extra_length)
    middle = start + info.compress_size // 2
    data[middle : middle + 8] = bytes(255 - byte for byte in data[middle : middle + 8])
    archive_path.write_bytes(bytes(data))


def test_parts_are_rotnets_ten_zip_urls():
    assert [part.name for part in street_view.STREET_VIEW_PARTS] == [f"part{n}.zip" for n in range(1, 11)]
    assert street_view.STREET_VIEW_PARTS[2].url == (
        "http://www.cs.ucf.edu/~aroshan/index_files/Dataset_PitOrlManh/zipped%20images/part3.zip"
    )
    assert street_view.part_urls("part3.zip", ("http://a/", "http://b")) == [
        "http://a/part3.zip",
        "http://b/part3.zip",
    ]
    with pytest.raises(ValueError, match="not a Street View part"):
        street_view.part_urls("part11.zip")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("008922_1.jpg", ("008922", 1)),
        ("images/part1/009889_4.JPG", ("009889", 4)),
        ("a\\b\\000001_0.jpeg", ("000001", 0)),
        ("000001_5.jpg", ("000001", 5)),
        ("images/", None),
        ("images/readme.txt", None),
        ("__MACOSX/images/._008922_1.jpg", None),
        ("._008922_1.jpg", None),
        ("008922.jpg", None),
        ("008922_x.jpg", None),
    ],
)
def test_parse_member_name(name, expected):
    assert street_view.parse_member_name(name) == expected


def test_zip_part_yields_kept_views_and_counts_the_rest(part, sample_paths):
    counts = MemberCounts()
    images = list(street_view.iter_zip_images(part, counts))
    assert all(isinstance(image, ZipImage) for image in images)
    assert [image.image_id for image in images] == [path.stem for path in sample_paths]
    for image, path in zip(images, sample_paths, strict=True):
        assert image.view == int(path.stem.split("_")[1]) and image.view in street_view.KEEP_VIEWS
        assert image.data == path.read_bytes()
    assert (counts.kept, counts.dropped_view0, counts.dropped_view5, counts.not_an_image) == (10, 1, 1, 2)
    assert counts.corrupt == 0 and counts.dropped_other_view == 0
    with zipfile.ZipFile(part) as archive:
        assert counts.total == len(archive.infolist())  # every member accounted for


def test_generator_returns_its_counts_and_reads_file_objects(part):
    generator = street_view.iter_zip_images(io.BytesIO(part.read_bytes()))
    kept = 0
    with pytest.raises(StopIteration) as finished:
        while True:
            next(generator)
            kept += 1
    assert kept == 10 and finished.value.value.kept == 10


def test_ids_are_the_same_whatever_the_member_order(tmp_path, sample_paths):
    forward = _build_part(sample_paths, tmp_path / "forward.zip")
    backward = _build_part(sample_paths[::-1], tmp_path / "backward.zip")
    ids = [{image.image_id for image in street_view.iter_zip_images(path)} for path in (forward, backward)]
    assert ids[0] == ids[1] == {path.stem for path in sample_paths}


def test_corrupt_member_is_reported_by_name(part, sample_paths):
    member = f"images/{sample_paths[3].name}"
    _corrupt_member(part, member)
    with pytest.raises(CorruptMemberError) as raised:
        list(street_view.iter_zip_images(part))
    assert member in str(raised.value)
    assert raised.value.image_id == sample_paths[3].stem
    assert isinstance(raised.value, ValueError)


def test_corrupt_member_can_be_yielded_and_the_rest_kept(part, sample_paths):
    bad_members = [f"images/{sample_paths[3].name}", f"images/{sample_paths[4].name}"]  # stored + deflated
    for member in bad_members:
        _corrupt_member(part, member)
    counts = MemberCounts()
    items = list(street_view.iter_zip_images(part, counts, yield_errors=True))
    errors = [item for item in items if isinstance(item, CorruptMemberError)]
    assert [error.member_name for error in errors] == bad_members
    assert all(error.reason for error in errors)
    assert counts.kept == 8 and counts.corrupt == 2 and counts.corrupt_members == bad_members
    assert counts.total == 14


def test_truncated_zip_is_not_a_readable_archive(part, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(part.read_bytes()[:-200])  # the central directory is at the end
    assert street_view.check_zip(part) == 14
    with pytest.raises(ValueError, match=r"truncated\.zip is not a readable zip archive"):
        street_view.check_zip(truncated)
    with pytest.raises(ValueError, match="not a readable zip archive"):
        next(street_view.iter_zip_images(truncated))


def test_oversized_member_is_refused_before_reading(part, monkeypatch):
    monkeypatch.setattr(street_view, "MAX_MEMBER_BYTES", 1000)
    items = list(street_view.iter_zip_images(part, yield_errors=True))
    assert len(items) == 10 and all("over the 1,000 limit" in str(item) for item in items)


def test_download_part_from_a_local_mirror_then_from_cache(http_server, tmp_path, part):
    base_url, root = http_server
    shutil.copy(part, root / "part1.zip")
    cache = tmp_path / "cache"
    path = street_view.download_part("part1.zip", cache, (base_url,), **FAST)
    assert path == cache / "part1.zip" and path.read_bytes() == part.read_bytes()
    (root / "part1.zip").unlink()  # a second call must be served from the cache
    assert street_view.download_part("part1.zip", cache, (base_url,), **FAST) == path
    assert sum(1 for image in street_view.iter_zip_images(path)) == 10


def test_download_part_rejects_a_file_that_is_not_a_zip(http_server, tmp_path):
    base_url, root = http_server
    (root / "part2.zip").write_bytes(b"<html>maintenance page</html>")
    with pytest.raises(DownloadError, match="twice but is not a readable zip"):
        street_view.download_part("part2.zip", tmp_path, (base_url,), **FAST)
    assert not (tmp_path / "part2.zip").exists()
