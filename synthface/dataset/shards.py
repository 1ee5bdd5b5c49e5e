"""The committed shards of a dataset, checked against the dataset's own record before anyone reads them.

A shard is committed when its JSON commit marker exists (``data/.train-SSSSS-of-NNNNN.json``,
:func:`synthface.dataset.writer.marker_path`) and, with ``verify``, the Parquet file's size and
sha256 match the marker. A reader refuses an incomplete dataset unless ``allow_partial``:

* every marker names the shard count N of its run; the markers must agree on it and every
  shard 0..N-1 must be committed (a deleted shard, a crash, unfinished ``--part`` jobs);
* a ``synthface generate`` run (its folder holds that command's config.yaml) must have finished:
  ``summary.json`` names N shards and as many images as the markers count, and
  ``identities.parquet`` is readable and matches its recorded digest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthface.dataset.layout import CONFIG_FILE, DATA_DIR, IDENTITIES_FILE, SUMMARY_FILE
from synthface.dataset.writer import SHARD_FILES, marker_path, read_marker
from synthface.fingerprint import file_sha256
from synthface.errors import InputError


class IncompleteDatasetError(InputError):
    """A dataset with shards missing or an unfinished run: reading it would look complete and is not."""


def data_folder(directory: str | Path) -> Path:
    directory = Path(directory)
    return directory / DATA_DIR if (directory / DATA_DIR).is_dir() else directory


def committed_markers(data_dir: Path) -> list[dict[str, Any]]:
    """The readable commit markers in ``data_dir``, whatever config wrote them and whether or not
    their Parquet files are still there (not checked)."""
    markers = [read_marker(m) for m in sorted(data_dir.glob(".train-*.json")) if SHARD_FILES.fullmatch(m.name)]
    return [m for m in markers if m is not None]


def shard_markers(data_dir: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """Every shard file ``train-*.parquet`` in ``data_dir``, sorted, with its commit marker (None:
    not committed, or the marker is unreadable; not checked against the file)."""
    return [(path, read_marker(marker_path(path))) for path in sorted(data_dir.glob("train-*.parquet"))]


def committed_shards(directory: str | Path, verify: bool = True, allow_partial: bool = False) -> list[Path]:
    """The dataset's committed Parquet shards, sorted; refuses an incomplete dataset unless ``allow_partial``."""
    directory = Path(directory)
    data = data_folder(directory)
    shards: list[Path] = []
    markers: list[dict[str, Any]] = []
    for path in sorted(data.glob("*.parquet")):
        marker = marker_path(path)
        if not marker.is_file():
            continue  # not committed: a crashed or running writer's file
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise InputError(f"commit marker {marker} is unreadable: delete it and the shard, then resume") from None
        if not isinstance(meta, dict):
            raise InputError(f"commit marker {marker} is not a JSON object: delete it and the shard, then resume")
        if verify:
            _check_file(path, meta, directory)
        shards.append(path)
        markers.append(meta)
    if not allow_partial:
        _check_complete(directory, markers)
    return shards


def _check_file(path: Path, meta: dict[str, Any], directory: Path) -> None:
    size, expected = meta.get("bytes"), meta.get("sha256")
    try:
        damaged = (isinstance(size, int) and path.stat().st_size != size) or bool(expected and file_sha256(path) != expected)
    except OSError as exc:
        raise InputError(f"cannot read shard {path} ({exc.strerror})") from None
    if damaged:
        raise InputError(
            f"shard {path} does not match its commit marker checksum: the file is damaged; rerun `synthface generate` "
            f"on {directory} to redo it"
        )


def _check_complete(directory: Path, markers: list[dict[str, Any]]) -> None:
    totals = {m["total"] for m in markers if isinstance(m.get("total"), int)}
    if len(totals) > 1:
        raise InputError(
            f"{directory} mixes shards of runs with different shard counts ({', '.join(map(str, sorted(totals)))}): "
            "regenerate it with `synthface generate --overwrite`"
        )
    if totals:
        total = totals.pop()
        have = {m.get("index") for m in markers}
        missing = [i for i in range(total) if i not in have]
        if missing:
            raise IncompleteDatasetError(
                f"{directory} is incomplete: {total - len(missing)} of {total} shards are committed (first missing: "
                f"train-{missing[0]:05d}-of-{total:05d}): run `synthface generate` with the same arguments to finish it"
            )
    _check_finished(directory, markers)


def _check_finished(directory: Path, markers: list[dict[str, Any]]) -> None:
    """A generate run's own record: summary.json and identities.parquet agree with the markers."""
    from synthface.config import GenerateRecipe
    from synthface.identities import read_plan
    from synthface.output_folder import written_by

    if not written_by(directory / CONFIG_FILE, GenerateRecipe):
        return  # shards without a generate run around them (copied, or another tool's)
    finish = "run `synthface generate` with the same arguments to finish it"
    try:
        summary = json.loads((directory / SUMMARY_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IncompleteDatasetError(
            f"{directory} is unfinished (no {SUMMARY_FILE}: its final pass has not run): {finish}"
        ) from None
    except (OSError, ValueError):
        raise IncompleteDatasetError(f"{directory}/{SUMMARY_FILE} is unreadable: {finish}") from None
    rows = sum(int(m.get("rows", 0)) for m in markers)
    if not isinstance(summary, dict) or summary.get("shards") != len(markers) or summary.get("images") != rows:
        raise IncompleteDatasetError(
            f"{directory}/{SUMMARY_FILE} does not match its shards ({len(markers)} shards, {rows} images committed): {finish}"
        )
    if read_plan(directory / IDENTITIES_FILE) is None:
        raise IncompleteDatasetError(f"{directory}/{IDENTITIES_FILE} is missing or damaged: {finish}")
