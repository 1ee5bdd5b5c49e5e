"""Gather a device run's results into what comes back: OUT/summary.json and OUT/results.tar.

bench/device/run.sh calls this after every step, so a run stopped at any point still returns what
was done. The device tool brings back at most 8 files (16 MiB each), so the small artifacts travel
in one tar (under 15 MiB: the largest optional images are left out first):

    OUT/run.log          the whole log (run.sh writes it)
    OUT/summary.json     each step's status and seconds, and the headline numbers of each step
    OUT/results.tar      results/*.json|png (doctor, smoke, throughput, identity + contact sheet),
                         train/ (train.json, config.yaml, loss.csv, loss.png, samples/condition.csv,
                         the last sample grid, cache/faces-*.parquet: the gallery bench/identity.py draws
                         new identities from)
    OUT/model/           card.json + model-0000K-of-0000N.safetensors (bench/device/parts.py)

    python bench/device/collect.py --work /tmp/synthface-device --out "$OUT"
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path

TAR_LIMIT = 15 << 20


def _json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _steps(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def summarise(work: Path, out: Path) -> dict:
    res, run = work / "results", work / "run"
    summary: dict = {"updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": _steps(res / "steps.jsonl")}
    meta = _json(res / "meta.json")
    if meta:
        summary["run"] = meta
    unpack = _json(res / "unpack.json")
    if unpack:
        summary["unpack"] = unpack
    doctor = _json(res / "doctor.json")
    if isinstance(doctor, dict):
        summary["doctor"] = {
            "python": doctor.get("python"),
            "torch": doctor.get("torch"),
            "packages": doctor.get("packages"),
            "weights_present": [w["name"] for w in doctor.get("weights", []) if w.get("present")],
        }
    smoke = _json(res / "smoke.json")
    if isinstance(smoke, dict):
        summary["smoke"] = {
            "ok": smoke.get("ok"),
            "checks": {k: {kk: vv for kk, vv in v.items() if kk != "trace"} for k, v in smoke.get("checks", {}).items()},
        }
    thr = _json(res / "throughput.json")
    if thr:
        summary["throughput"] = thr
    train = _json(run / "train.json") or _json(res / "train.json")
    if isinstance(train, dict):
        keep = (
            "steps",
            "final_loss",
            "train_seconds",
            "wall_seconds",
            "parameters",
            "device",
            "mixed_precision",
            "stopped_by_time_limit",
            "data",
            "config_hash",
        )
        summary["train"] = {k: train.get(k) for k in keep if k in train}
    cond = run / "samples" / "condition.csv"
    if cond.is_file():
        summary.setdefault("train", {})["condition_effect_csv"] = cond.read_text(encoding="utf-8").splitlines()[-5:]
    ident = _json(res / "identity.json")
    if isinstance(ident, dict):
        summary["identity"] = {k: v for k, v in ident.items() if k != "people_names"}
    card = _json(out / "model" / "card.json")
    if isinstance(card, dict):
        summary["model"] = {"parts": card.get("parts"), "parameters": card.get("parameters"), "storage": card.get("storage")}
    return summary


def tar_members(work: Path, out: Path) -> list[tuple[str, Path, bool]]:
    """(name in the tar, file, optional) in order of importance."""
    res, run = work / "results", work / "run"
    items: list[tuple[str, Path, bool]] = []
    for p in sorted(res.glob("*")):
        if p.is_file() and p.suffix in (".json", ".jsonl", ".csv", ".txt", ".log"):
            items.append((f"results/{p.name}", p, False))
    for name in ("train.json", "config.yaml", "loss.csv"):
        if (run / name).is_file():
            items.append((f"train/{name}", run / name, False))
    if (run / "samples" / "condition.csv").is_file():
        items.append(("train/samples/condition.csv", run / "samples" / "condition.csv", False))
    for p in sorted((run / "cache").glob("faces-*.parquet")) if (run / "cache").is_dir() else []:
        items.append((f"train/cache/{p.name}", p, False))
    if (out / "model" / "card.json").is_file():
        items.append(("model/card.json", out / "model" / "card.json", False))
    for p in sorted(res.glob("*.png")):
        items.append((f"results/{p.name}", p, True))
    if (run / "loss.png").is_file():
        items.append(("train/loss.png", run / "loss.png", True))
    grids = sorted((run / "samples").glob("step-*.png")) if (run / "samples").is_dir() else []
    for p in reversed(grids[-3:]):  # the last grid first
        items.append((f"train/samples/{p.name}", p, True))
    return items


def write_tar(items: list[tuple[str, Path, bool]], target: Path, limit: int = TAR_LIMIT) -> list[str]:
    total, chosen, left_out = 0, [], []
    for name, path, optional in items:
        size = path.stat().st_size + 1024
        if total + size > limit and (optional or total > 0):
            left_out.append(name)
            continue
        chosen.append((name, path))
        total += size
    tmp = target.with_name(target.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name, path in chosen:
            tar.add(path, arcname=name)
        if left_out:
            data = ("\n".join(left_out) + "\n").encode()
            info = tarfile.TarInfo("LEFT_OUT.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(target)
    return left_out


def collect(work: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(work, out)
    summary["results_tar_left_out"] = write_tar(tar_members(work, out), out / "results.tar")
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(out / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    collect(Path(args.work), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
