"""The output-directory rules on gs://, against gcp-storage-emulator on 127.0.0.1.

A gs:// path is literal too (`gs://bucket/od/ds[1]` is not a pattern matching `od/ds1`), cleanup removes
only what the old manifest lists, the ledger, temp and lock objects are gone after a run, and the
manifest verifies against the objects. The lock's create-only-if-absent precondition is not tested
here: the emulator ignores `ifGenerationMatch` (tests/test_output_rules.py uses a stand-in instead).

The emulator and a fresh bucket come from tests/conftest.py (`gcs_bucket`, the scale-out fixtures).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import schemas
import schemas.gcs
from schemas import verify
from tests.factories import write_records_dir
from tests.hostile_inputs import small_jpeg
from tests.pipeline_helpers import LOCAL_ONE_WORKER, run_cli

pytestmark = pytest.mark.slow


def objects(prefix: str) -> dict[str, str]:
    """{object path: SHA-256 of its bytes} below `prefix` (a literal prefix)."""
    from apache_beam.io.filesystems import FileSystems

    found = FileSystems.match([schemas.paths.literal_pattern(prefix.rstrip("/") + "/") + "**"])[
        0
    ].metadata_list
    digests = {}
    for item in found:
        with schemas.paths.open_binary(item.path) as handle:
            digests[item.path] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def upload(local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            with schemas.paths.open_binary(f"{prefix}/{path.relative_to(local)}", "wb") as handle:
                handle.write(path.read_bytes())


def test_gs_paths_are_literal_and_overwrite_removes_only_the_manifest_s_files(
    gcs_bucket: str, tmp_path: Path
) -> None:
    gcs = gcs_bucket
    schemas.gcs.use_emulator_credentials()  # as the commands do: this test's own uploads need no retries
    write_records_dir(tmp_path / "ds1")
    upload(tmp_path / "ds1", f"{gcs}/od/ds1")  # a finished dataset that `ds[1]` as a pattern matches
    write_records_dir(tmp_path / "old", num_shards=3)
    (tmp_path / "old" / "notes.txt").write_text("the user's, beside the old dataset")
    (tmp_path / "old" / "train-00007-of-00009.tfrecord").write_bytes(b"named like a shard, not rotnet's")
    output = f"{gcs}/od/ds[1]"
    upload(tmp_path / "old", output)
    neighbour = objects(f"{gcs}/od/ds1")
    user = {
        path: digest
        for path, digest in objects(output).items()
        if path.endswith(("notes.txt", "00009.tfrecord"))
    }
    inputs = tmp_path / "in"
    inputs.mkdir()
    for seed, name in enumerate(("a.jpg", "b.jpg")):
        (inputs / name).write_bytes(small_jpeg(seed))

    args = ["--dataset", "images", "--input", str(inputs), "--output-dir", output, "--angles", "0,90"]
    args += ["--image-size", "16", "--num-shards", "1", *LOCAL_ONE_WORKER]
    refused = run_cli(*args)
    assert refused.exit_code == 2 and "already holds a finished dataset" in refused.output, refused.output
    result = run_cli(*args, "--overwrite")
    assert result.exit_code == 0, result.output

    assert objects(f"{gcs}/od/ds1") == neighbour, "the dataset the pattern would match is untouched"
    after = objects(output)
    assert {path: after.get(path) for path in user} == user, "the user's objects are untouched"
    info = schemas.load_manifest(output)
    assert verify.check_shards(info, output, read_records=True) == []
    listed = {f"{output}/{shard.name}" for split in info.splits.values() for shard in split.shards}
    listed |= {f"{output}/{name}" for name in [*info.error_files, schemas.MANIFEST_NAME]}
    assert set(after) == listed | set(user), "old shards gone; no ledger, lock or temp object left"
