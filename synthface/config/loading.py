"""Recipe files: YAML loading, ``--set`` overrides, the resolved config.yaml and a stable config hash."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from synthface.errors import ConfigError
from synthface.config.base import Section
from synthface.config.generate import VariationSection


R = TypeVar("R", bound=Section)


class RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader that also reads ``1e-4`` and ``5E+3`` as floats (YAML 1.2; PyYAML's 1.1
    rules need a dot, so strict recipe types would refuse them as strings)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path} (pass an existing YAML file to --recipe)")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"recipe {path} is not UTF-8 text: save it as UTF-8 YAML and retry") from None
    except RecursionError:
        raise ConfigError(f"recipe {path} is nested too deeply to be a recipe: check the file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"recipe {path} is not valid YAML{where}: fix the syntax and retry") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping of keys to values, not {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value) with the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r} is not of the form key.sub=value (example: --set identities.count=6)")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], model: type[Section], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw recipe dict, rejecting keys the recipe does not have."""
    for text in overrides:
        path, value = parse_override(text)
        cls: Any = model
        node = data
        for depth, part in enumerate(path):
            fields = getattr(cls, "model_fields", None)
            if fields is None or part not in fields:
                known = ", ".join(sorted(fields)) if fields else "none (it is a plain value)"
                dotted = ".".join(path[: depth + 1])
                raise ConfigError(f"unknown recipe key '{dotted}' in --set {text!r}; keys here: {known}")
            if depth == len(path) - 1:
                node[part] = value
            else:
                annotation = fields[part].annotation
                cls = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return data


def _format_validation(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
    if err.get("type") == "extra_forbidden":
        return f"unknown recipe key '{key}' in {source}: remove it or check its spelling"
    msg = err.get("msg", "invalid value")
    if err.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
        if key == "(root)":  # a rule across sections (GenerateRecipe's validator) names its keys itself
            return f"{msg} (in {source})"
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"recipe key '{key}' in {source}: {msg}{shown}"


def load_recipe(model: type[R], recipe: str | Path | None = None, overrides: list[str] | None = None) -> R:
    """Load a recipe of type ``model`` from an optional YAML file plus ``--set`` overrides."""
    data: dict[str, Any] = _read_yaml(Path(recipe)) if recipe else {}
    overrides = list(overrides or [])
    source = f"recipe {recipe}" if recipe else "the defaults"
    if overrides:
        source += " with --set overrides"
    try:
        model.model_validate(data)  # name errors in the file itself before overrides land
    except ValidationError as exc:
        if not overrides:
            raise ConfigError(_format_validation(exc, source)) from None
    data = apply_overrides(data, model, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from None


def config_dict(config: BaseModel) -> dict[str, Any]:
    return config.model_dump(mode="json")


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    """A stable sha256 of the resolved config (key order and float formatting independent)."""
    data = config_dict(config) if isinstance(config, BaseModel) else config
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff_keys(va, vb, dotted + "."))
        elif va != vb:
            out.append(dotted)
    return out


# settings of a generate recipe that cannot change an image: a resumed run may change them
RESUME_FREE_KEYS = ("sampling.batch_size", "sampling.overlap")


def resume_guard(config: dict[str, Any]) -> dict[str, Any]:
    """The config minus the keys a resumed run may change (they cannot change an image), and minus the
    variation section while it holds its defaults (so runs started before it existed still resume)."""
    guard = copy.deepcopy(config)
    if guard.get("variation") == VariationSection().model_dump(mode="json"):
        guard.pop("variation")
    for dotted in RESUME_FREE_KEYS:
        node = guard
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return guard


RESOLVED_HEADER = "# synthface resolved config"


def write_resolved(config: BaseModel, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config (with its hash) next to a command's output."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    data = config_dict(config)
    text = f"{RESOLVED_HEADER}, hash {config_hash(data)}\n" + yaml.safe_dump(data, sort_keys=False)
    from synthface.atomic import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def read_resolved(path: str | Path) -> dict[str, Any]:
    data = parse_yaml(Path(path).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}
