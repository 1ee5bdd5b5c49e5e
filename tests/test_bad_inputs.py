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


def test_export_overwrite_replaces_an_earlier_export_whole(dataset, tmp_path):
    out = tmp_path / "folders"
    assert cli("export", dataset, out).exit_code == 0
    (out / "99999").mkdir()
    (out / "99999" / "stale.png").write_bytes(b"stale")
    result = cli("export", dataset, out, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert len(list(out.rglob("*.png"))) == 8 and not (out / "99999").exists()
    assert "exported 8 images of 4 identities" in result.stderr
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
    import json

    before = snapshot(small_images)
    result = cli("align", small_images, tmp_path / "aligned", "--json", tmp_path / "align.json")
    assert result.exit_code == 1 and "no face was aligned" in result.stderr  # nothing aligned: a warning, exit 1
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "align.json").read_text())
    assert summary["too_small"] == 2 and summary["failures"]["a/0.png"] == "too_small"
    assert summary["too_small"] + summary["no_face"] + summary["aligned"] == 4
    unchanged(before, small_images)


def test_embed_counts_images_too_small_for_the_detector(small_images, tmp_path):
    import json

    result = cli("embed", small_images, tmp_path / "e.parquet", "--json", tmp_path / "embed.json")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "embed.json").read_text())["too_small"] == 2


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
    assert result.exit_code == 1 and "Traceback" not in result.stderr  # no face in the random images: exit 1, no hang
    assert "(of 4)" in result.stderr


def test_evaluate_out_refuses_a_dataset(dataset):
    before = snapshot(dataset)
    refused(cli("evaluate", "--train", f"synth={dataset}", "--bench", f"x={dataset}/pairs.bin", "--out", dataset),
            "not a synthface evaluate output")  # fmt: skip
    unchanged(before, dataset)


def test_out_under_a_file_is_one_line(tiny_model, tmp_path):
    (tmp_path / "file").write_text("mine\n")
    refused(generate(tiny_model, tmp_path / "file" / "out"), "Not a directory")
    assert (tmp_path / "file").read_text() == "mine\n"
