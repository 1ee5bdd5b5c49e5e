"""Shared CLI plumbing: one-line errors, recipe options, rich progress, JSON summaries."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress as RichProgress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from synthface.config import R, load_recipe
from synthface.errors import SynthfaceError

console = Console(stderr=True)

RecipeOpt = Annotated[
    Path | None,
    typer.Option("--recipe", "-r", help="YAML recipe file; every key has a default.", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key, e.g. --set batch_size=16 (repeatable).", show_default=False),
]
JsonOpt = Annotated[
    str | None,
    typer.Option("--json", help="Write a machine-readable summary to PATH ('-' for stdout).", show_default=False),
]

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn SynthfaceError into a one-line message and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SynthfaceError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: work written so far is kept; run the same command again to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def recipe(model: type[R], path: Path | None, sets: list[str] | None) -> R:
    return load_recipe(model, path, sets or [])


def write_json(target: str | None, summary: dict[str, Any]) -> None:
    if not target:
        return
    text = json.dumps(summary, indent=2, sort_keys=True, default=str)
    if target == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


class RichBar:
    """The library's Progress hook rendered as a rich progress bar on stderr."""

    def __init__(self, fields: tuple[str, ...] = ()) -> None:
        self._fields = fields
        self._progress: RichProgress | None = None
        self._task: Any = None

    def start(self, total: int | None, description: str) -> None:
        self.finish()
        columns: list[Any] = [
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        ]
        self._progress = RichProgress(*columns, console=console, transient=False, disable=not console.is_terminal)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        if self._progress is None:
            return
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        self._progress.update(self._task, advance=n, info=text)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def example(text: str) -> str:
    """Help epilog with a worked example (rich markup-safe)."""
    return "[bold]Example:[/]\n\n" + "\n\n".join(f"  $ {line}" for line in text.strip().splitlines())
