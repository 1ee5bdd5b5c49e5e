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
synthface train-head --data data/lfw-aligned --recipe recipes/native-cpu-small.yaml --out runs/native-cpu-small
accelerate launch --num_processes 8 -m synthface train --data lfw/lfw-deepfunneled --recipe recipes/native-gpu-128.yaml --out runs/native-128
"""
)


HEAD_EPILOG = example(
    """
synthface train --data data/lfw-loose192 --recipe recipes/native-cpu-latent.yaml --out runs/latent --prepare-only
synthface train-head --data data/lfw-loose192 --recipe recipes/native-cpu-latent.yaml --out runs/latent
synthface train --data data/lfw-loose192 --recipe recipes/native-cpu-latent.yaml --out runs/latent   # its identity term reads that head
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
            config, data, out, resume=resume, prepare_only=prepare_only, progress=RichBar(("loss", "id_loss", "steps_s"))
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
                f"{summary['train_seconds']:.0f} s, final loss {summary['final_loss']:.4f}"
                + (
                    f", identity term {summary['final_identity_loss']:.4f}"
                    if isinstance(summary.get("final_identity_loss"), float)
                    else ""
                )
                + f"); model: {summary['model']}",
                highlight=False,
            )
        write_json(json_out, summary)

    @app.command("train-head", epilog=HEAD_EPILOG)
    @handle_errors
    def train_head(
        data: Annotated[
            Path,
            typer.Option(
                "--data", "-d", help="The run's training faces (the same --data as `synthface train`).", show_default=False
            ),
        ],
        out: Annotated[
            Path,
            typer.Option("--out", "-o", help="The run folder (the same --out): writes OUT/identity_head.", show_default=False),
        ],
        recipe_path: RecipeOpt = None,
        sets: SetOpt = None,
        json_out: JsonOpt = None,
    ) -> None:
        """Distil a noise-aware latent identity head from the run's cached latents and embeddings.

        It serves train.identity_loss.through=head and sampling.identity_guide=head; its held-out
        accuracy per noise level goes to OUT/identity_head/accuracy.json.
        """
        from synthface.generator.training.head import train_identity_head

        config = recipe(TrainRecipe, recipe_path, sets)
        summary = train_identity_head(config, data, out, progress=RichBar(("loss",)))
        levels = summary.get("levels") or []
        shown = ", ".join(f"t={r['timestep']}: {r['cosine_mean']:.3f}" for r in levels[:: max(1, len(levels) // 4)])
        console.print(
            f"identity head: {summary['head']} ({summary['steps']} steps on {summary['train_images']} images); "
            + (
                f"held-out cosine {shown} (constant guess {summary['constant_guess_cosine']:.3f})"
                if levels
                else "no held-out identities"
            ),
            highlight=False,
        )
        write_json(json_out, summary)
