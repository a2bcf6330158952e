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
    assert all(isinstance(item, str | int) for element in elements for item in element)  # no bytes
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


# Peak RSS (kB) of one rotnet-pipeline run in a fresh child: the wrapper's only child is the run.
_PEAK_RSS_SCRIPT = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.stderr.write(done.stderr + done.stdout)
"""


def _one_name_zip(path: Path, members: int, member_bytes: int) -> Path:
    """A part whose members all carry one name (zipfile warns, and allows it), each `member_bytes` of zeros."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for _ in range(members):
                archive.writestr("000001_1.jpg", b"\0" * member_bytes)
    return path


def _peak_rss_mb(tmp_path: Path, source: Path, name: str, *extra: str) -> tuple[int, float, str]:
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "pipeline.cli", "--dataset", "street_view", "--street-view-dir", str(source),
        "--output-dir", str(tmp_path / name), "--angles", "0,90", "--image-size", "16",
        "--max-error-fraction", "1", *LOCAL_ONE_WORKER, *extra,
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, *command], capture_output=True, text=True, timeout=240
    )
    code, peak_kb = done.stdout.split()
    return int(code), int(peak_kb) / 1024, done.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_duplicate_ids_suffix_keeps_the_memory_bound_of_a_run_without_it(tmp_path: Path) -> None:
    """Issue 32, item 1: a part of many members of one name peaked at 7.7 GB with --duplicate-ids
    suffix (GroupById held every image's bytes; zipfile's getinfo(name) read the last member of that
    name for each of them). Now the ids are made unique on names before any bytes are read, and each
    member is read by its position: the peak with the flag is within 150 MB of the peak without it
    (before: + about 300 MB here, one MiB per member)."""
    source = tmp_path / "sv"
    source.mkdir()
    _one_name_zip(source / "part1.zip", 300, 1 << 20)  # 300 MiB of zeros in about 300 KB
    plain_code, without, plain_stderr = _peak_rss_mb(tmp_path, source, "plain")
    code, with_flag, stderr = _peak_rss_mb(tmp_path, source, "suffixed", "--duplicate-ids", "suffix")
    assert with_flag < without + 150, (with_flag, without)
    assert code == 0 and "images read 300; errors 300" in stderr, stderr
    assert plain_code == 1  # the shared id, with every member named apart:
    assert "000001_1 (300 sources: part1.zip:000001_1.jpg, part1.zip:000001_1.jpg#10" in plain_stderr
    # Every member was read as its own source (not zeros: not an image), each under its own id.
    [errors] = (tmp_path / "suffixed").glob("errors-*.jsonl")
    ids = {json.loads(line)["image_id"] for line in errors.read_text().splitlines()}
    assert len(ids) == 300 and all(image_id.startswith("000001_1~") for image_id in ids)
