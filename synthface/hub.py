"""Files a run reads from the Hugging Face Hub (or a local directory instead): check, fetch, resume.

A :class:`HubFiles` names what a loader reads from one repository: ``patterns`` (what to download,
Hub ``allow_patterns``) and ``required`` (what a usable copy holds: each entry is a glob relative to
the repository, ``a|b`` for alternatives, e.g. a ``.safetensors`` or a ``.bin`` weights file). The
loaders, ``synthface doctor`` and ``synthface download`` all go through it, so "present" means
"a run can load it". Downloads land in the Hugging Face cache the runs read, one file at a time
(a file already cached is skipped; an interrupted file resumes), with byte progress per file.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthface.errors import InputError, WeightsError
from synthface.runtime import Progress, progress_or_null

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class HubFiles:
    """What a loader reads from one repository (``spec``: a Hub id or a local directory)."""

    what: str  # names it in messages: "Arc2Face model", "Stable Diffusion 1.5 base"
    spec: str
    patterns: tuple[str, ...]  # Hub allow_patterns: what to download
    required: tuple[str, ...]  # globs a usable copy matches, each at least once ("a|b": either)
    option: str  # how a user passes a local directory instead: "--model", "--set arc2face.base_model="
    suggest: tuple[str, ...] = ()  # more files the manual download command should include

    @property
    def local(self) -> Path | None:
        """The local directory (or file) ``spec`` names, if it exists."""
        path = Path(self.spec).expanduser()
        return path if path.exists() else None

    @property
    def is_hub(self) -> bool:
        return self.local is None and bool(HUB_ID.match(self.spec)) and not self.spec.startswith((".", "/", "~"))

    def download_command(self) -> str:
        include = " ".join(f"--include '{p}'" for p in self.patterns + self.suggest)
        return f"hf download {self.spec} {include}".rstrip()


def missing_in(root: Path, required: tuple[str, ...]) -> list[str]:
    """The ``required`` entries (globs, ``a|b`` alternatives) that nothing under ``root`` matches."""
    if root.is_file():  # a single file stands for itself
        return []
    out = []
    for entry in required:
        if not any(any(root.glob(alt)) for alt in entry.split("|")):
            out.append(entry)
    return out


def cached_snapshot(files: HubFiles) -> Path | None:
    """The cached snapshot of a Hub repo (no network), or None when nothing of it is cached."""
    import huggingface_hub as hub

    try:
        return Path(hub.snapshot_download(repo_id=files.spec, allow_patterns=list(files.patterns), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or a broken cache): reads as absent
        return None


def status(files: HubFiles) -> tuple[Path | None, list[str]]:
    """(where a usable copy is, the required entries it lacks); (None, all of them) when there is none."""
    root = files.local if not files.is_hub else cached_snapshot(files)
    if root is None:
        return None, list(files.required)
    return root, missing_in(root, files.required)


def locate(files: HubFiles) -> Path:
    """A usable copy of ``files``: the local directory, the complete cached snapshot, else fetched now.

    Raises WeightsError (offline, gated, incomplete repo) naming the manual download and the
    option that takes a local directory instead.
    """
    key = files.option.rstrip("=")
    local = files.local
    if local is not None:
        if local.is_dir():
            return local.resolve()
        raise InputError(f"{files.what} {files.spec} is a file; pass its directory or a Hugging Face Hub id ({key})")
    if not files.is_hub:
        raise InputError(
            f"{files.what} not found: {files.spec} (pass a local directory or a Hugging Face Hub id like owner/name)"
        )
    root, missing = status(files)
    if root is not None and not missing:
        return root
    return fetch(files)


def fetch(files: HubFiles, progress: Progress | None = None) -> Path:
    """Download what ``files.patterns`` match into the Hugging Face cache; returns the snapshot folder.

    Files already cached are skipped; a file interrupted earlier resumes. ``progress`` reports the
    files (one bar over their count) and each file's bytes.
    """
    import huggingface_hub as hub

    bar = progress_or_null(progress)
    use = f"{files.option}DIR" if files.option.endswith("=") else f"{files.option} DIR"
    try:
        names = [n for n in hub.list_repo_files(files.spec) if any(fnmatch.fnmatch(n, p) for p in files.patterns)]
        cached = cached_snapshot(files)
        todo = [n for n in names if cached is None or not (cached / n).is_file()]
        root = cached
        for i, name in enumerate(todo):
            bar.start(None, f"{files.spec} {name} ({i + 1}/{len(todo)})")
            root = Path(hub.hf_hub_download(files.spec, name, tqdm_class=_bytes_to(bar))).parents[len(Path(name).parts) - 1]
            bar.finish()
    except Exception as exc:  # noqa: BLE001 - offline, no such repo, gated, interrupted transfer, ...
        bar.finish()
        raise WeightsError(
            f"{files.what} '{files.spec}' is not cached and the Hugging Face Hub could not be reached ({type(exc).__name__}): "
            f"on a machine with network run `synthface download` (see --help) or `{files.download_command()} --local-dir DIR`, "
            f"then pass {use}"
        ) from None
    if root is None:
        root = cached_snapshot(files)
    lacking = missing_in(root, files.required) if root is not None else list(files.required)
    if lacking:
        raise WeightsError(
            f"Hub repo {files.spec} lacks {', '.join(lacking)}: it is not a {files.what} ({files.option.rstrip('=')})"
        )
    assert root is not None
    return root


def _bytes_to(bar: Progress) -> Any:
    """A tqdm class for huggingface_hub's transfer that reports bytes to ``bar`` and prints nothing."""
    from tqdm.auto import tqdm

    class Bytes(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            bar.start(kwargs.get("total"), str(kwargs.get("desc") or "download"))
            if kwargs.get("initial"):
                bar.advance(int(kwargs["initial"]))  # resumed: what an earlier run already fetched

        def update(self, n: float | None = 1) -> bool | None:
            bar.advance(int(n or 0))
            return super().update(n)

    return Bytes
