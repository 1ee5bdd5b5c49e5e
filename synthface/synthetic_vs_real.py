"""The synthetic-versus-real protocol (docs/protocol.md) as resumable steps, each one synthface command.

Steps (outputs under WORK):

  align              LFW photos -> 112x112 template crops              WORK/lfw-aligned, align.json
  generator          train the native generator on the train half     WORK/generator (model: generator/model)
                     (or, with `generator: {model: DIR}`, check that a model trained elsewhere loads)
  evaluate-real      the recognizer recipe on the real train half      WORK/eval-real
  generate           synthetic identities x images, filtered           WORK/synthetic
  inspect            the synthetic set's figures                       WORK/synthetic/inspect
  evaluate-synthetic the same recognizer recipe on the synthetic set   WORK/eval-synthetic
  evaluate-mixed     (with `mixed: true`) the same recipe on the real   WORK/eval-mixed
                     train half plus the synthetic set, labels disjoint
  scale-subsets      (with `scale:`) seeded subsets of the synthetic    WORK/scale/NAME, scale/subsets.json
                     set: so many identities, so many images each
  evaluate-scale     (with `scale:`) the same recipe on each subset     WORK/eval-scale
  report             side by side, ratio, figures, contact sheets      WORK/report.md, report.json
                     (+ the mixed row, the scaling curve and its figure)

Resumable: a finished step writes WORK/steps/NAME.json with its fingerprint (the command line,
the contents of the recipe files it reads and the fingerprints of the steps it depends on). A
step whose record matches and whose outputs exist is skipped; a changed recipe reruns that step
and every step after it. An interrupted step is rerun with the command's own resume (align skips
crops already written, train --resume, generate resumes its shards, evaluate --resume).

The protocol recipe's paths are relative to ``root`` (the repository root), and each step's
command runs there. ``bench/protocol_lfw.py`` is the command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from synthface.atomic import atomic_write_text
from synthface.errors import ConfigError, SynthfaceError
from synthface.protocol_scale import (
    SCALE_DIR,
    SUBSETS_FILE,
    WHOLE_SET,
    plot_scale_curve,
    scale_curve,
    scale_points,
    scale_seed,
    scale_sets,
    write_scale_subsets,
)

STEPS = ["align", "generator", "evaluate-real", "generate", "inspect", "evaluate-synthetic", "evaluate-mixed",
         "scale-subsets", "evaluate-scale", "report"]  # fmt: skip
DEPENDS = {
    "align": [],
    "generator": ["align"],
    "evaluate-real": ["align"],
    "generate": ["generator"],
    "inspect": ["generate"],
    "evaluate-synthetic": ["generate", "align"],
    "evaluate-mixed": ["generate", "align"],
    "scale-subsets": ["generate"],
    "evaluate-scale": ["scale-subsets", "align"],
    "report": ["evaluate-real", "evaluate-synthetic", "inspect", "evaluate-mixed", "evaluate-scale"],
}
# the code of the in-process steps: part of their fingerprints
SCALE_CODE = Path(__file__).with_name("protocol_scale.py")
SUBSET_CODE = Path(__file__).parent / "dataset" / "subset.py"
# optional steps: on when the protocol recipe has this key
OPTIONAL = {"evaluate-mixed": "mixed", "scale-subsets": "scale", "evaluate-scale": "scale"}


class ProtocolError(SynthfaceError):
    """A protocol step that cannot run or failed: the message says what to do."""


@dataclass
class Step:
    name: str
    argv: list[str]  # a synthface command; empty: ``action`` runs in this process
    outputs: list[Path]
    files: list[Path] = field(default_factory=list)  # recipe files whose content is part of the fingerprint
    action: Callable[[dict[str, dict]], None] | None = None  # gets the step records
    key: str = ""  # more of the fingerprint (an in-process step's settings)


def active_steps(cfg: dict) -> list[str]:
    """The steps this protocol recipe runs: the optional ones only when their key is set."""
    return [n for n in STEPS if n not in OPTIONAL or cfg.get(OPTIONAL[n])]


def depends(name: str, cfg: dict) -> list[str]:
    active = active_steps(cfg)
    return [d for d in DEPENDS[name] if d in active]


def sets(section: dict) -> list[str]:
    out = []
    for key, value in (section.get("set") or {}).items():
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        out += ["--set", f"{key}={text}"]
    return out


def recipe_args(section: dict, root: Path) -> tuple[list[str], list[Path]]:
    if section.get("recipe"):
        path = root / section["recipe"]
        if not path.is_file():
            raise ProtocolError(f"recipe not found: {path}")
        return ["--recipe", str(path)], [path]
    return [], []


def cache_parquet(work: Path) -> Path:
    found = sorted((work / "cache").glob("faces-*.parquet"))
    if len(found) != 1:
        raise ProtocolError(f"expected one conditioning cache in {work / 'cache'}, found {len(found)}: rerun the generator step")
    return found[0]


def lfw_root(cfg: dict, root: Path) -> Path:
    """LFW: $SYNTHFACE_LFW when set, else the recipe's `lfw:` (relative to ``root``)."""
    from synthface.lfw import lfw_dir

    return lfw_dir((root / cfg["lfw"]).resolve())


