"""Shared CLI plumbing: one-line errors, recipe options, rich progress, JSON summaries."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
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

SET_EXAMPLE = "seed=1"  # a key every command's recipe has
RecipeOpt = Annotated[
    Path | None,
    typer.Option("--recipe", "-r", help="YAML recipe file; every key has a default.", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help=f"Override a recipe key, e.g. --set {SET_EXAMPLE} (repeatable).", show_default=False),
]
JsonOpt = Annotated[
    str | None,
    typer.Option("--json", help="Write a machine-readable summary to PATH ('-' for stdout).", show_default=False),
]

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    # messages are plain text: "pip install 'synthface[dlib]'" must not read as rich markup
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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

    def __init__(self, fields: tuple[str, ...] = (), log_every: float = 30.0) -> None:
        self._fields = fields
        self._progress: RichProgress | None = None
        self._task: Any = None
        self._log_every = log_every
        self._plain: dict[str, Any] | None = None

    def start(self, total: int | None, description: str) -> None:
        self.finish()
        if not console.is_terminal:  # batch jobs and logs: a plain line every `log_every` seconds
            now = time.monotonic()
            self._plain = {"total": total, "done": 0, "desc": description, "t0": now, "last": 0.0, "mark": (0, now)}
            return
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
        if self._plain is not None:
            self._plain_advance(n, info)
            return
        if self._progress is None:
            return
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        self._progress.update(self._task, advance=n, info=text)

    def _plain_advance(self, n: int, info: dict[str, Any]) -> None:
        state = self._plain
        assert state is not None
        state["done"] += n
        now = time.monotonic()
        if now - state["last"] < self._log_every and state["done"] != state["total"]:
            return
        state["last"] = now
        elapsed = now - state["t0"]
        total = state["total"]
        of = f"/{total}" if total else ""
        # the rate over the interval since the previous line: a resumed run's first jump (the steps
        # already done) is not work done now
        done0, t0 = state["mark"]
        state["mark"] = (state["done"], now)
        rate = f"{(state['done'] - done0) / (now - t0):.3g}/s, " if now - t0 > 1.0 else ""
        extra = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        console.print(f"{state['desc']}: {state['done']}{of} ({rate}{elapsed:.0f}s) {extra}".rstrip(), highlight=False)

    def finish(self) -> None:
        self._plain = None
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
