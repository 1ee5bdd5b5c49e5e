"""The HTML page of ``synthface inspect``: one self-contained file a person can open and read.

``report.html`` holds, with nothing fetched from anywhere (images as ``data:`` URIs, styles and the
one script inline): the metric table (each figure with its definition and source, beside the
reference set's when one was given), the histograms ``inspect`` wrote as PNGs, and a contact sheet
with a row per identity whose images are sorted by estimated yaw (faces the detector missed come
last), so the pose variation of an identity reads left to right.

The inline script sets ``data-images-decoded`` and ``data-images-total`` on the ``<html>`` element
once every image has loaded, counting those the browser decoded (``naturalWidth > 0``): a headless
browser's DOM dump shows whether the page renders whole.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT_HTML = "report.html"


@dataclass
class SheetImage:
    data: bytes
    sample: int
    pose: tuple[float, float, float] | None = None  # yaw, pitch, roll (degrees); None: no face detected
    cos: float | None = None  # cosine to the identity centre


@dataclass
class SheetRow:
    label: int
    identity: int
    images: list[SheetImage] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes (PNG, JPEG, WebP; else octet-stream)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def data_uri(data: bytes) -> str:
    return f"data:{image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def _get(tree: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        return f"{0.0 if abs(value) < 0.5 * 10.0**-digits else value:.{digits}f}"  # no "-0.000"
    return html.escape(str(value))


# (label, path under report["quality"], path under the reference's figures or None, format digits, definition key)
METRIC_ROWS: list[tuple[str, str, str | None, int, str]] = [
    (
        "identity consistency: mean cosine to the identity centre",
        "consistency.cos_to_centre.mean",
        "consistency.cos_to_centre.mean",
        3,
        "consistency",
    ),
    (
        "images within the threshold of their centre",
        "consistency.within_threshold",
        "consistency.within_threshold",
        3,
        "within_threshold",
    ),
    (
        "nearest other identity centre: median cosine",
        "separability.nearest_other.median",
        "separability.nearest_other.median",
        3,
        "nearest_other",
    ),
    (
        "nearest other identity centre: 95th percentile",
        "separability.nearest_other.p95",
        "separability.nearest_other.p95",
        3,
        "nearest_other",
    ),
    ("duplicate identities", "separability.duplicates", "separability.duplicates", 0, "duplicates"),
    ("embedding spread within an identity (median)", "spread.spread.median", "spread.spread.median", 3, "spread"),
    ("yaw spread within an identity (deg, mean std)", "pose.yaw.within_identity_std.mean", None, 1, "pose"),
    ("pitch spread within an identity (deg, mean std)", "pose.pitch.within_identity_std.mean", None, 1, "pose"),
    ("roll spread within an identity (deg, mean std)", "pose.roll.within_identity_std.mean", None, 1, "pose"),
    ("face detection rate", "detection.rate", None, 3, "detection_rate"),
    ("detector confidence (mean)", "detection.confidence.mean", None, 3, "detection_confidence"),
    ("Frechet distance to the reference", "reference.frechet_distance", None, 4, "frechet_distance"),
    ("k-NN precision against the reference", "reference.knn.precision", None, 3, "knn_precision"),
    ("k-NN recall against the reference", "reference.knn.recall", None, 3, "knn_recall"),
    ("variation: conditioning cosine to the identity (median)", "@variation.condition_cosine.median", None, 3, "variation"),
    ("variation: guidance scale (min)", "@variation.guidance_scale.min", None, 2, "variation"),
    ("variation: guidance scale (max)", "@variation.guidance_scale.max", None, 2, "variation"),
    ("variation: images started from a style image", "@variation.style_started", None, 3, "variation"),
    ("leakage: median cosine to the nearest real person", "@leakage.median", None, 3, "leakage"),
    ("leakage: max cosine to the nearest real person", "@leakage.max", None, 3, "leakage"),
]


def metric_table(report: dict[str, Any]) -> list[dict[str, str]]:
    """The rows of the metric table as strings: metric, value, reference, definition, source."""
    quality = report.get("quality", {})
    definitions = quality.get("definitions", {})
    reference = _get(quality, "reference.figures")
    rows, defined = [], set()
    for label, path, ref_path, digits, key in METRIC_ROWS:
        value = _get(report, path[1:]) if path.startswith("@") else _get(quality, path)
        if value is None:
            continue
        definition = definitions.get(key, {}) if key not in defined else {"definition": "as above", "source": ""}
        defined.add(key)
        rows.append({
            "metric": label,
            "value": _fmt(value, digits),
            "reference": _fmt(_get(reference, ref_path), digits) if ref_path and reference else "",
            "definition": definition.get("definition", ""),
            "source": definition.get("source", ""),
        })  # fmt: skip
    return rows


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
p.warning { font-weight: bold; color: #a00; border-left: 4px solid #a00; padding-left: 0.6em; }
table.metrics { border-collapse: collapse; font-size: 0.9em; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
table.metrics td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.figures img { max-width: 100%; border: 1px solid #eee; margin: 4px; }
.sheet .row { display: flex; align-items: center; border-top: 1px solid #eee; padding: 2px 0; }
.sheet .who { width: 15em; flex: none; font-size: 0.8em; }
.sheet figure { margin: 0 2px; text-align: center; font-size: 0.7em; }
.sheet figure img { width: 96px; height: 96px; image-rendering: auto; display: block; }
.note { color: #666; font-size: 0.85em; }
"""