def model_dir(cfg: dict, work: Path, root: Path) -> Path:
    """The generator model: the recipe's `generator: {model: DIR}` (relative to ``root``) or the one the generator step trains."""
    pretrained = cfg["generator"].get("model")
    return (root / pretrained).resolve() if pretrained else work / "generator" / "model"


def model_files(model: Path) -> list[Path]:
    return sorted(p for p in model.rglob("*") if p.is_file()) if model.is_dir() else [model] if model.is_file() else []


def model_sha256(model: Path) -> str:
    """One digest of a model: sha256 over each file's path (relative to the model) and its own sha256, in path order."""
    from synthface.fingerprint import file_sha256

    digest = hashlib.sha256()
    for path in model_files(model):
        name = path.relative_to(model).as_posix() if model.is_dir() else path.name
        digest.update(f"{name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def build_steps(cfg: dict, work: Path, root: Path) -> dict[str, Step]:
    lfw = lfw_root(cfg, root)
    photos = lfw / "lfw-deepfunneled"
    split, pairs = root / cfg["split"], root / cfg["test_pairs"]
    aligned = work / "lfw-aligned"
    exe = [sys.executable, "-m", "synthface"]
    steps: dict[str, Step] = {}

    r, f = recipe_args(cfg.get("align", {}), root)
    steps["align"] = Step("align", exe + ["align", str(photos), str(aligned), *r, *sets(cfg.get("align", {})),
                                          "--json", str(work / "align.json")], [work / "align.json"], f)  # fmt: skip
    pretrained = cfg["generator"].get("model")
    model = model_dir(cfg, work, root)
    if pretrained:
        # a generator trained elsewhere (e.g. on a GPU): the step checks that it loads; its weights are in the fingerprint
        weights = model_files(model) if model.is_dir() else []
        steps["generator"] = Step(
            "generator",
            [sys.executable, "-c", "import sys; from synthface.generator import load_model; load_model(sys.argv[1])", str(model)],
            [model / "synthface.json"], weights,
        )  # fmt: skip
    else:
        r, f = recipe_args(cfg["generator"], root)
        steps["generator"] = Step(
            "generator",
            exe + ["train", "--data", str(aligned), *r, "--set", f"data.people={split}:train", "--set", f"data.cache={work / 'cache'}",
                   *sets(cfg["generator"]), "--out", str(work / "generator"), "--resume", "--json", str(work / "generator.json")],
            [model / "synthface.json", work / "generator.json"], f + [split],
        )  # fmt: skip
    r, f = recipe_args(cfg["evaluate"], root)
    bench = ["--bench", f"lfw-test={pairs}:{aligned}"]
    for arm, data, extra in (("real", aligned, ["--people", f"real={split}:train"]), ("synthetic", work / "synthetic", [])):
        name = f"evaluate-{arm}"
        steps[name] = Step(
            name,
            exe + ["evaluate", *r, *sets(cfg["evaluate"]), "--train", f"{arm}={data}", *extra, *bench,
                   "--out", str(work / f"eval-{arm}"), "--resume", "--json", str(work / f"eval-{arm}.json")],
            [work / f"eval-{arm}" / "report.json"], f + [split, pairs],
        )  # fmt: skip
    # real + synthetic: the train half's people (the ImageFolder part) and the whole synthetic set, labels disjoint
    steps["evaluate-mixed"] = Step(
        "evaluate-mixed",
        exe + ["evaluate", *r, *sets(cfg["evaluate"]), "--train", f"mixed={aligned}+{work / 'synthetic'}",
               "--people", f"mixed={split}:train", *bench, "--out", str(work / "eval-mixed"), "--resume",
               "--json", str(work / "eval-mixed.json")],
        [work / "eval-mixed" / "report.json"], f + [split, pairs],
    )  # fmt: skip
    if cfg.get("scale"):
        steps["scale-subsets"] = Step(
            "scale-subsets", [], [work / SCALE_DIR / SUBSETS_FILE], [SCALE_CODE, SUBSET_CODE],
            action=lambda records: write_scale_subsets(cfg, work),
            key=json.dumps({"points": scale_points(cfg), "seed": scale_seed(cfg)}),
        )  # fmt: skip
        trains = [x for n, path in scale_sets(work).items() for x in ("--train", f"{n}={path}")]
        evaluated = work / "eval-scale" / "report.json"
        if trains or not (work / SCALE_DIR / SUBSETS_FILE).is_file():
            steps["evaluate-scale"] = Step(
                "evaluate-scale",
                exe + ["evaluate", *r, *sets(cfg["evaluate"]), *trains, *bench, "--out", str(work / "eval-scale"),
                       "--resume", "--json", str(work / "eval-scale.json")],
                [evaluated], f + [split, pairs],
            )  # fmt: skip
        else:  # every subset is the whole set, which evaluate-synthetic trains: nothing left to train
            steps["evaluate-scale"] = Step(
                "evaluate-scale", [], [evaluated], action=lambda records: atomic_write_text(evaluated, '{"results": {}}\n')
            )
    r, f = recipe_args(cfg["generate"], root)
    procs = int(cfg["generate"].get("processes", 1))
    # several processes split the shards (on CPU too: --multi_gpu without GPUs starts gloo processes)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
              "-m", "synthface"] if procs > 1 else exe  # fmt: skip
    try:
        # a pretrained native model carries its training embeddings (model/gallery.parquet): generate uses them itself
        gallery = [] if pretrained else ["--set", f"identities.gallery={cache_parquet(work)}"]
    except ProtocolError:
        gallery = []  # the generator step has not cached its embeddings yet; generate cannot run before it
    steps["generate"] = Step(
        "generate",
        launch + ["generate", "--model", str(model), *r, *sets(cfg["generate"]), *gallery,
               "--out", str(work / "synthetic"), "--json", str(work / "generate.json")],
        [work / "generate.json"], f,
    )  # fmt: skip
    r, f = recipe_args(cfg.get("inspect", {}), root)
    steps["inspect"] = Step(
        "inspect",
        exe + ["inspect", str(work / "synthetic"), *r, *sets(cfg.get("inspect", {})), "--json", str(work / "inspect.json")],
        [work / "inspect.json", work / "synthetic" / "inspect" / "contact_sheet.png"], f,
    )  # fmt: skip
    # the report is made here: this module's code is part of its fingerprint
    steps["report"] = Step("report", [], [work / "report.md", work / "report.json"], [Path(__file__), SCALE_CODE],
                           action=lambda records: make_report(cfg, work, records, root))  # fmt: skip
    return steps


