"""Shared CLI plumbing: one-line errors, recipe options, rich progress, JSON summaries."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, TypeVar

import click
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

from synthface.atomic import atomic_write_text
from synthface.config import R, load_recipe
from synthface.errors import SynthfaceError

# Messages carry user text (paths, --set values, file contents): never read as rich markup or
# :emoji: codes ("a:b:c" stays "a:b:c"); the few styled words of our own pass markup=True.
console = Console(stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True)  # one message, one line

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

AllowPartialOpt = Annotated[
    bool,
    typer.Option(
        "--allow-partial",
        help="Read an incomplete dataset (shards missing, run unfinished): only its committed shards.",
    ),
]

F = TypeVar("F", bound=Callable[..., Any])

# exit codes besides 0, 1 (a bug), 2 (bad input), 130 and 143 (Ctrl-C, SIGTERM): docs/reliability.md
EXIT_BROKEN_IMPORT = 3  # a package (torch, torchvision, ...) does not import: `synthface doctor` says why
EXIT_MISSING_FILES = 4  # doctor: a file the named run loads is missing or incomplete


def fail(message: str, code: int = 2) -> None:
    # messages are plain text: "pip install 'synthface[dlib]'" must not read as rich markup
    console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def one_line(text: str, limit: int = 400) -> str:
    """``text`` as one line of at most ``limit`` characters; a message that embeds a traceback (a
    DataLoader worker's) is cut to its last line, the error itself."""
    text = str(text)
    if "Traceback (most recent call last)" in text:
        text = text.strip().splitlines()[-1]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_dir() -> Path:
    """Where unexpected errors' tracebacks go: ``$XDG_STATE_HOME/synthface/logs`` (``~/.local/state``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "synthface" / "logs"


def log_traceback(exc: BaseException) -> Path | None:
    """Write ``exc``'s full traceback to a new file under :func:`log_dir` (the temp folder if that is
    not writable); None when no file could be written."""
    import tempfile

    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            atomic_write_text(path, f"synthface {' '.join(sys.argv[1:])}\n{text}")
            return path
        except OSError:
            continue
    return None


def _os_error(exc: OSError) -> str:
    """``reason: path: what to do`` (``No space left on device: OUT/data/x.parquet: free some space ...``)."""
    what = exc.strerror or one_line(str(exc), 200) or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    hint = {
        28: "free some space or choose another folder",  # ENOSPC
        30: "choose a writable folder",  # EROFS
        13: "check the permissions or choose another folder",  # EACCES
        20: "a part of the path is a file: choose another folder",  # ENOTDIR
        21: "pass a file, not a folder",  # EISDIR
    }.get(exc.errno or 0, "check the path and retry")
    return f"{what}{where}: {hint}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so a run stops as it does on Ctrl-C (see :func:`sigterm_interrupts`)."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread instead of ending the
    process at once: work in progress (a shard being written) finishes, locks are released, and the
    command exits 143. Outside the main thread (nothing to install) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def handle_errors(func: F) -> F:
    """Turn every error into one line on stderr: SynthfaceError and OSError (a full disk, a read-only
    or non-directory path) exit 2; a package that does not import exits 3; Ctrl-C exits 130 (SIGTERM
    143); anything else exits 1 and names the file holding its full traceback (docs/reliability.md,
    "Exit codes")."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except SynthfaceError as exc:
            fail(one_line(str(exc)))
        except KeyboardInterrupt as exc:
            console.print(
                "[yellow]interrupted[/]: work written so far is kept; run the same command again to resume", markup=True
            )
            raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, the traceback in a file
            fail_unexpected(exc)

    return wrapper  # type: ignore[return-value]


def fail_unexpected(exc: Exception) -> None:
    """One line for an exception that is not a SynthfaceError: a package that does not import (exit
    3, pointing at `synthface doctor`; a torch whose libraries do not load raises an OSError, so this
    is asked first), an OSError (exit 2), input too deep or large (exit 2), else a bug (exit 1, the
    traceback in a file)."""
    from synthface.broken_imports import culprit

    broken = culprit(exc)
    if broken is not None:
        fail(broken.pointer(), code=EXIT_BROKEN_IMPORT)
    if isinstance(exc, OSError):
        fail(one_line(_os_error(exc)))
    if isinstance(exc, (RecursionError, MemoryError)):
        fail(f"input too deeply nested or too large ({type(exc).__name__}): check the files passed to this command")
    path = log_traceback(exc)
    where = f"full traceback in {path}" if path else "no traceback file could be written"
    fail(f"unexpected {type(exc).__name__}: {one_line(str(exc), 300)} ({where}); please report it", code=1)


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
    atomic_write_text(Path(target), text + "\n")


def _duration(seconds: float) -> str:
    """A remaining time as 45s, 12m05s or 3h07m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


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
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}", markup=False),
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
        per_s = (state["done"] - done0) / (now - t0) if now - t0 > 1.0 else 0.0
        rate = f"{per_s:.3g}/s, " if per_s > 0 else ""
        left = (total - state["done"]) / per_s if total and per_s > 0 and state["done"] < total else None
        eta = f", eta {_duration(left)}" if left is not None else ""
        extra = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        console.print(f"{state['desc']}: {state['done']}{of} ({rate}{elapsed:.0f}s{eta}) {extra}".rstrip(), highlight=False)

    def finish(self) -> None:
        self._plain = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def count(n: int, word: str, plural: str | None = None) -> str:
    """``n`` and the word, singular for 1: "1 identity", "24 identities", "1 image"."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _flags_show_no_type() -> None:
    """typer's rich help gives every option a type column, on/off flags too (``--version <bool>``),
    which reads as if the flag took a value; a flag shows none."""
    option: Any = getattr(typer.core, "TyperOption", None)
    show = getattr(option, "display_type_rich", None)
    if show is None or getattr(show, "_synthface", False):
        return

    def display_type_rich(self: Any, ctx: click.Context) -> str | None:
        return None if getattr(self, "is_flag", False) and self.metavar is None else show(self, ctx)

    display_type_rich._synthface = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_flags_show_no_type()


def example(text: str) -> str:
    """Help epilog with a worked example (rich markup-safe)."""
    return "[bold]Example:[/]\n\n" + "\n\n".join(f"  $ {line}" for line in text.strip().splitlines())
