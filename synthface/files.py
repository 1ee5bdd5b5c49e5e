"""What counts as an image file, and which images a folder holds, for every command that reads a folder of faces."""

from __future__ import annotations

import os
from pathlib import Path

from synthface.errors import InputError

# every format Pillow decodes that face photos come in; compared lower-case
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})


def is_image_file(path: Path) -> bool:
    """A regular, non-hidden file with an image suffix (FIFOs and devices named x.jpg are not images)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursively), sorted; hidden files and folders are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"not a folder: {root} (pass a folder of images, one sub-folder per identity)")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # regular files only (is_image_file): a FIFO or device named x.jpg would block or never end
        out += [path for path in (Path(dirpath) / name for name in filenames) if is_image_file(path)]
    return sorted(out)


def images_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))