def fingerprint(step: Step, records: dict[str, dict], deps: list[str] | None = None) -> str:
    """The step's command line, settings and recipe files, and the fingerprints of ``deps`` (default: all it may depend on)."""
    deps = DEPENDS[step.name] if deps is None else deps
    h = hashlib.sha256(json.dumps(step.argv).encode())
    h.update(step.key.encode())
    for path in step.files:
        h.update(path.read_bytes())
    for dep in deps:
        h.update(records.get(dep, {}).get("fingerprint", "missing").encode())
    return h.hexdigest()


def read_record(work: Path, name: str) -> dict | None:
    path = work / "steps" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(work: Path, name: str, record: dict) -> None:
    atomic_write_text(work / "steps" / f"{name}.json", json.dumps(record, indent=2) + "\n")  # fsynced, then renamed


def read_attempts(work: Path, name: str, fp: str) -> list[float]:
    """Wall seconds of earlier interrupted attempts of this step with this fingerprint."""
    path = work / "steps" / f"{name}.attempts.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return list(data["seconds"]) if data.get("fingerprint") == fp else []


def write_attempts(work: Path, name: str, fp: str, attempts: list[float]) -> None:
    atomic_write_text(work / "steps" / f"{name}.attempts.json", json.dumps({"fingerprint": fp, "seconds": attempts}) + "\n")


