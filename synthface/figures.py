"""Writing matplotlib figures: every PNG goes through a temporary file and an atomic rename."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthface.atomic import atomic_file


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as PNG at ``path`` (parent folders created); a reader never sees a half-written file."""
    path = Path(path)
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png")
    return path
