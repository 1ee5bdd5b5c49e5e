"""`synthface train`: train synthface's own identity-conditioned generator on real aligned faces."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthface.cli.common import JsonOpt, RecipeOpt, RichBar, SetOpt, console, count, example, handle_errors, recipe, write_json
from synthface.config import TrainRecipe

EPILOG = example(
    """
synthface align lfw/lfw-deepfunneled data/lfw-aligned
synthface train --data data/lfw-aligned --recipe recipes/native-cpu-small.yaml --set data.people=bench/data/lfw_split.json:train --out runs/native-cpu-small
synthface train --data data/lfw-aligned --recipe recipes/native-cpu-small.yaml --out runs/native-cpu-small --resume
synthface generate --model runs/native-cpu-small/model --recipe recipes/quickstart-native.yaml --out runs/synth
accelerate launch --num_processes 8 -m synthface train --data lfw/lfw-deepfunneled --recipe recipes/native-gpu-128.yaml --out runs/native-128
"""
)


def register(app: typer.Typer) -> None:
    @app.command("train", epilog=EPILOG)
    @handle_errors
    def train(
        data: Annotated[
            Path,
            typer.Option(
                "--data",
                "-d",
                help="Real faces: a folder with one sub-folder of aligned faces per identity, or synthface shards.",
                show_default=False,
            ),
        ],
        out: Annotated[
            Path,
            typer.Option(
                "--out",
                "-o",
                help="Run folder: checkpoints, samples, loss curve, and the model in OUT/model.",
                show_default=False,
            ),
        ],
        recipe_path: RecipeOpt = None,
        sets: SetOpt = None,
        resume: Annotated[
            bool, typer.Option("--resume", help="Continue from the latest checkpoint in OUT (same recipe).")
        ] = False,
        prepare_only: Annotated[
            bool,
            typer.Option("--prepare-only", help="Compute and cache the embeddings (and latents), then stop."),
        ] = False,
        json_out: JsonOpt = None,
    ) -> None:
        """Train the native generator (DDPM, condition dropout for CFG, EMA) on real faces; export OUT/model."""
        from synthface.generator.training import train_generator

        config = recipe(TrainRecipe, recipe_path, sets)
        summary = train_generator(
            config, data, out, resume=resume, prepare_only=prepare_only, progress=RichBar(("loss", "steps_s"))
        )
        d = summary["data"]
        skipped = sum(d["skipped"].values())
        console.print(
            f"data: {count(d['images'], 'image')} of {count(d['identities'], 'identity', 'identities')} ({d['form']} crops"
            + (f", {skipped} skipped: {d['skipped']}" if skipped else "")
            + ")",
            highlight=False,
        )
        if prepare_only:
            console.print(f"cached embeddings for {out}; run again without --prepare-only to train", highlight=False)
        else:
            console.print(
                f"trained {summary['steps']} steps ({summary['parameters'] / 1e6:.1f}M parameters, "
                f"{summary['train_seconds']:.0f} s, final loss {summary['final_loss']:.4f}); model: {summary['model']}",
                highlight=False,
            )
        write_json(json_out, summary)
