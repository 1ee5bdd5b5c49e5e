"""`synthface inspect`: counts, acceptance, similarity histograms, quality metrics, contact sheet, leakage and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthface.cli.common import (
    AllowPartialOpt,
    JsonOpt,
    RecipeOpt,
    RichBar,
    SetOpt,
    console,
    count,
    example,
    handle_errors,
    recipe,
    write_json,
)
from synthface.config import InspectRecipe, write_resolved

EPILOG = example(
    """
synthface inspect runs/quickstart --set embedder=dlib
synthface inspect runs/10k --out runs/10k-report --set gallery=lfw-facenet.parquet --json -
synthface inspect runs/10k --reference data/lfw-test-aligned112 --set card=false
"""
)


@handle_errors
def inspect_cmd(
    src: Annotated[Path, typer.Argument(help="Dataset directory written by `synthface generate`.", show_default=False)],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report directory (default: SRC/inspect).", show_default=False)
    ] = None,
    embedder: Annotated[
        str | None,
        typer.Option(
            "--embedder",
            "-e",
            help="Embedder of the similarity histograms ('none' skips them; recipe key: embedder).",
            show_default=False,
        ),
    ] = None,
    gallery: Annotated[
        str | None,
        typer.Option(
            "--gallery",
            help="`synthface embed` Parquet of real people: leakage report (recipe key: gallery).",
            show_default=False,
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="Folder of real aligned faces (one sub-folder per person): Frechet distance and k-NN precision/recall (recipe key: reference).",
            show_default=False,
        ),
    ] = None,
    allow_partial: AllowPartialOpt = False,
    recipe_path: RecipeOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Write SRC's report: report.html, inspect.json, contact_sheet.png, quality.png, similarity.png, candidate_scores.png, leakage.png."""
    from synthface.dataset.inspect import inspect_dataset

    overrides = (
        list(sets or [])
        + ([f"embedder={embedder}"] if embedder else [])
        + ([f"gallery={gallery}"] if gallery else [])
        + ([f"reference={reference}"] if reference else [])
    )
    cfg = recipe(InspectRecipe, recipe_path, overrides)
    target = out or (src / "inspect")
    report = inspect_dataset(src, target, cfg, progress=RichBar(), allow_partial=allow_partial)
    write_resolved(cfg, target, "inspect.config.yaml")
    acc = report.get("acceptance", {}).get("rate")
    cons = report["quality"].get("consistency", {}).get("cos_to_centre", {}).get("mean")
    ref = report["quality"].get("reference", {})
    for warning in report.get("warnings") or []:
        console.print(f"warning: {warning}", highlight=False, markup=False)
    console.print(
        f"{count(report['images'], 'image')} of {count(report['identities'], 'identity', 'identities')} "
        f"in {count(report['shards'], 'shard')}"
        + (f", filter acceptance {100 * acc:.1f}%" if acc is not None else "")
        + (f", consistency {cons:.3f}" if cons is not None else "")
        + (f", Frechet distance {ref['frechet_distance']:.4f}" if "frechet_distance" in ref else "")
        + f" -> {report['files']['html']}",
        highlight=False,
    )
    write_json(json_out, report)


def register(app: typer.Typer) -> None:
    app.command("inspect", epilog=EPILOG)(inspect_cmd)
