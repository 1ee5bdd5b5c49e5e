"""`synthface doctor` (what this environment can run) and `synthface download` (fetch what a run loads)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from synthface.cli.common import (
    EXIT_BROKEN_IMPORT,
    EXIT_MISSING_FILES,
    JsonOpt,
    RecipeOpt,
    RichBar,
    SetOpt,
    console,
    example,
    fail,
    handle_errors,
    recipe,
    write_json,
)

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Generator model (directory or Hub id); overrides the recipe's model.", show_default=False
    ),
]
EmbedderOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--embedder",
        "-e",
        help="Also an embedder's weights (repeatable): facenet-vggface2, onnx:ORG/REPO/FILE.onnx, ...",
        show_default=False,
    ),
]

DOCTOR_EPILOG = example(
    """
synthface doctor
synthface doctor --recipe recipes/arc2face-quickstart.yaml --fetch
synthface doctor --json doctor.json
"""
)
DOWNLOAD_EPILOG = example(
    """
synthface download --recipe recipes/arc2face-quickstart.yaml
synthface download --recipe recipes/arc2face-lcm-quickstart.yaml --embedder facenet-vggface2
synthface download --embedder facenet-vggface2
"""
)


def _needs(recipe_path, sets, model, embedders):  # type: ignore[no-untyped-def]
    """The recipe's (or --model's) complete file set plus the named embedders; None when nothing was named."""
    from synthface.config import GenerateRecipe
    from synthface.needs import embedder_need, generate_needs

    if recipe_path is None and not sets and model is None and not embedders:
        return None
    needs = []
    if recipe_path is not None or sets or model is not None:
        cfg = recipe(GenerateRecipe, recipe_path, sets)
        if model is not None:
            cfg.model = model
        needs = generate_needs(cfg)
    known = {n.name for n in needs}
    needs += [n for n in (embedder_need(e, f"embedder `{e}`") for e in embedders or []) if n.name not in known]
    return needs


def _fetch(needs) -> list:  # type: ignore[no-untyped-def]
    from synthface.needs import fetch_missing

    todo = [n for n in needs if not n.present and n.fetcher is not None]
    if todo:
        console.print(f"fetching {len(todo)}: {', '.join(n.name for n in todo)}", highlight=False)
    return fetch_missing(needs, progress=RichBar())


@handle_errors
def doctor(
    recipe_path: RecipeOpt = None,
    sets: SetOpt = None,
    model: ModelOpt = None,
    embedders: EmbedderOpt = None,
    fetch: Annotated[
        bool, typer.Option("--fetch", help="Fetch every missing file that can be fetched (as `synthface download`).")
    ] = False,
    json_out: JsonOpt = None,
) -> None:
    """Report python, the torch build and devices, packages, and whether the weights a run loads are complete.

    With --recipe (a generate recipe) it checks exactly the files that run loads (generator, its
    base model, LoRA, conditioning and filter embedders); without, every embedder and the Arc2Face
    set. For what is missing it prints the one command that fetches it. A package that does not
    import (torch, torchvision, transformers, diffusers, dlib, onnxruntime) is named with the
    versions found, the likely cause and the command that fixes it.

    Exit codes: 0 all is well; 3 a package does not import; 4 a file the run named by --recipe,
    --set, --model or --embedder loads is missing, incomplete or unusable (a truncated or changed
    weights file, a path that is not an ONNX model, a recipe's gallery or style bank that is not there).
    """
    from synthface.broken_imports import check_imports, culprit
    from synthface.doctor import default_needs, report

    broken = check_imports()
    try:
        named = _needs(recipe_path, sets, model, embedders)
        needs = default_needs() if named is None else named
    except Exception as exc:  # listing what a run loads imports the generator's packages
        found = culprit(exc)
        if found is None:
            raise
        if found.package not in {b.package for b in broken}:
            broken.append(found)
        named, needs = None, None
    if fetch and needs is not None:
        _fetch(needs)
    data = report(needs, broken)
    t = data["torch"]
    if t is not None:
        console.print(f"[bold]python[/] {data['python']}  [bold]torch[/] {t['torch']} ({t['build']} build)  "
                      f"[bold]CUDA[/] {'yes ' + str(t['cuda_version']) if t['cuda_available'] else 'no'}  "
                      f"[bold]default device[/] {t['default_device']}  [bold]CPU threads[/] {t['cpu_threads']}",
                      markup=True)  # fmt: skip
        if t["build"] != "CPU-only" and not t["cuda_available"]:
            console.print(f"[yellow]note:[/] this torch is a {t['build']} build but no GPU is visible: on a CPU-only "
                          "machine the CPU-only build is several GB smaller (README, 'CPU-only machines')", markup=True)  # fmt: skip
        for d in t["devices"]:
            console.print(f"  cuda:{d['index']} {d['name']} {d['memory_gib']} GiB bf16={d['bf16']}")
    else:
        console.print(f"[bold]python[/] {data['python']}  [bold]torch[/] does not import (below)", markup=True)
    missing = [k for k, v in data["packages"].items() if v == "not installed"]
    if missing:
        console.print(f"[yellow]not installed:[/] {', '.join(missing)}", markup=True)
    if data["weights"] is None:
        console.print(
            "[yellow]weights not checked[/]: what a run loads can be listed once the packages below import", markup=True
        )
    else:
        _print_weights(data["weights"], recipe_path, sets, model, embedders)
    write_json(json_out, data)
    for b in broken:  # last, one line each: what does not import, versions, likely cause, the fix
        console.print(f"[bold red]error:[/] {escape(b.line())}", markup=True, soft_wrap=True)
    if broken:
        raise typer.Exit(EXIT_BROKEN_IMPORT)
    absent = [w for w in data["weights"] or [] if not w["present"]]
    if named is not None and absent:
        state = "missing, incomplete or unusable" if any(w["problem"] for w in absent) else "missing or incomplete"
        fail(f"{len(absent)} of the {len(named)} weights this run loads {'is' if len(absent) == 1 else 'are'} "
             f"{state}: {', '.join(w['name'] for w in absent)}", code=EXIT_MISSING_FILES)  # fmt: skip


def _print_weights(weights: list[dict], recipe_path, sets, model, embedders) -> None:  # type: ignore[no-untyped-def]
    """The weights table, and for what is missing or unusable the commands that fetch or fix it."""
    table = Table(title="weights", show_lines=False)
    for col in ("weights", "used for", "status", "size"):
        table.add_column(col, overflow="fold")
    for w in weights:
        status = "[green]present[/]" if w["present"] else (
            f"[red]unusable:[/] {escape(w['problem'])}" if w["problem"] else "[red]incomplete[/]" if w["missing"] else "[red]missing[/]")  # fmt: skip
        table.add_row(w["name"], w["used_for"], Text.from_markup(status), w["size"])  # plain cells: no markup
    console.print(table)
    absent = [w for w in weights if not w["present"]]
    if absent:
        named = (f" --recipe {recipe_path}" if recipe_path else "") + "".join(f" --set {s}" for s in sets or []) + (
            f" --model {model}" if model else "") + "".join(f" --embedder {e}" for e in embedders or [])  # fmt: skip
        one_step = f"synthface download{named}" if named else "synthface doctor --fetch"
        console.print(f"[bold]fetch what is missing[/] on a machine with network (the caches are then reused offline); "
                      f"every download at once: [cyan]{escape(one_step)}[/]; one by one:", markup=True, soft_wrap=True)  # fmt: skip
        for w in absent:
            lacks = f" ({w['problem']})" if w["problem"] else f" (lacks {', '.join(w['missing'])})" if w["missing"] else ""
            console.print(
                f"  {escape(w['name'])}{escape(lacks)}:\n    [cyan]{escape(w['fetch'])}[/]", markup=True, soft_wrap=True
            )


@handle_errors
def download(
    recipe_path: RecipeOpt = None,
    sets: SetOpt = None,
    model: ModelOpt = None,
    embedders: EmbedderOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Fetch every file a run loads into the caches the runs read, with progress; resumable.

    With --recipe (a generate recipe, plus --set/--model) that is the generator and everything it
    needs (Arc2Face: the model, the Stable Diffusion 1.5 base, a LoRA, arcface.onnx) and the
    conditioning and filter embedders; --embedder adds one embedder's weights. Files already
    cached are skipped; an interrupted download resumes when run again. Packages (dlib, SFace)
    are named with their pip install.
    """
    from synthface.errors import InputError

    needs = _needs(recipe_path, sets, model, embedders)
    if needs is None:
        raise InputError("name what to fetch: --recipe R.yaml (a generate recipe), --model MODEL or --embedder NAME")
    left = _fetch(needs)
    for need in needs:
        state = "present" if need.present else (f"unusable: {need.problem}" if need.problem else "needs a package")
        console.print(f"{need.name}: {state} ({need.where})", markup=False, highlight=False, soft_wrap=True)
    write_json(json_out, {"weights": [n.to_dict() for n in needs], "missing": [n.name for n in left]})
    if left:
        raise InputError(f"not fetchable here, install or fix: {'; '.join(f'{n.name}: {n.fetch}' for n in left)}")


def register(app: typer.Typer) -> None:
    app.command("doctor", epilog=DOCTOR_EPILOG)(doctor)
    app.command("download", epilog=DOWNLOAD_EPILOG)(download)
