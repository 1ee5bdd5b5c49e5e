"""`synthface inspect`: report JSON and PNGs on filtered and unfiltered datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers_generate import make_tiny_model, read_rows, tiny_recipe
from test_filter_support import PROJ, ProjEmbedder, make_filtered_dataset, register_proj
from synthface.cli.app import app
from synthface.dataset.inspect import similarity_pairs

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_filtered_dataset(tmp_path_factory.mktemp("inspect"), "filter.threshold=0.15", "filter.merge_threshold=0.2")


def test_inspect_filtered_dataset(filtered: Path, tmp_path: Path) -> None:
    register_proj()
    emb_path = tmp_path / "real.parquet"
    _real_gallery(emb_path)
    res = CliRunner().invoke(app, ["inspect", str(filtered), "--out", str(tmp_path / "r"), "--embedder", PROJ,
                                   "--gallery", str(emb_path), "--json", "-"])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    rows = read_rows(filtered)
    assert report["images"] == len(rows)
    assert report["identities"] == len({r["label"] for r in rows}) and report["labels_contiguous"]
    assert report["images_per_identity"]["histogram"] == {"2": report["identities"]}
    acc = report["acceptance"]
    assert acc["candidates"] == 6 * 4 and 0 < acc["passed"] <= acc["candidates"]
    assert acc["status"]["kept"] == len(rows)
    assert set(report["identities_dropped"]) == {"filter", "separation"}
    sim = report["similarity"]
    assert sim["embedder"] == PROJ and sim["images"] == len(rows) and sim["intra"]["count"] == report["identities"]
    assert report["leakage"]["identities"] == report["identities"]
    for key in ("contact_sheet", "similarity", "candidate_scores", "leakage"):
        assert Path(report["files"][key]).read_bytes()[:8] == PNG, key
    from PIL import Image

    with Image.open(report["files"]["contact_sheet"]) as sheet:
        assert sheet.height == 112 * report["identities"]  # one row per identity
    on_disk = json.loads((tmp_path / "r" / "inspect.json").read_text())
    assert on_disk["images"] == report["images"]


def test_inspect_unfiltered_dataset_default_location(tmp_path: Path) -> None:
    from synthface.generator.run import generate_dataset

    model = make_tiny_model(tmp_path / "model")
    generate_dataset(tiny_recipe(model), tmp_path / "out")
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "out"), "--embedder", "none"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "inspect" / "inspect.json").read_text())
    assert report["images"] == 8 and report["identities"] == 4 and "acceptance" not in report
    assert (tmp_path / "out" / "inspect" / "contact_sheet.png").read_bytes()[:8] == PNG
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not found" in res.output


def test_similarity_pairs() -> None:
    emb = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], np.float64)
    intra, inter = similarity_pairs(emb, np.array([0, 0, 1, 1]), max_pairs=50)
    assert len(intra) == 2 and (intra > 0.99).all()
    assert len(inter) > 0 and (inter < 0.2).all()


def _real_gallery(path: Path) -> None:
    """A `synthface embed`-style Parquet of 3 'real people' in the projection embedder's space."""
    from synthface.faces.embed_folder import embeddings_table
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    emb = ProjEmbedder().embed(imgs, np.zeros((6, 5, 2)))
    table = embeddings_table([f"p{i // 2}/{i}.png" for i in range(6)], [f"p{i // 2}" for i in range(6)], emb,
                             np.ones(6, np.float32), ["ok"] * 6)  # fmt: skip
    pq.write_table(table, path)


# --------------------------------------------------------------------------- offline defaults, no partial report


