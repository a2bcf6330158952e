"""Click options shared by the commands that predict with a trained model (rotnet-evaluate,
rotnet-correct): one definition each, so their names, choices and help cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable

import click

TTA_CHOICES = (1, 2, 4)


def tta_option(default: int = 1) -> Callable:
    """--tta N (an int: 1, 2 or 4): predict also on the image turned by 180 (2) or 90/180/270 (4)
    degrees, undo the turns and average on the circle (trainer.heads.combine_rotations)."""
    return click.option(
        "--tta",
        type=click.Choice([str(choice) for choice in TTA_CHOICES]),
        default=str(default),
        show_default=True,
        callback=lambda ctx, param, value: int(value),
        help="Test-time augmentation: also predict on the image turned by 180 (2) or by 90/180/270 (4) "
        "degrees, undo the turns and average on the circle.",
    )


def batch_size_option(default: int, maximum: int | None = None) -> Callable:
    """--batch-size N: images per prediction batch, at least 1 (and at most `maximum`)."""
    return click.option(
        "--batch-size",
        type=click.IntRange(1, maximum),
        default=default,
        show_default=True,
        help="Images per prediction batch.",
    )
