"""The identity-per-compute ablation table: training runs at equal CPU budget, each judged by bench/identity.py.

Each ``--variant NAME=RUN_DIR,JUDGED_JSON`` names a `synthface train` run folder (its train.json,
config.yaml and loss.csv) and the JSON that ``bench/identity.py --model RUN_DIR/model`` wrote for it;
``--baseline NAME`` marks the current recipe's entry. ``--start JUDGED_JSON`` adds the model every
variant was fine-tuned from (``train.init_from``) as a reference row. Writes the table as JSON
(``--out``), one loss-curve figure (``--plot``) and prints a Markdown table for BENCHMARKS.md.

    python bench/identity_ablation.py --baseline baseline \\
        --variant baseline=runs/ablation/baseline,runs/ablation/baseline.json \\
        --variant identity-loss-decode=runs/ablation/idloss-decode,runs/ablation/idloss-decode.json \\
        --start bench/results/identity_shipped.json \\
        --out bench/results/identity_ablation.json --plot bench/results/identity_ablation_loss.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import yaml


def _loss_rows(run: Path) -> list[dict[str, float]]:
    path = run / "loss.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def entry(name: str, run: Path, judged: Path, baseline: bool) -> dict[str, Any]:
    info = json.loads((run / "train.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    judge = json.loads(judged.read_text())
    train = config["train"]
    steps = int(info["steps"])  # the run's own steps (from init_from's weights, summed over resumes)
    id_loss = train.get("identity_loss") or {}
    rows = _loss_rows(run)
    tail = rows[-10:]
    return {
        "name": name,
        "baseline": baseline,
        "cpu_minutes": round(float(info["train_cpu_seconds"]) / 60, 1),
        "wall_minutes": round(float(info["train_seconds"]) / 60, 1),
        "steps": steps,
        "samples_seen": steps * int(train["batch_size"]) * int(train.get("grad_accum") or 1),
        "identity_loss": id_loss or None,
        "init_from": train.get("init_from"),
        "id_rate_dlib": judge["id_rate_dlib"],
        "synthetic_pair_accuracy_dlib": judge["synthetic_pair_accuracy_dlib"],
        "detection_rate": judge["detection_rate"],
        "detection_rate_new_identities": judge["runs"][0].get("new_identities", {}).get("detection_rate"),
        "id_rate_sface": judge.get("id_rate_sface"),
        "synthetic_pair_accuracy_sface": (judge.get("synthetic_pair_accuracy_by_judge") or {}).get("sface"),
        "chance": judge["chance"],
        "final_denoising_loss": round(sum(r["loss"] for r in tail) / len(tail), 4) if tail else None,
        "final_identity_loss": round(sum(r["identity_loss"] for r in tail) / len(tail), 4)
        if tail and "identity_loss" in tail[0]
        else None,
        "run": str(run),
        "judged": str(judged),
    }


def plot(entries: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for e in entries:
        rows = _loss_rows(Path(e["run"]))
        if not rows:
            continue
        # x: CPU minutes, spread linearly over the run's steps (the budget axis of the comparison)
        per_step = e["cpu_minutes"] / max(rows[-1]["step"], 1)
        x = [r["step"] * per_step for r in rows]
        axes[0].plot(x, _smooth([r["loss"] for r in rows]), label=e["name"])
        if "identity_loss" in rows[0]:
            axes[1].plot(x, _smooth([r["identity_loss"] for r in rows]), label=e["name"])
    axes[0].set(xlabel="CPU minutes of fine-tuning", ylabel="denoising loss (smoothed)", title="denoising loss")
    axes[1].set(
        xlabel="CPU minutes of fine-tuning",
        ylabel="1 - cos (guide(x0_hat), condition)",
        title="identity term (each through its own guide)",
    )
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def _smooth(values: list[float], k: int = 10) -> list[float]:
    out, acc = [], []
    for v in values:
        acc = (acc + [v])[-k:]
        out.append(sum(acc) / len(acc))
    return out


def markdown(entries: list[dict[str, Any]], start: dict[str, Any] | None) -> str:
    head = (
        "| variant | CPU min | samples | dlib id top-1 | new-id pairs (dlib) | detection | SFace id top-1 |\n"
        "| --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    if start:
        lines.append(
            f"| start: {start['model']} | {start.get('train_cpu_minutes')} | | {start['id_rate_dlib']:.4f} | "
            f"{start['synthetic_pair_accuracy_dlib']:.3f} | {start['detection_rate']:.3f} | {start['id_rate_sface']:.4f} |"
        )
    for e in entries:
        name = f"**{e['name']}** (baseline)" if e["baseline"] else e["name"]
        lines.append(
            f"| {name} | {e['cpu_minutes']} | {e['samples_seen']:,} | {e['id_rate_dlib']:.4f} | "
            f"{e['synthetic_pair_accuracy_dlib']:.3f} | {e['detection_rate']:.3f} | {e['id_rate_sface']:.4f} |"
        )
    return "\n".join(lines)


def guidance_rows(spec: str) -> dict[str, Any]:
    """One variant's identity-guidance sweep: per scale, dlib and SFace identification and detection."""
    name, _, path = spec.partition("=")
    judged = json.loads(Path(path).read_text())
    rows = [
        {
            "identity_scale": r["identity_scale"],
            "renders": r["people"] * judged["protocol"]["per_person"],
            "id_rate_dlib": r["dlib"]["top1"],
            "id_rate_dlib_top5": r["dlib"]["top5"],
            "id_rate_sface": r["sface"]["top1"],
            "detection_rate": r["detection_rate"],
        }
        for r in judged["runs"]
    ]
    return {"variant": name, "guide": judged["protocol"].get("identity_guide"), "judged": path, "scales": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME=RUN_DIR,JUDGED_JSON")
    ap.add_argument("--baseline", required=True, help="the NAME of the current recipe's entry")
    ap.add_argument("--start", help="bench/identity.py JSON of the model the variants were fine-tuned from")
    ap.add_argument(
        "--guidance",
        action="append",
        default=[],
        help="NAME=JSON: bench/identity.py --guide head --identity-scale ... of a variant",
    )
    ap.add_argument("--out", default="bench/results/identity_ablation.json")
    ap.add_argument("--plot", default="bench/results/identity_ablation_loss.png")
    args = ap.parse_args()

    entries = []
    for spec in args.variant:
        name, _, paths = spec.partition("=")
        run, _, judged = paths.partition(",")
        if not (name and run and judged):
            raise SystemExit(f"--variant {spec!r}: write NAME=RUN_DIR,JUDGED_JSON")
        entries.append(entry(name, Path(run), Path(judged), name == args.baseline))
    if not any(e["baseline"] for e in entries):
        raise SystemExit(f"--baseline {args.baseline!r} names no --variant")
    base = next(e for e in entries if e["baseline"])
    for e in entries:
        e["id_rate_dlib_vs_baseline"] = round(e["id_rate_dlib"] / base["id_rate_dlib"], 3) if base["id_rate_dlib"] else None
    start = json.loads(Path(args.start).read_text()) if args.start else None
    result = {
        "variants": entries,
        "start": {
            k: start.get(k)
            for k in (
                "model",
                "train_cpu_minutes",
                "id_rate_dlib",
                "synthetic_pair_accuracy_dlib",
                "detection_rate",
                "id_rate_sface",
            )
        }
        if start
        else None,
        "target": "the winning variant >= 2x the baseline's dlib identification at the same CPU minutes, detection >= 0.90",
        "guidance": [guidance_rows(spec) for spec in args.guidance],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    plot(entries, Path(args.plot))
    print(markdown(entries, start))


if __name__ == "__main__":
    main()
