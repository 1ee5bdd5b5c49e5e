"""`synthface align`: detect and five-point-align every face in a folder tree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthface.cli.common import JsonOpt, RecipeOpt, RichBar, SetOpt, console, example, handle_errors, recipe, write_json
from synthface.config import AlignRecipe, write_resolved


@handle_errors
def align(
    src: Annotated[Path, typer.Argument(help="Folder of photos; identity sub-folders are kept.", show_default=False)],
    dst: Annotated[Path, typer.Argument(help="Output folder for the aligned crops.", show_default=False)],
    recipe_path: RecipeOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Detect faces (MTCNN) and warp each to the ArcFace 112x112 five-point template.

    Reruns skip crops that already exist. Recipe keys: image_size, template_scale (1 tight, 0.6 loose), image_format (png|jpeg),
    select (largest|center), min_face_size, detector_threshold, batch_size, workers, device.
    """
    from synthface.faces.align_folder import align_folder, check_folders

    from synthface.dataset.locks import output_lock

    cfg = recipe(AlignRecipe, recipe_path, sets)
    check_folders(src, dst)
    with output_lock(dst):  # a second align into DST is refused; a failed start leaves no DST
        summary = align_folder(src, dst, cfg, progress=RichBar())
        write_resolved(cfg, dst, "synthface-align.yaml")
    data = summary.to_dict()
    console.print(
        f"aligned {summary.aligned}, already there {summary.skipped_existing}, "
        f"no face {summary.no_face}, too small {summary.too_small}, unreadable {summary.unreadable} (of {summary.total}) -> {dst}"
    )
    write_json(json_out, data)


def register(app: typer.Typer) -> None:
    app.command(
        "align",
        epilog=example("synthface align lfw/lfw-deepfunneled lfw-aligned --json align.json"),
    )(align)
