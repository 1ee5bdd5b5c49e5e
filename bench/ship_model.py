"""Turn a trained native model (`synthface train`'s RUN/model) into the folder the repository ships.

    python bench/ship_model.py --model runs/cpu-latent/model --out models/synthface-lfw-latent-128 \
        --vae-licence ../shared/models/taef2/LICENSE
    # write models/synthface-lfw-latent-128/MODEL_CARD.md, then seal the folder again:
    python bench/ship_model.py --seal models/synthface-lfw-latent-128

What it does: the UNet and the VAE stored in fp16 (half the bytes; `generate` loads them back to the
compute dtype), the projector in fp32; gallery.parquet (the training faces' conditioning embeddings)
kept with its path, identity and embedding columns, embeddings in fp16, zstd; the VAE's licence
copied in; then the folder is sealed (synthface.json lists every file's size and sha256, which
loading checks). It prints the file table for the model card and refuses a folder over --max-mb.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthface.generator.native import GALLERY_FILE, META_FILE, NativeMeta, load_native, seal  # noqa: E402


def half_gallery(src: Path, dst: Path) -> None:
    """The gallery with its path, identity and embedding columns, embeddings as fp16 fixed-size lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(src)
    emb = table.column("embedding").combine_chunks()
    dim = emb.type.list_size
    values = np.asarray(emb.values.to_numpy(zero_copy_only=False), np.float16)
    columns = {c: table.column(c) for c in ("path", "key", "identity") if c in table.column_names}
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float16()), dim)
    out = pa.table(columns).replace_schema_metadata(table.schema.metadata)
    pq.write_table(out, dst, compression="zstd")


def file_table(folder: Path) -> str:
    meta = NativeMeta.read(folder)
    lines = ["| file | bytes | sha256 |", "| --- | --- | --- |"]
    for name, entry in sorted((meta.files or {}).items()):
        lines.append(f"| {name} | {entry['bytes']:,} | {entry['sha256']} |")
    total = sum(e["bytes"] for e in (meta.files or {}).values()) + (folder / META_FILE).stat().st_size
    return "\n".join(lines) + f"\n\n{total:,} bytes in all ({total / 1e6:.1f} MB)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="the trained model folder (RUN/model)")
    ap.add_argument("--out", type=Path, help="the folder to write (must not exist)")
    ap.add_argument("--vae-licence", type=Path, help="licence file of the VAE, copied to vae/LICENSE")
    ap.add_argument("--seal", type=Path, help="only seal this folder again (after editing its model card)")
    ap.add_argument("--trained-on", help="what synthface.json's trained_on says (the training run records the path it was given)")
    ap.add_argument("--max-mb", type=float, default=64.0, help="refuse a folder larger than this (decimal MB)")
    args = ap.parse_args()
    if args.seal:
        folder = args.seal
        if args.trained_on:
            meta = NativeMeta.read(folder)
            meta.extra["trained_on"] = args.trained_on
            meta.write(folder)
        folder = seal(folder)
    else:
        if not args.model or not args.out:
            raise SystemExit("pass --model RUN/model --out models/NAME (or --seal models/NAME)")
        if args.out.exists():
            raise SystemExit(f"{args.out} exists: pass a new folder")
        model = load_native(args.model)
        tmp = args.out.with_name(args.out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if args.trained_on:
            model.meta.extra["trained_on"] = args.trained_on
        model.save(tmp, weights_dtype=torch.float16)
        if (args.model / GALLERY_FILE).is_file():
            half_gallery(args.model / GALLERY_FILE, tmp / GALLERY_FILE)
        if args.vae_licence:
            shutil.copyfile(args.vae_licence, tmp / "vae" / "LICENSE")
        seal(tmp)
        tmp.replace(args.out)
        folder = args.out
    load_native(folder)  # the sealed folder loads, every sha256 checked
    table = file_table(folder)
    print(table)
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    if total > args.max_mb * 1e6:
        raise SystemExit(f"{folder} holds {total / 1e6:.1f} MB, over --max-mb {args.max_mb}")
    print(json.dumps({"folder": str(folder), "bytes": total}))


if __name__ == "__main__":
    main()
