"""tools.cue_audit: a planted cue is found, no cue scores chance, the legacy chain is caught, the default rendering isn't."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cue_audit import prerotated_digit
from pipeline import local_writer
from tools import cue_audit


def _synthetic_sample(cue_strength: float, images: int = 600, angles_per_image: int = 24) -> cue_audit.Sample:
    """Statistics with a strong per-image effect, noise, and optionally a cue in angle mod 90 (sharper
    near right angles, as the legacy chain renders MNIST)."""
    rng = np.random.default_rng(11)
    rows, angles, ids = [], [], []
    for image in range(images):
        level = rng.normal(0, 3, size=3)  # what differs between images
        for angle in rng.choice(360, angles_per_image, replace=False):
            near_right = math.cos(math.radians(4 * angle))  # 1 at right angles, -1 at 45 degrees
            noise = rng.normal(0, 1, size=3)
            rows.append(np.exp(0.3 * (level + noise + cue_strength * np.array([near_right, 0, 0]))))
            angles.append(int(angle))
            ids.append(f"{image:05d}")
    names, log_scale, isotropic = ["sharpness", "bytes", "mean"], [True, True, True], [True, True, False]
    return cue_audit.Sample(np.vstack(rows), np.array(angles), ids, names, log_scale, isotropic)


def test_a_planted_cue_is_detected() -> None:
    result = cue_audit.audit_sample(_synthetic_sample(cue_strength=2.0))
    assert result.paired.ci_low > result.chance + 0.05, result.table()
    assert result.per_feature["sharpness"]["paired"] > result.chance + 0.05
    assert result.per_feature["bytes"]["paired"] < result.chance + 0.03  # the cue-free column is not


def test_no_cue_scores_chance_within_the_interval() -> None:
    result = cue_audit.audit_sample(_synthetic_sample(cue_strength=0.0))
    for score in (result.raw, result.paired):
        assert score.ci_low <= result.chance <= score.ci_high, result.table()
        assert abs(score.accuracy - result.chance) < 0.02
    assert result.chance == pytest.approx(1 / 9, abs=0.01)


def test_wilson_interval() -> None:
    low, high = cue_audit.wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    low, high = cue_audit.wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)


def test_angle_bins_are_angle_mod_90_in_ten_degree_bins() -> None:
    assert cue_audit.angle_bins(np.array([0, 9, 10, 89, 90, 135, 359])).tolist() == [0, 0, 1, 8, 0, 4, 8]


def test_statistics_of_a_record() -> None:
    image = np.zeros((28, 28, 1), np.uint8)
    image[10:18, 12:16] = 200
    names = [name for name, _, _, _ in cue_audit.feature_table(1)]
    values = dict(zip(names, cue_audit.record_statistics(image, 123), strict=True))
    # Disc statistics weigh pixels by a radial Hann window over the inscribed disc (radius 14 px).
    yy, xx = np.mgrid[0:28, 0:28]
    radius = np.hypot(xx - 13.5, yy - 13.5)
    weights = np.where(radius < 14, np.cos(np.pi / 2 * radius / 14) ** 2, 0)
    inked = weights[10:18, 12:16].sum() / weights.sum()
    assert values["encoded_bytes"] == 123
    assert values["ink_share"] == pytest.approx(inked)
    assert values["disc_mean"] == pytest.approx(200 * inked, rel=1e-5)
    assert values["border_mean"] == 0 and values["corner_mean"] == 0
    assert values["laplacian_variance"] > 0
    assert 0 < values["band_energy_high"] < 1 and 0 < values["band_energy_mid"] < 1
    # Turning the content leaves the isotropic statistics (nearly) unchanged: a quarter turn exactly.
    turned = dict(
        zip(names, cue_audit.record_statistics(np.ascontiguousarray(np.rot90(image)), 123), strict=True)
    )
    for name, _, isotropic, _ in cue_audit.feature_table(1):
        if isotropic:
            assert turned[name] == pytest.approx(values[name], rel=1e-5), name
    assert len(cue_audit.record_statistics(np.zeros((16, 16, 3), np.uint8), 1)) == len(cue_audit.FEATURES)


@pytest.fixture(scope="module")
def digit_records(tmp_path_factory, shared_data: Path) -> dict[str, Path]:
    """200 MNIST digits x 72 angles (every 5 degrees), upright and pre-rotated, rendered by the legacy
    chain and by the angle-independent one."""
    sources = local_writer.mnist_sources(shared_data / "mnist-5k", validation_fraction=0.1)
    upright = sources["train"][:200]
    prerotated = [
        (image_id, prerotated_digit(image, index), label)
        for index, (image_id, image, label) in enumerate(upright)
    ]
    directories = {}
    for name, digits in (("upright", upright), ("prerotated", prerotated)):
        for rendering in ("legacy", "angle-independent"):
            directory = tmp_path_factory.mktemp(f"{name}-{rendering}")
            local_writer.write_rotations(
                directory,
                {"train": digits},
                dataset="mnist",
                angles=range(0, 360, 5),
                image_size=28,
                crop_largest_rect=False,
                rendering=rendering,
                num_shards=1,
            )
            directories[f"{name}/{rendering}"] = directory
    return directories


def _audit(directory: Path) -> cue_audit.CueAudit:
    return cue_audit.audit(str(directory), max_records=7200, angles_per_image=36)


def test_audit_catches_the_legacy_chain(digit_records: dict[str, Path]) -> None:
    # The legacy chain copies pixels at right angles and blurs them elsewhere, whatever the content.
    for name in ("upright/legacy", "prerotated/legacy"):
        result = _audit(digit_records[name])
        assert result.paired.ci_low > result.chance + 0.05, result.table()
        assert result.isotropic_paired.ci_low > result.chance + 0.05, result.table()
        assert result.per_feature["laplacian_variance"]["paired"] > result.chance + 0.05


def test_angle_independent_rendering_adds_no_cue(digit_records: dict[str, Path], tmp_path: Path) -> None:
    # Sources without a preferred orientation: whatever the audit finds would be the rendering's.
    # What is left is the source's own pixel grid at exact right angles (geometry.MIN_SIGMA_SOURCE_PX,
    # Jitter): measured +2.4 points of the paired statistics on 400 digits; the legacy chain, +20.
    result = _audit(digit_records["prerotated/angle-independent"])
    legacy = _audit(digit_records["prerotated/legacy"])
    for score in (result.raw, result.paired, result.isotropic_raw, result.isotropic_paired):
        assert abs(score.accuracy - result.chance) < 0.035, result.table()
    assert result.excess_points() < legacy.excess_points() / 4, (result.table(), legacy.table())
    # Upright digits: what is left is the content's orientation (upright strokes and their ends near
    # the frame), far below the legacy chain on the same records.
    upright_new = _audit(digit_records["upright/angle-independent"])
    upright_legacy = _audit(digit_records["upright/legacy"])
    assert upright_new.num_records == upright_legacy.num_records > 6000  # the same sampled records
    assert upright_new.isotropic_paired.accuracy < upright_legacy.isotropic_paired.accuracy - 0.05
    assert upright_new.per_feature["band_energy_high"]["paired"] < upright_new.chance + 0.035  # measured +2.2
    written = cue_audit.plot(upright_new, str(tmp_path / "cues.png"))
    assert Path(written).stat().st_size > 10_000
    assert upright_new.config["rendering"] == "angle-independent"