# --------------------------------------------------------------------------- report


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def real_contact_sheet(aligned: Path, split: Path, out: Path, people: int = 12, per: int = 8) -> None:
    import numpy as np
    from PIL import Image

    from synthface.files import images_in
    from synthface.generator.training.report import image_grid, save_png

    names = json.loads(split.read_text())["train"]
    rows = []
    for name in names:
        files = images_in(aligned / name) if (aligned / name).is_dir() else []
        if len(files) >= per:
            rows.append([np.asarray(Image.open(p).convert("RGB").resize((64, 64), Image.LANCZOS)) for p in files[:per]])
        if len(rows) == people:
            break
    save_png(image_grid(rows, scale=1), out)


def _arm(report: dict, name: str, bench: str, tar: str) -> dict:
    res, trained = report["results"][name][bench], report["training"][name]
    return {"accuracy": res["accuracy"], "accuracy_std": res["accuracy_std"], tar: res[tar],
            "identities": trained.get("identities"), "images": trained.get("images")}  # fmt: skip


def equal_size_arm(summary: dict, tar: str) -> dict:
    """The synthetic arm at the real arm's size: the scaling curve's point with as many identities as
    the real arm (all their images) when the set holds more, else the whole synthetic set; ``set``
    names which (a subset name or ``synthetic``)."""
    real = summary["real"]
    point = next((c for c in summary.get("curve", []) if c["per_identity_cap"] is None
                  and c["identities"] == real["identities"] and c["trained_as"] != WHOLE_SET), None)  # fmt: skip
    arm = {"set": WHOLE_SET, **summary["synthetic"]} if point is None else {
        "set": point["subset"], **{k: point[k] for k in ("accuracy", "accuracy_std", tar, "identities", "images")}
    }  # fmt: skip
    return {**arm, "ratio": arm["accuracy"] / real["accuracy"]}


