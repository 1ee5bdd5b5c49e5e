"""Content fingerprints of the files a run loaded (model weights), so a resumed run can tell they changed.

A file's fingerprint is its size and the sha256 of its first and last MiB: reading 2 MiB per file
keeps it cheap for multi-GB weights, and any retrained or replaced weights file differs there (a
change confined to the middle of a file of the same size is not seen). Modification times are
not used: a copied model is the same model.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

_END = 1 << 20


def file_fingerprint(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(_END))
        if size > _END:
            handle.seek(max(_END, size - _END))
            digest.update(handle.read(_END))
    return {"bytes": size, "sha256_ends": digest.hexdigest()}


def file_sha256(path: Path) -> str:
    """The sha256 of a whole file (for manifests that must catch any change, not only at the ends)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def regular_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (hidden files and folders skipped), sorted, links followed."""
    out: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and path.is_file():
                out.append(path)
    return out


def folder_fingerprint(root: Path) -> dict[str, dict[str, Any]]:
    """Every regular file under ``root`` (hidden files and folders skipped), by relative path."""
    root = Path(root)
    if root.is_file():
        return {root.name: file_fingerprint(root)}
    return {path.relative_to(root).as_posix(): file_fingerprint(path) for path in regular_files(root)}


def changed_files(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Names of files added, removed or changed between two fingerprints (``{name: fingerprint}``)."""
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
