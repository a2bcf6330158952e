"""Pictures for people: contact sheets of records and their corrections (Pillow only, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline import geometry
from schemas import output_rules

CELL = 128  # pixels per image cell; MNIST's 28 px are scaled up with nearest neighbour
LABEL_HEIGHT = 16


@dataclass(frozen=True)
class Tile:
    """One image with a caption under it."""

    image: np.ndarray  # HWC uint8
    caption: str


def _to_cell(image: np.ndarray) -> Image.Image:
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).convert("RGB")
    resample = Image.NEAREST if max(picture.size) < CELL // 2 else Image.BILINEAR
    picture.thumbnail((CELL, CELL), resample)
    if max(picture.size) < CELL:
        scale = CELL / max(picture.size)
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), resample)
    return picture


def render_tiles(tiles: Sequence[Tile], columns: int, title: str | None = None) -> Image.Image:
    """A grid of captioned tiles, `columns` per row, with an optional title line on top."""
    rows = max(1, -(-len(tiles) // columns))
    top = LABEL_HEIGHT + 4 if title else 0
    sheet = Image.new("RGB", (columns * (CELL + 4) + 4, top + rows * (CELL + LABEL_HEIGHT + 6) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        x = 4 + column * (CELL + 4)
        y = top + 4 + row * (CELL + LABEL_HEIGHT + 6)
        cell = _to_cell(tile.image)
        sheet.paste(cell, (x + (CELL - cell.width) // 2, y + (CELL - cell.height) // 2))
        draw.text((x, y + CELL + 2), tile.caption, fill="black", font=font)
    return sheet


def correction_tiles(
    images: Sequence[np.ndarray], angles: Sequence[int], captions: Sequence[str]
) -> list[Tile]:
    """For each image: the image as stored, then the image rotated back by its angle."""
    tiles = []
    for image, angle, caption in zip(images, angles, captions, strict=True):
        tiles.append(Tile(image, caption))
        tiles.append(Tile(geometry.undo_rotation(image, angle), f"corrected (-{angle}°)"))
    return tiles


def save(image: Image.Image, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_new_file(path: Path | str, write: Callable[[str], object]) -> Path:
    """`write(temporary_path)` a file beside `path`, then claim `path` for it with link(), which fails
    on anything already there (a user's file, a link, a directory): a figure never replaces or writes
    through what the tool did not make. FileExistsError names the path and what to do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = output_rules.aside(path, prefix=f".{path.name}.rotnet-tmp-", suffix=path.suffix, new=True)
    try:
        with temporary as handle:
            write(handle.name)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists: give another path or move that file away") from None
    return path
