"""`synthface embed`: face embeddings of a folder to Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthface.cli.common import JsonOpt, RecipeOpt, RichBar, SetOpt, console, example, handle_errors, recipe, write_json
from synthface.config import EmbedRecipe, write_resolved


@handle_errors
def embed(
    src: Annotated[Path, typer.Argument(help="Folder of images (identity sub-folders name the identity).", show_default=False)],
    out: Annotated[Path, typer.Argument(help="Output Parquet file.", show_default=False)],
    embedder: Annotated[
        str | None,
        typer.Option(
            "--embedder",
            "-e",
            help="dlib | sface | facenet-vggface2 | facenet-casia | onnx:PATH (recipe key: embedder).",
            show_default=False,
        ),
    ] = None,
    recipe_path: RecipeOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Embed every face under SRC and write rows (path, identity, embedding, det_score, status).

    Photos are detected and aligned per embedder; pass --set aligned=true for folders already
    aligned to the 112x112 template (e.g. the output of `synthface align`).
    """
    from synthface.faces.embed_folder import embed_folder

    overrides = list(sets or []) + ([f"embedder={embedder}"] if embedder else [])
    cfg = recipe(EmbedRecipe, recipe_path, overrides)
    summary = embed_folder(src, out, cfg, progress=RichBar())
    write_resolved(cfg, out.parent, out.stem + ".config.yaml")
    console.print(
        f"embedded {summary['embedded']} of {summary['total']} images with {summary['embedder']} "
        f"(no face {summary['no_face']}, too small {summary['too_small']}, unreadable {summary['unreadable']}) -> {out}"
    )
    write_json(json_out, summary)


def register(app: typer.Typer) -> None:
    app.command(
        "embed",
        epilog=example("synthface embed lfw-aligned lfw-dlib.parquet --embedder dlib --set aligned=true"),
    )(embed)
