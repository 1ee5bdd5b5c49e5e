from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthface.cli.app import app
from synthface.errors import ModelMismatchError

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error:") and pattern in text, text
    assert "Traceback" not in text


def test_every_command_help_ends_with_an_example():
    result = run("--help")
    assert result.exit_code == 0
    names = [c.name for c in app.registered_commands]
    assert {"align", "embed", "verify", "doctor"} <= set(names)
    for name in names:
        out = run(name, "--help").output
        assert "Example:" in out and "$ synthface " + name in out, name


def test_bad_override_and_bad_recipe_are_one_line_errors(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    one_line_error(run("align", src, tmp_path / "out", "--set", "image_sise=64"), "unknown recipe key 'image_sise'")
    one_line_error(run("align", src, tmp_path / "out", "--set", "batch_size=-1"), "batch_size")
    one_line_error(run("align", src, tmp_path / "out", "--recipe", tmp_path / "none.yaml"), "recipe file not found")


def test_align_missing_or_empty_folder(tmp_path):
    one_line_error(run("align", tmp_path / "nope", tmp_path / "out"), "not a folder")
    (tmp_path / "empty").mkdir()
    one_line_error(run("align", tmp_path / "empty", tmp_path / "out"), "no images found")


def test_embed_and_verify_bad_inputs(tmp_path):
    one_line_error(run("embed", tmp_path / "nope", tmp_path / "o.parquet"), "not a folder")
    one_line_error(run("verify", "--pairs", tmp_path / "none.txt", "--images", tmp_path), "does not exist")
    (tmp_path / "e").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "e" / "a.png")
    one_line_error(run("embed", tmp_path / "e", tmp_path / "o.parquet", "--embedder", "arcfaec"), "unknown embedder")


def test_verify_refuses_malicious_bin(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([Evil()], [True]), protocol=2))
    result = run("verify", "--pairs", tmp_path / "evil.bin", "--embedder", "dlib")
    one_line_error(result, "refusing to load")
    assert not marker.exists()


def test_doctor_json(tmp_path):
    result = run("doctor", "--json", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "d.json").read_text())
    assert {"python", "packages", "torch", "weights"} <= set(data)
    dlib_row = next(w for w in data["weights"] if w["name"].startswith("dlib"))
    assert dlib_row["present"] is True
    missing = [w for w in data["weights"] if not w["present"]]
    assert all(w["fetch"] for w in missing)


