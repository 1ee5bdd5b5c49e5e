"""A command's output folder: refuse one that holds files the command did not write.

A command may write into its ``--out`` folder only when the folder is absent, empty (lock files
and synthface's own temp files aside), or holds a run of the same command, recognised by the
resolved config that command writes there (``write_resolved``'s header, and keys of that
command's recipe). Anything else (a home folder, a dataset passed as another command's ``--out``,
a folder of the user's files) is refused before a file is created, replaced or deleted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import yaml

from synthface.config import RESOLVED_HEADER, Section
from synthface.errors import InputError

# what a run leaves even when it fails early: its locks and a killed writer's temp files
_HOUSEKEEPING = re.compile(r"^\.synthface(\.part-\d+-of-\d+)?\.lock$|^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def written_by(config: Path, recipe: type[Section]) -> bool:
    """True when ``config`` is a resolved config synthface wrote for a ``recipe`` command."""
    try:
        text = config.read_text(encoding="utf-8")
        if not text.startswith(RESOLVED_HEADER):
            return False
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return False
    return isinstance(data, dict) and bool(data) and set(data) <= set(recipe.model_fields)


def check_output_folder(
    out: Path,
    command: str,
    config_name: str,
    recipe: type[Section],
    option: str = "--out",
    records: Callable[[Path], bool] | None = None,
) -> bool:
    """Refuse ``out`` unless it is absent, empty, or a ``command`` run; touches nothing.

    Returns True when ``out`` holds a run of ``command``: its ``config_name`` is one, or, when that
    file is damaged, ``records(out)`` finds the command's other records there (generate's commit
    markers), so that ``--overwrite`` can still replace the run.
    """
    out = Path(out)
    if not out.exists():
        if out.is_symlink():
            raise InputError(f"{option} {out} is a broken symbolic link: pass a folder")
        return False
    if not out.is_dir():
        raise InputError(f"{option} {out} is a file, not a folder: pass a new or empty folder")
    try:
        entries = [p for p in out.iterdir() if not _HOUSEKEEPING.match(p.name)]
    except OSError as exc:
        raise InputError(f"{option} {out} cannot be read ({exc.strerror}): choose a folder you can write to") from None
    if not entries:
        return False
    if written_by(out / config_name, recipe):
        return True
    if records is not None and (out / config_name).is_file() and records(out):
        return True  # the config is damaged, but the run's own records vouch for the folder
    raise InputError(
        f"{option} {out} is not empty and is not a synthface {command} output (it has no {config_name} written by "
        f"`synthface {command}`): choose a new or empty folder (synthface never writes into a folder of other files)"
    )
