"""Generator family registry: find which family a model directory (or Hub id) belongs to and load it.

A family registers a :class:`Family` (name, ``detect(dir) -> bool``, ``load(dir, device, dtype)``,
and a phrase saying what its directory holds). Family modules listed in ``FAMILY_MODULES`` are
imported on first use; a module that is not installed yet is skipped.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from synthface.errors import InputError, ModelMismatchError
from synthface.generator.model import GeneratorModel
from synthface.hub import HubFiles, locate, status as hub_status


@dataclass(frozen=True)
class Family:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., GeneratorModel]  # (path, device, dtype, **options); a Hub id (str) for hub_ids
    expects: str  # e.g. "synthface.json + unet/ + projector/"
    hub_ids: tuple[str, ...] = ()  # lower-case Hub ids the family's loader fetches itself (only the files it needs)
    # (path or Hub id, **options) -> (the repositories' files its loader reads, its conditioning embedder's name)
    needs: Callable[..., tuple[list[HubFiles], str | None]] | None = None


_FAMILIES: dict[str, Family] = {}
FAMILY_MODULES = ["synthface.generator.native", "synthface.generator.arc2face"]
_loaded = False


def register_family(family: Family) -> None:
    _FAMILIES[family.name] = family


def families() -> list[Family]:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in FAMILY_MODULES:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise
    return list(_FAMILIES.values())


def resolve_model_dir(spec: str) -> Path:
    """A local model directory, or a Hub repo id downloaded (or taken from the cache) to one."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise InputError(f"--model {spec} is a file; pass the model directory (the one with synthface.json)")
    if not hub_model_files(spec).is_hub:
        raise InputError(
            f"model directory not found: {spec} (pass a local model directory, or a Hugging Face Hub id like owner/name)"
        )
    return locate(hub_model_files(spec))


def hub_model_files(spec: str) -> HubFiles:
    """A model repo on the Hub, every file of it (a family with ``hub_ids`` names its own files)."""
    return HubFiles("model", spec, ("*",), (), "--model")


def model_needs(spec: str, options: dict[str, dict[str, Any]] | None = None) -> tuple[list[HubFiles], str | None]:
    """What loading ``spec`` (as :func:`load_model` would) reads: the Hub/local files, and the model's
    conditioning embedder (None while a Hub model of unknown family is not downloaded yet)."""
    text = str(spec)
    family = None
    if not Path(text).expanduser().exists():
        family = next((f for f in families() if text.lower() in f.hub_ids), None)
    files: list[HubFiles] = []
    target: Path | str = text
    if family is None:
        local = Path(text).expanduser()
        if local.is_dir():
            target = local.resolve()
        else:
            if local.exists() or not hub_model_files(text).is_hub:
                resolve_model_dir(text)  # raises the loader's one-line InputError
            files.append(hub_model_files(text))
            root, _ = hub_status(files[0])
            if root is None:
                return files, None
            target = root
        family = detect_family(Path(target))
    if family.needs is None:
        return files, None
    more, embedder = family.needs(target, **((options or {}).get(family.name) or {}))
    return files + more, embedder


def detect_family(path: Path) -> Family:
    known = families()
    for family in known:
        if family.detect(path):
            return family
    expected = "; ".join(f"{f.name}: {f.expects}" for f in known)
    raise InputError(f"{path} is not a generator model this synthface knows (expected {expected})")


def load_model(
    spec: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    options: dict[str, dict[str, Any]] | None = None,
) -> GeneratorModel:
    """Load the generator at ``spec`` (local directory or Hub id) on ``device`` in ``dtype``.

    ``options`` maps a family name to keyword options of that family's loader (e.g. ``{"arc2face":
    {"lcm_lora": ...}}``); a family only ever receives its own.
    """
    text = str(spec)
    family = None
    if not Path(text).expanduser().exists():
        family = next((f for f in families() if text.lower() in f.hub_ids), None)
    target: Path | str = text if family is not None else resolve_model_dir(text)
    family = family or detect_family(Path(target))
    extra = (options or {}).get(family.name) or {}
    return family.load(target, torch.device(device), dtype, **extra)


def check_model(model: GeneratorModel, *, embedder: str | None = None, dim: int | None = None) -> None:
    """Refuse a model whose conditioning embedder or embedding size is not the one asked for."""
    where = model.source or model.family
    if embedder and embedder != model.embedder:
        raise ModelMismatchError(
            f"model {where} is conditioned on '{model.embedder}' embeddings but the recipe asks for "
            f"'{embedder}' (identities.embedder): use a model trained on '{embedder}' or change the recipe"
        )
    if dim is not None and int(dim) != int(model.embedding_dim):
        raise ModelMismatchError(
            f"identity embeddings have dimension {dim} but model {where} expects {model.embedding_dim} "
            f"({model.embedder} embeddings): use identities from '{model.embedder}'"
        )
