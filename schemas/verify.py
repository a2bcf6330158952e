"""The one check of a records directory's shards against its manifest, without TensorFlow or Beam.

    problems = check_shards(info, "data/records/mnist")                     # exists, size (one stat each)
    problems = check_shards(info, "data/records/mnist", read_records=True)  # + every record: CRCs,
                                                                            #   count, file SHA-256
    if problems: raise SystemExit(damaged_shard_message(problems, "re-run the pipeline"))

Used by the pipeline (before it writes the manifest), rotnet-train, rotnet-evaluate and rotnet-inspect,
so every tool finds the same damage and says it the same way. Remote paths (gs://) are stat-ed through
Beam's or TensorFlow's filesystems, whichever is installed (schemas.paths).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from schemas import paths, tfrecord_file
from schemas.manifest import DatasetInfo, ShardInfo


@dataclass(frozen=True)
class ShardProblem:
    """A shard that cannot be read as the manifest describes it."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def check_shard(
    path: str,
    expected: ShardInfo | None = None,
    read_records: bool = False,
    on_record: Callable[[bytes], None] | None = None,
) -> ShardProblem | None:
    """The first problem of one shard, or None: missing, a size other than `expected`'s, and with
    `read_records` a failed CRC, a truncated record or a record count other than `expected`'s.
    `on_record` sees every record's bytes as they are read (rotnet-inspect counts angles with it).
    A shard of the wrong size is still read with `read_records`, so the reason says where it breaks."""
    reasons = []
    not_regular = tfrecord_file.regular_file_problem(path)  # never opened: a FIFO would block
    if not_regular is not None:
        return ShardProblem(path, not_regular)
    if expected is not None:
        size = paths.size(path)
        if size is None:
            return ShardProblem(path, "missing")
        if size != expected.num_bytes:
            reasons.append(f"{size:,} bytes but the manifest says {expected.num_bytes:,} (truncated?)")
    if read_records:
        count, digest = 0, hashlib.sha256()
        try:
            for data in tfrecord_file.iter_records(path, verify=True, digest=digest):
                if on_record is not None:
                    on_record(data)
                count += 1
        except tfrecord_file.CorruptShardError as error:
            reasons.append(f"{error.reason} at byte offset {error.offset}")
        except FileNotFoundError:
            return ShardProblem(path, "missing")
        else:
            if expected is not None and count != expected.num_records:
                reasons.append(f"{count:,} records but the manifest says {expected.num_records:,}")
            if expected is not None and digest.hexdigest() != expected.sha256:
                reasons.append(
                    f"SHA-256 {digest.hexdigest()[:12]}... but the manifest says {expected.sha256[:12]}..."
                )
    return ShardProblem(path, "; ".join(reasons)) if reasons else None


def check_shards(
    info: DatasetInfo,
    records: str,
    splits: Iterable[str] | None = None,
    read_records: bool = False,
    on_shard: Callable[[str], None] | None = None,
    on_record: Callable[[str, bytes], None] | None = None,
) -> list[ShardProblem]:
    """Every problem of the shards of `splits` (default: all) of the records directory `records`.

    `on_shard(path)` is called before each shard (progress bars); `on_record(split, data)` for every
    record read (only with `read_records`).
    """
    problems = []
    for split in info.splits if splits is None else splits:
        for shard, path in zip(info.splits[split].shards, info.shard_paths(records, split), strict=True):
            if on_shard is not None:
                on_shard(path)
            seen = (lambda data, split=split: on_record(split, data)) if on_record else None
            problem = check_shard(path, shard, read_records, seen)
            if problem is not None:
                problems.append(problem)
    return problems


def first_damaged_shard(shard_paths: Sequence[str]) -> ShardProblem | None:
    """CRC-check shards in order until one is damaged. TensorFlow reports a corrupt record without
    saying which file it was reading; this finds it."""
    for path in shard_paths:
        problem = check_shard(path, read_records=True)
        if problem is not None:
            return problem
    return None


def damaged_shard_message(problems: Sequence[ShardProblem], fix: str) -> str:
    """The one sentence every tool prints for damaged shards: the first, how many, and the fix."""
    more = f" ({len(problems)} damaged shards)" if len(problems) > 1 else ""
    return f"damaged shard {problems[0]}{more}; {fix}"
