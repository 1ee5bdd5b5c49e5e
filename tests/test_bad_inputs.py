"""Hostile and careless inputs: each is refused with one line on stderr (exit 2 unless documented),
no traceback, and the files that existed before are byte-identical after (nothing lost, nothing mixed).

The cases follow issue 15's list: data loss through --out, incomplete data that looks complete,
resume mixing two models, small images, tracebacks, silent nonsense, misleading errors, resources.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers_generate import TINY_SETS, make_tiny_model
from synthface.cli.app import app

SETS = [x for s in TINY_SETS for x in ("--set", s)]


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (relative path -> bytes)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(result, *words: str, code: int = 2) -> str:
    """Assert the command failed with ``code`` and one error line on stderr, the last, naming ``words``
    (progress lines a run printed before failing may precede it)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def unchanged(before: dict[str, bytes], root: Path, new_files: bool = False) -> None:
    """Every file of ``before`` is still under ``root`` with the same bytes (and no other file
    appeared unless ``new_files``)."""
    after = snapshot(root)
    assert {k: after.get(k) for k in before} == before
    if not new_files:
        assert set(after) == set(before), sorted(set(after) - set(before))


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    """A finished tiny dataset (copy it before changing it)."""
    out = tmp_path_factory.mktemp("bad") / "finished"
    result = cli("generate", "--model", tiny_model, "--out", out, *SETS)
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture()
def dataset(finished, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(finished, copy)
    return copy


def generate(model, out, *extra: object):
    return cli("generate", "--model", model, "--out", out, *SETS, *extra)


# --------------------------------------------------------------------------- 1. data loss through --out


def test_overwrite_with_a_mistyped_model_keeps_the_dataset(dataset, tmp_path):
    before = snapshot(dataset)
    refused(generate(tmp_path / "tinyy", dataset, "--overwrite"), "model directory not found")
    unchanged(before, dataset)


def test_overwrite_with_a_missing_gallery_keeps_the_dataset(dataset, tiny_model, tmp_path):
    before = snapshot(dataset)
    result = generate(tiny_model, dataset, "--overwrite", "--set", "identities.strategy=gallery",
                      "--set", f"identities.gallery={tmp_path / 'none.parquet'}")  # fmt: skip
    refused(result, "none.parquet")
    unchanged(before, dataset)


def test_a_folder_of_user_files_is_refused_even_with_overwrite(tiny_model, tmp_path):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "precious.csv").write_text("a,b\n1,2\n")
    (home / "README.md").write_text("# my notes\n")
    (home / "summary.json").write_text('{"mine": true}\n')
    before = snapshot(home)
    for extra in ((), ("--overwrite",)):
        refused(generate(tiny_model, home, *extra), "is not empty and is not a synthface generate output")
        unchanged(before, home)


def test_overwrite_deletes_only_what_the_run_wrote(dataset, tiny_model):
    (dataset / "data" / "precious.csv").write_text("keep me\n")
    (dataset / "notes").mkdir()
    (dataset / "notes" / "n.txt").write_text("keep me too\n")
    (dataset / ".notes.tmp").write_text("a user's temp-looking file\n")
    mine = {k: v for k, v in snapshot(dataset).items() if k in ("data/precious.csv", "notes/n.txt", ".notes.tmp")}
    result = generate(tiny_model, dataset, "--overwrite")
    assert result.exit_code == 0, result.stderr
    unchanged(mine, dataset, new_files=True)
    assert len(list((dataset / "data").glob("train-*.parquet"))) == 2


def test_a_users_readme_in_a_run_is_never_replaced(dataset, tiny_model):
    (dataset / "README.md").write_text("# my own card\n")
    before = snapshot(dataset)
    assert generate(tiny_model, dataset).exit_code == 0  # resume: nothing to do
    assert (dataset / "README.md").read_text() == "# my own card\n"
    assert generate(tiny_model, dataset, "--overwrite").exit_code == 0
    assert (dataset / "README.md").read_bytes() == before["README.md"]


def test_verify_out_refuses_a_dataset(dataset, tmp_path):
    before = snapshot(dataset)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\n")
    refused(cli("verify", "--pairs", pairs, "--images", tmp_path, "--out", dataset), "not a synthface verify output")
    unchanged(before, dataset)


# --------------------------------------------------------------------------- issue 16 item 2: validate before creating --out


