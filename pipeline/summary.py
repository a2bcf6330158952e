"""What a finished rotnet-pipeline run wrote (`JobSummary`, pipeline.job.run's result), and the summary
table rotnet-pipeline prints from it: per split its images, records, shards, MB and bytes per record,
then the images read, the errors, what was dropped or skipped, the wall time and where the manifest is.
"""

from __future__ import annotations

from dataclasses import dataclass

import schemas
from pipeline import progress
from schemas.manifest import manifest_path


@dataclass
class JobSummary:
    """What a finished run wrote, with the numbers of the final summary table."""

    info: schemas.DatasetInfo
    output_dir: str
    wall_seconds: float
    counters: dict[str, int]

    @property
    def num_records(self) -> int:
        return self.info.num_records

    def table(self) -> str:
        info = self.info
        lines = [f"{'split':<12}{'images':>10}{'records':>14}{'shards':>8}{'MB':>11}{'bytes/rec':>11}"]
        for name, split in info.splits.items():
            per_record = split.num_bytes / split.num_records if split.num_records else 0
            lines.append(
                f"{name:<12}{split.num_images:>10,}{split.num_records:>14,}{len(split.shards):>8}"
                f"{split.num_bytes / 1e6:>11.1f}{per_record:>11.0f}"
            )
        total_bytes = sum(split.num_bytes for split in info.splits.values())
        total_images = sum(split.num_images for split in info.splits.values())
        shards = sum(len(split.shards) for split in info.splits.values())
        lines.append(
            f"{'total':<12}{total_images:>10,}{info.num_records:>14,}{shards:>8}{total_bytes / 1e6:>11.1f}"
            f"{total_bytes / max(info.num_records, 1):>11.0f}"
        )
        fraction = info.num_errors / max(info.num_images_read, 1)
        rate = info.num_records / max(self.wall_seconds, 1e-9)
        unverified = info.config.get("nothing_lost")  # the runner reported no metrics: no count to show
        lines += [
            "",
            (f"images read: {unverified}" if unverified else f"images read {info.num_images_read:,}")
            + f"; errors {info.num_errors:,} ({fraction:.2%})"
            + (f" in {', '.join(info.error_files)}" if info.num_errors else "")
            + f"; views dropped {self.counters.get(progress.VIEWS_DROPPED, 0):,}"
            f"; non-image files skipped {self.counters.get(progress.FILES_SKIPPED, 0):,}",
            f"wall time {self.wall_seconds:.1f} s; {rate:,.0f} records/s; manifest {manifest_path(self.output_dir)}",
        ]
        return "\n".join(lines)