@pytest.fixture(scope="module")
def unfiltered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 identities x 4 images, filter off, while the recipe names a download-only filter embedder
    (the shape of the Arc2Face quickstart recipe)."""
    from synthface.generator.run import generate_dataset

    root = tmp_path_factory.mktemp("unfiltered")
    model = make_tiny_model(root / "model")
    recipe = tiny_recipe(model, "identities.count=6", "images_per_identity=4", "filter.embedder=facenet-vggface2")
    generate_dataset(recipe, root / "out")
    return root / "out"


def _offline_facenet(monkeypatch: pytest.MonkeyPatch) -> None:
    import facenet_pytorch.models.inception_resnet_v1 as irv1

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(irv1, "load_weights", offline)


def test_inspect_default_embedder_works_offline(unfiltered: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline_facenet(monkeypatch)
    res = CliRunner().invoke(app, ["inspect", str(unfiltered), "--out", str(tmp_path / "r"), "--json", "-"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    # the filter did not run, so its embedder is not the default: the one that ships with the install is
    assert report["similarity"]["embedder"] == "dlib"
    # every pair of 24 images of 6 identities x 4, exactly: 6 * C(4, 2) same, C(24, 2) - 36 different
    assert report["similarity"]["intra"]["count"] == 36 and report["similarity"]["inter"]["count"] == 240
    from PIL import Image

    with Image.open(report["files"]["contact_sheet"]) as sheet:
        assert sheet.size == (40 + 4 * 112, 6 * 112)  # as wide as 4 images, not the 8 sheet_images allow


def test_failed_inspect_leaves_no_partial_report(unfiltered: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline_facenet(monkeypatch)
    target = tmp_path / "report"
    res = CliRunner().invoke(app, ["inspect", str(unfiltered), "--out", str(target), "--embedder", "facenet-vggface2"])
    assert res.exit_code == 2
    assert "could not fetch facenet-vggface2" in res.output and "--embedder dlib" in res.output
    assert "Traceback" not in res.output
    assert not target.exists() and not list(tmp_path.iterdir())  # no report, no staging folder
    # an earlier complete report is left as it was
    assert CliRunner().invoke(app, ["inspect", str(unfiltered), "--out", str(target), "--embedder", "none"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    res = CliRunner().invoke(app, ["inspect", str(unfiltered), "--out", str(target), "--embedder", "facenet-vggface2"])
    assert res.exit_code == 2
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_similarity_pairs_samples_distinct_pairs_of_large_sets() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(50), 4)
    emb = rng.standard_normal((200, 8))
    intra, inter = similarity_pairs(emb, labels, max_pairs=1000)
    assert len(intra) == 50 * 6 and len(inter) == 1000
    assert len(np.unique(np.round(inter, 12))) == 1000  # distinct pairs, never one pair counted twice


def test_inspect_says_first_when_the_images_are_not_faces(unfiltered: Path, tmp_path: Path) -> None:
    """A tiny random model renders noise: MTCNN finds no face, and the headline says so before any figure."""
    res = CliRunner().invoke(app, ["inspect", str(unfiltered), "--out", str(tmp_path / "r"), "--embedder", "none"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.strip().splitlines() if not line.startswith("inspect: ")]  # not progress
    first = lines[0]
    assert first == "warning: faces found in 0% of images: the figures below describe non-faces"
    assert "images of" in lines[1]  # the headline comes after the warning
    report = json.loads((tmp_path / "r" / "inspect.json").read_text())
    assert report["quality"]["detection"]["rate"] == 0.0 and report["warnings"] == [first[len("warning: ") :]]
    page = (tmp_path / "r" / "report.html").read_text()
    body = page[page.index("</h1>") :]
    assert body.index("describe non-faces") < body.index("images of")  # the report's first line


def test_a_panel_with_nothing_to_plot_says_why(tmp_path: Path) -> None:
    from unittest import mock

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthface.figures import hist_ax

    fig, ax = plt.subplots()
    with mock.patch.object(ax, "text", wraps=ax.text) as text:
        hist_ax(ax, {"this dataset": np.array([np.nan])}, "separability", "cosine", None, "identities", "one identity")
    assert any(call.args[2] == "one identity" for call in text.call_args_list)
    with mock.patch.object(ax, "text", wraps=ax.text) as text:
        hist_ax(ax, {"this dataset": np.array([0.2, 0.3])}, "separability", "cosine")
    assert not text.call_args_list
    plt.close(fig)


def test_leakage_figure_counts_the_identities_the_dataset_has(tmp_path: Path) -> None:
    """The generate-time leakage cosines cover every planned identity; the report counts only the kept ones."""
    import pyarrow.parquet as pq

    _real_gallery(tmp_path / "real.parquet")
    out = make_filtered_dataset(tmp_path, "filter.threshold=0.15", "filter.merge_threshold=0.2", "filter.leakage=1.0",
                                f"filter.gallery={tmp_path / 'real.parquet'}")  # fmt: skip
    planned = pq.read_table(out / "identities.parquet")
    kept = planned.column("kept").to_pylist()
    assert 0 < sum(kept) < len(kept)  # some identities were dropped by the filter
    res = CliRunner().invoke(app, ["inspect", str(out), "--out", str(tmp_path / "r"), "--embedder", "none",
                                   "--set", "detector=none", "--json", "-"])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["leakage"]["source"] == "generate"
    assert report["leakage"]["identities"] == report["identities"] == sum(kept)
