"""The README's quickstart stays true: CI runs its exact test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    first = text.split("\n## ", 2)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", first, re.S)
    assert block, "the README's first section must hold a code block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_first_section_has_exactly_two_commands():
    assert len(_quickstart_commands()) == 2


def test_ci_runs_the_readme_test_command():
    test_command = _quickstart_commands()[1]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, f"{test_command!r} must appear verbatim in .ci/run"


def test_main_job_recipe_exists():
    main = _quickstart_commands()[0]
    for recipe in re.findall(r"recipes/[\w.-]+\.yaml", main):
        assert (REPO / recipe).is_file(), recipe


# --------------------------------------------------------------------------- every README command


def _fenced_synthface_commands() -> list[str]:
    """Every `synthface ...` command in the README's fenced shell blocks (continuations joined,
    launcher prefixes such as `accelerate launch ... -m` and `docker run ... synthface` dropped)."""
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("#"):
                continue
            for part in re.split(r"&&|\|\|", line):
                match = re.search(r"(?:^|\s|-m\s)synthface\s+([a-z].*)$", part.strip())
                if match:
                    out.append("synthface " + match.group(1).strip())
    return out


def test_readme_has_synthface_commands():
    names = {c.split()[1] for c in _fenced_synthface_commands()}
    assert {"generate", "train", "align", "embed", "verify", "inspect", "doctor", "download"} <= names


def test_every_readme_command_parses_against_the_cli():
    """Each fenced README command names a real command, only its options, recipe keys it has
    (--set), and recipe files that exist and load."""
    import shlex

    import click
    import typer

    from synthface.cli.app import app
    from synthface.config import RECIPES, GenerateRecipe, apply_overrides, load_recipe

    root = typer.main.get_command(app)
    for text in _fenced_synthface_commands():
        argv = shlex.split(text.replace('"$SLURM_ARRAY_TASK_ID/32"', "0/32"))[1:]
        command = root.get_command(click.Context(root), argv[0])
        assert command is not None, f"README: unknown command in {text!r}"
        ctx = command.make_context(argv[0], argv[1:], resilient_parsing=True)
        options = {o for p in command.params for o in p.opts}
        for arg in argv[1:]:
            if arg.startswith("-") and arg != "-":
                assert arg.split("=", 1)[0] in options, f"README: {argv[0]} has no option {arg} ({text!r})"
        model = RECIPES.get(argv[0], GenerateRecipe if argv[0] in ("doctor", "download") else None)
        sets = ctx.params.get("sets") or []
        path = ctx.params.get("recipe_path")
        if path is not None:
            assert (REPO / path).is_file() or str(path).startswith(("/", "R.yaml")), f"README: missing recipe {path}"
            if (REPO / path).is_file():
                load_recipe(model, REPO / path)
        for item in sets:
            assert model is not None, f"README: {argv[0]} takes no --set ({text!r})"
            apply_overrides({}, model, [item])  # unknown keys raise
