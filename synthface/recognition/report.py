"""The evaluate report: training sets x benchmarks as Markdown and JSON, ROC plots, training curves.

``report.json`` holds:

* ``training_sets``: names in order; ``benchmarks``: names in order;
* ``results[set][bench]``: the verification figures (``accuracy``, ``accuracy_std``,
  ``tar_at_far_1e-3``, ``threshold``, ``auc``, ``pairs``, fold details...);
* ``average[set]``: mean ``accuracy`` and ``tar_at_far_1e-3`` over the benchmarks;
* ``training[set]``: the training run summary (steps, images, identities, wall_s, images_per_s...);
  for a combined set (``--train NAME=A+B``) also ``parts``: per part ``path``, ``format``,
  ``identities``, ``images`` and ``label_offset`` (its first label in the combined set);
* ``plots``: ``roc`` {bench: png} and ``training`` png, relative to the report folder;
* ``recipe``: the resolved recipe and ``config_hash``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from synthface.atomic import atomic_write_text
from synthface.figures import save_figure
from synthface.recognition.verification import VerificationResult, far_key, plot_roc

TAR_KEY = far_key(1e-3)


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_training(histories: dict[str, list[dict]], path: Path) -> Path | None:
    """Loss and accuracy against step, one line per training set."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not any(histories.values()):
        return None
    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, rows in histories.items():
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["loss"] for r in rows], label=name, linewidth=1.2)
        ax_acc.plot(steps, [r["accuracy"] for r in rows], label=name, linewidth=1.2)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("margin softmax loss")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("training accuracy (argmax cosine)")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def build_report(
    results: dict[str, dict[str, VerificationResult]],
    training: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report.json content (without plots or recipe) from per-set, per-benchmark results."""
    sets = list(results)
    benches: list[str] = []
    for per in results.values():
        benches += [b for b in per if b not in benches]
    table: dict[str, dict[str, dict]] = {s: {b: r.to_dict() for b, r in results[s].items()} for s in sets}
    average = {}
    for s in sets:
        rows = list(table[s].values())
        average[s] = {
            "accuracy": float(np.mean([r["accuracy"] for r in rows])) if rows else None,
            TAR_KEY: float(np.mean([r[TAR_KEY] for r in rows])) if rows else None,
            "benchmarks": len(rows),
        }
    return {
        "training_sets": sets,
        "benchmarks": benches,
        "results": table,
        "average": average,
        "training": training or {},
    }


def render_markdown(report: dict[str, Any], title: str = "synthface evaluate") -> str:
    sets, benches = report["training_sets"], report["benchmarks"]
    lines = [f"# {title}", ""]
    lines += [
        "Verification accuracy (%, mean ± std over folds, best threshold chosen on the other folds) "
        "and TAR at FAR = 1e-3 (%), flip test-time augmentation. One recognizer per training set, "
        "identical recipe and seed.",
        "",
    ]
    head = "| training set | " + " | ".join(f"{b} acc | {b} TAR@1e-3" for b in benches) + " | avg acc | avg TAR@1e-3 |"
    lines += [head, "|" + " --- |" * (2 * len(benches) + 3)]
    for s in sets:
        cells = []
        for b in benches:
            r = report["results"][s].get(b)
            if r is None:
                cells += ["n/a", "n/a"]
            else:
                cells += [f"{_fmt_pct(r['accuracy'])} ± {_fmt_pct(r['accuracy_std'])}", _fmt_pct(r[TAR_KEY])]
        avg = report["average"][s]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {_fmt_pct(avg['accuracy'])} | {_fmt_pct(avg[TAR_KEY])} |")
    training = report.get("training") or {}
    if training:
        lines += [
            "",
            "## Training",
            "",
            "| training set | images | identities | steps | epochs | wall time (s) | images/s | final loss | final train acc |",
        ]
        lines.append("|" + " --- |" * 9)
        for s in sets:
            t = training.get(s, {})
            loss = t.get("final_loss")
            acc = t.get("final_accuracy")
            lines.append(
                f"| {s} | {t.get('images', 'n/a')} | {t.get('identities', 'n/a')} | {t.get('steps', 'n/a')} | "
                f"{t.get('epochs', 'n/a')} | {t.get('wall_s', 'n/a')} | {t.get('images_per_s', 'n/a')} | "
                f"{'n/a' if loss is None else f'{loss:.3f}'} | {_fmt_pct(acc)} |"
            )
    combined = {s: training[s]["parts"] for s in sets if training.get(s, {}).get("parts")}
    if combined:
        lines += ["", "## Combined training sets", "", "| training set | part | format | identities | images | labels |"]
        lines.append("|" + " --- |" * 6)
        for s, parts in combined.items():
            for p in parts:
                first = p["label_offset"]
                lines.append(
                    f"| {s} | {p['path']} | {p['format']} | {p['identities']} | {p['images']} | "
                    f"{first}-{first + p['identities'] - 1} |"
                )
    plots = report.get("plots") or {}
    if plots:
        lines += ["", "## Plots", ""]
        for b, p in (plots.get("roc") or {}).items():
            lines.append(f"![ROC {b}]({p})")
        if plots.get("training"):
            lines.append(f"![training curves]({plots['training']})")
    lines.append("")
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    results: dict[str, dict[str, VerificationResult]],
    training: dict[str, dict[str, Any]] | None = None,
    histories: dict[str, list[dict]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write report.json, report.md, roc-<bench>.png and training.png into ``out_dir``; return the JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(results, training)
    plots: dict[str, Any] = {"roc": {}}
    for b in report["benchmarks"]:
        curves = {s: (results[s][b].fpr, results[s][b].tpr) for s in report["training_sets"] if b in results[s]}
        name = f"roc-{_slug(b)}.png"
        plot_roc(curves, out / name, title=f"ROC on {b}")
        plots["roc"][b] = name
    if histories and plot_training(histories, out / "training.png"):
        plots["training"] = "training.png"
    report["plots"] = plots
    report.update(extra or {})
    for name, text in (
        ("report.json", json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"),
        ("report.md", render_markdown(report)),
    ):
        atomic_write_text(out / name, text)
    return report
