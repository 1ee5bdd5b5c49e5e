"""`synthface verify`: verification accuracy of a pretrained embedder on a pairs protocol."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from synthface.cli.common import JsonOpt, RecipeOpt, RichBar, SetOpt, console, example, handle_errors, recipe, write_json
from synthface.config import VerifyRecipe, write_resolved
from synthface.dataset.locks import output_lock
from synthface.output_folder import check_output_folder


@handle_errors
def verify(
    pairs: Annotated[
        Path,
        typer.Option(
            "--pairs",
            help="LFW-style pairs.txt, a CSV (path_a,path_b,same), an insightface .bin, "
            "or a folder of people (a seeded people-disjoint 10-fold protocol is drawn).",
            show_default=False,
        ),
    ],
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Image folder that pairs.txt names (for a CSV: the folder its paths are relative to; default its own).",
            show_default=False,
        ),
    ] = None,
    embedder: Annotated[
        str | None,
        typer.Option("--embedder", "-e", help="dlib | sface | facenet-vggface2 | facenet-casia | onnx:PATH.", show_default=False),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for roc.png, the summary and the resolved config.", show_default=False)
    ] = None,
    recipe_path: RecipeOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Verification accuracy of a pretrained embedder on LFW pairs.txt, a pairs CSV, a folder of people or an insightface .bin.

    With --out DIR it writes roc.png, verify.json, embeddings.npz (every image's embedding) and
    the resolved config.

    The insightface protocol: flip-TTA summed embeddings, 10-fold best-threshold accuracy
    (mean and std), TAR at FAR=1e-3, ROC curve. A pair with an image whose face is not found counts as a wrong decision (never dropped).
    """
    from synthface.recognition.pretrained import save_embeddings, verify_embedder, write_roc

    overrides = list(sets or []) + ([f"embedder={embedder}"] if embedder else [])
    cfg = recipe(VerifyRecipe, recipe_path, overrides)
    if out is not None:
        check_output_folder(out, "verify", "config.yaml", VerifyRecipe)
    # --out is locked for the whole run: a second verify into it is refused, not overwritten
    with output_lock(out) if out is not None else contextlib.nullcontext():
        result = verify_embedder(pairs, images, cfg, progress=RichBar())
        summary = result.summary()
        if out is not None:
            write_resolved(cfg, out, "config.yaml")
            summary["roc_png"] = str(write_roc(result, out / "roc.png"))
            summary["embeddings"] = str(save_embeddings(result, out / "embeddings.npz"))
            write_json(str(out / "verify.json"), summary)
    far_key = next(k for k in summary if k.startswith("tar_at_far_"))
    console.print(
        f"{summary['benchmark']} / {summary['embedder']}: accuracy {summary['accuracy'] * 100:.2f}% "
        f"± {summary['accuracy_std'] * 100:.2f}, {far_key.replace('tar_at_far_', 'TAR@FAR=')} "
        f"{summary[far_key] * 100:.2f}%, threshold {summary['threshold']:.3f}, pairs {summary['pairs']}, "
        f"failed images {summary['failed_images']} ({summary['failed_pairs']} pairs counted wrong)"
    )
    write_json(json_out, summary)


def register(app: typer.Typer) -> None:
    app.command(
        "verify",
        epilog=example(
            "synthface verify --embedder dlib --pairs lfw/pairs.txt "
            "--images lfw/lfw-deepfunneled --out verify-lfw --json -\n"
            "synthface verify --embedder sface --pairs my-pairs.csv\n"
            "synthface verify --embedder dlib --pairs my-people/ --set seed=1 --set pairs_per_fold=50"
        ),
    )(verify)
