"""`synthface evaluate` end to end on generated identities, its benchmark loader, report files and the LFW split."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import LFW_IMAGES, lfw_missing
from test_recognition_data import make_pairs, render_identities, write_image_folder, write_shard
from typer.testing import CliRunner

from synthface.cli.app import app
from synthface.errors import InputError
from synthface.recognition.benchmarks import load_benchmark, split_spec
from synthface.recognition.protocols import read_pairs
from synthface.recognition.protocols.binfile import write_bin
from synthface.recognition.report import write_report
from synthface.recognition.verification import evaluate_scores

ROOT = Path(__file__).resolve().parents[1]
LFW = LFW_IMAGES
TINY = [
    "recognizer.backbone=iresnet-mini",
    "recognizer.input_size=32",
    "recognizer.embedding_dim=64",
    "recognizer.loss=arcface",
    "recognizer.margin=0.2",
    "recognizer.scale=16",
    "train.batch_size=32",
    "train.lr=0.05",
    "train.max_steps=24",
    "train.milestones=[1000]",
    "train.device=cpu",
    "train.workers=0",
    "train.threads=1",
    "train.log_every=5",
    "bench.aligned=true",
]


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _sets(args: list[str]) -> list[str]:
    return [x for s in args for x in ("--set", s)]


def test_bin_round_trips_through_the_bench_loader(tmp_path):
    samples = render_identities(4, 3, seed=7)
    samples = [(label, np.asarray(Image.fromarray(img).resize((112, 112)))) for label, img in samples]
    images, issame = make_pairs(samples, 20)
    path = write_bin(tmp_path / "tiny.bin", images, issame)
    assert split_spec(str(path)) == (path, None)
    bench = load_benchmark("tiny", str(path))  # 112x112 images: auto-detected as aligned, no detector
    assert bench.aligned_input and not bench.failed.any()
    assert bench.protocol.issame.tolist() == issame and len(bench.protocol) == 20
    assert bench.crops.shape == (40, 3, 112, 112)
    first = np.array(Image.open(io.BytesIO(images[0])).convert("RGB"))
    assert torch.equal(bench.crops[0], torch.from_numpy(first).permute(2, 0, 1))


def test_pairs_spec_with_png_folder(tmp_path):
    write_image_folder(tmp_path / "img", render_identities(3, 2))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\nid0000\t1\t2\nid0001\t1\t2\nid0000\t1\tid0001\t2\nid0002\t1\tid0001\t1\n")
    bench = load_benchmark("p", f"{pairs}:{tmp_path / 'img'}", aligned=True, folds=2)
    assert len(bench.protocol) == 4 and bench.crops.shape[1:] == (3, 112, 112)
    with pytest.raises(InputError):
        split_spec(str(tmp_path / "nope.txt") + ":" + str(tmp_path))


def test_report_files_have_the_documented_keys(tmp_path):
    rng = np.random.default_rng(0)
    issame = np.arange(200) % 2 == 0
    results = {}
    for name, sep in (("real", 2.0), ("synthetic", 1.0)):
        scores = rng.normal(size=200) + sep * issame
        results[name] = {"lfw": evaluate_scores(scores, issame), "cfp": evaluate_scores(scores[::-1], issame[::-1])}
    history = {"real": [{"step": 1, "loss": 3.0, "accuracy": 0.1}, {"step": 2, "loss": 2.0, "accuracy": 0.3}]}
    report = write_report(tmp_path, results, {"real": {"steps": 2, "wall_s": 1.0}}, history)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert {"training_sets", "benchmarks", "results", "average", "training", "plots"} <= set(data)
    assert data["training_sets"] == ["real", "synthetic"] and data["benchmarks"] == ["lfw", "cfp"]
    for s in ("real", "synthetic"):
        for b in ("lfw", "cfp"):
            assert {"accuracy", "accuracy_std", "tar_at_far_1e-3", "threshold", "pairs", "auc"} <= set(data["results"][s][b])
        avg = data["average"][s]
        assert avg["accuracy"] == pytest.approx(np.mean([data["results"][s][b]["accuracy"] for b in ("lfw", "cfp")]))
        assert "tar_at_far_1e-3" in avg
    assert data["average"]["real"]["accuracy"] > data["average"]["synthetic"]["accuracy"]
    for png in list(data["plots"]["roc"].values()) + [data["plots"]["training"]]:
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "report.md").read_text()
    assert "| real |" in md and "| synthetic |" in md and "TAR@1e-3" in md


def test_evaluate_cli_trains_each_set_and_beats_the_untrained_baseline(tmp_path):
    train = render_identities(12, 10, seed=0)
    write_image_folder(tmp_path / "folder", train)
    write_shard(tmp_path / "synth", train)
    held = render_identities(12, 14, seed=0)
    by_id: dict[int, list] = {}
    for label, img in held:
        by_id.setdefault(label, []).append(img)
    test = [(label, img) for label, imgs in by_id.items() for img in imgs[10:]]  # unseen images
    images, issame = make_pairs(test, 200)
    write_bin(tmp_path / "own.bin", images, issame)
    runner = CliRunner()
    args = [
        "evaluate",
        "--train",
        f"folder={tmp_path / 'folder'}",
        "--train",
        f"shards={tmp_path / 'synth'}",
        "--bench",
        f"own={tmp_path / 'own.bin'}",
        "--out",
        str(tmp_path / "out"),
        "--json",
        str(tmp_path / "s.json"),
    ]
    res = runner.invoke(app, args + _sets(TINY))
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["training_sets"] == ["folder", "shards"]
    for name in ("folder", "shards"):
        assert summary["results"][name]["own"]["accuracy"] > 0.75  # chance is 0.5
        assert summary["training"][name]["steps"] == 24 and summary["training"][name]["identities"] == 12
        assert (tmp_path / "out" / "runs" / name / "recognizer.pt").is_file()
    assert (tmp_path / "out" / "config.yaml").is_file() and (tmp_path / "out" / "report.md").is_file()

    # the untrained backbone (max_steps=0) is the floor the trained one must clear
    untrained = runner.invoke(
        app,
        [
            "evaluate",
            "--train",
            f"folder={tmp_path / 'folder'}",
            "--bench",
            f"own={tmp_path / 'own.bin'}",
            "--out",
            str(tmp_path / "untrained"),
            "--json",
            "-",
        ]
        + _sets(TINY + ["train.max_steps=0"]),
    )
    assert untrained.exit_code == 0, untrained.output
    floor = json.loads(untrained.stdout[untrained.stdout.index("{") :])["results"]["folder"]["own"]["accuracy"]
    assert summary["results"]["folder"]["own"]["accuracy"] > floor

    # re-running without --resume refuses; --resume of a finished run re-tests without training
    again = runner.invoke(app, args + _sets(TINY))
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, args + ["--resume"] + _sets(TINY))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tmp_path / "s.json").read_text())["results"] == summary["results"]

    # --bench-only re-tests a saved recognizer
    only = runner.invoke(
        app,
        [
            "evaluate",
            "--bench-only",
            str(tmp_path / "out" / "runs" / "folder" / "recognizer.pt"),
            "--bench",
            f"own={tmp_path / 'own.bin'}",
            "--out",
            str(tmp_path / "recheck"),
            "--json",
            str(tmp_path / "r.json"),
        ]
        + _sets(["bench.aligned=true"]),
    )
    assert only.exit_code == 0, only.output
    recheck = json.loads((tmp_path / "r.json").read_text())["results"]["folder"]["own"]["accuracy"]
    assert recheck == pytest.approx(summary["results"]["folder"]["own"]["accuracy"])


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    cases = [
        ["evaluate", "--out", str(tmp_path), "--bench", "x=nothing.bin"],  # no --train
        ["evaluate", "--out", str(tmp_path), "--train", "bad name=/x", "--bench", "b=x.bin"],
        ["evaluate", "--out", str(tmp_path), "--train", f"a={tmp_path / 'missing'}", "--bench", f"b={tmp_path / 'x.bin'}"],
        ["evaluate", "--out", str(tmp_path), "--train", "a=/x", "--bench", "b=x.bin", "--set", "recognizer.backbone=nope"],
    ]
    for args in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "error:" in res.output and "Traceback" not in res.output


def test_help_has_a_worked_example():
    res = CliRunner().invoke(app, ["evaluate", "--help"])
    assert res.exit_code == 0 and "Example" in res.output and "synthface evaluate" in res.output


@pytest.mark.lfw
@pytest.mark.skipif(not LFW.is_dir(), reason=lfw_missing("real LFW images", LFW.parent))
def test_lfw_split_is_disjoint_and_pairs_use_only_test_people():
    split = json.loads((ROOT / "bench" / "data" / "lfw_split.json").read_text())
    train, test = set(split["train"]), set(split["test"])
    assert split["seed"] == 0 and not train & test
    assert train | test == {p.name for p in LFW.iterdir() if p.is_dir()}
    protocol = read_pairs(ROOT / "bench" / "data" / "lfw_test_pairs.txt", LFW)
    assert len(protocol) == 6000 and protocol.same_pairs == 3000 and protocol.n_folds == 10
    people = {p.parent.name for p in protocol.paths}
    assert people <= test
    fold_people = [{protocol.paths[i].parent.name for i in protocol.pairs[protocol.folds == f].ravel()} for f in range(10)]
    assert all(not a & b for i, a in enumerate(fold_people) for b in fold_people[i + 1 :])  # people-disjoint folds
