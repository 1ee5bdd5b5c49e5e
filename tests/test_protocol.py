"""The synthetic-versus-real protocol (synthface.synthetic_vs_real, run by bench/protocol_lfw.py): step
records, skipping, invalidation and interrupted attempts.

The steps' commands are replaced by a fake that writes each step's outputs (the commands
themselves have their own tests); what is tested here is the driver's bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from synthface import synthetic_vs_real

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def protocol():
    return synthetic_vs_real


@pytest.fixture()
def setup(tmp_path, protocol, monkeypatch):
    (tmp_path / "lfw" / "lfw-deepfunneled").mkdir(parents=True)
    evaluate = tmp_path / "evaluate.yaml"
    evaluate.write_text("seed: 0\n")
    cfg = yaml.safe_load((ROOT / "recipes" / "protocol-lfw-cpu.yaml").read_text())
    cfg["lfw"] = str(tmp_path / "lfw")
    cfg["evaluate"] = {"recipe": str(evaluate), "set": {"train.epochs": 1}}
    work = tmp_path / "work"
    calls: list[str] = []
    fail: set[str] = set()

    def fake_run(argv, cwd=None, env=None):
        step = next(s for s in protocol.build_steps(cfg, work, ROOT).values() if s.argv == argv)
        calls.append(step.name)
        if step.name in fail:
            return subprocess.CompletedProcess(argv, 1)
        if step.name == "generator":
            (work / "cache").mkdir(parents=True, exist_ok=True)
            (work / "cache" / "faces-abc.parquet").write_bytes(b"")
        for out in step.outputs:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("{}")
        return subprocess.CompletedProcess(argv, 0)

    def fake_report(cfg_, work_, records, root):
        (work_ / "report.md").write_text("report")
        (work_ / "report.json").write_text("{}")
        calls.append("report")

    monkeypatch.setattr(protocol.subprocess, "run", fake_run)
    monkeypatch.setattr(protocol, "make_report", fake_report)
    return cfg, work, calls, fail, evaluate


def test_second_run_recomputes_nothing(protocol, setup):
    cfg, work, calls, _, _ = setup
    first = protocol.run(cfg, work, None, lambda m: None, ROOT)
    assert calls == protocol.active_steps(cfg) and set(first.values()) == {"ran"}
    assert "evaluate-mixed" not in calls and "scale-subsets" not in first  # optional steps are off unless asked for
    generate_argv = json.loads((work / "steps" / "generate.json").read_text())["argv"]
    assert f"identities.gallery={work / 'cache' / 'faces-abc.parquet'}" in generate_argv  # the generator's own cache
    calls.clear()
    second = protocol.run(cfg, work, None, lambda m: None, ROOT)
    assert calls == [] and set(second.values()) == {"skipped"}


def test_changed_recipe_reruns_that_step_and_what_follows(protocol, setup):
    cfg, work, calls, _, evaluate = setup
    protocol.run(cfg, work, None, lambda m: None, ROOT)
    calls.clear()
    evaluate.write_text("seed: 1\n")
    outcome = protocol.run(cfg, work, None, lambda m: None, ROOT)
    assert calls == ["evaluate-real", "evaluate-synthetic", "report"]
    assert outcome["generator"] == "skipped" and outcome["generate"] == "skipped"


def test_missing_output_reruns_the_step(protocol, setup):
    cfg, work, calls, _, _ = setup
    protocol.run(cfg, work, None, lambda m: None, ROOT)
    calls.clear()
    (work / "inspect.json").unlink()
    protocol.run(cfg, work, None, lambda m: None, ROOT)
    assert calls == ["inspect"]  # inspect's record is rewritten with the same fingerprint: report stays valid


def test_interrupted_step_fails_then_resumes_and_counts_its_time(protocol, setup):
    cfg, work, calls, fail, _ = setup
    fail.add("generator")
    with pytest.raises(protocol.ProtocolError, match="step generator failed .exit 1.; fix the cause and rerun"):
        protocol.run(cfg, work, None, lambda m: None, ROOT)
    assert not (work / "steps" / "generator.json").exists()
    assert len(json.loads((work / "steps" / "generator.attempts.json").read_text())["seconds"]) == 1
    fail.clear()
    calls.clear()
    protocol.run(cfg, work, None, lambda m: None, ROOT)
    assert calls[:2] == ["generator", "evaluate-real"] and "align" not in calls
    record = json.loads((work / "steps" / "generator.json").read_text())
    assert len(record["interrupted_attempts"]) == 1 and record["seconds"] >= record["interrupted_attempts"][0]
    assert not (work / "steps" / "generator.attempts.json").exists()


def test_a_step_needs_its_inputs_done(protocol, setup):
    cfg, work, _, _, _ = setup
    with pytest.raises(protocol.ProtocolError, match="step generate needs step generator first"):
        protocol.run(cfg, work, ["generate"], lambda m: None, ROOT)


def test_protocol_recipe_sections_are_valid_recipes():
    from synthface.config import EvaluateRecipe, GenerateRecipe, TrainRecipe, load_recipe

    cfg = yaml.safe_load((ROOT / "recipes" / "protocol-lfw-cpu.yaml").read_text())
    for key, model in (("generator", TrainRecipe), ("generate", GenerateRecipe), ("evaluate", EvaluateRecipe)):
        section = cfg[key]
        sets = [f"{k}={v}" for k, v in (section.get("set") or {}).items()]
        load_recipe(model, ROOT / section["recipe"], sets)


def pretrained(tmp_path: Path, weights: str) -> tuple[dict, Path]:
    """The latent protocol recipe naming a tiny model folder (synthface.json, unet/WEIGHTS)."""
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "synthface.json").write_text("{}")
    (model / "unet" / weights).write_bytes(b"a")
    cfg = yaml.safe_load((ROOT / "recipes" / "protocol-lfw-latent.yaml").read_text())
    cfg["generator"]["model"] = str(model)
    return cfg, model


def test_a_pretrained_generator_is_checked_and_fingerprinted_by_its_weights(tmp_path, protocol):
    cfg, model = pretrained(tmp_path, "weights.safetensors")
    work = tmp_path / "work"
    steps = protocol.build_steps(cfg, work, ROOT)
    gen, generate = steps["generator"], steps["generate"]
    assert "load_model" in gen.argv[2] and gen.argv[-1] == str(model) and gen.outputs == [model / "synthface.json"]
    argv = generate.argv
    assert argv[argv.index("--model") + 1] == str(model)
    assert not any(a.startswith("identities.gallery=") for a in argv)  # the model carries its gallery
    assert "filter.leakage=1.0" not in argv and "filter.anchor=centre" in argv
    before = protocol.fingerprint(gen, {"align": {"fingerprint": "x"}})
    (model / "unet" / "weights.safetensors").write_bytes(b"b")  # other weights: the step and everything after it rerun
    assert protocol.fingerprint(protocol.build_steps(cfg, work, ROOT)["generator"], {"align": {"fingerprint": "x"}}) != before


def test_lfw_comes_from_synthface_lfw_when_set(tmp_path, protocol, monkeypatch):
    cfg = yaml.safe_load((ROOT / "recipes" / "protocol-lfw-cpu.yaml").read_text())
    monkeypatch.setenv("SYNTHFACE_LFW", str(tmp_path / "my-lfw"))
    align = protocol.build_steps(cfg, tmp_path / "work", ROOT)["align"]
    assert str(tmp_path / "my-lfw" / "lfw-deepfunneled") in align.argv
    monkeypatch.delenv("SYNTHFACE_LFW")
    assert (
        str((ROOT / cfg["lfw"]).resolve() / "lfw-deepfunneled")
        in protocol.build_steps(cfg, tmp_path / "work", ROOT)["align"].argv
    )


# --------------------------------------------------------------------------- real + synthetic, the scaling curve


@pytest.fixture()
def with_arms(setup, protocol, monkeypatch):
    """The optional steps on; the fake generate step writes a real tiny synthetic set (3 identities x 3 images)."""
    from test_recognition_data import render_identities, write_shard

    cfg, work, calls, fail, evaluate = setup
    cfg["mixed"] = True
    cfg["scale"] = {"identities": [2, 3], "images_per_identity": [1, 3], "seed": 0}
    fake_run = protocol.subprocess.run

    def run_and_generate(argv, cwd=None, env=None):
        done = fake_run(argv, cwd=cwd, env=env)
        if calls[-1] == "generate":
            write_shard(work / "synthetic", render_identities(3, 3, seed=4))
        return done

    monkeypatch.setattr(protocol.subprocess, "run", run_and_generate)
    return setup


def test_mixed_and_scale_steps_run_and_resume(protocol, with_arms):
    cfg, work, calls, _, evaluate = with_arms
    outcome = protocol.run(cfg, work, None, lambda m: None, ROOT)
    assert list(outcome) == protocol.STEPS and set(outcome.values()) == {"ran"}
    assert calls.index("evaluate-mixed") < calls.index("evaluate-scale") < calls.index("report")
    mixed = json.loads((work / "steps" / "evaluate-mixed.json").read_text())["argv"]
    split = ROOT / cfg["split"]
    assert f"mixed={work / 'lfw-aligned'}+{work / 'synthetic'}" in mixed and f"mixed={split}:train" in mixed
    assert mixed[mixed.index("--recipe") + 1] == str(evaluate)  # the same recognizer recipe as both arms
    manifest = json.loads((work / "scale" / "subsets.json").read_text())
    subsets = manifest["subsets"]
    assert [(n, s["identities"], s["images"]) for n, s in subsets.items()] == [
        ("ids2", 2, 6), ("ids3", 3, 9), ("per1", 3, 3), ("per3", 3, 9)
    ]  # fmt: skip
    # the whole set's rows are trained once, by evaluate-synthetic; the same rows again: trained once
    assert subsets["ids3"]["same_as"] == subsets["per3"]["same_as"] == "synthetic"
    assert not (work / "scale" / "ids3").exists() and not (work / "scale" / "per3").exists()
    scale = json.loads((work / "steps" / "evaluate-scale.json").read_text())["argv"]
    trains = [scale[i + 1] for i, a in enumerate(scale) if a == "--train"]
    assert trains == [f"{n}={work / 'scale' / n}" for n in ("ids2", "per1")]

    calls.clear()
    assert set(protocol.run(cfg, work, None, lambda m: None, ROOT).values()) == {"skipped"} and calls == []
    cfg["scale"]["seed"] = 1  # other subsets: they, their evaluation and the report rerun, nothing else
    outcome = protocol.run(cfg, work, None, lambda m: None, ROOT)
    assert [n for n, o in outcome.items() if o == "ran"] == ["scale-subsets", "evaluate-scale", "report"]
    cfg["scale"] = {"identities": [3]}  # only the whole set: evaluate-synthetic's recognizer is the curve, none trained
    calls.clear()
    outcome = protocol.run(cfg, work, None, lambda m: None, ROOT)
    assert [n for n, o in outcome.items() if o == "ran"] == ["scale-subsets", "evaluate-scale", "report"]
    assert "evaluate-scale" not in calls and json.loads((work / "eval-scale" / "report.json").read_text()) == {"results": {}}
    assert json.loads((work / "scale" / "subsets.json").read_text())["subsets"]["ids3"]["same_as"] == "synthetic"


def test_optional_steps_are_refused_when_off_and_bad_scale_settings_before_running(protocol, tmp_path):
    recipe = tmp_path / "protocol.yaml"
    cfg = yaml.safe_load((ROOT / "recipes" / "protocol-lfw-cpu.yaml").read_text())
    (tmp_path / "lfw" / "lfw-deepfunneled").mkdir(parents=True)
    cfg["lfw"] = str(tmp_path / "lfw")
    recipe.write_text(yaml.safe_dump(cfg))
    with pytest.raises(protocol.ProtocolError, match="step evaluate-mixed is off .* add `mixed:`"):
        protocol.run_recipe(recipe, tmp_path / "work", ["evaluate-mixed"], lambda m: None, ROOT)
    for scale, message in (({"identities": [0]}, "positive whole numbers"), ({"seed": 1}, "names no subset"), ([3], "mapping")):
        recipe.write_text(yaml.safe_dump({**cfg, "scale": scale}))
        with pytest.raises(protocol.ProtocolError, match=message):
            protocol.run_recipe(recipe, tmp_path / "work", ["align"], lambda m: None, ROOT)
    assert not (tmp_path / "work" / "steps").exists()


def test_report_has_the_scale_fields(protocol, tmp_path, monkeypatch):
    from synthface.fingerprint import file_sha256

    cfg, model = pretrained(tmp_path, "w.bin")
    cfg["mixed"], cfg["scale"] = True, {"identities": [2], "images_per_identity": [1, 3]}
    work = tmp_path / "work"

    def write(rel: str, data: dict) -> None:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(json.dumps(data))

    def evaluation(rel: str, sets: dict[str, tuple[float, float, int, int]]) -> None:
        write(rel, {"benchmarks": ["lfw-test"],
                    "results": {n: {"lfw-test": {"accuracy": a, "accuracy_std": s, "tar_at_far_1e-3": a / 4, "pairs": 6000}}
                                for n, (a, s, _, _) in sets.items()},
                    "training": {n: {"identities": i, "images": m} for n, (_, _, i, m) in sets.items()}})  # fmt: skip

    evaluation("eval-real/report.json", {"real": (0.80, 0.02, 838, 4900)})
    evaluation("eval-synthetic/report.json", {"synthetic": (0.70, 0.03, 838, 5028)})
    evaluation("eval-mixed/report.json", {"mixed": (0.83, 0.02, 1676, 9928)})
    evaluation("eval-scale/report.json", {"ids2": (0.6, 0.05, 2, 12), "per1": (0.62, 0.04, 838, 838)})
    info = {"images_per_identity": {"mean": 6.0}, "rows_sha256": "r", "identities_requested": 2, "per_identity_requested": None}
    write("scale/subsets.json", {"seed": 0, "subsets": {
        "ids2": {**info, "identities": 2, "images": 12},
        "per1": {**info, "identities": 838, "images": 838, "images_per_identity": {"mean": 1.0}, "identities_requested": None,
                 "per_identity_requested": 1},
        "per3": {**info, "identities": 838, "images": 2514, "images_per_identity": {"mean": 3.0}, "identities_requested": None,
                 "per_identity_requested": 3, "same_as": "per1"},
        "per6": {**info, "identities": 838, "images": 5028, "identities_requested": None, "per_identity_requested": 6,
                 "same_as": "synthetic"}}})  # fmt: skip
    write("generate.json", {"images": 5028})
    write("inspect.json", {"acceptance": {"passed": 1, "candidates": 2, "rate": 0.5}, "identities": 838,
                           "identities_planned": 900, "images_per_identity": {"mean": 6.0, "min": 2}})  # fmt: skip
    monkeypatch.setattr(protocol, "real_contact_sheet", lambda *a, **k: None)
    records = {"evaluate-mixed": {"argv": ["python", "-m", "synthface", "evaluate", "--train", "mixed=a+b"], "seconds": 3}}
    protocol.make_report(cfg, work, records, ROOT)

    report = json.loads((work / "report.json").read_text())
    assert report["real_accuracy"] == 0.80
    assert report["equal_size"]["accuracy"] == 0.70 and report["equal_size"]["ratio"] == pytest.approx(0.70 / 0.80)
    assert (report["equal_size"]["identities"], report["equal_size"]["images"]) == (838, 5028)
    assert report["mixed"]["accuracy"] == 0.83 and report["mixed"]["accuracy_std"] == 0.02
    assert report["mixed"]["minus_real"] == pytest.approx(0.03) and report["mixed"]["above_fold_std"] is True
    assert [(c["subset"], c["identities"], c["images_per_identity"], c["accuracy"], c["accuracy_std"]) for c in report["curve"]] == [
        ("ids2", 2, 6.0, 0.6, 0.05), ("per1", 838, 1.0, 0.62, 0.04), ("per3", 838, 3.0, 0.62, 0.04),
        ("per6", 838, 6.0, 0.70, 0.03),  # the whole set: evaluate-synthetic's recognizer
    ]  # fmt: skip
    manual = hashlib.sha256()
    for rel in ("synthface.json", "unet/w.bin"):
        manual.update(f"{rel}\0{file_sha256(model / rel)}\n".encode())
    assert report["model_sha256"] == manual.hexdigest()
    assert report["commands"] == {"evaluate-mixed": records["evaluate-mixed"]["argv"]}
    assert (work / "scale_curve.png").read_bytes()[:4] == b"\x89PNG"
    md = (work / "report.md").read_text()
    assert "| real + synthetic | 83.00 ± 2.00 |" in md and "+3.00 points" in md and "| per1 | 838 | 838 | 1.00 |" in md
    assert report["model_sha256"] in md
    assert report["equal_size"]["set"] == "synthetic"

    # a set larger than the real arm: the curve's point with the real arm's identities is the equal-size arm
    evaluation("eval-synthetic/report.json", {"synthetic": (0.74, 0.02, 900, 5400)})
    evaluation("eval-scale/report.json", {"ids838": (0.72, 0.03, 838, 5028)})
    write("scale/subsets.json", {"seed": 0, "subsets": {"ids838": {**info, "identities": 838, "images": 5028,
                                                                   "identities_requested": 838}}})  # fmt: skip
    protocol.make_report(cfg, work, records, ROOT)
    report = json.loads((work / "report.json").read_text())
    assert report["synthetic"]["identities"] == 900 and report["ratio"] == pytest.approx(0.74 / 0.80)
    assert report["equal_size"]["set"] == "ids838" and report["equal_size"]["identities"] == 838
    assert report["equal_size"]["accuracy"] == 0.72 and report["equal_size"]["ratio"] == pytest.approx(0.72 / 0.80)
    assert "at the real arm's size (ids838, 838 identities): **0.900**" in (work / "report.md").read_text()


def test_an_in_process_step_that_fails_is_a_protocol_error(protocol, setup):
    cfg, work, _, _, _ = setup
    cfg["scale"] = {"identities": [2]}  # the fake generate step writes no shards to take subsets of
    with pytest.raises(protocol.ProtocolError, match="step scale-subsets failed: no committed shards"):
        protocol.run(cfg, work, None, lambda m: None, ROOT)
    assert len(json.loads((work / "steps" / "scale-subsets.attempts.json").read_text())["seconds"]) == 1
