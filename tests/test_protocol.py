"""The synthetic-versus-real protocol (synthface.synthetic_vs_real, run by bench/protocol_lfw.py): step
records, skipping, invalidation and interrupted attempts.

The steps' commands are replaced by a fake that writes each step's outputs (the commands
themselves have their own tests); what is tested here is the driver's bookkeeping.
"""

from __future__ import annotations

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
    assert calls == protocol.STEPS and set(first.values()) == {"ran"}
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


def test_a_pretrained_generator_is_checked_and_fingerprinted_by_its_weights(tmp_path, protocol):
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "synthface.json").write_text("{}")
    (model / "unet" / "weights.safetensors").write_bytes(b"a")
    cfg = yaml.safe_load((ROOT / "recipes" / "protocol-lfw-latent.yaml").read_text())
    cfg["generator"]["model"] = str(model)
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
