"""Matplotlib figures: every PNG goes through a temporary file and an atomic rename (:func:`save_figure`);
overlaid density histograms, one or more panels to a PNG (:func:`hist_png`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthface.atomic import atomic_file


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as PNG at ``path`` (parent folders created); a reader never sees a half-written file."""
    path = Path(path)
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png")
    return path


def hist_ax(ax: Any, series: dict[str, np.ndarray], title: str, xlabel: str, lines: dict[str, float] | None = None,
             unit: str = "images", empty_note: str = "no values to plot") -> None:  # fmt: skip
    """Overlaid density histograms on ``ax``; each legend entry counts its values in ``unit``.

    A panel with no finite value at all says so (``empty_note``) instead of staying blank."""
    if not any(np.isfinite(np.asarray(v, np.float64)).any() for v in series.values()):
        ax.text(0.5, 0.5, empty_note, ha="center", va="center", wrap=True, fontsize=9, transform=ax.transAxes)
    for name, values in series.items():
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            ax.hist(
                values,
                bins=50,
                range=(-1, 1) if "cos" in xlabel else None,
                alpha=0.6,
                density=True,
                label=f"{name} ({len(values)} {unit})",
            )
    for name, x in (lines or {}).items():
        ax.axvline(x, color="k", linestyle="--", linewidth=1)
        ax.text(x, ax.get_ylim()[1] * 0.9, f" {name} {x:g}", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def hist_png(path: Path, *panels: tuple[Any, ...]) -> Path:
    """A PNG of one or more :func:`hist_ax` panels (each the arguments after ``ax``), two a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), dpi=100, squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        hist_ax(ax, *panel)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
