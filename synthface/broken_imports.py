"""Which package does not import, the versions found, the likely cause and the one command that fixes it.

A broken environment shows up as an exception raised while a package's module code runs: a CPU-only
torch beside a CUDA torchvision (or a torchvision built for another torch) raises ``RuntimeError:
operator torchvision::nms does not exist`` inside ``import torchvision``, often wrapped by the
package that imported it (transformers: "Could not import module 'PreTrainedModel'"), with the cause
in the middle of a long traceback. :func:`culprit` finds the package in an exception's chain (the
innermost module-level frame of one of :data:`PACKAGES`, or the module an ImportError names);
:func:`check_imports` imports each package in order and diagnoses the ones that fail; :func:`diagnose`
is the diagnosis itself (:class:`BrokenImport`). Versions are read from the packages' files, never
by importing them.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata as md
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# imported in this order (torchvision's ops need torch; transformers and diffusers import both)
PACKAGES = ("torch", "torchvision", "transformers", "diffusers", "dlib", "onnxruntime")
REQUIRED = ("torch", "torchvision", "transformers", "diffusers")  # the others come with extras
# the distributions a module comes from, when the names differ
DISTRIBUTIONS = {"dlib": ("dlib-bin", "dlib"), "onnxruntime": ("onnxruntime", "onnxruntime-gpu")}
TORCH_INDEX = "https://download.pytorch.org/whl/"
CPU_INDEX = TORCH_INDEX + "cpu"


@dataclass
class BrokenImport:
    package: str  # the module that does not import: torchvision
    error: str  # the exception, one line: "RuntimeError: operator torchvision::nms does not exist"
    versions: dict[str, str]  # what is installed of it and of torch: {"torch": "2.5.1+cpu", ...}
    cause: str  # the likely cause, in words
    fix: str  # the one command that fixes it
    affects: list[str] = field(default_factory=list)  # other packages that fail because of it

    def line(self) -> str:
        """The diagnosis as one line."""
        found = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        also = f" (so do {', '.join(self.affects)})" if self.affects else ""
        return f"{self.package} does not import{also}: {self.error}; found {found}; likely cause: {self.cause}; fix: {self.fix}"

    def pointer(self) -> str:
        """One line for the commands other than doctor: what failed, and where the diagnosis is (a
        package that is not installed at all needs no diagnosis: the line names its install)."""
        if self.versions.get(self.package) == "not installed":
            return f"{self.package} is not installed: {self.fix}"
        return f"{self.package} does not import ({self.error}): run `synthface doctor` for the cause and the fix"

    def to_dict(self) -> dict[str, Any]:
        return {"package": self.package, "error": self.error, "versions": self.versions, "cause": self.cause,
                "fix": self.fix, "affects": self.affects}  # fmt: skip


# --------------------------------------------------------------------------- where and which version


def package_dir(name: str) -> Path | None:
    """The folder (or file) ``import name`` would load, found on sys.path without importing anything."""
    try:
        spec = importlib.machinery.PathFinder.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin) if spec.origin else None


def _version_file(name: str) -> str:
    folder = package_dir(name)
    if folder is None or not folder.is_dir():
        return ""
    try:
        return (folder / "version.py").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def installed_version(name: str) -> str | None:
    """The version of package ``name`` as its files say (torch's and torchvision's version.py keep the
    local tag, ``+cpu`` / ``+cu124``, that the metadata may lack); None when it is not installed."""
    if package_dir(name) is None:
        return None
    match = re.search(r"^__version__\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", _version_file(name), re.M)
    if match:
        return match.group(1)
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "unknown version"


def torch_tag(version: str, version_file: str = "") -> str:
    """``cpu``, ``cu124``, ``rocm6.2`` or ``""`` (unknown) for a torch version (and its version.py text)."""
    local = version.partition("+")[2]
    if local:
        return local
    cuda = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([\d.]+)['\"]", version_file, re.M)
    if cuda:
        return "cu" + cuda.group(1).replace(".", "")
    if re.search(r"^cuda\s*(?::[^=]*)?=\s*None", version_file, re.M):
        return "cpu"
    return ""


def torchvision_tag(version: str, platform: str = sys.platform) -> str:
    """``cpu``, ``cu124``, ... for a torchvision version; PyPI's Linux wheels (no tag) are CUDA builds."""
    local = version.partition("+")[2]
    if local:
        return local
    return "cuda" if platform.startswith("linux") else "cpu"


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release made for ``torch_version`` (torch 2.m.p pairs with torchvision 0.(m+15).p)."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", torch_version)
    if not match or match.group(1) != "2":
        return None
    minor, patch = int(match.group(2)), int(match.group(3))
    if (minor, patch) == (0, 1):
        return "0.15.2"
    return f"0.{minor + 15}.{patch}"


def index_for(build: str) -> str:
    """The pip option that installs torch packages of ``build`` (``cpu``, ``cu124``); none for PyPI's."""
    if build == "cpu" or re.fullmatch(r"cu\d+|rocm[\d.]+", build):
        return f" --index-url {TORCH_INDEX}{build}"
    return ""


def requirement(dist: str) -> str:
    """synthface's own version range for ``dist`` ("torch<2.15,>=2.4"), else the bare name."""
    try:
        reqs = md.requires("synthface") or []
    except md.PackageNotFoundError:
        reqs = []
    key = dist.lower().replace("_", "-")
    for req in reqs:
        spec = req.split(";")[0].strip()
        name = re.split(r"[<>=!~ (\[]", spec, maxsplit=1)[0].lower().replace("_", "-")
        if name == key:
            return spec.replace(" ", "").replace("(", "").replace(")", "")
    return dist