@pytest.fixture()
def small_lfw(tmp_path, lfw_images):
    src = tmp_path / "photos"
    for name, idx in [("Aaron_Peirsol", 1), ("Aaron_Peirsol", 2), ("Abdullah_Gul", 1), ("Abdullah_Gul", 2)]:
        (src / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(lfw_images / name / f"{name}_{idx:04d}.jpg", src / name)
    (src / "Nobody").mkdir()
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(src / "Nobody" / "Nobody_0001.jpg")
    (src / "Nobody" / "Nobody_0002.jpg").write_bytes(b"\xff\xd8 broken")
    return src


def test_align_embed_verify_on_real_faces(tmp_path, small_lfw):
    out = tmp_path / "aligned"
    result = run("align", small_lfw, out, "--json", tmp_path / "align.json")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "align.json").read_text())
    assert (summary["aligned"], summary["no_face"], summary["unreadable"], summary["total"]) == (4, 1, 1, 6)
    crop = Image.open(out / "Aaron_Peirsol" / "Aaron_Peirsol_0001.png")
    assert crop.size == (112, 112)
    assert (out / "synthface-align.yaml").is_file()
    run("align", small_lfw, out, "--json", tmp_path / "align2.json")
    assert json.loads((tmp_path / "align2.json").read_text())["skipped_existing"] == 4

    result = run("embed", out, tmp_path / "e.parquet", "--embedder", "dlib", "--set", "aligned=true")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.num_rows == 4 and table.schema.field("embedding").type.list_size == 128
    assert sorted(set(table["identity"].to_pylist())) == ["Aaron_Peirsol", "Abdullah_Gul"]
    # the file names its embedder, so a gallery of the wrong embedder is refused by name
    from synthface.gallery import load_gallery, read_embeddings_parquet

    assert read_embeddings_parquet(tmp_path / "e.parquet").embedder == "dlib"
    with pytest.raises(ModelMismatchError, match="holds .dlib. embeddings but the model is conditioned on 'facenet-vggface2'"):
        load_gallery(tmp_path / "e.parquet", lambda: None, "facenet-vggface2", 128)

    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "2\t1\nAaron_Peirsol\t1\t2\nAaron_Peirsol\t1\tAbdullah_Gul\t1\nAbdullah_Gul\t1\t2\nAbdullah_Gul\t2\tNobody\t1\n"
    )
    result = run(
        "verify",
        "--pairs",
        pairs,
        "--images",
        small_lfw,
        "--embedder",
        "dlib",
        "--set",
        "folds=2",
        "--out",
        tmp_path / "v",
        "--json",
        tmp_path / "v.json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "v.json").read_text())
    for key in ("accuracy", "accuracy_std", "tar_at_far_1e-3", "threshold", "pairs", "failed_images"):
        assert key in data
    assert data["pairs"] == 4 and data["failed_images"] == 1 and data["failed_pairs"] == 1
    assert (tmp_path / "v" / "roc.png").is_file() and (tmp_path / "v" / "config.yaml").is_file()
    saved = np.load(tmp_path / "v" / "embeddings.npz")
    assert saved["embeddings"].shape == (5, 128) and int(np.isnan(saved["embeddings"][:, 0]).sum()) == 1


def test_plain_progress_lines_rate_excludes_a_resumed_runs_jump(monkeypatch):
    """In logs (no terminal) a resumed run starts at its checkpoint: that jump is not counted as speed."""
    import io

    from rich.console import Console

    from synthface.cli import common

    out = io.StringIO()
    clock = iter([100.0, 100.0, 130.0, 160.0])
    monkeypatch.setattr(common, "console", Console(file=out, force_terminal=False, width=200))
    monkeypatch.setattr(common.time, "monotonic", lambda: next(clock))
    bar = common.RichBar(("loss",), log_every=0.0)
    bar.start(500, "training")
    bar.advance(300)  # the steps done before the resume
    bar.advance(6, loss=0.1)
    bar.advance(3, loss=0.2)
    lines = out.getvalue().splitlines()
    assert lines == [
        "training: 300/500 (0s)",
        "training: 306/500 (0.2/s, 30s, eta 16m10s) loss=0.1",  # the remaining steps at the rate just measured
        "training: 309/500 (0.1/s, 60s, eta 31m50s) loss=0.2",
    ]


def test_set_help_example_is_a_key_of_every_command():
    from synthface.cli.common import SET_EXAMPLE
    from synthface.config import RECIPES, load_recipe

    for name, model in RECIPES.items():
        load_recipe(model, None, [SET_EXAMPLE])  # an unknown key would raise
    flat = " ".join(run("inspect", "--help").output.replace("│", " ").split())  # the help table wraps long cells
    assert f"--set {SET_EXAMPLE}" in flat


def test_align_with_no_face_found_is_an_error(tmp_path):
    src = tmp_path / "blank" / "someone"
    src.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((96, 96, 3), 40 * i, np.uint8)).save(src / f"{i}.png")
    result = run("align", tmp_path / "blank", tmp_path / "out", "--json", tmp_path / "a.json")
    assert result.exit_code == 2  # an empty result: exit 2, one line, no output folder
    assert "error: no face was aligned" in result.output and "no face 3" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "a.json").exists()


def test_top_level_help_has_an_example():
    result = run("--help")
    assert result.exit_code == 0 and "Example" in result.output and "synthface generate --model runs/tiny" in result.output


def test_flags_show_no_type_and_examples_name_one_model_folder():
    for argv in (["--help"], ["generate", "--help"], ["doctor", "--help"]):
        result = run(*argv)
        assert result.exit_code == 0 and "<bool>" not in result.output, result.output
    assert "<path>" in run("generate", "--help").output  # options that take a value keep their type
    text = " ".join(run("generate", "--help").output.split())
    assert "tiny_native_model('runs/tiny')" in text and "--model runs/tiny " in text and "--model tiny " not in text


def test_doctor_names_the_torch_build(tmp_path):
    import torch

    from synthface.doctor import torch_build

    assert torch_build(None) == "CPU-only" and torch_build("12.4") == "CUDA 12.4" and torch_build(None, "6.2") == "ROCm 6.2"
    result = run("doctor", "--json", tmp_path / "d.json")
    build = json.loads((tmp_path / "d.json").read_text())["torch"]["build"]
    assert build == torch_build(torch.version.cuda, getattr(torch.version, "hip", None))
    assert f"({build} build)" in result.output
