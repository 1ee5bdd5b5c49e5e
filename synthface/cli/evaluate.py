"""`synthface evaluate`: train one recognizer per training set with the same recipe, verify each on every benchmark."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from synthface.cli.common import JsonOpt, RecipeOpt, RichBar, SetOpt, console, example, handle_errors, recipe, write_json
from synthface.config import EvaluateRecipe, config_dict, config_hash, write_resolved
from synthface.output_folder import check_output_folder
from synthface.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

EPILOG = example(
    """
synthface evaluate --recipe recipes/evaluate-cpu-small.yaml --train real=/data/lfw-aligned --people real=bench/data/lfw_split.json:train --bench lfw-test=bench/data/lfw_test_pairs.txt:/data/lfw-aligned --out runs/eval
synthface evaluate --recipe recipes/evaluate-casia-scale.yaml --train synth=runs/synth10k --train casia=/data/casia/train.rec --bench lfw=/data/lfw.bin --bench cfp_fp=/data/cfp_fp.bin --out runs/paper
synthface evaluate --bench-only runs/eval/runs/real/recognizer.pt --bench lfw=/data/lfw.bin --out runs/recheck
"""
)


def _pairs(values: list[str] | None, what: str, example_text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in values or []:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not value or not _NAME.match(name):
            raise InputError(f"{what} {text!r} is not NAME=VALUE with a plain NAME (example: {example_text})")
        if name in out:
            raise InputError(f"{what} name '{name}' is given twice: names must be unique")
        out[name] = value
    return out


def run_evaluate(
    config: EvaluateRecipe,
    trains: dict[str, str],
    benches: dict[str, str],
    people: dict[str, str],
    out: Path,
    resume: bool = False,
    bench_only: Path | None = None,
    progress_factory=RichBar,
) -> dict:
    """The command's work, callable from tests: returns the report dict (plus paths)."""
    from accelerate import PartialState

    from synthface.dataset.reader import open_training_set, read_people
    from synthface.recognition.benchmarks import evaluate_benchmark, load_benchmark
    from synthface.recognition.report import write_report
    from synthface.recognition.train import input_size_of, load_recognizer, train_recognizer
    from synthface.runtime import resolve_device

    if not benches:
        raise InputError("give at least one --bench NAME=PAIRS.txt:IMAGES_DIR or NAME=FILE.bin")
    if bench_only is None and not trains:
        raise InputError("give at least one --train NAME=PATH (or --bench-only CHECKPOINT to re-test a recognizer)")
    if bench_only is not None and trains:
        raise InputError("--bench-only re-tests a trained recognizer: drop the --train options")
    unknown = sorted(set(people) - set(trains))
    if unknown:
        raise InputError(f"--people names {', '.join(unknown)} match no --train name")
    missing = [f"{n}={p}" for n, p in trains.items() if not Path(p).exists()]
    if missing:
        raise InputError(f"training set {missing[0]} does not exist: pass a dataset folder, ImageFolder or train.rec")
    check_output_folder(out, "evaluate", "config.yaml", EvaluateRecipe)
    state = PartialState()
    runs = out / "runs"
    if bench_only is None and not resume:
        busy = [n for n in trains if (runs / n / "checkpoint.pt").exists()]
        if busy:
            raise InputError(f"{out} already holds training runs ({', '.join(busy)}): pass --resume or choose a new --out")
    if state.is_main_process:
        write_resolved(config, out)

    device = resolve_device(config.train.device)
    b = config.bench
    loaded = {
        name: load_benchmark(
            name,
            spec,
            aligned=b.aligned,
            folds=b.folds,
            batch_size=b.batch_size,
            device=str(device),
            progress=progress_factory(),
            seed=config.seed,
            pairs_per_fold=b.pairs_per_fold,
        )
        for name, spec in benches.items()
    }

    def test(backbone, size: int) -> dict:
        return {
            name: evaluate_benchmark(
                backbone, bench, input_size=size, batch_size=b.batch_size, flip=b.flip, far=b.far, device=device
            )
            for name, bench in loaded.items()
        }

    results: dict[str, dict] = {}
    training: dict[str, dict] = {}
    histories: dict[str, list[dict]] = {}
    if bench_only is not None:
        backbone, meta = load_recognizer(bench_only, device)
        name = str(meta.get("meta", {}).get("name") or "recognizer")
        results[name] = test(backbone, int(meta["input_size"]))
        training[name] = {"recognizer": str(bench_only), **meta.get("meta", {})}
    else:
        size = input_size_of(config)
        for name, path in trains.items():
            people_list = read_people(people[name]) if name in people else None
            dataset = open_training_set(path, size=size, min_images=config.train.min_images, people=people_list)
            result = train_recognizer(dataset, config, runs / name, name=name, resume=resume, progress=progress_factory())
            training[name] = {"path": path, **result.summary()}
            histories[name] = result.history
            if state.is_main_process:
                backbone, _ = load_recognizer(result.recognizer, device)
                results[name] = test(backbone, size)
    report: dict = {}
    if state.is_main_process:
        extra = {
            "recipe": config_dict(config),
            "config_hash": config_hash(config),
            "bench_inputs": {n: bench.describe() for n, bench in loaded.items()},
        }
        report = write_report(out, results, training, histories, extra)
        report["report_md"] = str(out / "report.md")
        report["report_json"] = str(out / "report.json")
    state.wait_for_everyone()
    return report


