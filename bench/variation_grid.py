"""The variation trade-off: identity jitter x guidance range (x a style start), measured cell by cell.

Every cell renders the same identities (same recipe, seed and plan) from one generator, changing
only the `variation` section, then measures on the kept images, with a judge that neither
conditioned nor filtered them (dlib for SFace models):

  consistency   mean cosine of an image to its identity's centre, fraction within the judge's threshold
  variation     embedding spread (mean 1 - cosine to the centre) and within-identity pose spread
                (yaw/pitch/roll from MTCNN's five landmarks on the stored crops)
  separability  nearest-other-identity cosine (median)
  accuracy      the reduced protocol: the recognizer recipe trained on the cell's set, LFW test pairs

Resumable: each cell's generate and evaluate resume, and a cell whose figures exist is skipped.

    python bench/variation_grid.py --model runs/native-gpu-latent/model --work runs/variation-grid \
        --test lfw-test=bench/data/lfw_test_pairs.txt:data/lfw-test-aligned112 --style-bank data/style-bank \
        --out bench/results/variation_grid.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quality as quality_bench  # noqa: E402  (bench/quality.py: the same figures as BENCHMARKS "quality")

from synthface.faces.embedders import get_embedder  # noqa: E402
from synthface.faces.embedders import DEFAULT_THRESHOLDS  # noqa: E402

# name -> (variation --set values); the first cell is the reference point (no variation)
CELLS: dict[str, list[str]] = {
    "base": [],
    "jitter-0.90": ["variation.identity_cosine=[0.85, 0.95]"],
    "jitter-0.78": ["variation.identity_cosine=[0.70, 0.85]"],
    "guidance-1.5-3": ["variation.guidance_scale=[1.5, 3.0]"],
    "guidance-3-5": ["variation.guidance_scale=[3.0, 5.0]"],
    "jitter-0.90+guidance": ["variation.identity_cosine=[0.85, 0.95]", "variation.guidance_scale=[1.5, 3.0]"],
    "style-0.85": ["variation.style_bank={bank}", "variation.style_strength=0.85"],
}

KEEP_ALL_SETS = ["filter.threshold=-1", "filter.oversample=1.0"]
MIN_TRAIN_IMAGES = 64  # fewer kept images train no recognizer worth a figure: the cell reports its other figures

# the protocol's synthetic-arm settings (recipes/protocol-lfw-latent.yaml), fewer identities and candidates
BASE_SETS = [
    "images_per_identity=4",
    "filter.oversample=1.5",
    "shard_identities=15",
    "filter.anchor=centre",
    "filter.merge_threshold=0.6",
    "filter.leakage=0.5",
]


def run(argv: list[str], log: Path) -> None:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    with log.open("a") as fh:
        done = subprocess.run(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv[3:5])} failed (exit {done.returncode}); see {log}; rerun to resume")


def candidate_scores(data: Path) -> dict:
    """The filter's cosine of every candidate to its identity's robust centre (before selection), from
    the per-shard filter records: how consistent the renders are before the filter picks."""
    import pyarrow.parquet as pq

    from synthface.dataset.layout import FILTER_DIR
    from synthface.dataset.quality import quantiles

    scores = [s for f in sorted((data / FILTER_DIR).glob("*.parquet")) for row in pq.read_table(f, columns=["id_scores"]).column(0).to_pylist() for s in row]  # fmt: skip
    x = np.asarray(scores, np.float64)
    return quantiles(x[np.isfinite(x)])


def cell_figures(data: Path, judge: str) -> dict:
    crops, labels = quality_bench.load_set(str(data), max_identities=10_000, per_identity=100, seed=0)
    from synthface.faces.align import FaceDetector

    embedder = get_embedder(judge)
    figures, _ = quality_bench.figures(crops, labels, embedder, FaceDetector(device="cpu"), DEFAULT_THRESHOLDS[judge])
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="generator model folder (an SFace-conditioned native model)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--test", required=True, help="NAME=PAIRS:ALIGNED for synthface evaluate --bench")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "native-generate-sface.yaml"))
    ap.add_argument("--evaluate-recipe", default=str(ROOT / "recipes" / "evaluate-cpu-small.yaml"))
    ap.add_argument("--identities", type=int, default=40)
    ap.add_argument("--style-bank", default=None, help="folder of style images framed like the renders (the style cell)")
    ap.add_argument("--cells", default=",".join(CELLS), help="comma-separated subset of: " + ", ".join(CELLS))
    ap.add_argument("--judge", default="dlib")
    ap.add_argument(
        "--keep-all",
        action="store_true",
        help="the filter aligns and scores every render but rejects none (threshold -1, no oversampling): every cell "
        "keeps the same identities and counts, so the controls' raw effect shows and every cell trains a recognizer",
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON of every cell's figures")
    args = ap.parse_args(argv)

    exe = [sys.executable, "-m", "synthface"]
    results: dict[str, dict] = {}
    for name in [c.strip() for c in args.cells.split(",") if c.strip()]:
        if name not in CELLS:
            raise SystemExit(f"error: unknown cell {name}: choose from {', '.join(CELLS)}")
        if "{bank}" in " ".join(CELLS[name]) and not args.style_bank:
            print(f"[{name}] skipped: needs --style-bank", flush=True)
            continue
        cell = args.work / name
        cell.mkdir(parents=True, exist_ok=True)
        done = cell / "figures.json"
        if done.is_file():
            results[name] = json.loads(done.read_text())
            results[name].setdefault("candidate_cos_to_centre", candidate_scores(cell / "synthetic"))
            print(f"[{name}] done before", flush=True)
            continue
        sets = [*BASE_SETS, f"identities.count={args.identities}", *[s.format(bank=args.style_bank) for s in CELLS[name]]]
        if args.keep_all:
            sets += KEEP_ALL_SETS
        t0 = time.time()
        run(exe + ["generate", "--model", args.model, "--recipe", args.recipe, *[x for s in sets for x in ("--set", s)],
                   "--out", str(cell / "synthetic"), "--json", str(cell / "generate.json")], cell / "log.txt")  # fmt: skip
        generate_s = time.time() - t0
        summary = json.loads((cell / "generate.json").read_text())
        figures = cell_figures(cell / "synthetic", args.judge) if summary["images"] >= 2 else {}
        t1 = time.time()
        bench = {"accuracy": None, "accuracy_std": None, "tar_at_far_1e-3": None}
        if summary["images"] >= MIN_TRAIN_IMAGES:
            # a cell holds ~100 images: batches of 32 give the protocol's step count (402 images at 128)
            run(exe + ["evaluate", "--recipe", args.evaluate_recipe, "--set", "train.batch_size=32",
                       "--train", f"synthetic={cell / 'synthetic'}", "--bench", args.test, "--out", str(cell / "eval"),
                       "--resume", "--json", str(cell / "eval.json")], cell / "log.txt")  # fmt: skip
            report = json.loads((cell / "eval.json").read_text())
            bench = next(iter(report["results"]["synthetic"].values()))
        record = {
            "sets": sets,
            "candidate_cos_to_centre": candidate_scores(cell / "synthetic"),
            "identities_kept": summary["identities_kept"],
            "images": summary["images"],
            "filter": summary.get("filter", {}),
            "judge": args.judge,
            **figures,
            "accuracy": bench["accuracy"],
            "accuracy_std": bench["accuracy_std"],
            "tar_at_far_1e-3": bench["tar_at_far_1e-3"],
            "generate_s": round(generate_s, 1),
            "evaluate_s": round(time.time() - t1, 1),
        }
        done.write_text(json.dumps(record, indent=2, sort_keys=True))
        results[name] = record
        print(f"[{name}] {table_row(name, record)}", flush=True)
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


COLUMNS = "| cell | candidates' cosine to centre (median) | filter acceptance | identities | images | consistency (mean cos to centre) | within threshold | spread | yaw spread (deg) | nearest other (median) | accuracy | TAR@1e-3 |"


def _num(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "n/a" if value is None or value != value else f"{scale * value:.{digits}f}"


def table_row(name: str, r: dict) -> str:
    nan = float("nan")
    c = r.get("consistency", {})
    spread = r.get("spread", {}).get("spread", {}).get("mean")
    sep = r.get("separability", {}).get("nearest_other", {}).get("median")
    yaw = r.get("pose", {}).get("yaw", {}).get("within_identity_std", {}).get("mean", nan)
    acc = "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}"
    return (
        f"| {name} | {_num(r.get('candidate_cos_to_centre', {}).get('median'), 3)} | {_num(r['filter'].get('acceptance_rate'), 3)} | {r['identities_kept']} | {r['images']} | "
        f"{_num(c.get('cos_to_centre', {}).get('mean'), 3)} | {_num(c.get('within_threshold'), 3)} | {_num(spread, 3)} | "
        f"{_num(yaw, 1)} | {_num(sep, 3)} | {acc} | {_num(r['tar_at_far_1e-3'], 1, 100)} |"
    )


def table(results: dict[str, dict]) -> str:
    lines = [COLUMNS, "|" + " --- |" * (COLUMNS.count("|") - 1)]
    lines += [table_row(n, r) for n, r in results.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
