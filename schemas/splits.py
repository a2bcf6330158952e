"""Stable, order-independent assignment of source images to splits and subsets.

A split depends only on the image id and a salt, never on listing order or the number of workers, so
every machine and every rerun puts each image in the same split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_SALT = "rotnet-split-v1"


def stable_fraction(key: str, salt: str = DEFAULT_SALT) -> float:
    """Map a key to a uniform float in [0, 1) using SHA-256 (stable across Python runs and machines)."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(image_id: str, validation_fraction: float, salt: str = DEFAULT_SALT) -> str:
    """'validation' for about `validation_fraction` of ids, 'train' for the rest."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction {validation_fraction} must be in [0, 1)")
    return "validation" if stable_fraction(image_id, salt) < validation_fraction else "train"


def in_subset(image_id: str, fraction: float, salt: str = "rotnet-subset-v1") -> bool:
    """True for a stable `fraction` of ids; nested: the subset at 0.1 is inside the subset at 0.5."""
    return stable_fraction(image_id, salt) < fraction


# --- The validation sample -------------------------------------------------------------------------
# Validation scores the same records every epoch: about a fraction of a split's records, picked by a
# hash of each record's key (image id and angle), so the tf.data chain (trainer.data) and the TF-free
# loader (trainer.record_stream) pick the same records whatever order they read them in.
VALIDATION_SAMPLE_SALT = "rotnet-validation-sample-v1"


def in_validation_sample(image_id: str, angle_degrees: int, fraction: float) -> bool:
    """True for a stable `fraction` of records, keyed by (image id, angle in degrees); all at 1.0."""
    if fraction >= 1.0:
        return True
    return stable_fraction(f"{image_id}\x00{int(angle_degrees)}", VALIDATION_SAMPLE_SALT) < fraction


def validation_sample_mask(
    image_ids: Sequence[str | bytes], angles_degrees: Sequence[int], fraction: float
) -> list[bool]:
    """`in_validation_sample` of each (image id, angle) pair; ids may be UTF-8 bytes (as parsed)."""
    return [
        in_validation_sample(
            image_id.decode("utf-8") if isinstance(image_id, bytes) else image_id, angle, fraction
        )
        for image_id, angle in zip(image_ids, angles_degrees, strict=True)
    ]
