"""The write rule: synthface writes files only through synthface/atomic.py.

Every other module of the package writes through its helpers (atomic_file, atomic_write_text/bytes/json,
atomic_save_npy, atomic_torch_save, atomic_copy, copy_folder, staged_folder, replace_folder,
append_text, move_into_place). This check reads the package's source (no import) and lists each
direct write elsewhere:

- ``open(...)`` / ``X.open(...)`` / ``os.fdopen`` with a mode that writes (w, a, x or +);
- ``.write_text`` / ``.write_bytes``; ``Path.replace`` / ``Path.rename`` (one target argument);
- ``os.replace`` / ``os.rename`` / ``os.renames``; ``shutil.copy*`` / ``shutil.move``;
- ``np.save*`` / ``torch.save`` / ``pq.write_table`` / ``.savefig`` to anything but a handle bound by
  ``with atomic_file(...) as handle`` (or an in-memory buffer) in the same function.

Known exceptions are listed in KNOWN, each with its reason; an entry whose file no longer writes
directly is itself an error, so the list only shrinks.

    python tools/check_writes.py     # exit 1 and one line per direct write when the rule is broken
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "synthface"
OWNER = "synthface/atomic.py"

# file (relative to the repository root) -> why it may still write directly
KNOWN: dict[str, str] = {
    "synthface/recipe_reference.py": "writes docs/recipes.md, a tracked source file, for maintainers (not a run output)",
    "synthface/generator/arc2face_testing.py": "builds throw-away tiny test models in a temp folder (tests only)",
    "synthface/needs.py": "resumable download: appends to a .part file and renames it; to move onto atomic.py",
    "synthface/dataset/export.py": "WebDataset/RecordIO writers stream to temp files and rename; to move onto atomic.py",
    "synthface/dataset/html_report.py": "inspect's HTML report; to move onto atomic.py",
}

_WRITE_METHODS = {"write_text", "write_bytes"}
_MOVES = {"replace", "rename"}
_OS_MOVES = {"replace", "rename", "renames"}
_SHUTIL = {"copy", "copy2", "copyfile", "copytree", "move"}
_SAVERS = {("np", "save"), ("np", "savez"), ("np", "savez_compressed"), ("numpy", "save"), ("torch", "save")}
_HANDLE_MAKERS = {"atomic_file", "BytesIO", "StringIO", "BufferOutputStream"}
_MEMORY = {"BytesIO", "StringIO", "BufferOutputStream"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _writes_mode(value: ast.AST) -> bool:
    if isinstance(value, ast.IfExp):  # "ab" if done else "wb"
        return _writes_mode(value.body) or _writes_mode(value.orelse)
    return isinstance(value, ast.Constant) and isinstance(value.value, str) and any(c in value.value for c in "wax+")


class _Finder(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.handles: list[set[str]] = [set()]

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.handles.append(set())
        self.generic_visit(node)
        self.handles.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            if isinstance(item.context_expr, ast.Call) and _name(item.context_expr.func) in _HANDLE_MAKERS:
                if isinstance(item.optional_vars, ast.Name):
                    self.handles[-1].add(item.optional_vars.id)
        self.generic_visit(node)

    def _is_handle(self, node: ast.AST | None) -> bool:
        if isinstance(node, ast.Call) and _name(node.func) in _HANDLE_MAKERS:
            return True
        return isinstance(node, ast.Name) and any(node.id in scope for scope in self.handles)

    def visit_Assign(self, node: ast.Assign) -> None:
        if isinstance(node.value, ast.Call) and _name(node.value.func) in _MEMORY:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.handles[-1].add(target.id)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        what = self._direct_write(node)
        if what:
            self.found.append((node.lineno, what))
        self.generic_visit(node)

    def _direct_write(self, node: ast.Call) -> str | None:
        func = node.func
        modes = [kw.value for kw in node.keywords if kw.arg == "mode"]
        if isinstance(func, ast.Name) and func.id == "open":
            return "open() for writing" if any(_writes_mode(v) for v in node.args[1:2] + modes) else None
        if not isinstance(func, ast.Attribute):
            return None
        owner, attr = _name(func.value), func.attr
        if attr in ("open", "fdopen") and any(_writes_mode(v) for v in list(node.args) + modes):
            return f"{owner}.{attr}() for writing"
        if attr in _WRITE_METHODS:
            return f".{attr}()"
        if owner == "os" and attr in _OS_MOVES:
            return f"os.{attr}()"
        if owner == "shutil" and attr in _SHUTIL:
            return f"shutil.{attr}()"
        if attr in _MOVES and len(node.args) == 1 and not node.keywords:
            return f"Path.{attr}()"
        if (owner, attr) in _SAVERS:
            target = node.args[1] if owner == "torch" and len(node.args) > 1 else (node.args[0] if node.args else None)
            return None if self._is_handle(target) else f"{owner}.{attr}() to a path"
        if attr == "write_table":
            return None if self._is_handle(node.args[1] if len(node.args) > 1 else None) else "write_table() to a path"
        if attr == "savefig":
            return None if self._is_handle(node.args[0] if node.args else None) else "savefig() to a path"
        return None


def direct_writes(path: Path) -> list[tuple[int, str]]:
    """(line, what) of every direct write in one source file."""
    finder = _Finder()
    finder.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return sorted(finder.found)


def violations(root: Path = ROOT) -> list[str]:
    """One line per direct write outside atomic.py and KNOWN, and per KNOWN entry that no longer writes."""
    out: list[str] = []
    seen: set[str] = set()
    for path in sorted((root / "synthface").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == OWNER:
            continue
        found = direct_writes(path)
        if rel in KNOWN:
            if found:
                seen.add(rel)
            continue
        out += [f"{rel}:{line}: {what}: write through synthface/atomic.py" for line, what in found]
    out += [
        f"{rel}: listed in tools/check_writes.py KNOWN but writes nothing directly: remove the entry"
        for rel in sorted(set(KNOWN) - seen)
    ]
    return out


def main() -> int:
    problems = violations()
    for line in problems:
        print(line)
    if problems:
        print(f"write rule: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"write rule: ok ({len(KNOWN)} known exceptions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
