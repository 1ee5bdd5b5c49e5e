"""A model folder <-> a few safetensors parts of at most 16 MiB plus a card (what a device run returns).

The device tool brings back at most 8 files of 16 MiB each. ``split`` packs every tensor of every
``*.safetensors`` file under a model folder (a synthface native model: unet/, projector/, vae/) into
parts ``model-0000K-of-0000N.safetensors`` and writes ``card.json``: the folder's other files (configs,
synthface.json, the scheduler) as text, each tensor's original dtype and shape, each part's sha256,
and a free-form model card (``--card-extra``: the run's train.json, config.yaml, ...). ``restore``
rebuilds the model folder from them (checking every sha256), loadable by ``synthface generate --model``.

Storage dtypes: float32 tensors become bfloat16 (halves the bytes; the restored model is fp32 again,
holding the bf16-rounded values), except where fp16 holds them exactly (TAEF2's weights are fp16
originally: stored as fp16, restored bit-exact) and under ``--keep-fp32`` folders (the small
identity projector by default). Other dtypes are stored as they are.

A file that comes back another way (``--external gallery.parquet=results.tar``: the training gallery,
already in the run's results.tar) is only named in the card, with its size and sha256; ``restore``
finds it by those in the tar (or folder) beside the parts, or in ``--search`` paths.

    python bench/device/parts.py split runs/x/model OUT/model --max-parts 4 --card-extra runs/x/train.json \
        --external gallery.parquet=results.tar
    python bench/device/parts.py restore OUT/model runs/x-restored/model      # then: synthface generate --model ...

Library functions: :func:`split_model`, :func:`restore_model`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from synthface.fingerprint import file_sha256  # noqa: E402

FORMAT = "synthface-model-parts"
CARD = "card.json"
PART_LIMIT = int(15.5 * (1 << 20))  # under the tool's 16 MiB per file, with room for the header
SEP = "::"


def _dtype_name(t: Any) -> str:
    return str(t.dtype).replace("torch.", "")


def _storage(t: Any, keep_fp32: bool) -> Any:
    import torch

    if t.dtype != torch.float32 or keep_fp32:
        return t
    half = t.to(torch.float16)
    if torch.equal(half.to(torch.float32), t):
        return half
    return t.to(torch.bfloat16)


def split_model(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    max_parts: int = 4,
    part_limit: int = PART_LIMIT,
    keep_fp32: tuple[str, ...] = ("projector",),
    card_extra: list[str | Path] | None = None,
    external: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write the parts and card.json of ``model_dir`` into ``out_dir``; returns the card.

    ``external`` maps files of the model folder (relative paths) that travel another way to where
    (a note, e.g. ``results.tar``): the card records their size and sha256 only.
    """
    external = dict(external or {})
    from safetensors.torch import load_file, save_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} not found")
    files: dict[str, dict[str, str]] = {}
    outside: dict[str, dict[str, Any]] = {}
    tensors: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        if rel in external:
            outside[rel] = {"bytes": path.stat().st_size, "sha256": file_sha256(path), "in": external[rel]}
        elif path.suffix == ".safetensors":
            keep = rel.split("/", 1)[0] in keep_fp32
            for key, t in load_file(str(path)).items():
                name = f"{rel}{SEP}{key}"
                stored = _storage(t.contiguous(), keep)
                tensors[name] = stored
                info[name] = {"dtype": _dtype_name(t), "stored": _dtype_name(stored), "shape": list(t.shape)}
        else:
            data = path.read_bytes()
            try:
                files[rel] = {"text": data.decode("utf-8")}
            except UnicodeDecodeError:
                files[rel] = {"base64": base64.b64encode(data).decode("ascii")}
    # greedy, in a fixed order: each part stays under the limit
    groups: list[list[str]] = [[]]
    used = 0
    for name in sorted(tensors):
        n = tensors[name].numel() * tensors[name].element_size() + 200
        if n > part_limit:
            raise ValueError(f"tensor {name} alone ({n} bytes) exceeds the part limit {part_limit}")
        if used + n > part_limit and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += n
    if len(groups) > max_parts:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        raise ValueError(
            f"the model needs {len(groups)} parts of <= {part_limit / 2**20:.1f} MiB ({total / 2**20:.1f} MiB "
            f"in all) but only {max_parts} may come back: use a smaller model or more parts"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("model-*-of-*.safetensors"):
        old.unlink()
    parts = []
    n = len(groups)
    for k, names in enumerate(groups, 1):
        target = out_dir / f"model-{k:05d}-of-{n:05d}.safetensors"
        save_file({name: tensors[name] for name in names}, str(target), metadata={"format": FORMAT, "part": f"{k}/{n}"})
        parts.append({"file": target.name, "bytes": target.stat().st_size, "sha256": file_sha256(target), "tensors": len(names)})
    extra = {}
    for item in card_extra or []:
        p = Path(item)
        if p.is_file():
            text = p.read_text(encoding="utf-8", errors="replace")
            try:
                extra[p.name] = json.loads(text) if p.suffix == ".json" else text
            except ValueError:
                extra[p.name] = text
    card = {
        "format": FORMAT,
        "version": 1,
        "source": str(model_dir),
        "parts": parts,
        "files": files,
        "external": outside,
        "tensors": info,
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "storage": "float32 -> bfloat16, except fp16 where exact and fp32 under " + ", ".join(keep_fp32),
        "restore": f"python bench/device/parts.py restore DIR MODEL_DIR  (DIR holds {CARD} and the parts)",
        "run": extra,
    }
    tmp = out_dir / (CARD + ".tmp")
    tmp.write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out_dir / CARD)
    return card


