"""Training artefacts: the loss log (CSV, truncated on resume), the loss curve PNG and sample grids."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from synthface.atomic import append_text, atomic_file, atomic_write_text
from synthface.figures import save_figure

LOSS_FIELDS = ["step", "loss", "lr", "epoch", "seconds"]


class LossLog:
    """Rows of (step, loss, lr, epoch, seconds) appended to a CSV as training goes, plus the ``extra``
    columns a run logs (``identity_loss``: the identity term, beside the denoising ``loss``)."""

    def __init__(self, path: Path, extra: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.fields = LOSS_FIELDS + list(extra)

    def read(self) -> list[dict[str, float]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = []
            for row in csv.DictReader(f):
                try:
                    rows.append({k: float(row[k]) for k in self.fields})
                except (KeyError, TypeError, ValueError):
                    break  # a torn last line from a killed run
            return rows

    def truncate(self, step: int) -> None:
        """Keep the rows up to ``step`` (a resumed run continues the curve from its checkpoint)."""
        rows = [r for r in self.read() if r["step"] <= step]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self.fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _num(r[k]) for k in self.fields})
        atomic_write_text(self.path, text.getvalue())

    def append(self, step: int, loss: float, lr: float, epoch: float, seconds: float, **extra: float) -> None:
        new = not self.path.is_file()
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self.fields)
        if new:
            writer.writeheader()
        row = {"step": step, "loss": f"{loss:.6g}", "lr": f"{lr:.6g}", "epoch": f"{epoch:.4f}", "seconds": f"{seconds:.1f}"}
        writer.writerow(row | {k: f"{float(v):.6g}" for k, v in extra.items()})
        append_text(self.path, text.getvalue())


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


def plot_loss(rows: Sequence[dict[str, float]], path: Path, title: str = "generator training loss") -> Path | None:
    """Loss vs step (raw points and a smoothed line) to a PNG."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    smooth = np.empty_like(loss)
    acc = loss[0]
    for i, v in enumerate(loss):
        acc = 0.9 * acc + 0.1 * v
        smooth[i] = acc
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, loss, ".", ms=2, alpha=0.4, label="logged loss")
    ax.plot(steps, smooth, "-", lw=1.5, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel("denoising MSE")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    identity = np.array([r.get("identity_loss", np.nan) for r in rows])
    if np.isfinite(identity).any():  # the identity term on its own axis
        right = ax.twinx()
        right.plot(steps, identity, "-", lw=1.0, color="tab:red", alpha=0.7, label="identity term (1 - cos)")
        right.set_ylabel("identity term")
        right.legend(loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def image_grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 1, pad: int = 2) -> np.ndarray:
    """Tile HxWx3 uint8 images (same size) into one image, row by row, on a white background."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    out = np.full(((h + pad) * len(rows) + pad, (w + pad) * cols + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = img
    if scale > 1:
        out = np.asarray(Image.fromarray(out).resize((out.shape[1] * scale, out.shape[0] * scale), Image.NEAREST))
    return out


def save_png(array: np.ndarray, path: Path) -> Path:
    with atomic_file(path) as handle:
        Image.fromarray(array).save(handle, format="PNG")
    return path