def test_a_run_failing_on_its_inputs_creates_no_output_folder(tiny_model, tmp_path):
    out = tmp_path / "new"
    refused(generate(tmp_path / "missing-model", out), "model directory not found")
    gallery = ["--set", "identities.strategy=gallery", "--set", f"identities.gallery={tmp_path / 'none.parquet'}"]
    refused(generate(tiny_model, out, *gallery), "none.parquet")
    assert not out.exists()
    assert generate(tiny_model, out).exit_code == 0  # the corrected rerun is not "written by a different config"


def test_a_folder_without_committed_shards_takes_a_new_config(dataset, tiny_model):
    for marker in (dataset / "data").glob(".train-*.json"):
        marker.unlink()  # a run that failed before committing a shard
    result = generate(tiny_model, dataset, "--set", "seed=7")
    assert result.exit_code == 0, result.stderr
    assert "seed: 7" in (dataset / "config.yaml").read_text()


def test_a_folder_with_committed_shards_keeps_its_config(dataset, tiny_model):
    before = snapshot(dataset)
    refused(generate(tiny_model, dataset, "--set", "seed=7"), "differs in: seed", "--overwrite")
    unchanged(before, dataset)


# --------------------------------------------------------------------------- 3. resume mixing two models


def _unfinish(dataset: Path) -> None:
    """Make the dataset look like a run killed after its first shard."""
    (dataset / "data" / ".train-00001-of-00002.json").unlink()
    (dataset / "summary.json").unlink()


def test_resume_with_replaced_model_weights_is_refused(tmp_path):
    model, out = make_tiny_model(tmp_path / "tiny"), tmp_path / "out"
    assert generate(model, out).exit_code == 0
    _unfinish(out)
    shutil.rmtree(model)
    make_tiny_model(model, seed=1)  # the same path, layout and sizes; other weights
    before = snapshot(out)
    refused(generate(model, out), "model files changed since", "diffusion_pytorch_model")
    unchanged(before, out)


def _gallery(path: Path, seed: int) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = np.random.default_rng(seed).standard_normal((12, 128)).astype(np.float32)
    table = pa.table({"path": [f"{i}.jpg" for i in range(12)], "identity": [str(i) for i in range(12)],
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 128)})  # fmt: skip
    pq.write_table(table, path)
    return path


def test_resume_with_another_identity_plan_is_refused(tiny_model, tmp_path):
    gallery = _gallery(tmp_path / "gallery.parquet", 0)
    out = tmp_path / "out"
    sets = ["--set", "identities.strategy=gallery", "--set", f"identities.gallery={gallery}", "--set", "identities.leakage=1"]
    assert generate(tiny_model, out, *sets).exit_code == 0
    _unfinish(out)
    (out / "identities.parquet").unlink()
    _gallery(gallery, 1)  # the gallery changed under the run: the plan drawn from it differs
    before = snapshot(out)
    refused(generate(tiny_model, out, *sets), "identity plan differs")
    unchanged(before, out)


def test_a_damaged_identities_file_is_not_trusted(dataset, tiny_model):
    import pyarrow.parquet as pq

    _unfinish(dataset)
    table = pq.read_table(dataset / "identities.parquet")
    seeds = table.column("seed").to_numpy() + 1
    pq.write_table(table.set_column(table.schema.get_field_index("seed"), "seed", [seeds]), dataset / "identities.parquet")
    result = generate(tiny_model, dataset)  # planned again from the recipe: the same plan, so the run finishes
    assert result.exit_code == 0, result.stderr
    assert (pq.read_table(dataset / "identities.parquet").column("seed").to_numpy() == seeds - 1).all()


# --------------------------------------------------------------------------- 2. incomplete data that looks complete


@pytest.mark.parametrize("lost", ["shard", "marker", "summary", "identities"])
def test_readers_refuse_an_incomplete_dataset(dataset, tmp_path, lost):
    data = dataset / "data"
    if lost == "shard":
        (data / "train-00001-of-00002.parquet").unlink()
        (data / ".train-00001-of-00002.json").unlink()
    elif lost == "marker":
        (data / ".train-00001-of-00002.json").unlink()
    elif lost == "summary":
        (dataset / "summary.json").unlink()  # e.g. --part jobs done, the final pass not run
    else:
        (dataset / "identities.parquet").write_bytes(b"PAR1 garbage")
    before = snapshot(dataset)
    refused(cli("export", dataset, tmp_path / "folders"), "run `synthface generate` with the same arguments")
    refused(cli("inspect", dataset, "--embedder", "none"), "run `synthface generate` with the same arguments")
    unchanged(before, dataset)
    assert not (tmp_path / "folders").exists()