def _find_external(size: int, digest: str, places: list[Path]) -> bytes | None:
    """The bytes of the file of this size and sha256 in any of ``places`` (tar files, folders or files)."""
    import tarfile

    for place in places:
        if place.is_file() and tarfile.is_tarfile(place):
            with tarfile.open(place) as tar:
                for member in tar:
                    if member.isfile() and member.size == size:
                        data = tar.extractfile(member).read()
                        if hashlib.sha256(data).hexdigest() == digest:
                            return data
        elif place.is_dir():
            for p in place.rglob("*"):
                if p.is_file() and p.stat().st_size == size and file_sha256(p) == digest:
                    return p.read_bytes()
        elif place.is_file() and place.stat().st_size == size and file_sha256(place) == digest:
            return place.read_bytes()
    return None


def restore_model(
    parts_dir: str | Path, model_dir: str | Path, search: list[str | Path] | None = None, allow_missing_external: bool = False
) -> Path:
    """Rebuild the model folder from ``parts_dir`` (card.json + parts); every part's sha256 is checked.

    External files (see :func:`split_model`) are looked for, by size and sha256, in ``search`` and
    then in the place the card names, beside ``parts_dir`` or one folder up (OUT/results.tar for
    OUT/model); a missing one is an error unless ``allow_missing_external``.
    """
    import torch
    from safetensors.torch import load_file, save_file

    parts_dir, model_dir = Path(parts_dir), Path(model_dir)
    card = json.loads((parts_dir / CARD).read_text(encoding="utf-8"))
    if card.get("format") != FORMAT:
        raise ValueError(f"{parts_dir / CARD} is not a {FORMAT} card")
    found_external: dict[str, bytes] = {}
    for rel, ext in card.get("external", {}).items():
        places = [Path(p) for p in search or []] + [parts_dir / ext["in"], parts_dir.parent / ext["in"]]
        data = _find_external(int(ext["bytes"]), ext["sha256"], places)
        if data is None and not allow_missing_external:
            raise FileNotFoundError(
                f"{rel} ({ext['bytes']} bytes, sha256 {ext['sha256'][:12]}...) travels in {ext['in']}, "
                f"not found beside {parts_dir}: pass --search PATH (or --allow-missing-external)"
            )
        if data is not None:
            found_external[rel] = data
    by_file: dict[str, dict[str, Any]] = {}
    for part in card["parts"]:
        path = parts_dir / part["file"]
        if not path.is_file():
            raise FileNotFoundError(f"part {path} is missing")
        if file_sha256(path) != part["sha256"]:
            raise ValueError(f"part {path} is damaged (sha256 differs from {CARD})")
        for name, t in load_file(str(path)).items():
            rel, _, key = name.partition(SEP)
            dtype = getattr(torch, card["tensors"][name]["dtype"])
            by_file.setdefault(rel, {})[key] = t.to(dtype).contiguous()
    missing = set(card["tensors"]) - {f"{rel}{SEP}{k}" for rel, d in by_file.items() for k in d}
    if missing:
        raise ValueError(f"{len(missing)} tensors of {CARD} are in no part (first: {sorted(missing)[0]})")
    model_dir.mkdir(parents=True, exist_ok=True)
    for rel, entry in card["files"].items():
        target = model_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if "text" in entry:
            target.write_text(entry["text"], encoding="utf-8")
        else:
            target.write_bytes(base64.b64decode(entry["base64"]))
    for rel, state in by_file.items():
        target = model_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(target), metadata={"format": "pt"})
    for rel, data in found_external.items():
        target = model_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    if (model_dir / "synthface.json").is_file():  # the restored weights are bf16-rounded: a new model, sealed anew
        from synthface.generator.native import seal

        seal(model_dir)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="model folder -> parts + card.json")
    s.add_argument("model")
    s.add_argument("out")
    s.add_argument("--max-parts", type=int, default=4)
    s.add_argument("--part-mib", type=float, default=PART_LIMIT / (1 << 20))
    s.add_argument("--keep-fp32", default="projector", help="comma-separated top-level folders kept in fp32")
    s.add_argument("--card-extra", action="append", default=[], help="a run file (json/yaml/csv) to embed in the card")
    s.add_argument("--external", action="append", default=[], help="FILE=WHERE: a model file that travels another way")
    r = sub.add_parser("restore", help="parts + card.json -> model folder")
    r.add_argument("parts")
    r.add_argument("model")
    r.add_argument("--search", action="append", default=[], help="a tar, folder or file holding external files")
    r.add_argument("--allow-missing-external", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "split":
            card = split_model(
                args.model,
                args.out,
                max_parts=args.max_parts,
                part_limit=int(args.part_mib * (1 << 20)),
                keep_fp32=tuple(k for k in args.keep_fp32.split(",") if k),
                card_extra=args.card_extra,
                external=dict(e.split("=", 1) for e in args.external),
            )
            print(json.dumps({"parts": card["parts"], "parameters": card["parameters"]}))
        else:
            print(restore_model(args.parts, args.model, args.search, args.allow_missing_external))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
