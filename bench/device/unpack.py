"""Unpack the images of a device pack (bench/device/pack.py) into image folders.

    python bench/device/unpack.py .device /tmp/synthface-device/data --json unpack.json

writes DEST/train/<Person>/<image>.webp (the packed bytes as they are: `synthface train` reads WebP)
and DEST/test/<Person>/<image>.png (decoded: bench/identity.py's --aligned folder takes png/jpg).
Only numpy and Pillow are needed; no pickles are loaded.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def read_pack(pack: Path) -> tuple[dict, list[str], np.ndarray, np.ndarray]:
    manifest = json.loads((pack / "manifest.json").read_text(encoding="utf-8"))
    with np.load(pack / manifest["images"]["file"], allow_pickle=False) as z:
        data, offsets, names = z["data"], z["offsets"], z["names"]
    return manifest, zlib.decompress(names.tobytes()).decode("utf-8").split("\n"), data, offsets


def unpack(pack: Path, dest: Path, workers: int = 8) -> dict:
    from PIL import Image

    t0 = time.time()
    manifest, names, data, offsets = read_pack(pack)
    counts: dict[str, int] = {}

    def write(i: int) -> None:
        name = names[i]
        blob = data[offsets[i] : offsets[i + 1]].tobytes()
        part = name.split("/", 1)[0]
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if part == "test":
            with Image.open(io.BytesIO(blob)) as img:
                img.convert("RGB").save(target.with_suffix(".png"), compress_level=1)
        else:
            target.write_bytes(blob)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(write, range(len(names))))
    for name in names:
        part = name.split("/", 1)[0]
        counts[part] = counts.get(part, 0) + 1
    return {
        "dest": str(dest),
        "images": counts,
        "quality": manifest["images"]["quality"],
        "size": manifest["images"]["size"],
        "dry_run": manifest.get("dry_run", False),
        "seconds": round(time.time() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pack", help="the pack folder (.device)")
    ap.add_argument("dest", help="where the train/ and test/ folders go")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    summary = unpack(Path(args.pack), Path(args.dest), args.workers)
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