_SCRIPT = """
(function () {
  function done() {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    document.documentElement.setAttribute("data-images-total", String(imgs.length));
    document.documentElement.setAttribute("data-images-decoded", String(ok));
  }
  window.addEventListener("load", done);
})();
"""


# a contact sheet row's figures: key -> (words, digits)
_ROW_STATS = {
    "cos_to_centre": ("consistency", 3),
    "nearest_other": ("nearest other identity", 3),
    "yaw_std": ("yaw std (deg)", 1),
}


def _pose_text(pose: tuple[float, float, float] | None) -> str:
    return "no face found" if pose is None else f"yaw {pose[0]:+.0f} pitch {pose[1]:+.0f} roll {pose[2]:+.0f}"


def render(report: dict[str, Any], rows: list[SheetRow], figures: dict[str, Path]) -> str:
    """The page as a string; ``figures`` maps a caption to a PNG file embedded as a data URI."""
    esc = html.escape
    title = f"synthface inspect: {Path(str(report.get('dataset', 'dataset'))).name}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{esc(title)}</title>",
        f"<style>{_STYLE}</style>", f"<script>{_SCRIPT}</script>", "</head>", "<body>", f"<h1>{esc(title)}</h1>",
    ]  # fmt: skip
    for warning in report.get("warnings") or []:
        parts.append(f'<p class="warning" id="warning">{esc(warning)}</p>')
    quality = report.get("quality", {})
    facts = [f"{report.get('images')} images of {report.get('identities')} identities in {report.get('shards')} shards"]
    if quality.get("images"):
        facts.append(f"quality figures from {quality['images']} images of {quality['identities']} identities, "
                     f"embedder {quality.get('embedder')}")  # fmt: skip
    acc = _get(report, "acceptance.rate")
    if acc is not None:
        facts.append(f"filter acceptance {100 * acc:.1f}%")
    parts.append(f"<p>{esc('; '.join(facts))}.</p>")
    parts.append('<h2 id="metrics">Quality metrics</h2>')
    table = metric_table(report)
    ref = quality.get("reference") or {}
    if table:
        ref_head = f"reference ({esc(Path(str(ref.get('path', ''))).name)})" if ref.get("figures") else ""
        parts.append('<table class="metrics" id="metric-table"><thead><tr><th>metric</th><th>this dataset</th>'
                     + (f"<th>{ref_head}</th>" if ref_head else "") + "<th>definition</th><th>source</th></tr></thead><tbody>")  # fmt: skip
        for r in table:
            parts.append(f"<tr><td>{esc(r['metric'])}</td><td class=\"num\">{r['value']}</td>"
                         + (f"<td class=\"num\">{r['reference']}</td>" if ref_head else "")
                         + f"<td>{esc(r['definition'])}</td><td>{esc(r['source'])}</td></tr>")  # fmt: skip
        parts.append("</tbody></table>")
    else:
        parts.append('<p class="note">No quality figures: the embedder and the detector were both off.</p>')
    for note in quality.get("notes") or []:
        parts.append(f'<p class="note">{esc(note)}</p>')
    if figures:
        parts.append('<h2 id="histograms">Histograms</h2><div class="figures">')
        for caption, path in figures.items():
            parts.append(f'<img alt="{esc(caption)}" title="{esc(caption)}" src="{data_uri(Path(path).read_bytes())}">')
        parts.append("</div>")
    parts.append(f'<h2 id="contact-sheet">Contact sheet: {len(rows)} identities, images sorted by estimated yaw</h2>')
    parts.append('<div class="sheet">')
    for row in rows:
        stats = "; ".join(f"{_ROW_STATS.get(k, (k, 3))[0]} {_fmt(v, _ROW_STATS.get(k, (k, 3))[1])}" for k, v in row.stats.items())
        parts.append(f'<div class="row" data-label="{row.label}" data-identity="{row.identity}">'
                     f'<div class="who"><b>label {row.label}</b> (identity {row.identity}), {len(row.images)} images'
                     + (f"<br>{esc(stats)}" if stats else "") + "</div>")  # fmt: skip
        for im in row.images:
            yaw = "" if im.pose is None else f' data-yaw="{im.pose[0]:.2f}"'
            cos = "" if im.cos is None else f" cos {im.cos:.2f}"
            caption = _pose_text(im.pose)
            parts.append(f"<figure{yaw}><img alt=\"label {row.label} sample {im.sample}\" title=\"sample {im.sample}: "
                         f"{esc(caption)}{cos}\" src=\"{data_uri(im.data)}\"><figcaption>"
                         f"{'yaw n/a' if im.pose is None else f'yaw {im.pose[0]:+.0f}'}</figcaption></figure>")  # fmt: skip
        parts.append("</div>")
    parts.append("</div>")
    parts.append('<p class="note">Definitions and sources: docs/filter.md, "Quality metrics". Written by synthface inspect.</p>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_html(path: Path, report: dict[str, Any], rows: list[SheetRow], figures: dict[str, Path]) -> Path:
    """Write the page to ``path``."""
    Path(path).write_text(render(report, rows, figures), encoding="utf-8")
    return Path(path)
