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