def make_report(cfg: dict, work: Path, records: dict[str, dict], root: Path) -> None:
    real, synth = load(work / "eval-real" / "report.json"), load(work / "eval-synthetic" / "report.json")
    gen, insp = load(work / "generate.json"), load(work / "inspect.json")
    bench = real["benchmarks"][0]
    r = real["results"]["real"][bench]
    tar = next(k for k in r if k.startswith("tar_at_far"))
    real_contact_sheet(work / "lfw-aligned", root / cfg["split"], work / "real_contact_sheet.png")
    steps_time = {n: records[n].get("seconds") for n in STEPS if n in records}
    model = model_dir(cfg, work, root)
    summary = {
        "benchmark": bench,
        "real": _arm(real, "real", bench, tar),
        "synthetic": _arm(synth, "synthetic", bench, tar),
        "generate": gen,
        "inspect": insp,
        "step_seconds": steps_time,
        "total_seconds": sum(v for v in steps_time.values() if v),
    }
    summary["ratio"] = summary["synthetic"]["accuracy"] / summary["real"]["accuracy"]
    summary["real_accuracy"] = summary["real"]["accuracy"]
    summary["model"] = str(model)
    summary["model_sha256"] = model_sha256(model)
    summary["evaluate_recipe"] = cfg["evaluate"]
    summary["commands"] = {n: records[n]["argv"] for n in STEPS if records.get(n, {}).get("argv")}
    active = active_steps(cfg)
    if "evaluate-mixed" in active:
        mixed = load(work / "eval-mixed" / "report.json")
        m = summary["mixed"] = {**_arm(mixed, "mixed", bench, tar), "parts": mixed["training"]["mixed"].get("parts")}
        m["minus_real"] = m["accuracy"] - r["accuracy"]
        m["above_fold_std"] = m["minus_real"] > max(m["accuracy_std"], r["accuracy_std"])
    if "evaluate-scale" in active:
        summary["curve"] = scale_curve(work, bench, tar)
        plot_scale_curve(summary["curve"], tar, work / "scale_curve.png")
    summary["equal_size"] = equal_size_arm(summary, tar)
    atomic_write_text(work / "report.json", json.dumps(summary, indent=2, default=str) + "\n")

    def row(name: str, d: dict) -> str:
        return (f"| {name} | {100 * d['accuracy']:.2f} ± {100 * d['accuracy_std']:.2f} | {100 * d[tar]:.1f} | "
                f"{d['identities']} | {d['images']} |")  # fmt: skip

    eq = summary["equal_size"]
    mixed_lines = []
    if "mixed" in summary:
        m = summary["mixed"]
        mixed_lines = [
            f"Real + synthetic minus real alone: {100 * m['minus_real']:+.2f} points (fold std: real "
            f"{100 * r['accuracy_std']:.2f}, real + synthetic {100 * m['accuracy_std']:.2f}; "
            f"{'above' if m['above_fold_std'] else 'not above'} the fold std).", "",
        ]  # fmt: skip
    curve_lines = []
    if "curve" in summary:
        curve_lines = [
            "## Scaling curve", "",
            f"Seeded subsets of the synthetic set (seed {summary['curve'][0]['seed']}, nested: the smaller subsets are "
            "inside the larger), the same recognizer recipe on each (`eval-scale/`, subsets in `scale/`).", "",
            "| subset | identities | images | images per identity | accuracy (%) | TAR@FAR=1e-3 (%) |",
            "| --- | --- | --- | --- | --- | --- |",
            *(f"| {c['subset']} | {c['identities']} | {c['images']} | {c['images_per_identity']:.2f} | "
              f"{100 * c['accuracy']:.2f} ± {100 * c['accuracy_std']:.2f} | {100 * c[tar]:.1f} |" for c in summary["curve"]),
            "", "![scaling curve](scale_curve.png)", "",
        ]  # fmt: skip
    lines = [
        "# synthface protocol: synthetic versus real (scaled-down, LFW)", "",
        f"Same recognizer recipe, trained on each set, tested on {bench} ({r.get('pairs', '')} pairs among the test-half people).", "",
        f"Generator model: `{summary['model']}` (sha256 {summary['model_sha256']}).", "",
        "| training set | accuracy (%) | TAR@FAR=1e-3 (%) | identities | images |", "| --- | --- | --- | --- | --- |",
        row("real (LFW train half)", summary["real"]), row("synthetic (synthface)", summary["synthetic"]),
        *([row(f"synthetic at the real arm's size ({eq['set']})", eq)] if eq["set"] != WHOLE_SET else []),
        *([row("real + synthetic", summary["mixed"])] if "mixed" in summary else []), "",
        f"**Ratio synthetic / real accuracy: {summary['ratio']:.3f}**"
        + (f"; at the real arm's size ({eq['set']}, {eq['identities']} identities): **{eq['ratio']:.3f}**"
           if eq["set"] != WHOLE_SET else ""), "",
        *mixed_lines,
        f"Filter: {insp['acceptance']['passed']} of {insp['acceptance']['candidates']} candidates passed "
        f"(acceptance {100 * insp['acceptance']['rate']:.1f}%); identities kept {insp['identities']} of "
        f"{insp['identities_planned']}, dropped: {json.dumps(insp.get('identities_dropped', {}))}; images per identity "
        f"{insp['images_per_identity']['mean']:.2f} (min {insp['images_per_identity']['min']:.0f}).", "",
        *curve_lines,
        "## Synthetic set", "", "```json", json.dumps({k: gen.get(k) for k in sorted(gen) if not isinstance(gen.get(k), (dict, list))}, indent=1), "```", "",
        "Figures: `synthetic/inspect/` (similarity.png, candidate_scores.png, contact_sheet.png); real contact sheet: "
        "`real_contact_sheet.png`; ROC curves and training curves: `eval-real/`, `eval-synthetic/`.", "",
        "## Step wall times (s)", "", *(f"- {n}: {v:.0f}" for n, v in steps_time.items() if v), "",
    ]  # fmt: skip
    atomic_write_text(work / "report.md", "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- running


def run(cfg: dict, work: Path, only: list[str] | None, log: Callable[[str], None], root: Path) -> dict[str, str]:
    """Run the steps (``only``: a subset) that are not up to date; returns each step's outcome,
    "ran" or "skipped". ``log`` gets a line per step."""
    records = {n: r for n in STEPS if (r := read_record(work, n)) is not None}
    outcome: dict[str, str] = {}
    for name in active_steps(cfg):
        if only and name not in only:
            continue
        deps = depends(name, cfg)
        for dep in deps:
            if dep not in records:
                raise ProtocolError(f"step {name} needs step {dep} first: run it (or drop --steps)")
        step = build_steps(cfg, work, root)[name]
        fp = fingerprint(step, records, deps)
        old = records.get(name)
        if old and old.get("fingerprint") == fp and all(p.exists() for p in step.outputs):
            log(f"[{name}] up to date, skipped (done {old['finished']}, {old['seconds']:.0f} s)")
            outcome[name] = "skipped"
            continue
        log(f"[{name}] running: {' '.join(step.argv[2:]) if step.argv else name}")
        attempts = read_attempts(work, name, fp)
        t0 = time.time()
        if step.argv:
            env = dict(os.environ)
            env.setdefault("OMP_NUM_THREADS", "1")  # a second intra-op thread costs more than it gives on busy cores
            done = subprocess.run(step.argv, cwd=root, env=env)
            if done.returncode != 0:
                attempts.append(round(time.time() - t0, 1))  # an interrupted attempt's time still counts
                write_attempts(work, name, fp, attempts)
                raise ProtocolError(f"step {name} failed (exit {done.returncode}); fix the cause and rerun: it resumes")
        elif step.action is not None:
            try:
                step.action(records)
            except SynthfaceError as exc:
                attempts.append(round(time.time() - t0, 1))
                write_attempts(work, name, fp, attempts)
                raise ProtocolError(f"step {name} failed: {exc}") from None
        missing = [str(p) for p in step.outputs if not p.exists()]
        if missing:
            raise ProtocolError(f"step {name} finished without writing {', '.join(missing)}")
        seconds = round(time.time() - t0, 1)
        records[name] = {"fingerprint": fp, "seconds": round(seconds + sum(attempts), 1), "interrupted_attempts": attempts,
                         "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": step.argv}  # fmt: skip
        write_record(work, name, records[name])
        (work / "steps" / f"{name}.attempts.json").unlink(missing_ok=True)
        outcome[name] = "ran"
        log(f"[{name}] done in {records[name]['seconds']:.0f} s")
    return outcome


def run_recipe(recipe: Path, work: Path, only: list[str] | None, log: Callable[[str], None], root: Path) -> dict[str, str]:
    """Check the protocol recipe, the steps asked for and LFW, keep a copy of the recipe in ``work``
    (protocol.yaml), then :func:`run`."""
    unknown = sorted(set(only or []) - set(STEPS))
    if unknown:
        raise ProtocolError(f"unknown step(s) {', '.join(unknown)}: choose from {', '.join(STEPS)}")
    if not recipe.is_file():
        raise ProtocolError(f"recipe not found: {recipe}")
    cfg = yaml.safe_load(recipe.read_text())
    off = [n for n in only or [] if n not in active_steps(cfg)]
    if off:
        raise ProtocolError(f"step {off[0]} is off in {recipe}: add `{OPTIONAL[off[0]]}:` to it (docs/protocol.md)")
    if cfg.get("scale"):
        try:  # a bad `scale:` is refused before any step runs
            scale_points(cfg)
            scale_seed(cfg)
        except ConfigError as exc:
            raise ProtocolError(f"{recipe}: {exc}") from None
    if not (lfw_root(cfg, root) / "lfw-deepfunneled").is_dir():
        from synthface.lfw import not_found

        raise ProtocolError(not_found(lfw_root(cfg, root), "LFW photos") + " (or set `lfw:` in the protocol recipe)")
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "protocol.yaml", recipe.read_text())
    return run(cfg, work, only, log, root)
