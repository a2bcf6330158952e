"""Street View zip members are streamed with a bounded buffer (issue 17, item 4): a small zip of many
large members of zeros (each under the per-member cap) no longer takes memory in proportion to the
number of members. Only member names cross the shuffle; each member is read on its own, in chunks,
never past the cap."""

from __future__ import annotations

import json
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from pipeline.datasets import street_view
from tests.pipeline_helpers import LOCAL_ONE_WORKER, run_cli

MEMBER_BYTES = 3 << 20  # zeros: a few KB compressed


def _zip_of_zeros(path: Path, members: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(members):
            archive.writestr(f"{index:06d}_1.jpg", b"\0" * MEMBER_BYTES)
    return path


def test_listing_a_part_reads_names_only(tmp_path: Path) -> None:
    part = _zip_of_zeros(tmp_path / "part1.zip", 6)
    fn = street_view._ListZipPartFn(_config(tmp_path), None)
    fn.setup()
    tracemalloc.start()
    try:
        elements = list(fn.process(("part1.zip", str(part))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [element[2] for element in elements] == [f"{index:06d}_1.jpg" for index in range(6)]
    assert all(isinstance(item, str) for element in elements for item in element)  # no bytes
    assert peak < MEMBER_BYTES  # no member was read


def test_members_are_read_one_at_a_time_in_chunks_up_to_the_cap(tmp_path: Path, monkeypatch) -> None:
    part = _zip_of_zeros(tmp_path / "part1.zip", 8)
    monkeypatch.setattr(street_view, "READ_CHUNK_BYTES", 64 << 10)
    reads: list[int] = []
    original_open = zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):  # every read of every member, with its size
        handle = original_open(self, name, *args, **kwargs)
        original_read = handle.read

        def read(n=-1):
            reads.append(n)
            return original_read(n)

        handle.read = read
        return handle

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    fn = street_view._ReadZipMemberFn(_config(tmp_path), None)
    fn.setup()
    peaks = []
    tracemalloc.start()
    try:
        for index in range(8):
            tracemalloc.reset_peak()
            [image] = fn.process(("part1.zip", str(part), f"{index:06d}_1.jpg", f"{index:06d}_1"))
            assert len(image.encoded) == MEMBER_BYTES
            del image
            peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
        fn.teardown()
    assert reads and max(reads) == 64 << 10 and -1 not in reads  # bounded reads, never read-it-all
    # One member at a time: the peak is a few copies of one member, the same for the 8th as the 1st.
    assert max(peaks) < 4 * MEMBER_BYTES
    assert max(peaks[4:]) < peaks[0] + MEMBER_BYTES

    # A member that decompresses past the cap stops at the cap (one error, not a bigger buffer).
    monkeypatch.setattr(street_view, "MAX_MEMBER_BYTES", MEMBER_BYTES // 2)
    [error] = fn.process(("part1.zip", str(part), "000000_1.jpg", "000000_1"))
    assert "over the" in json.dumps(error.value)


def _config(tmp_path: Path):
    from pipeline.config import PipelineConfig

    return PipelineConfig(dataset="street_view", output_dir=str(tmp_path / "out"), angles_degrees=(0, 90))


@pytest.mark.slow
def test_pipeline_peak_memory_does_not_grow_with_members(tmp_path: Path) -> None:
    """The whole in-process pipeline on 2 and on 10 members of zeros: every member one errors-file line,
    and the traced peak with 10 members within one member's size of the peak with 2 (before: +8 x)."""
    peaks = {}
    for members in (2, 10):
        directory = tmp_path / f"sv{members}"
        directory.mkdir()
        _zip_of_zeros(directory / "part1.zip", members)
        tracemalloc.start()
        try:
            result = run_cli(
                "--dataset", "street_view", "--street-view-dir", str(directory),
                "--output-dir", str(tmp_path / f"out{members}"), "--angles", "0,90", "--image-size", "16",
                "--max-error-fraction", "1", *LOCAL_ONE_WORKER,
            )  # fmt: skip
            peaks[members] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.exit_code == 0, result.output  # every member an error, allowed by the fraction 1
        assert f"images read {members}; errors {members} (100.00%)" in result.output
    assert peaks[10] < peaks[2] + 2 * MEMBER_BYTES, peaks
