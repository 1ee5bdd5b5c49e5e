"""`synthface evaluate`: train one recognizer per training set with the same recipe, verify each on every benchmark
(:mod:`synthface.recognition.evaluate`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from synthface.cli.common import JsonOpt, RecipeOpt, RichBar, SetOpt, console, example, handle_errors, recipe, write_json
from synthface.config import EvaluateRecipe
from synthface.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

EPILOG = example(
    """
synthface evaluate --recipe recipes/evaluate-cpu-small.yaml --train real=/data/lfw-aligned --people real=bench/data/lfw_split.json:train --bench lfw-test=bench/data/lfw_test_pairs.txt:/data/lfw-aligned --out runs/eval
synthface evaluate --recipe recipes/evaluate-casia-scale.yaml --train synth=runs/synth10k --train casia=/data/casia/train.rec --bench lfw=/data/lfw.bin --bench cfp_fp=/data/cfp_fp.bin --out runs/paper
synthface evaluate --recipe recipes/evaluate-casia-scale.yaml --train real=/data/casia/train.rec --train mixed=/data/casia/train.rec+runs/synth10k --bench lfw=/data/lfw.bin --out runs/mixed
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
                "(one sub-folder per identity), or InsightFace train.rec (repeatable). NAME=A+B+... trains on "
                "the parts combined, their identities kept apart (docs/evaluate.md).",
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
                help="NAME=FILE restricting ImageFolder training set NAME (or the ImageFolder parts of a "
                "combined NAME=A+B) to the listed identities: a text file (one per line) or FILE.json:KEY "
                "(e.g. bench/data/lfw_split.json:train).",
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
        from synthface.recognition.evaluate import evaluate_training_sets

        report = evaluate_training_sets(
            config, trains, benches, people_map, out, resume=resume, bench_only=bench_only, progress=RichBar()
        )
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