def register(app: typer.Typer) -> None:
    @app.command(
        "evaluate",
        epilog=EPILOG,
        help="Train the same face recognizer on each training set (synthetic or real) and compare them on "
        "verification benchmarks: accuracy ± std, TAR@FAR=1e-3, ROC plots, report.md/report.json.",
    )
    @handle_errors
    def evaluate(
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: runs/<name>/, report.md, report.json, plots.")],
        train: Annotated[
            list[str] | None,
            typer.Option(
                "--train",
                help="NAME=PATH of a training set: synthface dataset folder (Parquet shards), ImageFolder "
                "(one sub-folder per identity), or InsightFace train.rec (repeatable).",
                show_default=False,
            ),
        ] = None,
        bench: Annotated[
            list[str] | None,
            typer.Option(
                "--bench",
                help="NAME=PAIRS.txt:IMAGES_DIR (LFW pairs format) or NAME=FILE.bin (insightface) (repeatable).",
                show_default=False,
            ),
        ] = None,
        people: Annotated[
            list[str] | None,
            typer.Option(
                "--people",
                help="NAME=FILE restricting ImageFolder training set NAME to the listed identities: a text "
                "file (one per line) or FILE.json:KEY (e.g. bench/data/lfw_split.json:train).",
                show_default=False,
            ),
        ] = None,
        bench_only: Annotated[
            Path | None,
            typer.Option("--bench-only", help="Re-test a trained recognizer.pt (no training).", show_default=False),
        ] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue interrupted training runs in --out.")] = False,
        recipe_path: RecipeOpt = None,
        sets: SetOpt = None,
        json_path: JsonOpt = None,
    ) -> None:
        config = recipe(EvaluateRecipe, recipe_path, sets)
        trains = _pairs(train, "--train", "--train synth=runs/synth")
        benches = _pairs(bench, "--bench", "--bench lfw=data/lfw.bin")
        people_map = _pairs(people, "--people", "--people real=bench/data/lfw_split.json:train")
        report = run_evaluate(config, trains, benches, people_map, out, resume=resume, bench_only=bench_only)
        if not report:
            return
        for s in report["training_sets"]:
            for b, r in report["results"][s].items():
                console.print(
                    f"{s} on {b}: accuracy {100 * r['accuracy']:.2f}% ± {100 * r['accuracy_std']:.2f}, "
                    f"TAR@FAR=1e-3 {100 * r['tar_at_far_1e-3']:.2f}%",
                    highlight=False,
                )
        console.print(f"report: {report['report_md']}", highlight=False)
        summary = {
            "out": str(out),
            "report_md": report["report_md"],
            "report_json": report["report_json"],
            "training_sets": report["training_sets"],
            "benchmarks": report["benchmarks"],
            "results": {
                s: {
                    b: {k: r[k] for k in ("accuracy", "accuracy_std", "tar_at_far_1e-3", "auc", "pairs")}
                    for b, r in report["results"][s].items()
                }
                for s in report["training_sets"]
            },
            "average": report["average"],
            "training": report["training"],
        }
        write_json(json_path, summary)
