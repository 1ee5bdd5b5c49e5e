"""The output folder of a ``generate`` run: check what is there against this run, reset or resume.

A folder holds one run: its config.yaml (the recipe, see :func:`synthface.config.resume_guard`
for the keys a resumed run may change), inputs.json (fingerprints of the model files and the
identity plan's digest), identities.parquet, the shards under data/ with their commit markers,
summary.json and the dataset card. A resumed run must match the first two; ``--overwrite``
deletes the run's own files and leaves a user's alone.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from synthface.config import GenerateRecipe, diff_keys, read_resolved, resume_guard, write_resolved
from synthface.atomic import atomic_write_json, clean_temp
from synthface.dataset.shards import committed_markers
from synthface.dataset.layout import (
    CARD_FILE,
    CONFIG_FILE,
    DATA_DIR,
    FILTER_DIR,
    IDENTITIES_FILE,
    INPUTS_FILE,
    RUN_FILES,
    SUMMARY_FILE,
)
from synthface.dataset.writer import SHARD_FILES, read_marker
from synthface.errors import ConfigError

if TYPE_CHECKING:
    from synthface.generator.model import GeneratorModel
    from synthface.identities import IdentityPlan


def has_run_records(out: Path) -> bool:
    """True when ``out`` holds a generate run's own records besides its config: commit markers under
    data/, or an inputs.json (what lets ``--overwrite`` replace a run whose config.yaml is damaged)."""
    return bool(committed_markers(out / DATA_DIR)) or "model_files" in (read_marker(out / INPUTS_FILE) or {})


def reset(out: Path) -> None:
    """Delete this run's files: the shards and filter records its markers name, shard files of its
    naming, identities/summary/inputs/config and its own card. A user's files in --out stay."""
    from synthface.dataset.card import is_own_card

    data_dir, filter_dir = out / DATA_DIR, out / FILTER_DIR
    doomed: list[Path] = []
    for info in committed_markers(data_dir):
        record = info.get("filter") if isinstance(info.get("filter"), dict) else {}
        named = [data_dir / str(info.get("file", "")), out / str(record.get("file", ""))]
        doomed += [f for f in named if f.parent in (data_dir, filter_dir) and SHARD_FILES.fullmatch(f.name)]
    for folder in (data_dir, filter_dir):
        if folder.is_dir():
            doomed += [f for f in folder.iterdir() if SHARD_FILES.fullmatch(f.name)]
    doomed += [out / name for name in (IDENTITIES_FILE, SUMMARY_FILE, INPUTS_FILE, CONFIG_FILE)]
    if is_own_card(out / CARD_FILE):
        doomed.append(out / CARD_FILE)
    for path in doomed:
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
    for folder in (data_dir, filter_dir):
        clean_temp(folder, SHARD_FILES)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def prepare_output(
    out: Path,
    recipe: GenerateRecipe,
    guard: dict[str, Any],
    overwrite: bool,
    part: bool,
    inputs: dict[str, Any],
) -> bool:
    """Check (or reset) what is in ``out``, write config.yaml and inputs.json. Returns True when
    resuming. Called with ``out``'s lock held (:class:`~synthface.dataset.locks.RunLock`, or
    :class:`~synthface.dataset.locks.PartLock` for a part job), once the model and the identity plan have loaded.

    A folder whose config differs is re-configured when it holds no committed shard (a run that
    failed before rendering), else refused. A part job leaves everything else alone (other parts
    are writing): it writes config.yaml and inputs.json only if absent (else checks them), and
    cleans no temp files (the final plain run does).
    """
    data_dir = out / DATA_DIR
    config_path = out / CONFIG_FILE
    # look for shards before config.yaml: a concurrent part job writes config.yaml before its first shard
    has_shards = bool(committed_markers(data_dir))
    resuming = False
    if overwrite:
        reset(out)
    elif config_path.exists():
        differing = config_diff(out, guard)
        if differing and (has_shards or part):
            what = f"{CONFIG_FILE} is unreadable" if differing == ["(unreadable)"] else f"differs in: {', '.join(differing)}"
            raise ConfigError(
                f"{out} was written by a different config ({what}): rerun with the same recipe to resume, "
                "pass --overwrite to start over, or choose another --out"
            )
        if differing:
            reset(out)  # nothing committed: a run that failed before rendering; take the new config
        else:
            resuming = True
    if resuming and has_shards:
        check_inputs(out, inputs)
    if part:
        if not resuming and not create_once(config_path, lambda tmp: write_resolved(recipe, out, tmp)):
            if config_diff(out, guard):  # another part job wrote it meanwhile
                raise ConfigError(f"another part job started {out} with a different config: use the same recipe for every part")
        if not create_once(out / INPUTS_FILE, lambda tmp: atomic_write_json(out / tmp, inputs)):
            check_inputs(out, inputs)
        return resuming
    clean_temp(data_dir, SHARD_FILES)
    clean_temp(out, RUN_FILES)
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    write_resolved(recipe, out, CONFIG_FILE)
    atomic_write_json(out / INPUTS_FILE, inputs)
    return resuming


def config_diff(out: Path, guard: dict[str, Any]) -> list[str]:
    """Keys where ``out``'s config.yaml differs from this guard (the recipe minus RESUME_FREE_KEYS);
    ``["(unreadable)"]`` when it cannot be read."""
    try:
        previous = read_resolved(out / CONFIG_FILE)
    except Exception:  # noqa: BLE001 - an unreadable config cannot vouch for the shards
        return ["(unreadable)"]
    return diff_keys(resume_guard(previous), guard)


def run_inputs(recipe: GenerateRecipe, model: GeneratorModel, plan: IdentityPlan) -> dict[str, Any]:
    """What a run loaded besides its recipe: the model files' fingerprints (the model folder and any
    local file or folder the arc2face options name) and the identity plan's digest."""
    from synthface.fingerprint import folder_fingerprint

    roots = {"model": model.source}
    roots.update({f"arc2face.{k}": v for k, v in recipe.arc2face.model_dump().items() if v})
    if recipe.variation.style_bank:
        roots["variation.style_bank"] = recipe.variation.style_bank
    files = {name: folder_fingerprint(Path(p)) for name, p in roots.items() if p and Path(p).exists()}
    return {"model_files": files, "identities": plan.digest()}


def check_inputs(out: Path, inputs: dict[str, Any]) -> None:
    """Refuse to resume when the model files or the identity plan differ from those the run started with."""
    from synthface.fingerprint import changed_files

    before = read_marker(out / INPUTS_FILE)
    if before is None:
        return  # a run from before inputs.json: nothing to compare with
    for root, now in inputs["model_files"].items():
        changed = changed_files(before.get("model_files", {}).get(root, {}), now)
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise ConfigError(
                f"the {root} files changed since {out} was started ({shown}): its shards came from the old ones; "
                "restore them (the same model, the same files) to resume, --overwrite to start over, or choose another --out"
            )
    if before.get("identities") != inputs["identities"]:
        raise ConfigError(
            f"the identity plan differs from the one {out} was started with (identities.parquet or the gallery/images "
            "it was planned from changed): restore them, pass --overwrite to start over, or choose another --out"
        )


def create_once(path: Path, write: Callable[[str], Any]) -> bool:
    """Create ``path`` unless it exists; False if it did. ``write(name)`` writes the complete file
    as ``name`` in the same folder; a hard link then publishes it atomically, so concurrent part
    jobs see all of it or none and exactly one of them creates it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    write(tmp.name)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
