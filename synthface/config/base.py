"""The base of every recipe section (strict, finite, unknown keys refused) and the types sections share."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, model_serializer


# The embedder every command uses unless told otherwise: its weights ship with the install
# (`pip install 'synthface[dlib]'`), so each default works offline.
DEFAULT_EMBEDDER = "dlib"


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are validated on assignment.

    Strict: a value must already have its key's type (``count: true`` or ``steps: "3"`` is an error,
    not 1 or 3; an integer is accepted for a float), and every float must be finite (no inf, nan,
    or 1e400).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), strict=True, allow_inf_nan=False)

    # keys added after recipes were written: left out of the dumped recipe (its config.yaml and its
    # hash) while they hold their defaults, so runs started before they existed keep their hash and resume
    omit_when_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: Any) -> Any:
        data = handler(self)
        fields = type(self).model_fields
        for name in self.omit_when_default:
            if isinstance(data, dict) and getattr(self, name) == fields[name].get_default(call_default_factory=True):
                data.pop(name, None)
        return data


def one_file(value: str | None) -> str | None:
    """A path with glob characters (``runs/gen/cache/faces-*.parquet``) that names no existing file is
    expanded here, relative to the working directory: it must match exactly one path."""
    if not value or not any(c in value for c in "*?[") or Path(value).expanduser().exists():
        return value
    matches = sorted(glob.glob(str(Path(value).expanduser())))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(f"no file matches {value}")
    raise ValueError(
        f"{value} matches {len(matches)} files ({', '.join(matches[:3])}{', ...' if len(matches) > 3 else ''}): name one"
    )


# A file or folder key that accepts a glob matching exactly one path (see one_file).
GlobPath = Annotated[str | None, AfterValidator(one_file)]
