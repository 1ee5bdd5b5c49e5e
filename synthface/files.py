"""What counts as an image file, for every command that reads a folder of faces (one rule, one owner)."""

from __future__ import annotations

from pathlib import Path

# every format Pillow decodes that face photos come in; compared lower-case
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})


def is_image_file(path: Path) -> bool:
    """A regular, non-hidden file with an image suffix (FIFOs and devices named x.jpg are not images)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
