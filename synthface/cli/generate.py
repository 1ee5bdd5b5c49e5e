"""`synthface generate`: identities -> images -> shards; resumable; multi-process under accelerate launch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthface.cli.common import (
    EXIT_BROKEN_IMPORT,
    JsonOpt,
    RecipeOpt,
    RichBar,
    SetOpt,
    console,
    count,
    example,
    fail,
    handle_errors,
    recipe,
    sigterm_interrupts,
    write_json,
)
from synthface.config import GenerateRecipe

EPILOG = example(
    """
python -c "from synthface.testing import tiny_native_model; tiny_native_model('runs/tiny')"
synthface generate --model runs/tiny --recipe recipes/quickstart-native.yaml --out runs/quickstart
accelerate launch --num_processes 8 -m synthface generate --model MODEL --recipe recipes/generate-10k-x-50.yaml --out runs/10k
accelerate launch --multi_gpu --num_processes 2 -m synthface generate --model runs/tiny --recipe recipes/quickstart-native.yaml --out runs/q2  # 2 CPU processes (--cpu alone starts one)
synthface generate --model MODEL --recipe R.yaml --out runs/10k --part "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT"  # each job of a Slurm array (docs/generate.md)
synthface generate --model MODEL --recipe R.yaml --out runs/10k  # once every part is done: the final pass
"""
)


def run_size(config: GenerateRecipe, recipe_path: Path | None, sets: list[str] | None) -> str:
    """The run's size in one line, so a run is never started without a word about what it makes."""
    ids, per = config.identities.count, config.images_per_identity
    renders = ""
    if config.filter.enabled and config.filter.oversample > 1:
        renders = (
            f", up to {int(ids * per * config.filter.oversample):,} renders (filter.oversample {config.filter.oversample:g})"
        )
    source = "the default recipe (no --recipe, no --set)" if recipe_path is None and not sets else "the recipe"
    return f"planned by {source}: {ids:,} identities x {per} images = {ids * per:,} images{renders}"


def register(app: typer.Typer) -> None:
    @app.command("generate", epilog=EPILOG)
    @handle_errors
    def generate_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created; resumed if it holds this run).")],
        model: Annotated[
            str | None,
            typer.Option("--model", "-m", help="Model directory (with synthface.json) or Hub id; overrides the recipe's model."),
        ] = None,
        recipe_path: RecipeOpt = None,
        sets: SetOpt = None,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete this run's files in --out and start over.")] = False,
        part: Annotated[
            str | None,
            typer.Option(
                "--part",
                help="Render only part I of N (0-based, e.g. 3/8: the shards s with s % N == I), for job arrays; "
                "skips the final pass: run once more without --part when every part is done.",
            ),
        ] = None,
        json_out: JsonOpt = None,
    ) -> None:
        """Generate a labeled synthetic face dataset: Parquet shards under OUT/data, resumable."""
        from synthface.broken_imports import REQUIRED, check_imports
        from synthface.generator.distributed import process_state
        from synthface.generator.run import generate_dataset

        config = recipe(GenerateRecipe, recipe_path, sets)
        if model is not None:
            config.model = model
        local = Path(config.model).expanduser()
        if local.is_dir():
            config.model = str(local.resolve())
        state = process_state()
        main = state.is_main_process
        bar = RichBar() if main else None
        broken = check_imports(REQUIRED)  # a broken install is the one line, before the run's plan
        if broken:
            fail(broken[0].pointer(), code=EXIT_BROKEN_IMPORT)
        if main:
            console.print(run_size(config, recipe_path, sets), soft_wrap=True)
        with sigterm_interrupts():
            summary = generate_dataset(config, out, overwrite=overwrite, progress=bar, state=state, part=part)
        if not main:
            return
        if part is not None:
            console.print(
                f"part {summary['part']}: {summary['part_shards']} of its shards committed ({summary['shards_written']} "
                f"written now, {summary['shards_skipped']} already done; {summary['shards']} shards in all) -> {out}/data; "
                "when every part is done, run `synthface generate` with the same arguments and no --part to finish the dataset",
                highlight=False,
            )
            write_json(json_out, summary)
            return
        if summary["images"] == 0:
            write_json(json_out, summary)
            fail(
                f"the run kept 0 images ({out}): the filter rejected every "
                "identity; lower filter.threshold or filter.min_images, or raise images_per_identity"
            )
        what = "resumed" if summary["resumed"] else "wrote"
        console.print(
            f"{what} {count(summary['images'], 'image')} of {count(summary['identities_kept'], 'identity', 'identities')} "
            f"in {count(summary['shards'], 'shard')} ({summary['shards_written']} written now, {summary['shards_skipped']} already done) -> {out}/data",
            highlight=False,
        )
        write_json(json_out, summary)