# --------------------------------------------------------------------------- the diagnosis


def diagnose(package: str, error: str, versions: dict[str, str | None], builds: dict[str, str],
             other: str | None = None) -> tuple[str, str]:  # fmt: skip
    """(likely cause, the one fixing command) for ``package`` failing with ``error``.

    ``versions``: the installed versions of the package and torch (None: not installed);
    ``builds``: torch's and torchvision's builds (:func:`torch_tag`, :func:`torchvision_tag`);
    ``other``: the module an ImportError names when it is not ``package`` (a dependency out of step).
    """
    dist = DISTRIBUTIONS.get(package, (package,))[0]
    spec = requirement(dist)
    if versions.get(package) is None:
        return f"{package} is not installed", f'pip install "{spec}"'
    torch_v = versions.get("torch") or ""
    torch_b = builds.get("torch", "")
    if package == "torchvision" or "torchvision::" in error:
        tv = versions.get("torchvision") or ""
        tv_b = builds.get("torchvision", "")
        want = matching_torchvision(torch_v)
        fix = f"pip install --force-reinstall --no-deps{index_for(torch_b)} torchvision=={want or tv.partition('+')[0]}"
        if torch_b == "cpu" and tv_b != "cpu":
            cause = f"a CPU-only torch ({torch_v}) beside a CUDA torchvision ({tv}): both must come from the same index"
        elif want and tv.partition("+")[0] != want:
            cause = f"torchvision {tv} is not the release made for torch {torch_v} (that is {want})"
        elif torch_b.startswith("cu") and tv_b == "cpu":
            cause = f"a CUDA torch ({torch_v}) beside a CPU-only torchvision ({tv}): both must come from the same index"
        else:
            cause = f"torchvision's compiled operators do not load with torch {torch_v} (a partial or mixed install)"
        return cause, fix
    if package == "torch":
        pin = f"torch=={torch_v.partition('+')[0]}" if torch_v else f'"{spec}"'
        return (
            "torch itself does not load (a partial install, or a CUDA build whose libraries are missing)",
            f"pip install --force-reinstall --no-deps{index_for(torch_b)} {pin}",
        )
    if other and other.split(".")[0] not in PACKAGES:
        dep = other.split(".")[0].replace("_", "-")
        return (
            f"{package} {versions[package]} and the installed {dep} do not match (versions out of step)",
            f'pip install --upgrade "{spec}" "{requirement(dep)}"',
        )
    return (
        f"{package} {versions[package]} does not work with the packages beside it (versions that do not match "
        f"synthface's range {spec}, or a partial install)",
        f'pip install --upgrade --force-reinstall --no-deps "{spec}"',
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions behind it (causes, contexts), outermost first."""
    out: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        out.append(current)
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return out


def _package_of(filename: str, roots: dict[str, Path]) -> str | None:
    path = Path(filename)
    for name, root in roots.items():
        if path == root or root in path.parents:
            return name
    return None


def culprit(exc: BaseException) -> BrokenImport | None:
    """The package whose import raised ``exc`` (or an exception behind it), diagnosed; None when
    ``exc`` did not come from importing one of :data:`PACKAGES`."""
    roots = {}
    for name in PACKAGES:
        folder = package_dir(name)
        if folder is not None:
            roots[name] = folder
    for err in reversed(_chain(exc)):  # the innermost first: the cause, not the wrapper
        found = None
        tb = err.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_name == "<module>":
                found = _package_of(code.co_filename, roots) or found
            tb = tb.tb_next
        named = getattr(err, "name", None) if isinstance(err, ImportError) else None
        if found is None and named and named.split(".")[0] in PACKAGES:
            found = named.split(".")[0]
        if found is not None:
            other = named if named and named.split(".")[0] != found else None
            return describe(found, err, other)
    return None


def describe(package: str, err: BaseException, other: str | None = None) -> BrokenImport:
    """The :class:`BrokenImport` of ``package`` failing with ``err``."""
    message = " ".join(str(err).split()) or type(err).__name__
    error = f"{type(err).__name__}: {message}"
    if len(error) > 240:
        error = error[:237] + "..."
    versions = {n: installed_version(n) for n in dict.fromkeys((package, "torch"))}
    if "torchvision::" in message:
        versions["torchvision"] = installed_version("torchvision")
    builds = {"torch": torch_tag(versions["torch"] or "", _version_file("torch"))}
    if versions.get("torchvision"):
        builds["torchvision"] = torchvision_tag(versions["torchvision"] or "")
    cause, fix = diagnose(package, message, versions, builds, other)
    shown = {k: v or "not installed" for k, v in versions.items()}
    return BrokenImport(package, error, shown, cause, fix)


def check_imports(packages: tuple[str, ...] = PACKAGES) -> list[BrokenImport]:
    """Import each package in order; one :class:`BrokenImport` per package that is the cause of a
    failure (the packages failing because of it in ``affects``). A package that is not installed
    counts only when synthface requires it (:data:`REQUIRED`); dlib and onnxruntime come with extras."""
    broken: dict[str, BrokenImport] = {}
    for name in packages:
        if package_dir(name) is None:
            if name in REQUIRED:
                broken[name] = describe(name, ModuleNotFoundError(f"No module named '{name}'", name=name))
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure is what this reports
            found = culprit(exc) or describe(name, exc)
            if found.package in broken:
                if found.package != name:
                    broken[found.package].affects.append(name)
                continue
            if found.package != name:
                found.affects.append(name)
            broken[found.package] = found
    return list(broken.values())
