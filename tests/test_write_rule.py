"""The write rule (docs/design.md): synthface writes files only through synthface/atomic.py.

tools/check_writes.py reads the package's source; these tests run it on the package and on
small planted modules, so a direct write anywhere in synthface/ fails CI."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_writes", ROOT / "tools" / "check_writes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_writes_only_through_atomic(check):
    assert check.violations() == []
    for reason in check.KNOWN.values():
        assert reason.strip()  # every exception says why


def _plant(root: Path, name: str, source: str) -> Path:
    path = root / "synthface" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "source",
    [
        "open(p, 'w').write('x')\n",
        "open(p, mode='ab')\n",
        "open(p, 'ab' if done else 'wb')\n",
        "p.open('w')\n",
        "p.write_text('x')\n",
        "p.write_bytes(b'x')\n",
        "np.save(p, a)\n",
        "torch.save(obj, p)\n",
        "shutil.copyfile(a, b)\n",
        "shutil.copytree(a, b)\n",
        "os.replace(a, b)\n",
        "tmp.replace(final)\n",
        "tmp.rename(final)\n",
        "pq.write_table(table, p)\n",
        "fig.savefig(p)\n",
    ],
)
def test_a_direct_write_is_found(check, tmp_path, source):
    _plant(tmp_path, "bad.py", source)
    problems = check.violations(tmp_path)
    assert [line.split(":")[0] for line in problems if "bad.py" in line] == ["synthface/bad.py"]


def test_writes_through_atomic_and_plain_reads_pass(check, tmp_path):
    _plant(
        tmp_path,
        "good.py",
        """
        import io
        def f(p, a, table, text):
            with atomic_file(p) as handle:
                np.save(handle, a)
                pq.write_table(table, handle)
            buffer = io.BytesIO()
            torch.save(a, buffer)
            open(p).read()
            p.open('rb')
            text.replace('a', 'b')
            atomic_write_text(p, 'x')
        """,
    )
    _plant(tmp_path, "atomic.py", "open(p, 'w')\nos.replace(a, b)\n")  # the one owner
    assert [line for line in check.violations(tmp_path) if "good.py" in line or "atomic.py" in line] == []


def test_a_stale_exception_is_an_error(check, tmp_path, monkeypatch):
    _plant(tmp_path, "clean.py", "x = 1\n")
    monkeypatch.setattr(check, "KNOWN", {"synthface/clean.py": "was writing directly"})
    assert check.violations(tmp_path) == [
        "synthface/clean.py: listed in tools/check_writes.py KNOWN but writes nothing directly: remove the entry"
    ]