def test_allow_partial_reads_the_committed_shards_only(dataset, tmp_path):
    (dataset / "data" / ".train-00001-of-00002.json").unlink()
    result = cli("export", dataset, tmp_path / "folders", "--allow-partial")
    assert result.exit_code == 0, result.stderr
    assert len(list((tmp_path / "folders").rglob("*.png"))) == 4


def test_export_overwrite_replaces_the_earlier_export_and_keeps_a_users_files(dataset, tmp_path):
    import json

    out = tmp_path / "folders"
    assert cli("export", dataset, out).exit_code == 0
    record = json.loads((out / "export.files.json").read_text())
    assert len([f for f in record["files"] if f.endswith(".png")]) == 8 and "export.config.yaml" in record["files"]
    # a file the earlier export wrote (named in its record) and one the user added afterwards
    (out / "99999").mkdir()
    (out / "99999" / "old.png").write_bytes(b"exported earlier")
    (out / "export.files.json").write_text(json.dumps({"files": record["files"] + ["99999/old.png"]}))
    (out / "notes.txt").write_text("mine\n")
    (out / "00000" / "mine.png").write_bytes(b"mine too")
    mine = {k: v for k, v in snapshot(out).items() if k in ("notes.txt", "00000/mine.png")}
    result = cli("export", dataset, out, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert not (out / "99999").exists()  # the earlier export's own file went
    unchanged(mine, out, new_files=True)  # the user's stayed
    assert len(list(out.rglob("*.png"))) == 9 and "exported 8 images of 4 identities" in result.stderr
    assert "kept 2 files" in result.stderr
    assert "export images (imagefolder): 8/8 (" in result.stderr  # the progress line counts images of a known total


def test_export_overwrite_refuses_a_folder_it_did_not_write(dataset, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    before = snapshot(mine)
    refused(cli("export", dataset, mine, "--overwrite"), "not a synthface export output")
    unchanged(before, mine)


def test_export_into_the_dataset_is_refused(dataset):
    before = snapshot(dataset)
    refused(cli("export", dataset, dataset / "data", "--format", "recordio"), "overlaps the dataset")
    unchanged(before, dataset)


def test_a_full_disk_leaves_no_partial_export(dataset, tmp_path, monkeypatch):
    import errno

    from synthface import atomic

    real, calls = atomic.atomic_write_bytes, []

    def fill_up(path, data):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(atomic, "atomic_write_bytes", fill_up)
    refused(cli("export", dataset, tmp_path / "folders"), "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # no OUT, no temp folder


def test_export_of_a_truncated_shard_is_one_line(dataset, tmp_path):
    shard = dataset / "data" / "train-00000-of-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:200])
    before = snapshot(dataset)
    refused(cli("export", dataset, tmp_path / "folders"), "does not match its commit marker")
    refused(cli("inspect", dataset, "--embedder", "none"), "does not match its commit marker")
    unchanged(before, dataset)


# --------------------------------------------------------------------------- 4. small images and face detection


@pytest.fixture()
def small_images(tmp_path):
    import numpy as np
    from PIL import Image

    src = tmp_path / "small"
    rng = np.random.default_rng(0)
    for person, side in (("a", 8), ("b", 19), ("c", 20), ("d", 64)):
        (src / person).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(src / person / "0.png")
    return src


def test_align_counts_and_skips_images_too_small_for_the_detector(small_images, tmp_path):
    before = snapshot(small_images)
    result = cli("align", small_images, tmp_path / "aligned", "--json", tmp_path / "align.json")
    # nothing aligned: an error (exit 2) with the counts, each image counted once, and no output folder
    refused(result, "no face was aligned", "no face 2, too small 2, unreadable 0 of 4")
    assert not (tmp_path / "aligned").exists() and not (tmp_path / "align.json").exists()
    unchanged(before, small_images)


def test_embed_counts_images_too_small_for_the_detector_once(small_images, tmp_path):
    before = snapshot(small_images)
    result = cli("embed", small_images, tmp_path / "e.parquet", "--json", tmp_path / "embed.json")
    refused(result, "no face was embedded", "no face 2, too small 2, unreadable 0 of 4", "nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]
    unchanged(before, small_images)


def test_embed_counts_add_up_to_the_images(tmp_path):
    import numpy as np

    from synthface.faces.batch import NO_FACE, OK, TOO_SMALL, EmbedResult

    res = EmbedResult(np.zeros((4, 2)), [OK, NO_FACE, NO_FACE, NO_FACE], np.zeros(4), {1: f"{TOO_SMALL}: 8x8 px", 2: "x"})
    counts = res.counts()
    assert counts == {"ok": 1, "no_face": 2, "too_small": 1, "unreadable": 0}
    assert counts["ok"] + counts["no_face"] + counts["too_small"] + counts["unreadable"] == 4


# --------------------------------------------------------------------------- 5-7. tracebacks, silent nonsense, misleading errors


@pytest.mark.parametrize(
    "override, words",
    [
        ("sampling.guidance_scale=inf", "valid number"),
        ("sampling.guidance_scale=1e400", "finite number"),
        ("sampling.guidance_scale=.nan", "finite number"),
        ("identities.count=true", "valid integer"),
        ('sampling.steps="3"', "valid integer"),
        ("identities.count=1e23", "valid integer"),
        ("identities.count=1000000000000", "less than or equal"),
    ],
)
def test_nonsense_recipe_values_are_refused(tiny_model, tmp_path, override, words):
    refused(generate(tiny_model, tmp_path / "out", "--set", override), words)
    assert not (tmp_path / "out").exists()


def test_floats_in_exponent_form_are_numbers():
    from synthface.config import TrainRecipe, load_recipe

    assert load_recipe(TrainRecipe, None, ["train.lr=5e-4"]).train.lr == 5e-4


@pytest.mark.parametrize("content", [b"seed: \xff\xfe\n", ("a: " + "[" * 20000 + "]" * 20000).encode()])
def test_unreadable_recipes_are_one_line(tiny_model, tmp_path, content):
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    refused(generate(tiny_model, tmp_path / "out", "--recipe", path), "r.yaml")


def _edit_json(path: Path, **changes) -> None:
    import json

    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "file, changes, words",
    [
        ("synthface.json", {"image_size": 32}, "says image_size 32 but the weights have 16"),
        ("synthface.json", {"id_tokens": 8}, "says id_tokens 8 but the weights have 4"),
        ("synthface.json", {"latent": "no"}, "key 'latent'"),
        ("scheduler/scheduler_config.json", {"num_train_timesteps": 0}, "num_train_timesteps is 0"),
        ("scheduler/scheduler_config.json", {"beta_schedule": "wiggly"}, "scheduler_config.json is unusable"),
    ],
)
def test_a_model_description_contradicting_its_weights_is_refused(tiny_model, tmp_path, file, changes, words):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    _edit_json(model / file, **changes)
    if file != "synthface.json":  # a model written with this description (sealed with it), not one changed since
        from synthface.generator.native import seal

        seal(model)
    refused(generate(model, tmp_path / "out"), words)
    assert not (tmp_path / "out").exists()


def test_json_summary_to_a_folder_is_one_line_and_keeps_the_run(tiny_model, tmp_path):
    out = tmp_path / "out"
    refused(generate(tiny_model, out, "--json", tmp_path), "Is a directory")
    assert generate(tiny_model, out).exit_code == 0  # the run itself finished: nothing left to do
    assert "0 written now, 2 already done" in generate(tiny_model, out).stderr


def test_a_lock_file_that_cannot_be_created_is_not_called_held(tiny_model, tmp_path):
    out = tmp_path / "out"
    (out / ".synthface.lock").mkdir(parents=True)
    text = refused(generate(tiny_model, out), "cannot create the lock file")
    assert "held" not in text


def test_out_that_is_a_file_is_refused(tiny_model, tmp_path):
    target = tmp_path / "file"
    target.write_text("mine\n")
    refused(generate(tiny_model, target), "is a file")
    assert target.read_text() == "mine\n"


def test_an_unexpected_error_is_one_line_naming_its_log(monkeypatch, tmp_path):
    from synthface.cli import common

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    def boom(*args, **kwargs):
        raise RuntimeError(
            "Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  x\nRuntimeError: bad"
        )

    monkeypatch.setattr(common, "load_recipe", boom)
    text = refused(cli("export", tmp_path, tmp_path / "o"), "unexpected RuntimeError", "full traceback in", code=1)
    logs = list((tmp_path / "state" / "synthface" / "logs").glob("error-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and str(logs[0]) in text


# --------------------------------------------------------------------------- 8. resources


def test_a_huge_jpeg_is_downscaled_as_it_is_decoded(tmp_path, monkeypatch):
    from PIL import Image

    from synthface.faces import align

    Image.new("RGB", (600, 400), (120, 100, 90)).save(tmp_path / "big.jpg")
    monkeypatch.setattr(align, "MAX_SIDE", 64)
    assert align.load_image(tmp_path / "big.jpg").shape == (43, 64, 3)


def test_a_forged_bin_cannot_make_the_reader_allocate(tmp_path):
    import pickle

    class Forged:
        def __reduce__(self):
            return (bytearray, (2**31,))

    path = tmp_path / "forged.bin"
    path.write_bytes(pickle.dumps(([Forged(), b"x"], [True]), protocol=2))
    images = tmp_path / "img"
    images.mkdir()
    refused(cli("verify", "--pairs", path, "--images", images), "refusing to load", "bytes from a")


def test_a_fifo_named_like_an_image_is_not_read(small_images, tmp_path):
    import os

    os.mkfifo(small_images / "d" / "pipe.jpg")
    result = cli("align", small_images, tmp_path / "aligned")
    refused(result, "of 4)")  # no face in the random images: exit 2, no hang


def test_evaluate_out_refuses_a_dataset(dataset):
    before = snapshot(dataset)
    refused(cli("evaluate", "--train", f"synth={dataset}", "--bench", f"x={dataset}/pairs.bin", "--out", dataset),
            "not a synthface evaluate output")  # fmt: skip
    unchanged(before, dataset)


def test_out_under_a_file_is_one_line(tiny_model, tmp_path):
    (tmp_path / "file").write_text("mine\n")
    refused(generate(tiny_model, tmp_path / "file" / "out"), "Not a directory")
    assert (tmp_path / "file").read_text() == "mine\n"


# --------------------------------------------------------------------------- 9. issue 27: the last holes


def _forged_png(path: Path, side: int = 40000) -> Path:
    """A PNG whose header claims ``side`` x ``side`` pixels (a decompression bomb), a few bytes on disk."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    body += struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))
    return path


def _tiny_jpegs(count: int) -> list[bytes]:
    import io

    from PIL import Image

    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (1, 1), (i, i, i)).save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out


@pytest.mark.parametrize("aligned", ["true", "false"])
def test_verify_counts_one_pixel_images_of_a_bin_as_failed(tmp_path, aligned):
    from synthface.recognition.protocols.binfile import write_bin

    path = write_bin(tmp_path / "tiny.bin", _tiny_jpegs(40), [i % 2 == 0 for i in range(20)])
    before = snapshot(tmp_path)
    result = cli("verify", "--pairs", path, "--embedder", "dlib", "--set", f"aligned={aligned}")
    assert result.exit_code == 0, result.stderr
    assert "failed images 40" in result.stderr and "error" not in result.stderr.lower()
    unchanged(before, tmp_path)


def test_dlib_takes_a_mirrored_one_pixel_wide_image():
    import numpy as np

    from synthface.faces.align import template_landmarks
    from synthface.faces.embedders import get_embedder

    image = np.zeros((1, 1, 3), np.uint8)[:, ::-1]  # what flip-TTA passes: numpy calls it contiguous
    vec = get_embedder("dlib").embed([image], template_landmarks(1, 1))
    assert vec.shape == (1, 128)


def test_every_image_decoder_refuses_a_decompression_bomb(tmp_path):
    from synthface.dataset.reader import decode_face
    from synthface.errors import InputError
    from synthface.faces.align import load_image
    from synthface.generator.variation import StyleBank
    from synthface.recognition.protocols import decode_image

    bank = tmp_path / "bank"
    bank.mkdir()
    bomb = _forged_png(bank / "bomb.png")
    for decode in (load_image, decode_face, decode_image, lambda p: decode_image(p.read_bytes())):
        with pytest.raises(InputError, match="more than 64,000,000 pixels"):
            decode(bomb)
    with pytest.raises(InputError, match="style_bank: .*bomb.png has more than"):
        StyleBank(bank, 16)


def test_a_bomb_in_the_style_bank_is_refused_before_out_exists(tiny_model, tmp_path):
    bank = tmp_path / "bank"
    bank.mkdir()
    _forged_png(bank / "bomb.png")
    refused(generate(tiny_model, tmp_path / "out", "--set", f"variation.style_bank={bank}"), "bomb.png", "more than")
    assert not (tmp_path / "out").exists()


def test_the_style_bank_decodes_through_the_bounded_loader(tmp_path, monkeypatch):
    from PIL import Image

    from synthface.faces import align
    from synthface.generator.variation import StyleBank

    bank = tmp_path / "bank"
    bank.mkdir()
    Image.new("RGB", (600, 400), (120, 100, 90)).save(bank / "big.jpg")
    decoded = []
    real = align.load_image
    monkeypatch.setattr(align, "MAX_SIDE", 64)
    monkeypatch.setattr(align, "load_image", lambda path: decoded.append(real(path).shape) or real(path))
    assert StyleBank(bank, 16).images.shape == (1, 16, 16, 3)
    assert decoded == [(43, 64, 3)]  # JPEG draft + cap: never the full 600x400


def _pairs_csv(tmp_path: Path, header: str, rows: list[str]) -> Path:
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    path = tmp_path / "pairs.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    "header, rows, words",
    [
        ("path_a,path_b,same,fold", ["a.png,b.png,1,0", "a.png,b.png,0,99999999999999999999"], ("pairs.csv:3", "fold must be 0 to")),
        ("path_a,path_b,same,fold", ["a.png,b.png,1,-1"], ("pairs.csv:2", "fold must be 0 to")),
        ("path_a,path_b,same,same", ["a.png,b.png,1,0"], ("pairs.csv:1", "'same' appears twice")),
        ("path_a,path_b,same,fold", ["a.png,b.png,1,0", "a.png,b.png,1,0", "a.png,b.png,0,1", "a.png,b.png,0,1"],
         ("pairs.csv:2", "fold 0 holds only same pairs")),
    ],
)  # fmt: skip
def test_a_pairs_csv_that_would_mislead_is_refused_with_its_line(tmp_path, header, rows, words):
    path = _pairs_csv(tmp_path, header, rows)
    before = snapshot(tmp_path)
    refused(cli("verify", "--pairs", path, "--embedder", "dlib", "--out", tmp_path / "v"), *words)
    unchanged(before, tmp_path)  # and no --out folder


def test_a_full_disk_names_the_file_and_the_reason(tmp_path, monkeypatch):
    import errno

    import torch

    from synthface import atomic
    from synthface.cli.common import _os_error
    from synthface.atomic import atomic_torch_save as _atomic_save

    real = atomic.os.fdopen

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")  # a write names no file

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    target = tmp_path / "runs" / "checkpoint.pt"
    with pytest.raises(OSError) as info:
        _atomic_save({"weights": torch.zeros(1000)}, target)  # evaluate's and train's checkpoints
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert _os_error(info.value) == f"No space left on device: {target}: free some space or choose another folder"
    assert sorted(p.name for p in target.parent.iterdir()) == []  # no temp file left
    assert _os_error(OSError("quota exceeded")) == "quota exceeded: check the path and retry"  # a reason, never "OSError"


def test_images_strategy_with_no_face_in_the_references_is_refused(tiny_model, small_images, tmp_path):
    before = snapshot(small_images)
    result = generate(tiny_model, tmp_path / "out", "--set", "identities.strategy=images",
                      "--set", f"identities.images={small_images}")  # fmt: skip
    refused(result, "no reference identity", "no face found")
    assert not (tmp_path / "out").exists()
    unchanged(before, small_images)


@pytest.fixture(scope="module")
def empty_run(tiny_model, tmp_path_factory):
    """A finished run whose filter kept no identity (noise renders hold no face), and its result."""
    out = tmp_path_factory.mktemp("empty") / "out"
    result = generate(tiny_model, out, "--set", "filter.enabled=true", "--set", "filter.min_images=1")
    return out, result


def test_a_run_that_keeps_no_image_is_an_error(empty_run):
    out, result = empty_run
    refused(result, "kept 0 images", "filter.threshold")
    assert (out / "summary.json").is_file()  # the run itself is recorded (a rerun resumes, --overwrite restarts)


def test_inspect_refuses_a_dataset_of_no_images(empty_run, tmp_path):
    out, _ = empty_run
    before = snapshot(out)
    refused(cli("inspect", out, "--out", tmp_path / "report", "--embedder", "none"), "holds 0 images")
    unchanged(before, out)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    "sets, words",
    [
        (["sampling.guidance_scale=1e38"], ("sampling.guidance_scale 1e+38 overflows fp32",)),
        (["variation.guidance_scale=[1e30, 1e38]"], ("variation.guidance_scale 1e+30 overflows fp32",)),
        (["sampling.dtype=fp16", "sampling.guidance_scale=300"], ("overflows fp16", "at most 255")),
        (["variation.style_bank=.", "variation.style_strength=1e-9"], ("style_strength 1e-09 leaves no step",)),
    ],
)
def test_values_that_break_sampling_are_refused_before_out_exists(tiny_model, tmp_path, sets, words):
    refused(generate(tiny_model, tmp_path / "out", *[x for s in sets for x in ("--set", s)]), *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["export", "inspect", "verify", "evaluate"])
def test_a_command_writing_a_locked_folder_is_refused(dataset, tmp_path, command):
    from synthface.dataset.locks import RunLock
    from synthface.recognition.protocols.binfile import write_bin

    out = tmp_path / "out"
    if command == "export":
        assert cli("export", dataset, out).exit_code == 0
    out.mkdir(exist_ok=True)
    bench = write_bin(tmp_path / "b.bin", _tiny_jpegs(4), [True, False])
    args = {
        "export": ("export", dataset, out, "--overwrite"),
        "inspect": ("inspect", dataset, "--out", out, "--embedder", "none", "--set", "detector=none"),
        "verify": ("verify", "--pairs", bench, "--embedder", "dlib", "--set", "folds=2", "--out", out),
        "evaluate": ("evaluate", "--train", f"s={dataset}", "--bench", f"b={bench}", "--out", out),
    }[command]
    with RunLock(out):  # the lock generate takes: another run is writing
        before = snapshot(out)
        refused(cli(*args), "another synthface run is writing to")
        unchanged(before, out)


def test_a_failed_start_leaves_no_folder(dataset, tmp_path):
    missing = tmp_path / "missing.bin"
    refused(cli("verify", "--pairs", missing, "--embedder", "dlib", "--out", tmp_path / "v"), "missing.bin")
    refused(cli("evaluate", "--train", f"s={dataset}", "--bench", f"b={missing}", "--out", tmp_path / "e"), "missing.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_user_text_is_printed_as_it_is(tmp_path):
    name = tmp_path / ":smile:[bold]x[/]y.csv"
    line = refused(cli("verify", "--pairs", name), ":smile:[bold]x[/]y.csv")
    assert "😄" not in line
    line = refused(cli("evaluate", "--train", "s=a:b:c", "--bench", "b=x.bin", "--out", tmp_path / "e"), "a:b:c")


def test_generate_says_the_size_of_the_run_first(tiny_model, tmp_path):
    result = generate(tiny_model, tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0] == "planned by the recipe: 4 identities x 2 images = 8 images"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = cli("generate", "--out", tmp_path / "default", "--model", tmp_path / "nope")
    assert result.stderr.splitlines()[0] == (
        "planned by the default recipe (no --recipe, no --set): 10,000 identities x 50 images = 500,000 images, "
        "up to 750,000 renders (filter.oversample 1.5)"
    )
    refused(result, "nope")


def test_inspect_reference_that_is_not_a_reference_is_named_so(dataset, tmp_path):
    recipe_file = tmp_path / "q.yaml"
    recipe_file.write_text("seed: 1\n")
    line = refused(cli("inspect", dataset, "--out", tmp_path / "r", "--reference", recipe_file), "q.yaml",
                   "is a file but not a RecordIO .rec", "folder of aligned face images")  # fmt: skip
    assert "training set" not in line and not (tmp_path / "r").exists()


def test_inspect_refuses_too_few_reference_images(dataset, tmp_path):
    from PIL import Image

    for person in ("a", "b"):
        (tmp_path / "ref" / person).mkdir(parents=True)
        Image.new("RGB", (1, 1)).save(tmp_path / "ref" / person / "0.png")
    refused(cli("inspect", dataset, "--out", tmp_path / "r", "--reference", tmp_path / "ref"), "gives 2 image(s)", "k=3")
    assert not (tmp_path / "r").exists()


def test_a_dataset_with_a_damaged_config_can_be_overwritten(dataset, tiny_model):
    (dataset / "config.yaml").write_bytes(b"\xff\xfe garbage")
    (dataset / "notes.txt").write_text("mine\n")
    (dataset / "summary.json").unlink()  # (a finished run with its summary resumes: nothing to do)
    refused(generate(tiny_model, dataset), "config.yaml is unreadable", "--overwrite")
    result = generate(tiny_model, dataset, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert (dataset / "notes.txt").read_text() == "mine\n"
    assert (dataset / "config.yaml").read_text().startswith("# synthface")


def _weights(result, code: int = 0) -> dict:
    import json

    assert result.exit_code == code, result.stderr
    return {w["name"]: w for w in json.loads(result.stdout)["weights"]}


def test_doctor_and_download_check_a_local_model_folder(tiny_model, tmp_path):
    import json

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = _weights(cli("doctor", "--model", model, "--json", "-"))
    assert weights[f"generator {model}"]["present"] is True  # the local generator is listed
    unet = model / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[:-100])
    before = snapshot(model)
    # a sealed folder is checked against its manifest (synthface.json's files: size and sha256)
    result = cli("doctor", "--model", model, "--json", "-")
    entry = _weights(result, code=4)[f"generator {model}"]  # 4: a file the named run loads is unusable
    size = unet.stat().st_size
    assert entry["present"] is False
    assert entry["problem"] == (
        f"unet/diffusion_pytorch_model.safetensors has {size} bytes where synthface.json says {size + 100} (changed or truncated)"
    )
    refused(cli("download", "--model", model), "not fetchable here", f"generator {model}")
    unchanged(before, model)
    # a folder without a manifest: each .safetensors file against the size its header implies
    meta = json.loads((model / "synthface.json").read_text())
    del meta["files"]
    (model / "synthface.json").write_text(json.dumps(meta))
    entry = _weights(cli("doctor", "--model", model, "--json", "-"), code=4)[f"generator {model}"]
    assert entry["present"] is False and "unet/diffusion_pytorch_model.safetensors is truncated" in entry["problem"]


def test_doctor_finds_a_changed_file_of_a_sealed_model_folder(tiny_model, tmp_path):
    """Same size, other bytes: only the manifest's sha256 tells, and doctor says so as loading would."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    config = model / "projector" / "config.json"
    data = config.read_bytes()
    config.write_bytes(data[:-1] + (b"\t" if data[-1:] != b"\t" else b" "))  # same size, one byte other
    result = cli("doctor", "--model", model, "--json", "-")
    assert "missing, incomplete or unusable" in result.stderr.strip().splitlines()[-1]
    entry = _weights(result, code=4)[f"generator {model}"]
    assert entry["present"] is False
    assert entry["problem"] == "projector/config.json does not match its sha256 in synthface.json (changed or damaged)"


def test_doctor_says_what_an_onnx_path_and_a_style_bank_are(tiny_model, tmp_path):
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "empty").mkdir()
    weights = _weights(cli("doctor", "--model", tiny_model, "--embedder", f"onnx:{text}",
                           "--set", f"variation.style_bank={tmp_path / 'empty'}", "--json", "-"), code=4)  # fmt: skip
    onnx = weights[f"ONNX model {text}"]
    assert onnx["present"] is False and onnx["problem"] == "a text file of 32 bytes, not an ONNX model"
    bank = weights[f"variation.style_bank {tmp_path / 'empty'}"]
    assert bank["present"] is False and bank["problem"] == "holds no images (.jpg, .png, ...)"


def test_a_library_writers_disk_full_error_names_the_path(tmp_path, monkeypatch):
    import errno

    from synthface import atomic

    target = tmp_path / "checkpoints" / "step-1"
    with pytest.raises(OSError) as info, atomic.writing_to(target):
        raise RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )
    assert (info.value.errno, info.value.strerror, info.value.filename) == (errno.ENOSPC, "No space left on device", str(target))
    monkeypatch.setattr(atomic, "_free_bytes", lambda path: 0)  # torch's writer says no reason: a full disk is found
    with pytest.raises(OSError) as info, atomic.writing_to(target):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    monkeypatch.setattr(atomic, "_free_bytes", lambda path: 10**12)
    with pytest.raises(RuntimeError, match="a bug"), atomic.writing_to(target):
        raise RuntimeError("a bug")  # anything else stays what it is


def test_doctor_compares_a_model_folders_recorded_sizes(tiny_model, tmp_path):
    from synthface.needs import model_folder_need

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    size = (model / "unet" / "config.json").stat().st_size
    (model / "unet" / "config.json").write_text((model / "unet" / "config.json").read_text() + " ")
    (model / "scheduler" / "scheduler_config.json").unlink()
    need = model_folder_need(model, "generator")
    assert not need.present
    assert need.problem == (  # every file the manifest lists that differs, not only the first
        "scheduler/scheduler_config.json is missing; "
        f"unet/config.json has {size + 1} bytes where synthface.json says {size} (changed or truncated)"
    )
