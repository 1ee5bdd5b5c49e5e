"""`synthface export`: a dataset's shards as ImageFolder, WebDataset tars or InsightFace RecordIO."""

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
from synthface.config import ExportRecipe

EPILOG = example(
    """
synthface export runs/quickstart --format imagefolder runs/quickstart-folders
synthface export runs/10k --format recordio runs/10k-rec
synthface export runs/10k --format webdataset runs/10k-wds --set shard_size=5000
"""
)


@handle_errors
def export_cmd(
    src: Annotated[Path, typer.Argument(help="Dataset directory written by `synthface generate`.", show_default=False)],
    out: Annotated[
        Path, typer.Argument(help="Output directory (created; must be empty unless --overwrite).", show_default=False)
    ],
    fmt: Annotated[
        str | None,
        typer.Option("--format", "-f", help="imagefolder | webdataset | recordio (recipe key: format).", show_default=False),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier export in OUT (files you added to OUT stay).")
    ] = False,
    allow_partial: AllowPartialOpt = False,
    recipe_path: RecipeOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Export SRC's committed shards to OUT (images copied as stored, labels as in the shards)."""
    from synthface.dataset.export import export

    overrides = list(sets or []) + ([f"format={fmt}"] if fmt else [])
    cfg = recipe(ExportRecipe, recipe_path, overrides)
    summary = export(src, cfg.format, out, overwrite=overwrite, shard_size=cfg.shard_size, progress=RichBar(),
                     allow_partial=allow_partial, config=cfg)  # fmt: skip
    kept = (
        f" (kept {count(summary['kept_user_files'], 'file')} the earlier export did not write)"
        if summary["kept_user_files"]
        else ""
    )
    console.print(
        f"exported {count(summary['images'], 'image')} of {count(summary['identities'], 'identity', 'identities')} "
        f"as {cfg.format} -> {out}{kept}"
    )
    write_json(json_out, summary)


def register(app: typer.Typer) -> None:
    app.command("export", epilog=EPILOG)(export_cmd)
